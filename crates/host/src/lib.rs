//! `mbx-host`: one host instance of an mbx group, callable in-process by tests
//! through [`run`].
//!
//! Tasks of one instance, all stopped by one shutdown signal:
//! - heartbeat + reclaim: renews this instance's heartbeat on the database clock and puts
//!   back the claims of dead instances (poison after `max_deliveries`);
//! - supervisor: on every configuration notification (LISTEN `mbx_config`, sent by
//!   triggers on commit) and at least every `poll_interval`, reads the started send ports
//!   and enabled receive locations bound to this host and starts or stops their loops
//!   (configuration changes reach a running instance at once, without restart);
//! - publish listener: LISTEN on the MessageBox's publish channel, waking the delivery
//!   loops within milliseconds of a publish (polling remains the fallback);
//! - one delivery loop per started port: claim a batch → send adapter → complete / fail;
//! - one receive runner per enabled location: adapter → pipeline → publish → acknowledge;
//! - the reply task: hands the replies routed to this instance (LISTEN `mbx_reply`) to the
//!   two-way receive clients waiting for them;
//! - maintenance, and the admin listener (`/healthz`, `/readyz`, `/metrics`).

mod admin;
mod delivery;
mod dispatch;
mod forward;
mod http_receive;
mod http_server;
mod keyed;
mod lease;
mod metrics_catalog;
mod receive;
mod replies;
mod solicit;
mod throttle;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use mbx_adapters::Registry;
use mbx_messagebox::instances::{DEAD_AFTER_S, MAX_DELIVERIES_DEFAULT};
use mbx_messagebox::maintenance::MAINTENANCE_BATCH_MAX;
use mbx_messagebox::states::{InstanceState, PortState};
use mbx_messagebox::{MessageBox, SchemaState, Wakeup};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};
use uuid::Uuid;

/// Heartbeat period (every 2 s; an instance is dead after 10 s).
pub const HEARTBEAT_INTERVAL_MS: u64 = 2_000;

/// Default configuration poll interval (changes reach instances within 1 s).
pub const POLL_INTERVAL_DEFAULT_MS: u64 = 1_000;

/// Default port of `--http-listen` (`0.0.0.0:8080`).
pub const HTTP_LISTEN_DEFAULT_PORT: u16 = 8080;

/// Default port of `--https-listen` (`https:///…` locations, with `--tls-cert`).
pub const HTTPS_LISTEN_DEFAULT_PORT: u16 = 8443;

/// Default `--watchdog-stall`: well above an adapter's default send timeout (30 s).
pub const WATCHDOG_STALL_DEFAULT_S: u64 = 120;

/// Maintenance period.
pub const MAINTENANCE_INTERVAL_S: u64 = 60;

/// Connections one instance opens at most.
pub const POOL_MAX_CONNECTIONS: u32 = 16;

/// How long a graceful stop waits for loops to finish their batch (exit in 30 s).
pub const SHUTDOWN_GRACE_S: u64 = 20;

/// Default `--startup-timeout`: how long start-up waits for an unreachable MessageBox.
pub const STARTUP_TIMEOUT_DEFAULT_S: u64 = 60;

/// First and longest pause between start-up attempts.
const STARTUP_BACKOFF_MIN_MS: u64 = 250;
const STARTUP_BACKOFF_MAX_MS: u64 = 5_000;

