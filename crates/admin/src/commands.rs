//! What each command does: parse and check arguments, call the MessageBox, print.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{Context as _, Result};
use mbx_messagebox::config::{Backoff, InitialState, SendPortSpec};
use mbx_messagebox::context::system;
use mbx_messagebox::publish::{NewMessage, Published, Publisher};
use mbx_messagebox::receive::ReceiveLocationSpec;
use mbx_messagebox::states::{InstanceState, PortState};
use mbx_messagebox::suspended::{Kind, Selector};
use mbx_messagebox::throttle::DatabaseSizeOverride;
use mbx_messagebox::{Context, MessageBox, PropertyType, TrackingLevel, Value};
use serde_json::json;

use crate::cli::*;
use crate::output::{self, opt, table};
use crate::Usage;

/// Connections the CLI opens at most.
const CLI_MAX_CONNECTIONS: u32 = 2;

/// Characters of a suspended item's reason shown in `suspended list`'s table (`show` and
/// `--output json` give it whole).
const REASON_CELL_MAX_CHARS: usize = 120;

/// Largest body `mbx message publish` reads.
const PUBLISH_MAX_BYTES: u64 = 100 * 1000 * 1000;

pub async fn run(cli: Cli) -> Result<()> {
    if let Command::Reference = &cli.command {
        print!("{}", crate::cli::reference());
        return Ok(());
    }
    let url = cli.database_url.clone().ok_or_else(|| {
        Usage("--database-url: not set; pass --database-url postgres://USER@HOST:5432/DB or set MBX_DATABASE_URL".into())
    })?;
    let json_out = cli.output == Output::Json;
    if let Command::Init { group } = &cli.command {
        return init(&url, group.as_deref(), json_out).await;
    }
    if let Command::Console {
        listen,
        token,
        read_only,
    } = &cli.command
    {
        return console(&url, listen, token.as_deref(), *read_only).await;
    }
    let mbx = connect(&url).await?;
    mbx.check_schema()
        .await
        .with_context(|| format!("MessageBox at {}", redact(&url)))?;
    match cli.command {
        Command::Init { .. }
        | Command::Bench { .. }
        | Command::Reference
        | Command::Console { .. } => {
            unreachable!("handled above")
        }
        Command::Status => status(&mbx, json_out).await,
        Command::Host(c) => host(&mbx, c, json_out).await,
        Command::Instance(c) => instance(&mbx, c, json_out).await,
        Command::Property(c) => property(&mbx, c, json_out).await,
        Command::ReceivePort(c) => receive_port(&mbx, c, json_out).await,
        Command::ReceiveLocation(c) => receive_location(&mbx, c, json_out).await,
        Command::SendPort(c) => send_port(&mbx, c, json_out).await,
        Command::SendPortGroup(c) => group(&mbx, c, json_out).await,
        Command::Group(c) => group_level(&mbx, c, json_out).await,
        Command::Message(c) => message(&mbx, c, json_out).await,
        Command::Orchestration(c) => crate::orchestration::run(&mbx, c, json_out).await,
        Command::Suspended(c) => suspended(&mbx, c, json_out).await,
        Command::Stats { watch: false, .. } => stats(&mbx, json_out).await,
        Command::Stats {
            watch: true,
            interval,
        } => stats_watch(&mbx, json_out, &interval).await,
        Command::Track { message_id } => track(&mbx, &message_id, json_out).await,
        Command::Export { application, file } => {
            crate::bindings::export(&mbx, application.as_deref(), file.as_deref()).await
        }
        Command::Apply {
            file,
            dry_run,
            prune,
            discard_messages,
        } => {
            let options = mbx_messagebox::bindings::ApplyOptions {
                dry_run,
                prune,
                discard_messages,
            };
            crate::bindings::apply(&mbx, &file, options, json_out).await
        }
        Command::Roles(RolesCommand::Create { prefix }) => {
            roles_create(&mbx, &prefix, json_out).await
        }
    }
}

async fn instance(mbx: &MessageBox, c: InstanceCommand, json_out: bool) -> Result<()> {
    match c {
        InstanceCommand::List => instances(mbx, json_out).await,
        InstanceCommand::Prune { older_than } => instance_prune(mbx, &older_than, json_out).await,
    }
}

async fn group_level(mbx: &MessageBox, c: GroupLevelCommand, json_out: bool) -> Result<()> {
    match c {
        GroupLevelCommand::Link(c) => crate::update::link(mbx, c, json_out).await,
        GroupLevelCommand::Show => group_show(mbx, json_out).await,
        GroupLevelCommand::Set {
            throttle_database_size,
            tracking_retention,
        } => {
            crate::update::group_set(mbx, throttle_database_size, tracking_retention, json_out)
                .await
        }
    }
}

async fn message(mbx: &MessageBox, c: MessageCommand, json_out: bool) -> Result<()> {
    match c {
        MessageCommand::Publish {
            promote,
            property,
            file,
            content_type,
        } => publish(mbx, &promote, &property, file, content_type, json_out).await,
        MessageCommand::List {
            filter,
            port,
            receive_port,
            state,
            newer_than,
            limit,
        } => {
            let query = message_query(filter, port, receive_port, state, newer_than, limit)?;
            message_list(mbx, &query, json_out).await
        }
    }
}

async fn instance_prune(mbx: &MessageBox, older_than: &str, json_out: bool) -> Result<()> {
    let older_than_s = duration_s("--older-than", older_than)?;
    let n = mbx.instance_prune(older_than_s).await?;
    if json_out {
        return output::json(&json!({ "pruned": n }));
    }
    println!("forgot {n} stopped or dead instance(s)");
    Ok(())
}

/// `mbx message list`'s arguments, checked, as a query.
fn message_query(
    filter: Option<String>,
    port: Option<String>,
    receive_port: Option<String>,
    state: Option<String>,
    newer_than: Option<String>,
    limit: i64,
) -> Result<mbx_messagebox::search::MessageQuery> {
    if !(1..=10_000).contains(&limit) {
        return Err(Usage(format!(
            "--limit: {limit} is out of range 1..10000 (example: --limit 50)"
        ))
        .into());
    }
    Ok(mbx_messagebox::search::MessageQuery {
        filter,
        port,
        receive_port,
        state: state
            .as_deref()
            .map(|s| {
                s.parse()
                    .map_err(|e| Usage(format!("--state: {e} (example: --state retrying)")))
            })
            .transpose()?,
        newer_than_s: newer_than
            .as_deref()
            .map(|t| duration_s("--newer-than", t))
            .transpose()?,
        limit,
    })
}

async fn message_list(
    mbx: &MessageBox,
    query: &mbx_messagebox::search::MessageQuery,
    json_out: bool,
) -> Result<()> {
    let found = mbx
        .message_find(query)
        .await
        .map_err(|e| filter_arg(e, "--where"))?;
    if json_out {
        return output::json(&found);
    }
    if found.is_empty() {
        println!("no message in the MessageBox matches (delivered ones have left it; `mbx track ID` shows their events)");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.published_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                opt(&m.location),
                opt(&m.source_file),
                m.state.join(", "),
                output::cell_summary(&m.promoted, 80),
            ]
        })
        .collect();
    table(
        &[
            "MESSAGE",
            "PUBLISHED (UTC)",
            "FROM",
            "FILE",
            "STATE",
            "PROMOTED",
        ],
        &rows,
    );
    Ok(())
}

