//! One claim per round for all of an instance's unordered send ports.
//!
//! The dispatcher ([`dispatch_loop`]) is the instance's only claimer of unordered work: each
//! round it asks the MessageBox for the due work of every port whose worker is free — one
//! statement, whatever the number of ports ([`mbx_messagebox::MessageBox::claim`]) — and
//! hands each port its batch. A port's worker ([`port_worker`]) sends the batch through
//! the port's adapter, records the outcomes on a task while it takes the next batch (at
//! most [`COMPLETIONS_IN_FLIGHT`] behind), and tells the dispatcher it is free again.
//!
//! Idle, the dispatcher sleeps until a publish is notified, a worker is free again, or the
//! earliest scheduled retry of its ports falls due (at most the poll interval). Ordered
//! ports and ports ordered by a property keep their own loops: their claims are fenced on
//! leases (`delivery::ordered_port_loop`, `keyed::keyed_port_loop`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mbx_messagebox::config::SendPort;
use mbx_messagebox::delivery::{ClaimLimits, ClaimedDelivery};
use mbx_messagebox::subscribers::{Subscriber, Want};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, warn};
use uuid::Uuid;

use crate::delivery::{record, retry_db, send_batch, Delivering, COMPLETIONS_IN_FLIGHT};
use crate::instance::Instance;
use crate::throttle::InFlight;

/// A batch handed to a port's worker, with its share of the delivery throttle (given back
/// once its outcomes are recorded).
pub(crate) struct Work {
    instance: Uuid,
    batch: Vec<ClaimedDelivery>,
    in_flight: InFlight,
}

/// A port the dispatcher claims for.
struct Member {
    port: Arc<SendPort>,
    /// What one claim takes for it at most (before the delivery throttle).
    base: ClaimLimits,
    /// Its worker is free: it waits for a batch.
    free: bool,
    to_worker: mpsc::Sender<Work>,
}

/// The ports of an instance's dispatcher, delivering with their workers.
#[derive(Default)]
pub(crate) struct Dispatcher {
    /// By port id, in id order (the round-robin order of the delivery throttle's room).
    members: Mutex<BTreeMap<i64, Member>>,
    /// A worker joined, left or is free again.
    changed: Notify,
}

impl Dispatcher {
    /// Adds a port: the dispatcher claims for it from its next round on, and hands the
    /// batches to the receiver returned.
    fn join(&self, port: Arc<SendPort>, base: ClaimLimits) -> mpsc::Receiver<Work> {
        let (tx, rx) = mpsc::channel(1);
        if let Ok(mut m) = self.members.lock() {
            m.insert(
                port.id,
                Member {
                    port,
                    base,
                    free: true,
                    to_worker: tx,
                },
            );
        }
        self.changed.notify_waiters();
        rx
    }

    /// Removes a port: the dispatcher claims nothing more for it.
    fn leave(&self, port_id: i64) {
        if let Ok(mut m) = self.members.lock() {
            m.remove(&port_id);
        }
    }

    /// The port's worker is free for its next batch.
    fn free(&self, port_id: i64) {
        if let Ok(mut m) = self.members.lock() {
            if let Some(member) = m.get_mut(&port_id) {
                member.free = true;
            }
        }
        self.changed.notify_waiters();
    }

    /// The ports whose workers are free, starting after `after` and wrapping around, so
    /// the delivery throttle's room goes round the ports rather than always to the first.
    fn free_members(&self, after: i64) -> Vec<(Arc<SendPort>, ClaimLimits)> {
        let Ok(m) = self.members.lock() else {
            return Vec::new();
        };
        let free =
            |(_, member): (&i64, &Member)| member.free.then(|| (member.port.clone(), member.base));
        m.range(after + 1..)
            .filter_map(free)
            .chain(m.range(..=after).filter_map(free))
            .collect()
    }

    /// Hands a port its batch; gives the work back when the port left meanwhile.
    fn hand(&self, port_id: i64, work: Work) -> Result<(), Work> {
        let Ok(mut m) = self.members.lock() else {
            return Err(work);
        };
        let Some(member) = m.get_mut(&port_id) else {
            return Err(work);
        };
        match member.to_worker.try_send(work) {
            Ok(()) => {
                member.free = false;
                Ok(())
            }
            Err(e) => Err(e.into_inner()),
        }
    }
}

