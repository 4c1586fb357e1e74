//! `… update` (change in place) and `group link`: parse the flags, let the MessageBox
//! apply them to the object read under its lock, check the result as `create` would (the
//! adapters' registry included), print what changed.

use std::collections::BTreeMap;

use anyhow::Result;
use mbx_messagebox::config::{Backoff, SendPortSpec};
use mbx_messagebox::receive::ReceiveLocationSpec;
use mbx_messagebox::throttle::DatabaseSizeOverride;
use mbx_messagebox::update::Update;
use mbx_messagebox::{MessageBox, TrackingLevel};

use crate::cli::{LinkCommand, ReceiveLocationUpdate, SendPortUpdate};
use crate::commands::{duration_s, filter_arg, key_values, size_arg, tracking_arg};
use crate::output::{self, table};
use crate::Usage;

/// A usage error found while checking the changed object, as the MessageBox's bad input
/// (exit 2, nothing written).
fn invalid(e: Usage) -> mbx_messagebox::Error {
    mbx_messagebox::Error::Invalid(e.0)
}

fn print_update(u: &Update, json_out: bool) -> Result<()> {
    if json_out {
        return output::json(u);
    }
    if !u.changed() {
        println!("{} '{}': nothing changed", u.kind, u.object);
        return Ok(());
    }
    println!("updated {} '{}':", u.kind, u.object);
    for c in &u.changes {
        println!("  {}: {} → {}", c.field, c.from, c.to);
    }
    Ok(())
}

fn nothing_given(command: &str, example: &str) -> anyhow::Error {
    Usage(format!(
        "{command}: no change given; pass the flags to change (example: {example})"
    ))
    .into()
}

/// The flags of `send-port update` that are parsed rather than taken as given.
struct SendPortFlags {
    set: BTreeMap<String, String>,
    backoff: Option<Backoff>,
    retry_interval: Option<i64>,
    retry_max_interval: Option<i64>,
    backup_retry_interval: Option<i64>,
    /// `Some(None)`: `--tracking host`, the port follows its host's level again.
    tracking: Option<Option<TrackingLevel>>,
}

impl SendPortFlags {
    fn parse(a: &SendPortUpdate) -> Result<Self> {
        let set = key_values("--set", &a.more.set, "append=true")?;
        let backoff: Option<Backoff> = a
            .retry_backoff
            .as_deref()
            .map(|b| {
                b.parse().map_err(|e| {
                    Usage(format!(
                        "--retry-backoff: {e} (example: --retry-backoff exponential)"
                    ))
                })
            })
            .transpose()?;
        let dur =
            |arg: &str, v: &Option<String>| v.as_deref().map(|t| duration_s(arg, t)).transpose();
        let retry_interval = dur("--retry-interval", &a.retry_interval)?;
        let retry_max_interval = dur("--retry-max-interval", &a.retry_max_interval)?;
        let backup_retry_interval = dur("--backup-retry-interval", &a.backup_retry_interval)?;
        let tracking = match a.tracking.as_deref() {
            None => None,
            Some("host") => Some(None),
            Some(_) => Some(tracking_arg("--tracking", &a.tracking)?),
        };
        Ok(SendPortFlags {
            set,
            backoff,
            retry_interval,
            retry_max_interval,
            backup_retry_interval,
            tracking,
        })
    }
}

/// Whether `send-port update` was given anything to change.
fn send_port_change_given(a: &SendPortUpdate, f: &SendPortFlags) -> bool {
    a.host.is_some()
        || a.address.is_some()
        || a.dynamic
        || !a.allow_address.is_empty()
        || a.filter.is_some()
        || a.no_filter
        || a.ordered.is_some()
        || a.stop_on_failure.is_some()
        || a.ordered_commit_batch.is_some()
        || a.retry_count.is_some()
        || f.retry_interval.is_some()
        || f.backoff.is_some()
        || f.retry_max_interval.is_some()
        || a.backup_address.is_some()
        || a.no_backup_address
        || a.backup_retry_count.is_some()
        || f.backup_retry_interval.is_some()
        || a.route_failed.is_some()
        || f.tracking.is_some()
        || a.solicit_response.is_some()
        || !f.set.is_empty()
        || !a.more.unset.is_empty()
        || a.more.application.is_some()
}

