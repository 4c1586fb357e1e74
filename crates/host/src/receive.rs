//! One runner per enabled receive location: the receive adapter submits batches; the
//! submitter runs the location's pipeline, publishes in one transaction and returns only
//! after the commit, so the adapter acknowledges its source (FILE: deletes the file) only
//! for messages that are safe in the MessageBox.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use mbx_adapters::pipeline::{Pipeline, PipelineKind, Promotion};
use mbx_adapters::{
    Admission, Body, ClaimedSource, InboundMessage, ReceiveAdapter, ReceiveLocationSpec, Reply,
    Requested, SubmitError, Submitted, Submitter,
};
use mbx_messagebox::context::system;
use mbx_messagebox::instances::DEAD_AFTER_S;
use mbx_messagebox::publish::{LocationFence, NewBody, NewMessage, Published, Publisher, Source};
use mbx_messagebox::receive::ReceiveLocation;
use mbx_messagebox::states::InstanceState;
use mbx_messagebox::{Context, MessageBox, PropertyType, Value};
use tokio::sync::watch;
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::heartbeat::Liveness;
use crate::instance::Instance;
use crate::lease::{Leased, Tenure};
use crate::listen::Wakeups;
use crate::replies::{Client, Waiting};
use crate::throttle::Throttle;

/// What the receive locations of an instance hold: the handles they use and nothing of
/// the delivery side. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub(crate) struct Receiving {
    inner: Arc<ReceivingInner>,
}

struct ReceivingInner {
    instance: Instance,
    registry: mbx_adapters::Registry,
    problems: LocationProblems,
    liveness: Liveness,
    throttle: Arc<Throttle>,
    waiting: Arc<Waiting>,
    wake: Wakeups,
}

