//! The mbx side of the benchmark: a fresh MessageBox per run, real `mbx-host` processes
//! delivering to `null:` send ports (the engine, not an endpoint, is measured), and
//! in-process publishers standing in for receive locations (batches of `spec.batch`, one
//! transaction each, exactly what a receive location's batch does).
//!
//! Throughput is read from the hosts' own `mbx_messages_delivered_total`; latency from
//! their `mbx_delivery_latency_seconds` summary (publish transaction start → the NULL
//! adapter's confirmation, database clock against the host's: an upper bound of the
//! publish-commit → hand-off latency); peak RSS from `/proc/<pid>/status` (VmHWM).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mbx_messagebox::config::{HostSpec, InitialState, SendPortSpec};
use mbx_messagebox::publish::{NewMessage, Publisher};
use mbx_messagebox::{Context, MessageBox, TrackingLevel, Value};
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::measure::{thousands, Interval, Pacer, Progress, Throughput, Window};
use crate::{database, BenchError, Measured, RunSpec};

/// The benchmark's workloads: (a) unordered, (b) one ordered port, (c) fan-out, (d) many
/// ordered ports, and forwarding between two groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// (a) one unordered port.
    Unordered,
    /// (b) one ordered port.
    Ordered,
    /// (c) every message to 10 ports.
    Fanout,
    /// (d) 100 ordered ports at once, messages spread over them.
    ManyOrdered,
    /// Group A → group B on the same server: one port `mbx://far/in` in A, a NULL port in
    /// B; counted where B delivers.
    Forward,
    /// One port ordered by a property (`--ordered-by Bench.Key`, 64 buckets), the messages
    /// spread over 1,000 keys.
    OrderedBy,
    /// HTTP clients → a two-way receive → a solicit-response port → an echo service on
    /// loopback → the answer back to the client; round trips counted at the clients.
    RequestResponse,
    /// A RabbitMQ queue → an AMQP receive location → an AMQP send port → another queue,
    /// counted by the same consumers as the rabbitmq peer.
    Amqp,
    /// Orchestration instances: activated by a message, one HTTP call, one correlated
    /// message awaited, one result emitted; counted as instances completed. Not in `all`.
    Orchestration,
}

impl Workload {
    pub const ALL: [Workload; 9] = [
        Workload::Unordered,
        Workload::Ordered,
        Workload::Fanout,
        Workload::ManyOrdered,
        Workload::OrderedBy,
        Workload::Forward,
        Workload::RequestResponse,
        Workload::Amqp,
        Workload::Orchestration,
    ];

    /// What `--workload all` runs: every workload but the orchestration one (its peer
    /// needs Python and PyPI; ask for it by name).
    pub fn in_all(self) -> bool {
        self != Workload::Orchestration
    }

    pub fn name(self) -> &'static str {
        match self {
            Workload::Unordered => "unordered",
            Workload::Ordered => "ordered",
            Workload::Fanout => "fanout",
            Workload::ManyOrdered => "many-ordered",
            Workload::OrderedBy => "ordered-by",
            Workload::Forward => "forward",
            Workload::RequestResponse => "request-response",
            Workload::Amqp => "amqp",
            Workload::Orchestration => "orchestration",
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == s)
    }

    fn ports(self) -> usize {
        match self {
            Workload::Unordered
            | Workload::Ordered
            | Workload::OrderedBy
            | Workload::Forward
            | Workload::RequestResponse
            | Workload::Amqp
            | Workload::Orchestration => 1,
            Workload::Fanout => 10,
            Workload::ManyOrdered => 100,
        }
    }

    fn ordered(self) -> bool {
        matches!(
            self,
            Workload::Ordered | Workload::ManyOrdered | Workload::OrderedBy
        )
    }

    /// The send ports of this workload in `spec` (`--ports`, `--subscribers`).
    fn ports_in(self, spec: &RunSpec) -> usize {
        match (self, spec.ports, spec.subscribers) {
            (Workload::Unordered | Workload::ManyOrdered, Some(n), _) => n,
            (Workload::Fanout, _, Some(n)) => n,
            _ => self.ports(),
        }
    }

    /// Whether each message goes to one of the ports (round-robin by `Bench.Port`).
    fn spread(self, spec: &RunSpec) -> bool {
        self == Workload::ManyOrdered || (self == Workload::Unordered && self.ports_in(spec) > 1)
    }

    /// Deliveries per published message in `spec`.
    pub fn fan_out_in(self, spec: &RunSpec) -> u64 {
        match self {
            Workload::Fanout => self.ports_in(spec) as u64,
            _ => 1,
        }
    }

    /// Leases of the workload's ordered ports (a port ordered by a property has one per
    /// bucket).
    fn leases(self, spec: &RunSpec) -> usize {
        match self {
            Workload::OrderedBy => ORDERED_BY_BUCKETS as usize,
            _ => self.ports_in(spec),
        }
    }
}

