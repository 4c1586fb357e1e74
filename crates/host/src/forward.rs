//! Groups joined by forwarding, the host's two sides.
//!
//! - **Forwarding** (`mbx://LINK/RECEIVE_PORT` send ports): the delivery loop hands these
//!   deliveries here instead of to an adapter ([`forward`]). The batch is published into
//!   the linked group in one transaction there (`ForwardTarget::accept`), typed by that
//!   group's declarations; the outcomes go back to the loop, which completes them here as
//!   for any send. A resend after a crash between the two commits is a duplicate there and
//!   adds nothing. [`forget_loop`] then clears the receipts there of what was completed here.
//! - **Receiving** what other groups forward in: [`inbox_loop`] publishes this group's
//!   inbox, as received on each message's receive port, under this host's publish
//!   throttle.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mbx_adapters::{Fence, Outcome};
use mbx_messagebox::config::SendPort;
use mbx_messagebox::context::system;
use mbx_messagebox::delivery::ClaimedDelivery;
use mbx_messagebox::forward::{
    context_for_target, resolve_link_url, Accepted, ForwardBody, ForwardError, ForwardTarget,
    Forwarded,
};
use mbx_messagebox::publish::Publisher;
use mbx_vocabulary::GroupAddress;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::instance::Instance;
use crate::listen::Wakeups;
use crate::throttle::Throttle;

/// How long a batch that a throttled group did not take waits before it is claimed again
/// (not an attempt: nothing failed).
const THROTTLED_RETRY_MS: i64 = 2_000;

/// The outcome's text of a batch given back for later because the other group is
/// throttled: the delivery loop neither records nor counts it (its claims are released
/// with a later due time already).
pub(crate) const POSTPONED: &str = "postponed: the other group is throttled";

/// A forwarding port claims this many times the host's claim batch (bounded in bytes as
/// any claim).
pub(crate) const CLAIM_FACTOR: i64 = 5;

/// Forwarded messages published from the inbox per transaction.
const INBOX_BATCH: i64 = 500;

/// Receipts looked at per call when clearing them, and calls per round.
const RECEIPTS_PAGE: i32 = 1_000;
const RECEIPTS_PAGES_PER_ROUND: usize = 20;

/// How often completed forwards that no accept carried yet (a port gone quiet) are
/// forgotten in the target groups.
const FLUSH_INTERVAL: Duration = Duration::from_secs(2);

/// How often the receipts that no accept carried (an instance stopped or died before its
/// next batch, a port that stopped forwarding) are swept from the target groups.
const FORGET_INTERVAL: Duration = Duration::from_secs(30);

/// How long connecting to a linked group may take.
const LINK_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a link's row and its target's declarations are used before they are read
/// again (a forward batch must not cost two more round trips).
const LINK_CACHE_TTL: Duration = Duration::from_secs(2);

/// A target group's declared property types.
type Declared = Arc<HashMap<String, mbx_messagebox::PropertyType>>;

/// A connected link: its stored URL (a link removed and added again elsewhere is connected
/// anew), the target, its declarations, and when they were read.
struct Linked {
    url: String,
    target: Arc<ForwardTarget>,
    declared: Declared,
    read_at: Instant,
}

/// Forwarded deliveries remembered until their completion at most (beyond, the sweep
/// clears their receipts).
const AWAITING_MAX: usize = 200_000;

/// Receipts forgotten with one accept at most.
const FORGET_PER_ACCEPT_MAX: usize = 5_000;

/// Where a port forwards: (link, send port).
type Stream = (String, String);

/// What a forward did to a message, recorded on it: (message, text).
type Event = (Uuid, String);

/// The connections of one instance to the groups it forwards to, by link name, and what
/// it knows of its forwards: accepted there and awaiting completion here (by delivery
/// id), and completed here, whose receipts the next accept tells the target to forget.
#[derive(Default)]
struct Links {
    targets: Mutex<HashMap<String, Linked>>,
    /// This group's id and name (read once).
    identity: Mutex<Option<(Uuid, String)>>,
    awaiting: std::sync::Mutex<HashMap<i64, (Stream, Uuid)>>,
    completed: std::sync::Mutex<HashMap<Stream, Vec<Uuid>>>,
    /// Where each stream's sweep goes on from (a receipt id in the target).
    sweep_from: std::sync::Mutex<HashMap<Stream, i64>>,
}