impl Receiving {
    pub fn new(
        instance: Instance,
        registry: mbx_adapters::Registry,
        problems: LocationProblems,
        liveness: Liveness,
        throttle: Arc<Throttle>,
        waiting: Arc<Waiting>,
        wake: Wakeups,
    ) -> Self {
        let inner = ReceivingInner {
            instance,
            registry,
            problems,
            liveness,
            throttle,
            waiting,
            wake,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The MessageBox, the configuration, this instance's id, stopping.
    fn instance(&self) -> &Instance {
        &self.inner.instance
    }

    /// A location's receive adapter, from the registry.
    fn receive_adapter(
        &self,
        spec: ReceiveLocationSpec,
    ) -> Result<Box<dyn ReceiveAdapter>, mbx_adapters::RegistryError> {
        self.inner.registry.receive_adapter(spec)
    }

    /// Where whether a location runs here, or why not, is kept for `/readyz`.
    fn problems(&self) -> &LocationProblems {
        &self.inner.problems
    }

    /// Whether other instances may be taken for dead yet (see `Liveness::may_judge_dead`).
    fn may_judge_dead(&self) -> bool {
        self.inner.liveness.may_judge_dead()
    }

    /// The publish and database-size throttles a submit waits on.
    fn throttle(&self) -> Arc<Throttle> {
        self.inner.throttle.clone()
    }

    /// A two-way client waiting for the reply carrying `token` (registered before the
    /// request's publish: a reply may come at once).
    fn await_reply(&self, token: String) -> Client {
        self.inner
            .waiting
            .register(token, &self.inner.instance, &self.inner.wake)
    }

    /// A reference that does not keep the receive side alive (a submitter's).
    fn downgrade(&self) -> WeakReceiving {
        WeakReceiving(Arc::downgrade(&self.inner))
    }
}

/// [`Receiving`], held without keeping it alive.
struct WeakReceiving(std::sync::Weak<ReceivingInner>);

impl WeakReceiving {
    fn upgrade(&self) -> Option<Receiving> {
        self.0.upgrade().map(|inner| Receiving { inner })
    }
}

/// Enabled locations that cannot run on this instance, by id: (name, why). `/readyz`
/// answers 503 while any is here; the MessageBox has the same (`mbx status`). Cheap to
/// clone (one `Arc`).
#[derive(Clone, Default)]
pub(crate) struct LocationProblems {
    inner: Arc<std::sync::Mutex<HashMap<i64, (String, String)>>>,
}

impl LocationProblems {
    /// Records why `loc` cannot run (`Some`), or that it runs (`None`); whether that is a
    /// change (true as well when the record cannot be read).
    fn report(&self, loc: &ReceiveLocation, problem: Option<&str>) -> bool {
        match self.inner.lock() {
            Ok(mut p) => match problem {
                Some(why) => p
                    .insert(loc.id, (loc.name.clone(), why.to_owned()))
                    .is_none_or(|(_, before)| before != why),
                None => p.remove(&loc.id).is_some(),
            },
            Err(_) => true,
        }
    }

    /// The location `id` is no longer wanted here: nothing is said of it any more.
    fn forget(&self, id: i64) {
        if let Ok(mut p) = self.inner.lock() {
            p.remove(&id);
        }
    }

    /// Each problem as one sentence naming its location, sorted (what `/readyz` says).
    pub fn sentences(&self) -> Vec<String> {
        match self.inner.lock() {
            Ok(p) => {
                let mut v: Vec<String> = p
                    .values()
                    .map(|(name, why)| format!("receive location '{name}': {why}"))
                    .collect();
                v.sort();
                v
            }
            Err(_) => Vec::new(),
        }
    }
}

/// Runs one enabled location until it is stopped; whether it runs here, or why not, is
/// recorded for `mbx status` and `/readyz` while it is wanted, and forgotten after.
pub(crate) async fn location_loop(
    receiving: Receiving,
    loc: ReceiveLocation,
    stop: watch::Receiver<bool>,
) {
    let id = loc.id;
    crate::metrics_catalog::location_started(&loc.name);
    run_location(receiving.clone(), loc, stop).await;
    receiving.problems().forget(id);
    if let Err(e) = receiving
        .instance()
        .mbx()
        .location_run_clear(id, receiving.instance().id())
        .await
    {
        tracing::debug!(location_id = id, error = %e, "cannot clear the location's run record");
    }
}

/// Records that `loc` runs on this instance (`problem: None`) or why it cannot; a problem
/// is logged once per change.
async fn report_run(receiving: &Receiving, loc: &ReceiveLocation, problem: Option<&str>) {
    let changed = receiving.problems().report(loc, problem);
    match problem {
        Some(why) if changed => {
            error!(location = %loc.name, error = %why, "receive location cannot run")
        }
        None if changed => info!(location = %loc.name, "receive location runs"),
        _ => {}
    }
    if let Err(e) = receiving
        .instance()
        .mbx()
        .location_run_report(loc.id, receiving.instance().id(), problem)
        .await
    {
        tracing::debug!(location = %loc.name, error = %e, "cannot record the location's run");
    }
}

async fn run_location(receiving: Receiving, loc: ReceiveLocation, stop: watch::Receiver<bool>) {
    let submitter = match LocationSubmitter::new(&receiving, &loc).await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            report_run(&receiving, &loc, Some(&format!("{e:#}"))).await;
            until_stopped(stop, receiving.instance().stopping()).await;
            return;
        }
    };
    report_run(&receiving, &loc, None).await;
    let leased_run = leased(&loc);
    loop {
        // an ordered location runs on the lease holder only, one batch at a time in name
        // order (the FILE adapter submits its next batch after the previous committed);
        // so does an MQTT location, ordered or not (one subscription per location)
        let holding = if leased_run {
            take_location_lease(&receiving, &loc, &submitter).await
        } else {
            None
        };
        if leased_run && holding.is_none() {
            if *stop.borrow()
                || !receiving
                    .instance()
                    .pause(receiving.instance().config().poll_interval)
                    .await
            {
                return;
            }
            continue;
        }
        // the adapter claims files under the instance id: when the instance registers
        // again (declared dead by another), it restarts under the new id, or its claims
        // would look like a dead instance's and be put back while it publishes them
        let mut ids = receiving.instance().ids();
        let started_as = *ids.borrow_and_update();
        let adapter = match receiving.receive_adapter(adapter_spec(&loc, started_as)) {
            Ok(a) => a,
            Err(e) => {
                report_run(&receiving, &loc, Some(&e.to_string())).await;
                until_stopped(stop, receiving.instance().stopping()).await;
                return;
            }
        };
        let stopped = until_stopped(stop.clone(), receiving.instance().stopping());
        let ended = holding.as_ref().map(|h| h.tenure.ended_signal());
        let shutdown = shutdown_signal(stopped, ended, ids);
        let reclaimer =
            reclaim_while_running(&receiving, adapter.as_ref(), submitter.as_ref(), &loc);
        let run = adapter.run(submitter.as_ref(), shutdown);
        tokio::pin!(run);
        let result = tokio::select! {
            r = &mut run => r,
            _ = reclaimer => run.await,
        };
        if let Some(holding) = holding {
            release_location_lease(&receiving, &loc, &submitter, holding).await;
        }
        let stopping = *stop.borrow() || receiving.instance().is_stopping();
        if !stopping && receiving.instance().id() != started_as {
            info!(location = %loc.name, "instance registered again; restarting the location under its new id");
            continue;
        }
        if !runs_again(&receiving, &loc, leased_run && !stopping, &stop, result).await {
            return;
        }
    }
}