/// One mbx run: a workload, the number of host instances and the tracking level.
#[derive(Debug, Clone)]
pub struct MbxRun {
    pub workload: Workload,
    pub instances: usize,
    /// `None`: the default level.
    pub tracking: Option<TrackingLevel>,
    pub host_bin: PathBuf,
    /// Shown in the progress line.
    pub label: String,
    /// Orchestration instances left waiting before the orchestration workload is measured.
    pub waiting: u64,
}

/// Keys of the ordered-by workload.
const ORDERED_BY_KEYS: u64 = 1_000;
/// Buckets of the ordered-by workload's port (the default).
const ORDERED_BY_BUCKETS: i32 = 64;

/// The host the benchmark's ports are bound to.
pub(crate) const BENCH_HOST: &str = "bench";

/// Runs one workload against a fresh MessageBox in `spec.database_url`'s server.
pub async fn run(
    spec: &RunSpec,
    run: &MbxRun,
    progress: &Progress,
) -> Result<Measured, BenchError> {
    if run.workload == Workload::RequestResponse {
        return crate::request_response::run(spec, run, progress).await;
    }
    if run.workload == Workload::Amqp {
        return crate::amqp_relay::run(spec, run, progress).await;
    }
    if run.workload == Workload::Orchestration {
        return crate::orchestration::run(spec, run, progress).await;
    }
    let db = database::Scratch::create(&spec.database_url, "mbx").await?;
    let far = match run.workload {
        Workload::Forward => Some(database::Scratch::create(&spec.database_url, "far").await?),
        _ => None,
    };
    let result = run_in(spec, run, progress, db.url(), far.as_ref().map(|f| f.url())).await;
    if let Some(far) = far {
        far.drop_now().await;
    }
    db.drop_now().await;
    result
}

/// Group B of the forward workload: receive port `in`, a started NULL port for what
/// arrives there; group A's link `far` to it, through a reference to a file holding its URL
/// (a link never stores a password). Returns that file, removed when dropped.
async fn setup_far(a: &MessageBox, far_url: &str) -> Result<tempfile::NamedTempFile, BenchError> {
    let b = MessageBox::connect(far_url, 2).await?;
    b.init(Some("bench-far")).await?;
    b.host_create(&HostSpec {
        name: BENCH_HOST.to_owned(),
        ..Default::default()
    })
    .await?;
    b.receive_port_create("in", false).await?;
    let mut port = SendPortSpec::new("p0", "null://bench")
        .with_filter("mbx.ReceivePortName == \"in\"")
        .with_state(InitialState::Started);
    port.host = BENCH_HOST.to_owned();
    b.send_port_create(&port).await?;
    b.pool().close().await;
    let file = tempfile::NamedTempFile::new()
        .map_err(|e| BenchError::Setup(format!("a file for group B's URL: {e}")))?;
    std::fs::write(file.path(), far_url)
        .map_err(|e| BenchError::Setup(format!("writing group B's URL: {e}")))?;
    a.init(None).await?;
    a.link_add("far", &format!("file:{}", file.path().display()))
        .await?;
    Ok(file)
}