/// Settings of one host instance.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub database_url: String,
    pub host: String,
    /// `/healthz`, `/readyz`, `/metrics`; `None` serves nothing.
    pub admin_listen: Option<SocketAddr>,
    /// Where this instance serves its host's HTTP receive locations (bound when the first
    /// one starts).
    pub http_listen: SocketAddr,
    /// Where this instance serves its host's HTTPS receive locations (`https:///…`), over
    /// TLS with `tls`; bound when the first one starts.
    pub https_listen: SocketAddr,
    /// The certificate chain and private key (PEM files) HTTPS receive serves with; an
    /// instance without them refuses to serve `https:///…` locations, visibly.
    pub tls: Option<TlsFiles>,
    pub max_deliveries: i32,
    pub poll_interval: Duration,
    /// Deliveries one claim takes at most.
    pub claim_batch: i64,
    /// Body bytes one claim takes at most.
    pub claim_bytes: i64,
    /// A delivery loop that makes no progress (no claim, no outcome) for this long counts
    /// as stalled: the heartbeat is withheld so the instance is declared dead and another
    /// takes over its work.
    pub watchdog_stall: Duration,
    /// Start-up retries an unreachable MessageBox (refused or reset connections) this
    /// long before it gives up.
    pub startup_timeout: Duration,
    /// Stopped and dead instances (holding no claim or lease) are forgotten this long
    /// after their last heartbeat.
    pub instance_retention: Duration,
}

impl HostConfig {
    pub fn new(database_url: &str, host: &str) -> Self {
        Self {
            database_url: database_url.to_owned(),
            host: host.to_owned(),
            admin_listen: None,
            http_listen: SocketAddr::from(([0, 0, 0, 0], HTTP_LISTEN_DEFAULT_PORT)),
            https_listen: SocketAddr::from(([0, 0, 0, 0], HTTPS_LISTEN_DEFAULT_PORT)),
            tls: None,
            max_deliveries: MAX_DELIVERIES_DEFAULT,
            poll_interval: Duration::from_millis(POLL_INTERVAL_DEFAULT_MS),
            claim_batch: mbx_messagebox::delivery::CLAIM_BATCH_DEFAULT,
            claim_bytes: mbx_messagebox::delivery::CLAIM_BYTES_DEFAULT,
            watchdog_stall: Duration::from_secs(WATCHDOG_STALL_DEFAULT_S),
            startup_timeout: Duration::from_secs(STARTUP_TIMEOUT_DEFAULT_S),
            instance_retention: Duration::from_secs(
                mbx_messagebox::maintenance::INSTANCE_RETENTION_S.unsigned_abs(),
            ),
        }
    }
}

/// `--tls-cert` and `--tls-key`: PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// What the loops of one instance share.
pub(crate) struct Shared {
    pub mbx: MessageBox,
    pub config: HostConfig,
    pub registry: Registry,
    /// This instance's id; replaced when it re-registers after being declared dead.
    pub instance: watch::Sender<Uuid>,
    /// Woken on every publish notification.
    pub published: Notify,
    /// Woken on every configuration-change notification.
    pub config_changed: Notify,
    /// Woken when another group forwarded messages into this one's inbox.
    pub forwarded: Notify,
    /// Connections to the groups this instance forwards to.
    pub forward_links: forward::Links,
    /// Two-way receive's clients waiting for their replies.
    pub waiting: replies::Waiting,
    /// Becomes true when the instance stops.
    pub stopping: watch::Receiver<bool>,
    /// The shared listeners of the HTTP receive locations this instance serves.
    pub http: Arc<http_receive::HttpReceive>,
    /// Last progress of each delivery loop, by port id (the watchdog reads it).
    pub progress: std::sync::Mutex<HashMap<i64, std::time::Instant>>,
    /// Messages delivered per port id since this process started, written with every
    /// heartbeat (the console's and `mbx stats --watch`'s rates).
    pub delivered: std::sync::Mutex<std::collections::BTreeMap<i64, u64>>,
    /// Spreading ordered ports over the host's instances (see `lease::Share`).
    pub share: lease::Share,
    /// The host's id (publishes are attributed to it, for its publish throttle).
    pub host_id: i64,
    /// The publish and delivery throttles.
    pub throttle: Arc<throttle::Throttle>,
    /// Enabled locations that cannot run on this instance, by id: (name, why). `/readyz`
    /// answers 503 while any is here; the MessageBox has the same (`mbx status`).
    pub location_problems: std::sync::Mutex<HashMap<i64, (String, String)>>,
    /// This instance's heartbeats, as the heartbeat loop saw them (see
    /// [`Shared::may_judge_dead`]).
    pub heartbeats: std::sync::Mutex<Heartbeats>,
}