/// The forwarding side of an instance, for its delivery loops and the receipt sweep: its
/// connections to the linked groups ([`Links`]) and the instance. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Forwarder {
    instance: Instance,
    links: Arc<Links>,
}

impl Forwarder {
    /// The forwarding side of `instance`, connected to no group yet.
    pub fn new(instance: Instance) -> Self {
        Self {
            instance,
            links: Default::default(),
        }
    }

    /// Deliveries just completed here: those that were forwards have receipts the target
    /// may now forget (told with the next accept of their stream).
    pub fn completed(&self, done: &[i64]) {
        let links = &self.links;
        let Ok(mut awaiting) = links.awaiting.lock() else {
            return;
        };
        if awaiting.is_empty() {
            return;
        }
        let Ok(mut completed) = links.completed.lock() else {
            return;
        };
        for id in done {
            if let Some((stream, message)) = awaiting.remove(id) {
                completed.entry(stream).or_default().push(message);
            }
        }
    }

    fn mbx(&self) -> &mbx_messagebox::MessageBox {
        self.instance.mbx()
    }

    /// This group's id and name (read once).
    async fn identity(&self) -> Result<(Uuid, String), String> {
        self.links.identity(self.mbx()).await
    }

    /// The target of `link` and its declared property types (see [`Links::target`]).
    async fn target(&self, link: &str) -> Result<(Arc<ForwardTarget>, Declared), String> {
        self.links.target(self.mbx(), link).await
    }
}

impl Links {
    fn awaiting_completion(&self, stream: &Stream, accepted: &[(i64, Uuid)]) {
        if let Ok(mut awaiting) = self.awaiting.lock() {
            if awaiting.len() + accepted.len() > AWAITING_MAX {
                // the sweep clears what this forgets
                awaiting.clear();
            }
            for (delivery, message) in accepted {
                awaiting.insert(*delivery, (stream.clone(), *message));
            }
        }
    }

    fn take_completed(&self, stream: &Stream) -> Vec<Uuid> {
        let Ok(mut completed) = self.completed.lock() else {
            return Vec::new();
        };
        let Some(list) = completed.get_mut(stream) else {
            return Vec::new();
        };
        let n = list.len().min(FORGET_PER_ACCEPT_MAX);
        list.drain(..n).collect()
    }

    fn give_back_completed(&self, stream: &Stream, ids: Vec<Uuid>) {
        if ids.is_empty() {
            return;
        }
        if let Ok(mut completed) = self.completed.lock() {
            completed.entry(stream.clone()).or_default().extend(ids);
        }
    }
}

impl Links {
    async fn identity(&self, mbx: &mbx_messagebox::MessageBox) -> Result<(Uuid, String), String> {
        let mut id = self.identity.lock().await;
        if let Some(known) = id.as_ref() {
            return Ok(known.clone());
        }
        let read = mbx
            .group_identity()
            .await
            .map_err(|e| format!("reading this group's identity: {e}"))?;
        *id = Some(read.clone());
        Ok(read)
    }

    /// The target of `link` and its declared property types, connected and read at most
    /// [`LINK_CACHE_TTL`] ago.
    async fn target(
        &self,
        mbx: &mbx_messagebox::MessageBox,
        link: &str,
    ) -> Result<(Arc<ForwardTarget>, Declared), String> {
        let cached = {
            let targets = self.targets.lock().await;
            targets.get(link).map(|l| {
                (
                    l.url.clone(),
                    l.target.clone(),
                    l.declared.clone(),
                    l.read_at,
                )
            })
        };
        if let Some((_, target, declared, read_at)) = &cached {
            if read_at.elapsed() < LINK_CACHE_TTL {
                return Ok((target.clone(), declared.clone()));
            }
        }
        // no lock held from here: one unreachable link must not stall the others
        let stored = mbx.link_get(link).await.map_err(|e| e.to_string())?;
        let target = match &cached {
            Some((url, target, _, _)) if *url == stored.database_url => target.clone(),
            _ => {
                let url = resolve_link_url(&stored.database_url).map_err(|e| e.to_string())?;
                let connected =
                    tokio::time::timeout(LINK_CONNECT_TIMEOUT, ForwardTarget::connect(&url))
                        .await
                        .map_err(|_| {
                            format!(
                                "group link '{link}': {} did not answer within {}s",
                                mbx_messagebox::redact_url(&url),
                                LINK_CONNECT_TIMEOUT.as_secs()
                            )
                        })?;
                let target = connected.map_err(|e| {
                    format!(
                        "group link '{link}': cannot reach {}: {e}",
                        mbx_messagebox::redact_url(&url)
                    )
                })?;
                if target.group_id != stored.target_group_id {
                    return Err(format!(
                        "group link '{link}' now reaches group '{}' ({}), not '{}' ({}) it was added for; remove and add the link again if that is intended",
                        target.group_name, target.group_id, stored.target_group_name, stored.target_group_id
                    ));
                }
                Arc::new(target)
            }
        };
        let declared = Arc::new(
            tokio::time::timeout(LINK_CONNECT_TIMEOUT, target.declarations())
                .await
                .map_err(|_| {
                    format!(
                        "group link '{link}': no answer within {}s",
                        LINK_CONNECT_TIMEOUT.as_secs()
                    )
                })?
                .map_err(|e| {
                    format!("group link '{link}': reading the target's declarations: {e}")
                })?,
        );
        self.targets.lock().await.insert(
            link.to_owned(),
            Linked {
                url: stored.database_url.clone(),
                target: target.clone(),
                declared: declared.clone(),
                read_at: Instant::now(),
            },
        );
        Ok((target, declared))
    }

