//! The actions (POST, behind the guard's session, read-only and CSRF checks): the same
//! MessageBox calls as the CLI, each logged with what it changed. Suspended items are
//! acted on in two steps: a confirmation that pins the ids and shows their count, then
//! the action on exactly those ids.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::header::LOCATION;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use maud::html;
use mbx_messagebox::suspended::Selector;
use ring::rand::{SecureRandom, SystemRandom};
use tracing::info;

use crate::auth::{set_flash, Ctx};
use crate::view::{csrf_input, page, Nav};
use crate::{App, ConsoleError, Pin};

/// How long a confirmation stays valid.
const PIN_TTL: Duration = Duration::from_secs(10 * 60);
/// Confirmations kept at most (the oldest go first): each may hold every suspended id.
const PINS_MAX: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ItemAction {
    Resume,
    Terminate,
}

impl ItemAction {
    fn verb(self) -> &'static str {
        match self {
            ItemAction::Resume => "resume",
            ItemAction::Terminate => "terminate",
        }
    }
}

fn form(body: &Bytes) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

/// A 303 to `return_to` (a path of this console only) with a flash message.
fn done(return_to: Option<&str>, message: &str) -> Response {
    let to = return_to
        .filter(|t| t.starts_with('/') && !t.starts_with("//") && !t.contains('\\'))
        .unwrap_or("/");
    (
        StatusCode::SEE_OTHER,
        [(LOCATION, to.to_owned())],
        set_flash(message),
    )
        .into_response()
}

pub(crate) async fn send_port(
    State(app): State<Arc<App>>,
    Path((name, verb)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let f = form(&body);
    let mbx = &app.mbx;
    let change = match verb.as_str() {
        "start" => mbx.send_port_start(&name).await?,
        "stop" => mbx.send_port_stop(&name).await?,
        "enlist" => mbx.send_port_enlist(&name).await?,
        "unenlist" => mbx.send_port_unenlist(&name, false).await?,
        "resume" => mbx.send_port_resume(&name).await?,
        "skip" => mbx.send_port_skip(&name).await?,
        other => {
            return Err(ConsoleError::Request(
                StatusCode::NOT_FOUND,
                format!("'{other}' is not an action on a send port (start, stop, enlist, unenlist, resume, skip)"),
            ))
        }
    };
    info!(action = %format!("send-port {verb}"), object = %change.object,
          from = %change.from, to = %change.to, "console action");
    let message = if change.changed() {
        format!("send port {name}: {} → {}", change.from, change.to)
    } else {
        format!("send port {name}: already {}; nothing changed", change.to)
    };
    Ok(done(field(&f, "return_to"), &message))
}

pub(crate) async fn receive_location(
    State(app): State<Arc<App>>,
    Path((name, verb)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let f = form(&body);
    let enable = match verb.as_str() {
        "enable" => true,
        "disable" => false,
        other => {
            return Err(ConsoleError::Request(
                StatusCode::NOT_FOUND,
                format!("'{other}' is not an action on a receive location (enable, disable)"),
            ))
        }
    };
    let changed = app.mbx.receive_location_set_enabled(&name, enable).await?;
    let state = if enable { "enabled" } else { "disabled" };
    info!(action = %format!("receive-location {verb}"), object = %format!("receive location {name}"),
          to = state, changed, "console action");
    let message = if changed {
        format!("receive location {name}: {state}")
    } else {
        format!("receive location {name}: already {state}; nothing changed")
    };
    Ok(done(field(&f, "return_to"), &message))
}

fn pin_id() -> Result<String, ConsoleError> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| ConsoleError::Config("no random numbers from the system".into()))?;
    Ok(hex::encode(b))
}