/// Since when this instance's heartbeats have succeeded without a failure or a long gap
/// in between, and when the last one succeeded.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Heartbeats {
    connected_since: Option<Instant>,
    last_ok: Option<Instant>,
}

impl Heartbeats {
    /// The longest gap between two successful heartbeats that keeps them "on time": one
    /// that came later was cut off (e.g. waiting for a connection or a lock) as much as a
    /// failed one; a merely slow one (a busy pool) does not restart the wait.
    fn gap_max() -> Duration {
        Duration::from_secs(DEAD_AFTER_S.unsigned_abs()) / 2
    }

    /// A heartbeat succeeded now.
    fn ok(&mut self, now: Instant) {
        if !matches!(self.last_ok, Some(t) if now.saturating_duration_since(t) <= Self::gap_max()) {
            self.connected_since = Some(now);
        }
        self.last_ok = Some(now);
    }

    /// A heartbeat failed.
    fn failed(&mut self) {
        self.connected_since = None;
    }

    /// Connected, heartbeating on time, for the dead timeout, and the last heartbeat is
    /// recent (one held up now, e.g. by a lock, counts as late).
    fn settled(&self, now: Instant) -> bool {
        let dead_after = Duration::from_secs(DEAD_AFTER_S.unsigned_abs());
        self.connected_since
            .is_some_and(|since| now.saturating_duration_since(since) >= dead_after)
            && self
                .last_ok
                .is_some_and(|t| now.saturating_duration_since(t) <= Self::gap_max())
    }
}

impl Shared {
    pub fn instance_id(&self) -> Uuid {
        *self.instance.borrow()
    }

    /// Whether this instance may take other instances for dead (and reclaim their work:
    /// deliveries, claimed files). After a database outage every instance's heartbeat is
    /// stale: only once this one has itself been connected, heartbeating on time, for the
    /// dead timeout have the others had the time to heartbeat again (otherwise all would
    /// declare each other dead and reclaim each other's work). A heartbeat held up right
    /// now (its last success more than half the dead timeout ago) closes the gate too.
    pub fn may_judge_dead(&self) -> bool {
        self.heartbeats
            .lock()
            .is_ok_and(|h| h.settled(Instant::now()))
    }

    /// The heartbeat loop's word on one heartbeat: it succeeded, or it failed.
    fn heartbeat_done(&self, ok: bool) {
        if let Ok(mut h) = self.heartbeats.lock() {
            if ok {
                h.ok(Instant::now());
            } else {
                h.failed();
            }
        }
    }

    /// `n` messages of port `port_id` were delivered (their completions committed).
    pub fn count_delivered(&self, port_id: i64, n: usize) {
        if let Ok(mut d) = self.delivered.lock() {
            *d.entry(port_id).or_default() += n as u64;
        }
    }

    /// A delivery loop made progress (claimed, waited, or got an outcome).
    pub fn progressed(&self, port_id: i64) {
        if let Ok(mut p) = self.progress.lock() {
            p.insert(port_id, std::time::Instant::now());
        }
    }

    /// The loop of a port ended: the watchdog no longer watches it.
    pub fn forget_progress(&self, port_id: i64) {
        if let Ok(mut p) = self.progress.lock() {
            p.remove(&port_id);
        }
    }

    /// The port id and stall time of a delivery loop stalled past the watchdog limit.
    fn stalled_loop(&self) -> Option<(i64, Duration)> {
        let p = self.progress.lock().ok()?;
        p.iter()
            .map(|(id, t)| (*id, t.elapsed()))
            .find(|(_, d)| *d > self.config.watchdog_stall)
    }
}

