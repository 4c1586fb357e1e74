//! The DBOS peer of the orchestration workload: a Python app on DBOS Transact
//! (`crates/bench/peers/dbos/bench_app.py`, embedded here) on its own scratch database on
//! the same PostgreSQL. The virtualenv is made by the bench on first use
//! (`python3 -m venv` next to the `mbx-bench` binary, `pip install dbos`) and reused.
//!
//! One workflow per order, started with the order id as its workflow id; a step calls the
//! same quote service on loopback as the mbx orchestration; `DBOS.recv()` waits for the
//! order's follow-up, sent (`DBOS.send_bulk`, all the ones ready in one transaction) once
//! the workflow is past its step; a datasource transaction writes the result. One Python
//! process per core (one process is bound by its GIL), each with its own executor id;
//! each counts the workflows completed in the measured interval and the latency from its
//! send to the result's commit, and prints one JSON line. Rows and WAL per instance are
//! read around the interval as for mbx.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::database::{redact, Probe};
use crate::measure::{Latencies, Progress, Throughput};
use crate::{BenchError, Measured, RunSpec};

const PEER: &str = "dbos";
const APP: &str = include_str!("../../peers/dbos/bench_app.py");

/// What one process printed.
#[derive(Debug, Deserialize)]
struct Report {
    completed: u64,
    failed: u64,
    latencies_ms: Vec<f64>,
}

pub async fn run(spec: &RunSpec, progress: &Progress) -> Result<Measured, BenchError> {
    let python = venv(progress).await?;
    let dir = tempfile::tempdir().map_err(|e| BenchError::peer(PEER, e))?;
    let app = dir.path().join("bench_app.py");
    std::fs::write(&app, APP).map_err(|e| BenchError::peer(PEER, e))?;
    let url = sqlalchemy_url(&spec.database_url);
    let quote = crate::orchestration::quote_service().await?;
    let migrate = Command::new(&python)
        .arg(&app)
        .args(["--url", &url, "--migrate"])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| BenchError::peer(PEER, format!("running {}: {e}", python.display())))?;
    if !migrate.status.success() {
        return Err(BenchError::peer(
            PEER,
            format!(
                "creating its tables in {}: {}",
                redact(&spec.database_url),
                tail(&migrate.stderr)
            ),
        ));
    }
    let processes = std::thread::available_parallelism().map_or(2, |n| n.get());
    let probe = Probe::connect(&spec.database_url).await?;
    let result = measure(
        spec, progress, &python, &app, &url, quote, processes, &probe,
    )
    .await;
    probe.close().await;
    result
}