/// Resolves once the location's loop is stopped or the instance is stopping.
async fn until_stopped(mut stop: watch::Receiver<bool>, mut stopping: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() || *stopping.borrow() {
            return;
        }
        tokio::select! {
            r = stop.changed() => if r.is_err() { return },
            r = stopping.changed() => if r.is_err() { return },
        }
    }
}

/// A leased location's holding: its lease at `epoch`, taken by `instance`.
struct LocationHolding {
    tenure: Tenure,
    instance: Uuid,
    epoch: i64,
}

/// Takes `loc`'s lease if it is free, fencing every publish of the holding on it; none
/// when another instance holds it (or it cannot be asked for).
async fn take_location_lease(
    receiving: &Receiving,
    loc: &ReceiveLocation,
    submitter: &LocationSubmitter,
) -> Option<LocationHolding> {
    let instance = receiving.instance().id();
    let leased = Leased::Location(loc.id);
    let asked = std::time::Instant::now();
    match leased.acquire(receiving.instance().mbx(), instance).await {
        Ok(Some(epoch)) => {
            info!(location = %loc.name, epoch, "receive location lease taken");
            // every publish of this holding is fenced on the lease at this epoch
            submitter.hold(Some(LocationFence {
                location_id: loc.id,
                holder: instance,
                epoch,
            }));
            Some(LocationHolding {
                tenure: Tenure::start(receiving.instance().mbx(), leased, instance, epoch, asked),
                instance,
                epoch,
            })
        }
        Ok(None) => None,
        Err(e) => {
            warn!(location = %loc.name, error = %e, "lease acquisition failed");
            None
        }
    }
}

/// Ends a holding: publishes are no longer fenced on it, and the lease is released if it
/// was still held.
async fn release_location_lease(
    receiving: &Receiving,
    loc: &ReceiveLocation,
    submitter: &LocationSubmitter,
    holding: LocationHolding,
) {
    let LocationHolding {
        tenure,
        instance,
        epoch,
    } = holding;
    submitter.hold(None);
    let held = tenure.may_act();
    drop(tenure);
    if held {
        let _ = Leased::Location(loc.id)
            .release(receiving.instance().mbx(), instance, epoch)
            .await;
    }
}

/// What the receive adapter of `loc` is given, running under the instance id
/// `instance_id`.
fn adapter_spec(loc: &ReceiveLocation, instance_id: Uuid) -> ReceiveLocationSpec {
    let mut settings = loc.settings.0.clone();
    settings.insert(
        "max_message_size".to_owned(),
        loc.max_message_size.to_string(),
    );
    ReceiveLocationSpec {
        location_name: loc.name.clone(),
        address: loc.address.clone(),
        settings,
        instance_id: instance_id.simple().to_string(),
        ordered: loc.ordered,
        two_way: loc.two_way,
    }
}

