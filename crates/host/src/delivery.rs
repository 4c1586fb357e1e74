//! Sending claimed deliveries and recording their outcomes: hand a batch to the send
//! adapter, then complete what the endpoint confirmed and fail the rest — each a single
//! batched MessageBox call. Unordered ports get their batches from the instance's
//! dispatcher (`dispatch.rs`: one claim per round for every port); ordered ports run
//! [`ordered_port_loop`] here, and ports ordered by a property `keyed.rs`. On an unordered
//! port the outcomes of one batch are recorded while the next batch is claimed and sent
//! ([`COMPLETIONS_IN_FLIGHT`]): the completion's commit (an fsync) no longer stalls it.
//!
//! A send adapter that panics — in `send` or on one of its own tasks — leaves its messages
//! without outcomes: they fail non-retryable naming the panic, like any message that
//! cannot be sent in principle (suspended `failed-final`; an ordered port with
//! stop-on-failure is held instead), and the loop goes on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mbx_adapters::{
    Body, ChunkSource, Fence, MessageContext, OutboundMessage, Outcome, OutcomeSender, SendAdapter,
    SendTransport,
};
use mbx_messagebox::config::SendPort;
use mbx_messagebox::context::system;
use mbx_messagebox::delivery::{ClaimLimits, ClaimedDelivery, Failure};
use mbx_messagebox::publish::{NewMessage, Publisher};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::forward::Forwarder;
use crate::heartbeat::Liveness;
use crate::instance::Instance;
use crate::lease::{Leased, Share, Tenure};
use crate::listen::Wakeups;
use crate::throttle::Throttle;
use crate::transport::PortTransports;
use mbx_messagebox::ordered::LEASE_MARGIN_MS;

/// Send timeout of HTTP sends on ordered ports: below the lease margin, so a replaced
/// owner emits at most the one message it was sending.
pub const ORDERED_SEND_TIMEOUT_MS: i64 = LEASE_MARGIN_MS - 1_000;

/// Batches of an unordered port whose outcomes may be being recorded while the loop claims
/// the next one.
pub const COMPLETIONS_IN_FLIGHT: usize = 1;

/// First and longest pause between two attempts of a unit of MessageBox work.
const RETRY_BACKOFF_MIN_MS: u64 = 200;
const RETRY_BACKOFF_MAX_MS: u64 = 2_000;

/// Attempts to record a batch's outcomes before giving up (the claims then stay until this
/// instance is declared dead and they are reclaimed).
const RECORD_ATTEMPTS_MAX: u32 = 5;

/// What the delivery loops of an instance hold (the dispatcher and its port workers,
/// ordered and keyed ports): the handles they use and nothing of the receive side. Cheap
/// to clone (one `Arc`).
#[derive(Clone)]
pub(crate) struct Delivering {
    inner: Arc<DeliveringInner>,
}

struct DeliveringInner {
    instance: Instance,
    registry: mbx_adapters::Registry,
    wake: Wakeups,
    liveness: Liveness,
    throttle: Arc<Throttle>,
    forwarder: Forwarder,
    share: Arc<Share>,
}

