//! Holding a lease: a [`Tenure`] renews it every TTL/3 on its own task
//! and tells its holder whether it may still act — not once the lease is lost, nor once
//! the last successful renewal is older than TTL − margin on this process's monotonic
//! clock (a paused or partitioned holder stops before its lease can expire).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mbx_messagebox::ordered::{LEASE_MARGIN_MS, LEASE_TTL_MS};
use mbx_messagebox::MessageBox;
use tokio::task::JoinHandle;
use tracing::warn;
use uuid::Uuid;

/// What a lease belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Leased {
    Port(i64),
    Location(i64),
}

impl Leased {
    pub async fn acquire(
        self,
        mbx: &MessageBox,
        instance: Uuid,
    ) -> mbx_messagebox::Result<Option<i64>> {
        match self {
            Leased::Port(id) => mbx.port_lease_acquire(instance, id, LEASE_TTL_MS).await,
            Leased::Location(id) => mbx.location_lease_acquire(instance, id, LEASE_TTL_MS).await,
        }
    }

    async fn renew(
        self,
        mbx: &MessageBox,
        instance: Uuid,
        epoch: i64,
    ) -> mbx_messagebox::Result<bool> {
        match self {
            Leased::Port(id) => {
                mbx.port_lease_renew(instance, id, epoch, LEASE_TTL_MS)
                    .await
            }
            Leased::Location(id) => {
                mbx.location_lease_renew(instance, id, epoch, LEASE_TTL_MS)
                    .await
            }
        }
    }

    pub async fn release(
        self,
        mbx: &MessageBox,
        instance: Uuid,
        epoch: i64,
    ) -> mbx_messagebox::Result<()> {
        match self {
            Leased::Port(id) => mbx.port_lease_release(instance, id, epoch).await,
            Leased::Location(id) => mbx.location_lease_release(instance, id, epoch).await,
        }
    }
}

/// One holding of a lease at one epoch; the renewer stops when it is dropped.
pub(crate) struct Tenure {
    clock: Instant,
    renewed_ms: Arc<AtomicU64>,
    lost: Arc<AtomicBool>,
    renewer: JoinHandle<()>,
}

/// Not lost, and renewed less than TTL − margin ago.
fn may_act(clock: Instant, renewed_ms: &AtomicU64, lost: &AtomicBool) -> bool {
    !lost.load(Ordering::Acquire)
        && millis_since(clock).saturating_sub(renewed_ms.load(Ordering::Acquire))
            < (LEASE_TTL_MS - LEASE_MARGIN_MS) as u64
}

