//! The whole benchmark: which runs, in which order, and the report (a table for people,
//! one JSON object for machines).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use mbx_messagebox::TrackingLevel;
use serde::Serialize;
use sqlx::Connection;

use crate::database::{redact, Scratch};
use crate::mbx::{self, Drain, MbxRun, Workload};
use crate::measure::{thousands, LatencySummary, Progress};
use crate::{peers, BenchError, Measured, RunSpec};

/// A peer measured beside mbx: pgmq, RabbitMQ and the ceiling on workload (a); DBOS and
/// the ceiling (its own script) on the orchestration workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    Pgmq,
    Rabbitmq,
    Ceiling,
    Dbos,
}

impl Peer {
    pub const ALL: [Peer; 4] = [Peer::Pgmq, Peer::Rabbitmq, Peer::Ceiling, Peer::Dbos];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Pgmq => "pgmq",
            Peer::Rabbitmq => "rabbitmq",
            Peer::Ceiling => "ceiling",
            Peer::Dbos => "dbos",
        }
    }

    /// Whether this peer is measured beside mbx on `workload`.
    pub fn measures(self, workload: Workload) -> bool {
        match workload {
            Workload::Unordered => self != Peer::Dbos,
            Workload::Orchestration => matches!(self, Peer::Dbos | Peer::Ceiling),
            _ => false,
        }
    }

    pub fn parse(s: &str) -> Option<Peer> {
        Peer::ALL.into_iter().find(|p| p.name() == s)
    }

    async fn run(
        self,
        workload: Workload,
        spec: &RunSpec,
        progress: &Progress,
    ) -> Result<Measured, BenchError> {
        match self {
            Peer::Rabbitmq => peers::rabbitmq::run(spec, progress).await,
            Peer::Pgmq | Peer::Ceiling | Peer::Dbos => {
                let db = Scratch::create(&spec.database_url, self.name()).await?;
                let mut spec = spec.clone();
                spec.database_url = db.url().to_owned();
                let r = match (self, workload) {
                    (Peer::Pgmq, _) => peers::pgmq::run(&spec, progress).await,
                    (Peer::Dbos, _) => peers::dbos::run(&spec, progress).await,
                    (_, Workload::Orchestration) => {
                        peers::ceiling::run_orchestration(&spec, progress).await
                    }
                    _ => peers::ceiling::run(&spec, progress).await,
                };
                db.drop_now().await;
                r
            }
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Any database on the PostgreSQL server to use; every run creates its own.
    pub server_url: String,
    pub amqp_url: String,
    pub workloads: Vec<Workload>,
    pub peers: Vec<Peer>,
    pub duration: Duration,
    pub warmup: Duration,
    /// Host instances of the main runs (workload (a) asks for 2).
    pub instances: usize,
    /// Instance counts of the scaling runs of workload (a); empty: none.
    pub scaling: Vec<usize>,
    /// Messages of the drain run; 0: none.
    pub backlog: u64,
    pub batch: usize,
    pub body_size: usize,
    pub producers: usize,
    pub window: u64,
    /// The NULL send ports' latency (`--endpoint-latency`).
    pub endpoint_latency: Option<Duration>,
    /// `--ports` and `--subscribers` (the cost curves).
    pub ports: Option<usize>,
    pub subscribers: Option<usize>,
    /// Runs of each measurement; figures are their medians.
    pub runs: usize,
    pub host_bin: PathBuf,
    /// Also measure latency at 50% of each system's maximum rate.
    pub half_load: bool,
    /// Also run workload (a) at tracking level `all`.
    pub tracking_all: bool,
    /// Orchestration instances left waiting for the waiting-instances run (0: none).
    pub waiting: u64,
}

/// One row: one workload on one system.
#[derive(Debug, Clone, Serialize)]
pub struct ResultRow {
    pub workload: String,
    pub system: String,
    /// Messages published and delivered per second (fan-out: published messages).
    pub msgs_per_s: f64,
    /// Deliveries completed per second (fan-out: 10 per message).
    pub deliveries_per_s: f64,
    /// Latency at 50% of this system's maximum rate (None where not measured).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Latency at the maximum rate.
    pub at_max_rate: Option<LatencySummary>,
    pub peak_rss_mb: Option<f64>,
    pub runs: usize,
    pub notes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub workload: String,
    pub peer: String,
    /// mbx msgs/s ÷ peer msgs/s.
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Scaling {
    pub instances: usize,
    pub msgs_per_s: f64,
    pub peak_rss_mb: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: serde_json::Value,
    pub postgres: serde_json::Value,
    pub method: serde_json::Value,
    pub results: Vec<ResultRow>,
    pub ratios: Vec<Ratio>,
    pub scaling: Vec<Scaling>,
    pub drain: Option<Drain>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

/// The medians of several runs of one measurement (notes and details: the first run's).
type Combined = (
    f64,
    Option<LatencySummary>,
    Option<f64>,
    Vec<String>,
    Option<serde_json::Value>,
);

/// The medians of several runs of one measurement.
fn combine(runs: &[Measured]) -> Combined {
    let rate = median(
        runs.iter()
            .filter_map(|m| m.throughput.map(|t| t.per_second()))
            .collect(),
    )
    .unwrap_or(0.0);
    let lats: Vec<LatencySummary> = runs.iter().filter_map(|m| m.latency).collect();
    let latency = if lats.is_empty() {
        None
    } else {
        Some(
            LatencySummary {
                p50_ms: median(lats.iter().map(|l| l.p50_ms).collect()).unwrap_or(0.0),
                p99_ms: median(lats.iter().map(|l| l.p99_ms).collect()).unwrap_or(0.0),
                max_ms: median(lats.iter().map(|l| l.max_ms).collect()).unwrap_or(0.0),
                samples: lats.iter().map(|l| l.samples).sum(),
            }
            .monotone(),
        )
    };
    let rss = median(runs.iter().filter_map(|m| m.peak_rss_mb).collect());
    let notes = runs.first().map(|m| m.notes.clone()).unwrap_or_default();
    let details = runs.first().and_then(|m| m.details.clone());
    (rate, latency, rss, notes, details)
}

impl Options {
    fn spec(&self, consumers: usize, rate: Option<f64>) -> RunSpec {
        RunSpec {
            database_url: self.server_url.clone(),
            amqp_url: self.amqp_url.clone(),
            duration: self.duration,
            warmup: self.warmup,
            batch: self.batch,
            body_size: self.body_size,
            consumers,
            producers: self.producers,
            rate,
            window: self.window,
            endpoint_latency: self.endpoint_latency,
            ports: self.ports,
            subscribers: self.subscribers,
        }
    }

    fn mbx_run(
        &self,
        workload: Workload,
        instances: usize,
        tracking: Option<TrackingLevel>,
    ) -> MbxRun {
        MbxRun {
            workload,
            instances,
            tracking,
            host_bin: self.host_bin.clone(),
            waiting: 0,
            label: format!(
                "{}/mbx{}{}",
                workload.name(),
                if instances == self.instances {
                    String::new()
                } else {
                    format!(" ×{instances}")
                },
                if tracking.is_some() {
                    " tracking=all"
                } else {
                    ""
                }
            ),
        }
    }
}

/// Runs everything `options` asks for.
pub async fn run(options: &Options, progress: &Progress) -> Result<Report, BenchError> {
    let postgres = describe_postgres(&options.server_url).await?;
    let runs = options.runs.max(1);
    let (results, ratios) = measure_workloads(options, progress, runs).await?;
    let scaling = measure_scaling(options, &results, progress, runs).await?;
    let drain = if options.backlog > 0 {
        Some(measure_drain(options, progress).await?)
    } else {
        None
    };

    Ok(Report {
        machine: describe_machine(),
        postgres,
        method: serde_json::json!({
            "duration_s": options.duration.as_secs_f64(),
            "warmup_s": options.warmup.as_secs_f64(),
            "batch": options.batch,
            "body_bytes": options.body_size,
            "producers": options.producers,
            "window": options.window,
            "instances": options.instances,
            "runs": runs,
            "figures": "medians of the runs",
            "latency": "p50/p99/max at 50% of the system's own maximum rate; at_max_rate at its maximum",
        }),
        results,
        ratios,
        scaling,
        drain,
    })
}

/// mbx on each workload, and beside it on the unordered one the peers (with mbx's ratio
/// to each) and mbx with `tracking=all`.
async fn measure_workloads(
    options: &Options,
    progress: &Progress,
    runs: usize,
) -> Result<(Vec<ResultRow>, Vec<Ratio>), BenchError> {
    let mut results = Vec::new();
    let mut ratios = Vec::new();
    for &workload in &options.workloads {
        let r = measure_mbx(options, workload, options.instances, None, progress, runs).await?;
        // mbx's row first, then what is measured beside it on the same workload
        let mut beside = Vec::new();
        for &peer in options.peers.iter().filter(|p| p.measures(workload)) {
            let p = measure_peer(options, workload, peer, progress, runs).await?;
            if p.msgs_per_s > 0.0 {
                ratios.push(Ratio {
                    workload: workload.name().to_owned(),
                    peer: peer.name().to_owned(),
                    ratio: r.msgs_per_s / p.msgs_per_s,
                });
            }
            beside.push(p);
        }
        if workload == Workload::Orchestration && options.waiting > 0 {
            beside.push(measure_waiting(options, &r, progress).await?);
        }
        if workload == Workload::Unordered && options.tracking_all {
            let mut t = measure_mbx(
                options,
                workload,
                options.instances,
                Some(TrackingLevel::All),
                progress,
                runs,
            )
            .await?;
            t.workload = format!("{}-tracking-all", workload.name());
            beside.push(t);
        }
        results.push(r);
        results.extend(beside);
    }
    Ok((results, ratios))
}

/// The unordered workload's rate at each instance count of `options.scaling` (the row
/// already measured is reused).
async fn measure_scaling(
    options: &Options,
    results: &[ResultRow],
    progress: &Progress,
    runs: usize,
) -> Result<Vec<Scaling>, BenchError> {
    let mut scaling = Vec::new();
    for &n in &options.scaling {
        let found = results
            .iter()
            .find(|r| r.workload == "unordered" && r.system == "mbx" && n == options.instances);
        let (rate, rss) = match found {
            Some(r) => (r.msgs_per_s, r.peak_rss_mb),
            None => {
                let spec = options.spec(n, None);
                let mut all = Vec::new();
                for _ in 0..runs {
                    let run = options.mbx_run(Workload::Unordered, n, None);
                    all.push(mbx::run(&spec, &run, progress).await?);
                }
                let (rate, _, rss, _, _) = combine(&all);
                (rate, rss)
            }
        };
        progress.done(&format!(
            "scaling: {n} instance(s): {} msg/s",
            thousands(rate)
        ));
        scaling.push(Scaling {
            instances: n,
            msgs_per_s: rate,
            peak_rss_mb: rss,
        });
    }
    Ok(scaling)
}

/// How fast mbx drains a backlog of `options.backlog` messages.
async fn measure_drain(options: &Options, progress: &Progress) -> Result<Drain, BenchError> {
    let spec = options.spec(options.instances, None);
    let d = mbx::drain(
        &spec,
        options.backlog,
        options.instances,
        &options.host_bin,
        progress,
    )
    .await?;
    progress.done(&format!(
        "drain: {} messages in {:.1} s ({} msg/s)",
        thousands(d.backlog as f64),
        d.drain_s,
        thousands(d.msgs_per_s)
    ));
    Ok(d)
}

async fn measure_mbx(
    options: &Options,
    workload: Workload,
    instances: usize,
    tracking: Option<TrackingLevel>,
    progress: &Progress,
    runs: usize,
) -> Result<ResultRow, BenchError> {
    let run = options.mbx_run(workload, instances, tracking);
    let mut at_max = Vec::new();
    for _ in 0..runs {
        at_max.push(mbx::run(&options.spec(instances, None), &run, progress).await?);
    }
    let (deliveries, lat_max, rss, notes, details) = combine(&at_max);
    let mut half = Vec::new();
    if options.half_load && deliveries > 0.0 {
        let rate = deliveries / workload.fan_out_in(&options.spec(instances, None)) as f64 / 2.0;
        for _ in 0..runs {
            let mut r = run.clone();
            r.label = format!("{} at 50%", run.label);
            half.push(mbx::run(&options.spec(instances, Some(rate)), &r, progress).await?);
        }
    }
    let (_, lat_half, rss_half, _, _) = combine(&half);
    let row = ResultRow {
        workload: workload.name().to_owned(),
        system: "mbx".to_owned(),
        msgs_per_s: deliveries / workload.fan_out_in(&options.spec(instances, None)) as f64,
        deliveries_per_s: deliveries,
        p50_ms: lat_half.map(|l| l.p50_ms),
        p99_ms: lat_half.map(|l| l.p99_ms),
        max_ms: lat_half.map(|l| l.max_ms),
        at_max_rate: lat_max,
        peak_rss_mb: match (rss, rss_half) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        },
        runs,
        notes,
        details,
    };
    progress.done(&format!(
        "{}: {} msg/s{}",
        run.label,
        thousands(row.msgs_per_s),
        row.p50_ms
            .map(|p| format!(", p50 {p:.1} ms at 50%"))
            .unwrap_or_default()
    ));
    Ok(row)
}

/// The waiting-instances run: the orchestration workload at the same paced rate as its
/// 50%-load run, with `options.waiting` instances of another orchestration left waiting.
async fn measure_waiting(
    options: &Options,
    empty: &ResultRow,
    progress: &Progress,
) -> Result<ResultRow, BenchError> {
    let mut run = options.mbx_run(Workload::Orchestration, options.instances, None);
    run.waiting = options.waiting;
    run.label = format!(
        "{} with {} waiting",
        run.label,
        thousands(options.waiting as f64)
    );
    let rate = (empty.msgs_per_s > 0.0).then_some(empty.msgs_per_s / 2.0);
    let m = mbx::run(&options.spec(options.instances, rate), &run, progress).await?;
    let (rate, latency, rss, notes, mut details) = combine(std::slice::from_ref(&m));
    if let Some(serde_json::Value::Object(d)) = details.as_mut() {
        d.insert("p50_ms_empty".into(), empty.p50_ms.into());
        d.insert("p99_ms_empty".into(), empty.p99_ms.into());
        let ratio = latency.zip(empty.p50_ms).map(|(l, e)| l.p50_ms / e);
        d.insert("p50_ratio_to_empty".into(), ratio.into());
    }
    progress.done(&format!(
        "{}: p50 {} ms (empty: {} ms)",
        run.label,
        opt(latency.map(|l| l.p50_ms), 1),
        opt(empty.p50_ms, 1)
    ));
    Ok(ResultRow {
        workload: format!("{}-waiting", Workload::Orchestration.name()),
        system: "mbx".to_owned(),
        msgs_per_s: rate,
        deliveries_per_s: rate,
        p50_ms: latency.map(|l| l.p50_ms),
        p99_ms: latency.map(|l| l.p99_ms),
        max_ms: latency.map(|l| l.max_ms),
        at_max_rate: None,
        peak_rss_mb: rss,
        runs: 1,
        notes,
        details,
    })
}

async fn measure_peer(
    options: &Options,
    workload: Workload,
    peer: Peer,
    progress: &Progress,
    runs: usize,
) -> Result<ResultRow, BenchError> {
    let mut at_max = Vec::new();
    for _ in 0..runs {
        let spec = options.spec(options.instances, None);
        at_max.push(peer.run(workload, &spec, progress).await?);
    }
    let (rate, lat_max, _, notes, details) = combine(&at_max);
    let mut half = Vec::new();
    if options.half_load && rate > 0.0 && peer != Peer::Ceiling {
        for _ in 0..runs {
            let spec = options.spec(options.instances, Some(rate / 2.0));
            half.push(peer.run(workload, &spec, progress).await?);
        }
    }
    let (_, lat_half, _, _, _) = combine(&half);
    progress.done(&format!(
        "{}/{}: {} msg/s",
        workload.name(),
        peer.name(),
        thousands(rate)
    ));
    Ok(ResultRow {
        workload: workload.name().to_owned(),
        system: peer.name().to_owned(),
        msgs_per_s: rate,
        deliveries_per_s: rate,
        p50_ms: lat_half.map(|l| l.p50_ms),
        p99_ms: lat_half.map(|l| l.p99_ms),
        max_ms: lat_half.map(|l| l.max_ms),
        at_max_rate: lat_max,
        peak_rss_mb: None,
        runs,
        notes,
        details,
    })
}

fn describe_machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
    });
    let mem_gib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0)
    });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_owned());
    serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "cpu": cpu,
        "memory_gib": mem_gib,
        "kernel": kernel,
    })
}

