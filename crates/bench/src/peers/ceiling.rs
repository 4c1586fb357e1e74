//! The raw PostgreSQL ceiling: what the same PostgreSQL does when it only has
//! to insert and delete the messages, with no queue software at all. The real `pgbench`
//! runs a two-statement script against a durable (logged) table in the bench database:
//!
//! ```sql
//! INSERT INTO t (body) SELECT <body_size bytes> FROM generate_series(1, <batch>);
//! DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY id LIMIT <batch> FOR UPDATE SKIP LOCKED);
//! ```
//!
//! Each statement autocommits: one commit per inserted batch (a producer's publish) and
//! one per deleted batch (a consumer's completion), with `producers + consumers` clients
//! (each doing both) on `min(2, clients)` pgbench threads, prepared statements
//! (`-M prepared`, as every client library uses). The table is pre-filled with
//! `max(window, 2 × batch × clients)` rows so a delete always finds a full batch, and the
//! backlog stays at that size (every script inserts and deletes one batch).
//!
//! Timing: `pgbench -T` takes whole seconds and cannot leave a warm-up out of its figure,
//! so the warm-up is a separate pgbench run (`-T ⌈warmup⌉`) before the measured one
//! (`-T round(duration)`, at least 1 s). The measured count is the rows the measured run
//! actually deleted (rows before + rows it inserted − rows after), over its own run time
//! (transactions / tps, excluding connection set-up). There is no hand-off, so no latency.
//! A paced run (`spec.rate`) uses `pgbench --rate` at rate / batch scripts per second.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use crate::database::redact as redact_url;
use crate::measure::{thousands, Progress, Throughput};
use crate::{BenchError, Measured, RunSpec};

const PEER: &str = "ceiling";

pub async fn run(spec: &RunSpec, progress: &Progress) -> Result<Measured, BenchError> {
    run_on_table(
        spec,
        progress,
        &crate::database::unique_name("bench_ceiling"),
    )
    .await
}

/// [`run`] with a given table name (created, then dropped): `table` must be a plain
/// lower-case SQL identifier that does not exist yet.
pub async fn run_on_table(
    spec: &RunSpec,
    progress: &Progress,
    table: &str,
) -> Result<Measured, BenchError> {
    if table.is_empty()
        || !table
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(BenchError::peer(PEER, format!("bad table name {table:?}")));
    }
    let pgbench = find_pgbench()?;
    let options = PgConnectOptions::from_str(&spec.database_url).map_err(|e| {
        BenchError::peer(
            PEER,
            format!("bad database URL {}: {e}", redact_url(&spec.database_url)),
        )
    })?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.clone())
        .await
        .map_err(|e| {
            BenchError::peer(
                PEER,
                format!(
                    "cannot connect to PostgreSQL at {}: {e}",
                    redact_url(&spec.database_url)
                ),
            )
        })?;
    let script = std::env::temp_dir().join(format!("mbx-bench-{table}.sql"));

    let result = measure(spec, progress, &pgbench, &options, &pool, table, &script).await;

    let _ = std::fs::remove_file(&script);
    let dropped = sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
        .execute(&pool)
        .await
        .map_err(|e| BenchError::peer(PEER, format!("dropping table {table}: {e}")));
    pool.close().await;
    let measured = result?;
    dropped?;
    Ok(measured)
}