    async fn drop_target(&self, link: &str) {
        self.targets.lock().await.remove(link);
    }
}

/// A batch that was not sent: the receipts it was to forget wait for the next accept,
/// and each of its messages is a retryable failure.
struct NotSent<'a> {
    links: &'a Links,
    stream: &'a Stream,
    sent: &'a [&'a ClaimedDelivery],
}

impl NotSent<'_> {
    fn fail(&self, forget: &mut Vec<Uuid>, outcomes: &mut HashMap<i64, Outcome>, reason: &str) {
        self.links
            .give_back_completed(self.stream, std::mem::take(forget));
        for d in self.sent {
            outcomes.insert(d.delivery_id, Outcome::failed(reason, true));
        }
    }
}

/// Forwards deliveries (each with the group its port's transport forwards it to,
/// `transport::PortTransports`) and returns one outcome each.
pub(crate) async fn forward(
    forwarder: &Forwarder,
    port: &SendPort,
    batch: Vec<(&ClaimedDelivery, GroupAddress)>,
    fence: Option<&Fence>,
) -> HashMap<i64, Outcome> {
    let mut outcomes = HashMap::new();
    // one accept per destination (a dynamic port may name several), in the order met
    let mut by_target: Vec<(GroupAddress, Vec<&ClaimedDelivery>)> = Vec::new();
    for (d, to) in batch {
        match by_target.iter_mut().find(|(t, _)| *t == to) {
            Some((_, deliveries)) => deliveries.push(d),
            None => by_target.push((to, vec![d])),
        }
    }
    for (to, deliveries) in by_target {
        forward_to(forwarder, port, &to, &deliveries, fence, &mut outcomes).await;
    }
    outcomes
}

async fn forward_to(
    forwarder: &Forwarder,
    port: &SendPort,
    to: &GroupAddress,
    deliveries: &[&ClaimedDelivery],
    fence: Option<&Fence>,
    outcomes: &mut HashMap<i64, Outcome>,
) {
    let mut fail_all = |error: String, retryable: bool| {
        for d in deliveries {
            outcomes.insert(d.delivery_id, Outcome::failed(&error, retryable));
        }
    };
    let identity = match forwarder.identity().await {
        Ok(i) => i,
        Err(e) => return fail_all(e, true),
    };
    let (target, declared) = match forwarder.target(&to.link).await {
        Ok(t) => t,
        Err(e) => return fail_all(e, true),
    };
    let (batch, sent) = batch_for_target(port, &target.group_name, &declared, deliveries, outcomes);
    if sent.is_empty() {
        return;
    }
    // an ordered port's stream: its name and id (a port created again is a new stream)
    let stream_key = format!("{}#{}", port.name, port.id);
    let epoch = ordered_epoch(port, sent[0]).map(|e| (stream_key.as_str(), e));
    let stream: Stream = (to.link.clone(), port.name.clone());
    let mut forget = forwarder.links.take_completed(&stream);
    // claimed under this instance id: if the instance is declared dead meanwhile (its
    // claims reclaimed by another), it must not forward them late
    let claimed_as = forwarder.instance.id();
    let started = Instant::now();
    let give_up = NotSent {
        links: &forwarder.links,
        stream: &stream,
        sent: &sent,
    };
    if forwarder.instance.id() != claimed_as {
        let reason = "this instance was declared dead; its claims moved on";
        return give_up.fail(&mut forget, outcomes, reason);
    }
    if fence.is_some_and(|f| !f.allows()) {
        let reason = "the ordered port's lease moved on before forwarding";
        return give_up.fail(&mut forget, outcomes, reason);
    }
    let accepted = match target
        .accept(
            forwarder.instance.mbx(),
            (identity.0, &identity.1),
            &port.name,
            &to.receive_port,
            epoch,
            &batch,
            &forget,
        )
        .await
    {
        Ok(a) => a,
        Err(e) => {
            let reason = not_accepted(forwarder, port, to, &target, claimed_as, &sent, e).await;
            return give_up.fail(&mut forget, outcomes, &reason);
        }
    };
    let (events, awaiting) = settle_accepted(to, &target.group_name, &sent, &accepted, outcomes);
    forwarder.links.awaiting_completion(&stream, &awaiting);
    let duplicates = accepted.iter().filter(|a| a.duplicate).count();
    debug!(port = %port.name, messages = sent.len(), duplicates, forgotten = forget.len(),
           accept_ms = started.elapsed().as_millis() as u64, "batch forwarded");
    record_forwarded(forwarder, port, accepted.len(), duplicates, &events).await;
}

