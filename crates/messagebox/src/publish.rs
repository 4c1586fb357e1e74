//! Publishing: one transaction inserts the messages and their contexts, routes
//! them with the subscription set current at commit, and inserts one delivery per
//! matching subscriber or a routing-failure suspended item. Only after it commits may the
//! sender be acknowledged.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use bytes::Bytes;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::ordered::Slot;
use crate::routing::{RouteTarget, RoutingTable};
use crate::{Context, Error, MessageBox, Result};

/// Bodies up to this size live in the message row; larger ones are stored in chunks.
pub const BODY_INLINE_MAX_BYTES: usize = 1024 * 1024;

/// Size of one stored chunk of a large body.
pub const BODY_CHUNK_BYTES: usize = 1024 * 1024;

/// Default `--max-message-size`.
pub const MAX_MESSAGE_SIZE_DEFAULT_BYTES: u64 = 100 * 1000 * 1000;

/// How long a (receive location, source id) pair is remembered for idempotent receive.
pub const DEDUP_WINDOW_S: i64 = 24 * 3600;

/// The body of a message to publish.
#[derive(Debug, Clone)]
pub enum NewBody {
    /// In memory.
    Bytes(Bytes),
    /// A file of `len` bytes (a receive adapter's claimed file), read one chunk at a time
    /// inside the publishing transaction: a large body is never held whole.
    File { path: PathBuf, len: u64 },
    /// The chunks another group forwarded (`forward_chunks`), moved in the database.
    Staged {
        source_group: Uuid,
        send_port: String,
        source_message_id: Uuid,
        len: u64,
    },
    /// The chunks of a stored message (an error report's copy), copied in the database.
    CopyOf { message_id: Uuid, len: u64 },
}

impl NewBody {
    pub fn len(&self) -> u64 {
        match self {
            NewBody::Bytes(b) => b.len() as u64,
            NewBody::File { len, .. }
            | NewBody::Staged { len, .. }
            | NewBody::CopyOf { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes to store in the message row, or `None` for a body stored in chunks.
    pub(crate) async fn inline(&self) -> Result<Option<Vec<u8>>> {
        if self.len() > BODY_INLINE_MAX_BYTES as u64
            || matches!(self, NewBody::Staged { .. } | NewBody::CopyOf { .. })
        {
            return Ok(None);
        }
        match self {
            NewBody::Staged { .. } | NewBody::CopyOf { .. } => Ok(None),
            NewBody::Bytes(b) => Ok(Some(b.to_vec())),
            NewBody::File { path, len } => {
                let data = tokio::fs::read(path)
                    .await
                    .map_err(|e| Error::Body(format!("reading {}: {e}", path.display())))?;
                if data.len() as u64 != *len {
                    return Err(changed_while_read(path, *len));
                }
                Ok(Some(data))
            }
        }
    }
}

fn changed_while_read(path: &std::path::Path, len: u64) -> Error {
    Error::Body(format!(
        "{} is no longer the {len} bytes it was when it was taken (still being written?); nothing was published",
        path.display()
    ))
}

impl From<Bytes> for NewBody {
    fn from(b: Bytes) -> Self {
        NewBody::Bytes(b)
    }
}

/// A message to publish.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The id to publish it under (a message forwarded from another group, whose id here
    /// was given when it was accepted); `None`: a fresh one.
    pub id: Option<Uuid>,
    pub body: NewBody,
    pub content_type: String,
    pub context: Context,
    /// Idempotent receive: where it came from.
    pub source: Option<Source>,
    /// Which copy of the source this is (FILE: the claimed file's device, inode and
    /// ctime), recorded with the source id: a copy found still claimed is known published
    /// by [`MessageBox::published_copies`].
    pub source_identity: Option<String>,
    /// Where it may go (all subscribers, unless it is a response or a fault).
    pub routing: Routing,
}

/// Idempotent receive: the source message a received message came from. A second
/// message from the same (location, source id) within the dedup window is dropped as a
/// duplicate — or, when both carry a body digest and the digests differ, refused as
/// [`Published::SourceReused`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub location_id: i64,
    /// The adapter's id of the source message (FILE: name, size and mtime; AMQP: the
    /// message id; HTTP: the `Idempotency-Key`).
    pub id: String,
    /// The SHA-256 of the body, where a sender may reuse an id with another body (HTTP).
    pub body_sha256: Option<[u8; 32]>,
}

impl Source {
    /// A source id without a body digest.
    pub fn new(location_id: i64, id: impl Into<String>) -> Self {
        Self {
            location_id,
            id: id.into(),
            body_sha256: None,
        }
    }
}

/// Where a published message may be routed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Routing {
    /// Every matching subscriber, and a client waiting for its correlation token.
    #[default]
    All,
    /// A solicit-response port's response: never routed back to the port (this id) that
    /// produced it, whatever its filter says.
    NotToPort(i64),
    /// Only the client waiting for its correlation token (a failed solicit-response's
    /// answer to that client); with no client waiting, a routing failure.
    ReplyOnly,
    /// An error report: to its subscribers; with none it is dropped (never a
    /// routing failure, never reported again, so reports cannot loop).
    ErrorReport,
    /// An orchestration instance's request through a solicit-response port (`call:
    /// NAME@mbx`): to that port (this id) only, whatever its filter says, never to an
    /// orchestration or a waiting client.
    OnlyPort(i64),
    /// The answer to an orchestration instance whose request was suspended: to the
    /// instance waiting for its token only; with none waiting, a routing failure.
    InstancesOnly,
}

