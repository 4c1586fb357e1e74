//! Failed-message routing: a send port or receive port with `--route-failed`
//! does not only suspend a failed message, it also publishes a copy — in the transaction
//! that suspends it — whose promoted properties are the `ErrorReport.*` ones, so an
//! error-handling port (filter `ErrorReport.ErrorType == "FailedMessage"`) can deliver it
//! to a dead-letter folder, queue or mailbox. The original's own properties travel along
//! as written (they no longer route), its `mbx.*` ones are dropped (a report is no reply,
//! no request). A report no subscriber takes is dropped ([`Routing::ErrorReport`]): never
//! a routing failure, never reported again, so reports cannot loop. The suspended item
//! stays as it is.

use std::collections::HashMap;

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::context::system;
use crate::publish::{NewBody, NewMessage, Published, Publisher, Routing};
use crate::{Context, MessageBox, Result, Value};

pub const FAILURE_CODE: &str = "ErrorReport.FailureCode";
pub const ERROR_TYPE: &str = "ErrorReport.ErrorType";
pub const SEND_PORT_NAME: &str = "ErrorReport.SendPortName";
pub const RECEIVE_PORT_NAME: &str = "ErrorReport.ReceivePortName";
pub const OUTBOUND_TRANSPORT_LOCATION: &str = "ErrorReport.OutboundTransportLocation";
pub const DESCRIPTION: &str = "ErrorReport.Description";

/// `ErrorReport.ErrorType` of a failed send or receive.
pub const FAILED_MESSAGE: &str = "FailedMessage";
/// `ErrorReport.ErrorType` of a message no subscriber matched.
pub const ROUTING_FAILURE: &str = "RoutingFailure";

/// What the error reports of one suspension came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reported {
    /// Published to their subscribers.
    pub published: u64,
    /// No subscriber: dropped (logged and counted by the caller).
    pub dropped: u64,
}

impl Reported {
    fn of(outcomes: &[Published]) -> Self {
        let dropped = outcomes
            .iter()
            .filter(|o| matches!(o, Published::Unsubscribed))
            .count() as u64;
        Reported {
            published: outcomes.len() as u64 - dropped,
            dropped,
        }
    }
}

/// The copy's context: the original's own properties written (not promoted), its `mbx.*`
/// dropped, the `ErrorReport.*` promoted.
fn report_context(original: &Context, fields: &[(&str, Option<String>)]) -> Context {
    let mut context = Context::new();
    for (name, p) in original.iter() {
        if !system::is_engine_property(name) {
            let _ = context.write(name, p.value.clone());
        }
    }
    for (name, value) in fields {
        if let Some(v) = value {
            // the engine's names; a value longer than a promoted value may be is written
            if context.promote(name, Value::String(v.clone())).is_err() {
                let _ = context.write(name, Value::String(v.clone()));
            }
        }
    }
    context
}

