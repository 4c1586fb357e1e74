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
mod heartbeat;
mod http_receive;
mod http_server;
mod instance;
mod keyed;
mod lease;
mod listen;
mod maintenance;
mod metrics_catalog;
mod process;
mod receive;
mod replies;
mod solicit;
mod supervisor;
mod throttle;
mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use instance::Instance;
use mbx_adapters::Registry;
use mbx_messagebox::instances::MAX_DELIVERIES_DEFAULT;
use mbx_messagebox::{MessageBox, SchemaState};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};
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

/// The handles of one instance, each made once ([`handles`]) and handed to the loops that
/// use it, never as a bundle: the delivery loops get `delivering`, the receive locations
/// `receiving`, the supervisor those two to hand out, the admin listener the MessageBox
/// and `problems`, the instance's own loops the few handles each uses (`spawn_loops`).
struct Handles {
    /// The MessageBox, the configuration, this instance's id, stopping.
    instance: Instance,
    /// Publish, configuration, forwarded-in and reply wake-ups (the listener's).
    wake: listen::Wakeups,
    /// The watchdog's progress, the delivered counts, this instance's heartbeats.
    liveness: heartbeat::Liveness,
    /// Spreading ordered ports over the host's instances (see `lease::Share`).
    share: Arc<lease::Share>,
    /// The publish and delivery throttles.
    throttle: Arc<throttle::Throttle>,
    /// Two-way receive's clients waiting for their replies.
    waiting: Arc<replies::Waiting>,
    /// The shared listeners of the HTTP receive locations this instance serves.
    http: Arc<http_receive::HttpReceive>,
    /// Enabled locations that cannot run here (`/readyz`).
    problems: receive::LocationProblems,
    /// Connections to the groups this instance forwards to.
    forwarder: forward::Forwarder,
    /// What the delivery loops hold.
    delivering: delivery::Delivering,
    /// What the receive locations hold.
    receiving: receive::Receiving,
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
    let (stop_tx, stop_rx) = watch::channel(false);
    let handles = handles(&config, registry, tls, mbx.clone(), &limits, id, stop_rx);
    let tasks = spawn_loops(&handles, &config, metrics, machine).await?;
    let supervisor = tokio::spawn(supervisor::supervisor_loop(
        handles.instance.clone(),
        handles.wake.clone(),
        handles.http.clone(),
        handles.delivering.clone(),
        handles.receiving.clone(),
    ));
    shutdown.await;
    stop_gracefully(&handles, &mbx, &stop_tx, supervisor, tasks).await
}

/// The handles of the instance `id`; it stops once `stop_rx` says so.
fn handles(
    config: &HostConfig,
    registry: Registry,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mbx: MessageBox,
    limits: &mbx_messagebox::throttle::HostLimits,
    id: Uuid,
    stop_rx: watch::Receiver<bool>,
) -> Handles {
    // HTTP receive locations mount their paths on this instance's shared listeners
    let http = Arc::new(http_receive::HttpReceive::new(
        config.http_listen,
        config.https_listen,
        tls,
    ));
    let registry = registry.with_http_listener(Arc::new(http_receive::Listener(http.clone())));
    let instance = Instance::new(mbx, config.clone(), id, limits.host_id, stop_rx);
    let wake = listen::Wakeups::default();
    let liveness = heartbeat::Liveness::new(config.watchdog_stall);
    let share = Arc::new(lease::Share::default());
    let throttle = Arc::new(throttle::Throttle::new(
        limits.throttle_publish,
        limits.throttle_inflight,
    ));
    let waiting = Arc::new(replies::Waiting::default());
    let problems = receive::LocationProblems::default();
    let forwarder = forward::Forwarder::new(instance.clone());
    let delivering = delivery::Delivering::new(
        instance.clone(),
        registry.clone(),
        wake.clone(),
        liveness.clone(),
        throttle.clone(),
        forwarder.clone(),
        share.clone(),
    );
    let receiving = receive::Receiving::new(
        instance.clone(),
        registry,
        problems.clone(),
        liveness.clone(),
        throttle.clone(),
        waiting.clone(),
        wake.clone(),
    );
    Handles {
        instance,
        wake,
        liveness,
        share,
        throttle,
        waiting,
        http,
        problems,
        forwarder,
        delivering,
        receiving,
    }
}

