//! Orchestration instances on this host instance: claims the runnable ones (woken by a
//! publish, due timers found by polling), runs each through the interpreter
//! (`mbx_orchestration::runtime`) and commits every step with what it consumed and
//! publishes (`MessageBox::process_commit`). A call is committed before it is sent — its
//! request and Idempotency-Key saved — and its answer committed as the next step, so a
//! host killed mid-call leaves an instance another host replays, resending the same
//! bytes. Waiting instances hold nothing here: each step reads its state and messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use mbx_messagebox::process::{ClaimedInstance, HeldMessage, ProcessState, StepCommit};
use mbx_messagebox::process_leases::ProcessLease;
use mbx_messagebox::publish::NewMessage;
use mbx_messagebox::{Context, MessageBox, Value};
use mbx_orchestration::runtime::{
    CallRequest, CallResponse, CallTarget, Effects, Emitted, Event, Outcome, Runner, State,
};
use mbx_orchestration::Definition;
use serde_json::json;
use tracing::{debug, warn};

use crate::instance::Instance;
use crate::listen::Wakeups;
use crate::metrics_catalog;

/// Calls time out after this long (the DSL's task `timeout` bounds the step as a whole).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest a MessageBox call of a step may take: its statements are each bounded by
/// the server's statement timeout; this bounds a call whose connection went silent.
const DB_TIMEOUT: Duration = Duration::from_millis(2 * mbx_messagebox::STATEMENT_TIMEOUT_MS);

/// A MessageBox call bounded on the client: one whose answer never comes fails (its
/// transaction is dropped, so rolled back) instead of holding the loop for good.
async fn bounded<T>(
    call: impl std::future::Future<Output = mbx_messagebox::Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(DB_TIMEOUT, call).await {
        Ok(r) => Ok(r?),
        Err(_) => anyhow::bail!("the MessageBox did not answer within {DB_TIMEOUT:?}"),
    }
}

/// The lease of a bucket of an ordered orchestration (as an ordered port's).
const LEASE_TTL_MS: i64 = mbx_messagebox::ordered::LEASE_TTL_MS;

/// Most buckets of ordered orchestrations one instance holds, and takes per claim.
const LEASES_MAX: i64 = 256;
const LEASES_PER_CLAIM: i64 = 16;

/// How many times a claim is offered back before it is left to the reclaim.
const RELEASE_ATTEMPTS: u32 = 10;

/// A step that failed to commit runs again after this long.
const RETRY_AFTER_S: f64 = 1.0;

/// How many instances one host instance runs at once (each step is mostly waiting for
/// the database); a claim takes as many as there are free slots.
const CONCURRENT_INSTANCES: usize = 4;

/// What the loop's steps share: this instance (the MessageBox, its id, its host,
/// stopping), the HTTP client of calls, and the compiled definitions.
struct Processes {
    instance: Instance,
    mbx: MessageBox,
    host_id: i64,
    poll: Duration,
    http: reqwest::Client,
    definitions: Mutex<Definitions>,
    /// The buckets of ordered orchestrations this instance holds (process_leases.rs).
    leases: Mutex<Vec<ProcessLease>>,
    /// Whether the host runs ordered orchestrations, and when that was read: buckets
    /// are looked for only then (a query fewer per claim otherwise).
    ordered: Mutex<Option<(Instant, bool)>>,
}

/// How long whether the host runs ordered orchestrations is taken as known: an ordered
/// orchestration created meanwhile is run within this long.
const ORDERED_RECHECK: Duration = Duration::from_secs(2);

/// Compiled definitions by (orchestration, version): a version never changes.
type Definitions = HashMap<(i64, String), Arc<Definition>>;

