//! Throttling. Two brakes, both visible as metrics and in `mbx status`:
//! - the **publish throttle** of the host: once the undelivered, unsuspended deliveries of
//!   messages the host published reach `throttle_publish`, its receive locations slow
//!   down — FILE stops taking files, HTTP answers 503 with Retry-After — until the count
//!   falls below 90% of it. Nothing is dropped: the sources keep what was not taken.
//! - the **delivery throttle** of the instance: claims are capped so that no more than
//!   `throttle_inflight` messages and [`INFLIGHT_BYTES_MAX`] bytes of bodies are in flight
//!   (claimed, outcome not yet recorded); at the cap the instance claims nothing until
//!   in-flight work drains.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mbx_messagebox::delivery::ClaimLimits;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::Shared;

/// Body bytes in flight per instance before it claims no more (256MiB).
pub const INFLIGHT_BYTES_MAX: i64 = 256 * 1024 * 1024;

/// How often the publish backlog is counted.
pub const PUBLISH_CHECK_INTERVAL_MS: u64 = 500;

/// The publish throttle releases below this share of the threshold.
const RELEASE_RATIO: f64 = 0.9;

#[derive(Debug)]
pub(crate) struct Throttle {
    publish_max: AtomicI64,
    inflight_max: AtomicI64,
    publishing_throttled: AtomicBool,
    publish_released: Notify,
    inflight_msgs: AtomicI64,
    inflight_bytes: AtomicI64,
    inflight_freed: Notify,
}

impl Throttle {
    pub fn new(publish_max: i64, inflight_max: i64) -> Self {
        Self {
            publish_max: AtomicI64::new(publish_max),
            inflight_max: AtomicI64::new(inflight_max),
            publishing_throttled: AtomicBool::new(false),
            publish_released: Notify::new(),
            inflight_msgs: AtomicI64::new(0),
            inflight_bytes: AtomicI64::new(0),
            inflight_freed: Notify::new(),
        }
    }

    /// Whether receive locations must hold back now.
    pub fn publish_throttled(&self) -> bool {
        self.publishing_throttled.load(Ordering::Acquire)
    }

    /// Waits until the publish throttle is off.
    pub async fn publish_allowed(&self) {
        while self.publish_throttled() {
            let released = self.publish_released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !self.publish_throttled() {
                return;
            }
            // the monitor wakes us; the timeout only guards against a missed wake-up
            let _ = tokio::time::timeout(Duration::from_secs(1), released).await;
        }
    }

    /// Decides the publish throttle from a backlog count (hysteresis: on at the
    /// threshold, off below 90% of it); returns whether it changed.
    fn judge_publish(&self, backlog: i64) -> bool {
        let max = self.publish_max.load(Ordering::Acquire);
        let was = self.publish_throttled();
        let now = if was {
            (backlog as f64) >= (max as f64) * RELEASE_RATIO
        } else {
            backlog >= max
        };
        if now != was {
            self.publishing_throttled.store(now, Ordering::Release);
            if !now {
                self.publish_released.notify_waiters();
            }
        }
        now != was
    }

    /// Reserves room for the next claim (at most `base`, at most what the caps leave) and
    /// returns the claim's limits with the reservation, or `None` at a cap. Reserving
    /// before claiming keeps concurrent loops from each seeing the same free room; after
    /// the claim, [`InFlight::settle`] keeps what was claimed and gives the rest back.
    pub fn reserve(self: &Arc<Self>, base: ClaimLimits) -> Option<(ClaimLimits, InFlight)> {
        let take = |counter: &AtomicI64, cap: i64, want: i64| -> Option<i64> {
            counter
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                    let room = cap - cur;
                    (room > 0).then(|| cur + room.min(want))
                })
                .ok()
                .map(|before| (cap - before).min(want))
        };
        let msgs = take(
            &self.inflight_msgs,
            self.inflight_max.load(Ordering::Acquire),
            base.max_count.max(1),
        )?;
        let Some(bytes) = take(
            &self.inflight_bytes,
            INFLIGHT_BYTES_MAX,
            base.max_bytes.max(1),
        ) else {
            self.inflight_msgs.fetch_sub(msgs, Ordering::AcqRel);
            return None;
        };
        Some((
            ClaimLimits {
                max_count: msgs,
                max_bytes: bytes,
            },
            InFlight {
                throttle: self.clone(),
                msgs,
                bytes,
            },
        ))
    }

    /// Whether the delivery throttle holds claims back now.
    pub fn inflight_throttled(&self) -> bool {
        self.inflight_msgs.load(Ordering::Acquire) >= self.inflight_max.load(Ordering::Acquire)
            || self.inflight_bytes.load(Ordering::Acquire) >= INFLIGHT_BYTES_MAX
    }

    /// Waits until in-flight work drains a little (or a short while passed).
    pub async fn inflight_drained(&self) {
        let freed = self.inflight_freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if self.inflight_throttled() {
            let _ = tokio::time::timeout(Duration::from_millis(100), freed).await;
        }
    }

    fn state(&self) -> Option<&'static str> {
        match (self.publish_throttled(), self.inflight_throttled()) {
            (false, false) => None,
            (true, false) => Some("publish"),
            (false, true) => Some("inflight"),
            (true, true) => Some("publish,inflight"),
        }
    }
}