async fn roles_create(mbx: &MessageBox, prefix: &str, json_out: bool) -> Result<()> {
    let names = mbx_messagebox::security::RoleNames::with_prefix(prefix)?;
    mbx.roles_apply(&names)
        .await
        .context("creating the roles (needs a superuser, or the owner with CREATEROLE)")?;
    if json_out {
        return output::json(&names);
    }
    println!(
        "roles ready: {} (owns the schema; run `mbx init` as it), {} (mbx-host: DML only), {} (read-only), {} (other groups' links: forwards into receive ports, nothing else); PUBLIC revoked",
        names.migrator, names.host, names.reader, names.forwarder
    );
    println!(
        "next: give each a password or certificate (ALTER ROLE {} PASSWORD '...') and point the hosts at postgres://{}@HOST/DB",
        names.host, names.host
    );
    Ok(())
}

use mbx_messagebox::redact_url as redact;

async fn connect(url: &str) -> Result<MessageBox> {
    MessageBox::connect(url, CLI_MAX_CONNECTIONS).await.with_context(|| {
        format!(
            "cannot connect to the MessageBox at {}; check that PostgreSQL runs and the URL is right",
            redact(url)
        )
    })
}

/// Connections the console opens at most (its sampler and concurrent pages).
const CONSOLE_MAX_CONNECTIONS: u32 = 8;

/// `mbx console`: checks the flags before connecting, then serves until Ctrl-C.
async fn console(url: &str, listen: &str, token: Option<&str>, read_only: bool) -> Result<()> {
    let listen: std::net::SocketAddr = listen.trim().parse().map_err(|_| {
        Usage(format!(
            "--listen: '{listen}' is not an address; use IP:PORT (example: --listen 127.0.0.1:8081)"
        ))
    })?;
    let token = token
        .map(|t| {
            mbx_vocabulary::secret::SecretRef::parse("--token", t)
                .and_then(|r| r.resolve("--token"))
                .map_err(Usage)
        })
        .transpose()?;
    let config = mbx_console::ConsoleConfig {
        listen,
        token,
        read_only,
    };
    mbx_console::check_config(&config).map_err(|e| Usage(e.to_string()))?;
    let mbx = MessageBox::connect(url, CONSOLE_MAX_CONNECTIONS)
        .await
        .with_context(|| {
            format!(
                "cannot connect to the MessageBox at {}; check that PostgreSQL runs and the URL is right",
                redact(url)
            )
        })?;
    mbx.check_schema()
        .await
        .with_context(|| format!("MessageBox at {}", redact(url)))?;
    let console = mbx_console::Console::bind(mbx, config)
        .await
        .map_err(|e| match e {
            mbx_console::ConsoleError::Config(m) => anyhow::Error::from(Usage(m)),
            other => anyhow::Error::from(other),
        })?;
    let addr = console.local_addr()?;
    println!(
        "console: http://{addr}/{}  (Ctrl-C stops)",
        if console.read_only() {
            "  read-only"
        } else {
            ""
        }
    );
    tracing::info!(%addr, read_only = console.read_only(), "console serving");
    console
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

async fn init(url: &str, group: Option<&str>, json_out: bool) -> Result<()> {
    if let Some(g) = group {
        mbx_messagebox::config::validate_name("group", g)
            .map_err(|e| Usage(format!("--group: {e}")))?;
    }
    let created_db = mbx_messagebox::create_database_if_missing(url)
        .await
        .with_context(|| format!("cannot create the database of {}", redact(url)))?;
    let mbx = connect(url).await?;
    let report = mbx
        .init(group)
        .await
        .with_context(|| format!("init of {}", redact(url)))?;
    if json_out {
        return output::json(&json!({"database_created": created_db, "report": report}));
    }
    if created_db {
        println!("created database {}", redact(url));
    }
    if report.migrations_applied > 0 {
        println!("applied {} migration(s)", report.migrations_applied);
    } else {
        println!("schema is current");
    }
    if report.group_created {
        println!("created group '{}'", report.group);
    }
    if report.default_host_created {
        println!("created host 'default'");
    }
    println!("MessageBox of group '{}' is ready", report.group);
    Ok(())
}

pub(crate) fn tracking_arg(arg: &str, v: &Option<String>) -> Result<Option<TrackingLevel>> {
    v.as_deref()
        .map(|s| {
            s.parse::<TrackingLevel>()
                .map_err(|e| Usage(format!("{arg}: {e}")).into())
        })
        .transpose()
}

async fn host(mbx: &MessageBox, c: HostCommand, json_out: bool) -> Result<()> {
    match c {
        HostCommand::Create {
            name,
            throttle_publish,
            throttle_inflight,
            throttle_database_size,
            tracking,
        } => {
            let spec = mbx_messagebox::config::HostSpec {
                name: name.clone(),
                throttle_publish,
                throttle_inflight,
                throttle_database_size: database_size_override_arg(&throttle_database_size)?,
                tracking: tracking_arg("--tracking", &tracking)?,
            };
            mbx.host_create(&spec).await?;
            println!("created host '{name}'");
        }
        HostCommand::Update {
            name,
            throttle_publish,
            throttle_inflight,
            throttle_database_size,
            tracking,
        } => {
            let tracking = tracking_arg("--tracking", &tracking)?;
            crate::update::host(
                mbx,
                &name,
                throttle_publish,
                throttle_inflight,
                database_size_override_arg(&throttle_database_size)?,
                tracking,
                json_out,
            )
            .await?
        }
        HostCommand::List => host_list(mbx, json_out).await?,
        HostCommand::Delete { name } => {
            mbx.host_delete(&name).await?;
            println!("deleted host '{name}'");
        }
    }
    Ok(())
}

async fn host_list(mbx: &MessageBox, json_out: bool) -> Result<()> {
    let hosts = mbx.host_list().await?;
    if json_out {
        return output::json(&hosts);
    }
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                h.instances_alive.to_string(),
                h.send_ports.to_string(),
                h.receive_locations.to_string(),
                h.throttle_publish.to_string(),
                h.throttle_inflight.to_string(),
                match h.throttle_database_size {
                    DatabaseSizeOverride::Bytes(n) => human_size(n),
                    other => other.to_string(),
                },
                h.tracking.clone(),
            ]
        })
        .collect();
    table(
        &[
            "HOST",
            "ALIVE",
            "SEND PORTS",
            "LOCATIONS",
            "THROTTLE PUBLISH",
            "THROTTLE INFLIGHT",
            "THROTTLE DB SIZE",
            "TRACKING",
        ],
        &rows,
    );
    Ok(())
}