impl NewMessage {
    pub fn new(body: impl Into<Bytes>, content_type: &str, context: Context) -> Self {
        Self {
            id: None,
            body: NewBody::Bytes(body.into()),
            content_type: content_type.to_owned(),
            context,
            source: None,
            source_identity: None,
            routing: Routing::All,
        }
    }
}

/// What became of one published message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Published {
    /// Routed to `deliveries` subscribers.
    Routed { message_id: Uuid, deliveries: usize },
    /// No subscriber matched: kept as suspended item `suspended_id`.
    RoutingFailure { message_id: Uuid, suspended_id: i64 },
    /// Its source id was published within the dedup window: dropped.
    Duplicate,
    /// Its source id was published within the dedup window with another body (their
    /// SHA-256 digests differ): refused, nothing published, nothing tracked (the sender
    /// is told: HTTP answers 422).
    SourceReused,
    /// An error report no subscriber matched: dropped.
    Unsubscribed,
}

/// Who publishes: the host (for tracking and throttling) and the receive location.
#[derive(Debug, Clone, Default)]
pub struct Publisher {
    pub host_id: Option<i64>,
    pub receive_location_id: Option<i64>,
    /// An ordered receive location's publish commits only while its publisher holds the
    /// location's lease.
    pub fence: Option<LocationFence>,
}

/// The lease of an ordered receive location as its holder took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocationFence {
    pub location_id: i64,
    pub holder: Uuid,
    pub epoch: i64,
}

