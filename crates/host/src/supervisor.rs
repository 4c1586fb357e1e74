//! The supervisor: starts and stops the loops of the host's started send ports and
//! enabled receive locations as the configuration changes.

use std::collections::HashMap;
use std::sync::Arc;

use mbx_messagebox::receive::ReceiveLocation;
use mbx_messagebox::states::PortState;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::delivery::{self, Delivering};
use crate::http_receive::{self, HttpReceive};
use crate::instance::Instance;
use crate::listen::Wakeups;
use crate::receive::{self, Receiving};
use crate::{dispatch, keyed};

/// Running loops by object id: the object's configuration as it was started (its
/// serialized form), task, and its stop signal.
type Loops = HashMap<i64, (String, JoinHandle<()>, watch::Sender<bool>)>;

/// Makes `loops` match `wanted`: stops loops of objects no longer wanted, changed in place
/// (`mbx … update`: started again with the new configuration) or whose task ended; starts
/// loops for new ones.
fn reconcile<T: serde::Serialize>(
    loops: &mut Loops,
    wanted: HashMap<i64, (String, T)>,
    kind: &str,
    spawn: impl Fn(T, watch::Receiver<bool>) -> JoinHandle<()>,
) {
    let config = |object: &T| serde_json::to_string(object).unwrap_or_default();
    loops.retain(|id, (started_with, handle, stop)| {
        let keep = wanted
            .get(id)
            .is_some_and(|(_, object)| config(object) == *started_with)
            && !handle.is_finished();
        if !keep {
            info!(%kind, id, "loop stopping");
            let _ = stop.send(true);
        }
        keep
    });
    for (id, (name, object)) in wanted {
        if let std::collections::hash_map::Entry::Vacant(slot) = loops.entry(id) {
            info!(%kind, name = %name, "loop starting");
            let (stop_tx, stop_rx) = watch::channel(false);
            let started_with = config(&object);
            slot.insert((started_with, spawn(object, stop_rx), stop_tx));
        }
    }
}

/// Starts and stops the loops of ports and locations as the configuration changes: the
/// delivery loops get `delivering`, the receive locations `receiving`; it tells `http` the
/// host's HTTP paths.
pub(crate) async fn supervisor_loop(
    instance: Instance,
    wake: Wakeups,
    http: Arc<HttpReceive>,
    delivering: Delivering,
    receiving: Receiving,
) {
    let mut ports: Loops = HashMap::new();
    // one claim per round for every unordered port's worker
    let dispatcher = Arc::new(dispatch::Dispatcher::default());
    let dispatching = tokio::spawn(dispatch::dispatch_loop(
        delivering.clone(),
        dispatcher.clone(),
    ));
    let mut locations: Loops = HashMap::new();
    loop {
        supervise_ports(&mut ports, &instance, &delivering, &dispatcher).await;
        supervise_locations(&mut locations, &instance, &http, &receiving).await;
        // a port that was started again may have waiting deliveries: let loops look now
        wake.notify_published();
        // the next look: on a configuration notification, or after the poll interval
        let mut stopping = instance.stopping();
        if *stopping.borrow() {
            break;
        }
        tokio::select! {
            _ = wake.config_changed() => {}
            _ = tokio::time::sleep(instance.config().poll_interval) => {}
            _ = stopping.changed() => break,
        }
    }
    // stopping: receive first, then let delivery loops finish their batch
    for (_, (_, handle, stop)) in locations.drain() {
        let _ = stop.send(true);
        let _ = handle.await;
    }
    for (_, (_, _, stop)) in ports.iter() {
        let _ = stop.send(true);
    }
    for (_, (_, handle, _)) in ports.drain() {
        let _ = handle.await;
    }
    let _ = dispatching.await;
}

/// Makes the port loops match the host's started send ports: a keyed loop for a port
/// ordered by a property, an ordered loop for an ordered one, a worker fed by
/// `dispatcher` for the others; each is handed `delivering`.
async fn supervise_ports(
    ports: &mut Loops,
    instance: &Instance,
    delivering: &Delivering,
    dispatcher: &Arc<dispatch::Dispatcher>,
) {
    let list = match instance.mbx().send_port_list().await {
        Ok(list) => list,
        Err(e) => {
            warn!(error = %e, "reading send ports failed");
            return;
        }
    };
    let wanted: HashMap<i64, _> = list
        .into_iter()
        .filter(|p| p.host == instance.config().host && p.state == PortState::Started)
        .map(|p| (p.id, (p.name.clone(), p)))
        .collect();
    delivering.share().set_ordered_ports(
        wanted
            .values()
            .filter(|(_, p)| p.ordered && p.ordered_by.is_none())
            .count(),
    );
    reconcile(ports, wanted, "send port", |port, stop| {
        if port.ordered_by.is_some() {
            tokio::spawn(keyed::keyed_port_loop(delivering.clone(), port, stop))
        } else if port.ordered {
            tokio::spawn(delivery::ordered_port_loop(delivering.clone(), port, stop))
        } else {
            tokio::spawn(dispatch::port_worker(
                delivering.clone(),
                dispatcher.clone(),
                port,
                stop,
            ))
        }
    });
}

/// Makes the location loops match the host's enabled receive locations, each handed
/// `receiving`; first tells `http` the paths of all the host's HTTP locations.
async fn supervise_locations(
    locations: &mut Loops,
    instance: &Instance,
    http: &HttpReceive,
    receiving: &Receiving,
) {
    let list = match instance.mbx().receive_location_list().await {
        Ok(list) => list,
        Err(e) => {
            warn!(error = %e, "reading receive locations failed");
            return;
        }
    };
    http.set_known(known_http_paths(&list, &instance.config().host));
    let wanted = list
        .into_iter()
        .filter(|l| l.host == instance.config().host && l.enabled)
        .map(|l| (l.id, (l.name.clone(), l)))
        .collect();
    reconcile(locations, wanted, "receive location", |loc, stop| {
        tokio::spawn(receive::location_loop(receiving.clone(), loc, stop))
    });
}

/// The HTTP receive paths of `host`'s locations, for the listener: a POST to the path of a
/// location that is not mounted now (disabled, or enabled and starting or restarting: set
/// before the loops stop and start) is told to come back (503), not that nothing is there
/// (404: senders give up on it); an enabled location wins a path.
fn known_http_paths(
    list: &[ReceiveLocation],
    host: &str,
) -> HashMap<(bool, String), http_receive::KnownPath> {
    let mut known: HashMap<_, http_receive::KnownPath> = HashMap::new();
    for l in list.iter().filter(|l| l.host == host) {
        let Some(path) = http_receive::path_of(&l.address) else {
            continue;
        };
        let key = (l.address.starts_with("https:"), path);
        if !known.get(&key).is_some_and(|k| k.enabled) {
            known.insert(
                key,
                http_receive::KnownPath {
                    location: l.name.clone(),
                    enabled: l.enabled,
                },
            );
        }
    }
    known
}