/// The receive adapter's shutdown: the loop stopped (`stopped`), the holding ended
/// (`ended`, for a leased location) or the instance registered again (`ids` changed).
fn shutdown_signal(
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
    ended: Option<impl std::future::Future<Output = ()> + Send + 'static>,
    mut ids: watch::Receiver<Uuid>,
) -> mbx_adapters::ShutdownSignal {
    let registered_again = async move {
        let _ = ids.changed().await;
    };
    Box::pin(async move {
        let ended = async move {
            match ended {
                Some(ended) => ended.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stopped => {}
            _ = ended => {}
            _ = registered_again => {}
        }
    })
}

/// Files claimed by instances that are no longer alive go back to the folder (or,
/// already published by them, are deleted), at start and then every dead-instance
/// timeout while the location runs; returns once the instance is stopping.
async fn reclaim_while_running(
    receiving: &Receiving,
    adapter: &dyn ReceiveAdapter,
    submitter: &dyn Submitter,
    loc: &ReceiveLocation,
) {
    loop {
        reclaim_dead_claims(receiving, adapter, submitter, &loc.name).await;
        if !receiving
            .instance()
            .pause(Duration::from_secs(DEAD_AFTER_S as u64))
            .await
        {
            return;
        }
    }
}

/// After the adapter's run returned `result`: whether the location runs again (after a
/// pause). A leased location whose lease ended (`retake`) tries to take it again; a
/// failed run restarts unless stopped.
async fn runs_again(
    receiving: &Receiving,
    loc: &ReceiveLocation,
    retake: bool,
    stop: &watch::Receiver<bool>,
    result: Result<(), mbx_adapters::ReceiveError>,
) -> bool {
    match result {
        Ok(()) if retake => {
            receiving
                .instance()
                .pause(receiving.instance().config().poll_interval)
                .await
        }
        Ok(()) => false,
        Err(e) => {
            error!(location = %loc.name, error = %e, "receive location failed; restarting");
            !*stop.borrow()
                && receiving
                    .instance()
                    .pause(receiving.instance().config().poll_interval)
                    .await
        }
    }
}

/// Whether `loc` runs under its lease on one instance at a time, its publishes fenced
/// on it: an ordered location, or one whose adapter must not run on several instances.
fn leased(loc: &ReceiveLocation) -> bool {
    loc.ordered
        || mbx_adapters::Scheme::of_address(&loc.address)
            .is_ok_and(|s| s.receives_on_one_instance())
}

/// Puts back files claimed by instances that are not alive (their claim id is the
/// instance id); deletes those they published but had not deleted yet. Like the delivery
/// reclaim, it takes no instance for dead before this one has itself been connected for
/// the dead timeout (after a database outage every heartbeat is stale, the live
/// instances' too, and their files would be put back while they publish them).
async fn reclaim_dead_claims(
    receiving: &Receiving,
    adapter: &dyn ReceiveAdapter,
    submitter: &dyn Submitter,
    location: &str,
) {
    if !receiving.may_judge_dead() {
        tracing::debug!(location = %location, "not connected for the dead timeout yet: no instance taken for dead");
        return;
    }
    match receiving.instance().mbx().instance_list().await {
        Ok(list) => {
            let alive: HashSet<String> = list
                .iter()
                .filter(|i| i.state == InstanceState::Alive)
                .map(|i| i.id.simple().to_string())
                .collect();
            let filter = move |c: &mbx_adapters::ClaimInfo| !alive.contains(&c.claim_id);
            match adapter.reclaim(&filter, submitter).await {
                Ok(r) if r.reclaimed + r.finished > 0 => {
                    info!(location = %location, reclaimed = r.reclaimed, deleted_published = r.finished, "reclaimed files of dead instances")
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(location = %location, error = %e, "reclaiming claimed files failed")
                }
            }
        }
        Err(e) => warn!(location = %location, error = %e, "listing instances failed"),
    }
}

/// The body to publish: in memory, or the file the adapter holds, read in chunks by the
/// publish.
async fn new_body(body: Body) -> Result<NewBody, String> {
    Ok(match body {
        Body::Bytes(b) => NewBody::Bytes(b),
        Body::File { path, len } => NewBody::File { path, len },
        chunks @ Body::Chunks(_) => NewBody::Bytes(chunks.to_bytes().await?),
    })
}

/// Publishes what one location receives.
pub(crate) struct LocationSubmitter {
    mbx: MessageBox,
    location: ReceiveLocation,
    pipeline: Pipeline,
    publisher: Publisher,
    declared: HashMap<String, PropertyType>,
    /// A submit waits here while the publish or database-size throttle is on; the
    /// admission hook tells adapters so before they take work (HTTP answers 503).
    throttle: Arc<Throttle>,
    stopping: watch::Receiver<bool>,
    /// An ordered location: the lease this instance holds now (none: publish nothing).
    fence: std::sync::Mutex<Option<LocationFence>>,
    /// Where a problem the adapter reports goes (`report_run`), and two-way requests'
    /// clients wait for their replies; weak, as the instance's loops hold submitters.
    receiving: WeakReceiving,
    /// This instance's id (tracked on what a reclaim finds already published).
    instance: watch::Receiver<uuid::Uuid>,
}

impl LocationSubmitter {
    async fn new(receiving: &Receiving, loc: &ReceiveLocation) -> anyhow::Result<Self> {
        let kind: PipelineKind = loc.pipeline.parse()?;
        let promotions = loc
            .promote
            .0
            .iter()
            .map(|(property, path)| Promotion {
                property: property.clone(),
                path: path.clone(),
            })
            .collect();
        let mut pipeline = Pipeline::new(kind, promotions)?;
        if let Some(t) = &loc.message_type {
            pipeline = pipeline.with_message_type(t.clone());
        }
        Ok(Self {
            mbx: receiving.instance().mbx().clone(),
            location: loc.clone(),
            pipeline,
            publisher: Publisher {
                host_id: Some(receiving.instance().host_id()),
                receive_location_id: Some(loc.id),
                fence: None,
            },
            declared: receiving.instance().mbx().property_types().await?,
            throttle: receiving.throttle(),
            stopping: receiving.instance().stopping(),
            fence: std::sync::Mutex::new(None),
            receiving: receiving.downgrade(),
            instance: receiving.instance().ids(),
        })
    }

    /// An ordered location's holding began (the lease it holds) or ended (`None`).
    fn hold(&self, fence: Option<LocationFence>) {
        *self.fence.lock().unwrap_or_else(|p| p.into_inner()) = fence;
    }

    /// Who publishes the next batch: for an ordered location, fenced on its lease.
    fn publisher(&self) -> Result<Publisher, SubmitError> {
        if !leased(&self.location) {
            return Ok(self.publisher.clone());
        }
        match *self.fence.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(fence) => Ok(Publisher {
                fence: Some(fence),
                ..self.publisher.clone()
            }),
            None => Err(SubmitError::new(format!(
                "this instance does not hold the lease of receive location {}",
                self.location.name
            ))),
        }
    }

    /// The context of one received message, or the reason it is a receive failure.
    /// `body` is what the pipeline reads: the whole body for `json` and `xml`, nothing for
    /// `passthru` (which promotes nothing from it, so a large body is never read here).
    fn context(&self, m: &InboundMessage, body: &[u8]) -> Result<Context, String> {
        let mut ctx = Context::new();
        let scheme = self
            .location
            .address
            .split(':')
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let put = |ctx: &mut Context, name: &str, value: String, promoted: bool| {
            let v = Value::String(value);
            let r = if promoted {
                ctx.promote(name, v)
            } else {
                ctx.write(name, v)
            };
            r.map_err(|e| e.to_string())
        };
        for (name, value) in m.properties.iter() {
            put(&mut ctx, name, value.to_owned(), false)?;
        }
        put(
            &mut ctx,
            system::RECEIVE_PORT_NAME,
            self.location.port.clone(),
            true,
        )?;
        put(
            &mut ctx,
            system::RECEIVE_LOCATION_NAME,
            self.location.name.clone(),
            true,
        )?;
        put(&mut ctx, system::INBOUND_TRANSPORT_TYPE, scheme, true)?;
        put(
            &mut ctx,
            system::CONTENT_TYPE,
            m.content_type.clone(),
            false,
        )?;
        let out = self
            .pipeline
            .run(body)
            .map_err(|e| format!("{} pipeline: {e}", self.pipeline.kind().as_str()))?;
        if let Some(t) = out.message_type {
            put(&mut ctx, system::MESSAGE_TYPE, t, true)?;
        }
        // the adapter's promotions (AMQP.RoutingKey, …), then the body's
        let from_adapter = m.promoted.iter().map(|(n, v)| (n.to_owned(), v.to_owned()));
        for (name, text) in from_adapter.chain(out.promoted) {
            let ty = self
                .declared
                .get(&name)
                .copied()
                .unwrap_or(PropertyType::String);
            let value = Value::parse_as(ty, &text).map_err(|e| format!("promoting {name}: {e}"))?;
            ctx.promote(&name, value).map_err(|e| e.to_string())?;
        }
        Ok(ctx)
    }
}