async fn measure(
    spec: &RunSpec,
    progress: &Progress,
    pgbench: &Path,
    options: &PgConnectOptions,
    pool: &PgPool,
    table: &str,
    script: &Path,
) -> Result<Measured, BenchError> {
    let batch = spec.batch.max(1);
    let clients = (spec.producers + spec.consumers).max(1);
    let threads = clients.min(2);
    let prefill = (spec.window as usize).max(2 * batch * clients);
    let body = body_expr(spec.body_size);
    create_table(pool, table, &body, prefill).await?;
    std::fs::write(script, script_text(table, &body, batch)).map_err(|e| {
        BenchError::peer(
            PEER,
            format!("writing the pgbench script {}: {e}", script.display()),
        )
    })?;

    let rate = spec.rate.filter(|r| *r > 0.0).map(|r| r / batch as f64);
    let total = (spec.warmup + spec.duration).as_secs_f64();
    let run = Pgbench {
        pgbench,
        options,
        password: url_password(&spec.database_url),
        script,
        clients,
        threads,
        rate,
        batch,
        total,
    };
    let warm_secs = spec.warmup.as_secs_f64().ceil() as u64;
    if warm_secs > 0 {
        run.run(warm_secs, 0.0, progress).await?;
    }
    let secs = (spec.duration.as_secs_f64().round() as u64).max(1);
    let before = row_count(pool, table).await?;
    let summary = run.run(secs, spec.warmup.as_secs_f64(), progress).await?;
    let after = row_count(pool, table).await?;
    let inserted = summary.transactions as i64 * batch as i64;
    let deleted = (before + inserted - after).max(0) as u64;
    let seconds = if summary.tps > 0.0 {
        summary.transactions as f64 / summary.tps
    } else {
        secs as f64
    };

    let mut notes = vec![format!(
        "pgbench -M prepared, {clients} clients on {threads} threads, each script = insert \
         {batch} + delete {batch} (one commit each) on a logged table pre-filled with {} rows; \
         warm-up as a separate {warm_secs}s pgbench run, measured run {secs}s; no latency \
         (no hand-off)",
        thousands(prefill as f64)
    )];
    notes.extend(caveats(spec, secs, rate, deleted, inserted as u64));
    Ok(Measured {
        throughput: Some(Throughput {
            count: deleted,
            seconds,
        }),
        latency: None,
        peak_rss_mb: None,
        notes,
        details: None,
    })
}

/// A database error while doing `what`, as the peer's error.
fn db(what: &'static str) -> impl Fn(sqlx::Error) -> BenchError {
    move |e| BenchError::peer(PEER, format!("{what}: {e}"))
}

/// Creates the ceiling table and fills it with `prefill` rows of `body`.
async fn create_table(
    pool: &PgPool,
    table: &str,
    body: &str,
    prefill: usize,
) -> Result<(), BenchError> {
    // A hot queue table: logged (durable), vacuumed eagerly instead of by scale factor.
    sqlx::query(&format!(
        "CREATE TABLE {table} (
             id bigserial PRIMARY KEY,
             body bytea NOT NULL,
             enqueued_at timestamptz NOT NULL DEFAULT now()
         ) WITH (
             autovacuum_vacuum_scale_factor = 0,
             autovacuum_vacuum_threshold = 1000,
             autovacuum_vacuum_insert_scale_factor = 0,
             autovacuum_vacuum_insert_threshold = 1000,
             autovacuum_vacuum_cost_delay = 0
         )"
    ))
    .execute(pool)
    .await
    .map_err(db("creating the ceiling table"))?;
    sqlx::query(&format!(
        "INSERT INTO {table} (body) SELECT {body} FROM generate_series(1, {prefill})"
    ))
    .execute(pool)
    .await
    .map_err(db("pre-filling the ceiling table"))?;
    sqlx::query(&format!("VACUUM ANALYZE {table}"))
        .execute(pool)
        .await
        .map_err(db("vacuuming the ceiling table"))?;
    Ok(())
}

async fn row_count(pool: &PgPool, table: &str) -> Result<i64, BenchError> {
    sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .map_err(db("counting the ceiling table"))
}

/// Notes on where the measured run differs from what was asked: whole seconds, pacing,
/// deletes that found fewer rows than were inserted.
fn caveats(
    spec: &RunSpec,
    secs: u64,
    rate: Option<f64>,
    deleted: u64,
    inserted: u64,
) -> Vec<String> {
    let mut notes = Vec::new();
    if (spec.duration.as_secs_f64() - secs as f64).abs() > 0.01 {
        notes.push(format!(
            "pgbench -T takes whole seconds: measured {secs}s instead of {:.1}s",
            spec.duration.as_secs_f64()
        ));
    }
    if let Some(r) = rate {
        notes.push(format!("paced with pgbench --rate {r:.1} scripts/s"));
    }
    if deleted < inserted {
        notes.push(format!(
            "deletes found fewer rows than were inserted ({} of {})",
            thousands(deleted as f64),
            thousands(inserted as f64)
        ));
    }
    notes
}

/// An SQL expression for a `size`-byte bytea that the planner folds to a constant.
fn body_expr(size: usize) -> String {
    format!("decode(repeat('78', {size}), 'hex')")
}

