//! Throttling. Three brakes, all visible as metrics and in `mbx status`:
//! - the **publish throttle** of the host: once the undelivered, unsuspended deliveries of
//!   messages the host published reach `throttle_publish`, its receive locations slow
//!   down — FILE stops taking files, HTTP answers 503 with Retry-After — until the count
//!   falls below 90% of it. Nothing is dropped: the sources keep what was not taken.
//! - the **database-size throttle**: once the MessageBox database (`pg_database_size`,
//!   read every [`DATABASE_SIZE_CHECK_INTERVAL`]) reaches the host's threshold (its own,
//!   else the group's), its receive locations stop the same way until the size is below
//!   90% of it. It holds back only new work: deliveries (sending drains), a
//!   solicit-response port's responses and the replies to waiting two-way clients
//!   (published with the completion of a delivery) and the forwarded-in inbox go on, or
//!   nothing could ever drain.
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

use crate::instance::Instance;

/// Body bytes in flight per instance before it claims no more (256MiB).
pub const INFLIGHT_BYTES_MAX: i64 = 256 * 1024 * 1024;

/// How often the publish backlog is counted.
pub const PUBLISH_CHECK_INTERVAL_MS: u64 = 500;

/// How often the database's size is read (`pg_database_size` walks the database's
/// folder: too costly for every 500 ms tick of every instance).
pub const DATABASE_SIZE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The publish and database-size throttles release below this share of the threshold.
const RELEASE_RATIO: f64 = 0.9;