/// Runs one host instance until `shutdown` resolves, then stops gracefully: stops
/// receiving, lets delivery loops finish their batch, releases what is left, deregisters.
pub async fn run(
    config: HostConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let registry = Registry::new().context("building the adapter registry")?;
    run_with_registry(config, registry, shutdown).await
}

/// [`run`] with the given adapter registry instead of the built-in one. It exists so tests
/// can inject faults through their own adapters (`Registry::with_send_adapter`, e.g. a
/// send adapter that panics); `mbx-host` calls [`run`].
pub async fn run_with_registry(
    config: HostConfig,
    registry: Registry,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    // connections, files and sockets all take descriptors: the soft limit goes up to the
    // hard one, and HTTP receive keeps its connections below it (http_server.rs)
    let fd_limit = http_server::raise_fd_limit();
    tracing::debug!(fd_limit, "open-file limit");
    let tls = match &config.tls {
        Some(files) => Some(http_server::tls_acceptor(files)?),
        None => None,
    };
    let machine = machine_name();
    tokio::pin!(shutdown);
    let (mbx, limits, id) = tokio::select! {
        started = start_up(&config, &machine) => started?,
        _ = &mut shutdown => {
            info!("stopped while starting");
            return Ok(());
        }
    };
    info!(instance = %id, host = %config.host, "host instance registered");
    let metrics = admin::metrics_handle();
    metrics_catalog::describe();

    // HTTP receive locations mount their paths on this instance's shared listeners
    let http = Arc::new(http_receive::HttpReceive::new(
        config.http_listen,
        config.https_listen,
        tls,
    ));
    let registry = registry.with_http_listener(Arc::new(http_receive::Listener(http.clone())));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (instance_tx, _) = watch::channel(id);
    let shared = Arc::new(Shared {
        mbx: mbx.clone(),
        config: config.clone(),
        registry,
        instance: instance_tx,
        published: Notify::new(),
        config_changed: Notify::new(),
        forwarded: Notify::new(),
        forward_links: Default::default(),
        waiting: Default::default(),
        stopping: stop_rx,
        http,
        progress: Default::default(),
        delivered: Default::default(),
        share: Default::default(),
        host_id: limits.host_id,
        throttle: Arc::new(throttle::Throttle::new(
            limits.throttle_publish,
            limits.throttle_inflight,
        )),
        location_problems: Default::default(),
        heartbeats: Default::default(),
    });

    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    if let Some(addr) = config.admin_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --admin-listen {addr}"))?;
        info!(address = %listener.local_addr()?, "admin listener ready");
        tasks.push(tokio::spawn(admin::serve(
            listener,
            shared.clone(),
            metrics,
        )));
    }
    tasks.push(tokio::spawn(heartbeat_loop(shared.clone(), machine)));
    tasks.push(tokio::spawn(listen_loop(shared.clone())));
    tasks.push(tokio::spawn(replies::reply_loop(shared.clone())));
    tasks.push(tokio::spawn(maintenance_loop(shared.clone())));
    tasks.push(tokio::spawn(metrics_loop(shared.clone())));
    tasks.push(tokio::spawn(throttle::monitor_loop(shared.clone())));
    tasks.push(tokio::spawn(forward::inbox_loop(shared.clone())));
    tasks.push(tokio::spawn(forward::forget_loop(shared.clone())));
    let supervisor = tokio::spawn(supervisor_loop(shared.clone()));

    shutdown.await;
    info!("stopping: no more receiving; finishing in-flight batches");
    let _ = stop_tx.send(true);
    shared.published.notify_waiters();
    if tokio::time::timeout(Duration::from_secs(SHUTDOWN_GRACE_S), supervisor)
        .await
        .is_err()
    {
        warn!("loops did not stop within the grace period; their claims are released");
    }
    for t in tasks {
        t.abort();
    }
    let released = mbx
        .instance_deregister(shared.instance_id())
        .await
        .context("deregistering")?;
    info!(released, "host instance stopped");
    Ok(())
}