impl Delivering {
    pub fn new(
        instance: Instance,
        registry: mbx_adapters::Registry,
        wake: Wakeups,
        liveness: Liveness,
        throttle: Arc<Throttle>,
        forwarder: Forwarder,
        share: Arc<Share>,
    ) -> Self {
        let inner = DeliveringInner {
            instance,
            registry,
            wake,
            liveness,
            throttle,
            forwarder,
            share,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The MessageBox, the configuration, this instance's id, stopping.
    pub fn instance(&self) -> &Instance {
        &self.inner.instance
    }

    /// How `port`'s messages leave: its adapters (from the registry) or forwards.
    pub fn transports(&self, port: &SendPort) -> PortTransports {
        PortTransports::new(&self.inner.registry, port)
    }

    /// Resolves at the next publish (or anything else that may have made work due).
    pub fn published(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.wake.published()
    }

    /// Each loop's progress for the watchdog, and the delivered counts.
    pub fn liveness(&self) -> &Liveness {
        &self.inner.liveness
    }

    /// The delivery throttle: the room for in-flight work a claim reserves.
    pub fn throttle(&self) -> &Arc<Throttle> {
        &self.inner.throttle
    }

    /// Where deliveries to another group go, and are told completed.
    pub fn forwarder(&self) -> &Forwarder {
        &self.inner.forwarder
    }

    /// Ordered ports and bucket leases spread over the host's instances.
    pub fn share(&self) -> &Share {
        &self.inner.share
    }
}

/// How long a delivery loop that claimed nothing sleeps before it claims again: until the
/// port's earliest scheduled retry falls due, so a retry is sent at its due time rather
/// than up to a poll interval later; at most the poll interval, which also
/// stands in when the MessageBox cannot say (the claim that follows reports the error).
pub(crate) async fn idle_wait(instance: &Instance, port: &SendPort) -> Duration {
    let poll = instance.config().poll_interval;
    match instance.mbx().deliveries_next_due(port.id).await {
        Ok(Some(due)) => due.min(poll),
        Ok(None) => poll,
        Err(e) => {
            debug!(port = %port.name, error = %e, "next due time unknown; polling");
            poll
        }
    }
}

/// The context as adapters see it: every property as text.
/// The context an adapter sees: the delivery's (with its per-delivery values) and
/// `mbx.RetryInterval`, the seconds the next retry would wait if this attempt fails (the
/// transport in use, its backoff applied).
fn adapter_context(port: &SendPort, d: &ClaimedDelivery) -> MessageContext {
    let mut ctx = MessageContext::new();
    for (name, p) in d.context.iter() {
        ctx.insert(name, p.value.to_plain_string());
    }
    let interval = port.retry_policy(d.transport).delay_s(d.retries + 1);
    ctx.insert(system::RETRY_INTERVAL, interval.to_string());
    ctx
}

/// Sends claimed deliveries through their adapters and collects one outcome each. On an
/// ordered port, HTTP sends time out within the lease margin unless the port says less.
pub(crate) async fn send_all(
    delivering: &Delivering,
    port: &SendPort,
    transports: &PortTransports,
    batch: &[ClaimedDelivery],
    fence: Option<&Fence>,
) -> (HashMap<i64, Outcome>, HashMap<i64, String>) {
    let mut outcomes: HashMap<i64, Outcome> = HashMap::new();
    let mut checkpoints: HashMap<i64, String> = HashMap::new();
    let mut by_adapter: HashMap<&'static str, (Arc<dyn SendAdapter>, Vec<OutboundMessage>)> =
        HashMap::new();
    // deliveries to another group are forwarded by the host itself, not by an adapter
    let mut forwards = Vec::new();
    for d in batch {
        let route = match transports.route(port, d).await {
            Ok(route) => route,
            Err(e) => {
                outcomes.insert(d.delivery_id, Outcome::failed(e, false));
                continue;
            }
        };
        let adapter = match route.transport {
            SendTransport::Forward(to) => {
                forwards.push((d, to));
                continue;
            }
            SendTransport::Adapter(adapter) => adapter,
        };
        match outbound(delivering, port, d, route.address, fence).await {
            Ok(message) => by_adapter
                .entry(adapter.name())
                .or_insert_with(|| (adapter.clone(), Vec::new()))
                .1
                .push(message),
            Err(outcome) => {
                outcomes.insert(d.delivery_id, outcome);
            }
        }
    }
    if !forwards.is_empty() {
        outcomes
            .extend(crate::forward::forward(delivering.forwarder(), port, forwards, fence).await);
    }
    // what each adapter was handed, with the panic of its `send` call if it panicked
    let mut handed: Vec<(Vec<i64>, Option<String>)> = Vec::with_capacity(by_adapter.len());
    let expected: usize = by_adapter.values().map(|(_, v)| v.len()).sum();
    let (tx, mut rx) = mpsc::channel(expected.max(1));
    for (_, (adapter, messages)) in by_adapter {
        let ids = messages.iter().map(|m| m.delivery_id).collect();
        handed.push((ids, send_guarded(adapter.as_ref(), messages, tx.clone())));
    }
    drop(tx);
    // every adapter reports each message once, then drops its sender; a task of the
    // adapter that panics drops its sender too, so this ends either way
    while let Some(report) = rx.recv().await {
        delivering.liveness().progressed(port.id);
        if let Some(c) = report.checkpoint {
            checkpoints.insert(report.delivery_id, c);
        }
        outcomes.insert(report.delivery_id, report.outcome);
    }
    // A message handed over without an outcome: its adapter panicked (in `send`, caught
    // above with its message, or on a task it spawned, whose panic only the log shows).
    // One such message is the poison. Of several, the panic may have been one message's
    // only (a batch handled on one task stops at the message that panics): each is sent
    // again on its own, and only one that panics alone is the poison. Poison is not
    // retried: sending it again would most likely panic again.
    for (ids, panicked) in handed {
        let missing: Vec<i64> = ids
            .into_iter()
            .filter(|id| !outcomes.contains_key(id))
            .collect();
        if missing.len() == 1 {
            outcomes.insert(missing[0], poison(port, panicked));
            continue;
        }
        for id in missing {
            let Some(d) = batch.iter().find(|d| d.delivery_id == id) else {
                continue;
            };
            let (outcome, checkpoint) = send_alone(delivering, port, transports, d, fence).await;
            delivering.liveness().progressed(port.id);
            if let Some(c) = checkpoint {
                checkpoints.insert(id, c);
            }
            outcomes.insert(id, outcome);
        }
    }
    (outcomes, checkpoints)
}

/// The message for `d` to `address`, or the outcome that stops it before (a body that
/// cannot be read).
async fn outbound(
    delivering: &Delivering,
    port: &SendPort,
    d: &ClaimedDelivery,
    address: String,
    fence: Option<&Fence>,
) -> Result<OutboundMessage, Outcome> {
    // a body above 1 MiB is read from the MessageBox one chunk at a time as it is sent
    let body = match &d.body {
        Some(b) => Body::Bytes(b.clone()),
        None => Body::Chunks(Arc::new(StoredChunks {
            mbx: delivering.instance().mbx().clone(),
            message_id: d.message_id,
            len: u64::try_from(d.body_size).unwrap_or(0),
        })),
    };
    let mut settings = port.settings.0.clone();
    if port.ordered && address.starts_with("http") && !settings.contains_key("timeout") {
        settings.insert("timeout".to_owned(), format!("{ORDERED_SEND_TIMEOUT_MS}ms"));
    }
    let message = OutboundMessage {
        delivery_id: d.delivery_id,
        message_id: d.message_id,
        port_name: port.name.clone(),
        address,
        settings,
        body,
        content_type: d.content_type.clone(),
        context: adapter_context(port, d),
        fence: fence.cloned(),
        // an ordered port is never solicit-response (refused at creation)
        solicit_response: port.solicit_response && !port.ordered,
    };
    Ok(message)
}

/// The stored chunks of a large body, for a send adapter to read one at a time.
struct StoredChunks {
    mbx: mbx_messagebox::MessageBox,
    message_id: Uuid,
    len: u64,
}

#[async_trait::async_trait]
impl ChunkSource for StoredChunks {
    fn len(&self) -> u64 {
        self.len
    }

    async fn chunk(&self, index: u64) -> Result<Option<bytes::Bytes>, String> {
        let seq =
            i32::try_from(index).map_err(|_| format!("chunk {index} of a body is out of range"))?;
        self.mbx
            .message_chunk(self.message_id, seq)
            .await
            .map_err(|e| format!("reading chunk {seq} of message {}: {e}", self.message_id))
    }
}

/// Sends one message on its own (after its batch's adapter panicked): its outcome, or
/// poison if the adapter panics again or reports nothing.
async fn send_alone(
    delivering: &Delivering,
    port: &SendPort,
    transports: &PortTransports,
    d: &ClaimedDelivery,
    fence: Option<&Fence>,
) -> (Outcome, Option<String>) {
    let route = match transports.route(port, d).await {
        Ok(route) => route,
        Err(e) => return (Outcome::failed(e, false), None),
    };
    let adapter = match route.transport {
        SendTransport::Adapter(adapter) => adapter,
        SendTransport::Forward(to) => {
            let mut outcomes =
                crate::forward::forward(delivering.forwarder(), port, vec![(d, to)], fence).await;
            let outcome = outcomes.remove(&d.delivery_id).unwrap_or_else(|| {
                Outcome::failed("the forwarder reported no outcome for this message", true)
            });
            return (outcome, None);
        }
    };
    let message = match outbound(delivering, port, d, route.address, fence).await {
        Ok(m) => m,
        Err(outcome) => return (outcome, None),
    };
    let (tx, mut rx) = mpsc::channel(1);
    let panicked = send_guarded(adapter.as_ref(), vec![message], tx);
    match rx.recv().await {
        Some(report) => (report.outcome, report.checkpoint),
        None => (poison(port, panicked), None),
    }
}

/// The outcome of a message its adapter panicked on: failed, not retryable.
fn poison(port: &SendPort, panicked: Option<String>) -> Outcome {
    let reason = match panicked {
        Some(message) => format!("send adapter panicked: {message}"),
        None => ADAPTER_LOST_OUTCOME.to_owned(),
    };
    error!(port = %port.name, %reason, "send adapter failed without an outcome; suspending the message non-resumable");
    Outcome::failed(&reason, false)
}

/// The reason of a message whose adapter ended without reporting its outcome and without
/// panicking in `send` itself.
const ADAPTER_LOST_OUTCOME: &str = "send adapter panicked or lost the message: its tasks \
     ended without reporting an outcome (a panic's message is in the host's log)";

/// Hands `batch` to `adapter`, catching a panic of `send` itself (a panic on one of the
/// adapter's own tasks is seen as missing outcomes instead): returns the panic's message.
/// Unwind safety: the batch and the sender are gone with the call, and nothing of this
/// loop is left half-changed; the adapter's own state is the adapter's concern.
fn send_guarded(
    adapter: &dyn SendAdapter,
    batch: Vec<OutboundMessage>,
    outcomes: OutcomeSender,
) -> Option<String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        adapter.send(batch, outcomes)
    }))
    .err()
    .map(|payload| panic_message(payload.as_ref()))
}