impl MessageBox {
    /// Which of `sources` — (source id, identity) pairs a receive location found still
    /// claimed — were published by receive location `location_id` from that very copy
    /// (the identity recorded with the source id): one answer per source, in order. Each
    /// found is tracked on its message (`reclaimed`, with `instance` and the detail): its
    /// claimant stopped between its commit and its delete, and the caller finishes the
    /// delete instead of receiving it again.
    pub async fn published_copies(
        &self,
        location_id: i64,
        sources: &[(String, String)],
        instance: Option<Uuid>,
    ) -> Result<Vec<bool>> {
        if sources.is_empty() {
            return Ok(Vec::new());
        }
        let (srcs, idents): (Vec<String>, Vec<String>) = sources.iter().cloned().unzip();
        let found: HashSet<i64> = sqlx::query_scalar::<_, i64>(
            "WITH found AS (
                 SELECT t.n, r.message_id, t.src
                   FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS t(src, ident, n)
                   JOIN received_sources r
                     ON r.receive_location_id = $1 AND r.source_id = t.src
                    AND r.source_identity = t.ident
             ), tracked AS (
                 INSERT INTO tracking_events (message_id, event, instance_id, detail)
                 SELECT f.message_id, 'reclaimed', $4,
                        'source ' || f.src || ' found still claimed by ' || coalesce(l.name, 'a deleted location')
                        || ' after its claimant stopped: already published (this message), so deleted, not received again'
                   FROM found f LEFT JOIN receive_locations l ON l.id = $1
             )
             SELECT n FROM found",
        )
        .bind(location_id)
        .bind(&srcs)
        .bind(&idents)
        .bind(instance)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect();
        Ok((1..=sources.len() as i64)
            .map(|n| found.contains(&n))
            .collect())
    }

    /// Publishes a batch of messages in one transaction; returns one outcome per message,
    /// in order.
    pub async fn publish(
        &self,
        publisher: &Publisher,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Published>> {
        let mut tx = self.pool.begin().await?;
        let (outcomes, replies) = self.publish_in(&mut tx, publisher, messages).await?;
        if let Some(fence) = &publisher.fence {
            check_fence(&mut tx, fence).await?;
        }
        tx.commit().await?;
        self.notify_after_publish(&outcomes, &replies).await;
        Ok(outcomes)
    }

    /// After a publish committed: wakes delivery loops when something was routed, and the
    /// instances that wait for a reply it carried.
    pub(crate) async fn notify_after_publish(&self, outcomes: &[Published], replies: &[Uuid]) {
        if outcomes
            .iter()
            .any(|o| matches!(o, Published::Routed { .. }))
        {
            self.notify_published().await;
        }
        self.notify_replies(replies).await;
    }

    /// Publishes `messages` in `tx`: their outcomes, and the instances an instance
    /// subscription routed a reply to (to wake with [`MessageBox::notify_replies`] once
    /// `tx` committed).
    ///
    /// The steps, in this order inside `tx`: the dedup window drops what it has seen, the
    /// fresh messages and their bodies are inserted, routed under the shared routing lock
    /// (to ports and to waiting clients), ordered ports take their sequences, the
    /// deliveries are inserted, and a message nothing matched is kept as a routing failure.
    pub(crate) async fn publish_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        publisher: &Publisher,
        messages: Vec<NewMessage>,
    ) -> Result<(Vec<Published>, Vec<Uuid>)> {
        if messages.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let ids: Vec<Uuid> = messages
            .iter()
            .map(|m| m.id.unwrap_or_else(Uuid::now_v7))
            .collect();
        let dedup = dedup_sources(tx, &ids, &messages).await?;
        let fresh: Vec<bool> = dedup.iter().map(|d| *d == Dedup::Fresh).collect();
        let mut outcomes: Vec<Published> = dedup.iter().map(Dedup::not_published).collect();

        // 1. messages and bodies (before the routing lock, so a large body never stalls a
        //    subscription change)
        if !insert_messages(tx, publisher, &ids, &messages, &fresh).await? {
            return Ok((outcomes, Vec::new()));
        }

        // 2. route under the shared routing lock: to ports, to waiting request-response
        //    clients (their instance subscriptions), to orchestration instances
        let table = self.routing_for_publish(tx).await?;
        let routes = route_fresh(&table, &messages, &fresh);
        let replied = crate::replies::route_replies(tx, &ids, &messages, &fresh).await?;
        let processes = crate::process::route_to_instances(
            tx,
            &table,
            &ids,
            &crate::process::routable(&messages, &fresh),
            None,
        )
        .await?;
        let reached = (&replied, &processes.reached);

        // 3. ordered ports: take sequences (per port, or per key of a port ordered by a
        //    property) under their rows' locks, in (port, key) order
        let wanted = ordered_wants(&routes, &messages);
        let slots = crate::ordered::take_sequences(tx, &table, &wanted).await?;

        // 4. deliveries (and their tracking events, in the same statement)
        let plan = Distribution::plan(&ids, &messages, &routes, reached, slots, &mut outcomes)?;
        insert_deliveries(tx, &plan.deliveries).await?;
        // a port ordered by a property the message does not carry: that delivery is
        // suspended failed-final in the same transaction (the other ports still get theirs)
        if !plan.no_key.is_empty() {
            crate::ordered::suspend_without_key(self, tx, &plan.no_key).await?;
        }
        // an error report nobody subscribes to is not kept
        if !plan.unsubscribed.is_empty() {
            sqlx::query("DELETE FROM messages WHERE id = ANY($1)")
                .bind(&plan.unsubscribed)
                .execute(&mut **tx)
                .await?;
        }

        // 5. routing failures
        let failures = &plan.failures;
        suspend_routing_failures(tx, publisher, &ids, &messages, failures, &mut outcomes).await?;
        self.report_routing_failed(tx, publisher, &messages, &outcomes)
            .await?;
        let mut wake: Vec<Uuid> = replied.into_values().collect();
        wake.sort_unstable();
        wake.dedup();
        Ok((outcomes, wake))
    }

    /// Receive ports with `--route-failed` report their routing failures: each message
    /// `outcomes` names a routing failure gets an error report, published in `tx`.
    async fn report_routing_failed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        publisher: &Publisher,
        messages: &[NewMessage],
        outcomes: &[Published],
    ) -> Result<()> {
        let routing_failed: Vec<(Uuid, String)> = outcomes
            .iter()
            .zip(messages)
            .filter_map(|(o, m)| match o {
                Published::RoutingFailure { message_id, .. } => {
                    Some((*message_id, routing_failure_reason(&m.context)))
                }
                _ => None,
            })
            .collect();
        if routing_failed.is_empty() {
            return Ok(());
        }
        let Some(location) = publisher.receive_location_id else {
            return Ok(());
        };
        let reported = Box::pin(crate::error_report::report_routing_failures(
            self,
            tx,
            publisher,
            location,
            &routing_failed,
        ))
        .await?;
        self.count_dropped_reports(reported.dropped);
        Ok(())
    }
}