fn millis_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Tenure {
    /// Starts renewing a lease just acquired at `epoch` by a request sent at `asked`: the
    /// lease's expiry counts from a moment after that, so the holder's own view (TTL −
    /// margin from `asked`) ends before the lease can expire, however long the answer took.
    pub fn start(
        mbx: &MessageBox,
        leased: Leased,
        instance: Uuid,
        epoch: i64,
        asked: Instant,
    ) -> Self {
        let clock = asked;
        let renewed_ms = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = {
            let (mbx, renewed_ms, lost) = (mbx.clone(), renewed_ms.clone(), lost.clone());
            tokio::spawn(async move {
                let period = Duration::from_millis((LEASE_TTL_MS / 3) as u64);
                loop {
                    tokio::time::sleep(period).await;
                    let asked = millis_since(clock);
                    match leased.renew(&mbx, instance, epoch).await {
                        Ok(true) => renewed_ms.store(asked, Ordering::Release),
                        Ok(false) => {
                            lost.store(true, Ordering::Release);
                            return;
                        }
                        Err(e) => warn!(?leased, error = %e, "lease renewal failed"),
                    }
                }
            })
        };
        Self {
            clock,
            renewed_ms,
            lost,
            renewer,
        }
    }

    /// Whether the holder may still hand work over.
    pub fn may_act(&self) -> bool {
        may_act(self.clock, &self.renewed_ms, &self.lost)
    }

    /// [`Self::may_act`] for a send adapter to check right before each change of its
    /// endpoint (it outlives this holding: once the holding ends, it says no).
    pub fn fence(&self) -> mbx_adapters::Fence {
        let (clock, renewed_ms, lost) = (self.clock, self.renewed_ms.clone(), self.lost.clone());
        mbx_adapters::Fence::new(move || may_act(clock, &renewed_ms, &lost))
    }

    /// A future that resolves once the holder may no longer act (owns what it needs, so
    /// it can be a receive adapter's shutdown signal).
    pub fn ended_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (clock, renewed_ms, lost) = (self.clock, self.renewed_ms.clone(), self.lost.clone());
        async move {
            loop {
                if !may_act(clock, &renewed_ms, &lost) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Drop for Tenure {
    fn drop(&mut self) {
        self.renewer.abort();
        // a fence handed out lives on in an adapter: it must say no from now on
        self.lost.store(true, Ordering::Release);
    }
}

/// Spreads ordered ports over the instances of a host: an instance tries to take a free
/// lease only while it holds fewer than its fair share (ordered ports ÷ live instances,
/// rounded up), and hands one back (a graceful release, taken over at once) while it holds
/// more — so a newly started instance gets its part. It counts the ports it really holds
/// (a set, not a counter of reservations: concurrent attempts may overshoot the share for a
/// moment, and the yields even that out).
#[derive(Default, Debug)]
pub(crate) struct Share {
    held: std::sync::Mutex<std::collections::HashSet<i64>>,
    ordered_ports: AtomicU64,
    instances: AtomicU64,
}

impl Share {
    pub fn set_ordered_ports(&self, n: usize) {
        self.ordered_ports.store(n as u64, Ordering::Release);
    }

    pub fn set_instances(&self, n: usize) {
        self.instances.store(n as u64, Ordering::Release);
    }

    /// Live instances of this host (at least 1).
    pub fn instances(&self) -> u64 {
        self.instances.load(Ordering::Acquire).max(1)
    }

    fn fair(&self) -> usize {
        let ports = self.ordered_ports.load(Ordering::Acquire);
        let instances = self.instances.load(Ordering::Acquire).max(1);
        usize::try_from(ports.div_ceil(instances).max(1)).unwrap_or(usize::MAX)
    }

    fn with_held<T>(&self, f: impl FnOnce(&mut std::collections::HashSet<i64>) -> T) -> T {
        match self.held.lock() {
            Ok(mut held) => f(&mut held),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Whether to try for a free lease: below the fair share.
    pub fn may_take(&self) -> bool {
        let fair = self.fair();
        self.with_held(|h| h.len() < fair)
    }

    /// A lease on `port` was taken.
    pub fn taken(&self, port: i64) {
        self.with_held(|h| h.insert(port));
    }

    /// The lease on `port` was let go (or lost).
    pub fn let_go(&self, port: i64) {
        self.with_held(|h| h.remove(&port));
    }

    /// Whether the holder of `port` should hand it back to even out the load; at most
    /// `held − fair` holders get true, and `port` no longer counts as held then.
    pub fn should_yield(&self, port: i64) -> bool {
        let fair = self.fair();
        self.with_held(|h| h.len() > fair && h.remove(&port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_takes_up_to_its_fair_share_and_yields_the_excess() {
        let share = Share::default();
        share.set_ordered_ports(5);
        share.set_instances(1);
        for port in 0..5 {
            assert!(share.may_take(), "alone it takes every port");
            share.taken(port);
        }
        assert!(!share.may_take());
        share.set_instances(2); // a second instance joins: fair share is 3
        assert!(share.should_yield(0));
        assert!(share.should_yield(1));
        assert!(!share.should_yield(2), "only the excess yields");
        assert!(!share.may_take(), "and it does not take them back");
        share.let_go(3); // a lease lost
        assert!(share.may_take());
        share.let_go(3); // letting go twice counts once
        share.taken(3);
        assert!(!share.may_take());
    }
}
