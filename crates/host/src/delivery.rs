//! One delivery loop per started send port: claim a batch, hand it to the send adapter,
//! then complete what the endpoint confirmed and fail the rest — each a single batched
//! MessageBox call. The loop waits on publish notifications, with polling as fallback.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mbx_adapters::{MessageContext, OutboundMessage, Outcome, SendAdapter};
use mbx_messagebox::config::SendPort;
use mbx_messagebox::context::system;
use mbx_messagebox::delivery::{ClaimLimits, ClaimedDelivery, Failure};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, warn};
use uuid::Uuid;

use crate::{pause, Shared};

/// Attempts to record a batch's outcomes before giving up (the claims then stay until this
/// instance is declared dead and they are reclaimed).
const RECORD_ATTEMPTS_MAX: u32 = 5;

pub(crate) async fn port_loop(
    shared: Arc<Shared>,
    port: SendPort,
    mut stop: watch::Receiver<bool>,
) {
    let limits = ClaimLimits {
        max_count: shared.config.claim_batch,
        max_bytes: shared.config.claim_bytes,
    };
    shared.progressed(port.id);
    loop {
        if *stop.borrow() || *shared.stopping.borrow() {
            shared.forget_progress(port.id);
            return;
        }
        shared.progressed(port.id);
        // register for the wake-up before claiming, so a publish in between is not missed
        let notified = shared.published.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let instance = shared.instance_id();
        match shared.mbx.deliveries_claim(instance, port.id, limits).await {
            Ok(batch) if !batch.is_empty() => {
                send_batch(&shared, &port, instance, batch).await;
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                warn!(port = %port.name, error = %e, "claim failed");
                if !pause(&shared, shared.config.poll_interval).await {
                    shared.forget_progress(port.id);
                    return;
                }
                continue;
            }
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(shared.config.poll_interval) => {}
            _ = stop.changed() => {}
        }
    }
}

/// The context as adapters see it: every property as text.
fn adapter_context(d: &ClaimedDelivery) -> MessageContext {
    let mut ctx = MessageContext::new();
    for (name, p) in d.context.iter() {
        ctx.insert(name, p.value.to_plain_string());
    }
    ctx
}

/// The address of one delivery: the port's, or for a dynamic port the message's
/// `mbx.OutboundTransportLocation` if it starts with an allowed prefix.
fn resolve_address(port: &SendPort, d: &ClaimedDelivery) -> Result<String, String> {
    if let Some(a) = &d.address {
        return Ok(a.clone());
    }
    let Some(p) = d.context.get(system::OUTBOUND_TRANSPORT_LOCATION) else {
        return Err(format!(
            "dynamic send port '{}': the message has no {}",
            port.name,
            system::OUTBOUND_TRANSPORT_LOCATION
        ));
    };
    let address = p.value.to_plain_string();
    if address.contains("..")
        || !port
            .allow_address
            .iter()
            .any(|prefix| address.starts_with(prefix.as_str()))
    {
        return Err(format!(
            "dynamic send port '{}': address '{address}' is not under an allowed prefix ({})",
            port.name,
            port.allow_address.join(", ")
        ));
    }
    Ok(address)
}