/// What of `deliveries` can be forwarded to the group `group_name` (declaring
/// `declared`), and those deliveries. A message whose property does not fit the target's
/// declaration fails for good, naming it (an ordered port stops there: the rest waits,
/// each a retryable failure).
fn batch_for_target<'a>(
    port: &SendPort,
    group_name: &str,
    declared: &HashMap<String, mbx_messagebox::PropertyType>,
    deliveries: &[&'a ClaimedDelivery],
    outcomes: &mut HashMap<i64, Outcome>,
) -> (Vec<Forwarded>, Vec<&'a ClaimedDelivery>) {
    let mut batch = Vec::with_capacity(deliveries.len());
    let mut sent: Vec<&ClaimedDelivery> = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        let context = match context_for_target(&d.context, declared) {
            Ok(c) => c,
            Err(e) => {
                outcomes.insert(
                    d.delivery_id,
                    Outcome::failed(format!("forwarding to group '{group_name}': {e}"), false),
                );
                if port.ordered {
                    break;
                }
                continue;
            }
        };
        // a body above 1 MiB goes one stored chunk at a time, never whole in memory
        let body = match &d.body {
            Some(b) => ForwardBody::Bytes(b.clone()),
            None => ForwardBody::Chunks {
                len: u64::try_from(d.body_size).unwrap_or(0),
            },
        };
        batch.push(Forwarded {
            source_message_id: d.message_id,
            content_type: d.content_type.clone(),
            context,
            body,
        });
        sent.push(d);
    }
    for d in deliveries {
        // an ordered batch stopped at a message that cannot go: the rest is not sent
        if !outcomes.contains_key(&d.delivery_id)
            && !sent.iter().any(|s| s.delivery_id == d.delivery_id)
        {
            outcomes.insert(
                d.delivery_id,
                Outcome::failed(
                    "not forwarded: an earlier message of the ordered batch failed",
                    true,
                ),
            );
        }
    }
    (batch, sent)
}

/// The epoch of an ordered port's batch, carried by its first message (none for an
/// unordered port).
fn ordered_epoch(port: &SendPort, first: &ClaimedDelivery) -> Option<i64> {
    if !port.ordered {
        return None;
    }
    first
        .context
        .get(system::EPOCH)
        .and_then(|p| p.value.to_plain_string().parse::<i64>().ok())
}

/// Why the target did not accept a batch, as each of its messages' outcome. A throttled
/// group is "later", not a failure: the claims go back due in a moment, uncounted. Any
/// other error drops a broken connection so the next batch connects anew.
async fn not_accepted(
    forwarder: &Forwarder,
    port: &SendPort,
    to: &GroupAddress,
    target: &ForwardTarget,
    claimed_as: Uuid,
    sent: &[&ClaimedDelivery],
    error: ForwardError,
) -> String {
    if let ForwardError::Throttled(why) = error {
        info!(port = %port.name, %why, "the other group is throttled; trying again later");
        let claims: Vec<(i64, Uuid)> = sent
            .iter()
            .map(|d| (d.delivery_id, d.claim_token))
            .collect();
        if let Err(e) = forwarder
            .mbx()
            .deliveries_postpone(claimed_as, &claims, THROTTLED_RETRY_MS)
            .await
        {
            debug!(port = %port.name, error = %e, "postponing failed; the claims stay until released");
        }
        return POSTPONED.to_owned();
    }
    if matches!(error, ForwardError::Other(_)) {
        forwarder.links.drop_target(&to.link).await;
    }
    let error = format!(
        "forwarding to group '{}' ({to}): {error}",
        target.group_name
    );
    warn!(port = %port.name, %error, "forward failed");
    error
}