/// Inserts the fresh messages (those `fresh` marks) with their contexts and bodies: a
/// small body in its row, a large one in chunks. Returns whether any was fresh (else
/// nothing was inserted).
async fn insert_messages(
    tx: &mut Transaction<'_, Postgres>,
    publisher: &Publisher,
    ids: &[Uuid],
    messages: &[NewMessage],
    fresh: &[bool],
) -> Result<bool> {
    let mut m_ids = Vec::new();
    let mut m_types = Vec::new();
    let mut m_bodies: Vec<Option<Vec<u8>>> = Vec::new();
    let mut m_sizes = Vec::new();
    let mut m_contexts = Vec::new();
    let mut chunked = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if !fresh[i] {
            continue;
        }
        m_ids.push(ids[i]);
        m_types.push(m.content_type.clone());
        m_sizes.push(i64::try_from(m.body.len()).unwrap_or(i64::MAX));
        m_contexts
            .push(serde_json::to_value(&m.context).map_err(|e| Error::Invalid(e.to_string()))?);
        let inline = m.body.inline().await?;
        if inline.is_none() {
            chunked.push(i);
        }
        m_bodies.push(inline);
    }
    if m_ids.is_empty() {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO messages (id, content_type, body, body_size, chunked, context, publisher_host_id, receive_location_id)
         SELECT id, ct, body, size, body IS NULL, ctx, $6, $7
           FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::int8[], $5::jsonb[]) AS t(id, ct, body, size, ctx)",
    )
    .bind(&m_ids)
    .bind(&m_types)
    .bind(&m_bodies)
    .bind(&m_sizes)
    .bind(&m_contexts)
    .bind(publisher.host_id)
    .bind(publisher.receive_location_id)
    .execute(&mut **tx)
    .await?;
    for &i in &chunked {
        store_chunks(tx, ids[i], &messages[i].body).await?;
    }
    Ok(true)
}

/// Each routed target's port with its message's context: what ordered ports take
/// sequences for, in routing order.
fn ordered_wants<'a>(
    routes: &[(usize, Vec<RouteTarget>)],
    messages: &'a [NewMessage],
) -> Vec<(i64, &'a Context)> {
    routes
        .iter()
        .flat_map(|(i, targets)| targets.iter().map(|t| (t.port_id, &messages[*i].context)))
        .collect()
}

/// The ports each fresh message goes to, by `table` and the message's [`Routing`]: (its
/// index, its targets), in message order.
fn route_fresh(
    table: &RoutingTable,
    messages: &[NewMessage],
    fresh: &[bool],
) -> Vec<(usize, Vec<RouteTarget>)> {
    let mut routes = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if fresh[i] {
            let mut targets = table.route(&m.context);
            match m.routing {
                Routing::All | Routing::ErrorReport => {}
                Routing::NotToPort(port) => targets.retain(|t| t.port_id != port),
                Routing::ReplyOnly | Routing::InstancesOnly => targets.clear(),
                Routing::OnlyPort(port) => {
                    targets = vec![RouteTarget {
                        port_id: port,
                        via_port: true,
                        via_groups: Vec::new(),
                    }]
                }
            }
            routes.push((i, targets));
        }
    }
    routes
}

/// What routing made of the fresh messages, to store.
#[derive(Default)]
struct Distribution {
    /// The deliveries to insert.
    deliveries: DeliveryRows,
    /// Deliveries to a port ordered by a property the message does not carry: (message,
    /// target, body size, the property).
    no_key: Vec<(Uuid, RouteTarget, i64, String)>,
    /// The messages (indexes) nothing matched: routing failures.
    failures: Vec<usize>,
    /// The error reports nothing subscribes to: dropped.
    unsubscribed: Vec<Uuid>,
}

impl Distribution {
    /// Sorts each routed message's targets into deliveries, each with the sequence slot
    /// taken for it (`slots`: one per target, in order); sets the outcome of each message
    /// routed, and of each error report nobody subscribes to.
    fn plan(
        ids: &[Uuid],
        messages: &[NewMessage],
        routes: &[(usize, Vec<RouteTarget>)],
        (replied, processes): (&HashMap<usize, Uuid>, &HashMap<usize, usize>),
        slots: Vec<Slot>,
        outcomes: &mut [Published],
    ) -> Result<Self> {
        let mut plan = Self::default();
        let mut slots = slots.into_iter();
        for (i, targets) in routes {
            let to_instance =
                usize::from(replied.contains_key(i)) + processes.get(i).copied().unwrap_or(0);
            if targets.is_empty() && to_instance == 0 {
                if messages[*i].routing == Routing::ErrorReport {
                    plan.unsubscribed.push(ids[*i]);
                    outcomes[*i] = Published::Unsubscribed;
                } else {
                    plan.failures.push(*i);
                }
                continue;
            }
            outcomes[*i] = Published::Routed {
                message_id: ids[*i],
                deliveries: targets.len() + to_instance,
            };
            let size = i64::try_from(messages[*i].body.len()).unwrap_or(i64::MAX);
            for t in targets {
                // one slot per routed target, taken in this order
                let Some(slot) = slots.next() else {
                    return Err(Error::Corrupt(
                        "fewer sequence slots than routed deliveries".into(),
                    ));
                };
                if let Slot::NoKey { property } = &slot {
                    plan.no_key
                        .push((ids[*i], t.clone(), size, property.clone()));
                    continue;
                }
                plan.deliveries.push(ids[*i], t, size, &slot);
            }
        }
        Ok(plan)
    }
}