/// Runs this host instance's share of orchestration instances until it stops.
pub(crate) async fn process_loop(instance: Instance, wake: Wakeups) {
    let p = Arc::new(Processes {
        mbx: instance.mbx().clone(),
        host_id: instance.host_id(),
        poll: instance.config().poll_interval,
        instance,
        http: reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default(),
        definitions: Mutex::default(),
        leases: Mutex::default(),
        ordered: Mutex::default(),
    });
    // aborted when this loop ends or is itself aborted (a stopping host aborts its
    // tasks): a renewer left running would keep the MessageBox's pool open for ever
    let _renewing = AbortOnDrop(tokio::spawn(renew_loop(p.clone())));
    let mut stop = p.instance.stopping();
    let mut running = tokio::task::JoinSet::new();
    // a publish's wake, kept across turns of the loop (a wake that lands while a run
    // ends is not lost) and renewed once taken
    let mut published = Box::pin(wake.published());
    published.as_mut().enable();
    // whether runnable instances may be waiting: at the start, after a wake or a poll,
    // and while claims fill every free slot
    let mut look = true;
    while !*stop.borrow() {
        let free = CONCURRENT_INSTANCES.saturating_sub(running.len());
        if look && free > 0 {
            match claim(&p, free as i64).await {
                Ok(claimed) => {
                    // an instance is claimed as a slot frees, not after a whole batch: a
                    // follow-up never queues behind instances claimed before it
                    look = claimed.len() >= free;
                    for c in claimed {
                        running.spawn(run_one(p.clone(), c));
                    }
                }
                Err(e) => {
                    warn!(error = %e, "claiming orchestration instances failed; retrying");
                    tokio::time::sleep(p.poll).await;
                    continue;
                }
            }
        }
        let wait = if running.is_empty() {
            idle_wait(&p).await
        } else {
            p.poll
        };
        tokio::select! {
            _ = &mut published => {
                look = true;
                published.set(wake.published());
                published.as_mut().enable();
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = tokio::time::sleep(wait) => look = true,
            _ = stop.changed() => {}
        }
    }
    while running.join_next().await.is_some() {}
    hand_back_buckets(&p).await;
}

/// A stopping instance hands back the buckets of ordered orchestrations it holds (they
/// would expire within the lease otherwise).
async fn hand_back_buckets(p: &Processes) {
    let held = std::mem::take(&mut *lock(&p.leases));
    if let Err(e) = p
        .mbx
        .process_leases_renew(p.instance.id(), &held, None)
        .await
    {
        warn!(error = %e, "handing back the buckets of ordered orchestrations failed (they expire)");
    }
}

/// A spawned task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Claims runnable instances: of unordered orchestrations, and — after taking the free
/// buckets of ordered ones that have work — of the buckets this instance holds.
async fn claim(p: &Processes, limit: i64) -> Result<Vec<ClaimedInstance>> {
    let me = p.instance.id();
    let mut claimed = bounded(p.mbx.process_claim(me, p.host_id, limit)).await?;
    if !runs_ordered(p).await? {
        return Ok(claimed);
    }
    let room = LEASES_MAX - lock(&p.leases).len() as i64;
    let taken = bounded(p.mbx.process_leases_acquire(
        me,
        p.host_id,
        room.min(LEASES_PER_CLAIM),
        LEASE_TTL_MS,
    ))
    .await?;
    if !taken.is_empty() {
        debug!(
            buckets = taken.len(),
            "took buckets of ordered orchestrations"
        );
        lock(&p.leases).extend(taken);
    }
    if !lock(&p.leases).is_empty() {
        let limit = limit - claimed.len() as i64;
        if limit > 0 {
            claimed.extend(bounded(p.mbx.process_claim_ordered(me, limit)).await?);
        }
    }
    Ok(claimed)
}

/// Whether the host runs ordered orchestrations (or this instance still holds buckets),
/// read again every [`ORDERED_RECHECK`].
async fn runs_ordered(p: &Processes) -> Result<bool> {
    if !lock(&p.leases).is_empty() {
        return Ok(true);
    }
    if let Some((at, known)) = *lock(&p.ordered) {
        if at.elapsed() < ORDERED_RECHECK {
            return Ok(known);
        }
    }
    let known = bounded(p.mbx.process_has_ordered(p.host_id)).await?;
    *lock(&p.ordered) = Some((Instant::now(), known));
    Ok(known)
}

/// Renews the buckets held every third of the lease's TTL and hands back those without
/// work; a bucket whose renewal fails is dropped here (its lease expires, its claims'
/// commits are refused by the MessageBox).
async fn renew_loop(p: Arc<Processes>) {
    let period = Duration::from_millis((LEASE_TTL_MS / 3) as u64);
    loop {
        tokio::time::sleep(period).await;
        let held = lock(&p.leases).clone();
        if held.is_empty() {
            continue;
        }
        let me = p.instance.id();
        let renewed = match bounded(p.mbx.process_leases_renew(me, &held, Some(LEASE_TTL_MS))).await
        {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "renewing the buckets of ordered orchestrations failed; retrying");
                continue;
            }
        };
        let idle = bounded(p.mbx.process_leases_idle(&renewed))
            .await
            .unwrap_or_default();
        if !idle.is_empty() {
            if let Err(e) = bounded(p.mbx.process_leases_renew(me, &idle, None)).await {
                warn!(error = %e, "handing back idle buckets failed (they expire)");
            }
        }
        let lost = held.len() - renewed.len();
        if lost > 0 {
            warn!(
                lost,
                "buckets of ordered orchestrations expired or moved to another instance"
            );
        }
        let mut leases = lock(&p.leases);
        // keep what was renewed, less what went back, plus what was taken meanwhile
        let taken: Vec<ProcessLease> = leases
            .iter()
            .filter(|l| !held.contains(l))
            .copied()
            .collect();
        *leases = renewed
            .into_iter()
            .filter(|l| !idle.contains(l))
            .chain(taken)
            .collect();
    }
}