/// The stored messages `ids`: context, content type and a body to copy.
async fn originals(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, (Context, String, NewBody)>> {
    #[derive(sqlx::FromRow)]
    struct Original {
        id: Uuid,
        context: serde_json::Value,
        content_type: String,
        body: Option<Vec<u8>>,
        body_size: i64,
    }
    let rows = sqlx::query_as::<_, Original>(
        "SELECT id, context, content_type, body, body_size FROM messages WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut out = HashMap::new();
    for row in rows {
        let id = row.id;
        let context: Context = serde_json::from_value(row.context)
            .map_err(|e| crate::Error::Corrupt(format!("context of {id}: {e}")))?;
        let len = u64::try_from(row.body_size).unwrap_or(0);
        let body = match row.body {
            Some(b) => NewBody::Bytes(b.into()),
            None => NewBody::CopyOf {
                message_id: id,
                len,
            },
        };
        out.insert(id, (context, row.content_type, body));
    }
    Ok(out)
}

/// One suspended delivery of a send port with `--route-failed`.
pub(crate) struct SendFailure {
    pub message_id: Uuid,
    pub port: String,
    pub address: Option<String>,
    pub kind: String,
    pub reason: String,
}

/// Publishes the error reports of suspended send failures, in `tx`.
pub(crate) async fn report_send_failures(
    mbx: &MessageBox,
    tx: &mut Transaction<'_, Postgres>,
    failures: &[SendFailure],
) -> Result<Reported> {
    if failures.is_empty() {
        return Ok(Reported::default());
    }
    let ids: Vec<Uuid> = failures.iter().map(|f| f.message_id).collect();
    let originals = originals(tx, &ids).await?;
    let mut reports = Vec::new();
    for f in failures {
        let Some((context, content_type, body)) = originals.get(&f.message_id) else {
            continue;
        };
        let location = f.address.clone().or_else(|| {
            context
                .get(system::OUTBOUND_TRANSPORT_LOCATION)
                .map(|p| p.value.to_plain_string())
        });
        let fields = [
            (FAILURE_CODE, Some(f.kind.clone())),
            (ERROR_TYPE, Some(FAILED_MESSAGE.to_owned())),
            (SEND_PORT_NAME, Some(f.port.clone())),
            (OUTBOUND_TRANSPORT_LOCATION, location),
            (DESCRIPTION, Some(f.reason.clone())),
        ];
        reports.push(report(context, content_type, body, &fields));
    }
    let (outcomes, _) = mbx.publish_in(tx, &Publisher::default(), reports).await?;
    Ok(Reported::of(&outcomes))
}

/// Publishes the error reports of routing failures of messages received through
/// `location`, when its receive port has `--route-failed`, in `tx`.
pub(crate) async fn report_routing_failures(
    mbx: &MessageBox,
    tx: &mut Transaction<'_, Postgres>,
    publisher: &Publisher,
    location: i64,
    failed: &[(Uuid, String)],
) -> Result<Reported> {
    let Some(port) = reporting_port(tx, location).await? else {
        return Ok(Reported::default());
    };
    let ids: Vec<Uuid> = failed.iter().map(|f| f.0).collect();
    let originals = originals(tx, &ids).await?;
    let mut reports = Vec::new();
    for (id, reason) in failed {
        let Some((context, content_type, body)) = originals.get(id) else {
            continue;
        };
        let fields = [
            (FAILURE_CODE, Some("routing-failure".to_owned())),
            (ERROR_TYPE, Some(ROUTING_FAILURE.to_owned())),
            (RECEIVE_PORT_NAME, Some(port.clone())),
            (DESCRIPTION, Some(reason.clone())),
        ];
        reports.push(report(context, content_type, body, &fields));
    }
    let publisher = Publisher {
        fence: None,
        ..publisher.clone()
    };
    let (outcomes, _) = mbx.publish_in(tx, &publisher, reports).await?;
    Ok(Reported::of(&outcomes))
}

/// Publishes the error report of a receive failure (message `id`, kept suspended) of
/// `location`, when its receive port has `--route-failed`, in `tx`.
pub(crate) async fn report_receive_failure(
    mbx: &MessageBox,
    tx: &mut Transaction<'_, Postgres>,
    publisher: &Publisher,
    location: i64,
    id: Uuid,
    reason: &str,
) -> Result<Reported> {
    let Some(port) = reporting_port(tx, location).await? else {
        return Ok(Reported::default());
    };
    let originals = originals(tx, &[id]).await?;
    let Some((context, content_type, body)) = originals.get(&id) else {
        return Ok(Reported::default());
    };
    let fields = [
        (FAILURE_CODE, Some("receive-failure".to_owned())),
        (ERROR_TYPE, Some(FAILED_MESSAGE.to_owned())),
        (RECEIVE_PORT_NAME, Some(port)),
        (DESCRIPTION, Some(reason.to_owned())),
    ];
    let publisher = Publisher {
        fence: None,
        ..publisher.clone()
    };
    let (outcomes, _) = mbx
        .publish_in(
            tx,
            &publisher,
            vec![report(context, content_type, body, &fields)],
        )
        .await?;
    Ok(Reported::of(&outcomes))
}

/// The receive port of `location` when it routes its failures.
async fn reporting_port(
    tx: &mut Transaction<'_, Postgres>,
    location: i64,
) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT r.name FROM receive_locations l JOIN receive_ports r ON r.id = l.receive_port_id
          WHERE l.id = $1 AND r.route_failed",
    )
    .bind(location)
    .fetch_optional(&mut **tx)
    .await?)
}

fn report(
    original: &Context,
    content_type: &str,
    body: &NewBody,
    fields: &[(&str, Option<String>)],
) -> NewMessage {
    NewMessage {
        id: None,
        body: body.clone(),
        content_type: content_type.to_owned(),
        context: report_context(original, fields),
        source: None,
        source_identity: None,
        routing: Routing::ErrorReport,
    }
}