/// The deliveries a publish inserts, one vector per column (bound to `unnest`).
#[derive(Default)]
struct DeliveryRows {
    message: Vec<Uuid>,
    port: Vec<i64>,
    via_port: Vec<bool>,
    via_groups: Vec<String>,
    seq: Vec<Option<i64>>,
    key: Vec<Option<String>>,
    bucket: Vec<i32>,
    size: Vec<i64>,
}

impl DeliveryRows {
    fn push(&mut self, message: Uuid, target: &RouteTarget, size: i64, slot: &Slot) {
        self.message.push(message);
        self.port.push(target.port_id);
        self.via_port.push(target.via_port);
        self.via_groups.push(pg_bigint_array(&target.via_groups));
        self.size.push(size);
        self.seq.push(slot.seq());
        self.key.push(slot.key().map(str::to_owned));
        self.bucket.push(slot.bucket());
    }
}

/// Inserts `rows`, and in the same statement a `published` tracking event for each whose
/// port (or its host) tracks everything.
async fn insert_deliveries(tx: &mut Transaction<'_, Postgres>, rows: &DeliveryRows) -> Result<()> {
    if rows.message.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "WITH d AS (
            INSERT INTO deliveries (message_id, port_id, via_port, via_groups, seq, order_key, body_size, bucket)
            SELECT m, p, vp, vg::bigint[], s, k, sz, b
              FROM unnest($1::uuid[], $2::int8[], $3::bool[], $4::text[], $5::int8[], $6::int8[],
                          $7::text[], $8::int4[])
                   AS t(m, p, vp, vg, s, sz, k, b)
            RETURNING message_id, port_id)
         INSERT INTO tracking_events (message_id, event, port_id, detail)
         SELECT d.message_id, 'published', d.port_id, 'routed to ' || p.name
           FROM d JOIN send_ports p ON p.id = d.port_id JOIN hosts h ON h.id = p.host_id
          WHERE coalesce(p.tracking, h.tracking) = 'all'",
    )
    .bind(&rows.message)
    .bind(&rows.port)
    .bind(&rows.via_port)
    .bind(&rows.via_groups)
    .bind(&rows.seq)
    .bind(&rows.size)
    .bind(&rows.key)
    .bind(&rows.bucket)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Keeps each of `failures` (the messages nothing matched) as a routing-failure suspended
/// item, tracked unless the publishing host's tracking is off, and sets its outcome.
async fn suspend_routing_failures(
    tx: &mut Transaction<'_, Postgres>,
    publisher: &Publisher,
    ids: &[Uuid],
    messages: &[NewMessage],
    failures: &[usize],
    outcomes: &mut [Published],
) -> Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    let f_ids: Vec<Uuid> = failures.iter().map(|&i| ids[i]).collect();
    let reasons: Vec<String> = failures
        .iter()
        .map(|&i| routing_failure_reason(&messages[i].context))
        .collect();
    let suspended: Vec<(Uuid, i64)> = sqlx::query_as(
        "WITH s AS (
            INSERT INTO suspended_items (message_id, kind, reason, receive_location_id)
            SELECT m, 'routing-failure', r, $3 FROM unnest($1::uuid[], $2::text[]) AS t(m, r)
            RETURNING id, message_id, reason),
         ev AS (
            INSERT INTO tracking_events (message_id, event, detail)
            SELECT s.message_id, 'routing-failed', s.reason FROM s
             WHERE coalesce((SELECT tracking FROM hosts WHERE id = $4), 'failures') <> 'off')
         SELECT message_id, id FROM s",
    )
    .bind(&f_ids)
    .bind(&reasons)
    .bind(publisher.receive_location_id)
    .bind(publisher.host_id)
    .fetch_all(&mut **tx)
    .await?;
    for (message_id, suspended_id) in suspended {
        if let Some(i) = failures.iter().copied().find(|&i| ids[i] == message_id) {
            outcomes[i] = Published::RoutingFailure {
                message_id,
                suspended_id,
            };
        }
    }
    Ok(())
}

