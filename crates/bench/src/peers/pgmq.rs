//! The pgmq peer: pgmq installed as plain SQL (crate `pgmq`, feature
//! `install-sql-embedded`) into the bench database, driven through its SQL API
//! (`pgmq.send_batch` / `pgmq.read` / `pgmq.delete`) exactly as its documentation shows.
//!
//! Method (the common one, see [`crate::peers`]):
//! - one logged (durable) queue `mbx_bench_<random>`, dropped at the end;
//! - `spec.producers` producers, each `send_batch` of `spec.batch` JSON bodies of
//!   `spec.body_size` bytes (one insert statement = one commit per batch), behind the
//!   closed-loop [`Window`] and the [`Pacer`];
//! - `spec.consumers` consumers, each `read_batch` of up to `spec.batch` with a 30 s
//!   visibility timeout, then `delete_batch` of the ids read (delete, not archive: the
//!   other systems keep no history either). A consumer that reads nothing sleeps 1 ms
//!   before the next read. pgmq's `read_with_poll` is not used: its timeout is whole
//!   seconds and it parks a server backend in `pg_sleep`, which is no better than a
//!   1 ms client-side poll and would hold the run open for up to a second at its end;
//! - latency = the message's `enqueued_at` (the database's `now()` of the inserting
//!   transaction, so just before its commit; same clock as ours, same machine) → the
//!   moment `read_batch` returns it to the consumer. It is recorded only for messages
//!   read after the warm-up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgmq::PGMQueueExt;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinSet;

use crate::measure::{thousands, Interval, Latencies, Pacer, Progress, Throughput, Window};
use crate::{BenchError, Measured, RunSpec};

const PEER: &str = "pgmq";
/// Visibility timeout of a read: far longer than a read-to-delete round trip.
const VT_SECONDS: i32 = 30;
/// Sleep after an empty read.
const EMPTY_POLL: Duration = Duration::from_millis(1);

/// The body as sent: one JSON string padded so the document is `body_size` bytes.
#[derive(Serialize)]
struct Body<'a> {
    b: &'a str,
}

/// The body as read (parsed, as a real consumer would).
#[derive(Deserialize)]
struct BodyOwned {
    #[allow(dead_code)]
    b: String,
}

pub async fn run(spec: &RunSpec, progress: &Progress) -> Result<Measured, BenchError> {
    run_on_queue(spec, progress, &crate::database::unique_name("mbx_bench")).await
}

/// [`run`] on a queue of the given name (created, then dropped).
pub async fn run_on_queue(
    spec: &RunSpec,
    progress: &Progress,
    name: &str,
) -> Result<Measured, BenchError> {
    let tasks = spec.producers + spec.consumers;
    let pool = PgPoolOptions::new()
        .max_connections((tasks + 2) as u32)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&spec.database_url)
        .await
        .map_err(|e| {
            BenchError::peer(
                PEER,
                format!(
                    "cannot connect to PostgreSQL at {}: {e}; check that the server runs and the \
                     database exists",
                    crate::database::redact(&spec.database_url)
                ),
            )
        })?;
    let queue = PGMQueueExt::new_with_pool(pool.clone()).await;
    queue.install_sql_from_embedded().await.map_err(|e| {
        BenchError::peer(
            PEER,
            format!("installing pgmq's SQL (install-sql-embedded) into the bench database: {e}"),
        )
    })?;
    queue
        .create(name)
        .await
        .map_err(|e| BenchError::peer(PEER, format!("creating queue {name}: {e}")))?;

    let result = measure(spec, progress, &queue, name).await;

    let dropped = queue
        .drop_queue(name)
        .await
        .map_err(|e| BenchError::peer(PEER, format!("dropping queue {name}: {e}")));
    pool.close().await;
    let measured = result?;
    dropped?;
    Ok(measured)
}