async fn instances(mbx: &MessageBox, json_out: bool) -> Result<()> {
    let list = mbx.instance_list().await?;
    if json_out {
        return output::json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                i.id.to_string(),
                i.host.clone(),
                i.state.to_string(),
                i.throttle.clone().unwrap_or_else(|| "-".to_owned()),
                format!("{:.1}s", i.heartbeat_age_s),
                i.machine.clone(),
                i.pid.to_string(),
                i.version.clone(),
            ]
        })
        .collect();
    table(
        &[
            "INSTANCE",
            "HOST",
            "STATE",
            "THROTTLED",
            "HEARTBEAT AGE",
            "MACHINE",
            "PID",
            "VERSION",
        ],
        &rows,
    );
    Ok(())
}

async fn property(mbx: &MessageBox, c: PropertyCommand, json_out: bool) -> Result<()> {
    match c {
        PropertyCommand::Create { name, ty } => {
            let ty: PropertyType = ty.parse().map_err(|e| Usage(format!("--type: {e}")))?;
            mbx.property_create(&name, ty).await?;
            println!("declared property {name} as {ty}");
        }
        PropertyCommand::List => {
            let list = mbx.property_list().await?;
            if json_out {
                let v: Vec<_> = list
                    .iter()
                    .map(|(n, t)| json!({"name": n, "type": t}))
                    .collect();
                return output::json(&v);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|(n, t)| vec![n.clone(), t.to_string()])
                .collect();
            table(&["PROPERTY", "TYPE"], &rows);
        }
        PropertyCommand::Delete { name } => {
            mbx.property_delete(&name).await?;
            println!("deleted property {name}");
        }
    }
    Ok(())
}

/// Parses a size argument: `100MB`, `1MiB`.
pub(crate) fn size_arg(arg: &str, text: &str) -> Result<u64> {
    Ok(mbx_vocabulary::parse_size(text)
        .map_err(|e| Usage(format!("{arg}: {e} (example: {arg} 100MB)")))?)
}

/// `--throttle-database-size` of a host: a size (the `--max-message-size` syntax), `off`
/// or `group`.
fn database_size_override_arg(v: &Option<String>) -> Result<Option<DatabaseSizeOverride>> {
    const ARG: &str = "--throttle-database-size";
    v.as_deref()
        .map(|text| match text.trim() {
            "off" => Ok(DatabaseSizeOverride::Off),
            "group" => Ok(DatabaseSizeOverride::Group),
            _ => {
                database_size_arg(ARG, text, "SIZE, off or group").map(DatabaseSizeOverride::Bytes)
            }
        })
        .transpose()
}

/// A database size argument above 0 (the `--max-message-size` syntax); `also` names the
/// other words the flag takes, for the error.
pub(crate) fn database_size_arg(arg: &str, text: &str, also: &str) -> Result<i64> {
    let bytes = size_arg(arg, text).map_err(|_| {
        Usage(format!(
            "{arg}: '{text}' is not a size; use {also} (example: {arg} 50GB)"
        ))
    })?;
    match i64::try_from(bytes) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Usage(format!(
            "{arg}: '{text}' must be above 0 and below 8EiB; use {also} (example: {arg} 50GB)"
        ))
        .into()),
    }
}

/// Bytes as a size with a unit (`50.0 GiB`).
pub(crate) fn human_size(bytes: i64) -> String {
    bytesize::ByteSize(u64::try_from(bytes).unwrap_or(0)).to_string()
}

async fn group_show(mbx: &MessageBox, json_out: bool) -> Result<()> {
    let g = mbx.group_settings().await?;
    if json_out {
        return output::json(&g);
    }
    println!("group:                  {}", g.group);
    println!(
        "throttle database size: {}",
        g.throttle_database_size.map_or_else(
            || "off".to_owned(),
            |n| format!("{} ({n} bytes)", human_size(n))
        )
    );
    println!("tracking retention:     {}d", g.tracking_retention_days);
    println!(
        "database size:          {} ({} bytes)",
        human_size(g.database_size),
        g.database_size
    );
    Ok(())
}

/// Parses a duration argument: `30s`, `5m`, `1h`, `2d` (humantime syntax).
pub fn duration_s(arg: &str, text: &str) -> Result<i64> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| Usage(format!("{arg}: '{text}' is not a duration ({e}); use a number with s, m, h or d (example: {arg} 5m)")))?;
    i64::try_from(d.as_secs())
        .map_err(|_| Usage(format!("{arg}: '{text}' is too long (example: {arg} 5m)")).into())
}

fn key_value<'a>(arg: &str, text: &'a str, example: &str) -> Result<(&'a str, &'a str)> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim(), v)),
        _ => Err(Usage(format!(
            "{arg}: '{text}' is not NAME=VALUE (example: {arg} {example})"
        ))
        .into()),
    }
}

/// Collects repeated `--flag NAME=VALUE` arguments into a map.
pub(crate) fn key_values(
    arg: &str,
    items: &[String],
    example: &str,
) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for item in items {
        let (k, v) = key_value(arg, item, example)?;
        map.insert(k.to_owned(), v.to_owned());
    }
    Ok(map)
}

async fn receive_port(mbx: &MessageBox, c: ReceivePortCommand, json_out: bool) -> Result<()> {
    match c {
        ReceivePortCommand::Create {
            name,
            two_way,
            route_failed,
            application,
        } => {
            mbx.receive_port_create_with(&name, two_way, route_failed, &application)
                .await?;
            let kind = if two_way { "two-way" } else { "one-way" };
            println!("created receive port '{name}' ({kind})");
        }
        ReceivePortCommand::Update {
            name,
            application,
            route_failed,
        } => crate::update::receive_port(mbx, &name, application, route_failed, json_out).await?,
        ReceivePortCommand::Delete { name } => {
            mbx.receive_port_delete(&name).await?;
            println!("deleted receive port '{name}'");
        }
        ReceivePortCommand::List => {
            let ports = mbx.receive_port_list().await?;
            if json_out {
                return output::json(&ports);
            }
            let rows: Vec<Vec<String>> = ports
                .iter()
                .map(|p| {
                    let kind = if p.two_way { "two-way" } else { "one-way" };
                    vec![p.name.clone(), kind.to_owned(), p.locations.join(",")]
                })
                .collect();
            table(&["RECEIVE PORT", "KIND", "LOCATIONS"], &rows);
        }
    }
    Ok(())
}

