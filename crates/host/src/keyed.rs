//! A send port ordered by a property (`--ordered-by PROP`): order per key, concurrency
//! across keys. The port's keys hash into buckets, each under its own lease; every
//! instance of the host holds its fair share of the buckets (buckets ÷ live instances,
//! rounded up), renews them together every TTL/3, and hands the excess back so a new
//! instance gets its part. A bucket that expires (its holder died or paused) is taken by
//! another instance with epoch + 1, one bucket at a time.
//!
//! Each round claims the heads of the keys with work in the held buckets (a run of at most
//! `--ordered-commit-batch` per key), sends every key's run one message after the other
//! while the keys go concurrently, and commits the round's completions in one statement,
//! fenced per delivery on its bucket's lease at the epoch it was claimed at. A crash
//! re-sends at most one run per key. A failure stops only its key: the head is retried,
//! suspended `failed-final`, or — with `--stop-on-failure` — holds that key until
//! `send-port resume|skip NAME --key K`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mbx_adapters::{Fence, Outcome};
use mbx_messagebox::config::{SendPort, DEFAULT_ORDERED_BUCKETS};
use mbx_messagebox::delivery::{ClaimLimits, ClaimedDelivery, Failure};
use mbx_messagebox::ordered::{BucketLease, LEASE_MARGIN_MS, LEASE_TTL_MS};
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};
use uuid::Uuid;

use crate::delivery::{
    commit_ordered, idle_wait, observe_latency, record, reserve, send_all, Delivering, Sent,
};
use crate::transport::PortTransports;

/// Most deliveries one round claims (the in-flight throttle may allow fewer).
pub const KEYED_CLAIM_MAX: i64 = 1_024;

/// Most keys sent concurrently by one instance on one port.
pub const KEY_CONCURRENCY: usize = 256;

/// The buckets this instance holds, each with its epoch and when its lease was last
/// renewed (milliseconds on this process's monotonic clock since `clock`).
struct Holding {
    clock: Instant,
    held: Mutex<HashMap<i32, (i64, u64)>>,
}

