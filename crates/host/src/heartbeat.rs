//! The heartbeat: renews this instance's heartbeat on the database clock (withheld while a
//! delivery loop is stalled: the watchdog), re-registers an instance declared dead, counts
//! the host's live instances for `lease::Share`; on a task of its own, the reclaimer puts
//! back the claims of dead instances — only once this instance has itself heartbeated on
//! time for the dead timeout ([`Heartbeats`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mbx_messagebox::instances::DEAD_AFTER_S;
use mbx_messagebox::states::InstanceState;
use tracing::{error, info, warn};

use crate::instance::Instance;
use crate::lease::Share;
use crate::listen::Wakeups;
use crate::{register, HEARTBEAT_INTERVAL_MS};

/// What the watchdog and the heartbeat know of this instance's liveness: each delivery
/// loop's last progress, the messages delivered per port, and this instance's own
/// heartbeats. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub(crate) struct Liveness {
    inner: Arc<LivenessInner>,
}

struct LivenessInner {
    /// Last progress of each delivery loop, by port id (the watchdog reads it).
    progress: Mutex<HashMap<i64, Instant>>,
    /// Messages delivered per port id since this process started, written with every
    /// heartbeat (the console's and `mbx stats --watch`'s rates).
    delivered: Mutex<BTreeMap<i64, u64>>,
    /// This instance's heartbeats, as the heartbeat loop saw them.
    heartbeats: Mutex<Heartbeats>,
    /// A delivery loop without progress for this long is stalled (`--watchdog-stall`).
    stall: Duration,
}

impl Liveness {
    pub fn new(stall: Duration) -> Self {
        Self {
            inner: Arc::new(LivenessInner {
                progress: Mutex::default(),
                delivered: Mutex::default(),
                heartbeats: Mutex::default(),
                stall,
            }),
        }
    }

    /// Whether this instance may take other instances for dead (and reclaim their work:
    /// deliveries, claimed files). After a database outage every instance's heartbeat is
    /// stale: only once this one has itself been connected, heartbeating on time, for the
    /// dead timeout have the others had the time to heartbeat again (otherwise all would
    /// declare each other dead and reclaim each other's work). A heartbeat held up right
    /// now (its last success more than half the dead timeout ago) closes the gate too.
    pub fn may_judge_dead(&self) -> bool {
        self.inner
            .heartbeats
            .lock()
            .is_ok_and(|h| h.settled(Instant::now()))
    }

    /// The heartbeat loop's word on one heartbeat: it succeeded, or it failed.
    fn heartbeat_done(&self, ok: bool) {
        if let Ok(mut h) = self.inner.heartbeats.lock() {
            if ok {
                h.ok(Instant::now());
            } else {
                h.failed();
            }
        }
    }

    /// `n` messages of port `port_id` were delivered (their completions committed).
    pub fn count_delivered(&self, port_id: i64, n: usize) {
        if let Ok(mut d) = self.inner.delivered.lock() {
            *d.entry(port_id).or_default() += n as u64;
        }
    }

    /// Messages delivered per port id so far.
    fn delivered(&self) -> Option<BTreeMap<i64, u64>> {
        self.inner.delivered.lock().map(|d| d.clone()).ok()
    }

    /// A delivery loop made progress (claimed, waited, or got an outcome).
    pub fn progressed(&self, port_id: i64) {
        if let Ok(mut p) = self.inner.progress.lock() {
            p.insert(port_id, Instant::now());
        }
    }

    /// The loop of a port ended: the watchdog no longer watches it.
    pub fn forget_progress(&self, port_id: i64) {
        if let Ok(mut p) = self.inner.progress.lock() {
            p.remove(&port_id);
        }
    }

    /// The port id and stall time of a delivery loop stalled past the watchdog limit.
    fn stalled_loop(&self) -> Option<(i64, Duration)> {
        let p = self.inner.progress.lock().ok()?;
        p.iter()
            .map(|(id, t)| (*id, t.elapsed()))
            .find(|(_, d)| *d > self.inner.stall)
    }
}