fn script_text(table: &str, body: &str, batch: usize) -> String {
    format!(
        "INSERT INTO {table} (body) SELECT {body} FROM generate_series(1, {batch});\n\
         DELETE FROM {table} WHERE id IN (SELECT id FROM {table} ORDER BY id LIMIT {batch} FOR UPDATE SKIP LOCKED);\n"
    )
}

/// `pgbench` on PATH (or in the usual Debian place).
fn find_pgbench() -> Result<PathBuf, BenchError> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            let mut v: Vec<PathBuf> = d.flatten().map(|e| e.path().join("bin")).collect();
            v.sort();
            v.reverse();
            v
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(debian)
        .map(|dir| dir.join("pgbench"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            BenchError::peer(
                PEER,
                "pgbench not found on PATH; install it (Debian/Ubuntu: `apt-get install \
                 postgresql-client` or `postgresql-contrib`) or put its directory on PATH",
            )
        })
}

/// The URL's password, percent-decoded (handed to pgbench as PGPASSWORD, never printed).
fn url_password(url: &str) -> Option<String> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    let password = &userinfo[userinfo.find(':')? + 1..];
    Some(percent_decode(password))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What pgbench reported at the end of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Summary {
    transactions: u64,
    tps: f64,
}

/// `number of transactions actually processed: N[/M]` and the `tps = X` line excluding
/// connection set-up (`without initial connection time` from PostgreSQL 14,
/// `excluding connections establishing` before).
fn parse_summary(stdout: &str) -> Option<Summary> {
    let mut transactions = None;
    let mut tps = None;
    let mut tps_any = None;
    for line in stdout.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("number of transactions actually processed:") {
            let n = rest.trim().split(['/', ' ']).next()?;
            transactions = n.parse::<u64>().ok();
        } else if let Some(rest) = line.strip_prefix("tps = ") {
            let value = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok());
            if line.contains("without initial connection time") || line.contains("excluding") {
                tps = value;
            } else if tps_any.is_none() {
                tps_any = value;
            }
        }
    }
    Some(Summary {
        transactions: transactions?,
        tps: tps.or(tps_any)?,
    })
}

/// `progress: 3.0 s, 1234.5 tps, lat 1.6 ms stddev 0.4, 0 failed` → (3.0, 1234.5).
fn parse_progress(line: &str) -> Option<(f64, f64)> {
    let rest = line.trim().strip_prefix("progress:")?;
    let mut parts = rest.split(',');
    let secs = parts
        .next()?
        .trim()
        .strip_suffix(" s")?
        .trim()
        .parse()
        .ok()?;
    let tps = parts
        .next()?
        .trim()
        .strip_suffix(" tps")?
        .trim()
        .parse()
        .ok()?;
    Some((secs, tps))
}

struct Pgbench<'a> {
    pgbench: &'a Path,
    options: &'a PgConnectOptions,
    password: Option<String>,
    script: &'a Path,
    clients: usize,
    threads: usize,
    rate: Option<f64>,
    batch: usize,
    total: f64,
}