async fn receive_location(
    mbx: &MessageBox,
    c: ReceiveLocationCommand,
    json_out: bool,
) -> Result<()> {
    match c {
        ReceiveLocationCommand::Create(a) => receive_location_create(mbx, &a, json_out).await?,
        ReceiveLocationCommand::Enable { name } => {
            let changed = mbx.receive_location_set_enabled(&name, true).await?;
            println!(
                "'{name}': {}",
                if changed {
                    "disabled → enabled"
                } else {
                    "already enabled; nothing changed"
                }
            );
        }
        ReceiveLocationCommand::Disable { name } => {
            let changed = mbx.receive_location_set_enabled(&name, false).await?;
            println!(
                "'{name}': {}",
                if changed {
                    "enabled → disabled"
                } else {
                    "already disabled; nothing changed"
                }
            );
        }
        ReceiveLocationCommand::Delete { name } => {
            mbx.receive_location_delete(&name).await?;
            println!("deleted receive location '{name}'");
        }
        ReceiveLocationCommand::Update(a) => {
            crate::update::receive_location(mbx, *a, json_out).await?
        }
        ReceiveLocationCommand::List => receive_location_list(mbx, json_out).await?,
    }
    Ok(())
}

async fn receive_location_create(
    mbx: &MessageBox,
    a: &ReceiveLocationCreate,
    json_out: bool,
) -> Result<()> {
    let size = size_arg("--max-message-size", &a.max_message_size)?;
    let spec = ReceiveLocationSpec {
        name: a.name.clone(),
        port: a.port.clone(),
        host: a.host.clone(),
        address: a.address.clone(),
        pipeline: a.pipeline.clone(),
        promote: key_values("--promote", &a.promote, "Order.Region=/region")?,
        message_type: a.message_type.clone(),
        settings: key_values("--set", &a.set, "mask=*.xml")?,
        ordered: a.ordered,
        max_message_size: size,
        application: a.application.clone(),
    };
    crate::validate::receive_location(&spec)?;
    crate::validate::ordered_source(&spec).await?;
    if let Some(port) = mbx
        .receive_port_list()
        .await?
        .into_iter()
        .find(|p| p.name == spec.port)
    {
        crate::validate::two_way_settings(&spec, port.two_way)?;
    }
    let loc = mbx.receive_location_create(&spec).await?;
    if json_out {
        return output::json(&loc);
    }
    println!(
        "created receive location '{}' on port '{}' (disabled; `mbx receive-location enable {}` starts it)",
        loc.name, loc.port, loc.name
    );
    Ok(())
}

async fn receive_location_list(mbx: &MessageBox, json_out: bool) -> Result<()> {
    let list = mbx.receive_location_list().await?;
    if json_out {
        return output::json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|l| {
            vec![
                l.name.clone(),
                l.port.clone(),
                if l.enabled { "enabled" } else { "disabled" }.to_owned(),
                l.host.clone(),
                match &l.message_type {
                    Some(t) => format!("{} (type {t})", l.pipeline),
                    None => l.pipeline.clone(),
                },
                l.address.clone(),
            ]
        })
        .collect();
    table(
        &["LOCATION", "PORT", "STATE", "HOST", "PIPELINE", "ADDRESS"],
        &rows,
    );
    Ok(())
}

async fn send_port(mbx: &MessageBox, c: SendPortCommand, json_out: bool) -> Result<()> {
    match c {
        SendPortCommand::Create(a) => send_port_create(mbx, &a, json_out).await?,
        SendPortCommand::Show { name } => send_port_show(mbx, &name, json_out).await?,
        SendPortCommand::Update(a) => crate::update::send_port(mbx, *a, json_out).await?,
        SendPortCommand::List => send_port_list(mbx, json_out).await?,
        SendPortCommand::Enlist { name } => {
            print_change(mbx.send_port_enlist(&name).await?, json_out)?
        }
        SendPortCommand::Start { name } => {
            print_change(mbx.send_port_start(&name).await?, json_out)?
        }
        SendPortCommand::Stop { name } => print_change(mbx.send_port_stop(&name).await?, json_out)?,
        SendPortCommand::Unenlist { name, force } => {
            print_change(mbx.send_port_unenlist(&name, force).await?, json_out)?
        }
        SendPortCommand::Resume { name, key } => {
            let change = match key {
                Some(key) => mbx.send_port_resume_key(&name, &key).await?,
                None => mbx.send_port_resume(&name).await?,
            };
            print_change(change, json_out)?
        }
        SendPortCommand::Skip { name, key } => {
            let c = match key {
                Some(key) => mbx.send_port_skip_key(&name, &key).await?,
                None => mbx.send_port_skip(&name).await?,
            };
            if !json_out && c.suspended > 0 {
                println!("the failed head message is suspended (failed-final)");
            }
            print_change(
                mbx_messagebox::config::Change { suspended: 0, ..c },
                json_out,
            )?
        }
        SendPortCommand::Delete { name } => {
            mbx.send_port_delete(&name).await?;
            println!("deleted send port '{name}'");
        }
    }
    Ok(())
}

/// `mbx send-port create`'s arguments, checked, as the port to create.
fn send_port_spec(a: &SendPortCreate) -> Result<SendPortSpec> {
    let settings = key_values("--set", &a.set, "append=true")?;
    let backoff: Backoff = a.retry_backoff.parse().map_err(|e| {
        Usage(format!(
            "--retry-backoff: {e} (example: --retry-backoff exponential)"
        ))
    })?;
    Ok(SendPortSpec {
        name: a.name.clone(),
        host: a.host.clone(),
        address: a.address.clone(),
        allow_address: a.allow_address.clone(),
        filter: a.filter.clone(),
        ordered: a.ordered || a.ordered_by.is_some(),
        ordered_by: a.ordered_by.clone(),
        ordered_buckets: a.ordered_buckets,
        stop_on_failure: a.stop_on_failure,
        ordered_commit_batch: a.ordered_commit_batch,
        retry_count: a.retry_count,
        retry_interval_s: duration_s("--retry-interval", &a.retry_interval)?,
        retry_backoff: backoff,
        retry_max_interval_s: duration_s("--retry-max-interval", &a.retry_max_interval)?,
        backup_address: a.backup_address.clone(),
        backup_retry_count: a.backup_retry_count,
        backup_retry_interval_s: duration_s("--backup-retry-interval", &a.backup_retry_interval)?,
        route_failed: a.route_failed,
        tracking: tracking_arg("--tracking", &a.tracking)?,
        solicit_response: a.solicit_response,
        settings,
        application: a.application.clone(),
        initial_state: if a.start {
            InitialState::Started
        } else if a.unenlisted {
            InitialState::Unenlisted
        } else {
            InitialState::Stopped
        },
    })
}

async fn send_port_create(mbx: &MessageBox, a: &SendPortCreate, json_out: bool) -> Result<()> {
    let spec = send_port_spec(a)?;
    crate::validate::send_port(&spec)?;
    let port = mbx
        .send_port_create(&spec)
        .await
        .map_err(|e| filter_arg(e, "--filter"))?;
    if json_out {
        return output::json(&port);
    }
    println!("created send port '{}' ({})", port.name, port.state);
    match &port.filter {
        Some(f) => println!("filter: {f}"),
        None => println!("no filter: the port receives nothing until one is set"),
    }
    Ok(())
}