/// In-flight work of one claim: reserved by [`Throttle::reserve`], settled to what was
/// claimed, given back when dropped (its outcomes recorded, or given up on).
pub(crate) struct InFlight {
    throttle: Arc<Throttle>,
    msgs: i64,
    bytes: i64,
}

impl InFlight {
    /// Keeps exactly what the claim took (the first delivery of a claim may be larger
    /// than the byte room: it is always claimed) and gives the rest back.
    pub fn settle(&mut self, msgs: usize, bytes: i64) {
        let msgs = i64::try_from(msgs).unwrap_or(i64::MAX);
        self.throttle
            .inflight_msgs
            .fetch_add(msgs - self.msgs, Ordering::AcqRel);
        self.throttle
            .inflight_bytes
            .fetch_add(bytes - self.bytes, Ordering::AcqRel);
        (self.msgs, self.bytes) = (msgs, bytes);
        self.throttle.inflight_freed.notify_waiters();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.throttle
            .inflight_msgs
            .fetch_sub(self.msgs, Ordering::AcqRel);
        self.throttle
            .inflight_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
        self.throttle.inflight_freed.notify_waiters();
    }
}

/// Every [`PUBLISH_CHECK_INTERVAL_MS`]: refreshes the host's thresholds, counts the
/// publish backlog (up to the threshold), flips the publish throttle, exports the gauges
/// and records the instance's throttle state when it changes.
pub(crate) async fn monitor_loop(shared: Arc<Shared>) {
    let throttle = shared.throttle.clone();
    let mut recorded: Option<&'static str> = None;
    let mut stopping = shared.stopping.clone();
    loop {
        match shared.mbx.host_limits(&shared.config.host).await {
            Ok(limits) => {
                throttle
                    .publish_max
                    .store(limits.throttle_publish, Ordering::Release);
                throttle
                    .inflight_max
                    .store(limits.throttle_inflight, Ordering::Release);
                match shared
                    .mbx
                    .publish_backlog(limits.host_id, limits.throttle_publish)
                    .await
                {
                    Ok(backlog) => {
                        metrics::gauge!("mbx_publish_backlog").set(backlog as f64);
                        if throttle.judge_publish(backlog) {
                            if throttle.publish_throttled() {
                                warn!(
                                    backlog,
                                    threshold = limits.throttle_publish,
                                    "publish throttle on: receive locations slow down"
                                );
                            } else {
                                info!(backlog, "publish throttle off");
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "counting the publish backlog failed"),
                }
            }
            Err(e) => warn!(error = %e, "reading the host's throttling thresholds failed"),
        }
        metrics::gauge!("mbx_throttled", "kind" => "publish")
            .set(f64::from(u8::from(throttle.publish_throttled())));
        metrics::gauge!("mbx_throttled", "kind" => "inflight")
            .set(f64::from(u8::from(throttle.inflight_throttled())));
        metrics::gauge!("mbx_inflight_messages")
            .set(throttle.inflight_msgs.load(Ordering::Acquire) as f64);
        let state = throttle.state();
        if state != recorded {
            match shared
                .mbx
                .instance_set_throttle(shared.instance_id(), state)
                .await
            {
                Ok(()) => recorded = state,
                Err(e) => warn!(error = %e, "recording the throttle state failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(PUBLISH_CHECK_INTERVAL_MS)) => {}
            _ = stopping.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publish_throttle_engages_at_the_threshold_and_releases_below_ninety_percent() {
        let t = Throttle::new(100, 10);
        assert!(!t.judge_publish(99) && !t.publish_throttled());
        assert!(t.judge_publish(100) && t.publish_throttled());
        assert!(!t.judge_publish(90), "still at 90%");
        assert!(t.publish_throttled());
        assert!(t.judge_publish(89) && !t.publish_throttled());
    }

    #[test]
    fn claims_are_capped_by_what_is_in_flight() {
        let t = Arc::new(Throttle::new(100, 150));
        let base = ClaimLimits {
            max_count: 100,
            max_bytes: 1 << 30,
        };
        let (first, mut a) = t.reserve(base).unwrap();
        assert_eq!(first.max_count, 100);
        assert_eq!(first.max_bytes, INFLIGHT_BYTES_MAX, "capped by bytes too");
        a.settle(100, 1000);
        let (second, mut b) = t.reserve(base).unwrap();
        assert_eq!(second.max_count, 50, "only the room left");
        assert!(
            t.reserve(base).is_none() && t.inflight_throttled(),
            "reserved, not yet claimed"
        );
        b.settle(10, 1000);
        assert_eq!(t.reserve(base).map(|(l, _)| l.max_count), Some(40));
        drop(a);
        drop(b);
        assert_eq!(t.reserve(base).map(|(l, _)| l.max_count), Some(100));
        let (_, mut big) = t.reserve(base).unwrap();
        big.settle(1, INFLIGHT_BYTES_MAX);
        assert!(t.reserve(base).is_none(), "at the byte cap");
        drop(big);
        assert!(!t.inflight_throttled());
    }
}