/// The instance's claimer of unordered work: one claim per round for every free port.
pub(crate) async fn dispatch_loop(delivering: Delivering, dispatcher: Arc<Dispatcher>) {
    let mut stopping = delivering.instance().stopping();
    // the last port the delivery throttle's room reached
    let mut after = i64::MIN;
    loop {
        if *stopping.borrow() {
            return;
        }
        // register for the wake-ups before claiming, so none in between is missed
        let published = delivering.published();
        let changed = dispatcher.changed.notified();
        tokio::pin!(published, changed);
        published.as_mut().enable();
        changed.as_mut().enable();
        let free = dispatcher.free_members(after);
        if free.is_empty() {
            tokio::select! {
                _ = &mut changed => {}
                _ = stopping.changed() => {}
            }
            continue;
        }
        let mut wants = Vec::with_capacity(free.len());
        let mut reserved: HashMap<i64, InFlight> = HashMap::with_capacity(free.len());
        for (port, base) in &free {
            delivering.liveness().progressed(port.id);
            // the delivery throttle: claim no more than in-flight work leaves room for
            if let Some((limits, in_flight)) = delivering.throttle().reserve(*base) {
                wants.push(Want {
                    subscriber: Subscriber::SendPort(port.id),
                    limits,
                });
                reserved.insert(port.id, in_flight);
                after = port.id;
            }
        }
        if wants.is_empty() {
            tokio::select! {
                _ = delivering.throttle().inflight_drained() => {}
                _ = stopping.changed() => {}
            }
            continue;
        }
        let claimed = claim(&delivering, &wants).await;
        let Some((instance, claimed)) = claimed else {
            drop(reserved);
            if !delivering
                .instance()
                .pause(delivering.instance().config().poll_interval)
                .await
            {
                return;
            }
            continue;
        };
        let any = !claimed.is_empty();
        for (subscriber, batch) in claimed.work {
            let Subscriber::SendPort(port_id) = subscriber;
            let Some(mut in_flight) = reserved.remove(&port_id) else {
                continue;
            };
            in_flight.settle(batch.len(), batch.iter().map(|d| d.body_size).sum());
            let work = Work {
                instance,
                batch,
                in_flight,
            };
            if let Err(work) = dispatcher.hand(port_id, work) {
                give_back(&delivering, work).await;
            }
        }
        // the ports that got nothing give their room back
        drop(reserved);
        if any {
            // the ports served are busy; the others had nothing: wait for a worker to be
            // free or for a publish
            tokio::select! {
                _ = &mut changed => {}
                _ = &mut published => {}
                _ = stopping.changed() => {}
            }
            continue;
        }
        // nothing to claim: wait for a publish, a worker, or the next retry's due time
        let subscribers: Vec<Subscriber> = free
            .iter()
            .map(|(p, _)| Subscriber::SendPort(p.id))
            .collect();
        let idle = idle_wait(delivering.instance(), &subscribers).await;
        tokio::select! {
            _ = &mut published => {}
            _ = &mut changed => {}
            _ = tokio::time::sleep(idle) => {}
            _ = stopping.changed() => {}
        }
    }
}

/// One claim for `wants`. When it fails, whatever it may have claimed is given back (a
/// claim whose answer was lost may have committed); then, if it was for several ports,
/// each is claimed on its own this round, so one port whose claim cannot succeed (say its
/// tracking insert meets a full disk) does not hold back the others. `None` when nothing
/// could be claimed.
async fn claim(
    delivering: &Delivering,
    wants: &[Want],
) -> Option<(Uuid, mbx_messagebox::subscribers::Claimed)> {
    let instance = delivering.instance().id();
    let started = Instant::now();
    match claim_once(delivering, instance, wants).await {
        Ok(claimed) => {
            if !claimed.is_empty() {
                debug!(
                    ports = wants.len(),
                    claimed = claimed.len(),
                    claim_ms = started.elapsed().as_millis() as u64,
                    "claimed"
                );
            }
            Some((instance, claimed))
        }
        Err(e) if wants.len() > 1 => {
            warn!(ports = wants.len(), error = %e, "claim failed; claiming port by port");
            let mut claimed = mbx_messagebox::subscribers::Claimed::default();
            let mut any = false;
            for want in wants {
                match claim_once(delivering, instance, std::slice::from_ref(want)).await {
                    Ok(one) => {
                        any = true;
                        claimed.work.extend(one.work);
                    }
                    Err(e) => warn!(subscriber = ?want.subscriber, error = %e, "claim failed"),
                }
            }
            any.then_some((instance, claimed))
        }
        Err(e) => {
            warn!(ports = wants.len(), error = %e, "claim failed");
            None
        }
    }
}