impl Pgbench<'_> {
    /// The pgbench command line for a run of `secs` seconds, its output piped.
    fn command(&self, secs: u64) -> Command {
        let mut cmd = Command::new(self.pgbench);
        cmd.arg("-n")
            .args(["-M", "prepared"])
            .arg("-f")
            .arg(self.script)
            .args(["-c", &self.clients.to_string()])
            .args(["-j", &self.threads.to_string()])
            .args(["-T", &secs.to_string()])
            .args(["--progress", "1"]);
        if let Some(rate) = self.rate {
            cmd.args(["--rate", &format!("{rate:.3}")]);
        }
        let host = match self.options.get_socket() {
            Some(dir) => dir.display().to_string(),
            None => self.options.get_host().to_owned(),
        };
        cmd.args(["-h", &host])
            .args(["-p", &self.options.get_port().to_string()])
            .args(["-U", self.options.get_username()]);
        if let Some(db) = self.options.get_database() {
            cmd.arg(db);
        }
        if let Some(pw) = &self.password {
            cmd.env("PGPASSWORD", pw);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs pgbench for `secs` seconds; `offset` is the run's start within the whole
    /// benchmark (for the progress line).
    async fn run(
        &self,
        secs: u64,
        offset: f64,
        progress: &Progress,
    ) -> Result<Summary, BenchError> {
        let mut child = self.command(secs).spawn().map_err(|e| {
            BenchError::peer(PEER, format!("starting {}: {e}", self.pgbench.display()))
        })?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::peer(PEER, "no stdout"))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| BenchError::peer(PEER, "no stderr"))?;

        let read_stdout = async {
            let mut s = String::new();
            stdout.read_to_string(&mut s).await.map(|_| s)
        };
        let (batch, total) = (self.batch as f64, self.total);
        let read_stderr = async {
            let mut lines = BufReader::new(stderr).lines();
            let mut other = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                match parse_progress(&line) {
                    Some((at, tps)) => progress.update(&format!(
                        "ceiling {:.0}s/{total:.0}s {} msg/s",
                        offset + at,
                        thousands(tps * batch)
                    )),
                    None => other.push(line),
                }
            }
            other
        };
        let (out, err_lines) = tokio::join!(read_stdout, read_stderr);
        let status = child
            .wait()
            .await
            .map_err(|e| BenchError::peer(PEER, format!("waiting for pgbench: {e}")))?;
        let out =
            out.map_err(|e| BenchError::peer(PEER, format!("reading pgbench output: {e}")))?;
        let tail = err_lines
            .iter()
            .rev()
            .take(5)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join(" | ");
        if !status.success() {
            return Err(BenchError::peer(
                PEER,
                format!("pgbench failed ({status}): {tail}"),
            ));
        }
        parse_summary(&out).ok_or_else(|| {
            BenchError::peer(
                PEER,
                format!("could not read pgbench's summary (tps / transactions): {out} {tail}"),
            )
        })
    }
}

/// The orchestration workload's ceiling: the same row work per instance as an
/// orchestration engine on PostgreSQL needs at the least, with nothing else — the
/// instance row inserted (activation), updated with the call's answer (now waiting), the
/// follow-up inserted into an inbox, then in one transaction the instance updated
/// (consumed it, completed) and the result inserted: four commits, five row writes per
/// instance. `producers + consumers` pgbench clients, one script = one
/// instance; no hand-off, so no latency.
pub async fn run_orchestration(
    spec: &RunSpec,
    progress: &Progress,
) -> Result<Measured, BenchError> {
    let pgbench = find_pgbench()?;
    let options = PgConnectOptions::from_str(&spec.database_url).map_err(|e| {
        BenchError::peer(
            PEER,
            format!("bad database URL {}: {e}", redact_url(&spec.database_url)),
        )
    })?;
    create_orchestration_tables(&options).await?;
    let script = std::env::temp_dir().join(format!(
        "mbx-bench-{}.sql",
        crate::database::unique_name("orchestration_ceiling")
    ));
    std::fs::write(&script, ORCHESTRATION_SCRIPT).map_err(|e| {
        BenchError::peer(
            PEER,
            format!("writing the pgbench script {}: {e}", script.display()),
        )
    })?;
    let clients = (spec.producers + spec.consumers).max(1);
    let run = Pgbench {
        pgbench: &pgbench,
        options: &options,
        password: url_password(&spec.database_url),
        script: &script,
        clients,
        threads: clients.min(2),
        rate: spec.rate.filter(|r| *r > 0.0),
        batch: 1,
        total: (spec.warmup + spec.duration).as_secs_f64(),
    };
    let warm_secs = spec.warmup.as_secs_f64().ceil() as u64;
    let secs = (spec.duration.as_secs_f64().round() as u64).max(1);
    let result = async {
        if warm_secs > 0 {
            run.run(warm_secs, 0.0, progress).await?;
        }
        run.run(secs, spec.warmup.as_secs_f64(), progress).await
    }
    .await;
    let _ = std::fs::remove_file(&script);
    let summary = result?;
    Ok(Measured {
        throughput: Some(Throughput {
            count: summary.transactions,
            seconds: if summary.tps > 0.0 {
                summary.transactions as f64 / summary.tps
            } else {
                secs as f64
            },
        }),
        latency: None,
        peak_rss_mb: None,
        notes: vec![format!(
            "pgbench -M prepared, {clients} clients; one script = one instance: insert instance, \
             update it (call answered), insert inbox message, then one transaction updating the \
             instance (consumed) and inserting the result (4 commits, 5 row writes); \
             measured run {secs}s after a {warm_secs}s warm-up run; no latency"
        )],
        details: None,
    })
}