/// Connects, migrates a schema that is behind, reads the host's thresholds and registers
/// the instance. Each step retries what a MessageBox restarting or a network blip causes
/// (refused or reset connections, a server shutting down) until `startup_timeout` has
/// passed, warning with the cause each time; anything else fails at once.
async fn start_up(
    config: &HostConfig,
    machine: &str,
) -> Result<(MessageBox, mbx_messagebox::throttle::HostLimits, Uuid)> {
    let at = mbx_messagebox::redact_url(&config.database_url);
    let deadline = Instant::now() + config.startup_timeout;
    let mbx = retry_start(deadline, "connecting to the MessageBox", || {
        MessageBox::connect(&config.database_url, POOL_MAX_CONNECTIONS)
    })
    .await
    .with_context(|| {
        format!("cannot connect to the MessageBox at {at}; check MBX_DATABASE_URL and that PostgreSQL runs")
    })?;
    // a host migrates only when the schema is behind: with separate roles (`mbx roles`)
    // its role has no DDL, and a current schema needs none; it never touches a schema a
    // newer mbx migrated
    let state = retry_start(deadline, "reading the MessageBox schema", || {
        mbx.schema_state()
    })
    .await
    .with_context(|| {
        format!("cannot read the MessageBox schema at {at}; check MBX_DATABASE_URL and the role's rights")
    })?;
    match state {
        SchemaState::Current => {}
        SchemaState::Missing | SchemaState::Behind => {
            retry_start(deadline, "migrating the MessageBox", || mbx.init(None))
                .await
                .with_context(|| format!("migrating the MessageBox at {at}"))?;
        }
        SchemaState::Newer(v) => anyhow::bail!(
            "the MessageBox at {at} has migration {v}, newer than this mbx-host knows; upgrade mbx-host"
        ),
    }
    let limits = retry_start(deadline, "reading the host's thresholds", || {
        mbx.host_limits(&config.host)
    })
    .await
    .with_context(|| {
        format!(
            "reading the throttling thresholds of host '{}'",
            config.host
        )
    })?;
    let id = retry_start(deadline, "registering the instance", || {
        register_once(&mbx, config, machine)
    })
    .await
    .with_context(|| format!("registering an instance of host '{}'", config.host))?;
    Ok((mbx, limits, id))
}