impl Holding {
    fn new() -> Self {
        Self {
            clock: Instant::now(),
            held: Mutex::new(HashMap::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<i32, (i64, u64)>) -> T) -> T {
        match self.held.lock() {
            Ok(mut h) => f(&mut h),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Held at `epoch`, and renewed less than TTL − margin ago.
    fn may_act(&self, bucket: i32, epoch: i64) -> bool {
        let now = self.now_ms();
        self.with(|h| {
            h.get(&bucket).is_some_and(|&(e, renewed)| {
                e == epoch && now.saturating_sub(renewed) < (LEASE_TTL_MS - LEASE_MARGIN_MS) as u64
            })
        })
    }

    fn fence(self: &Arc<Self>, bucket: i32, epoch: i64) -> Fence {
        let holding = self.clone();
        Fence::new(move || holding.may_act(bucket, epoch))
    }

    /// The buckets this instance may act on now.
    fn live(&self) -> Vec<BucketLease> {
        self.all()
            .into_iter()
            .filter(|b| self.may_act(b.bucket, b.epoch))
            .collect()
    }

    fn all(&self) -> Vec<BucketLease> {
        self.with(|h| {
            h.iter()
                .map(|(&bucket, &(epoch, _))| BucketLease { bucket, epoch })
                .collect()
        })
    }

    fn len(&self) -> usize {
        self.with(|h| h.len())
    }

    /// `taken` were acquired (or `renewed`) by a request sent at `asked_ms`.
    fn renewed(&self, leases: &[BucketLease], asked_ms: u64) {
        self.with(|h| {
            for b in leases {
                h.insert(b.bucket, (b.epoch, asked_ms));
            }
        })
    }

    /// `asked` were to be renewed and only `kept` were: the others are lost.
    fn keep_only(&self, asked: &[BucketLease], kept: &[BucketLease]) {
        self.with(|h| {
            for b in asked {
                if !kept.contains(b) && h.get(&b.bucket).map(|x| x.0) == Some(b.epoch) {
                    h.remove(&b.bucket);
                }
            }
        })
    }

    fn remove(&self, leases: &[BucketLease]) {
        self.with(|h| {
            for b in leases {
                h.remove(&b.bucket);
            }
        })
    }
}

/// Renews every held bucket in one statement every TTL/3 (own task, so a slow send never
/// delays a renewal).
fn spawn_renewer(
    delivering: Delivering,
    port: Arc<SendPort>,
    holding: Arc<Holding>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let period = Duration::from_millis((LEASE_TTL_MS / 3) as u64);
        loop {
            tokio::time::sleep(period).await;
            let asked = holding.all();
            if asked.is_empty() {
                continue;
            }
            let at = holding.now_ms();
            match delivering
                .instance()
                .mbx()
                .port_buckets_renew(delivering.instance().id(), port.id, &asked, LEASE_TTL_MS)
                .await
            {
                Ok(kept) => {
                    holding.keep_only(&asked, &kept);
                    holding.renewed(&kept, at);
                    if kept.len() < asked.len() {
                        warn!(port = %port.name, lost = asked.len() - kept.len(),
                              "bucket leases lost; their keys stopped here");
                    }
                }
                Err(e) => warn!(port = %port.name, error = %e, "bucket lease renewal failed"),
            }
        }
    })
}

/// Takes free buckets up to this instance's fair share, or hands the excess back.
async fn balance(delivering: &Delivering, port: &SendPort, holding: &Holding, instance: Uuid) {
    let total = u64::try_from(port.ordered_buckets.unwrap_or(DEFAULT_ORDERED_BUCKETS)).unwrap_or(1);
    let fair = usize::try_from(total.div_ceil(delivering.share().instances().max(1))).unwrap_or(1);
    let held = holding.len();
    if held < fair {
        let at = holding.now_ms();
        let want = i64::try_from(fair - held).unwrap_or(0);
        match delivering
            .instance()
            .mbx()
            .port_buckets_acquire(instance, port.id, want, LEASE_TTL_MS)
            .await
        {
            Ok(taken) if !taken.is_empty() => {
                holding.renewed(&taken, at);
                info!(port = %port.name, buckets = taken.len(), held = holding.len(), "bucket leases taken");
                metrics::counter!("mbx_lease_takeovers_total", "port" => port.name.clone())
                    .increment(taken.len() as u64);
            }
            Ok(_) => {}
            Err(e) => warn!(port = %port.name, error = %e, "bucket lease acquisition failed"),
        }
    } else if held > fair {
        let mut all = holding.all();
        all.sort_by_key(|b| std::cmp::Reverse(b.bucket));
        all.truncate(held - fair);
        holding.remove(&all);
        info!(port = %port.name, buckets = all.len(), "handing bucket leases over to spread the keys");
        release(delivering, port, instance, &all).await;
    }
}

async fn release(delivering: &Delivering, port: &SendPort, instance: Uuid, leases: &[BucketLease]) {
    if let Err(e) = delivering
        .instance()
        .mbx()
        .port_buckets_release(instance, port.id, leases)
        .await
    {
        warn!(port = %port.name, error = %e, "bucket lease release failed; they expire by themselves");
    }
}

/// The loop of a port ordered by a property on one instance.
pub(crate) async fn keyed_port_loop(
    delivering: Delivering,
    port: SendPort,
    mut stop: watch::Receiver<bool>,
) {
    crate::metrics_catalog::port_started(&port.name);
    let transports = Arc::new(delivering.transports(&port));
    let port = Arc::new(port);
    let holding = Arc::new(Holding::new());
    let renewer = spawn_renewer(delivering.clone(), port.clone(), holding.clone());
    let per_key = i64::from(port.ordered_commit_batch.max(1));
    let poll = delivering.instance().config().poll_interval;
    let mut balanced_at: Option<Instant> = None;
    loop {
        delivering.liveness().progressed(port.id);
        if *stop.borrow() || delivering.instance().is_stopping() {
            break;
        }
        let instance = delivering.instance().id();
        if balanced_at.is_none_or(|t| t.elapsed() >= poll) {
            balance(&delivering, &port, &holding, instance).await;
            balanced_at = Some(Instant::now());
        }
        let held = holding.live();
        if held.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let notified = delivering.published();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let wanted = ClaimLimits {
            max_count: KEYED_CLAIM_MAX,
            max_bytes: delivering.instance().config().claim_bytes,
        };
        let Some((limits, mut in_flight)) = reserve(delivering.throttle(), wanted, &mut stop).await
        else {
            continue;
        };
        let batch = match delivering
            .instance()
            .mbx()
            .deliveries_claim_keyed(instance, port.id, &held, per_key, limits)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                warn!(port = %port.name, error = %e, "keyed claim failed");
                Vec::new()
            }
        };
        if batch.is_empty() {
            drop(in_flight);
            let idle = idle_wait(delivering.instance(), &port).await.min(poll);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(idle) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        in_flight.settle(batch.len(), batch.iter().map(|d| d.body_size).sum());
        let round = send_round(&delivering, &port, &transports, &holding, batch).await;
        commit_ordered(&delivering, &port, instance, 0, round.delivered, None).await;
        if !round.failures.is_empty() {
            let sent = Sent {
                failures: round.failures,
                ..Sent::default()
            };
            record(&delivering, &port, instance, sent).await;
        }
        // what a key did not send behind its failure (or a lost bucket) is given back once
        // the failure is recorded: its head now waits (a retry, a held key), so nothing
        // overtakes it, and the rest no longer counts as in flight
        if !round.unsent.is_empty() {
            if let Err(e) = delivering
                .instance()
                .mbx()
                .deliveries_release(instance, &round.unsent)
                .await
            {
                warn!(port = %port.name, error = %e, "giving back unsent claims failed; they are taken again by the next claim");
            }
        }
    }
    renewer.abort();
    let held = holding.all();
    holding.remove(&held);
    release(&delivering, &port, delivering.instance().id(), &held).await;
    delivering.liveness().forget_progress(port.id);
}