/// The last lines of a process's stderr.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// `postgres://` → `postgresql://` (SQLAlchemy's scheme; DBOS picks its driver).
fn sqlalchemy_url(url: &str) -> String {
    match url.strip_prefix("postgres://") {
        Some(rest) => format!("postgresql://{rest}"),
        None => url.to_owned(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    spec: &RunSpec,
    progress: &Progress,
    python: &Path,
    app: &Path,
    url: &str,
    quote: u16,
    processes: usize,
    probe: &Probe,
) -> Result<Measured, BenchError> {
    let window = (crate::orchestration::in_flight(spec) / processes as u64).max(1);
    let mut children = Vec::new();
    for i in 0..processes {
        children.push(start(
            spec,
            python,
            app,
            url,
            quote,
            (i, processes),
            window,
        )?);
    }
    let started = Instant::now();
    let total = spec.warmup + spec.duration;
    while started.elapsed() < spec.warmup {
        tick(progress, started, total).await;
    }
    let first = probe.activity().await?;
    while started.elapsed() < total {
        tick(progress, started, total).await;
    }
    let last = probe.activity().await?;
    let reports = collect(children).await?;
    let completed: u64 = reports.iter().map(|r| r.completed).sum();
    let failed: u64 = reports.iter().map(|r| r.failed).sum();
    let mut latencies = Latencies::new();
    for r in &reports {
        for &ms in &r.latencies_ms {
            latencies.record_ms(ms);
        }
    }
    let per = last.per(&first, completed);
    let mut notes = vec![format!(
        "DBOS Transact (Python) in {processes} processes, at most {window} workflows in flight each; \
         workflow id = order id, a step calling the quote service, DBOS.recv, a datasource \
         transaction writing the result; follow-ups by DBOS.send_bulk once past the step; \
         latency from the send to the result's commit (the process's clock)"
    )];
    if failed > 0 {
        notes.push(format!("{failed} workflow start(s) failed"));
    }
    Ok(Measured {
        throughput: Some(Throughput {
            count: completed,
            seconds: spec.duration.as_secs_f64(),
        }),
        latency: latencies.summary(),
        peak_rss_mb: None,
        notes,
        details: Some(serde_json::json!({
            "rows_per_instance": per.map(|p| p.0),
            "wal_bytes_per_instance": per.map(|p| p.1),
            "processes": processes,
        })),
    })
}

/// Starts process `i` of `n`.
fn start(
    spec: &RunSpec,
    python: &Path,
    app: &Path,
    url: &str,
    quote: u16,
    (i, n): (usize, usize),
    window: u64,
) -> Result<Child, BenchError> {
    let mut cmd = Command::new(python);
    cmd.arg(app)
        .args(["--url", url])
        .args(["--quote-port", &quote.to_string()])
        .args(["--process", &i.to_string()])
        .args(["--warmup", &spec.warmup.as_secs_f64().to_string()])
        .args(["--duration", &spec.duration.as_secs_f64().to_string()])
        .args(["--window", &window.to_string()]);
    if let Some(rate) = spec.rate {
        cmd.args(["--rate", &(rate / n as f64).to_string()]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::peer(PEER, format!("starting {}: {e}", python.display())))
}

async fn tick(progress: &Progress, started: Instant, total: Duration) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    progress.update(&format!(
        "orchestration/dbos {:.0}s/{:.0}s",
        started.elapsed().as_secs_f64(),
        total.as_secs_f64()
    ));
}

/// Each process's report (its last stdout line), once it exits.
async fn collect(children: Vec<Child>) -> Result<Vec<Report>, BenchError> {
    let mut reports = Vec::new();
    for mut child in children {
        let (mut out, mut err) = (String::new(), Vec::new());
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        // both at once: a process blocked on a full stderr pipe would never end its stdout
        tokio::join!(
            async {
                if let Some(mut s) = stdout {
                    let _ = s.read_to_string(&mut out).await;
                }
            },
            async {
                if let Some(mut s) = stderr {
                    let _ = s.read_to_end(&mut err).await;
                }
            }
        );
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .map_err(|_| BenchError::peer(PEER, "a process did not exit within 60 s"))?
            .map_err(|e| BenchError::peer(PEER, e))?;
        let report = out
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<Report>(l).ok())
            .ok_or_else(|| {
                BenchError::peer(
                    PEER,
                    format!("a process ({status}) reported nothing: {}", tail(&err)),
                )
            })?;
        reports.push(report);
    }
    Ok(reports)
}

/// The virtualenv's python with `dbos` installed: made next to `mbx-bench` (or in the
/// temporary directory) on first use, reused after.
async fn venv(progress: &Progress) -> Result<PathBuf, BenchError> {
    let base = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join("mbx-bench-dbos-venv");
    let python = dir.join("bin").join("python");
    if python.is_file() && ok(&python, &["-c", "import dbos"]).await {
        return Ok(python);
    }
    progress.update(&format!(
        "dbos: creating {} (pip install dbos)",
        dir.display()
    ));
    let dir_arg = dir.display().to_string();
    if !ok(Path::new("python3"), &["-m", "venv", &dir_arg]).await {
        return Err(BenchError::peer(
            PEER,
            format!("`python3 -m venv {dir_arg}` failed; install python3 and python3-venv"),
        ));
    }
    let pip = dir.join("bin").join("pip");
    if !ok(&pip, &["install", "--quiet", "dbos"]).await {
        return Err(BenchError::peer(
            PEER,
            format!(
                "`{} install dbos` failed (is PyPI reachable?)",
                pip.display()
            ),
        ));
    }
    Ok(python)
}

/// Whether `program ARGS` ran and succeeded (its output discarded).
async fn ok(program: &Path, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_take_sqlalchemy_s_scheme() {
        assert_eq!(
            sqlalchemy_url("postgres://u@h:5432/d"),
            "postgresql://u@h:5432/d"
        );
        assert_eq!(sqlalchemy_url("postgresql://h/d"), "postgresql://h/d");
    }
}