async fn run_in(
    spec: &RunSpec,
    run: &MbxRun,
    progress: &Progress,
    url: &str,
    far_url: Option<&str>,
) -> Result<Measured, BenchError> {
    let mbx = MessageBox::connect(url, (spec.producers as u32 + 2).max(4)).await?;
    let _far_url_file = match far_url {
        Some(far) => Some(setup_far(&mbx, far).await?),
        None => None,
    };
    setup(&mbx, run.workload, run.tracking, true, spec).await?;
    let (hosts, forwarding) = start_hosts(spec, run, url, far_url).await?;
    if run.workload.ordered() {
        leases_spread(&mbx, run.workload.leases(spec), run.instances, progress).await?;
    }
    let window = Window::new(spec.window);
    let deadline = Instant::now() + spec.warmup + spec.duration;

    let mut producers = Vec::new();
    for p in 0..spec.producers {
        let mbx = mbx.clone();
        let window = window.clone();
        let spec = spec.clone();
        let workload = run.workload;
        producers.push(tokio::spawn(async move {
            publish_until(&mbx, &spec, workload, p, &window, deadline).await
        }));
    }

    let throughput = count_deliveries(spec, run, progress, &hosts, &window, deadline).await;
    for p in producers {
        p.await
            .map_err(|e| BenchError::Setup(format!("publisher task: {e}")))??;
    }
    let latency = hosts.latency().await;
    let peak_rss_mb = hosts.peak_rss_mb();
    hosts.stop().await;
    if let Some(forwarding) = forwarding {
        forwarding.stop().await;
    }
    Ok(Measured {
        throughput: Some(throughput),
        latency,
        peak_rss_mb,
        notes: run_notes(spec, run),
        details: None,
    })
}

/// The hosts whose deliveries are counted and, for the forward workload, group A's
/// forwarding hosts beside them (the counted ones are then group B's).
async fn start_hosts(
    spec: &RunSpec,
    run: &MbxRun,
    url: &str,
    far_url: Option<&str>,
) -> Result<(Hosts, Option<Hosts>), BenchError> {
    let forwarding = Hosts::start(&run.host_bin, url, run.instances, spec.batch).await?;
    Ok(match far_url {
        Some(far) => (
            Hosts::start(&run.host_bin, far, 1, spec.batch).await?,
            Some(forwarding),
        ),
        None => (forwarding, None),
    })
}

/// Follows the hosts' delivered count until `deadline` (showing the rate, and keeping the
/// window's consumed count), and the throughput after the warm-up.
async fn count_deliveries(
    spec: &RunSpec,
    run: &MbxRun,
    progress: &Progress,
    hosts: &Hosts,
    window: &Window,
    deadline: Instant,
) -> Throughput {
    let total = spec.warmup + spec.duration;
    let mut interval = Interval::new();
    let started = Instant::now();
    let mut last = (Instant::now(), 0u64);
    let mut rate = 0.0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let delivered = hosts.delivered().await;
        window.consumed.store(delivered, Ordering::Relaxed);
        if interval_due(&interval, started, spec.warmup) {
            interval.start(delivered);
        }
        let dt = last.0.elapsed().as_secs_f64();
        if dt >= 1.0 {
            rate = delivered.saturating_sub(last.1) as f64 / dt;
            last = (Instant::now(), delivered);
        }
        progress.update(&format!(
            "{} {:.0}s/{:.0}s {} deliveries/s backlog {}",
            run.label,
            started.elapsed().as_secs_f64(),
            total.as_secs_f64(),
            thousands(rate),
            thousands(window.backlog() as f64)
        ));
    }
    let delivered = hosts.delivered().await;
    interval.finish(delivered)
}

/// What a reader of the figures needs to know about how an mbx run was set up.
fn run_notes(spec: &RunSpec, run: &MbxRun) -> Vec<String> {
    let mut notes = vec![format!(
        "{} instance(s), batch {}, NULL send ports, tracking {}",
        run.instances,
        spec.batch,
        run.tracking.map(|t| t.as_str()).unwrap_or("default")
    )];
    if spec.rate.is_some() {
        notes.push("paced".to_owned());
    }
    if let Some(latency) = spec.endpoint_latency {
        notes.push(format!(
            "endpoint latency {} ms",
            latency.as_secs_f64() * 1000.0
        ));
    }
    if spec.ports.is_some() || spec.subscribers.is_some() {
        notes.push(format!(
            "{} send port(s), {} delivery(ies) per message",
            run.workload.ports_in(spec),
            run.workload.fan_out_in(spec)
        ));
    }
    if run.workload == Workload::OrderedBy {
        notes.push(format!(
            "{ORDERED_BY_KEYS} keys, {ORDERED_BY_BUCKETS} buckets"
        ));
    }
    notes
}

fn interval_due(interval: &Interval, started: Instant, warmup: Duration) -> bool {
    !interval.started() && started.elapsed() >= warmup
}