/// Creates [`ORCHESTRATION_TABLES`].
async fn create_orchestration_tables(options: &PgConnectOptions) -> Result<(), BenchError> {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.clone())
        .await
        .map_err(db("connecting for the orchestration ceiling"))?;
    for statement in ORCHESTRATION_TABLES {
        sqlx::query(statement)
            .execute(&pool)
            .await
            .map_err(db("creating the orchestration ceiling's tables"))?;
    }
    pool.close().await;
    Ok(())
}

/// The orchestration ceiling's tables (in the peer's own scratch database).
const ORCHESTRATION_TABLES: &[&str] = &[
    "CREATE TABLE instances (id bigserial PRIMARY KEY, order_id text NOT NULL, state text NOT NULL, \
     data jsonb NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())",
    "CREATE INDEX instances_state ON instances (state)",
    "CREATE TABLE inbox (id bigserial PRIMARY KEY, instance_id bigint NOT NULL, \
     body jsonb NOT NULL, consumed boolean NOT NULL DEFAULT false)",
    "CREATE INDEX inbox_instance ON inbox (instance_id)",
    "CREATE TABLE results (id bigserial PRIMARY KEY, instance_id bigint NOT NULL, body jsonb NOT NULL)",
];

/// One instance's row work, as pgbench runs it.
const ORCHESTRATION_SCRIPT: &str = "\
\\set order random(1, 1000000000)
INSERT INTO instances (order_id, state, data) VALUES (:order::text, 'calling', '{\"task\": \"quote\"}') RETURNING id AS instance \\gset
UPDATE instances SET state = 'waiting', data = '{\"task\": \"awaitApproval\", \"quote\": {\"price\": 42}}', updated_at = now() WHERE id = :instance;
INSERT INTO inbox (instance_id, body) VALUES (:instance, '{\"approved\": true}');
BEGIN;
UPDATE instances SET state = 'completed', updated_at = now() WHERE id = :instance;
INSERT INTO results (instance_id, body) VALUES (:instance, '{\"price\": 42}');
COMMIT;
";

#[cfg(test)]
mod tests {
    use super::*;

    const PG15: &str = "pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: /tmp/x.sql
scaling factor: 1
query mode: prepared
number of clients: 3
number of threads: 2
maximum number of tries: 1
duration: 2 s
number of transactions actually processed: 1234
number of failed transactions: 0 (0.000%)
latency average = 4.812 ms
initial connection time = 5.300 ms
tps = 617.125000 (without initial connection time)
";

    const PG13: &str = "number of transactions actually processed: 500/500
latency average = 2.0 ms
tps = 480.1 (including connections establishing)
tps = 499.9 (excluding connections establishing)
";

    #[test]
    fn summary_of_pg15_and_older() {
        assert_eq!(
            parse_summary(PG15),
            Some(Summary {
                transactions: 1234,
                tps: 617.125
            })
        );
        assert_eq!(
            parse_summary(PG13),
            Some(Summary {
                transactions: 500,
                tps: 499.9
            })
        );
        assert_eq!(parse_summary("pgbench: error: connection failed"), None);
    }

    #[test]
    fn progress_lines() {
        assert_eq!(
            parse_progress("progress: 3.0 s, 1234.5 tps, lat 1.6 ms stddev 0.4, 0 failed"),
            Some((3.0, 1234.5))
        );
        assert_eq!(
            parse_progress("progress: 1.0 s, 10.0 tps, lat 1.2 ms stddev 0.1, lag 0.0 ms"),
            Some((1.0, 10.0))
        );
        assert_eq!(parse_progress("pgbench: warning: something"), None);
    }

    #[test]
    fn password_from_url() {
        assert_eq!(
            url_password("postgres://u:p%40ss@h:5432/db").as_deref(),
            Some("p@ss")
        );
        assert_eq!(url_password("postgres://u@h/db"), None);
        assert_eq!(url_password("postgres://h/db"), None);
    }

    #[test]
    fn script_has_one_insert_and_one_delete_of_a_batch() {
        let s = script_text("t", &body_expr(1024), 100);
        assert_eq!(s.lines().count(), 2);
        assert!(s.contains("generate_series(1, 100)"));
        assert!(s.contains("LIMIT 100 FOR UPDATE SKIP LOCKED"));
        assert!(s.contains("repeat('78', 1024)"));
    }
}