/// Each sent delivery's outcome from what the target answered: the delivered ones'
/// events (by message) and (delivery, message) pairs awaiting their completion here.
fn settle_accepted(
    to: &GroupAddress,
    group_name: &str,
    sent: &[&ClaimedDelivery],
    accepted: &[Accepted],
    outcomes: &mut HashMap<i64, Outcome>,
) -> (Vec<Event>, Vec<(i64, Uuid)>) {
    let by_source: HashMap<Uuid, _> = accepted.iter().map(|a| (a.source_message_id, *a)).collect();
    let mut events = Vec::with_capacity(sent.len());
    let mut awaiting = Vec::with_capacity(sent.len());
    for d in sent {
        match by_source.get(&d.message_id) {
            Some(a) => {
                outcomes.insert(d.delivery_id, Outcome::Delivered);
                awaiting.push((d.delivery_id, d.message_id));
                events.push((
                    d.message_id,
                    format!(
                        "forwarded to group '{}' receive port '{}' as message {}{}",
                        group_name,
                        to.receive_port,
                        a.message_id,
                        if a.duplicate {
                            " (it was there already: a resend)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            None => {
                outcomes.insert(
                    d.delivery_id,
                    Outcome::failed("the target group did not answer for this message", true),
                );
            }
        }
    }
    (events, awaiting)
}

/// Counts a forwarded batch (`accepted` messages, `duplicates` of them resends) and
/// records its events on the messages.
async fn record_forwarded(
    forwarder: &Forwarder,
    port: &SendPort,
    accepted: usize,
    duplicates: usize,
    events: &[Event],
) {
    if duplicates > 0 {
        info!(port = %port.name, duplicates, "resent messages were in the target group already");
    }
    metrics::counter!("mbx_forwarded_total", "port" => port.name.clone())
        .increment((accepted - duplicates) as u64);
    if let Err(e) = forwarder
        .mbx()
        .forward_track(port.id, forwarder.instance.id(), events)
        .await
    {
        debug!(port = %port.name, error = %e, "recording forwarded events failed");
    }
}

/// Sweeps, in the target groups, the receipts of forwards this group has completed that
/// no accept carried: a receipt stays while its delivery (or a suspended item of it) is
/// still here, so a resend of it, however late, stays a duplicate there. One instance of
/// the host sweeps (the live one with the lowest id).
pub(crate) async fn forget_loop(forwarder: Forwarder) {
    let mut last_sweep = Instant::now();
    loop {
        if !forwarder.instance.pause(FLUSH_INTERVAL).await {
            return;
        }
        // what this instance completed and no accept carried since (a port gone quiet)
        flush_completed(&forwarder).await;
        if last_sweep.elapsed() < FORGET_INTERVAL {
            continue;
        }
        last_sweep = Instant::now();
        let me = forwarder.instance.id();
        let sweeper = match forwarder.instance.mbx().instance_list().await {
            Ok(list) => list
                .iter()
                .filter(|i| i.state == mbx_messagebox::states::InstanceState::Alive)
                .filter(|i| i.host == forwarder.instance.config().host)
                .map(|i| i.id)
                .min()
                .is_none_or(|lowest| lowest == me),
            Err(_) => false,
        };
        if !sweeper {
            continue;
        }
        let ports = match forwarder.instance.mbx().send_port_list().await {
            Ok(list) => list,
            Err(e) => {
                debug!(error = %e, "listing ports for receipts failed");
                continue;
            }
        };
        for port in ports
            .iter()
            .filter(|p| p.host == forwarder.instance.config().host)
        {
            for link in links_of(port) {
                if let Err(e) = forget_port(&forwarder, port, &link).await {
                    debug!(port = %port.name, error = %e, "clearing receipts failed; next round");
                }
            }
        }
    }
}

/// Tells the target groups to forget the receipts of forwards this instance completed
/// and that are still waiting for their port's next accept.
async fn flush_completed(forwarder: &Forwarder) {
    let streams: Vec<Stream> = match forwarder.links.completed.lock() {
        Ok(c) => c
            .iter()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(s, _)| s.clone())
            .collect(),
        Err(_) => return,
    };
    let Ok((group, _)) = forwarder.identity().await else {
        return;
    };
    for stream in streams {
        let ids = forwarder.links.take_completed(&stream);
        let forgotten = match forwarder.target(&stream.0).await {
            Ok((target, _)) => target
                .forget(group, &stream.1, &ids)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        if let Err(e) = forgotten {
            debug!(port = %stream.1, error = %e, "forgetting receipts failed; next round");
            forwarder.links.give_back_completed(&stream, ids);
        }
    }
}

/// The links a port may forward through: its address's and backup address's, and for a
/// dynamic port those its allowed prefixes name (`mbx://LINK/…`).
fn links_of(port: &SendPort) -> Vec<String> {
    let mut links: Vec<String> = [port.address.as_deref(), port.backup_address.as_deref()]
        .into_iter()
        .flatten()
        .chain(port.allow_address.iter().map(String::as_str))
        .filter(|a| GroupAddress::is_group_address(a))
        .filter_map(|a| GroupAddress::parse_prefix(a).ok().map(|(link, _)| link))
        .collect();
    links.sort();
    links.dedup();
    links
}

/// One sweep round over a port's receipts in one linked group, from where the last round
/// stopped (so receipts still held at the front do not hide the rest), starting over once
/// it reaches the end.
async fn forget_port(forwarder: &Forwarder, port: &SendPort, link: &str) -> Result<(), String> {
    let (group, _) = forwarder.identity().await?;
    let (target, _) = forwarder.target(link).await?;
    let key: Stream = (link.to_owned(), port.name.clone());
    let mut after = forwarder
        .links
        .sweep_from
        .lock()
        .ok()
        .and_then(|m| m.get(&key).copied())
        .unwrap_or(0);
    let mut reached_end = false;
    for _ in 0..RECEIPTS_PAGES_PER_ROUND {
        let page = target
            .receipts(group, &port.name, after, RECEIPTS_PAGE)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = page.last().map(|r| r.0) else {
            reached_end = true;
            break;
        };
        let ids: Vec<Uuid> = page.iter().map(|r| r.1).collect();
        let held = forwarder
            .mbx()
            .forward_still_held(port.id, &ids)
            .await
            .map_err(|e| e.to_string())?;
        let done: Vec<Uuid> = ids.into_iter().filter(|id| !held.contains(id)).collect();
        if !done.is_empty() {
            let n = target
                .forget(group, &port.name, &done)
                .await
                .map_err(|e| e.to_string())?;
            debug!(port = %port.name, forgotten = n, "receipts cleared in the target group");
        }
        if page.len() < RECEIPTS_PAGE as usize {
            reached_end = true;
            break;
        }
        after = last;
    }
    if let Ok(mut m) = forwarder.links.sweep_from.lock() {
        m.insert(key, if reached_end { 0 } else { after });
    }
    Ok(())
}

/// Publishes what other groups forwarded into this one (one instance at a time; the
/// others find the inbox locked and wait for the next wake-up).
pub(crate) async fn inbox_loop(instance: Instance, wake: Wakeups, throttle: Arc<Throttle>) {
    let publisher = Publisher {
        host_id: Some(instance.host_id()),
        receive_location_id: None,
        fence: None,
    };
    loop {
        if instance.is_stopping() {
            return;
        }
        let woken = wake.forwarded();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if throttle.publish_throttled() {
            let mut stopping = instance.stopping();
            tokio::select! {
                _ = throttle.publish_allowed() => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
        match instance.mbx().inbox_publish(&publisher, INBOX_BATCH).await {
            Ok(n) if n as i64 == INBOX_BATCH => {
                metrics::counter!("mbx_forwarded_in_total").increment(n as u64);
                continue;
            }
            Ok(n) => {
                if n > 0 {
                    metrics::counter!("mbx_forwarded_in_total").increment(n as u64);
                    continue;
                }
            }
            Err(e) => warn!(error = %e, "publishing forwarded messages failed; retrying"),
        }
        let mut stopping = instance.stopping();
        tokio::select! {
            _ = &mut woken => {}
            _ = tokio::time::sleep(instance.config().poll_interval) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}