async fn send_port_show(mbx: &MessageBox, name: &str, json_out: bool) -> Result<()> {
    let port = mbx.send_port_show(name).await?;
    let stats = mbx.stats().await?;
    let counters = stats.ports.iter().find(|p| p.name == name);
    let lease = if port.ordered {
        mbx.port_lease_info(port.id).await?
    } else {
        None
    };
    let keyed = if port.ordered_by.is_some() {
        mbx.port_keyed_info(port.id).await?
    } else {
        None
    };
    if json_out {
        return output::json(
            &json!({"port": port, "counters": counters, "lease": lease, "keys": keyed}),
        );
    }
    let mut rows = send_port_settings(&port);
    if let Some(l) = &lease {
        rows.extend(lease_rows(l));
    }
    if let Some(k) = &keyed {
        rows.extend(keyed_rows(k));
    }
    if let Some(c) = counters {
        rows.push(("backlog", c.backlog.to_string()));
        rows.push(("retrying", c.retrying.to_string()));
        rows.push(("in flight", c.in_flight.to_string()));
        rows.push(("suspended", c.suspended.to_string()));
    }
    for (k, v) in rows {
        println!("{k:<18} {v}");
    }
    if let Some(k) = keyed.filter(|k| !k.held_keys.is_empty()) {
        print_held_keys(name, &k);
    }
    Ok(())
}

/// `send-port show`'s rows for the port's own settings.
fn send_port_settings(port: &mbx_messagebox::config::SendPort) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("name", port.name.clone()),
        ("state", port.state.to_string()),
        ("host", port.host.clone()),
        ("address", opt(&port.address)),
        ("filter", opt(&port.filter)),
        ("groups", port.groups.join(", ")),
        ("ordered", port.ordered.to_string()),
        (
            "retry",
            format!(
                "{} × {}s ({})",
                port.retry_count, port.retry_interval_s, port.retry_backoff
            ),
        ),
        ("backup address", opt(&port.backup_address)),
        ("tracking", port.tracking.to_string()),
    ];
    if port.dynamic {
        rows.push(("allowed addresses", port.allow_address.join(", ")));
    }
    rows
}

/// `send-port show`'s rows for an ordered port's lease.
fn lease_rows(l: &mbx_messagebox::ordered::LeaseInfo) -> Vec<(&'static str, String)> {
    let owner = match (l.holder, l.live) {
        (Some(h), true) => h.to_string(),
        (Some(h), false) => format!("none (lease of {h} expired)"),
        (None, _) => "none".to_owned(),
    };
    vec![
        ("owner", owner),
        ("epoch", l.epoch.to_string()),
        ("next sequence", l.next_seq.to_string()),
        ("head", l.head.clone()),
    ]
}

/// `send-port show`'s rows for a port ordered by a property: its buckets and their owners.
fn keyed_rows(k: &mbx_messagebox::ordered::KeyedInfo) -> Vec<(&'static str, String)> {
    let mut rows = vec![(
        "ordered by",
        format!("{} ({} buckets)", k.property, k.buckets),
    )];
    for o in &k.owners {
        rows.push((
            "bucket owner",
            format!(
                "{} ({}): {} buckets, epoch ≤ {}",
                o.instance,
                o.host.as_deref().unwrap_or("?"),
                o.buckets,
                o.max_epoch
            ),
        ));
    }
    rows.push(("unowned buckets", k.unowned.to_string()));
    rows.push(("held keys", k.held_keys.len().to_string()));
    rows
}

/// The keys a port ordered by a property holds after a failure, as a table.
fn print_held_keys(name: &str, k: &mbx_messagebox::ordered::KeyedInfo) {
    let rows: Vec<Vec<String>> = k
        .held_keys
        .iter()
        .map(|h| {
            vec![
                h.key.clone(),
                h.held_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                h.waiting.to_string(),
                h.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    println!();
    table(&["HELD KEY", "SINCE", "WAITING", "ERROR"], &rows);
    println!("resume or skip one: mbx send-port resume|skip {name} --key KEY");
}

async fn send_port_list(mbx: &MessageBox, json_out: bool) -> Result<()> {
    let ports = mbx.send_port_list().await?;
    if json_out {
        return output::json(&ports);
    }
    let rows: Vec<Vec<String>> = ports
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.state.to_string(),
                p.host.clone(),
                p.address.clone().unwrap_or_else(|| "(dynamic)".into()),
                opt(&p.filter),
            ]
        })
        .collect();
    table(&["SEND PORT", "STATE", "HOST", "ADDRESS", "FILTER"], &rows);
    Ok(())
}

/// Names the argument a filter error came from.
pub(crate) fn filter_arg(e: mbx_messagebox::Error, arg: &str) -> anyhow::Error {
    match e {
        mbx_messagebox::Error::Filter(f) => {
            anyhow::Error::new(mbx_messagebox::Error::Filter(f)).context(arg.to_owned())
        }
        other => other.into(),
    }
}

pub(crate) fn print_change(c: mbx_messagebox::config::Change, json_out: bool) -> Result<()> {
    if json_out {
        return output::json(&c);
    }
    if c.changed() {
        println!("'{}': {} → {}", c.object, c.from, c.to);
    } else {
        println!("'{}' is already {}; nothing changed", c.object, c.to);
    }
    if c.suspended > 0 {
        println!("suspended {} waiting deliveries (kind failed)", c.suspended);
    }
    Ok(())
}

async fn group(mbx: &MessageBox, c: GroupCommand, json_out: bool) -> Result<()> {
    match c {
        GroupCommand::Create {
            name,
            filter,
            start,
            unenlisted,
            application,
        } => {
            let state = if start {
                InitialState::Started
            } else if unenlisted {
                InitialState::Unenlisted
            } else {
                InitialState::Stopped
            };
            let g = mbx
                .group_create_in(&name, filter.as_deref(), state, &application)
                .await
                .map_err(|e| filter_arg(e, "--filter"))?;
            if json_out {
                return output::json(&g);
            }
            println!("created send port group '{}' ({})", g.name, g.state);
        }
        GroupCommand::Add { name, ports } => {
            let n = mbx.group_add(&name, &ports).await?;
            println!("added {n} port(s) to '{name}'");
        }
        GroupCommand::Remove { name, ports } => {
            let n = mbx.group_remove(&name, &ports).await?;
            println!("removed {n} port(s) from '{name}'");
        }
        GroupCommand::Start { name } => print_change(mbx.group_start(&name).await?, json_out)?,
        GroupCommand::Stop { name } => print_change(mbx.group_stop(&name).await?, json_out)?,
        GroupCommand::Enlist { name } => print_change(mbx.group_enlist(&name).await?, json_out)?,
        GroupCommand::Unenlist { name, force } => {
            print_change(mbx.group_unenlist(&name, force).await?, json_out)?
        }
        GroupCommand::Delete { name } => {
            mbx.group_delete(&name).await?;
            println!("deleted send port group '{name}'");
        }
        GroupCommand::Update {
            name,
            filter,
            no_filter,
            application,
        } => crate::update::group(mbx, &name, filter, no_filter, application, json_out).await?,
        GroupCommand::List => {
            let groups = mbx.group_list().await?;
            if json_out {
                return output::json(&groups);
            }
            let rows: Vec<Vec<String>> = groups
                .iter()
                .map(|g| {
                    vec![
                        g.name.clone(),
                        g.state.to_string(),
                        g.members.join(","),
                        opt(&g.filter),
                    ]
                })
                .collect();
            table(&["GROUP", "STATE", "MEMBERS", "FILTER"], &rows);
        }
    }
    Ok(())
}