/// Runs one claimed instance; a step that fails gives its claim back.
async fn run_one(p: Arc<Processes>, c: ClaimedInstance) {
    let (id, token) = (c.id, c.claim_token);
    if let Err(e) = run_instance(&p, c).await {
        warn!(instance = %id, error = %format!("{e:#}"), "an orchestration step failed; it runs again from its last persistence point");
        // the claim goes back (a step that did commit cleared it already)
        give_back(&p, id, token).await;
    }
}

/// Gives a claim back, retrying while the MessageBox refuses (a lock timeout behind a
/// busy publish): a claim left here would hold its instance until this host instance
/// dies. After the last attempt, the reclaim of this instance's claims does it then.
async fn give_back(p: &Processes, id: uuid::Uuid, token: uuid::Uuid) {
    for attempt in 1..=RELEASE_ATTEMPTS {
        match bounded(p.mbx.process_release(id, token, RETRY_AFTER_S)).await {
            Ok(()) => return,
            Err(e) => {
                warn!(instance = %id, attempt, error = %format!("{e:#}"), "giving back the claim failed");
                tokio::time::sleep(p.poll).await;
            }
        }
    }
}

/// Until the next due instance (a timer), at most the poll interval.
async fn idle_wait(p: &Processes) -> Duration {
    match p.mbx.process_next_due(p.host_id).await {
        Ok(Some(due)) => (due - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(p.poll),
        _ => p.poll,
    }
}

async fn definition(p: &Processes, c: &ClaimedInstance) -> Result<Arc<Definition>> {
    let key = (c.orchestration_id, c.version.clone());
    let cached = p.definitions.lock().ok().and_then(|d| d.get(&key).cloned());
    if let Some(d) = cached {
        return Ok(d);
    }
    let document = bounded(p.mbx.process_document(c.orchestration_id, &c.version)).await?;
    let def = Arc::new(
        Definition::from_document(&document)
            .with_context(|| format!("orchestration {} version {}", c.orchestration, c.version))?,
    );
    if let Ok(mut d) = p.definitions.lock() {
        d.insert(key, def.clone());
    }
    Ok(def)
}

/// Runs one claimed instance until it waits, ends or faults, committing each step.
async fn run_instance(p: &Processes, c: ClaimedInstance) -> Result<()> {
    let def = definition(p, &c).await?;
    let held = bounded(p.mbx.process_held(c.id)).await?;
    let runner = Runner::new(&def, &c.id.to_string());
    let mut now = c.now;
    let Some((mut state, mut first_consumed)) = saved_or_activated(p, &c, &def, &held).await?
    else {
        return Ok(());
    };
    let mut pending: Vec<Event> = held
        .iter()
        .filter(|h| !h.consumed && !h.activating)
        .map(event)
        .filter(|e| !first_consumed.contains(&e.id))
        .collect();
    // the first step's latency counts from when the instance became runnable
    let mut since = Some(c.due);
    let activation = c.data.as_ref().is_none_or(serde_json::Value::is_null);
    // effects of a run whose port call could not be made (they commit with the next run's)
    let mut carried = Effects::default();
    loop {
        let (outcome, mut fx) = runner.run(&mut state, &pending, now);
        fx.consumed.append(&mut first_consumed);
        pending.retain(|e| !fx.consumed.contains(&e.id));
        let fx = carried.then(fx);
        carried = Effects::default();
        let request = match &outcome {
            Outcome::Call(r) => match port_request(p, &c, r).await? {
                Ok(m) => m,
                Err(reason) => {
                    // nothing was sent: the call fails as a communication error at once
                    state.answer(unsent(reason));
                    carried = fx;
                    continue;
                }
            },
            _ => None,
        };
        let mut step = step_commit(&c, &runner, &state, &outcome, &fx, &held, now)?;
        step.publish.extend(request.clone());
        step.task = state.task_path(&def);
        let Some(committed_at) = bounded(p.mbx.process_commit(p.instance.id(), step)).await? else {
            // another host instance runs it now, or (ordered) this one's bucket lease
            // lapsed: the claim goes back if it is still this one's (the token fences it)
            warn!(instance = %c.id, "a step could not commit: its claim or its bucket's lease was lost");
            give_back(p, c.id, c.claim_token).await;
            return Ok(());
        };
        metrics_catalog::orchestration_step(
            &c.orchestration,
            activation,
            since.take().map(|t| committed_at - t),
        );
        let Outcome::Call(
            request @ CallRequest {
                target: CallTarget::Http { url },
                ..
            },
        ) = &outcome
        else {
            // a call through a send port went with the commit: its answer wakes the instance
            return Ok(());
        };
        let response = send(&p.http, url, request).await;
        state.answer(response);
        // the next step's time: the database's, at least the commit's
        now = committed_at.max(now);
    }
}

/// The answer of a call that could not be sent.
fn unsent(reason: String) -> CallResponse {
    CallResponse {
        status: 0,
        headers: Default::default(),
        body: reason,
    }
}

/// The request message of a call through a send port (`None` for an HTTP call), or why
/// the port cannot be called.
async fn port_request(
    p: &Processes,
    c: &ClaimedInstance,
    r: &CallRequest,
) -> Result<std::result::Result<Option<NewMessage>, String>> {
    let CallTarget::SendPort { port } = &r.target else {
        return Ok(Ok(None));
    };
    let port_id = match bounded(p.mbx.process_call_port(port)).await? {
        Ok(id) => id,
        Err(reason) => return Ok(Err(format!("call {port}@mbx: {reason}"))),
    };
    let content_type = r
        .headers
        .get("content-type")
        .map_or("application/json", String::as_str);
    let body = r.body.clone().unwrap_or_default().into_bytes();
    Ok(Ok(Some(mbx_messagebox::process_calls::call_request(
        port_id,
        c.id,
        &r.idempotency_key,
        body,
        content_type,
    )?)))
}

/// The instance's saved state, or — for a new instance — its state as activated by its
/// held messages, with the ids of the messages that activated it (`None`: nothing to run
/// yet, or it could not start; either was committed here).
async fn saved_or_activated(
    p: &Processes,
    c: &ClaimedInstance,
    def: &Definition,
    held: &[HeldMessage],
) -> Result<Option<(State, Vec<String>)>> {
    if let Some(data) = c.data.as_ref().filter(|d| !d.is_null()) {
        let state = serde_json::from_value::<State>(data.clone())
            .context("reading the instance's state")?;
        return Ok(Some((state, Vec::new())));
    }
    let Some(activating) = activating_events(def, held) else {
        // `all`: not every activating message is here yet
        commit_pending(p, c).await?;
        return Ok(None);
    };
    let first_consumed = activating.iter().map(|e| e.id.clone()).collect();
    match State::activate(def, &activating, c.now) {
        Ok(s) => Ok(Some((s, first_consumed))),
        Err(e) => {
            fault_before_start(p, c, e).await?;
            Ok(None)
        }
    }
}

/// What a step commits: the state, how the step ended, what it consumed and publishes,
/// the correlations it subscribes to now.
fn step_commit(
    c: &ClaimedInstance,
    runner: &Runner<'_>,
    state: &State,
    outcome: &Outcome,
    fx: &Effects,
    held: &[HeldMessage],
    now: f64,
) -> Result<StepCommit> {
    let publish = fx
        .emitted
        .iter()
        .map(|e| new_message(e, held))
        .collect::<Result<Vec<_>>>()?;
    let subscriptions = runner
        .subscriptions(state, now)
        .iter()
        .map(|s| {
            mbx_messagebox::process::correlation_key(
                s.with
                    .iter()
                    .chain(s.correlation.iter().map(|(k, v)| (k, v)))
                    .map(|(k, v)| (k.as_str(), text(v))),
            )
        })
        .collect();
    let (process_state, wake_at, error, keep_claim) = match outcome {
        Outcome::Waiting { wake_at } => (ProcessState::Waiting, *wake_at, None, false),
        // a call through a send port: its request goes with this commit, its answer wakes it
        Outcome::Call(CallRequest {
            target: CallTarget::SendPort { .. },
            ..
        }) => (ProcessState::Waiting, None, None, false),
        Outcome::Call(_) => (ProcessState::Running, None, None, true),
        Outcome::Completed(_) => (ProcessState::Completed, None, None, false),
        Outcome::Faulted(e) => (
            ProcessState::Faulted,
            None,
            Some(serde_json::to_value(e)?),
            false,
        ),
    };
    Ok(StepCommit {
        instance_id: c.id,
        claim_token: c.claim_token,
        pokes_seen: c.pokes,
        state: process_state,
        data: serde_json::to_value(state)?,
        error,
        wake_at,
        keep_claim,
        consumed: fx
            .consumed
            .iter()
            .filter_map(|id| id.parse().ok())
            .collect(),
        publish,
        subscriptions,
        task: None,
    })
}

/// The messages that activate the instance: the one routed as its activation, or — for
/// `schedule.on.all` — one held message for each filter, in the filters' order (`None`
/// while one is missing).
fn activating_events(def: &Definition, held: &[HeldMessage]) -> Option<Vec<Event>> {
    use mbx_orchestration::model::Consume;
    let events: Vec<Event> = held.iter().filter(|h| !h.consumed).map(event).collect();
    let Consume::All(filters) = &def.activation else {
        return Some(held.iter().filter(|h| h.activating).map(event).collect());
    };
    let mut picked: Vec<Event> = Vec::new();
    for f in filters {
        let e = events
            .iter()
            .find(|e| e.matches(&f.with) && !picked.iter().any(|p| p.id == e.id))?;
        picked.push(e.clone());
    }
    Some(picked)
}

/// An `all` activation still gathering its messages: nothing to run until another
/// arrives (its arrival makes the instance runnable again).
async fn commit_pending(p: &Processes, c: &ClaimedInstance) -> Result<()> {
    commit_unstarted(p, c, ProcessState::Pending, None).await
}

/// The instance could not even start (its `input.from` failed): it faults.
async fn fault_before_start(
    p: &Processes,
    c: &ClaimedInstance,
    e: mbx_orchestration::runtime::WorkflowError,
) -> Result<()> {
    commit_unstarted(p, c, ProcessState::Faulted, Some(serde_json::to_value(&e)?)).await
}

/// Commits an instance that has no saved state yet: its new state, and its error.
async fn commit_unstarted(
    p: &Processes,
    c: &ClaimedInstance,
    state: ProcessState,
    error: Option<serde_json::Value>,
) -> Result<()> {
    let step = StepCommit {
        instance_id: c.id,
        claim_token: c.claim_token,
        pokes_seen: c.pokes,
        state,
        data: json!(null),
        error,
        wake_at: None,
        keep_claim: false,
        consumed: Vec::new(),
        publish: Vec::new(),
        subscriptions: Vec::new(),
        task: None,
    };
    bounded(p.mbx.process_commit(p.instance.id(), step)).await?;
    Ok(())
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A held message as the instance sees it: a CloudEvent with its properties.
fn event(h: &HeldMessage) -> Event {
    let mut properties = serde_json::Map::new();
    for (name, prop) in h.context.0.iter() {
        properties.insert(name.to_owned(), property_json(&prop.value));
    }
    let body = h.body.as_deref().unwrap_or_default();
    let data = if h.content_type.contains("json") {
        serde_json::from_slice(body).unwrap_or_else(|_| json!(String::from_utf8_lossy(body)))
    } else {
        json!(String::from_utf8_lossy(body))
    };
    let message_type = h
        .context
        .0
        .promoted(mbx_messagebox::context::system::MESSAGE_TYPE);
    let port = h
        .context
        .0
        .promoted(mbx_messagebox::context::system::RECEIVE_PORT_NAME);
    Event {
        id: h.message_id.to_string(),
        envelope: json!({
            "specversion": "1.0",
            "id": h.message_id.to_string(),
            "source": port.map_or_else(|| "mbx".to_owned(), |p| format!("mbx:receive-port:{}", p.to_plain_string())),
            "type": message_type.map(Value::to_plain_string),
            "time": h.published_at.to_rfc3339(),
            "datacontenttype": h.content_type,
            "data": data,
            "properties": properties,
        }),
    }
}

fn property_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Integer(n) => json!(n),
        Value::Boolean(b) => json!(b),
        other => json!(other.to_plain_string()),
    }
}