/// POST /suspended/confirm: pins the selected (or all matching) items and asks.
pub(crate) async fn suspended_confirm(
    State(app): State<Arc<App>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let f = form(&body);
    let what = field(&f, "do").unwrap_or("");
    let (action, matching) = match what {
        "resume-selected" => (ItemAction::Resume, false),
        "terminate-selected" => (ItemAction::Terminate, false),
        "resume-matching" => (ItemAction::Resume, true),
        "terminate-matching" => (ItemAction::Terminate, true),
        other => {
            return Err(ConsoleError::bad_request(format!(
                "'{other}' is not an action on suspended items"
            )))
        }
    };
    let filter: std::collections::HashMap<String, String> = f
        .iter()
        .filter(|(k, v)| ["port", "kind", "error", "older"].contains(&k.as_str()) && !v.is_empty())
        .cloned()
        .collect();
    let ids: Vec<i64> = if matching {
        app.mbx
            .suspended_ids(&crate::pages::selector_of(&filter)?)
            .await?
    } else {
        f.iter()
            .filter(|(k, _)| k == "id")
            .map(|(_, v)| {
                v.parse::<i64>().map_err(|_| {
                    ConsoleError::bad_request(format!("'{v}' is not a suspended item id"))
                })
            })
            .collect::<Result<_, _>>()?
    };
    if ids.is_empty() {
        return Err(ConsoleError::bad_request(
            "no suspended item selected: tick the items first, or use \"all matching\"",
        ));
    }
    let pin = pin_id()?;
    let count = ids.len();
    let sample: Vec<i64> = ids.iter().take(20).copied().collect();
    if let Ok(mut pins) = app.pins.lock() {
        pins.retain(|_, p| p.made.elapsed() < PIN_TTL);
        while pins.len() >= PINS_MAX {
            let oldest = pins
                .iter()
                .min_by_key(|(_, p)| p.made)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => pins.remove(&k),
                None => break,
            };
        }
        pins.insert(
            pin.clone(),
            Pin {
                action,
                ids,
                made: Instant::now(),
            },
        );
    }
    let scope = if matching {
        let described: Vec<String> = filter.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        if described.is_empty() {
            "all suspended items".to_owned()
        } else {
            format!("the items matching {}", described.join(", "))
        }
    } else {
        "the selected items".to_owned()
    };
    let body = html! {
        h1 { "Confirm" }
        p #confirm-question {
            (if action == ItemAction::Resume { "Resume " } else { "Terminate " })
            strong #confirm-count { (count) } " suspended item(s)" " — " (scope) "?"
        }
        @if action == ItemAction::Terminate { p.warn { "Terminated items and their messages are removed; this cannot be undone." } }
        p.muted { "Exactly these " (count) " items are acted on, even if more match by the time you confirm. Ids: "
            (sample.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")) @if count > sample.len() { ", …" } }
        form method="post" action="/suspended/act" {
            (csrf_input(&ctx))
            input type="hidden" name="pin" value=(pin);
            button #confirm type="submit" class=[(action == ItemAction::Terminate).then_some("danger")] {
                (if action == ItemAction::Resume { "Resume " } else { "Terminate " }) (count)
            }
            " " a href="/suspended" { "Cancel" }
        }
    };
    Ok(page(&ctx, "Confirm", Nav::Suspended, body))
}

/// POST /suspended/act: runs a confirmed action on its pinned ids (once).
pub(crate) async fn suspended_act(
    State(app): State<Arc<App>>,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let f = form(&body);
    let pin = field(&f, "pin").unwrap_or("");
    let taken = app
        .pins
        .lock()
        .ok()
        .and_then(|mut pins| pins.remove(pin))
        .filter(|p| p.made.elapsed() < PIN_TTL)
        .ok_or_else(|| {
            ConsoleError::Request(
                StatusCode::GONE,
                "this confirmation expired or was used already (or the console restarted); select the items again".into(),
            )
        })?;
    let confirmed = taken.ids.len();
    let sel = Selector {
        ids: Some(taken.ids),
        ..Default::default()
    };
    let message = match taken.action {
        ItemAction::Resume => {
            let r = app.mbx.suspended_resume(&sel).await?;
            info!(
                action = "suspended resume",
                confirmed,
                resumed = r.resumed,
                still_unrouted = r.still_unrouted,
                not_resumable = r.not_resumable,
                "console action"
            );
            format!(
                "resumed {} of {confirmed} confirmed item(s); {} still match no subscriber, {} cannot be resumed, {} were no longer suspended",
                r.resumed,
                r.still_unrouted,
                r.not_resumable,
                confirmed as u64 - (r.resumed + r.still_unrouted + r.not_resumable).min(confirmed as u64)
            )
        }
        ItemAction::Terminate => {
            let n = app.mbx.suspended_terminate(&sel).await?;
            info!(
                action = "suspended terminate",
                confirmed,
                terminated = n,
                "console action"
            );
            format!(
                "terminated {n} of {confirmed} confirmed item(s){}",
                if (n as usize) < confirmed {
                    "; the others were no longer suspended"
                } else {
                    ""
                }
            )
        }
    };
    tracing::debug!(verb = taken.action.verb(), "pinned action done");
    Ok(done(Some("/suspended"), &message))
}
