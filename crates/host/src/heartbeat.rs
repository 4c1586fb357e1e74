//! The heartbeat: renews this instance's heartbeat on the database clock (withheld while a
//! delivery loop is stalled: the watchdog), re-registers an instance declared dead, counts
//! the host's live instances for `lease::Share`, and puts back the claims of dead
//! instances — only once this instance has itself heartbeated on time for the dead
//! timeout ([`Heartbeats`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mbx_messagebox::instances::DEAD_AFTER_S;
use mbx_messagebox::states::InstanceState;
use tracing::{error, info, warn};

use crate::{pause, register, Shared, HEARTBEAT_INTERVAL_MS};

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
    pub(crate) fn gap_max() -> Duration {
        Duration::from_secs(DEAD_AFTER_S.unsigned_abs()) / 2
    }

    /// A heartbeat succeeded now.
    pub(crate) fn ok(&mut self, now: Instant) {
        if !matches!(self.last_ok, Some(t) if now.saturating_duration_since(t) <= Self::gap_max()) {
            self.connected_since = Some(now);
        }
        self.last_ok = Some(now);
    }

    /// A heartbeat failed.
    pub(crate) fn failed(&mut self) {
        self.connected_since = None;
    }

    /// Connected, heartbeating on time, for the dead timeout, and the last heartbeat is
    /// recent (one held up now, e.g. by a lock, counts as late).
    pub(crate) fn settled(&self, now: Instant) -> bool {
        let dead_after = Duration::from_secs(DEAD_AFTER_S.unsigned_abs());
        self.connected_since
            .is_some_and(|since| now.saturating_duration_since(since) >= dead_after)
            && self
                .last_ok
                .is_some_and(|t| now.saturating_duration_since(t) <= Self::gap_max())
    }
}

pub(crate) async fn heartbeat_loop(shared: Arc<Shared>, machine: String) {
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