/// The text of a panic's payload (`panic!("…")` carries a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a text message)".to_owned()
    }
}

/// What sending a claimed batch came to.
#[derive(Default)]
pub(crate) struct Sent {
    /// Confirmed by the endpoint: to complete.
    pub(crate) delivered: Vec<(i64, Uuid)>,
    pub(crate) failures: Vec<Failure>,
    /// A solicit-response port's responses, by delivery id: published in the transaction
    /// that completes their deliveries.
    pub(crate) responses: HashMap<i64, NewMessage>,
    /// Answers to waiting clients whose requests failed for good here.
    pub(crate) faults: Vec<NewMessage>,
}

/// Sends a claimed batch; returns what to complete and what to fail.
pub(crate) async fn send_batch(
    delivering: &Delivering,
    port: &SendPort,
    transports: &PortTransports,
    batch: Vec<ClaimedDelivery>,
) -> Sent {
    let started = Instant::now();
    let tokens: HashMap<i64, Uuid> = batch
        .iter()
        .map(|d| (d.delivery_id, d.claim_token))
        .collect();
    let published: HashMap<i64, chrono::DateTime<chrono::Utc>> = batch
        .iter()
        .map(|d| (d.delivery_id, d.published_at))
        .collect();
    let (mut outcomes, _) = send_all(delivering, port, transports, &batch, None).await;
    let mut sent = Sent::default();
    let (delivered, failures) = (&mut sent.delivered, &mut sent.failures);
    for (id, token) in &tokens {
        match outcomes.remove(id) {
            Some(outcome @ (Outcome::Delivered | Outcome::Responded(_))) => {
                if let Some(at) = published.get(id) {
                    observe_latency(port, *at);
                }
                if let Outcome::Responded(response) = outcome {
                    if let Some(d) = batch.iter().find(|d| d.delivery_id == *id) {
                        sent.responses
                            .insert(*id, crate::solicit::response_message(port, d, *response));
                    }
                }
                delivered.push((*id, *token))
            }
            // given back for later already (another group is throttled): not an attempt
            Some(Outcome::Failed { error, .. }) if error == crate::forward::POSTPONED => {}
            Some(Outcome::Failed { error, retryable }) => {
                if port.solicit_response && !retryable {
                    if let Some(d) = batch.iter().find(|d| d.delivery_id == *id) {
                        sent.faults
                            .extend(crate::solicit::fault_message(port, d, &error));
                    }
                }
                failures.push(Failure {
                    delivery_id: *id,
                    claim_token: *token,
                    error,
                    retryable,
                })
            }
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
    sent
}

/// Publish → endpoint confirmed, per port (the publish transaction's start on the database
/// clock against ours: an upper bound of publish-commit → confirmation).
pub(crate) fn observe_latency(port: &SendPort, published_at: chrono::DateTime<chrono::Utc>) {
    let latency = (chrono::Utc::now() - published_at)
        .num_microseconds()
        .unwrap_or(0)
        .max(0);
    metrics::histogram!("mbx_delivery_latency_seconds", "port" => port.name.clone())
        .record(latency as f64 / 1e6);
}

pub(crate) async fn record(delivering: &Delivering, port: &SendPort, instance: Uuid, sent: Sent) {
    let Sent {
        delivered,
        failures,
        responses,
        faults,
    } = sent;
    let labels = [("port", port.name.clone())];
    let started = Instant::now();
    let mbx = delivering.instance().mbx();
    let publisher = Publisher {
        host_id: Some(delivering.instance().host_id()),
        ..Publisher::default()
    };
    let recorded = retry_db(
        delivering.instance(),
        &port.name,
        "recording outcomes",
        || async {
            let done = if responses.is_empty() {
                mbx.deliveries_complete(instance, &delivered).await?
            } else {
                let (done, published) = mbx
                    .deliveries_complete_with_responses(
                        instance,
                        &delivered,
                        &publisher,
                        responses.clone(),
                    )
                    .await?;
                crate::solicit::observe_published(port, &published);
                done
            };
            let report = mbx.deliveries_fail(instance, &failures).await?;
            Ok((done, report))
        },
    )
    .await;
    if !faults.is_empty() && recorded.is_some() {
        match mbx.publish(&publisher, faults).await {
            Ok(published) => crate::solicit::observe_published(port, &published),
            Err(e) => {
                warn!(port = %port.name, error = %e, "cannot answer waiting clients whose requests failed (they time out)")
            }
        }
    }
    if let Some((done, report)) = recorded {
        delivering.forwarder().completed(&done);
        let done = done.len();
        metrics::counter!("mbx_messages_delivered_total", &labels).increment(done as u64);
        delivering.liveness().count_delivered(port.id, done);
        metrics::counter!("mbx_delivery_failures_total", &labels).increment(failures.len() as u64);
        if done < delivered.len() || report.stale > 0 {
            warn!(port = %port.name, stale = delivered.len() - done + report.stale as usize,
                  "some claims were reclaimed meanwhile; their outcomes were dropped");
        }
        debug!(port = %port.name, delivered = done, failed = failures.len(),
               record_ms = started.elapsed().as_millis() as u64, "batch recorded");
    }
}

/// Reserves room for a claim under the delivery throttle (at most `wanted`); at the cap,
/// waits until in-flight work drains a little (or the loop is stopped) and returns `None`.
pub(crate) async fn reserve(
    throttle: &Arc<Throttle>,
    wanted: ClaimLimits,
    stop: &mut watch::Receiver<bool>,
) -> Option<(ClaimLimits, crate::throttle::InFlight)> {
    let reserved = throttle.reserve(wanted);
    if reserved.is_none() {
        tokio::select! {
            _ = throttle.inflight_drained() => {}
            _ = stop.changed() => {}
        }
    }
    reserved
}

/// Runs a unit of MessageBox work until it succeeds: after a connection-class error
/// (SQLSTATE 08xxx, 57P01, I/O, pool timeout) for as long as the instance runs — the
/// database comes back, and every unit is idempotent to re-run (completions and failures
/// match claim tokens, so a re-run after a commit whose answer was lost finds nothing to
/// do) — and after any other error up to [`RECORD_ATTEMPTS_MAX`] times. `None` when it gave
/// up: the claims then stay until this instance stops (and releases them) or is declared
/// dead (and another reclaims them).
pub(crate) async fn retry_db<T, F, Fut>(
    instance: &Instance,
    port: &str,
    what: &str,
    mut work: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, mbx_messagebox::Error>>,
{
    let mut attempt: u32 = 0;
    let mut backoff = mbx_vocabulary::retry::Backoff::doubling(
        Duration::from_millis(RETRY_BACKOFF_MIN_MS),
        Duration::from_millis(RETRY_BACKOFF_MAX_MS),
    );
    loop {
        attempt += 1;
        match work().await {
            Ok(v) => return Some(v),
            Err(e) => {
                let retryable = e.is_retryable();
                error!(port, attempt, retryable, error = %e, "{what} failed");
                if (!retryable && attempt >= RECORD_ATTEMPTS_MAX) || instance.is_stopping() {
                    return None;
                }
                tokio::time::sleep(backoff.next_wait()).await;
            }
        }
    }
}

/// An ordered port's loop on every instance of its host: try to take the lease; while it
/// is held, hand the adapter one message at a time in sequence order.
pub(crate) async fn ordered_port_loop(
    delivering: Delivering,
    port: SendPort,
    mut stop: watch::Receiver<bool>,
) {
    crate::metrics_catalog::port_started(&port.name);
    let transports = delivering.transports(&port);
    loop {
        delivering.liveness().progressed(port.id);
        if *stop.borrow() || delivering.instance().is_stopping() {
            delivering.liveness().forget_progress(port.id);
            return;
        }
        let instance = delivering.instance().id();
        if !delivering.share().may_take() {
            // at this instance's fair share: leave free leases to the others
            tokio::select! {
                _ = tokio::time::sleep(delivering.instance().config().poll_interval) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let asked = Instant::now();
        match Leased::Port(port.id)
            .acquire(delivering.instance().mbx(), instance)
            .await
        {
            Ok(Some(epoch)) => {
                info!(port = %port.name, epoch, "ordered port lease taken");
                metrics::counter!("mbx_lease_takeovers_total", "port" => port.name.clone())
                    .increment(1);
                delivering.share().taken(port.id);
                own_ordered_port(
                    &delivering,
                    &port,
                    &transports,
                    instance,
                    epoch,
                    asked,
                    &mut stop,
                )
                .await;
                delivering.share().let_go(port.id);
            }
            Ok(None) => {}
            Err(e) => warn!(port = %port.name, error = %e, "lease acquisition failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delivering.instance().config().poll_interval) => {}
            _ = stop.changed() => {}
        }
    }
}

/// While this instance holds the lease at `epoch`: renew it every TTL/3 on its own task,
/// and deliver in order until the lease is lost, its last renewal is older than
/// TTL − margin (own monotonic clock), or the loop is stopped.
async fn own_ordered_port(
    delivering: &Delivering,
    port: &SendPort,
    transports: &PortTransports,
    instance: Uuid,
    epoch: i64,
    asked: Instant,
    stop: &mut watch::Receiver<bool>,
) {
    let mbx = delivering.instance().mbx();
    let tenure = Tenure::start(mbx, Leased::Port(port.id), instance, epoch, asked);
    let fence = tenure.fence();
    if let Err(e) = restore_endpoint(delivering.instance(), port, transports, &fence).await {
        error!(port = %port.name, error = %e, "cannot restore the endpoint after a takeover; not sending");
        drop(tenure);
        let _ = mbx.port_lease_release(instance, port.id, epoch).await;
        return;
    }
    let owner = Owner {
        delivering,
        port,
        transports,
        tenure: &tenure,
        fence: &fence,
        instance,
        epoch,
        commit_batch: i64::from(port.ordered_commit_batch.max(1)),
        forwarding: transports.forwards(),
    };
    let mut uncommitted = Uncommitted::default();
    loop {
        delivering.liveness().progressed(port.id);
        if *stop.borrow() || delivering.instance().is_stopping() || !owner.may_send() {
            break;
        }
        if delivering.share().should_yield(port.id) {
            info!(port = %port.name, epoch, "handing the lease over to spread ordered ports");
            break;
        }
        let Some((batch, mut in_flight)) = owner.claim(stop).await else {
            continue;
        };
        in_flight.settle(batch.len(), batch.iter().map(|d| d.body_size).sum());
        match owner.deliver(batch, &mut uncommitted).await {
            Run::Done => {}
            Run::ClaimAgain => continue,
            Run::Stop => break,
        }
        owner.commit(&mut uncommitted).await;
    }
    owner.commit(&mut uncommitted).await;
    let lost = !owner.may_send();
    drop(tenure);
    if lost {
        warn!(port = %port.name, epoch, "ordered port lease lost; stopped sending");
    } else if let Err(e) = mbx.port_lease_release(instance, port.id, epoch).await {
        warn!(port = %port.name, error = %e, "lease release failed; it expires by itself");
    }
}

/// An ordered port while this instance holds its lease at `epoch` (`tenure`).
struct Owner<'a> {
    delivering: &'a Delivering,
    port: &'a SendPort,
    transports: &'a PortTransports,
    tenure: &'a Tenure,
    fence: &'a Fence,
    instance: Uuid,
    epoch: i64,
    /// Delivered messages committed together at most.
    commit_batch: i64,
    /// The port forwards to another group (rather than sending through an adapter).
    forwarding: bool,
}

/// What an owner delivered that awaits its commit, and the endpoint checkpoint that
/// includes it.
#[derive(Default)]
struct Uncommitted {
    pending: Vec<(i64, Uuid)>,
    checkpoint: Option<String>,
}

/// How a run of heads ended.
enum Run {
    /// Every message was sent: commit, then claim the next run.
    Done,
    /// A message failed (its run is committed up to it): claim from the head again.
    ClaimAgain,
    /// The lease may no longer be acted on: stop owning.
    Stop,
}

impl Owner<'_> {
    fn may_send(&self) -> bool {
        self.tenure.may_act()
    }

    /// The next run of heads to send and its share of the instance's in-flight budget;
    /// none, after waiting while idle (or for the budget), when there is nothing to send.
    async fn claim(
        &self,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<(Vec<ClaimedDelivery>, crate::throttle::InFlight)> {
        let (delivering, port) = (self.delivering, self.port);
        let notified = delivering.published();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // bounded in bytes like any claim, and given back while idle: an ordered port
        // with nothing to send must not hold the instance's in-flight budget
        let wanted = ClaimLimits {
            max_count: self.commit_batch,
            max_bytes: delivering.instance().config().claim_bytes,
        };
        let (limits, in_flight) = reserve(delivering.throttle(), wanted, stop).await?;
        let batch = match delivering
            .instance()
            .mbx()
            .deliveries_claim_ordered(self.instance, port.id, self.epoch, limits)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                warn!(port = %port.name, error = %e, "ordered claim failed");
                Vec::new()
            }
        };
        if batch.is_empty() {
            drop(in_flight);
            // the head may be a retry: wake at its due time
            let idle = idle_wait(delivering.instance(), port).await;
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(idle) => {}
                _ = stop.changed() => {}
            }
            return None;
        }
        Some((batch, in_flight))
    }

    /// Sends a run of heads in order, committing what was delivered every
    /// `commit_batch` messages or [`ORDERED_COMMIT_INTERVAL_MS`]. A forwarding port hands
    /// the whole run to the other group in one transaction there, fenced on this epoch
    /// (an older owner's batch is refused); its outcomes are then taken in order as if
    /// sent one by one. Any other adapter gets one message at a time.
    async fn deliver(&self, batch: Vec<ClaimedDelivery>, uncommitted: &mut Uncommitted) -> Run {
        let (delivering, port, transports) = (self.delivering, self.port, self.transports);
        let mut flushed_at = Instant::now();
        let mut sent_together = None;
        if self.forwarding {
            if !self.may_send() {
                return Run::Stop;
            }
            sent_together =
                Some(send_all(delivering, port, transports, &batch, Some(self.fence)).await);
        }
        for d in batch {
            if !self.may_send() {
                return Run::Stop;
            }
            let (mut outcomes, mut checkpoints) = match sent_together.take() {
                Some(together) => together,
                None if self.forwarding => Default::default(),
                None => {
                    let one = std::slice::from_ref(&d);
                    send_all(delivering, port, transports, one, Some(self.fence)).await
                }
            };
            let outcome = outcomes.remove(&d.delivery_id).unwrap_or_else(|| {
                Outcome::failed("the adapter reported no outcome for this message", true)
            });
            let checkpoint_of_d = checkpoints.remove(&d.delivery_id);
            if self.forwarding {
                sent_together = Some((outcomes, checkpoints));
            }
            match outcome {
                // (Responded only on a solicit-response port, never ordered)
                Outcome::Delivered | Outcome::Responded(_) => {
                    observe_latency(port, d.published_at);
                    uncommitted.pending.push((d.delivery_id, d.claim_token));
                    if let Some(c) = checkpoint_of_d {
                        uncommitted.checkpoint = Some(c);
                    }
                    if uncommitted.pending.len() as i64 >= self.commit_batch
                        || flushed_at.elapsed() >= Duration::from_millis(ORDERED_COMMIT_INTERVAL_MS)
                    {
                        self.commit(uncommitted).await;
                        flushed_at = Instant::now();
                    }
                }
                Outcome::Failed { error, retryable } => {
                    self.failed(&d, error, retryable, uncommitted).await;
                    return Run::ClaimAgain;
                }
            }
        }
        Run::Done
    }

    /// The head `d` failed: completions first, then the failure; the head is retried,
    /// suspended or holds the port, and the next claim starts from it again.
    async fn failed(
        &self,
        d: &ClaimedDelivery,
        error: String,
        retryable: bool,
        uncommitted: &mut Uncommitted,
    ) {
        self.commit(uncommitted).await;
        if error == crate::forward::POSTPONED {
            // given back due later already (another group is throttled)
            return;
        }
        let failure = Failure {
            delivery_id: d.delivery_id,
            claim_token: d.claim_token,
            error,
            retryable,
        };
        let sent = Sent {
            failures: vec![failure],
            ..Sent::default()
        };
        record(self.delivering, self.port, self.instance, sent).await;
    }

    /// Commits what was delivered so far (see [`commit_ordered`]).
    async fn commit(&self, uncommitted: &mut Uncommitted) {
        let done = std::mem::take(&mut uncommitted.pending);
        let checkpoint = uncommitted.checkpoint.clone();
        commit_ordered(
            self.delivering,
            self.port,
            self.instance,
            self.epoch,
            done,
            checkpoint,
        )
        .await;
    }
}

/// Commits an ordered port's delivered messages with the endpoint checkpoint that
/// includes them (fenced on the lease); retried like `record`.
pub(crate) async fn commit_ordered(
    delivering: &Delivering,
    port: &SendPort,
    instance: Uuid,
    epoch: i64,
    delivered: Vec<(i64, Uuid)>,
    checkpoint: Option<String>,
) {
    if delivered.is_empty() {
        return;
    }
    let committed = retry_db(
        delivering.instance(),
        &port.name,
        "committing completions",
        || {
            delivering.instance().mbx().deliveries_complete_ordered(
                instance,
                &delivered,
                port.id,
                epoch,
                checkpoint.as_deref(),
            )
        },
    )
    .await;
    if let Some(done) = committed {
        delivering.forwarder().completed(&done);
        metrics::counter!("mbx_messages_delivered_total", "port" => port.name.clone())
            .increment(done.len() as u64);
        delivering.liveness().count_delivered(port.id, done.len());
        if done.len() < delivered.len() {
            warn!(port = %port.name, epoch, stale = delivered.len() - done.len(),
                  "completions fenced: the lease moved on");
        }
    }
}

/// A new owner puts the endpoint back to the checkpoint committed with the last
/// completion (FILE append: truncates what a crashed owner sent but did not commit).
async fn restore_endpoint(
    instance: &Instance,
    port: &SendPort,
    transports: &PortTransports,
    fence: &Fence,
) -> Result<(), String> {
    let may_act = || fence.allows();
    // a connection error while reading the checkpoint is retried while the lease holds:
    // giving up would leave the lease held (its release fails too) until it expires
    let info = loop {
        match instance.mbx().port_lease_info(port.id).await {
            Ok(info) => break info,
            Err(e) if e.is_retryable() && may_act() => {
                warn!(port = %port.name, error = %e, "reading the endpoint checkpoint failed; retrying");
                if !instance.pause(Duration::from_millis(200)).await {
                    return Err(e.to_string());
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    // a forward has no endpoint to restore: the other group's accept is fenced instead
    let (Some(checkpoint), Some(adapter)) = (info.and_then(|i| i.checkpoint), transports.adapter())
    else {
        return Ok(());
    };
    adapter.restore(&checkpoint, fence).await
}

/// Longest time delivered messages of an ordered port wait for their completion commit.
pub const ORDERED_COMMIT_INTERVAL_MS: u64 = 10;