/// The fence of an ordered location's publish, as the last statement before its commit:
/// the lease row must still name this holder at this epoch and not have expired (on the
/// database clock *now*, not at the transaction's start). `FOR SHARE` holds the row until
/// the commit, so a takeover (an `UPDATE` of the row) waits for this publish to end and
/// every batch the next holder publishes commits after it: a holder paused anywhere
/// before this statement commits nothing, and one paused after it delays the takeover
/// instead of publishing behind it.
async fn check_fence(tx: &mut Transaction<'_, Postgres>, fence: &LocationFence) -> Result<()> {
    let held: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM leases
          WHERE location_id = $1 AND bucket = 0 AND holder = $2 AND epoch = $3
            AND expires_at > clock_timestamp()
            FOR SHARE",
    )
    .bind(fence.location_id)
    .bind(fence.holder)
    .bind(fence.epoch)
    .fetch_optional(&mut **tx)
    .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(Error::Fenced(format!(
            "the lease of ordered receive location {} at epoch {} is no longer held by this instance; nothing was published",
            fence.location_id, fence.epoch
        ))),
    }
}

/// The reason recorded for a routing failure: names the promoted properties.
pub(crate) fn routing_failure_reason(context: &Context) -> String {
    let late = match crate::replies::reply_token(context) {
        Some(token) => format!(
            ", and no client waits for its correlation token {token} any more (it timed out or left, or its instance died)"
        ),
        None => String::new(),
    };
    format!(
        "no subscriber matched{late}; promoted properties: {}",
        context.promoted_summary()
    )
}

/// `{1,2,3}`: a bigint[] literal, for passing arrays of arrays through unnest.
pub(crate) fn pg_bigint_array(values: &[i64]) -> String {
    let inner: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    format!("{{{}}}", inner.join(","))
}

/// What the dedup window says of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dedup {
    Fresh,
    /// Its source id was seen: dropped.
    Duplicate,
    /// Its source id was seen with another body digest: refused.
    Reused,
}

impl Dedup {
    /// What a message not published becomes (a fresh one's outcome is set once it is
    /// routed).
    fn not_published(&self) -> Published {
        match self {
            Dedup::Reused => Published::SourceReused,
            Dedup::Fresh | Dedup::Duplicate => Published::Duplicate,
        }
    }
}

/// Records source ids; returns per message whether it is fresh (not a duplicate within
/// the dedup window), a duplicate, or a reuse of its source id with another body (both
/// digests known and different). Duplicates inside the batch keep only their first
/// occurrence.
async fn dedup_sources(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
    messages: &[NewMessage],
) -> Result<Vec<Dedup>> {
    let mut fresh = vec![Dedup::Fresh; messages.len()];
    let batch = SourceBatch::of(ids, messages);
    if batch.locs.is_empty() {
        return Ok(fresh);
    }
    let accepted = batch.record(tx).await?;
    // the first of the batch with a source id seen before: compared with the digest the
    // source id was published with first
    let repeated: Vec<usize> = batch
        .first_of
        .values()
        .copied()
        .filter(|&i| !accepted.contains(&ids[i]))
        .collect();
    let stored = stored_digests(tx, messages, &repeated).await?;
    // the digest a source id was published with first: stored before, or of this batch
    let published_with = |first: usize| -> Option<[u8; 32]> {
        let src = messages[first].source.as_ref()?;
        if accepted.contains(&ids[first]) {
            src.body_sha256
        } else {
            stored
                .get(&(src.location_id, src.id.clone()))
                .copied()
                .flatten()
        }
    };
    for &i in &repeated {
        let digest = messages[i].source.as_ref().and_then(|s| s.body_sha256);
        fresh[i] = repeat_of(published_with(i), digest);
    }
    for &(i, first) in &batch.in_batch {
        let digest = messages[i].source.as_ref().and_then(|s| s.body_sha256);
        fresh[i] = repeat_of(published_with(first), digest);
    }
    track_duplicates(tx, messages, &fresh).await?;
    Ok(fresh)
}

/// The source ids of a batch to record: the first message of the batch with each
/// (location, source id), one vector per column (bound to `unnest`).
struct SourceBatch<'a> {
    /// The first message of the batch with each (location, source id).
    first_of: HashMap<(i64, &'a str), usize>,
    /// (a later one, the first one) of the batch with the same (location, source id).
    in_batch: Vec<(usize, usize)>,
    locs: Vec<i64>,
    srcs: Vec<String>,
    mids: Vec<Uuid>,
    digests: Vec<Option<Vec<u8>>>,
    idents: Vec<Option<String>>,
}

impl<'a> SourceBatch<'a> {
    fn of(ids: &[Uuid], messages: &'a [NewMessage]) -> Self {
        let mut batch = SourceBatch {
            first_of: HashMap::new(),
            in_batch: Vec::new(),
            locs: Vec::new(),
            srcs: Vec::new(),
            mids: Vec::new(),
            digests: Vec::new(),
            idents: Vec::new(),
        };
        for (i, m) in messages.iter().enumerate() {
            if let Some(src) = &m.source {
                if let Some(&first) = batch.first_of.get(&(src.location_id, src.id.as_str())) {
                    batch.in_batch.push((i, first));
                    continue;
                }
                batch.first_of.insert((src.location_id, src.id.as_str()), i);
                batch.locs.push(src.location_id);
                batch.srcs.push(src.id.clone());
                batch.mids.push(ids[i]);
                batch.digests.push(src.body_sha256.map(|d| d.to_vec()));
                batch.idents.push(m.source_identity.clone());
            }
        }
        batch
    }

