//! Calls of orchestration instances through solicit-response send ports (`call:
//! NAME@mbx`). The request is published by the step that makes the call, routed to that
//! port only ([`Routing::OnlyPort`]), with the call's token promoted as
//! `mbx.CorrelationToken` and the instance written as `mbx.CalledBy`; the port's answer
//! carries the token and reaches the instance through its correlation subscription. A
//! request the port suspends (retries spent, a failure for good, an operator's suspend)
//! answers the instance in the same transaction: status 502 and the reason, so the
//! instance raises `communication` instead of waiting for good.

use sqlx::{Postgres, Transaction};

use crate::context::system;
use crate::publish::{NewBody, NewMessage, Publisher, Routing};
use crate::{Context, MessageBox, Result, Value};

/// The status an instance's call gets when the port suspended its request.
pub const SUSPENDED_STATUS: i64 = 502;

impl MessageBox {
    /// The send port an instance calls by name: its id, or why it cannot be called (it
    /// does not exist, is not solicit-response, or is unenlisted).
    pub async fn process_call_port(&self, name: &str) -> Result<std::result::Result<i64, String>> {
        let row: Option<(i64, bool, String)> =
            sqlx::query_as("SELECT id, solicit_response, state FROM send_ports WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            None => Err(format!(
                "send port '{name}' does not exist: create it (mbx port create {name} --solicit-response …)"
            )),
            Some((_, false, _)) => Err(format!(
                "send port '{name}' is not solicit-response: a call needs its answer"
            )),
            Some((_, _, state)) if state == "unenlisted" => Err(format!(
                "send port '{name}' is unenlisted: enlist it (mbx port enlist {name})"
            )),
            Some((id, _, _)) => Ok(id),
        })
    }
}

/// The request a call through a send port publishes: `body` as `content_type`, the
/// call's `token` promoted, the calling instance written, to port `port_id` only.
pub fn call_request(
    port_id: i64,
    instance: uuid::Uuid,
    token: &str,
    body: Vec<u8>,
    content_type: &str,
) -> Result<NewMessage> {
    let mut context = Context::new();
    context.promote(system::CORRELATION_TOKEN, Value::String(token.to_owned()))?;
    context.write(system::CALLED_BY, Value::String(instance.to_string()))?;
    let mut m = NewMessage::new(body, content_type, context);
    m.routing = Routing::OnlyPort(port_id);
    Ok(m)
}

/// Answers the instances whose requests (deliveries `ids`, each failed with its `errors`
/// entry) are being suspended in `tx`: a 502 naming the port and the reason, routed to
/// the waiting instance only, whose host is notified when `tx` commits (suspensions are
/// rare: a notifying commit's cost does not matter here).
pub(crate) async fn answer_suspended_calls(
    mbx: &MessageBox,
    tx: &mut Transaction<'_, Postgres>,
    ids: &[i64],
    errors: &[String],
) -> Result<()> {
    let calls: Vec<(sqlx::types::Json<Context>, String, String)> = sqlx::query_as(
        "SELECT m.context, p.name, c.error
           FROM unnest($1::int8[], $2::text[]) AS c(id, error)
           JOIN deliveries d ON d.id = c.id
           JOIN messages m ON m.id = d.message_id
           JOIN send_ports p ON p.id = d.port_id
          WHERE m.context ? $3",
    )
    .bind(ids)
    .bind(errors)
    .bind(system::CALLED_BY)
    .fetch_all(&mut **tx)
    .await?;
    if calls.is_empty() {
        return Ok(());
    }
    let content_type = "text/plain; charset=utf-8";
    let mut answers = Vec::with_capacity(calls.len());
    for (request, port, error) in calls {
        let Some(token) = request.0.get(system::CORRELATION_TOKEN) else {
            continue;
        };
        let mut context = Context::new();
        context.promote(system::CORRELATION_TOKEN, token.value.clone())?;
        context.promote(system::IS_SOLICIT_RESPONSE, Value::Boolean(true))?;
        context.promote(system::SEND_PORT_NAME, Value::String(port.clone()))?;
        context.promote(
            mbx_vocabulary::STATUS_CODE,
            Value::Integer(SUSPENDED_STATUS),
        )?;
        context.write(system::CONTENT_TYPE, Value::String(content_type.to_owned()))?;
        answers.push(NewMessage {
            id: None,
            body: NewBody::Bytes(
                format!("send port '{port}' suspended the request: {error}").into(),
            ),
            content_type: content_type.to_owned(),
            context,
            source: None,
            source_identity: None,
            routing: Routing::InstancesOnly,
        });
    }
    mbx.publish_in(tx, &Publisher::default(), answers).await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(crate::PUBLISH_CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