fn property_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) if n.is_i64() => {
            Value::Integer(n.as_i64().unwrap_or_default())
        }
        other => Value::String(text(other)),
    }
}

/// The message an `emit` publishes; a republish copies a held message's body as it is.
fn new_message(e: &Emitted, held: &[HeldMessage]) -> Result<NewMessage> {
    let (body, content_type, mut context) = match &e.republish {
        Some(id) => {
            let h = held
                .iter()
                .find(|h| h.message_id.to_string() == *id)
                .with_context(|| {
                    format!("x-mbx-republish: message {id} is not one this instance received")
                })?;
            let body = h.body.clone().with_context(|| {
                format!("x-mbx-republish: message {id} is larger than 1 MiB (not supported yet)")
            })?;
            (
                Bytes::from(body),
                h.content_type.clone(),
                h.context.0.clone(),
            )
        }
        None => (
            Bytes::from(e.body.clone().unwrap_or_default()),
            e.content_type.clone(),
            Context::new(),
        ),
    };
    if let Some(t) = &e.message_type {
        context.promote(
            mbx_messagebox::context::system::MESSAGE_TYPE,
            Value::String(t.clone()),
        )?;
    }
    for (name, v) in &e.properties {
        context.promote(name, property_value(v))?;
    }
    Ok(NewMessage::new(body, &content_type, context))
}

/// Sends an HTTP call to `url` and reads its answer; a call that cannot be sent answers
/// status 0.
async fn send(http: &reqwest::Client, url: &str, r: &CallRequest) -> CallResponse {
    let method = reqwest::Method::from_bytes(r.method.as_bytes()).unwrap_or(reqwest::Method::POST);
    let mut req = http
        .request(method, url)
        .header("Idempotency-Key", &r.idempotency_key);
    for (k, v) in &r.headers {
        req = req.header(k, v);
    }
    if let Some(body) = &r.body {
        req = req.body(body.clone());
    }
    match req.send().await {
        Err(e) => CallResponse {
            status: 0,
            headers: Default::default(),
            body: format!("{url}: {e}"),
        },
        Ok(resp) => {
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned())))
                .collect();
            let body = resp.text().await.unwrap_or_default();
            CallResponse {
                status,
                headers,
                body,
            }
        }
    }
}