    /// Records each source id not seen within the dedup window (a new one, or one whose
    /// record has expired); returns the messages whose source id was recorded.
    async fn record(&self, tx: &mut Transaction<'_, Postgres>) -> Result<HashSet<Uuid>> {
        Ok(sqlx::query_scalar::<_, Uuid>(
            "INSERT INTO received_sources (receive_location_id, source_id, message_id, body_sha256, source_identity)
             SELECT * FROM unnest($1::int8[], $2::text[], $3::uuid[], $5::bytea[], $6::text[])
             ON CONFLICT (receive_location_id, source_id) DO UPDATE
                SET message_id = excluded.message_id, published_at = now(),
                    body_sha256 = excluded.body_sha256, source_identity = excluded.source_identity
              WHERE received_sources.published_at < now() - make_interval(secs => $4)
             RETURNING message_id",
        )
        .bind(&self.locs)
        .bind(&self.srcs)
        .bind(&self.mids)
        .bind(DEDUP_WINDOW_S as f64)
        .bind(&self.digests)
        .bind(&self.idents)
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .collect())
    }
}

/// The body digests the source ids of `repeated` (messages whose source id was seen
/// before) were recorded with, by (location, source id).
async fn stored_digests(
    tx: &mut Transaction<'_, Postgres>,
    messages: &[NewMessage],
    repeated: &[usize],
) -> Result<HashMap<(i64, String), Option<[u8; 32]>>> {
    if repeated.is_empty() {
        return Ok(HashMap::new());
    }
    let (r_locs, r_srcs): (Vec<i64>, Vec<String>) = repeated
        .iter()
        .filter_map(|&i| messages[i].source.as_ref())
        .map(|s| (s.location_id, s.id.clone()))
        .unzip();
    Ok(sqlx::query_as::<_, (i64, String, Option<Vec<u8>>)>(
        "SELECT r.receive_location_id, r.source_id, r.body_sha256
           FROM unnest($1::int8[], $2::text[]) AS t(loc, src)
           JOIN received_sources r ON r.receive_location_id = t.loc AND r.source_id = t.src",
    )
    .bind(&r_locs)
    .bind(&r_srcs)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .map(|(loc, src, d)| ((loc, src), d.and_then(|d| <[u8; 32]>::try_from(d).ok())))
    .collect())
}