impl LocationSubmitter {
    /// What the pipeline reads of a body: the whole body for `json` and `xml`, nothing for
    /// `passthru` (which promotes nothing from it, so a large body is never read here).
    async fn pipeline_input(&self, body: &Body) -> Result<Bytes, SubmitError> {
        Ok(match (self.pipeline.kind(), body) {
            (PipelineKind::Passthru, _) => Bytes::new(),
            (_, Body::Bytes(b)) => b.clone(),
            (_, body) => body.to_bytes().await.map_err(SubmitError::new)?,
        })
    }

    /// Keeps `m` as a non-resumable receive failure with `reason` (its adapter properties
    /// written, not promoted), logged and counted.
    async fn receive_failure(&self, m: InboundMessage, reason: &str) -> Result<(), SubmitError> {
        let mut context = Context::new();
        for (name, value) in m.properties.iter() {
            let _ = context.write(name, Value::String(value.to_owned()));
        }
        let failed = NewMessage {
            id: None,
            body: new_body(m.body).await.map_err(SubmitError::new)?,
            content_type: m.content_type,
            context,
            source: None,
            source_identity: None,
            routing: Default::default(),
        };
        warn!(location = %self.location.name, %reason, "receive failure");
        self.mbx
            .suspend_receive_failure(&self.publisher, failed, reason)
            .await
            .map_err(|e| SubmitError::new(e.to_string()))?;
        metrics::counter!("mbx_receive_failures_total", "location" => self.location.name.clone())
            .increment(1);
        Ok(())
    }

