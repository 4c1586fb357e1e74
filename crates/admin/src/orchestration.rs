//! `mbx orchestration …`: a definition file is parsed and checked by `mbx-orchestration`
//! (the DSL's schema, the mbx profile, the expressions), then stored by the MessageBox,
//! which checks what needs the database (the host, the declared properties, the versions
//! stored before). A refused definition exits 2 with one line and stores nothing.

use std::path::Path;

use anyhow::Result;
use mbx_messagebox::orchestrations::{ActivationFilter, OrchestrationDetail, OrchestrationSpec};
use mbx_messagebox::states::OrchestrationState;
use mbx_messagebox::MessageBox;
use mbx_orchestration::model::Consume;
use mbx_orchestration::Definition;

use crate::cli::{OrchestrationCommand, OrchestrationDefine};
use crate::output::{self, table};
use crate::Usage;

/// The largest definition file `mbx orchestration create|update` reads.
pub const DEFINITION_MAX_BYTES: u64 = 1 << 20;

/// The activation's event filters as the MessageBox stores them, each with its place in
/// the document.
fn activation(consume: &Consume) -> Vec<ActivationFilter> {
    let at = |i: usize| match consume {
        Consume::One(_) => "/schedule/on/one".to_owned(),
        Consume::Any { .. } => format!("/schedule/on/any/{i}"),
        Consume::All(_) => format!("/schedule/on/all/{i}"),
    };
    consume
        .filters()
        .iter()
        .enumerate()
        .map(|(i, f)| ActivationFilter {
            at: at(i),
            with: f.with.clone(),
            correlate: f.correlate.iter().map(|c| c.property.clone()).collect(),
        })
        .collect()
}

/// A checked definition as the orchestration to store.
pub fn spec(
    definition: &Definition,
    host: &str,
    ordered: bool,
    buckets: Option<i32>,
) -> OrchestrationSpec {
    OrchestrationSpec {
        name: definition.name.clone(),
        application: definition.namespace.clone(),
        version: definition.version.clone(),
        document: definition.document.clone(),
        host: host.to_owned(),
        ordered,
        buckets,
        activation: activation(&definition.activation),
        shapes: definition.shapes(),
    }
}

/// Reads and checks a definition file: exit 2 naming the file and the problem.
fn read(path: &Path) -> Result<Definition> {
    let cannot_read = |e: std::io::Error| {
        Usage(format!(
            "-f: cannot read {}: {e} (example: mbx orchestration create -f order-manager.yaml)",
            path.display()
        ))
    };
    let size = std::fs::metadata(path).map_err(cannot_read)?.len();
    if size > DEFINITION_MAX_BYTES {
        return Err(Usage(format!(
            "-f: {} is {size} bytes, over the {DEFINITION_MAX_BYTES}-byte limit of a definition",
            path.display()
        ))
        .into());
    }
    let text = std::fs::read_to_string(path).map_err(cannot_read)?;
    crate::bindings::expansion_within_limit(&text)
        .map_err(|problem| Usage(format!("{}: {problem}; nothing was stored", path.display())))?;
    Definition::parse(&text)
        .map_err(|e| Usage(format!("{}: {e}; nothing was stored", path.display())).into())
}

pub async fn run(mbx: &MessageBox, c: OrchestrationCommand, json_out: bool) -> Result<()> {
    match c {
        OrchestrationCommand::Create(a) => create(mbx, &a, json_out).await,
        OrchestrationCommand::Update(a) => update(mbx, &a, json_out).await,
        OrchestrationCommand::List => list(mbx, json_out).await,
        OrchestrationCommand::Show { name } => show(mbx, &name, json_out).await,
        OrchestrationCommand::Enable { name } => crate::commands::print_change(
            mbx.orchestration_set_state(&name, OrchestrationState::Enabled)
                .await?,
            json_out,
        ),
        OrchestrationCommand::Disable { name } => crate::commands::print_change(
            mbx.orchestration_set_state(&name, OrchestrationState::Disabled)
                .await?,
            json_out,
        ),
        OrchestrationCommand::Delete {
            name,
            cancel_instances,
        } => {
            mbx.orchestration_delete(&name, cancel_instances).await?;
            if json_out {
                return output::json(&serde_json::json!({"deleted": name}));
            }
            println!("deleted orchestration '{name}' and its versions");
            Ok(())
        }
        OrchestrationCommand::Instance(c) => {
            crate::orchestration_instance::run(mbx, c, json_out).await
        }
    }
}

