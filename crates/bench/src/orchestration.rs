//! `--workload orchestration`: one orchestration instance per order, activated by a
//! message, calling an HTTP endpoint once (`call: http` to a quote service on loopback in
//! this process, answering at once), waiting for one correlated message (`listen`,
//! correlated on the promoted property `Order.Id`) and emitting one result (delivered by a
//! started `null:` send port). The definition is a CNCF Serverless Workflow 1.0 document in
//! the mbx profile ([`definition`]), declared and created with the real `mbx` CLI
//! (`mbx property create Order.Id --type string`, `mbx orchestration create -f FILE`).
//!
//! Publishers stand in for receive locations: `spec.producers` tasks publish activating
//! messages in batches of `spec.batch` (closed loop: at most [`in_flight`] instances
//! started and not completed; paced in the 50%-load run, one message per publish: orders
//! arriving one by one, as the DBOS peer starts its workflows). A follower polls the
//! instances that *wait* (state `waiting`, every 10 ms, through the instances'
//! (orchestration, state) index) and publishes each one's follow-up once, all the new
//! ones in one transaction: every follow-up arrives at an instance already waiting.
//!
//! Measured: completed instances per second (instances reaching `completed`, counted in
//! the database) in the interval after the warm-up; latency from the hosts'
//! `mbx_orchestration_step_latency_seconds{cause="resumed"}` (the follow-up's publish
//! transaction start → the commit of the step that consumed it, emitted the result and
//! completed the instance: database clock); rows (Σ n_tup_ins + n_tup_upd + n_tup_del of
//! the scratch database's tables) and WAL bytes (`pg_current_wal_lsn()`, server-wide)
//! per completed instance over the interval. With `waiting` > 0 (the waiting-instances
//! run), that many instances of a second orchestration of the same shape are started
//! first and left waiting (the first 10,000 activated by the engine, the rest copies of
//! their rows made by SQL); the hosts' RSS (VmRSS) is read before and after.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Router;
use mbx_messagebox::config::{HostSpec, InitialState, SendPortSpec};
use mbx_messagebox::publish::{NewMessage, Publisher};
use mbx_messagebox::{Context, MessageBox, Value};

use crate::database::{Activity, Probe};
use crate::mbx::{Hosts, MbxRun, BENCH_HOST};
use crate::measure::{thousands, Interval, Pacer, Progress, Throughput, Window};
use crate::{database, BenchError, Measured, RunSpec};

/// The measured orchestration.
pub const ORCHESTRATION: &str = "bench-order";
/// The orchestration whose instances are left waiting in the waiting-instances run.
const BALLAST: &str = "bench-ballast";
/// Instances started and not completed at most, for mbx and DBOS alike: 2 × batch (200).
/// The messaging workloads' window (200 × batch) would queue 20,000 activations ahead of
/// every follow-up (runnable instances are taken oldest first), so the measured interval
/// would see the queue, not the engine.
pub fn in_flight(spec: &RunSpec) -> u64 {
    2 * spec.batch.max(1) as u64
}

/// Of the instances left waiting, how many the engine activates (a step each; ~200/s):
/// the others are copies of them ([`Probe::copy_waiting`]), made by SQL in chunks of
/// [`COPY_CHUNK`].
const ACTIVATED_WAITING: u64 = 10_000;
const COPY_CHUNK: u64 = 50_000;

/// How often the follower looks for instances that wait.
const FOLLOW_EVERY: Duration = Duration::from_millis(10);

pub async fn run(
    spec: &RunSpec,
    run: &MbxRun,
    progress: &Progress,
) -> Result<Measured, BenchError> {
    let db = database::Scratch::create(&spec.database_url, "orch").await?;
    let result = run_in(spec, run, progress, db.url()).await;
    db.drop_now().await;
    result
}