#[derive(Debug)]
pub(crate) struct Throttle {
    publish_max: AtomicI64,
    inflight_max: AtomicI64,
    publishing_throttled: AtomicBool,
    /// The threshold on the database's size in bytes; 0: off.
    database_size_max: AtomicI64,
    database_size_throttled: AtomicBool,
    /// Notified when the publish or the database-size throttle lets go.
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
            database_size_max: AtomicI64::new(0),
            database_size_throttled: AtomicBool::new(false),
            publish_released: Notify::new(),
            inflight_msgs: AtomicI64::new(0),
            inflight_bytes: AtomicI64::new(0),
            inflight_freed: Notify::new(),
        }
    }

    /// Whether the publish throttle (this host's backlog) is on.
    pub fn publish_throttled(&self) -> bool {
        self.publishing_throttled.load(Ordering::Acquire)
    }

    /// Whether the database-size throttle is on.
    pub fn database_size_throttled(&self) -> bool {
        self.database_size_throttled.load(Ordering::Acquire)
    }

    /// Whether receive locations must hold back now: the publish or the database-size
    /// throttle is on.
    pub fn receive_throttled(&self) -> bool {
        self.publish_throttled() || self.database_size_throttled()
    }

    /// Why receive locations hold back, for a 503's body (`None`: they do not).
    pub fn receive_throttled_why(&self) -> Option<&'static str> {
        if self.database_size_throttled() {
            Some("database-size throttle on: the MessageBox database is past its size threshold; retry")
        } else if self.publish_throttled() {
            Some("publish throttle on: the backlog of this host is past its threshold; retry")
        } else {
            None
        }
    }

    /// Waits until the publish throttle is off (the forwarded-in inbox: the database-size
    /// throttle does not hold it).
    pub async fn publish_allowed(&self) {
        self.released_when(|t| !t.publish_throttled()).await
    }

    /// Waits until receive locations may take messages again.
    pub async fn receive_allowed(&self) {
        self.released_when(|t| !t.receive_throttled()).await
    }

    async fn released_when(&self, allowed: impl Fn(&Self) -> bool) {
        while !allowed(self) {
            let released = self.publish_released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if allowed(self) {
                return;
            }
            // the monitor wakes us; the timeout only guards against a missed wake-up
            let _ = tokio::time::timeout(Duration::from_secs(1), released).await;
        }
    }

    /// Decides the database-size throttle from the last size read (`None`: not known
    /// yet; the throttle stays as it is) against the threshold (0: off); the same
    /// hysteresis as the publish throttle. Returns whether it changed.
    fn judge_database_size(&self, size: Option<i64>) -> bool {
        let max = self.database_size_max.load(Ordering::Acquire);
        let was = self.database_size_throttled();
        let now = match size {
            _ if max <= 0 => false,
            None => was,
            Some(size) if was => (size as f64) >= (max as f64) * RELEASE_RATIO,
            Some(size) => size >= max,
        };
        if now != was {
            self.database_size_throttled.store(now, Ordering::Release);
            if !now {
                self.publish_released.notify_waiters();
            }
        }
        now != was
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

    /// What the instance is throttled on, as `mbx status` shows it: the kinds that are
    /// on, comma-separated (`publish`, `database-size`, `inflight`).
    fn state(&self) -> Option<String> {
        let kinds: Vec<&str> = [
            (self.publish_throttled(), "publish"),
            (self.database_size_throttled(), "database-size"),
            (self.inflight_throttled(), "inflight"),
        ]
        .into_iter()
        .filter_map(|(on, kind)| on.then_some(kind))
        .collect();
        (!kinds.is_empty()).then(|| kinds.join(","))
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
/// publish backlog (up to the threshold), flips the publish throttle; every
/// [`DATABASE_SIZE_CHECK_INTERVAL`] reads the database's size, and on every tick judges
/// the database-size throttle by the last size read (a changed threshold applies at
/// once); exports the gauges and records the instance's throttle state when it changes.
pub(crate) async fn monitor_loop(instance: Instance, throttle: Arc<Throttle>) {
    let mut recorded: Option<String> = None;
    let mut stopping = instance.stopping();
    let mut database_size: Option<i64> = None;
    let mut size_read_at: Option<tokio::time::Instant> = None;
    loop {
        if size_read_at.is_none_or(|at| at.elapsed() >= DATABASE_SIZE_CHECK_INTERVAL) {
            // read even while off: the gauge shows the growth before a threshold is set
            match instance.mbx().database_size().await {
                Ok(size) => {
                    metrics::gauge!("mbx_database_size_bytes").set(size as f64);
                    database_size = Some(size);
                    size_read_at = Some(tokio::time::Instant::now());
                }
                Err(e) => warn!(error = %e, "reading the database's size failed"),
            }
        }
        match instance.mbx().host_limits(&instance.config().host).await {
            Ok(limits) => {
                throttle
                    .publish_max
                    .store(limits.throttle_publish, Ordering::Release);
                throttle
                    .inflight_max
                    .store(limits.throttle_inflight, Ordering::Release);
                let size_max = limits.throttle_database_size.unwrap_or(0);
                throttle
                    .database_size_max
                    .store(size_max, Ordering::Release);
                if throttle.judge_database_size(database_size) {
                    if throttle.database_size_throttled() {
                        warn!(
                            database_size,
                            threshold = size_max,
                            "database-size throttle on: receive locations stop taking messages"
                        );
                    } else {
                        info!(
                            database_size,
                            threshold = size_max,
                            "database-size throttle off"
                        );
                    }
                }
                match instance
                    .mbx()
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
        metrics::gauge!("mbx_throttled", "kind" => "database-size")
            .set(f64::from(u8::from(throttle.database_size_throttled())));
        metrics::gauge!("mbx_inflight_messages")
            .set(throttle.inflight_msgs.load(Ordering::Acquire) as f64);
        let state = throttle.state();
        if state != recorded {
            match instance
                .mbx()
                .instance_set_throttle(instance.id(), state.as_deref())
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
    fn the_database_size_throttle_engages_at_the_threshold_and_releases_below_ninety_percent() {
        let t = Throttle::new(100, 10);
        assert!(!t.judge_database_size(Some(1 << 40)), "off by default");
        t.database_size_max.store(1000, Ordering::Release);
        assert!(!t.judge_database_size(None), "no size read yet");
        assert!(!t.judge_database_size(Some(999)) && !t.receive_throttled());
        assert!(t.judge_database_size(Some(1000)) && t.receive_throttled());
        assert!(
            !t.publish_throttled(),
            "the publish throttle is another brake"
        );
        assert_eq!(t.state().as_deref(), Some("database-size"));
        assert!(
            !t.judge_database_size(None),
            "a failed read changes nothing"
        );
        assert!(!t.judge_database_size(Some(900)), "still at 90%");
        assert!(t.judge_database_size(Some(899)) && !t.receive_throttled());
        assert!(t.judge_database_size(Some(5000)));
        t.database_size_max.store(0, Ordering::Release);
        assert!(
            t.judge_database_size(Some(5000)) && !t.receive_throttled(),
            "set off"
        );
        t.judge_publish(100);
        t.database_size_max.store(10, Ordering::Release);
        t.judge_database_size(Some(10));
        assert_eq!(t.state().as_deref(), Some("publish,database-size"));
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