/// Never silent: the message published first with a source id records each duplicate
/// of it `dedup` drops.
async fn track_duplicates(
    tx: &mut Transaction<'_, Postgres>,
    messages: &[NewMessage],
    dedup: &[Dedup],
) -> Result<()> {
    let (dup_locs, dup_srcs): (Vec<i64>, Vec<String>) = messages
        .iter()
        .zip(dedup)
        .filter(|(_, d)| **d == Dedup::Duplicate)
        .filter_map(|(m, _)| m.source.as_ref())
        .map(|s| (s.location_id, s.id.clone()))
        .unzip();
    if dup_locs.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO tracking_events (message_id, event, detail)
         SELECT r.message_id, 'duplicate-dropped',
                'source ' || t.src || ' received again by ' || coalesce(l.name, 'a deleted location')
                || ' within the dedup window; dropped, not published again'
           FROM unnest($1::int8[], $2::text[]) AS t(loc, src)
           JOIN received_sources r ON r.receive_location_id = t.loc AND r.source_id = t.src
           LEFT JOIN receive_locations l ON l.id = t.loc",
    )
    .bind(&dup_locs)
    .bind(&dup_srcs)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A source id seen before (with `first`'s digest) comes again with `again`'s: a
/// duplicate, unless both digests are known and differ.
fn repeat_of(first: Option<[u8; 32]>, again: Option<[u8; 32]>) -> Dedup {
    match (first, again) {
        (Some(a), Some(b)) if a != b => Dedup::Reused,
        _ => Dedup::Duplicate,
    }
}

/// Stores a large body in chunks of [`BODY_CHUNK_BYTES`], one statement per chunk; a
/// file is read one chunk at a time (and refused if it is no longer its length).
pub(crate) async fn store_chunks(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    body: &NewBody,
) -> Result<()> {
    let insert = |seq: usize, chunk: Vec<u8>| {
        sqlx::query("INSERT INTO message_chunks (message_id, seq, data) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(i32::try_from(seq).unwrap_or(i32::MAX))
            .bind(chunk)
    };
    match body {
        NewBody::Bytes(b) => {
            for (seq, chunk) in b.chunks(BODY_CHUNK_BYTES).enumerate() {
                insert(seq, chunk.to_vec()).execute(&mut **tx).await?;
            }
        }
        NewBody::File { path, len } => {
            use tokio::io::AsyncReadExt;
            let io = |e: std::io::Error| Error::Body(format!("reading {}: {e}", path.display()));
            let mut file = tokio::fs::File::open(path).await.map_err(io)?;
            let mut left = *len;
            let mut seq = 0;
            while left > 0 {
                let want =
                    usize::try_from(left.min(BODY_CHUNK_BYTES as u64)).unwrap_or(BODY_CHUNK_BYTES);
                let mut chunk = vec![0u8; want];
                file.read_exact(&mut chunk).await.map_err(|e| {
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        changed_while_read(path, *len)
                    } else {
                        io(e)
                    }
                })?;
                insert(seq, chunk).execute(&mut **tx).await?;
                left -= want as u64;
                seq += 1;
            }
            if file.read(&mut [0u8; 1]).await.map_err(io)? != 0 {
                return Err(changed_while_read(path, *len));
            }
        }
        NewBody::CopyOf { message_id, .. } => {
            sqlx::query(
                "INSERT INTO message_chunks (message_id, seq, data)
                 SELECT $1, seq, data FROM message_chunks WHERE message_id = $2",
            )
            .bind(id)
            .bind(message_id)
            .execute(&mut **tx)
            .await?;
        }
        NewBody::Staged {
            source_group,
            send_port,
            source_message_id,
            len,
        } => {
            let moved: Option<i64> = sqlx::query_scalar(
                "WITH gone AS (
                    DELETE FROM forward_chunks
                     WHERE source_group = $2 AND send_port = $3 AND source_message_id = $4
                    RETURNING seq, data),
                 ins AS (
                    INSERT INTO message_chunks (message_id, seq, data)
                    SELECT $1, seq, data FROM gone RETURNING length(data) AS n)
                 SELECT sum(n)::int8 FROM ins",
            )
            .bind(id)
            .bind(source_group)
            .bind(send_port)
            .bind(source_message_id)
            .fetch_one(&mut **tx)
            .await?;
            if u64::try_from(moved.unwrap_or(0)).unwrap_or(0) != *len {
                return Err(Error::Corrupt(format!(
                    "forwarded message {source_message_id}: {} bytes of chunks arrived for a {len}-byte body",
                    moved.unwrap_or(0)
                )));
            }
        }
    }
    Ok(())
}

impl MessageBox {
    /// Chunk `seq` of a body stored in chunks (`None` past the last): a send adapter reads
    /// a large body one chunk at a time.
    pub async fn message_chunk(&self, id: Uuid, seq: i32) -> Result<Option<Bytes>> {
        let data: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT data FROM message_chunks WHERE message_id = $1 AND seq = $2",
        )
        .bind(id)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        Ok(data.map(Bytes::from))
    }
}

/// A message no longer in the MessageBox.
fn message_gone(id: Uuid) -> Error {
    Error::not_found("message", id.to_string(), "it was delivered or terminated")
}

impl MessageBox {
    /// The first `max` bytes of a message's body and whether it is stored in chunks (a
    /// preview reads no more than it shows).
    pub async fn message_body_prefix(&self, id: Uuid, max: i32) -> Result<(Bytes, bool)> {
        let row: Option<(Option<Vec<u8>>, bool)> = sqlx::query_as(
            "SELECT CASE WHEN m.chunked
                         THEN (SELECT substring(c.data FROM 1 FOR $2) FROM message_chunks c
                                WHERE c.message_id = m.id AND c.seq = 0)
                         ELSE substring(m.body FROM 1 FOR $2) END,
                    m.chunked
               FROM messages m WHERE m.id = $1",
        )
        .bind(id)
        .bind(max)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            None => Err(message_gone(id)),
            Some((body, chunked)) => Ok((Bytes::from(body.unwrap_or_default()), chunked)),
        }
    }

    /// The whole body of a message (inline or chunked).
    pub async fn message_body(&self, id: Uuid) -> Result<Bytes> {
        let row: Option<(Option<Vec<u8>>, bool)> =
            sqlx::query_as("SELECT body, chunked FROM messages WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        match row {
            None => Err(message_gone(id)),
            Some((Some(body), false)) => Ok(Bytes::from(body)),
            Some((_, _)) => {
                let chunks: Vec<Vec<u8>> = sqlx::query_scalar(
                    "SELECT data FROM message_chunks WHERE message_id = $1 ORDER BY seq",
                )
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
                Ok(Bytes::from(chunks.concat()))
            }
        }
    }
}