/// The longest one reclaim pass may take: its statements are each bounded by the
/// server's statement timeout; this bounds a pass whose connection went silent.
const RECLAIM_TIMEOUT: Duration = Duration::from_millis(2 * mbx_messagebox::STATEMENT_TIMEOUT_MS);

/// Since when this instance's heartbeats have succeeded without a failure or a long gap
/// in between, and when the last one succeeded.
#[derive(Debug, Default, Clone, Copy)]
struct Heartbeats {
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

pub(crate) async fn heartbeat_loop(
    instance: Instance,
    liveness: Liveness,
    share: Arc<Share>,
    machine: String,
) {
    let period = Duration::from_millis(HEARTBEAT_INTERVAL_MS);
    loop {
        let id = instance.id();
        if let Some((port_id, stalled)) = liveness.stalled_loop() {
            error!(
                port_id,
                stalled_s = stalled.as_secs(),
                "a delivery loop is stalled; heartbeat withheld so another instance takes over"
            );
            if !instance.pause(period).await {
                return;
            }
            continue;
        }
        let delivered = liveness.delivered();
        // a heartbeat whose answer never comes (a connection lost without a word) is a
        // failed one, retried on another connection, not a loop stuck for good
        let beat = tokio::time::timeout(
            Heartbeats::gap_max(),
            instance
                .mbx()
                .instance_heartbeat_with(id, delivered.as_ref()),
        )
        .await
        .unwrap_or_else(|_| {
            Err(mbx_messagebox::Error::Refused(format!(
                "no answer within {:?}",
                Heartbeats::gap_max()
            )))
        });
        match beat {
            Ok(true) => {
                liveness.heartbeat_done(true);
            }
            Ok(false) => {
                warn!(instance = %id, "declared dead by another instance; re-registering");
                match register(instance.mbx(), instance.config(), &machine).await {
                    Ok(new_id) => {
                        // `send` would fail (nobody subscribes) and keep the dead id
                        instance.reregistered(new_id);
                    }
                    Err(e) => error!(error = %e, "re-registration failed"),
                }
            }
            Err(e) => {
                liveness.heartbeat_done(false);
                error!(error = %e, "heartbeat failed");
            }
        }
        match instance.mbx().instance_list().await {
            Ok(list) => {
                let alive = list
                    .iter()
                    .filter(|i| i.host == instance.config().host && i.state == InstanceState::Alive)
                    .count();
                share.set_instances(alive);
            }
            Err(e) => warn!(error = %e, "listing instances failed"),
        }
        if !instance.pause(period).await {
            return;
        }
    }
}

/// Declares instances dead whose heartbeat is older than the dead timeout and puts back
/// their work. Its own task, apart from the heartbeat: a reclaim slowed by a deep backlog
/// must neither delay this instance's heartbeat nor make it look cut off (which would
/// close the gate that lets it judge others, so nothing would ever be reclaimed).
pub(crate) async fn reclaim_loop(instance: Instance, liveness: Liveness, wake: Wakeups) {
    let period = Duration::from_millis(HEARTBEAT_INTERVAL_MS);
    loop {
        // after a database outage, others are declared dead only once this instance has
        // itself been connected for the dead timeout (the file reclaimer waits the same)
        let reclaimed = if liveness.may_judge_dead() {
            metrics::counter!("mbx_reclaim_passes_total").increment(1);
            // bounded like the heartbeat: a pass whose answer never comes is abandoned
            // (its transaction rolls back) and the next one runs on another connection
            tokio::time::timeout(
                RECLAIM_TIMEOUT,
                instance
                    .mbx()
                    .instances_reclaim_dead(DEAD_AFTER_S, instance.config().max_deliveries),
            )
            .await
            .unwrap_or_else(|_| {
                Err(mbx_messagebox::Error::Refused(format!(
                    "no answer within {RECLAIM_TIMEOUT:?}"
                )))
            })
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
                wake.notify_published();
            }
            Ok(_) => {}
            Err(e) => error!(error = %e, "reclaim failed"),
        }
        if !instance.pause(period).await {
            return;
        }
    }
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