async fn create(mbx: &MessageBox, a: &OrchestrationDefine, json_out: bool) -> Result<()> {
    let definition = read(&a.file)?;
    let o = mbx
        .orchestration_create(&spec(&definition, &a.host, a.ordered, a.buckets))
        .await?;
    if json_out {
        return output::json(&o);
    }
    println!(
        "created orchestration '{}' version {} (application {}, host {}, {})",
        o.name, o.current_version, o.application, o.host, o.state
    );
    Ok(())
}

async fn update(mbx: &MessageBox, a: &OrchestrationDefine, json_out: bool) -> Result<()> {
    let definition = read(&a.file)?;
    let u = mbx
        .orchestration_update(&spec(&definition, &a.host, a.ordered, a.buckets))
        .await?;
    if json_out {
        return output::json(&u);
    }
    if !u.changed() {
        println!(
            "orchestration '{}' is unchanged (version {} is current)",
            u.object, definition.version
        );
        return Ok(());
    }
    println!("updated orchestration '{}':", u.object);
    for c in &u.changes {
        println!("    {}: {} → {}", c.field, c.from, c.to);
    }
    Ok(())
}

async fn list(mbx: &MessageBox, json_out: bool) -> Result<()> {
    let list = mbx.orchestration_list().await?;
    if json_out {
        return output::json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|o| {
            vec![
                o.name.clone(),
                o.application.clone(),
                o.current_version.clone(),
                o.versions.to_string(),
                o.state.to_string(),
                o.host.clone(),
            ]
        })
        .collect();
    table(
        &[
            "ORCHESTRATION",
            "APPLICATION",
            "VERSION",
            "VERSIONS",
            "STATE",
            "HOST",
        ],
        &rows,
    );
    Ok(())
}

async fn show(mbx: &MessageBox, name: &str, json_out: bool) -> Result<()> {
    let d: OrchestrationDetail = mbx.orchestration_show(name).await?;
    if json_out {
        return output::json(&d);
    }
    let o = &d.orchestration;
    let title = |key: &str| d.document["document"][key].as_str().map(str::to_owned);
    let fields = [
        ("orchestration", o.name.clone()),
        ("application", o.application.clone()),
        ("current version", o.current_version.clone()),
        ("state", o.state.to_string()),
        ("host", o.host.clone()),
        ("title", output::opt(&title("title"))),
        ("updated", o.updated_at.to_rfc3339()),
    ];
    for (key, value) in fields {
        println!("{:<16} {value}", format!("{key}:"));
    }
    if let Some(current) = d.versions.iter().find(|v| v.current) {
        println!("\nactivation:");
        for a in current.activation.0.iter() {
            let by = if a.correlate.is_empty() {
                String::new()
            } else {
                format!("  (correlates by {})", a.correlate.join(", "))
            };
            println!("    {}{by}", a.filter);
        }
    }
    println!();
    let rows: Vec<Vec<String>> = d
        .versions
        .iter()
        .map(|v| {
            vec![
                v.version.clone(),
                if v.current { "yes" } else { "" }.to_owned(),
                v.digest.clone(),
                v.created_at.to_rfc3339(),
            ]
        })
        .collect();
    table(&["VERSION", "CURRENT", "DIGEST", "CREATED"], &rows);
    Ok(())
}