    /// Publishes a two-way receive's request with `mbx.IsRequestResponse=true` and the
    /// correlation `token`, together with the instance subscription that routes the first
    /// message carrying `token` back to this instance. `Ok(Err(message id))`: published,
    /// its reply to be waited for; `Ok(Ok(…))`: what the client is told at once.
    async fn publish_request(
        &self,
        m: InboundMessage,
        token: &str,
        instance: uuid::Uuid,
    ) -> Result<Result<Requested, uuid::Uuid>, SubmitError> {
        let sha256 = m.body_sha256;
        let publisher = self.publisher()?;
        let read = self.pipeline_input(&m.body).await?;
        let context = self.context(&m, &read).and_then(|mut c| {
            c.promote(system::IS_REQUEST_RESPONSE, Value::Boolean(true))
                .and_then(|()| c.promote(system::CORRELATION_TOKEN, Value::String(token.into())))
                .map_err(|e| e.to_string())?;
            Ok(c)
        });
        let context = match context {
            Ok(c) => c,
            Err(reason) => {
                self.receive_failure(m, &reason).await?;
                return Ok(Ok(Requested::Failed(reason)));
            }
        };
        let message = NewMessage {
            id: None,
            body: new_body(m.body).await.map_err(SubmitError::new)?,
            content_type: m.content_type,
            context,
            // an Idempotency-Key makes a repeat within the dedup window a duplicate (or,
            // with another body, a refused reuse); without one each request is new
            source: self.source(m.source_id, sha256),
            source_identity: None,
            routing: Default::default(),
        };
        let published = self
            .mbx
            .request_publish(&publisher, message, instance, token)
            .await
            .map_err(|e| SubmitError::new(e.to_string()))?;
        if matches!(
            published,
            Published::Routed { .. } | Published::RoutingFailure { .. }
        ) {
            metrics::counter!("mbx_messages_published_total", "location" => self.location.name.clone())
                .increment(1);
        }
        Ok(Ok(match published {
            Published::Routed { message_id, .. } => return Ok(Err(message_id)),
            Published::RoutingFailure {
                message_id,
                suspended_id,
            } => Requested::Unrouted {
                message_id,
                suspended_id,
            },
            Published::Duplicate => {
                // never silent: logged, counted, tracked on the request taken first
                warn!(location = %self.location.name,
                      "dropped a request whose Idempotency-Key was published within the dedup window");
                metrics::counter!("mbx_receive_duplicates_total", "location" => self.location.name.clone())
                    .increment(1);
                Requested::Repeated
            }
            Published::SourceReused => Requested::SourceReused,
            Published::Unsubscribed => Requested::Failed("not published (no subscriber)".into()),
        }))
    }
}