async fn send_batch(shared: &Shared, port: &SendPort, instance: Uuid, batch: Vec<ClaimedDelivery>) {
    let started = Instant::now();
    let tokens: HashMap<i64, Uuid> = batch
        .iter()
        .map(|d| (d.delivery_id, d.claim_token))
        .collect();
    let published: HashMap<i64, chrono::DateTime<chrono::Utc>> = batch
        .iter()
        .map(|d| (d.delivery_id, d.published_at))
        .collect();
    let mut outcomes: HashMap<i64, Outcome> = HashMap::new();
    let mut by_adapter: HashMap<&'static str, (Arc<dyn SendAdapter>, Vec<OutboundMessage>)> =
        HashMap::new();
    for d in batch {
        let address = match resolve_address(port, &d) {
            Ok(a) => a,
            Err(e) => {
                outcomes.insert(d.delivery_id, Outcome::failed(e, false));
                continue;
            }
        };
        let adapter = match shared.registry.send_adapter(&address) {
            Ok(a) => a,
            Err(e) => {
                outcomes.insert(d.delivery_id, Outcome::failed(e, false));
                continue;
            }
        };
        let body = match &d.body {
            Some(b) => b.clone(),
            None => match shared.mbx.message_body(d.message_id).await {
                Ok(b) => b,
                Err(e) => {
                    outcomes.insert(
                        d.delivery_id,
                        Outcome::failed(format!("reading the body: {e}"), true),
                    );
                    continue;
                }
            },
        };
        let message = OutboundMessage {
            delivery_id: d.delivery_id,
            message_id: d.message_id,
            port_name: port.name.clone(),
            address,
            settings: port.settings.0.clone(),
            body,
            content_type: d.content_type.clone(),
            context: adapter_context(&d),
        };
        by_adapter
            .entry(adapter.name())
            .or_insert_with(|| (adapter.clone(), Vec::new()))
            .1
            .push(message);
    }
    let expected: usize = by_adapter.values().map(|(_, v)| v.len()).sum();
    let (tx, mut rx) = mpsc::channel(expected.max(1));
    for (_, (adapter, messages)) in by_adapter {
        adapter.send(messages, tx.clone());
    }
    drop(tx);
    // every adapter reports each message once, then drops its sender
    while let Some(report) = rx.recv().await {
        shared.progressed(port.id);
        outcomes.insert(report.delivery_id, report.outcome);
    }
    let mut delivered = Vec::new();
    let mut failures = Vec::new();
    for (id, token) in &tokens {
        match outcomes.remove(id) {
            Some(Outcome::Delivered) => {
                // publish commit → endpoint confirmed (database clock vs ours: approximate)
                if let Some(at) = published.get(id) {
                    let latency = (chrono::Utc::now() - *at)
                        .num_microseconds()
                        .unwrap_or(0)
                        .max(0);
                    metrics::histogram!("mbx_delivery_latency_seconds", "port" => port.name.clone())
                        .record(latency as f64 / 1e6);
                }
                delivered.push((*id, *token))
            }
            Some(Outcome::Failed { error, retryable }) => failures.push(Failure {
                delivery_id: *id,
                claim_token: *token,
                error,
                retryable,
            }),
            None => failures.push(Failure {
                delivery_id: *id,
                claim_token: *token,
                error: "the adapter reported no outcome for this message".to_owned(),
                retryable: true,
            }),
        }
    }
    let labels = [("port", port.name.clone())];
    metrics::histogram!("mbx_send_batch_seconds", &labels).record(started.elapsed().as_secs_f64());
    record(shared, port, instance, delivered, failures).await;
}

async fn record(
    shared: &Shared,
    port: &SendPort,
    instance: Uuid,
    delivered: Vec<(i64, Uuid)>,
    failures: Vec<Failure>,
) {
    let labels = [("port", port.name.clone())];
    for attempt in 1..=RECORD_ATTEMPTS_MAX {
        let result = async {
            let done = shared.mbx.deliveries_complete(instance, &delivered).await?;
            let report = shared.mbx.deliveries_fail(instance, &failures).await?;
            Ok::<_, mbx_messagebox::Error>((done.len(), report))
        }
        .await;
        match result {
            Ok((done, report)) => {
                metrics::counter!("mbx_messages_delivered_total", &labels).increment(done as u64);
                metrics::counter!("mbx_delivery_failures_total", &labels)
                    .increment(failures.len() as u64);
                if done < delivered.len() || report.stale > 0 {
                    warn!(port = %port.name, stale = delivered.len() - done + report.stale as usize,
                          "some claims were reclaimed meanwhile; their outcomes were dropped");
                }
                debug!(port = %port.name, delivered = done, failed = failures.len(), "batch recorded");
                return;
            }
            Err(e) => {
                error!(port = %port.name, attempt, error = %e, "recording outcomes failed");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
        }
    }
}