/// Builds a context from `--promote` and `--property` arguments, typed by declaration.
async fn build_context(
    mbx: &MessageBox,
    promote: &[String],
    property: &[String],
) -> Result<Context> {
    let types = mbx.property_types().await?;
    let mut context = Context::new();
    for (arg, items, promoted) in [
        ("--promote", promote, true),
        ("--property", property, false),
    ] {
        for item in items {
            let (name, text) = key_value(arg, item, "Order.Region=EU")?;
            if system::is_engine_property(name) && !system::OPERATOR_SETTABLE.contains(&name) {
                return Err(Usage(format!(
                    "{arg} {name}: the mbx namespace is set by the engine; only {} may be given (example: {arg} Order.Region=EU)",
                    system::OPERATOR_SETTABLE.join(", ")
                ))
                .into());
            }
            let ty = types.get(name).copied().unwrap_or(PropertyType::String);
            let value =
                Value::parse_as(ty, text).map_err(|e| Usage(format!("{arg} {name}: {e}")))?;
            let res = if promoted {
                context.promote(name, value)
            } else {
                context.write(name, value)
            };
            res.map_err(|e| Usage(format!("{arg}: {e}")))?;
        }
    }
    Ok(context)
}

fn content_type_for(path: Option<&std::path::Path>) -> &'static str {
    match path.and_then(|p| p.extension()).and_then(|e| e.to_str()) {
        Some("xml") => "application/xml",
        Some("json") => "application/json",
        Some("txt") | Some("csv") => "text/plain",
        _ => "application/octet-stream",
    }
}

async fn publish(
    mbx: &MessageBox,
    promote: &[String],
    property: &[String],
    file: Option<std::path::PathBuf>,
    content_type: Option<String>,
    json_out: bool,
) -> Result<()> {
    let mut context = build_context(mbx, promote, property).await?;
    let body = read_body(file.as_deref())?;
    let content_type = content_type.unwrap_or_else(|| content_type_for(file.as_deref()).to_owned());
    context.write(system::CONTENT_TYPE, Value::String(content_type.clone()))?;
    context.write(system::INBOUND_TRANSPORT_TYPE, Value::String("cli".into()))?;
    if let Some(name) = file
        .as_ref()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
    {
        context.write(system::SOURCE_FILE_NAME, Value::String(name.to_owned()))?;
    }
    let outcome = mbx
        .publish(
            &Publisher::default(),
            vec![NewMessage::new(body, &content_type, context)],
        )
        .await?;
    let outcome = outcome
        .into_iter()
        .next()
        .context("publish returned no outcome")?;
    if json_out {
        return output::json(&outcome);
    }
    print_published(outcome);
    Ok(())
}

/// The body to publish: the `--file` or stdin, up to the message limit.
fn read_body(file: Option<&std::path::Path>) -> Result<Vec<u8>> {
    let body = match file {
        Some(path) => {
            let meta = std::fs::metadata(path)
                .map_err(|e| Usage(format!("--file: cannot read '{}': {e}", path.display())))?;
            if meta.len() > PUBLISH_MAX_BYTES {
                return Err(Usage(format!(
                    "--file: '{}' has {} bytes, more than the {PUBLISH_MAX_BYTES}-byte message limit",
                    path.display(),
                    meta.len()
                ))
                .into());
            }
            std::fs::read(path)
                .map_err(|e| Usage(format!("--file: cannot read '{}': {e}", path.display())))?
        }
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .take(PUBLISH_MAX_BYTES + 1)
                .read_to_end(&mut buf)
                .context("reading the body from stdin")?;
            if buf.len() as u64 > PUBLISH_MAX_BYTES {
                return Err(Usage(format!(
                    "stdin: the body is larger than the {PUBLISH_MAX_BYTES}-byte message limit"
                ))
                .into());
            }
            buf
        }
    };
    Ok(body)
}

fn print_published(outcome: Published) {
    match outcome {
        Published::Routed { message_id, deliveries } => {
            println!("published message {message_id}: routed to {deliveries} subscriber(s)")
        }
        Published::RoutingFailure {
            message_id,
            suspended_id,
        } => println!(
            "published message {message_id}: no subscriber matched; kept as suspended item {suspended_id} (routing-failure)"
        ),
        Published::Duplicate => println!("duplicate: already published within the dedup window"),
        // only a source with a body digest (HTTP receive) is refused so
        Published::SourceReused => {
            println!("not published: its source id was published with another body")
        }
        // only an error report is dropped so; `message publish` never makes one
        Published::Unsubscribed => println!("not published: no subscriber took it"),
    }
}

fn parse_id(text: &str) -> Result<i64> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| Usage(format!("ID: '{text}' is not a suspended item id; ids are numbers (example: mbx suspended show 42)")).into())
}

fn selector(id: Option<&str>, f: &SuspendedFilter) -> Result<Selector> {
    Ok(Selector {
        id: id.map(parse_id).transpose()?,
        port: f.port.clone(),
        kind: f
            .kind
            .as_deref()
            .map(|k| k.parse::<Kind>().map_err(|e| Usage(format!("--kind: {e}"))))
            .transpose()?,
        error_like: f.error_like.clone(),
        older_than_s: f
            .older_than
            .as_deref()
            .map(|t| duration_s("--older-than", t))
            .transpose()?,
        limit: match f.limit {
            Some(n) if n <= 0 => {
                return Err(Usage("--limit: must be above 0 (example: --limit 100)".into()).into())
            }
            other => other,
        },
        ..Default::default()
    })
}

fn require_scope(id: Option<&str>, f: &SuspendedFilter, verb: &str) -> Result<()> {
    if id.is_none()
        && f.port.is_none()
        && f.kind.is_none()
        && f.error_like.is_none()
        && f.older_than.is_none()
    {
        return Err(Usage(format!(
            "ID: give an item id or a filter (--port, --kind, --error-like, --older-than) (example: mbx suspended {verb} 42)"
        ))
        .into());
    }
    Ok(())
}