/// The quote service on loopback: answers each POST at once with a small JSON object.
pub async fn quote_service() -> Result<u16, BenchError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::Setup(format!("binding the quote service: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| BenchError::Setup(format!("the quote service's address: {e}")))?
        .port();
    let app = Router::new().route(
        "/quote",
        post(|| async { ([("content-type", "application/json")], "{\"price\":42}") }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(port)
}

/// The definition: activated by `{prefix}Order`, calls the quote service, waits for
/// `{prefix}Approval` of the same `Order.Id`, emits `BenchResult`.
pub fn definition(name: &str, prefix: &str, quote_port: u16) -> String {
    format!(
        r#"document:
  dsl: 1.0.3
  namespace: bench
  name: {name}
  version: 1.0.0
schedule:
  on:
    one:
      with:
        type: {prefix}Order
      correlate:
        orderId:
          from: '${{ .properties["Order.Id"] }}'
do:
  - remember:
      set:
        orderId: '${{ .[0].properties["Order.Id"] }}'
      export:
        as: '${{ $context + . }}'
  - quote:
      call: http
      with:
        method: post
        endpoint: http://127.0.0.1:{quote_port}/quote
        body: '${{ {{ orderId: $context.orderId }} }}'
      export:
        as: '${{ $context + {{ quote: . }} }}'
  - awaitApproval:
      listen:
        to:
          one:
            with:
              type: {prefix}Approval
            correlate:
              orderId:
                from: '${{ .properties["Order.Id"] }}'
                expect: '${{ $context.orderId }}'
  - result:
      emit:
        event:
          with:
            source: https://bench.mbx/orchestration
            type: BenchResult
            Order.Id: '${{ $context.orderId }}'
            data: '${{ {{ orderId: $context.orderId, price: $context.quote.price }} }}'
"#
    )
}

/// Runs `mbx ARGS` (the CLI next to the hosts) against `url`.
async fn mbx_cli(mbx_bin: &Path, url: &str, args: &[&str]) -> Result<(), BenchError> {
    let out = tokio::process::Command::new(mbx_bin)
        .args(args)
        .env("MBX_DATABASE_URL", url)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| BenchError::Setup(format!("running {}: {e}", mbx_bin.display())))?;
    if !out.status.success() {
        return Err(BenchError::Setup(format!(
            "mbx {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The group: host, the results port, `Order.Id` declared, both orchestrations created.
async fn setup(
    mbx: &MessageBox,
    run: &MbxRun,
    url: &str,
    quote_port: u16,
) -> Result<(), BenchError> {
    mbx.init(None).await?;
    mbx.host_create(&HostSpec {
        name: BENCH_HOST.to_owned(),
        tracking: run.tracking,
        ..Default::default()
    })
    .await?;
    let mut port = SendPortSpec::new("results", "null://bench")
        .with_filter("mbx.MessageType == \"BenchResult\"")
        .with_state(InitialState::Started);
    port.host = BENCH_HOST.to_owned();
    mbx.send_port_create(&port).await?;
    let mbx_bin = run.host_bin.with_file_name("mbx");
    if !mbx_bin.is_file() {
        return Err(BenchError::Setup(format!(
            "mbx not found at {}: build it (cargo build --release --bins)",
            mbx_bin.display()
        )));
    }
    mbx_cli(
        &mbx_bin,
        url,
        &["property", "create", "Order.Id", "--type", "string"],
    )
    .await?;
    let dir = tempfile::tempdir()
        .map_err(|e| BenchError::Setup(format!("a directory for the definitions: {e}")))?;
    for (name, prefix) in [(ORCHESTRATION, "Bench"), (BALLAST, "Ballast")] {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, definition(name, prefix, quote_port))?;
        let file = file.display().to_string();
        mbx_cli(
            &mbx_bin,
            url,
            &["orchestration", "create", "-f", &file, "--host", BENCH_HOST],
        )
        .await?;
    }
    Ok(())
}

/// A message of `message_type` for order `order`.
fn order_message(message_type: &str, order: &str) -> Result<NewMessage, BenchError> {
    let mut ctx = Context::new();
    ctx.promote("mbx.MessageType", Value::String(message_type.to_owned()))?;
    ctx.promote("Order.Id", Value::String(order.to_owned()))?;
    Ok(NewMessage::new(
        format!("{{\"orderId\":\"{order}\"}}"),
        "application/json",
        ctx,
    ))
}

/// The hosts' current RSS in MB, the largest instance's.
struct Rss {
    before: Option<f64>,
    with_waiting: Option<f64>,
    after: Option<f64>,
}

async fn run_in(
    spec: &RunSpec,
    run: &MbxRun,
    progress: &Progress,
    url: &str,
) -> Result<Measured, BenchError> {
    let mbx = MessageBox::connect(url, (spec.producers as u32 + 2).max(4)).await?;
    let quote = quote_service().await?;
    setup(&mbx, run, url, quote).await?;
    let hosts = Hosts::start(&run.host_bin, url, run.instances, spec.batch).await?;
    let probe = Probe::connect(url).await?;
    let result = measure(spec, run, progress, &mbx, &probe, &hosts).await;
    probe.close().await;
    hosts.stop().await;
    mbx.pool().close().await;
    result
}

async fn measure(
    spec: &RunSpec,
    run: &MbxRun,
    progress: &Progress,
    mbx: &MessageBox,
    probe: &Probe,
    hosts: &Hosts,
) -> Result<Measured, BenchError> {
    let id = probe.orchestration_id(ORCHESTRATION).await?;
    let mut rss = Rss {
        before: hosts.rss_mb(),
        with_waiting: None,
        after: None,
    };
    if run.waiting > 0 {
        let ballast = probe.orchestration_id(BALLAST).await?;
        let started = Instant::now();
        leave_waiting(mbx, probe, ballast, run.waiting, spec, progress).await?;
        progress.done(&format!(
            "{}: {} instances waiting after {:.0} s",
            run.label,
            thousands(run.waiting as f64),
            started.elapsed().as_secs_f64()
        ));
        probe.settle().await?;
        rss.with_waiting = hosts.rss_mb();
    }
    let (throughput, activity) = drive(spec, run, progress, mbx, probe, id).await?;
    rss.after = hosts.rss_mb();
    let latency = hosts.step_latency("resumed").await;
    let activation = hosts.step_latency("activation").await;
    let peak_rss_mb = hosts.peak_rss_mb();
    let mut notes = vec![format!(
        "{} instance(s), activations in batches of {}, follow-ups published once their instance waits; latency: follow-up publish → the commit of the step that consumed it (hosts' mbx_orchestration_step_latency_seconds, cause resumed)",
        run.instances,
        activation_batch(spec)
    )];
    if spec.rate.is_some() {
        notes.push("paced".to_owned());
    }
    let per = activity.1.per(&activity.0, throughput.count);
    Ok(Measured {
        throughput: Some(throughput),
        latency,
        peak_rss_mb,
        notes,
        details: Some(serde_json::json!({
            "rows_per_instance": per.map(|p| p.0),
            "wal_bytes_per_instance": per.map(|p| p.1),
            "waiting": run.waiting,
            "rss_before_mb": rss.before,
            "rss_with_waiting_mb": rss.with_waiting,
            "rss_after_mb": rss.after,
            "activation_step_p50_ms": activation.map(|l| l.p50_ms),
            "activation_step_p99_ms": activation.map(|l| l.p99_ms),
        })),
    })
}

/// Starts `count` instances of the ballast orchestration and waits until all of them
/// wait (they never get their follow-up).
async fn leave_waiting(
    mbx: &MessageBox,
    probe: &Probe,
    ballast: i64,
    count: u64,
    spec: &RunSpec,
    progress: &Progress,
) -> Result<(), BenchError> {
    let publisher = Publisher::default();
    let batch = spec.batch.max(1) as u64;
    let made = count.min(ACTIVATED_WAITING);
    let mut sent = 0u64;
    let mut waiting = 0;
    while (waiting as u64) < made {
        // at most a window's worth not yet waiting
        while sent < made && sent < waiting as u64 + spec.window {
            let n = batch.min(made - sent);
            let msgs = (sent..sent + n)
                .map(|i| order_message("BallastOrder", &format!("w-{i}")))
                .collect::<Result<Vec<_>, _>>()?;
            mbx.publish(&publisher, msgs).await?;
            sent += n;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        waiting = probe.instances_in(ballast, "waiting").await?;
        progress.update(&format!(
            "orchestration: {}/{} instances waiting",
            thousands(waiting as f64),
            thousands(count as f64)
        ));
    }
    // the rest: copies of those the engine made
    let mut copied = made;
    while copied < count {
        let n = COPY_CHUNK.min(count - copied);
        probe
            .copy_waiting(ballast, copied as i64, (copied + n) as i64)
            .await?;
        copied += n;
        progress.update(&format!(
            "orchestration: {}/{} instances waiting (copies of the first {})",
            thousands(copied as f64),
            thousands(count as f64),
            thousands(made as f64)
        ));
    }
    Ok(())
}

/// Publishers, the follower and the count of completed instances until the end: the
/// throughput after the warm-up and the server's activity at its start and end.
async fn drive(
    spec: &RunSpec,
    run: &MbxRun,
    progress: &Progress,
    mbx: &MessageBox,
    probe: &Probe,
    id: i64,
) -> Result<(Throughput, (Activity, Activity)), BenchError> {
    let window = Window::new(in_flight(spec));
    let deadline = Instant::now() + spec.warmup + spec.duration;
    let mut producers = Vec::new();
    for p in 0..spec.producers {
        let (mbx, window, spec) = (mbx.clone(), window.clone(), spec.clone());
        producers.push(tokio::spawn(async move {
            activate_until(&mbx, &spec, p, &window, deadline).await
        }));
    }
    let follower = {
        let (mbx, probe) = (mbx.clone(), probe.clone());
        tokio::spawn(async move { follow_until(&mbx, &probe, id, deadline).await })
    };
    let counted = count_completed(spec, run, progress, probe, id, &window, deadline).await;
    for p in producers {
        p.await
            .map_err(|e| BenchError::Setup(format!("publisher task: {e}")))??;
    }
    follower
        .await
        .map_err(|e| BenchError::Setup(format!("follower task: {e}")))??;
    counted
}

/// How many activations one publish carries: `spec.batch` at the saturated rate; one
/// when paced — orders arriving one by one, as the DBOS peer starts its workflows (a
/// paced burst of 100 queued each follow-up behind up to 100 activations: ~1 s).
fn activation_batch(spec: &RunSpec) -> usize {
    if spec.rate.is_some() {
        1
    } else {
        spec.batch
    }
}

/// One publisher of activations: batches of [`activation_batch`], paced and windowed.
async fn activate_until(
    mbx: &MessageBox,
    spec: &RunSpec,
    index: usize,
    window: &Window,
    deadline: Instant,
) -> Result<(), BenchError> {
    let publisher = Publisher::default();
    let rate = spec.rate.map(|r| r / spec.producers.max(1) as f64);
    let mut pacer = Pacer::new(rate);
    let size = activation_batch(spec) as u64;
    let mut n = 0u64;
    while Instant::now() < deadline {
        window.admit(deadline).await;
        pacer.wait(size).await;
        if Instant::now() >= deadline {
            break;
        }
        let batch = (0..size)
            .map(|i| order_message("BenchOrder", &format!("o-{index}-{}", n + i)))
            .collect::<Result<Vec<_>, _>>()?;
        n += size;
        mbx.publish(&publisher, batch).await?;
        window.add_produced(size);
    }
    Ok(())
}

/// Publishes each waiting instance's follow-up once, until `deadline`.
async fn follow_until(
    mbx: &MessageBox,
    probe: &Probe,
    id: i64,
    deadline: Instant,
) -> Result<(), BenchError> {
    let publisher = Publisher::default();
    let mut sent: HashSet<String> = HashSet::new();
    while Instant::now() < deadline {
        tokio::time::sleep(FOLLOW_EVERY).await;
        let new: Vec<String> = probe
            .waiting(id)
            .await?
            .into_iter()
            .map(|w| w.order_id)
            .filter(|o| !sent.contains(o))
            .collect();
        if new.is_empty() {
            continue;
        }
        let msgs = new
            .iter()
            .map(|o| order_message("BenchApproval", o))
            .collect::<Result<Vec<_>, _>>()?;
        mbx.publish(&publisher, msgs).await?;
        sent.extend(new);
    }
    Ok(())
}

/// Follows the completed count until `deadline` (the window's consumed count, the progress
/// line), and the throughput and activity of the interval after the warm-up.
async fn count_completed(
    spec: &RunSpec,
    run: &MbxRun,
    progress: &Progress,
    probe: &Probe,
    id: i64,
    window: &Arc<Window>,
    deadline: Instant,
) -> Result<(Throughput, (Activity, Activity)), BenchError> {
    let total = spec.warmup + spec.duration;
    let mut interval = Interval::new();
    let started = Instant::now();
    let mut first = Activity::default();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let completed = probe.instances_in(id, "completed").await? as u64;
        window.consumed.store(completed, Ordering::Relaxed);
        if !interval.started() && started.elapsed() >= spec.warmup {
            first = probe.activity().await?;
            interval.start(completed);
        }
        let measured_s = started.elapsed().saturating_sub(spec.warmup).as_secs_f64();
        progress.update(&format!(
            "{} {:.0}s/{:.0}s {} instances/s in flight {}",
            run.label,
            started.elapsed().as_secs_f64(),
            total.as_secs_f64(),
            thousands(if interval.started() && measured_s > 0.0 {
                completed.saturating_sub(interval_base(&interval, completed)) as f64 / measured_s
            } else {
                0.0
            }),
            thousands(window.backlog() as f64)
        ));
    }
    let completed = probe.instances_in(id, "completed").await? as u64;
    let last = probe.activity().await?;
    Ok((interval.finish(completed), (first, last)))
}

/// The count at the interval's start (for the progress line).
fn interval_base(interval: &Interval, now: u64) -> u64 {
    now - interval.finish(now).count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definition_names_its_types_and_the_quote_service() {
        let d = definition("o", "Bench", 8080);
        assert!(d.contains("type: BenchOrder"), "{d}");
        assert!(d.contains("type: BenchApproval"), "{d}");
        assert!(d.contains("http://127.0.0.1:8080/quote"), "{d}");
        assert!(d.contains("'${ $context + { quote: . } }'"), "{d}");
    }
}