/// `send-port update`'s flags applied to the port as read under the MessageBox's lock.
fn change_send_port(spec: &mut SendPortSpec, a: SendPortUpdate, f: SendPortFlags) {
    if let Some(h) = a.host {
        spec.host = h;
    }
    if let Some(address) = a.address {
        spec.address = Some(address);
        spec.allow_address.clear();
    }
    if a.dynamic {
        spec.address = None;
    }
    if !a.allow_address.is_empty() {
        spec.allow_address = a.allow_address;
    }
    if a.no_filter {
        spec.filter = None;
    } else if let Some(filter) = a.filter {
        spec.filter = Some(filter);
    }
    if let Some(v) = a.ordered {
        spec.ordered = v;
    }
    if let Some(v) = a.stop_on_failure {
        spec.stop_on_failure = v;
    }
    if let Some(v) = a.ordered_commit_batch {
        spec.ordered_commit_batch = v;
    }
    if let Some(v) = a.retry_count {
        spec.retry_count = v;
    }
    if let Some(v) = f.retry_interval {
        spec.retry_interval_s = v;
    }
    if let Some(v) = f.backoff {
        spec.retry_backoff = v;
    }
    if let Some(v) = f.retry_max_interval {
        spec.retry_max_interval_s = v;
    }
    if a.no_backup_address {
        spec.backup_address = None;
    } else if let Some(b) = a.backup_address {
        spec.backup_address = Some(b);
    }
    if let Some(v) = a.backup_retry_count {
        spec.backup_retry_count = v;
    }
    if let Some(v) = f.backup_retry_interval {
        spec.backup_retry_interval_s = v;
    }
    if let Some(v) = a.route_failed {
        spec.route_failed = v;
    }
    if let Some(v) = f.tracking {
        spec.tracking = v;
    }
    if let Some(v) = a.solicit_response {
        spec.solicit_response = v;
    }
    for key in &a.more.unset {
        spec.settings.remove(key);
    }
    spec.settings.extend(f.set);
    if let Some(app) = a.more.application {
        spec.application = app;
    }
}

pub async fn send_port(mbx: &MessageBox, a: SendPortUpdate, json_out: bool) -> Result<()> {
    let flags = SendPortFlags::parse(&a)?;
    if !send_port_change_given(&a, &flags) {
        return Err(nothing_given(
            "send-port update",
            "mbx send-port update eu --address file:///data/eu2/%MessageID%.xml",
        ));
    }
    let name = a.name.clone();
    let update = mbx
        .send_port_update(&name, move |spec| {
            change_send_port(spec, a, flags);
            crate::validate::send_port(spec).map_err(invalid)
        })
        .await
        .map_err(|e| filter_arg(e, "--filter"))?;
    print_update(&update, json_out)
}

/// `receive-location update`'s flags applied to the location.
fn change_location(
    spec: &mut ReceiveLocationSpec,
    a: &ReceiveLocationUpdate,
    promote: &BTreeMap<String, String>,
    set: &BTreeMap<String, String>,
    max: Option<u64>,
) {
    if let Some(p) = &a.port {
        spec.port = p.clone();
    }
    if let Some(h) = &a.host {
        spec.host = h.clone();
    }
    if let Some(address) = &a.address {
        spec.address = address.clone();
    }
    if let Some(p) = &a.pipeline {
        spec.pipeline = p.clone();
    }
    if a.no_promote {
        spec.promote.clear();
    } else if !promote.is_empty() {
        spec.promote = promote.clone();
    }
    if a.no_message_type {
        spec.message_type = None;
    } else if let Some(t) = &a.message_type {
        spec.message_type = Some(t.clone());
    }
    if let Some(v) = a.ordered {
        spec.ordered = v;
    }
    if let Some(v) = max {
        spec.max_message_size = v;
    }
    for key in &a.more.unset {
        spec.settings.remove(key);
    }
    spec.settings.extend(set.clone());
    if let Some(app) = &a.more.application {
        spec.application = app.clone();
    }
}

pub async fn receive_location(
    mbx: &MessageBox,
    a: ReceiveLocationUpdate,
    json_out: bool,
) -> Result<()> {
    let promote = key_values("--promote", &a.promote, "Order.Region=/region")?;
    let set = key_values("--set", &a.more.set, "mask=*.xml")?;
    let max = a
        .max_message_size
        .as_deref()
        .map(|m| size_arg("--max-message-size", m))
        .transpose()?;
    let given = a.port.is_some()
        || a.host.is_some()
        || a.address.is_some()
        || a.pipeline.is_some()
        || !promote.is_empty()
        || a.no_promote
        || a.message_type.is_some()
        || a.no_message_type
        || a.ordered.is_some()
        || max.is_some()
        || !set.is_empty()
        || !a.more.unset.is_empty()
        || a.more.application.is_some();
    if !given {
        return Err(nothing_given(
            "receive-location update",
            "mbx receive-location update orders-in --address 'file:///data/in2/*.xml'",
        ));
    }
    let change = |spec: &mut ReceiveLocationSpec| change_location(spec, &a, &promote, &set, max);
    // an --ordered AMQP location's queue, asked of the broker before anything changes
    if let Some(current) = mbx
        .export_bindings(None)
        .await?
        .receive_locations
        .get(&a.name)
    {
        let mut next = current.spec(&a.name);
        change(&mut next);
        crate::validate::ordered_source(&next).await?;
    }
    let update = mbx
        .receive_location_update(&a.name, |spec| {
            change(spec);
            crate::validate::receive_location(spec).map_err(invalid)
        })
        .await?;
    print_update(&update, json_out)
}

