//! Solicit-response send ports: the endpoint's answer becomes a message,
//! published in the transaction that completes the request's delivery (see
//! `delivery::record`). Its context is exactly: `mbx.CorrelationToken` (when the request
//! had one), `mbx.IsSolicitResponse=true`, `mbx.SendPortName`, `http.StatusCode`,
//! `mbx.ContentType`, and the request's properties the port names in `copy_properties`. It
//! is never routed back to the port that produced it. A request whose client waits
//! (a two-way receive) and that fails for good gets that client an answer too: a fault
//! routed to the waiting client only, with status 502 and the reason.

use mbx_adapters::Response;
use mbx_messagebox::config::SendPort;
use mbx_messagebox::context::system;
use mbx_messagebox::delivery::ClaimedDelivery;
use mbx_messagebox::publish::{NewBody, NewMessage, Published, Routing};
use mbx_messagebox::{Context, Value};

/// The response's status code (HTTP: the endpoint's status).
pub const STATUS_CODE: &str = mbx_vocabulary::STATUS_CODE;

/// The status a waiting client gets when the request failed for good.
pub const FAULT_STATUS: u16 = 502;

/// The response message of a solicit-response send.
pub(crate) fn response_message(
    port: &SendPort,
    request: &ClaimedDelivery,
    response: Response,
) -> NewMessage {
    let mut context = answer_context(port, request, response.status, &response.content_type);
    let copy = mbx_adapters::settings::copy_properties(&port.settings.0).unwrap_or_default();
    for name in copy {
        if let Some(p) = request.context.get(&name) {
            let _ = if p.promoted {
                context.promote(&name, p.value.clone())
            } else {
                context.write(&name, p.value.clone())
            };
        }
    }
    NewMessage {
        id: None,
        body: NewBody::Bytes(response.body),
        content_type: response.content_type,
        context,
        source: None,
        source_identity: None,
        routing: Routing::NotToPort(port.id),
    }
}

/// The answer to a waiting client whose request failed for good on this port; `None`
/// when no client waits for the request (it did not come from a two-way receive).
pub(crate) fn fault_message(
    port: &SendPort,
    request: &ClaimedDelivery,
    error: &str,
) -> Option<NewMessage> {
    let waits = request
        .context
        .get(system::IS_REQUEST_RESPONSE)
        .is_some_and(|p| p.value == Value::Boolean(true));
    if !waits || request.context.get(system::CORRELATION_TOKEN).is_none() {
        return None;
    }
    let text = format!(
        "send port '{}' could not get a response: {error}\n",
        port.name
    );
    Some(NewMessage {
        id: None,
        body: NewBody::Bytes(text.into()),
        content_type: "text/plain; charset=utf-8".to_owned(),
        context: answer_context(port, request, FAULT_STATUS, "text/plain; charset=utf-8"),
        source: None,
        source_identity: None,
        routing: Routing::ReplyOnly,
    })
}

fn answer_context(
    port: &SendPort,
    request: &ClaimedDelivery,
    status: u16,
    content_type: &str,
) -> Context {
    let mut context = Context::new();
    // names and values the engine made: promotion cannot fail on them
    if let Some(token) = request.context.get(system::CORRELATION_TOKEN) {
        let _ = context.promote(system::CORRELATION_TOKEN, token.value.clone());
    }
    let _ = context.promote(system::IS_SOLICIT_RESPONSE, Value::Boolean(true));
    let _ = context.promote(system::SEND_PORT_NAME, Value::String(port.name.clone()));
    let _ = context.promote(STATUS_CODE, Value::Integer(i64::from(status)));
    let _ = context.write(system::CONTENT_TYPE, Value::String(content_type.to_owned()));
    context
}

/// Counts the responses published, and those that found neither a subscriber nor a
/// waiting client (suspended as routing failures, with the reason).
pub(crate) fn observe_published(port: &SendPort, published: &[Published]) {
    let unrouted = published
        .iter()
        .filter(|p| matches!(p, Published::RoutingFailure { .. }))
        .count() as u64;
    metrics::counter!("mbx_responses_published_total", "port" => port.name.clone())
        .increment(published.len() as u64);
    if unrouted > 0 {
        tracing::warn!(port = %port.name, unrouted,
            "responses found no subscriber and no waiting client; suspended as routing failures");
        metrics::counter!("mbx_responses_unrouted_total", "port" => port.name.clone())
            .increment(unrouted);
    }
}