impl LocationSubmitter {
    /// Idempotent receive: the message's source, with its body's digest if it has one.
    fn source(&self, source_id: Option<String>, sha256: Option<[u8; 32]>) -> Option<Source> {
        source_id.map(|id| Source {
            body_sha256: sha256,
            ..Source::new(self.location.id, id)
        })
    }

    /// Publishes a batch in one transaction, each message with its body's digest if it
    /// has one; one outcome per message, in order.
    async fn publish_batch(
        &self,
        batch: Vec<InboundMessage>,
    ) -> Result<Vec<Submitted>, SubmitError> {
        if let Some(why) = self.throttle.receive_throttled_why() {
            info!(location = %self.location.name, why, "holding the batch");
            let mut stopping = self.stopping.clone();
            tokio::select! {
                _ = self.throttle.receive_allowed() => {}
                _ = stopping.wait_for(|s| *s) => {
                    // not published, so not acknowledged: the source keeps it
                    return Err(SubmitError::new("the host is stopping"));
                }
            }
        }
        let publisher = self.publisher()?;
        let mut outcomes: Vec<Submitted> = vec![Submitted::Accepted; batch.len()];
        // which message of the batch each published one is
        let mut published_from = Vec::with_capacity(batch.len());
        let mut messages = Vec::with_capacity(batch.len());
        for (i, m) in batch.into_iter().enumerate() {
            // a body the pipeline must read is read whole (json, xml); passthru reads none
            let read = self.pipeline_input(&m.body).await?;
            match self.context(&m, &read) {
                Ok(context) => {
                    published_from.push(i);
                    messages.push(NewMessage {
                        id: None,
                        body: new_body(m.body).await.map_err(SubmitError::new)?,
                        content_type: m.content_type,
                        context,
                        source: self.source(m.source_id, m.body_sha256),
                        source_identity: m.source_identity,
                        routing: Default::default(),
                    });
                }
                Err(reason) => {
                    // kept as a non-resumable receive failure; the source is then
                    // acknowledged (or rejected, where it keeps rejected messages)
                    self.receive_failure(m, &reason).await?;
                    outcomes[i] = Submitted::ReceiveFailure;
                }
            }
        }
        if messages.is_empty() {
            return Ok(outcomes);
        }
        let published = self
            .mbx
            .publish(&publisher, messages)
            .await
            .map_err(|e| SubmitError::new(e.to_string()))?;
        let (mut fresh, mut duplicates) = (0u64, 0u64);
        for (i, p) in published_from.into_iter().zip(&published) {
            match p {
                Published::Duplicate => {
                    outcomes[i] = Submitted::Duplicate;
                    duplicates += 1;
                }
                Published::SourceReused => outcomes[i] = Submitted::SourceReused,
                _ => fresh += 1,
            }
        }
        metrics::counter!("mbx_messages_published_total", "location" => self.location.name.clone())
            .increment(fresh);
        if duplicates > 0 {
            // never silent: logged, counted, tracked (by the publish), and the adapter
            // moves its source aside
            warn!(location = %self.location.name, duplicates,
                  "dropped messages whose source id was published within the dedup window");
            metrics::counter!("mbx_receive_duplicates_total", "location" => self.location.name.clone())
                .increment(duplicates);
        }
        Ok(outcomes)
    }
}

