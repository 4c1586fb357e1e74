//! `mbx orchestration instance …`: find orchestration instances, look into one, and
//! suspend, resume or cancel them. A resume onto another version is checked here first
//! (the instance's task path must exist there): the MessageBox reads no document.

use anyhow::{Context as _, Result};
use mbx_messagebox::process::ProcessState;
use mbx_messagebox::process_admin::{InstanceChange, InstanceDetail, InstanceSelector};
use mbx_messagebox::MessageBox;
use mbx_orchestration::runtime::{Pending, State};
use mbx_orchestration::Definition;
use uuid::Uuid;

use crate::cli::{ProcessInstanceCommand, ProcessInstanceFilter};
use crate::commands::duration_s;
use crate::output::{self, table};
use crate::Usage;

/// Error and correlation cells are cut to this many characters in tables.
const CELL_MAX_CHARS: usize = 60;

const STATES: &str = "pending, running, waiting, suspended, faulted, cancelled or completed";

pub async fn run(mbx: &MessageBox, c: ProcessInstanceCommand, json_out: bool) -> Result<()> {
    match c {
        ProcessInstanceCommand::List { filter } => {
            list(mbx, &selector(&[], &filter)?, json_out).await
        }
        ProcessInstanceCommand::Show { id } => show(mbx, parse_id(&id)?, json_out).await,
        ProcessInstanceCommand::History { id } => history(mbx, parse_id(&id)?, json_out).await,
        ProcessInstanceCommand::Suspend { ids, filter } => {
            let sel = scope(&ids, &filter, "suspend")?;
            change(mbx, &sel, InstanceChange::Suspend, None, json_out).await
        }
        ProcessInstanceCommand::Resume {
            ids,
            filter,
            to_version,
        } => {
            let mut sel = scope(&ids, &filter, "resume")?;
            if let Some(v) = &to_version {
                match pinned_fitting(mbx, &sel, v).await? {
                    Some(pinned) => sel = pinned,
                    None => return report(InstanceChange::Resume, &[], Some(v), json_out),
                }
            }
            change(
                mbx,
                &sel,
                InstanceChange::Resume,
                to_version.as_deref(),
                json_out,
            )
            .await
        }
        ProcessInstanceCommand::Cancel { ids, filter } => {
            let sel = scope(&ids, &filter, "cancel")?;
            change(mbx, &sel, InstanceChange::Cancel, None, json_out).await
        }
    }
}

fn parse_id(text: &str) -> Result<Uuid> {
    text.trim().parse().map_err(|_| {
        Usage(format!(
            "'{text}' is not an orchestration instance id (a UUID, as `mbx orchestration instance list` shows)"
        ))
        .into()
    })
}

fn parse_state(text: &str) -> Result<ProcessState> {
    serde_json::from_value(serde_json::Value::String(text.trim().to_lowercase())).map_err(|_| {
        Usage(format!(
            "--state: '{text}' is not an instance state; use {STATES} (example: --state waiting)"
        ))
        .into()
    })
}