/// One claim statement under a new token; after an error, what the token may hold is
/// given back.
async fn claim_once(
    delivering: &Delivering,
    instance: Uuid,
    wants: &[Want],
) -> Result<mbx_messagebox::subscribers::Claimed, mbx_messagebox::Error> {
    let token = Uuid::new_v4();
    let claimed = delivering
        .instance()
        .mbx()
        .claim(instance, wants, token)
        .await;
    if let Err(e) = &claimed {
        if e.is_retryable() {
            retry_db(
                delivering.instance(),
                "(dispatcher)",
                "giving back an unknown claim",
                || {
                    delivering
                        .instance()
                        .mbx()
                        .deliveries_release_token(instance, token)
                },
            )
            .await;
        }
    }
    claimed
}

/// Gives back a batch its port can no longer take (the port stopped meanwhile).
async fn give_back(delivering: &Delivering, work: Work) {
    let claims: Vec<(i64, Uuid)> = work
        .batch
        .iter()
        .map(|d| (d.delivery_id, d.claim_token))
        .collect();
    if claims.is_empty() {
        return;
    }
    let port = work.batch[0].port_name.clone();
    retry_db(
        delivering.instance(),
        &port,
        "giving back claims of a stopped port",
        || {
            delivering
                .instance()
                .mbx()
                .deliveries_release(work.instance, &claims)
        },
    )
    .await;
}

/// How long a dispatcher that claimed nothing sleeps: until the earliest scheduled retry
/// of its free ports falls due, at most the poll interval (which also stands in when the
/// MessageBox cannot say; the claim that follows reports the error).
async fn idle_wait(instance: &Instance, subscribers: &[Subscriber]) -> Duration {
    let poll = instance.config().poll_interval;
    match instance.mbx().next_due(subscribers).await {
        Ok(Some(due)) => due.min(poll),
        Ok(None) => poll,
        Err(e) => {
            debug!(error = %e, "next due time unknown; polling");
            poll
        }
    }
}

/// The worker of one started unordered send port: sends the batches the dispatcher hands
/// it and records their outcomes. On stop it finishes the batch in hand, records every
/// outcome it has, and gives back a batch handed to it meanwhile.
pub(crate) async fn port_worker(
    delivering: Delivering,
    dispatcher: Arc<Dispatcher>,
    port: SendPort,
    mut stop: watch::Receiver<bool>,
) {
    crate::metrics_catalog::port_started(&port.name);
    // a forwarding port sends a whole claim in one transaction of the other group: larger
    // batches amortise that round trip and commit
    let transports = delivering.transports(&port);
    let base = ClaimLimits {
        max_count: if transports.forwards() {
            delivering.instance().config().claim_batch * crate::forward::CLAIM_FACTOR
        } else {
            delivering.instance().config().claim_batch
        },
        max_bytes: delivering.instance().config().claim_bytes,
    };
    delivering.liveness().progressed(port.id);
    let port = Arc::new(port);
    let mut work = dispatcher.join(port.clone(), base);
    let mut stopping = delivering.instance().stopping();
    let mut recording = tokio::task::JoinSet::new();
    loop {
        if *stop.borrow() || *stopping.borrow() {
            break;
        }
        tokio::select! {
            handed = work.recv() => {
                let Some(Work { instance, batch, in_flight }) = handed else { break };
                delivering.liveness().progressed(port.id);
                let sent = send_batch(&delivering, &port, &transports, batch).await;
                while recording.len() >= COMPLETIONS_IN_FLIGHT {
                    recording.join_next().await;
                }
                let (recorder, recorded) = (delivering.clone(), port.clone());
                recording.spawn(async move {
                    record(&recorder, &recorded, instance, sent).await;
                    drop(in_flight);
                });
                dispatcher.free(port.id);
            }
            // recorded outcomes may schedule a retry sooner than the dispatcher's sleep
            Some(_) = recording.join_next(), if !recording.is_empty() => {
                dispatcher.free(port.id);
            }
            _ = stop.changed() => {}
            _ = stopping.changed() => {}
        }
    }
    dispatcher.leave(port.id);
    work.close();
    while let Ok(handed) = work.try_recv() {
        give_back(&delivering, handed).await;
    }
    // outcomes already known are recorded before the worker ends
    while recording.join_next().await.is_some() {}
    delivering.liveness().forget_progress(port.id);
}