#[async_trait]
impl Submitter for LocationSubmitter {
    async fn problem(&self, why: Option<&str>) {
        if let Some(receiving) = self.receiving.upgrade() {
            report_run(&receiving, &self.location, why).await;
        }
    }

    async fn submit(&self, batch: Vec<InboundMessage>) -> Result<Vec<Submitted>, SubmitError> {
        self.publish_batch(batch).await
    }

    /// Closed while the instance stops or a receive throttle (publish backlog, database
    /// size) is on.
    fn admit(&self) -> Admission {
        let retry_after = Duration::from_secs(mbx_adapters::http::receive::RETRY_AFTER_S);
        if *self.stopping.borrow() {
            return Admission::Throttled {
                why: "this instance is stopping; retry".to_owned(),
                retry_after,
            };
        }
        match self.throttle.receive_throttled_why() {
            Some(why) => Admission::Throttled {
                why: why.to_owned(),
                retry_after,
            },
            None => Admission::Open,
        }
    }

    /// Publishes the request, then holds its client until the first message carrying its
    /// correlation token arrives or `timeout` passes (the timeout recorded on the request
    /// and counted).
    async fn request(
        &self,
        m: InboundMessage,
        timeout: Duration,
    ) -> Result<Requested, SubmitError> {
        let receiving = self
            .receiving
            .upgrade()
            .ok_or_else(|| SubmitError::new("the host is stopping"))?;
        let token = uuid::Uuid::new_v4().to_string();
        // waiting before the publish commits: a reply may come at once
        let mut client = receiving.await_reply(token.clone());
        let message_id = match self
            .publish_request(m, &token, receiving.instance().id())
            .await?
        {
            Ok(told) => return Ok(told),
            Err(message_id) => message_id,
        };
        if let Some(reply) = client.reply(timeout).await {
            let status = reply
                .context
                .get(crate::solicit::STATUS_CODE)
                .and_then(|p| p.value.to_plain_string().parse::<u16>().ok());
            return Ok(Requested::Answered(Reply {
                message_id: reply.message_id,
                status,
                content_type: reply.content_type,
                body: reply.body,
            }));
        }
        metrics::counter!("mbx_request_timeouts_total", "location" => self.location.name.clone())
            .increment(1);
        let detail = format!(
            "two-way receive location '{}' answered its client 504: no response within {}",
            self.location.name,
            humantime::format_duration(timeout)
        );
        if let Err(e) = receiving
            .instance()
            .mbx()
            .request_timed_out(message_id, receiving.instance().host_id(), &detail)
            .await
        {
            warn!(%message_id, error = %e, "cannot record a request's timeout");
        }
        Ok(Requested::TimedOut { message_id })
    }

    async fn refuse(&self, m: InboundMessage, reason: &str) -> Result<(), SubmitError> {
        self.receive_failure(m, reason).await
    }

    async fn published_copies(&self, sources: &[ClaimedSource]) -> Result<Vec<bool>, SubmitError> {
        let pairs: Vec<(String, String)> = sources
            .iter()
            .map(|s| (s.source_id.clone(), s.identity.clone()))
            .collect();
        let instance = *self.instance.borrow();
        let published = self
            .mbx
            .published_copies(self.location.id, &pairs, Some(instance))
            .await
            .map_err(|e| SubmitError::new(e.to_string()))?;
        let n = published.iter().filter(|p| **p).count() as u64;
        if n > 0 {
            // the adapter deletes them (each logged there): not received again, and not
            // set aside as duplicates
            metrics::counter!("mbx_receive_claims_finished_total", "location" => self.location.name.clone())
                .increment(n);
        }
        Ok(published)
    }
}