/// Runs one start-up step until it succeeds, fails for good, or `deadline` passes.
async fn retry_start<T, F, Fut>(
    deadline: Instant,
    what: &str,
    mut step: F,
) -> mbx_messagebox::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = mbx_messagebox::Result<T>>,
{
    let mut backoff = Duration::from_millis(STARTUP_BACKOFF_MIN_MS);
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                // the last attempt falls on the deadline
                let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
                warn!(error = %mbx_messagebox::one_line(&e), retry_in_ms = pause.as_millis() as u64, "{what} failed; retrying");
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(Duration::from_millis(STARTUP_BACKOFF_MAX_MS));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The name of this machine, as `mbx instance list` shows it: the kernel's host name
/// (shells and systemd do not export `HOSTNAME`), `unknown` if it is not valid UTF-8.
fn machine_name() -> String {
    gethostname::gethostname()
        .into_string()
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// One registration of this process as an instance of its host.
async fn register_once(
    mbx: &MessageBox,
    config: &HostConfig,
    machine: &str,
) -> mbx_messagebox::Result<Uuid> {
    mbx.instance_register(
        &config.host,
        machine,
        std::process::id() as i32,
        env!("CARGO_PKG_VERSION"),
    )
    .await
}

async fn register(mbx: &MessageBox, config: &HostConfig, machine: &str) -> Result<Uuid> {
    register_once(mbx, config, machine)
        .await
        .with_context(|| format!("registering an instance of host '{}'", config.host))
}

/// Sleeps `d` unless the instance is stopping; returns false when it is.
pub(crate) async fn pause(shared: &Shared, d: Duration) -> bool {
    let mut stopping = shared.stopping.clone();
    if *stopping.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => !*stopping.borrow(),
        _ = stopping.changed() => false,
    }
}

async fn heartbeat_loop(shared: Arc<Shared>, machine: String) {
    let period = Duration::from_millis(HEARTBEAT_INTERVAL_MS);
    loop {
        let id = shared.instance_id();
        if let Some((port_id, stalled)) = shared.stalled_loop() {
            error!(
                port_id,
                stalled_s = stalled.as_secs(),
                "a delivery loop is stalled; heartbeat withheld so another instance takes over"
            );
            if !pause(&shared, period).await {
                return;
            }
            continue;
        }
        let delivered = shared.delivered.lock().map(|d| d.clone()).ok();
        match shared
            .mbx
            .instance_heartbeat_with(id, delivered.as_ref())
            .await
        {
            Ok(true) => {
                shared.heartbeat_done(true);
            }
            Ok(false) => {
                warn!(instance = %id, "declared dead by another instance; re-registering");
                match register(&shared.mbx, &shared.config, &machine).await {
                    Ok(new_id) => {
                        // `send` would fail (nobody subscribes) and keep the dead id
                        shared.instance.send_replace(new_id);
                    }
                    Err(e) => error!(error = %e, "re-registration failed"),
                }
            }
            Err(e) => {
                shared.heartbeat_done(false);
                error!(error = %e, "heartbeat failed");
            }
        }
        match shared.mbx.instance_list().await {
            Ok(list) => {
                let alive = list
                    .iter()
                    .filter(|i| i.host == shared.config.host && i.state == InstanceState::Alive)
                    .count();
                shared.share.set_instances(alive);
            }
            Err(e) => warn!(error = %e, "listing instances failed"),
        }
        // after a database outage, others are declared dead only once this instance has
        // itself been connected for the dead timeout (the file reclaimer waits the same)
        let reclaimed = if shared.may_judge_dead() {
            shared
                .mbx
                .instances_reclaim_dead(DEAD_AFTER_S, shared.config.max_deliveries)
                .await
        } else {
            Ok(Default::default())
        };
        match reclaimed {
            Ok(r)
                if r.deliveries_reclaimed
                    + r.poison_suspended
                    + r.instances_declared_dead
                    + r.replies_suspended
                    > 0 =>
            {
                metrics::counter!("mbx_deliveries_reclaimed_total")
                    .increment(r.deliveries_reclaimed);
                // replies whose waiting instance died: suspended with the reason
                metrics::counter!("mbx_late_replies_total").increment(r.replies_suspended);
                info!(
                    dead = r.instances_declared_dead,
                    reclaimed = r.deliveries_reclaimed,
                    poison = r.poison_suspended,
                    replies_suspended = r.replies_suspended,
                    "reclaimed dead instances' work"
                );
                shared.published.notify_waiters();
            }
            Ok(_) => {}
            Err(e) => error!(error = %e, "reclaim failed"),
        }
        if !pause(&shared, period).await {
            return;
        }
    }
}

/// How often the group-wide gauges (spool, per-port backlog) are read for `/metrics`.
const METRICS_INTERVAL_S: u64 = 10;

async fn metrics_loop(shared: Arc<Shared>) {
    loop {
        // the group's gauges come from one instance: the live one with the lowest id
        let me = shared.instance_id();
        let reporter = match shared.mbx.instance_list().await {
            Ok(list) => list
                .iter()
                .filter(|i| i.state == InstanceState::Alive)
                .map(|i| i.id)
                .min()
                .is_none_or(|lowest| lowest == me),
            Err(_) => true,
        };
        match shared.mbx.stats().await {
            Ok(s) => metrics_catalog::port_gauges(&s, reporter),
            Err(e) => warn!(error = %e, "stats for metrics failed"),
        }
        // error reports this instance dropped for want of a subscriber
        metrics::counter!("mbx_error_reports_dropped_total")
            .absolute(shared.mbx.error_reports_dropped());
        if !pause(&shared, Duration::from_secs(METRICS_INTERVAL_S)).await {
            return;
        }
    }
}

async fn maintenance_loop(shared: Arc<Shared>) {
    loop {
        // the group's tracking retention (`mbx group set --tracking-retention`)
        let run = async {
            let retention = shared.mbx.tracking_retention_s().await?;
            shared
                .mbx
                .maintenance_run_with(
                    retention,
                    i64::try_from(shared.config.instance_retention.as_secs()).unwrap_or(i64::MAX),
                    MAINTENANCE_BATCH_MAX,
                )
                .await
        };
        if let Err(e) = run.await {
            error!(error = %e, "maintenance failed");
        }
        if !pause(&shared, Duration::from_secs(MAINTENANCE_INTERVAL_S)).await {
            return;
        }
    }
}

/// LISTEN on the publish and configuration channels; reconnects with a pause when the
/// connection drops.
async fn listen_loop(shared: Arc<Shared>) {
    loop {
        match shared.mbx.listen().await {
            Ok(mut listener) => {
                // a new connection may have missed notifications: look once
                shared.published.notify_waiters();
                shared.config_changed.notify_one();
                shared.forwarded.notify_one();
                shared.waiting.wake.notify_one();
                loop {
                    match listener.recv().await {
                        Ok(Wakeup::ConfigChanged) => shared.config_changed.notify_one(),
                        Ok(Wakeup::Published) => shared.published.notify_waiters(),
                        Ok(Wakeup::Forwarded) => shared.forwarded.notify_one(),
                        Ok(Wakeup::Replied(instance)) => {
                            if instance == shared.instance_id() {
                                shared.waiting.wake.notify_one();
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, "publish listener lost its connection");
                            break;
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e, "publish listener cannot listen; polling only"),
        }
        if !pause(&shared, shared.config.poll_interval).await {
            return;
        }
    }
}

/// Running loops by object id: the object's configuration as it was started (its
/// serialized form), task, and its stop signal.
type Loops = HashMap<i64, (String, JoinHandle<()>, watch::Sender<bool>)>;

/// Makes `loops` match `wanted`: stops loops of objects no longer wanted, changed in place
/// (`mbx … update`: started again with the new configuration) or whose task ended; starts
/// loops for new ones.
fn reconcile<T: serde::Serialize>(
    loops: &mut Loops,
    wanted: HashMap<i64, (String, T)>,
    kind: &str,
    spawn: impl Fn(T, watch::Receiver<bool>) -> JoinHandle<()>,
) {
    let config = |object: &T| serde_json::to_string(object).unwrap_or_default();
    loops.retain(|id, (started_with, handle, stop)| {
        let keep = wanted
            .get(id)
            .is_some_and(|(_, object)| config(object) == *started_with)
            && !handle.is_finished();
        if !keep {
            info!(%kind, id, "loop stopping");
            let _ = stop.send(true);
        }
        keep
    });
    for (id, (name, object)) in wanted {
        if let std::collections::hash_map::Entry::Vacant(slot) = loops.entry(id) {
            info!(%kind, name = %name, "loop starting");
            let (stop_tx, stop_rx) = watch::channel(false);
            let started_with = config(&object);
            slot.insert((started_with, spawn(object, stop_rx), stop_tx));
        }
    }
}

/// Starts and stops the loops of ports and locations as the configuration changes.
async fn supervisor_loop(shared: Arc<Shared>) {
    let mut ports: Loops = HashMap::new();
    // one claim per round for every unordered port's worker
    let dispatcher = Arc::new(dispatch::Dispatcher::default());
    let dispatching = tokio::spawn(dispatch::dispatch_loop(shared.clone(), dispatcher.clone()));
    let mut locations: Loops = HashMap::new();
    loop {
        match shared.mbx.send_port_list().await {
            Ok(list) => {
                let wanted: HashMap<i64, _> = list
                    .into_iter()
                    .filter(|p| p.host == shared.config.host && p.state == PortState::Started)
                    .map(|p| (p.id, (p.name.clone(), p)))
                    .collect();
                shared.share.set_ordered_ports(
                    wanted
                        .values()
                        .filter(|(_, p)| p.ordered && p.ordered_by.is_none())
                        .count(),
                );
                reconcile(&mut ports, wanted, "send port", |port, stop| {
                    if port.ordered_by.is_some() {
                        tokio::spawn(keyed::keyed_port_loop(shared.clone(), port, stop))
                    } else if port.ordered {
                        tokio::spawn(delivery::ordered_port_loop(shared.clone(), port, stop))
                    } else {
                        tokio::spawn(dispatch::port_worker(
                            shared.clone(),
                            dispatcher.clone(),
                            port,
                            stop,
                        ))
                    }
                });
            }
            Err(e) => warn!(error = %e, "reading send ports failed"),
        }
        match shared.mbx.receive_location_list().await {
            Ok(list) => {
                // a POST to the path of a location of this host that is not mounted now
                // (disabled, or enabled and starting or restarting: set before the loops
                // below stop and start) is told to come back (503), not that nothing is
                // there (404: senders give up on it); an enabled location wins a path
                let mut known: HashMap<_, http_receive::KnownPath> = HashMap::new();
                for l in list.iter().filter(|l| l.host == shared.config.host) {
                    let Some(path) = http_receive::path_of(&l.address) else {
                        continue;
                    };
                    let key = (l.address.starts_with("https:"), path);
                    if !known.get(&key).is_some_and(|k| k.enabled) {
                        known.insert(
                            key,
                            http_receive::KnownPath {
                                location: l.name.clone(),
                                enabled: l.enabled,
                            },
                        );
                    }
                }
                shared.http.set_known(known);
                let wanted = list
                    .into_iter()
                    .filter(|l| l.host == shared.config.host && l.enabled)
                    .map(|l| (l.id, (l.name.clone(), l)))
                    .collect();
                reconcile(&mut locations, wanted, "receive location", |loc, stop| {
                    tokio::spawn(receive::location_loop(shared.clone(), loc, stop))
                });
            }
            Err(e) => warn!(error = %e, "reading receive locations failed"),
        }
        // a port that was started again may have waiting deliveries: let loops look now
        shared.published.notify_waiters();
        // the next look: on a configuration notification, or after the poll interval
        let mut stopping = shared.stopping.clone();
        if *stopping.borrow() {
            break;
        }
        tokio::select! {
            _ = shared.config_changed.notified() => {}
            _ = tokio::time::sleep(shared.config.poll_interval) => {}
            _ = stopping.changed() => break,
        }
    }
    // stopping: receive first, then let delivery loops finish their batch
    for (_, (_, handle, stop)) in locations.drain() {
        let _ = stop.send(true);
        let _ = handle.await;
    }
    for (_, (_, _, stop)) in ports.iter() {
        let _ = stop.send(true);
    }
    for (_, (_, handle, _)) in ports.drain() {
        let _ = handle.await;
    }
    let _ = dispatching.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_are_judged_only_after_the_dead_timeout_of_on_time_heartbeats() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut h = Heartbeats::default();
        assert!(!h.settled(t0), "never heartbeated");
        for at in (0..=10).step_by(2) {
            h.ok(s(at));
        }
        assert!(h.settled(s(10)), "on time for the dead timeout");
        assert!(
            !h.settled(s(16)),
            "a heartbeat held up for 6 s closes the gate"
        );
        // it came through late: the wait starts again
        h.ok(s(16));
        assert!(!h.settled(s(16)));
        for at in (18..=26).step_by(2) {
            h.ok(s(at));
        }
        assert!(h.settled(s(26)));
        h.failed();
        h.ok(s(28));
        assert!(
            !h.settled(s(28)),
            "a failed heartbeat starts the wait again"
        );
    }
}