async fn suspended(mbx: &MessageBox, c: SuspendedCommand, json_out: bool) -> Result<()> {
    match c {
        SuspendedCommand::List { filter } => suspended_list(mbx, &filter, json_out).await?,
        SuspendedCommand::Show { id } => suspended_show(mbx, &id, json_out).await?,
        SuspendedCommand::Save { id, to } => {
            let body = mbx.suspended_body(parse_id(&id)?).await?;
            match to {
                Some(path) => {
                    std::fs::write(&path, &body)
                        .with_context(|| format!("writing {}", path.display()))?;
                    println!("wrote {} bytes to {}", body.len(), path.display());
                }
                None => {
                    use std::io::Write;
                    std::io::stdout().write_all(&body)?;
                }
            }
        }
        SuspendedCommand::Resume { id, filter } => {
            suspended_resume(mbx, id.as_deref(), &filter, json_out).await?
        }
        SuspendedCommand::Terminate { id, filter } => {
            require_scope(id.as_deref(), &filter, "terminate")?;
            let sel = selector(id.as_deref(), &filter)?;
            let n = mbx.suspended_terminate(&sel).await?;
            let settled = already_settled(mbx, sel.id, n).await?;
            if settled_said(json_out, json!({ "terminated": n }), sel.id, settled)? {
                return Ok(());
            }
            println!("terminated {n} item(s)");
        }
    }
    Ok(())
}

async fn suspended_list(mbx: &MessageBox, filter: &SuspendedFilter, json_out: bool) -> Result<()> {
    let items = mbx.suspended_list(&selector(None, filter)?).await?;
    if json_out {
        return output::json(&items);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            vec![
                i.id.to_string(),
                i.kind.to_string(),
                opt(&i.port),
                i.suspended_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                i.message_id.to_string(),
                output::cell_summary(&i.reason, REASON_CELL_MAX_CHARS),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "KIND",
            "PORT",
            "SUSPENDED AT (UTC)",
            "MESSAGE",
            "REASON",
        ],
        &rows,
    );
    Ok(())
}

async fn suspended_show(mbx: &MessageBox, id: &str, json_out: bool) -> Result<()> {
    let d = mbx.suspended_show(parse_id(id)?).await?;
    if json_out {
        return output::json(&d);
    }
    println!("id             {}", d.item.id);
    println!(
        "kind           {} ({})",
        d.item.kind,
        if d.item.resumable {
            "resumable"
        } else {
            "not resumable"
        }
    );
    println!("port           {}", opt(&d.item.port));
    println!("message        {}", d.item.message_id);
    println!("published at   {}", d.published_at);
    println!("suspended at   {}", d.item.suspended_at);
    println!("reason         {}", d.item.reason);
    println!("content type   {}", d.content_type);
    println!("body size      {} bytes", d.body_size);
    println!("context:");
    for (name, p) in d.context.iter() {
        let mark = if p.promoted { "promoted" } else { "written" };
        println!(
            "  {name} = {} ({}, {mark})",
            p.value.to_plain_string(),
            p.value.property_type()
        );
    }
    println!("attempts: {}", d.attempts.len());
    for a in &d.attempts {
        println!(
            "  #{} {} {} {}",
            a.attempt,
            a.at.format("%Y-%m-%d %H:%M:%S"),
            a.transport,
            a.error
        );
    }
    Ok(())
}

async fn suspended_resume(
    mbx: &MessageBox,
    id: Option<&str>,
    filter: &SuspendedFilter,
    json_out: bool,
) -> Result<()> {
    require_scope(id, filter, "resume")?;
    let sel = selector(id, filter)?;
    let report = mbx.suspended_resume(&sel).await?;
    let settled = already_settled(
        mbx,
        sel.id,
        report.resumed + report.not_resumable + report.still_unrouted,
    )
    .await?;
    if settled_said(json_out, serde_json::to_value(&report)?, sel.id, settled)? {
        return Ok(());
    }
    println!(
        "resumed {} item(s) as {} deliveries",
        report.resumed, report.deliveries
    );
    if report.still_unrouted > 0 {
        println!(
            "{} routing failure(s) still match no subscriber and stay suspended",
            report.still_unrouted
        );
    }
    if report.not_resumable > 0 {
        println!(
            "{} item(s) are not resumable (receive-failure or failed-final); terminate them instead",
            report.not_resumable
        );
    }
    Ok(())
}

/// For a command on one id that acted on nothing: what had become of the item (the
/// MessageBox refuses ids that never existed, so one that acted on nothing had left).
async fn already_settled(
    mbx: &MessageBox,
    id: Option<i64>,
    acted_on: u64,
) -> Result<
    Option<(
        mbx_messagebox::suspended::Settled,
        chrono::DateTime<chrono::Utc>,
    )>,
> {
    match id {
        Some(id) if acted_on == 0 => Ok(mbx.suspended_settled(id).await?),
        _ => Ok(None),
    }
}

/// Prints a resume's or terminate's report when it is JSON (with what had become of the
/// item, if it had left) or when the item had left already; true when it printed.
fn settled_said(
    json_out: bool,
    mut report: serde_json::Value,
    id: Option<i64>,
    settled: Option<(
        mbx_messagebox::suspended::Settled,
        chrono::DateTime<chrono::Utc>,
    )>,
) -> Result<bool> {
    if json_out {
        if let Some((s, at)) = settled {
            report["already"] = json!({"outcome": s, "at": at});
        }
        output::json(&report)?;
        return Ok(true);
    }
    if let (Some(id), Some((s, at))) = (id, settled) {
        println!(
            "item {id} was already {} at {at}; nothing to do",
            s.as_str()
        );
        return Ok(true);
    }
    Ok(false)
}

async fn stats(mbx: &MessageBox, json_out: bool) -> Result<()> {
    let s = mbx.stats().await?;
    if json_out {
        return output::json(&s);
    }
    print_stats(&s, None);
    Ok(())
}

/// `mbx stats --watch`: a frame every interval until Ctrl-C; rates are delivered
/// messages per second between this frame's counters and the previous one's.
async fn stats_watch(mbx: &MessageBox, json_out: bool, interval: &str) -> Result<()> {
    let every = humantime::parse_duration(interval.trim())
        .ok()
        .filter(|d| *d >= std::time::Duration::from_millis(100))
        .ok_or_else(|| {
            Usage(format!(
                "--interval: '{interval}' is not a duration of at least 100ms (example: --interval 2s)"
            ))
        })?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut previous: Option<mbx_messagebox::stats::DeliveredReading> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let s = mbx.stats().await?;
        let reading = mbx.delivered_reading().await?;
        let rates = previous.as_ref().map(|p| reading.rates_since(p));
        if json_out {
            println!(
                "{}",
                json!({ "at": reading.at, "stats": s, "delivered_per_s": rates })
            );
        } else {
            if tty {
                // home and clear: the frame replaces the previous one
                print!("\x1b[H\x1b[2J");
            }
            println!(
                "{} (every {}; Ctrl-C stops)",
                reading.at.format("%H:%M:%S"),
                interval.trim()
            );
            print_stats(&s, Some(rates.as_ref()));
            if !tty {
                println!();
            }
        }
        previous = Some(reading);
    }
}