/// What one round (or one key's run) came to.
#[derive(Default)]
struct Round {
    /// Confirmed by the endpoint: to complete.
    delivered: Vec<(i64, Uuid)>,
    /// At most one per key: a key stops at its first failure.
    failures: Vec<Failure>,
    /// Claimed but not sent (behind a failure, or once the bucket's lease was lost).
    unsent: Vec<(i64, Uuid)>,
}

/// Sends one round: each key's run in order, the keys concurrently.
async fn send_round(
    delivering: &Delivering,
    port: &Arc<SendPort>,
    transports: &Arc<PortTransports>,
    holding: &Arc<Holding>,
    batch: Vec<ClaimedDelivery>,
) -> Round {
    // the claim returns (key, sequence) order: cut it into runs per key
    let mut runs: Vec<Vec<ClaimedDelivery>> = Vec::new();
    for d in batch {
        match runs.last_mut() {
            Some(run) if run[0].order_key == d.order_key => run.push(d),
            _ => runs.push(vec![d]),
        }
    }
    let permits = Arc::new(Semaphore::new(KEY_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for run in runs {
        let (delivering, port, transports, holding, permits) = (
            delivering.clone(),
            port.clone(),
            transports.clone(),
            holding.clone(),
            permits.clone(),
        );
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.ok();
            send_run(&delivering, &port, &transports, &holding, run).await
        });
    }
    let mut round = Round::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(run) => {
                round.delivered.extend(run.delivered);
                round.failures.extend(run.failures);
                round.unsent.extend(run.unsent);
            }
            // a panicking adapter: that key's outcomes are unknown; its claims are taken
            // again by the next round (or the next owner)
            Err(e) => warn!(port = %port.name, error = %e, "a key's send task failed"),
        }
    }
    round
}

/// One key's run, one message after the other, each behind its bucket's fence.
async fn send_run(
    delivering: &Delivering,
    port: &SendPort,
    transports: &PortTransports,
    holding: &Arc<Holding>,
    run: Vec<ClaimedDelivery>,
) -> Round {
    let mut round = Round::default();
    let mut run = run.into_iter();
    while let Some(d) = run.next() {
        let (bucket, epoch) = (d.bucket, d.epoch.unwrap_or(-1));
        if !holding.may_act(bucket, epoch) {
            round.unsent.push((d.delivery_id, d.claim_token));
            round
                .unsent
                .extend(run.map(|d| (d.delivery_id, d.claim_token)));
            break;
        }
        let fence = holding.fence(bucket, epoch);
        let (mut outcomes, _) = send_all(
            delivering,
            port,
            transports,
            std::slice::from_ref(&d),
            Some(&fence),
        )
        .await;
        let outcome = outcomes.remove(&d.delivery_id).unwrap_or_else(|| {
            Outcome::failed("the adapter reported no outcome for this message", true)
        });
        match outcome {
            Outcome::Delivered | Outcome::Responded(_) => {
                observe_latency(port, d.published_at);
                round.delivered.push((d.delivery_id, d.claim_token));
            }
            Outcome::Failed { error, retryable } => {
                round.failures.push(Failure {
                    delivery_id: d.delivery_id,
                    claim_token: d.claim_token,
                    error,
                    retryable,
                });
                round
                    .unsent
                    .extend(run.map(|d| (d.delivery_id, d.claim_token)));
                break;
            }
        }
    }
    round
}