async fn describe_postgres(url: &str) -> Result<serde_json::Value, BenchError> {
    let mut conn = sqlx::PgConnection::connect(url).await.map_err(|e| {
        BenchError::Setup(format!(
            "cannot connect to PostgreSQL at {}: {e}; start it or pass --database-url",
            redact(url)
        ))
    })?;
    let mut out = serde_json::Map::new();
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&mut conn)
        .await?;
    out.insert("version".into(), version.into());
    for setting in [
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "wal_level",
        "shared_buffers",
        "max_wal_size",
        "checkpoint_timeout",
    ] {
        let v: String = sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(&mut conn)
            .await?;
        out.insert(setting.into(), v.into());
    }
    let durable = out.get("fsync").and_then(|v| v.as_str()) == Some("on")
        && out.get("synchronous_commit").and_then(|v| v.as_str()) != Some("off");
    out.insert("durable".into(), durable.into());
    let _ = conn.close().await;
    Ok(serde_json::Value::Object(out))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".to_owned())
}

/// The results' table: a header, then a row per measured system and workload.
fn write_results(out: &mut String, results: &[ResultRow]) {
    let _ = writeln!(
        out,
        "{:<24} {:<9} {:>10} {:>13} {:>8} {:>8} {:>8} {:>11} {:>8}",
        "WORKLOAD",
        "SYSTEM",
        "MSG/S",
        "DELIVERIES/S",
        "P50 MS",
        "P99 MS",
        "MAX MS",
        "P99@MAX MS",
        "RSS MB"
    );
    for row in results {
        let _ = writeln!(
            out,
            "{:<24} {:<9} {:>10} {:>13} {:>8} {:>8} {:>8} {:>11} {:>8}",
            row.workload,
            row.system,
            thousands(row.msgs_per_s),
            thousands(row.deliveries_per_s),
            opt(row.p50_ms, 1),
            opt(row.p99_ms, 1),
            opt(row.max_ms, 1),
            opt(row.at_max_rate.map(|l| l.p99_ms), 1),
            opt(row.peak_rss_mb, 0),
        );
    }
}