/// The stats table; `rates` is `Some` in --watch (`Some(None)` on the first frame).
fn print_stats(
    s: &mbx_messagebox::stats::Stats,
    rates: Option<Option<&std::collections::HashMap<String, f64>>>,
) {
    println!(
        "spool: {} message(s); suspended: {} item(s)",
        s.spool_messages, s.suspended_total
    );
    let rows: Vec<Vec<String>> = s
        .ports
        .iter()
        .map(|p| {
            let state = if p.state == PortState::Stopped && p.backlog > 0 {
                "stopped (waiting: port stopped)".to_owned()
            } else {
                p.state.to_string()
            };
            let mut row = vec![
                p.name.clone(),
                state,
                p.backlog.to_string(),
                p.retrying.to_string(),
                p.in_flight.to_string(),
                p.suspended.to_string(),
            ];
            if let Some(rates) = rates {
                row.push(match rates {
                    Some(r) => format!("{:.1}", r.get(&p.name).copied().unwrap_or(0.0)),
                    None => "-".to_owned(),
                });
            }
            row
        })
        .collect();
    let mut headers = vec![
        "SEND PORT",
        "STATE",
        "BACKLOG",
        "RETRYING",
        "IN FLIGHT",
        "SUSPENDED",
    ];
    if rates.is_some() {
        headers.push("DELIVERED/S");
    }
    table(&headers, &rows);
    print_orchestration_stats(s);
}

/// The orchestrations' instances by state, under the ports' table.
fn print_orchestration_stats(s: &mbx_messagebox::stats::Stats) {
    if s.orchestrations.is_empty() {
        return;
    }
    println!();
    let rows: Vec<Vec<String>> = s
        .orchestrations
        .iter()
        .map(|o| {
            let counts = [
                o.pending,
                o.running,
                o.waiting,
                o.suspended,
                o.faulted,
                o.due,
            ];
            std::iter::once(o.name.clone())
                .chain(counts.iter().map(i64::to_string))
                .collect()
        })
        .collect();
    table(
        &[
            "ORCHESTRATION",
            "PENDING",
            "RUNNING",
            "WAITING",
            "SUSPENDED",
            "FAULTED",
            "DUE",
        ],
        &rows,
    );
}

async fn status(mbx: &MessageBox, json_out: bool) -> Result<()> {
    let hosts = mbx.host_list().await?;
    let instances = mbx.instance_list().await?;
    let stats = mbx.stats().await?;
    let ordered = ordered_leases(mbx).await?;
    let locations = mbx.receive_location_list().await?;
    let runs = mbx.location_runs().await?;
    if json_out {
        return output::json(&json!({
            "hosts": hosts,
            "instances": instances,
            "receive_locations": locations,
            "location_runs": runs,
            "stats": stats,
            "ordered_ports": ordered,
        }));
    }
    print_hosts(&hosts, &instances);
    print_locations(&locations, &runs);
    print_port_stats(&stats, &ordered);
    Ok(())
}

/// The lease of each ordered send port, by port name.
async fn ordered_leases(
    mbx: &MessageBox,
) -> Result<BTreeMap<String, mbx_messagebox::ordered::LeaseInfo>> {
    let mut ordered = BTreeMap::new();
    for p in mbx
        .send_port_list()
        .await?
        .into_iter()
        .filter(|p| p.ordered)
    {
        if let Some(lease) = mbx.port_lease_info(p.id).await? {
            ordered.insert(p.name, lease);
        }
    }
    Ok(ordered)
}

/// `status`'s hosts (alive and dead instances) and instances.
fn print_hosts(
    hosts: &[mbx_messagebox::config::Host],
    instances: &[mbx_messagebox::instances::Instance],
) {
    println!("hosts:");
    for h in hosts {
        let dead = instances
            .iter()
            .filter(|i| i.host == h.name && i.state == InstanceState::Dead)
            .count();
        println!("  {:<16} {} alive, {dead} dead", h.name, h.instances_alive);
    }
    println!("instances:");
    if instances.is_empty() {
        println!("  none running (start one with `mbx-host --host default`)");
    }
    for i in instances {
        println!(
            "  {} {:<10} {:<7} heartbeat {:.1}s ago on {} (pid {}){}",
            i.id,
            i.host,
            i.state,
            i.heartbeat_age_s,
            i.machine,
            i.pid,
            i.throttle
                .as_deref()
                .map(|t| format!(" THROTTLED ({t})"))
                .unwrap_or_default()
        );
    }
}

/// `status`'s receive locations, and where one does not run and why.
fn print_locations(
    locations: &[mbx_messagebox::receive::ReceiveLocation],
    runs: &[mbx_messagebox::receive::LocationRun],
) {
    println!("receive locations:");
    if locations.is_empty() {
        println!("  none (create one with `mbx receive-location create`)");
    }
    for l in locations {
        let mine: Vec<_> = runs.iter().filter(|r| r.location == l.name).collect();
        let state = if !l.enabled {
            "disabled".to_owned()
        } else {
            let running = mine.iter().filter(|r| r.running).count();
            format!("enabled, runs on {running} instance(s)")
        };
        println!("  {:<16} {state} (host {}) {}", l.name, l.host, l.address);
        for r in mine.iter().filter(|r| !r.running) {
            println!(
                "  {:<16} NOT RUNNING on {}: {}",
                "",
                r.instance,
                opt(&r.problem)
            );
        }
    }
}

/// `status`'s send ports (counters, an ordered port's lease) and totals.
fn print_port_stats(
    stats: &mbx_messagebox::stats::Stats,
    ordered: &BTreeMap<String, mbx_messagebox::ordered::LeaseInfo>,
) {
    println!("send ports:");
    for p in &stats.ports {
        println!(
            "  {:<16} {:<10} backlog {} retrying {} in flight {} suspended {}",
            p.name, p.state, p.backlog, p.retrying, p.in_flight, p.suspended
        );
        if let Some(l) = ordered.get(&p.name) {
            let owner = match (l.holder, l.live) {
                (Some(h), true) => h.to_string(),
                _ => "none".to_owned(),
            };
            println!(
                "  {:<16} ordered: owner {owner} epoch {} next sequence {} head {}",
                "", l.epoch, l.next_seq, l.head
            );
        }
    }
    println!(
        "spool: {} message(s); suspended: {} item(s)",
        stats.spool_messages, stats.suspended_total
    );
}

async fn track(mbx: &MessageBox, message_id: &str, json_out: bool) -> Result<()> {
    let id: uuid::Uuid = message_id
        .parse()
        .map_err(|_| Usage(format!("MESSAGE_ID: '{message_id}' is not a message id (example: 0192f7a4-0c1e-7b5e-9a2f-3d4c5b6a7980)")))?;
    let events = mbx.tracking_events(id).await?;
    if events.is_empty() && !mbx.message_known(id).await? {
        return Err(Usage(format!(
            "MESSAGE_ID: no message {id} in this MessageBox (never published here, or delivered and its events purged); `mbx suspended list` shows held messages"
        ))
        .into());
    }
    if json_out {
        return output::json(&events);
    }
    if events.is_empty() {
        println!("no tracked events for {id} (its tracking level is off)");
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                e.event.clone(),
                opt(&e.port),
                opt(&e.detail),
            ]
        })
        .collect();
    table(&["AT (UTC)", "EVENT", "PORT", "DETAIL"], &rows);
    Ok(())
}