async fn measure(
    spec: &RunSpec,
    progress: &Progress,
    queue: &PGMQueueExt,
    name: &str,
) -> Result<Measured, BenchError> {
    let batch = spec.batch.max(1);
    let window = Window::new(spec.window);
    let measuring = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let end = start + spec.warmup + spec.duration;
    let pad: Arc<str> = "x".repeat(spec.body_size.saturating_sub(8)).into();

    let mut tasks: JoinSet<Result<Latencies, BenchError>> = JoinSet::new();
    for _ in 0..spec.producers {
        let (queue, name, window, pad) =
            (queue.clone(), name.to_owned(), window.clone(), pad.clone());
        let rate = spec.rate.map(|r| r / spec.producers.max(1) as f64);
        tasks.spawn(async move {
            let bodies: Vec<Body<'_>> = (0..batch).map(|_| Body { b: &pad }).collect();
            let mut pacer = Pacer::new(rate);
            while Instant::now() < end {
                window.admit(end).await;
                pacer.wait(batch as u64).await;
                if Instant::now() >= end {
                    break;
                }
                let ids = queue
                    .send_batch(&name, &bodies)
                    .await
                    .map_err(|e| BenchError::peer(PEER, format!("send_batch to {name}: {e}")))?;
                window.add_produced(ids.len() as u64);
            }
            Ok(Latencies::new())
        });
    }
    for _ in 0..spec.consumers {
        let (queue, name, window, measuring) = (
            queue.clone(),
            name.to_owned(),
            window.clone(),
            measuring.clone(),
        );
        tasks.spawn(async move {
            let mut latencies = Latencies::new();
            while Instant::now() < end {
                let messages = queue
                    .read_batch::<BodyOwned>(&name, VT_SECONDS, batch as i32)
                    .await
                    .map_err(|e| BenchError::peer(PEER, format!("read_batch from {name}: {e}")))?;
                if messages.is_empty() {
                    tokio::time::sleep(EMPTY_POLL).await;
                    continue;
                }
                let handed_off = chrono::Utc::now();
                if measuring.load(Ordering::Relaxed) {
                    for m in &messages {
                        let us = (handed_off - m.enqueued_at).num_microseconds().unwrap_or(0);
                        latencies.record_ms(us as f64 / 1e3);
                    }
                }
                let ids: Vec<i64> = messages.iter().map(|m| m.msg_id).collect();
                queue
                    .delete_batch(&name, &ids)
                    .await
                    .map_err(|e| BenchError::peer(PEER, format!("delete_batch on {name}: {e}")))?;
                window.add_consumed(ids.len() as u64);
            }
            Ok(latencies)
        });
    }

    let (throughput, latencies) =
        drive(PEER, spec, progress, start, &window, &measuring, tasks).await?;
    Ok(Measured {
        throughput: Some(throughput),
        latency: latencies.summary(),
        peak_rss_mb: None,
        notes: vec![format!(
            "pgmq (crate 0.33, SQL-only install), logged queue; send_batch/read_batch {batch}, \
             delete_batch of the ids read, vt {VT_SECONDS}s, 1 ms sleep after an empty read; \
             latency from enqueued_at (the insert's now())"
        )],
        details: None,
    })
}

/// Runs the measurement clock while `tasks` work: starts the [`Interval`] (and latency
/// recording) after the warm-up, reports progress about once a second, finishes the
/// interval at the end, then collects every task's latencies. The first task error
/// aborts the others and is returned.
pub(crate) async fn drive(
    peer: &'static str,
    spec: &RunSpec,
    progress: &Progress,
    start: Instant,
    window: &Window,
    measuring: &AtomicBool,
    mut tasks: JoinSet<Result<Latencies, BenchError>>,
) -> Result<(Throughput, Latencies), BenchError> {
    let warm_end = start + spec.warmup;
    let end = warm_end + spec.duration;
    let total = (spec.warmup + spec.duration).as_secs_f64();
    let mut latencies = Latencies::new();
    let mut interval = Interval::new();
    let mut started = false;
    let mut last_tick = (start, 0u64);
    let mut next_tick = start + Duration::from_secs(1);

    let collect = |res: Result<Result<Latencies, BenchError>, tokio::task::JoinError>,
                   latencies: &mut Latencies| match res {
        Ok(Ok(l)) => {
            latencies.merge(l);
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(e) => Err(BenchError::peer(peer, format!("a worker task failed: {e}"))),
    };

    loop {
        let now = Instant::now();
        if !started && now >= warm_end {
            interval.start(window.consumed.load(Ordering::Relaxed));
            measuring.store(true, Ordering::Relaxed);
            started = true;
        }
        if now >= end {
            break;
        }
        if now >= next_tick {
            let consumed = window.consumed.load(Ordering::Relaxed);
            let secs = now.duration_since(last_tick.0).as_secs_f64();
            let rate = consumed.saturating_sub(last_tick.1) as f64 / secs.max(1e-9);
            progress.update(&format!(
                "{peer} {:.0}s/{total:.0}s {} msg/s backlog {}",
                now.duration_since(start).as_secs_f64(),
                thousands(rate),
                thousands(window.backlog() as f64)
            ));
            last_tick = (now, consumed);
            next_tick = now + Duration::from_secs(1);
        }
        let wake = next_tick.min(if started { end } else { warm_end });
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            Some(res) = tasks.join_next() => {
                if let Err(e) = collect(res, &mut latencies) {
                    tasks.abort_all();
                    return Err(e);
                }
            }
        }
    }
    let throughput = interval.finish(window.consumed.load(Ordering::Relaxed));
    measuring.store(false, Ordering::Relaxed);
    while let Some(res) = tasks.join_next().await {
        if let Err(e) = collect(res, &mut latencies) {
            tasks.abort_all();
            return Err(e);
        }
    }
    Ok((throughput, latencies))
}