fn selector(ids: &[String], f: &ProcessInstanceFilter) -> Result<InstanceSelector> {
    let correlation = f
        .correlation
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => Err(Usage(format!(
                "--correlation: '{kv}' is not K=V (example: --correlation Order.Id=A-1)"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(n) = f.limit.filter(|n| *n < 1) {
        return Err(Usage(format!(
            "--limit: {n} is not a positive number (example: --limit 50)"
        ))
        .into());
    }
    Ok(InstanceSelector {
        ids: ids.iter().map(|i| parse_id(i)).collect::<Result<_>>()?,
        orchestration: f.orchestration.clone(),
        state: f.state.as_deref().map(parse_state).transpose()?,
        correlation,
        older_than_s: f
            .older_than
            .as_deref()
            .map(|d| duration_s("--older-than", d).map(|s| s as f64))
            .transpose()?,
        limit: f.limit,
    })
}

/// A change names instances by id or selects them with --orchestration (never all of
/// every orchestration by accident), not both.
fn scope(ids: &[String], f: &ProcessInstanceFilter, verb: &str) -> Result<InstanceSelector> {
    let filtered = f.orchestration.is_some()
        || f.state.is_some()
        || !f.correlation.is_empty()
        || f.older_than.is_some()
        || f.limit.is_some();
    match (ids.is_empty(), filtered, f.orchestration.is_some()) {
        (true, _, false) => Err(Usage(format!(
            "name the instances to {verb}: their ids, or --orchestration O [--state S] (example: mbx orchestration instance {verb} --orchestration order-manager --state faulted)"
        ))
        .into()),
        (false, true, _) => Err(Usage(format!(
            "give instance ids or a selection (--orchestration …), not both (example: mbx orchestration instance {verb} ID)"
        ))
        .into()),
        _ => selector(ids, f),
    }
}

/// For a resume onto `version`: the instances the selection names that can be resumed,
/// pinned by id once each was checked to fit that version (exit 2 naming the first that
/// does not; nothing changes); `None` when it names none.
async fn pinned_fitting(
    mbx: &MessageBox,
    sel: &InstanceSelector,
    version: &str,
) -> Result<Option<InstanceSelector>> {
    let rows = mbx.process_instance_list(sel).await?;
    let mut ids = Vec::new();
    for r in rows {
        let resumable = matches!(r.state, ProcessState::Suspended | ProcessState::Faulted);
        if !resumable && sel.ids.is_empty() {
            continue;
        }
        let d = mbx.process_instance_show(r.id).await?;
        if !d.data.is_null() {
            let from = definition(mbx, &d, &d.instance.version).await?;
            let to = definition(mbx, &d, version).await?;
            let state: State = serde_json::from_value(d.data.clone())
                .context("reading the instance's saved state")?;
            state.fits(&from, &to).map_err(|path| {
                Usage(format!(
                    "--to-version: instance {} stands on {path}, which version {version} of {} lacks; nothing was resumed (resume it on its own version, or add the task)",
                    r.id, d.instance.orchestration
                ))
            })?;
        }
        ids.push(r.id);
    }
    Ok((!ids.is_empty()).then(|| InstanceSelector {
        ids,
        ..Default::default()
    }))
}

async fn definition(mbx: &MessageBox, d: &InstanceDetail, version: &str) -> Result<Definition> {
    let document = mbx
        .process_document(d.orchestration_id, version)
        .await
        .map_err(|_| {
            Usage(format!(
                "--to-version: {version} is not a version of orchestration '{}' (see `mbx orchestration show {}`)",
                d.instance.orchestration, d.instance.orchestration
            ))
        })?;
    Definition::from_document(&document).with_context(|| {
        format!(
            "orchestration {} version {version}",
            d.instance.orchestration
        )
    })
}

async fn change(
    mbx: &MessageBox,
    sel: &InstanceSelector,
    change: InstanceChange,
    to_version: Option<&str>,
    json_out: bool,
) -> Result<()> {
    let ids = mbx.process_instance_change(sel, change, to_version).await?;
    report(change, &ids, to_version, json_out)
}

fn report(
    change: InstanceChange,
    ids: &[Uuid],
    to_version: Option<&str>,
    json_out: bool,
) -> Result<()> {
    let verb = match change {
        InstanceChange::Suspend => "suspended",
        InstanceChange::Resume => "resumed",
        InstanceChange::Cancel => "cancelled",
    };
    if json_out {
        return output::json(&serde_json::json!({ verb: ids }));
    }
    let onto = to_version
        .map(|v| format!(" on version {v}"))
        .unwrap_or_default();
    println!("{verb} {} orchestration instance(s){onto}", ids.len());
    for id in ids {
        println!("    {id}");
    }
    Ok(())
}

async fn list(mbx: &MessageBox, sel: &InstanceSelector, json_out: bool) -> Result<()> {
    let rows = mbx.process_instance_list(sel).await?;
    if json_out {
        return output::json(&rows);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.orchestration.clone(),
                r.version.clone(),
                r.state.as_str().to_owned(),
                output::cell_summary(&correlation(&r.correlation.0), CELL_MAX_CHARS),
                r.steps.to_string(),
                r.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                r.error
                    .as_ref()
                    .map(|e| output::cell_summary(&error_line(&e.0), CELL_MAX_CHARS))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "INSTANCE",
            "ORCHESTRATION",
            "VERSION",
            "STATE",
            "CORRELATION",
            "STEPS",
            "UPDATED (UTC)",
            "ERROR",
        ],
        &cells,
    );
    Ok(())
}

fn correlation(v: &serde_json::Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// A workflow error in one line: `status type at /do/1/task: detail`.
fn error_line(e: &serde_json::Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
    let kind = s("type").rsplit('/').next().unwrap_or_default().to_owned();
    let title = s("title");
    let detail = s("detail");
    let text = [title, detail]
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    format!("{} {kind} at {}: {text}", e["status"], s("instance"))
}

/// Where a saved state stands and what it waits for, in words.
fn waits_for(d: &InstanceDetail, def: Option<&Definition>) -> (String, String) {
    let Ok(state) = serde_json::from_value::<State>(d.data.clone()) else {
        return ("-".into(), "its activating messages".into());
    };
    let at = def
        .and_then(|def| state.task_path(def))
        .unwrap_or_else(|| "-".into());
    let time = |t: f64| {
        chrono::DateTime::from_timestamp(t as i64, 0)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default()
    };
    let what = match state.stack.last().and_then(|f| f.pending.as_ref()) {
        Some(Pending::Listen { deadline, .. }) => match deadline {
            Some(t) => format!("a message, until {}", time(*t)),
            None => "a message".into(),
        },
        Some(Pending::Timer { due }) => format!("a timer due {}", time(*due)),
        Some(Pending::Call { request, .. }) => {
            format!(
                "the answer of a call (Idempotency-Key {})",
                request.idempotency_key
            )
        }
        None => "-".into(),
    };
    (at, what)
}

async fn show(mbx: &MessageBox, id: Uuid, json_out: bool) -> Result<()> {
    let d = mbx.process_instance_show(id).await?;
    if json_out {
        return output::json(&d);
    }
    let def = match mbx
        .process_document(d.orchestration_id, &d.instance.version)
        .await
    {
        Ok(doc) => Definition::from_document(&doc).ok(),
        Err(_) => None,
    };
    let (at, what) = waits_for(&d, def.as_ref());
    let i = &d.instance;
    let fields = [
        ("instance", i.id.to_string()),
        (
            "orchestration",
            format!("{} version {}", i.orchestration, i.version),
        ),
        ("state", i.state.as_str().to_owned()),
        ("correlation", correlation(&i.correlation.0)),
        ("at task", at),
        ("waits for", what),
        (
            "error",
            i.error
                .as_ref()
                .map(|e| error_line(&e.0))
                .unwrap_or_else(|| "-".into()),
        ),
        ("steps", i.steps.to_string()),
        ("created", i.created_at.to_rfc3339()),
        ("updated", i.updated_at.to_rfc3339()),
        (
            "ended",
            i.ended_at
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "-".into()),
        ),
    ];
    for (key, value) in fields {
        println!("{:<15} {value}", format!("{key}:"));
    }
    println!("\nmessages:");
    let rows: Vec<Vec<String>> = d
        .messages
        .iter()
        .map(|m| {
            let how = match (m.activating, m.consumed) {
                (true, _) => "activated it",
                (false, true) => "consumed",
                (false, false) => "held",
            };
            vec![
                m.seq.to_string(),
                m.message_id.to_string(),
                output::opt(&m.message_type),
                how.to_owned(),
                m.published_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]
        })
        .collect();
    table(&["SEQ", "MESSAGE", "TYPE", "", "PUBLISHED (UTC)"], &rows);
    if !d.subscriptions.is_empty() {
        println!("\nsubscribed by: {}", d.subscriptions.join(", "));
    }
    Ok(())
}

async fn history(mbx: &MessageBox, id: Uuid, json_out: bool) -> Result<()> {
    let events = mbx.process_instance_history(id).await?;
    if json_out {
        return output::json(&events);
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let message = e
                .message_id
                .map(|m| match &e.message_type {
                    Some(t) => format!("{m} ({t})"),
                    None => m.to_string(),
                })
                .unwrap_or_default();
            vec![
                e.at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                e.step.to_string(),
                e.event.clone(),
                output::opt(&e.task),
                message,
                e.detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &["AT (UTC)", "STEP", "EVENT", "TASK", "MESSAGE", "DETAIL"],
        &rows,
    );
    Ok(())
}