/// Starts the admin listener (if asked for) and the instance's own loops: heartbeat,
/// listen, replies, maintenance, metrics, throttle monitor, forwarding inbox and sweep.
async fn spawn_loops(
    handles: &Handles,
    config: &HostConfig,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    machine: String,
) -> Result<Vec<JoinHandle<()>>> {
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    if let Some(addr) = config.admin_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --admin-listen {addr}"))?;
        info!(address = %listener.local_addr()?, "admin listener ready");
        tasks.push(tokio::spawn(admin::serve(
            listener,
            handles.instance.mbx().clone(),
            handles.problems.clone(),
            metrics,
        )));
    }
    tasks.push(tokio::spawn(heartbeat::heartbeat_loop(
        handles.instance.clone(),
        handles.liveness.clone(),
        handles.share.clone(),
        machine,
    )));
    tasks.push(tokio::spawn(heartbeat::reclaim_loop(
        handles.instance.clone(),
        handles.liveness.clone(),
        handles.wake.clone(),
    )));
    tasks.push(tokio::spawn(listen::listen_loop(
        handles.instance.clone(),
        handles.wake.clone(),
    )));
    tasks.push(tokio::spawn(replies::reply_loop(
        handles.instance.clone(),
        handles.waiting.clone(),
        handles.wake.clone(),
    )));
    tasks.push(tokio::spawn(maintenance::maintenance_loop(
        handles.instance.clone(),
    )));
    tasks.push(tokio::spawn(maintenance::metrics_loop(
        handles.instance.clone(),
    )));
    tasks.push(tokio::spawn(throttle::monitor_loop(
        handles.instance.clone(),
        handles.throttle.clone(),
    )));
    tasks.push(tokio::spawn(forward::inbox_loop(
        handles.instance.clone(),
        handles.wake.clone(),
        handles.throttle.clone(),
    )));
    tasks.push(tokio::spawn(forward::forget_loop(
        handles.forwarder.clone(),
    )));
    tasks.push(tokio::spawn(process::process_loop(
        handles.instance.clone(),
        handles.wake.clone(),
    )));
    Ok(tasks)
}

/// Stops receiving, lets the supervised loops finish their batch within the grace
/// period, ends the other tasks and deregisters (releasing what is left).
async fn stop_gracefully(
    handles: &Handles,
    mbx: &MessageBox,
    stop_tx: &watch::Sender<bool>,
    supervisor: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
) -> Result<()> {
    info!("stopping: no more receiving; finishing in-flight batches");
    let _ = stop_tx.send(true);
    handles.wake.notify_published();
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
        .instance_deregister(handles.instance.id())
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
    let mut backoff = mbx_vocabulary::retry::Backoff::doubling(
        Duration::from_millis(STARTUP_BACKOFF_MIN_MS),
        Duration::from_millis(STARTUP_BACKOFF_MAX_MS),
    );
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                // the last attempt falls on the deadline
                let pause = backoff
                    .next_wait()
                    .min(deadline.saturating_duration_since(Instant::now()));
                warn!(error = %mbx_messagebox::one_line(&e), retry_in_ms = pause.as_millis() as u64, "{what} failed; retrying");
                tokio::time::sleep(pause).await;
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

pub(crate) async fn register(mbx: &MessageBox, config: &HostConfig, machine: &str) -> Result<Uuid> {
    register_once(mbx, config, machine)
        .await
        .with_context(|| format!("registering an instance of host '{}'", config.host))
}