/// The report as a table for people.
pub fn render_table(r: &Report) -> String {
    let mut out = String::new();
    write_results(&mut out, &r.results);
    for row in &r.results {
        if let Some(d) = &row.details {
            let _ = writeln!(out, "{} / {}: {d}", row.workload, row.system);
        }
    }
    if !r.ratios.is_empty() {
        let _ = writeln!(out);
        for ratio in &r.ratios {
            let _ = writeln!(
                out,
                "mbx / {:<9} on {}: {:.2}×",
                ratio.peer, ratio.workload, ratio.ratio
            );
        }
    }
    if !r.scaling.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "scaling (unordered): {}",
            r.scaling
                .iter()
                .map(|s| format!("{}×: {} msg/s", s.instances, thousands(s.msgs_per_s)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(d) = &r.drain {
        let _ = writeln!(out);
        let peak = d.spool.iter().map(|s| s.spool_mb).fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "drain: {} messages published in {:.1} s, drained by {} instance(s) in {:.1} s ({} msg/s); spool peak {:.0} MB",
            thousands(d.backlog as f64),
            d.publish_s,
            d.instances,
            d.drain_s,
            thousands(d.msgs_per_s),
            peak
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "machine: {}; PostgreSQL: {} (fsync {}, synchronous_commit {})",
        r.machine,
        r.postgres
            .get("version")
            .and_then(|v| v.as_str())
            .unwrap_or("?"),
        r.postgres
            .get("fsync")
            .and_then(|v| v.as_str())
            .unwrap_or("?"),
        r.postgres
            .get("synchronous_commit")
            .and_then(|v| v.as_str())
            .unwrap_or("?"),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_runs() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(4.0));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn every_peer_parses_back() {
        for p in Peer::ALL {
            assert_eq!(Peer::parse(p.name()), Some(p));
        }
    }
}