/// Waits for the steady state of ordered ports: every port's lease held, none of the
/// instances above its fair share (a host starting up takes every lease, then hands the
/// others' share over). Measuring before that would measure the start-up.
async fn leases_spread(
    mbx: &MessageBox,
    ports: usize,
    instances: usize,
    progress: &Progress,
) -> Result<(), BenchError> {
    let fair = ports.div_ceil(instances.max(1)) as i64;
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (held, most) = mbx.lease_spread().await?;
        if held == ports as i64 && most <= fair {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(BenchError::Setup(format!(
                "ordered port leases not spread within 60 s: {held} of {ports} held, at most {most} by one instance (fair share {fair})"
            )));
        }
        progress.update(&format!(
            "waiting for the ordered ports' leases: {held}/{ports} held"
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates the host, the ports (started or stopped) and their filters.
async fn setup(
    mbx: &MessageBox,
    workload: Workload,
    tracking: Option<TrackingLevel>,
    started: bool,
    spec: &RunSpec,
) -> Result<(), BenchError> {
    mbx.init(None).await?;
    mbx.host_create(&HostSpec {
        name: BENCH_HOST.to_owned(),
        throttle_publish: None,
        throttle_inflight: None,
        throttle_database_size: None,
        tracking,
    })
    .await?;
    for i in 0..workload.ports_in(spec) {
        let filter = if workload.spread(spec) {
            format!("Bench.Port == \"p{i}\"")
        } else {
            "Bench.Kind == \"bench\"".to_owned()
        };
        let address = match workload {
            Workload::Forward => "mbx://far/in",
            _ => "null://bench",
        };
        let mut port = SendPortSpec::new(&format!("p{i}"), address)
            .with_filter(&filter)
            .with_state(if started {
                InitialState::Started
            } else {
                InitialState::Stopped
            });
        port.host = BENCH_HOST.to_owned();
        port.ordered = workload.ordered();
        if workload == Workload::OrderedBy {
            port.ordered_by = Some("Bench.Key".to_owned());
            port.ordered_buckets = Some(ORDERED_BY_BUCKETS);
        }
        if let (Some(latency), false) = (spec.endpoint_latency, address.starts_with("mbx:")) {
            port.settings
                .insert("delay".to_owned(), format!("{}us", latency.as_micros()));
        }
        mbx.send_port_create(&port).await?;
    }
    Ok(())
}

fn message(
    workload: Workload,
    spec: &RunSpec,
    body: &Bytes,
    n: u64,
) -> Result<NewMessage, BenchError> {
    let mut ctx = Context::new();
    ctx.promote("Bench.Kind", Value::String("bench".to_owned()))?;
    if workload == Workload::OrderedBy {
        ctx.promote(
            "Bench.Key",
            Value::String(format!("k{}", n % ORDERED_BY_KEYS)),
        )?;
    }
    if workload.spread(spec) {
        ctx.promote(
            "Bench.Port",
            Value::String(format!("p{}", n % workload.ports_in(spec) as u64)),
        )?;
    }
    Ok(NewMessage::new(
        body.clone(),
        "application/octet-stream",
        ctx,
    ))
}

/// One publisher: batches of `spec.batch` in one transaction each, paced and windowed.
async fn publish_until(
    mbx: &MessageBox,
    spec: &RunSpec,
    workload: Workload,
    index: usize,
    window: &Window,
    deadline: Instant,
) -> Result<(), BenchError> {
    let body = Bytes::from(vec![b'x'; spec.body_size]);
    let publisher = Publisher::default();
    let rate = spec.rate.map(|r| r / spec.producers.max(1) as f64);
    let mut pacer = Pacer::new(rate);
    let mut n = index as u64 * 1_000_000_000;
    while Instant::now() < deadline {
        window.admit(deadline).await;
        pacer.wait(spec.batch as u64).await;
        if Instant::now() >= deadline {
            break;
        }
        let batch = (0..spec.batch)
            .map(|i| message(workload, spec, &body, n + i as u64))
            .collect::<Result<Vec<_>, _>>()?;
        n += spec.batch as u64;
        mbx.publish(&publisher, batch).await?;
        window.add_produced(spec.batch as u64 * workload.fan_out_in(spec));
    }
    Ok(())
}

/// Drain of a backlog: publishes `backlog` messages to a stopped port, starts it, and
/// samples the spool until it is empty.
#[derive(Debug, Clone, Serialize)]
pub struct Drain {
    pub backlog: u64,
    pub instances: usize,
    pub publish_s: f64,
    pub drain_s: f64,
    pub msgs_per_s: f64,
    /// (seconds since the port started, deliveries left, bytes of the spool tables).
    pub spool: Vec<SpoolSample>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct SpoolSample {
    pub t_s: f64,
    pub deliveries: i64,
    pub spool_mb: f64,
}

pub async fn drain(
    spec: &RunSpec,
    backlog: u64,
    instances: usize,
    host_bin: &Path,
    progress: &Progress,
) -> Result<Drain, BenchError> {
    let db = database::Scratch::create(&spec.database_url, "drain").await?;
    let result = drain_in(spec, backlog, instances, host_bin, progress, db.url()).await;
    db.drop_now().await;
    result
}

async fn drain_in(
    spec: &RunSpec,
    backlog: u64,
    instances: usize,
    host_bin: &Path,
    progress: &Progress,
    url: &str,
) -> Result<Drain, BenchError> {
    let mbx = MessageBox::connect(url, 6).await?;
    // the drain measures one port as the workload (a) does, whatever the shape knobs say
    let plain = RunSpec {
        ports: None,
        subscribers: None,
        endpoint_latency: None,
        ..spec.clone()
    };
    setup(&mbx, Workload::Unordered, None, false, &plain).await?;
    let started = Instant::now();
    publish_backlog(&mbx, &plain, backlog, progress).await?;
    let publish_s = started.elapsed().as_secs_f64();

    let hosts = Hosts::start(host_bin, url, instances, spec.batch).await?;
    let t0 = Instant::now();
    mbx.send_port_start("p0").await?;
    let spool = spool_until_empty(&mbx, t0, progress).await?;
    let drain_s = t0.elapsed().as_secs_f64();
    hosts.stop().await;
    Ok(Drain {
        backlog,
        instances,
        publish_s,
        drain_s,
        msgs_per_s: backlog as f64 / drain_s.max(1e-9),
        spool,
    })
}

/// Publishes `backlog` messages to the stopped port, shared among the producers, showing
/// how far it got.
async fn publish_backlog(
    mbx: &MessageBox,
    plain: &RunSpec,
    backlog: u64,
    progress: &Progress,
) -> Result<(), BenchError> {
    let window = Window::new(u64::MAX);
    let producers = plain.producers.max(1);
    let per = backlog.div_ceil(producers as u64);
    let mut tasks = Vec::new();
    for p in 0..producers {
        let mbx = mbx.clone();
        let window = window.clone();
        let plain = plain.clone();
        tasks.push(tokio::spawn(async move {
            publish_share(&mbx, &plain, p as u64 * per, per, &window).await
        }));
    }
    let ticker = {
        let window = window.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                progress.update(&format!(
                    "drain: publishing the backlog {}/{}",
                    thousands(window.produced.load(Ordering::Relaxed) as f64),
                    thousands(backlog as f64)
                ));
            }
        }
    };
    let publishing = async {
        for t in tasks {
            t.await
                .map_err(|e| BenchError::Setup(format!("publisher task: {e}")))??;
        }
        Ok::<_, BenchError>(())
    };
    tokio::select! {
        r = publishing => r?,
        _ = ticker => {}
    }
    Ok(())
}

/// One producer's share of the backlog: `count` messages numbered from `first`, a batch
/// per publish.
async fn publish_share(
    mbx: &MessageBox,
    plain: &RunSpec,
    first: u64,
    count: u64,
    window: &Window,
) -> Result<(), BenchError> {
    let body = Bytes::from(vec![b'x'; plain.body_size]);
    let batch = plain.batch as u64;
    let mut sent = 0u64;
    let publisher = Publisher::default();
    while sent < count {
        let n = batch.min(count - sent);
        let msgs = (0..n)
            .map(|i| message(Workload::Unordered, plain, &body, first + sent + i))
            .collect::<Result<Vec<_>, _>>()?;
        mbx.publish(&publisher, msgs).await?;
        sent += n;
        window.add_produced(n);
    }
    Ok(())
}

/// The spool's size every second from `t0` until no delivery is left.
async fn spool_until_empty(
    mbx: &MessageBox,
    t0: Instant,
    progress: &Progress,
) -> Result<Vec<SpoolSample>, BenchError> {
    let mut spool = Vec::new();
    loop {
        let (left, bytes) = mbx.spool_size().await?;
        let t_s = t0.elapsed().as_secs_f64();
        spool.push(SpoolSample {
            t_s,
            deliveries: left,
            spool_mb: bytes as f64 / 1e6,
        });
        progress.update(&format!(
            "drain {t_s:.0}s: {} deliveries left",
            thousands(left as f64)
        ));
        if left == 0 {
            return Ok(spool);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The `mbx-host` processes of one run, each with its admin listener.
pub(crate) struct Hosts {
    children: Vec<(Child, u16)>,
    http: reqwest::Client,
}

impl Hosts {
    /// `n` host instances claiming at most `claim_batch` deliveries at a time (`--batch`,
    /// the same batch as every peer's).
    pub(crate) async fn start(
        bin: &Path,
        url: &str,
        n: usize,
        claim_batch: usize,
    ) -> Result<Self, BenchError> {
        Self::start_serving(bin, url, &vec![0; n], claim_batch).await
    }

    /// One host instance per entry of `http_ports`, serving HTTP receive on that loopback port
    /// (0: any).
    pub(crate) async fn start_serving(
        bin: &Path,
        url: &str,
        http_ports: &[u16],
        claim_batch: usize,
    ) -> Result<Self, BenchError> {
        if !bin.is_file() {
            return Err(BenchError::Setup(format!(
                "mbx-host not found at {}: build it (cargo build --release --bins) or pass --host-bin",
                bin.display()
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| BenchError::Setup(format!("HTTP client: {e}")))?;
        let mut children = Vec::new();
        for http_port in http_ports {
            let port = free_port()?;
            let child = Command::new(bin)
                .args(["--host", BENCH_HOST])
                .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
                .args(["--admin-listen", &format!("127.0.0.1:{port}")])
                .args(["--claim-batch", &claim_batch.to_string()])
                .env("MBX_DATABASE_URL", url)
                // the hosts' log level: warnings unless MBX_BENCH_HOST_LOG says otherwise
                .env(
                    "MBX_LOG",
                    std::env::var("MBX_BENCH_HOST_LOG").unwrap_or_else(|_| "warn".to_owned()),
                )
                .stdin(Stdio::null())
                // their logs go to our stderr: stdout is the report's
                .stdout(Stdio::from(std::io::stderr()))
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| BenchError::Setup(format!("starting {}: {e}", bin.display())))?;
            children.push((child, port));
        }
        let hosts = Self { children, http };
        hosts.wait_ready().await?;
        Ok(hosts)
    }

    async fn wait_ready(&self) -> Result<(), BenchError> {
        let until = Instant::now() + Duration::from_secs(30);
        for (_, port) in &self.children {
            loop {
                let ok = self
                    .http
                    .get(format!("http://127.0.0.1:{port}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    break;
                }
                if Instant::now() > until {
                    return Err(BenchError::Setup(format!(
                        "mbx-host on admin port {port} not ready within 30 s"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    async fn metrics(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (_, port) in &self.children {
            if let Ok(r) = self
                .http
                .get(format!("http://127.0.0.1:{port}/metrics"))
                .send()
                .await
            {
                if let Ok(text) = r.text().await {
                    out.push(text);
                }
            }
        }
        out
    }

    /// Deliveries completed by all instances so far.
    async fn delivered(&self) -> u64 {
        self.metrics()
            .await
            .iter()
            .map(|t| sum_metric(t, "mbx_messages_delivered_total"))
            .sum::<f64>() as u64
    }

    /// The worst p50/p99/max over instances and ports.
    async fn latency(&self) -> Option<crate::measure::LatencySummary> {
        let texts = self.metrics().await;
        let q = |quantile: &str| {
            texts
                .iter()
                .flat_map(|t| quantiles(t, "mbx_delivery_latency_seconds", quantile))
                .fold(None::<f64>, |acc, v| Some(acc.map_or(v, |a| a.max(v))))
        };
        let count: f64 = texts
            .iter()
            .map(|t| sum_metric(t, "mbx_delivery_latency_seconds_count"))
            .sum();
        Some(
            crate::measure::LatencySummary {
                p50_ms: q("0.5")? * 1e3,
                p99_ms: q("0.99")? * 1e3,
                max_ms: q("1")? * 1e3,
                samples: count as u64,
            }
            .monotone(),
        )
    }

    pub(crate) fn peak_rss_mb(&self) -> Option<f64> {
        self.children
            .iter()
            .filter_map(|(c, _)| c.id())
            .filter_map(|pid| status_kb(pid, "VmHWM:"))
            .max()
            .map(|kb| kb as f64 / 1024.0)
    }

    /// The current RSS (VmRSS) of the largest instance, in MB.
    pub(crate) fn rss_mb(&self) -> Option<f64> {
        self.children
            .iter()
            .filter_map(|(c, _)| c.id())
            .filter_map(|pid| status_kb(pid, "VmRSS:"))
            .max()
            .map(|kb| kb as f64 / 1024.0)
    }

    /// The worst p50/p99/max over instances of `mbx_orchestration_step_latency_seconds`
    /// with `cause` (activation, resumed).
    pub(crate) async fn step_latency(&self, cause: &str) -> Option<crate::measure::LatencySummary> {
        let texts = self.metrics().await;
        let name = "mbx_orchestration_step_latency_seconds";
        let label = format!("cause=\"{cause}\"");
        let of_cause: Vec<String> = texts
            .iter()
            .map(|t| {
                t.lines()
                    .filter(|l| l.contains(&label))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect();
        let q = |quantile: &str| {
            of_cause
                .iter()
                .flat_map(|t| quantiles(t, name, quantile))
                .fold(None::<f64>, |acc, v| Some(acc.map_or(v, |a| a.max(v))))
        };
        let count: f64 = of_cause
            .iter()
            .map(|t| sum_metric(t, &format!("{name}_count")))
            .sum();
        Some(
            crate::measure::LatencySummary {
                p50_ms: q("0.5")? * 1e3,
                p99_ms: q("0.99")? * 1e3,
                max_ms: q("1")? * 1e3,
                samples: count as u64,
            }
            .monotone(),
        )
    }

    pub(crate) async fn stop(mut self) {
        for (child, _) in &mut self.children {
            let _ = child.start_kill();
        }
        for (child, _) in &mut self.children {
            let _ = child.wait().await;
        }
    }
}

/// A free loopback port for a host's admin listener, picked at random below Linux's
/// ephemeral range (32768–60999): a port `bind(0)` hands out is also what outgoing
/// connections (ours and the publishers' by the hundred) get as their source port, so it
/// could be taken before the host binds it.
pub(crate) fn free_port() -> Result<u16, BenchError> {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..1000 {
        // each RandomState is keyed anew: a fresh pseudo-random number per try
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(BenchError::Setup(
        "no free port between 20000 and 32000 on 127.0.0.1 for a host's admin listener".into(),
    ))
}

/// A field of a process's `/proc/<pid>/status` (VmHWM:, VmRSS:), in KiB.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The sum of every series of `name` (exact name, any labels) in Prometheus text.
fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every series of summary `name` with `quantile="q"`.
fn quantiles(text: &str, name: &str, q: &str) -> Vec<f64> {
    let label = format!("quantile=\"{q}\"");
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE mbx_messages_delivered_total counter
mbx_messages_delivered_total{port=\"p0\"} 120
mbx_messages_delivered_total{port=\"p1\"} 30
mbx_messages_delivered_total_other 5
# TYPE mbx_delivery_latency_seconds summary
mbx_delivery_latency_seconds{port=\"p0\",quantile=\"0.5\"} 0.002
mbx_delivery_latency_seconds{port=\"p0\",quantile=\"0.99\"} 0.02
mbx_delivery_latency_seconds{port=\"p1\",quantile=\"0.5\"} 0.004
mbx_delivery_latency_seconds_count{port=\"p0\"} 120
";

    #[test]
    fn sums_every_series_of_exactly_that_metric() {
        assert_eq!(sum_metric(TEXT, "mbx_messages_delivered_total"), 150.0);
        assert_eq!(
            sum_metric(TEXT, "mbx_delivery_latency_seconds_count"),
            120.0
        );
    }

    #[test]
    fn reads_one_quantile_of_every_series() {
        assert_eq!(
            quantiles(TEXT, "mbx_delivery_latency_seconds", "0.5"),
            vec![0.002, 0.004]
        );
        assert_eq!(
            quantiles(TEXT, "mbx_delivery_latency_seconds", "0.99"),
            vec![0.02]
        );
    }

    #[test]
    fn every_workload_parses_back() {
        for w in Workload::ALL {
            assert_eq!(Workload::parse(w.name()), Some(w));
        }
    }
}