pub async fn group(
    mbx: &MessageBox,
    name: &str,
    filter: Option<String>,
    no_filter: bool,
    application: Option<String>,
    json_out: bool,
) -> Result<()> {
    if filter.is_none() && !no_filter && application.is_none() {
        return Err(nothing_given(
            "send-port-group update",
            "mbx send-port-group update all-eu --filter 'Order.Region == \"EU\"'",
        ));
    }
    let update = mbx
        .group_update(name, move |spec| {
            if no_filter {
                spec.filter = None;
            } else if filter.is_some() {
                spec.filter = filter;
            }
            if let Some(app) = application {
                spec.application = app;
            }
            Ok(())
        })
        .await
        .map_err(|e| filter_arg(e, "--filter"))?;
    print_update(&update, json_out)
}

pub async fn receive_port(
    mbx: &MessageBox,
    name: &str,
    application: Option<String>,
    route_failed: Option<bool>,
    json_out: bool,
) -> Result<()> {
    if application.is_none() && route_failed.is_none() {
        return Err(nothing_given(
            "receive-port update",
            "mbx receive-port update orders --application orders",
        ));
    }
    let update = mbx
        .receive_port_update(name, application.as_deref(), route_failed)
        .await?;
    print_update(&update, json_out)
}

pub async fn host(
    mbx: &MessageBox,
    name: &str,
    throttle_publish: Option<i64>,
    throttle_inflight: Option<i64>,
    throttle_database_size: Option<DatabaseSizeOverride>,
    tracking: Option<TrackingLevel>,
    json_out: bool,
) -> Result<()> {
    if throttle_publish.is_none()
        && throttle_inflight.is_none()
        && throttle_database_size.is_none()
        && tracking.is_none()
    {
        return Err(nothing_given(
            "host update",
            "mbx host update edi --throttle-publish 100000",
        ));
    }
    let update = mbx
        .host_update(name, move |spec| {
            if throttle_publish.is_some() {
                spec.throttle_publish = throttle_publish;
            }
            if throttle_inflight.is_some() {
                spec.throttle_inflight = throttle_inflight;
            }
            if tracking.is_some() {
                spec.tracking = tracking;
            }
            if throttle_database_size.is_some() {
                spec.throttle_database_size = throttle_database_size;
            }
            Ok(())
        })
        .await?;
    print_update(&update, json_out)
}

/// `mbx group set`: the group-wide settings.
pub async fn group_set(
    mbx: &MessageBox,
    throttle_database_size: Option<String>,
    tracking_retention: Option<String>,
    json_out: bool,
) -> Result<()> {
    if throttle_database_size.is_none() && tracking_retention.is_none() {
        return Err(nothing_given(
            "group set",
            "mbx group set --throttle-database-size 50GB",
        ));
    }
    let throttle_database_size = throttle_database_size
        .map(|text| match text.trim() {
            "off" => Ok(None),
            _ => {
                crate::commands::database_size_arg("--throttle-database-size", &text, "SIZE or off")
                    .map(Some)
            }
        })
        .transpose()?;
    let tracking_retention_days = tracking_retention
        .map(|text| whole_days("--tracking-retention", &text))
        .transpose()?;
    let update = mbx
        .group_set(&mbx_messagebox::throttle::GroupSet {
            throttle_database_size,
            tracking_retention_days,
        })
        .await?;
    print_update(&update, json_out)
}

/// A duration in whole days (`30d`, `2w`), as the group's retention settings take.
fn whole_days(arg: &str, text: &str) -> Result<i32> {
    let s = crate::commands::duration_s(arg, text)?;
    if s == 0 || s % 86_400 != 0 {
        return Err(crate::Usage(format!(
            "{arg}: '{text}' is not a whole number of days (example: {arg} 30d)"
        ))
        .into());
    }
    i32::try_from(s / 86_400).map_err(|_| {
        crate::Usage(format!("{arg}: '{text}' is too long (example: {arg} 30d)")).into()
    })
}

pub async fn link(mbx: &MessageBox, c: LinkCommand, json_out: bool) -> Result<()> {
    match c {
        LinkCommand::Add { name, target_url } => {
            let link = mbx.link_add(&name, &target_url).await?;
            if json_out {
                return output::json(&link);
            }
            println!(
                "linked '{}' → group '{}' ({}); send ports forward there with --address mbx://{}/RECEIVE_PORT",
                link.name, link.target_group_name, link.target_group_id, link.name
            );
        }
        LinkCommand::List => {
            let links = mbx.link_list().await?;
            if json_out {
                return output::json(&links);
            }
            let rows: Vec<Vec<String>> = links
                .iter()
                .map(|l| {
                    vec![
                        l.name.clone(),
                        l.target_group_name.clone(),
                        l.target_group_id.to_string(),
                        l.database_url.clone(),
                    ]
                })
                .collect();
            table(&["LINK", "GROUP", "GROUP ID", "TARGET URL"], &rows);
        }
        LinkCommand::Remove { name } => {
            mbx.link_remove(&name).await?;
            println!("removed group link '{name}'");
        }
    }
    Ok(())
}
