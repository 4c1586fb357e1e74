//! Orchestration instances in the MessageBox: routing to them (activation and
//! correlation, inside the publish), claiming the runnable ones, and committing a step —
//! the instance's new state, the messages it consumed and those it publishes, in one
//! transaction (a persistence point). The interpreter itself is `mbx-orchestration`'s;
//! this module never reads a workflow document.
//!
//! Routing: every orchestration has *shapes* — sorted lists of the property names one of
//! its event filters fixes — and a message that carries a shape's properties has a *key*
//! for it (the canonical JSON of those values). An instance subscribes by key; a message
//! whose key an instance of the orchestration holds goes to it (held in its inbox until a
//! listen takes it); otherwise, if the orchestration is enabled and its activation
//! matches, it activates a new instance, whose activation key is unique while it lives
//! (the one instance of a convoy: concurrent publishes serialise on that unique index).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::orchestrations::Activation;
use crate::publish::{NewMessage, Publisher, Routing};
use crate::routing::RoutingTable;
use crate::{Context, Error, MessageBox, Result};

/// What routing knows of one orchestration.
#[derive(Debug, Clone)]
pub(crate) struct ProcessRoute {
    pub orchestration_id: i64,
    pub enabled: bool,
    /// The current version: new activations start on it.
    pub version: String,
    pub activations: Vec<Activation>,
    /// Every shape of every version (instances of an older version still listen).
    pub shapes: Vec<Vec<String>>,
    /// An ordered orchestration's buckets: each new instance takes its convoy key's.
    pub buckets: Option<i32>,
}

/// The canonical key of exact values (property → text): what an instance subscribes to.
pub fn correlation_key<'a>(values: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let map: BTreeMap<&str, String> = values.into_iter().collect();
    serde_json::to_string(&map).unwrap_or_default()
}

/// A message's key for `shape`, if it carries every property of it (promoted;
/// `mbx.MessageType` included).
fn key_of(context: &Context, shape: &[String]) -> Option<String> {
    let mut values = Vec::with_capacity(shape.len());
    for name in shape {
        values.push((name.as_str(), context.promoted(name)?.to_plain_string()));
    }
    Some(correlation_key(values))
}

/// The states of an instance (the DSL's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    Pending,
    Running,
    Waiting,
    Suspended,
    Faulted,
    Cancelled,
    Completed,
}

impl ProcessState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessState::Pending => "pending",
            ProcessState::Running => "running",
            ProcessState::Waiting => "waiting",
            ProcessState::Suspended => "suspended",
            ProcessState::Faulted => "faulted",
            ProcessState::Cancelled => "cancelled",
            ProcessState::Completed => "completed",
        }
    }

    /// Whether the instance ended (nothing more runs; its subscriptions are gone). A
    /// faulted instance has not: it can be resumed, and messages for it are held.
    pub fn ended(self) -> bool {
        matches!(self, ProcessState::Cancelled | ProcessState::Completed)
    }
}

/// What a publish routed to instances: per message index, how many instances. (A
/// message routed anywhere makes the publish notify; the hosts' orchestration loops wake
/// on that notification as their dispatchers do.)
#[derive(Debug, Default)]
pub(crate) struct ProcessRouting {
    pub reached: HashMap<usize, usize>,
}

/// A message routed to an instance, in the making.
struct Held {
    instance: Uuid,
    message: Uuid,
    activating: bool,
}

/// The contexts of the messages of a publish that route to orchestration instances:
/// the fresh ones that are not replies only (`None` for the others).
pub(crate) fn routable<'m>(messages: &'m [NewMessage], fresh: &[bool]) -> Vec<Option<&'m Context>> {
    messages
        .iter()
        .zip(fresh)
        .map(|(m, f)| {
            (*f && !matches!(m.routing, Routing::ReplyOnly | Routing::OnlyPort(_)))
                .then_some(&m.context)
        })
        .collect()
}

/// The routing table, or only orchestration `only`'s part of it.
fn only_orchestration(
    table: &RoutingTable,
    only: Option<i64>,
) -> std::borrow::Cow<'_, RoutingTable> {
    use std::borrow::Cow;
    match only {
        None => Cow::Borrowed(table),
        Some(o) => Cow::Owned(RoutingTable {
            processes: table
                .processes
                .iter()
                .filter(|p| p.orchestration_id == o)
                .cloned()
                .collect(),
            ..RoutingTable::default()
        }),
    }
}

/// Routes messages (`ids`, with their contexts; `None`: not routed) to orchestration
/// instances (inside the publish's `tx`, under the routing lock): by correlation to the
/// instances that subscribe to their keys, else as activations of new instances. `only`:
/// to that orchestration's instances alone (a message routed again, which the others had
/// when it was published).
pub(crate) async fn route_to_instances(
    tx: &mut Transaction<'_, Postgres>,
    table: &RoutingTable,
    ids: &[Uuid],
    contexts: &[Option<&Context>],
    only: Option<i64>,
) -> Result<ProcessRouting> {
    let mut out = ProcessRouting::default();
    let table = only_orchestration(table, only);
    let table = table.as_ref();
    if table.processes.is_empty() {
        return Ok(out);
    }
    let routable: Vec<(usize, &Context)> = contexts
        .iter()
        .enumerate()
        .filter_map(|(i, c)| Some((i, (*c)?)))
        .collect();
    let subscribed = subscribed_instances(tx, table, &routable).await?;
    let mut held: Vec<Held> = Vec::new();
    let mut activations: Vec<Starting> = Vec::new();
    for &(i, context) in &routable {
        for p in &table.processes {
            let mut reached: Vec<Uuid> = p
                .shapes
                .iter()
                .filter_map(|s| key_of(context, s))
                .flat_map(|k| {
                    subscribed
                        .get(&(p.orchestration_id, k))
                        .cloned()
                        .unwrap_or_default()
                })
                .collect();
            reached.sort();
            reached.dedup();
            if !reached.is_empty() {
                held.extend(reached.iter().map(|&instance| Held {
                    instance,
                    message: ids[i],
                    activating: false,
                }));
                continue;
            }
            if !p.enabled {
                continue;
            }
            let lookup = |name: &str| context.promoted(name);
            if let Some(a) = p.activations.iter().find(|a| a.filter.eval(lookup)) {
                activations.push(Starting::new(p, a, ids[i], context));
            }
        }
    }
    let started = start_instances(tx, table, activations, &mut held).await?;
    hold(tx, &held).await?;
    for h in &held {
        if let Some(i) = ids.iter().position(|id| *id == h.message) {
            *out.reached.entry(i).or_default() += 1;
        }
    }
    wake(tx, &held, &started).await?;
    Ok(out)
}

/// The instances subscribed to the keys the messages give, by (orchestration, key).
async fn subscribed_instances(
    tx: &mut Transaction<'_, Postgres>,
    table: &RoutingTable,
    routable: &[(usize, &Context)],
) -> Result<HashMap<(i64, String), Vec<Uuid>>> {
    let mut orchestrations = Vec::new();
    let mut keys = Vec::new();
    let mut seen = HashSet::new();
    for &(_, context) in routable {
        for p in &table.processes {
            for s in &p.shapes {
                if let Some(k) = key_of(context, s) {
                    if seen.insert((p.orchestration_id, k.clone())) {
                        orchestrations.push(p.orchestration_id);
                        keys.push(k);
                    }
                }
            }
        }
    }
    let mut out: HashMap<(i64, String), Vec<Uuid>> = HashMap::new();
    if keys.is_empty() {
        return Ok(out);
    }
    #[derive(sqlx::FromRow)]
    struct Row {
        orchestration_id: i64,
        key: String,
        instance_id: Uuid,
    }
    // the instances are locked (in id order) before anything is held for them: a step
    // ending one concurrently holds its row from its first statement, so this waits for
    // it and then sees it ended (and holds nothing for it) — never a message held for an
    // instance whose leftovers were already settled
    let rows = sqlx::query_as::<_, Row>(
        "SELECT s.orchestration_id, s.key, s.instance_id
           FROM orchestration_subscriptions s
           JOIN unnest($1::int8[], $2::text[]) AS c(o, k) ON s.orchestration_id = c.o AND s.key = c.k
           JOIN orchestration_instances i ON i.id = s.instance_id
          WHERE i.state NOT IN ('completed', 'cancelled')
          ORDER BY s.instance_id
            FOR NO KEY UPDATE OF i",
    )
    .bind(&orchestrations)
    .bind(&keys)
    .fetch_all(&mut **tx)
    .await?;
    for r in rows {
        out.entry((r.orchestration_id, r.key))
            .or_default()
            .push(r.instance_id);
    }
    Ok(out)
}

/// A message that activates a new instance (unless its convoy key is taken).
struct Starting {
    orchestration_id: i64,
    version: String,
    message: Uuid,
    /// The keys the new instance subscribes to (one per activation filter whose
    /// correlation the message fixes), sorted: the first is the convoy's.
    keys: Vec<String>,
    correlation: BTreeMap<String, String>,
}

impl Starting {
    fn new(p: &ProcessRoute, matched: &Activation, message: Uuid, context: &Context) -> Starting {
        let mut correlation = BTreeMap::new();
        for name in &matched.correlate {
            if let Some(v) = context.promoted(name) {
                correlation.insert(name.clone(), v.to_plain_string());
            }
        }
        // the instance's keys: each activation filter's exact values with the values
        // this message fixes (a parallel convoy's other messages find it by them)
        let mut keys = Vec::new();
        if !matched.correlate.is_empty() {
            for a in std::iter::once(matched).chain(p.activations.iter().filter(|a| *a != matched))
            {
                if a.correlate.iter().all(|c| correlation.contains_key(c))
                    && !a.correlate.is_empty()
                {
                    let values = a.with.iter().map(|(k, v)| (k.as_str(), v.clone())).chain(
                        a.correlate
                            .iter()
                            .map(|c| (c.as_str(), correlation[c].clone())),
                    );
                    keys.push(correlation_key(values));
                }
            }
            // the convoy's key (the first) is the least of them, whichever filter matched:
            // the messages of a `schedule.on.all` (or `any`) with the same correlation
            // values then share one instance, in one publish or in several
            keys.sort();
            keys.dedup();
        }
        Starting {
            orchestration_id: p.orchestration_id,
            version: p.version.clone(),
            message,
            keys,
            correlation,
        }
    }
}

/// Creates the instances `activations` start — one per convoy key: a message whose key
/// an earlier one of this publish (or a concurrent one, through the unique index) took
/// joins that instance instead. Adds every routed message to `held`.
async fn start_instances(
    tx: &mut Transaction<'_, Postgres>,
    table: &RoutingTable,
    activations: Vec<Starting>,
    held: &mut Vec<Held>,
) -> Result<Vec<Uuid>> {
    let mut started: Vec<Uuid> = Vec::new();
    let mut convoy: HashMap<(i64, String), Uuid> = HashMap::new();
    let mut new_rows: Vec<(&Starting, Uuid)> = Vec::new();
    for a in &activations {
        if let Some(first) = a.keys.first() {
            if let Some(&instance) = convoy.get(&(a.orchestration_id, first.clone())) {
                held.push(Held {
                    instance,
                    message: a.message,
                    activating: false,
                });
                continue;
            }
        }
        let id = Uuid::now_v7();
        if let Some(first) = a.keys.first() {
            convoy.insert((a.orchestration_id, first.clone()), id);
        }
        new_rows.push((a, id));
    }
    // the convoy keys first: a key a concurrent publish took makes its message follow
    // that instance (this statement waits for that publish to commit or roll back)
    let won = take_convoy_keys(tx, &new_rows).await?;
    for (a, id) in &new_rows {
        let owner = match a.keys.first() {
            Some(key) if !won.contains(id) => {
                convoy_owner(tx, a.orchestration_id, key, *id).await?
            }
            _ => *id,
        };
        if owner == *id {
            held.push(Held {
                instance: *id,
                message: a.message,
                activating: true,
            });
            started.push(*id);
        } else {
            held.push(Held {
                instance: owner,
                message: a.message,
                activating: false,
            });
        }
    }
    insert_instances(tx, table, &new_rows, &started).await?;
    Ok(started)
}

/// Takes the convoy keys of the instances about to start; returns those that got theirs.
async fn take_convoy_keys(
    tx: &mut Transaction<'_, Postgres>,
    new_rows: &[(&Starting, Uuid)],
) -> Result<HashSet<Uuid>> {
    let (mut orch, mut keys, mut inst) = (Vec::new(), Vec::new(), Vec::new());
    for (a, id) in new_rows {
        if let Some(k) = a.keys.first() {
            orch.push(a.orchestration_id);
            keys.push(k.clone());
            inst.push(*id);
        }
    }
    Ok(sqlx::query_scalar(
        "INSERT INTO orchestration_subscriptions (orchestration_id, key, instance_id, activation)
         SELECT * , true FROM unnest($1::int8[], $2::text[], $3::uuid[])
         ON CONFLICT (orchestration_id, key) WHERE activation DO NOTHING
         RETURNING instance_id",
    )
    .bind(&orch)
    .bind(&keys)
    .bind(&inst)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect())
}

/// The instance that owns a convoy key another transaction took first: it, or — when it
/// ended meanwhile and freed the key — `id`, which takes the key now.
async fn convoy_owner(
    tx: &mut Transaction<'_, Postgres>,
    orchestration: i64,
    key: &str,
    id: Uuid,
) -> Result<Uuid> {
    for _ in 0..8 {
        let existing: Option<Uuid> = sqlx::query_scalar(
            "SELECT instance_id FROM orchestration_subscriptions
              WHERE orchestration_id = $1 AND key = $2 AND activation",
        )
        .bind(orchestration)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(owner) = existing {
            return Ok(owner);
        }
        let taken: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO orchestration_subscriptions (orchestration_id, key, instance_id, activation)
             VALUES ($1, $2, $3, true) ON CONFLICT (orchestration_id, key) WHERE activation DO NOTHING
             RETURNING instance_id",
        )
        .bind(orchestration)
        .bind(key)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        if taken.is_some() {
            return Ok(id);
        }
    }
    Err(Error::Refused(format!(
        "orchestration {orchestration}: the convoy {key} kept changing owner while this publish routed to it; publish again"
    )))
}

async fn insert_instances(
    tx: &mut Transaction<'_, Postgres>,
    table: &RoutingTable,
    rows: &[(&Starting, Uuid)],
    started: &[Uuid],
) -> Result<()> {
    let mut ids = Vec::new();
    let mut orch = Vec::new();
    let mut versions = Vec::new();
    let mut correlation = Vec::new();
    let mut buckets: Vec<Option<i32>> = Vec::new();
    let (mut sub_o, mut sub_k, mut sub_i) = (Vec::new(), Vec::new(), Vec::new());
    for (a, id) in rows.iter().filter(|(_, id)| started.contains(id)) {
        ids.push(*id);
        orch.push(a.orchestration_id);
        // an ordered orchestration's instance: its convoy key's bucket (an instance
        // without correlation is a convoy of its own)
        let ordered = table
            .processes
            .iter()
            .find(|p| p.orchestration_id == a.orchestration_id)
            .and_then(|p| p.buckets);
        buckets.push(ordered.map(|n| {
            let key = a.keys.first().cloned().unwrap_or_else(|| id.to_string());
            crate::routing::key_bucket(&key, n)
        }));
        versions.push(a.version.clone());
        correlation.push(serde_json::to_value(&a.correlation).unwrap_or_default());
        for k in a.keys.iter().skip(1) {
            sub_o.push(a.orchestration_id);
            sub_k.push(k.clone());
            sub_i.push(*id);
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO orchestration_instances (id, orchestration_id, version, state, correlation, runnable_at, bucket)
         SELECT i, o, v, 'pending', c, now(), b
           FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::jsonb[], $5::int4[]) AS x(i, o, v, c, b)",
    )
    .bind(&ids)
    .bind(&orch)
    .bind(&versions)
    .bind(&correlation)
    .bind(&buckets)
    .execute(&mut **tx)
    .await?;
    if !sub_i.is_empty() {
        sqlx::query(
            "INSERT INTO orchestration_subscriptions (orchestration_id, key, instance_id, activation)
             SELECT *, true FROM unnest($1::int8[], $2::text[], $3::uuid[]) ON CONFLICT DO NOTHING",
        )
        .bind(&sub_o)
        .bind(&sub_k)
        .bind(&sub_i)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Holds the routed messages in their instances' inboxes, in routing order.
async fn hold(tx: &mut Transaction<'_, Postgres>, held: &[Held]) -> Result<()> {
    if held.is_empty() {
        return Ok(());
    }
    let instances: Vec<Uuid> = held.iter().map(|h| h.instance).collect();
    let messages: Vec<Uuid> = held.iter().map(|h| h.message).collect();
    let activating: Vec<bool> = held.iter().map(|h| h.activating).collect();
    sqlx::query(
        "INSERT INTO orchestration_inbox (instance_id, message_id, activating)
         SELECT i, m, a FROM unnest($1::uuid[], $2::uuid[], $3::bool[]) WITH ORDINALITY AS x(i, m, a, n)
         ORDER BY n
         ON CONFLICT DO NOTHING",
    )
    .bind(&instances)
    .bind(&messages)
    .bind(&activating)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Makes the instances that were held a message runnable now (a suspended or ended one
/// keeps it held).
async fn wake(tx: &mut Transaction<'_, Postgres>, held: &[Held], started: &[Uuid]) -> Result<()> {
    // the instances started here are runnable already
    let existing: Vec<Uuid> = held
        .iter()
        .map(|h| h.instance)
        .filter(|i| !started.contains(i))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if existing.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE orchestration_instances i
            SET pokes = i.pokes + 1, runnable_at = least(coalesce(i.runnable_at, now()), now())
          WHERE i.id = ANY($1) AND i.state IN ('pending', 'running', 'waiting')",
    )
    .bind(&existing)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A claimed instance, ready for a step.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedInstance {
    pub id: Uuid,
    pub orchestration_id: i64,
    pub orchestration: String,
    pub version: String,
    pub state: ProcessState,
    pub data: Option<serde_json::Value>,
    pub pokes: i64,
    pub claim_token: Uuid,
    /// The database's time when claimed, seconds since the epoch: the step's `now`.
    pub now: f64,
    /// Since when it was runnable (seconds since the epoch): its message's arrival, its
    /// timer's due time — the start of its step's latency.
    pub due: f64,
}

/// A message held for (or consumed by) an instance.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HeldMessage {
    pub instance_id: Uuid,
    pub message_id: Uuid,
    pub seq: i64,
    pub activating: bool,
    pub consumed: bool,
    pub content_type: String,
    pub context: sqlx::types::Json<Context>,
    pub published_at: DateTime<Utc>,
    /// The body when stored inline (≤ 1 MiB); `None` when chunked.
    pub body: Option<Vec<u8>>,
}

/// How a step ends, to commit.
#[derive(Debug, Clone)]
pub struct StepCommit {
    pub instance_id: Uuid,
    pub claim_token: Uuid,
    pub pokes_seen: i64,
    pub state: ProcessState,
    pub data: serde_json::Value,
    pub error: Option<serde_json::Value>,
    /// When it is due again without a message (a timer, a timeout), if ever.
    pub wake_at: Option<f64>,
    /// The host keeps the claim (it sends a call and commits the answer next).
    pub keep_claim: bool,
    pub consumed: Vec<Uuid>,
    pub publish: Vec<NewMessage>,
    /// The correlation keys it subscribes to now (besides its activation's).
    pub subscriptions: Vec<String>,
    /// The task path it stands on after the step (its history names it).
    pub task: Option<String>,
}

impl MessageBox {
    /// Claims up to `limit` runnable instances of the orchestrations bound to `host_id`
    /// for the host instance `instance`.
    pub async fn process_claim(
        &self,
        instance: Uuid,
        host_id: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedInstance>> {
        Ok(sqlx::query_as::<_, ClaimedInstance>(
            "WITH c AS (
                SELECT i.id, i.runnable_at FROM orchestration_instances i
                  JOIN orchestrations o ON o.id = i.orchestration_id
                 WHERE i.runnable_at <= now() AND i.claimed_by IS NULL AND o.host_id = $2
                   AND i.state IN ('pending', 'running', 'waiting') AND i.bucket IS NULL
                 ORDER BY i.runnable_at
                 LIMIT $3 FOR UPDATE OF i SKIP LOCKED)
             UPDATE orchestration_instances i
                SET claimed_by = $1, claim_token = gen_random_uuid(), runnable_at = NULL
               FROM c, orchestrations o
              WHERE i.id = c.id AND o.id = i.orchestration_id
             RETURNING i.id, i.orchestration_id, o.name AS orchestration, i.version, i.state, i.data,
                       i.pokes, i.claim_token, extract(epoch FROM now())::float8 AS now,
                       extract(epoch FROM c.runnable_at)::float8 AS due",
        )
        .bind(instance)
        .bind(host_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// When the next instance of `host_id` is due (a timer, a timeout), if any is.
    pub async fn process_next_due(&self, host_id: i64) -> Result<Option<DateTime<Utc>>> {
        Ok(sqlx::query_scalar(
            "SELECT min(i.runnable_at) FROM orchestration_instances i
               JOIN orchestrations o ON o.id = i.orchestration_id
              WHERE o.host_id = $1 AND i.claimed_by IS NULL AND i.runnable_at IS NOT NULL",
        )
        .bind(host_id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Gives back the claim of a step that could not commit (a lost connection, a
    /// deadlock): the instance runs again from its last persistence point after `delay_s`
    /// on another claim. A claim the step did commit (and so cleared) is not touched.
    pub async fn process_release(&self, id: Uuid, claim_token: Uuid, delay_s: f64) -> Result<()> {
        sqlx::query(
            "UPDATE orchestration_instances
                SET claimed_by = NULL, claim_token = NULL,
                    runnable_at = now() + make_interval(secs => $3)
              WHERE id = $1 AND claim_token = $2",
        )
        .bind(id)
        .bind(claim_token)
        .bind(delay_s)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An orchestration version's document (hosts cache the compiled definition).
    pub async fn process_document(
        &self,
        orchestration_id: i64,
        version: &str,
    ) -> Result<serde_json::Value> {
        sqlx::query_scalar(
            "SELECT document FROM orchestration_versions WHERE orchestration_id = $1 AND version = $2",
        )
        .bind(orchestration_id)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "orchestration version",
            name: format!("{orchestration_id}@{version}"),
            hint: "it was deleted; the instance cannot run".into(),
        })
    }

    /// The messages routed to `instance`, in arrival order, with their bodies.
    pub async fn process_held(&self, instance: Uuid) -> Result<Vec<HeldMessage>> {
        Ok(sqlx::query_as::<_, HeldMessage>(
            "SELECT b.instance_id, b.message_id, b.seq, b.activating, b.consumed,
                    m.content_type, m.context, m.published_at, m.body
               FROM orchestration_inbox b JOIN messages m ON m.id = b.message_id
              WHERE b.instance_id = $1
              ORDER BY b.seq",
        )
        .bind(instance)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Commits a step: the instance's state (fenced by its claim), what it consumed, what
    /// it publishes, its subscriptions — one transaction. Returns the database's time of
    /// the commit (seconds since the epoch), or `None`: the claim was lost (another host
    /// runs it now) and nothing changed.
    pub async fn process_commit(&self, instance: Uuid, step: StepCommit) -> Result<Option<f64>> {
        let mut tx = self.pool.begin().await?;
        let updated: Option<f64> = sqlx::query_scalar(
            "UPDATE orchestration_instances
                SET state = $3, data = $4, error = $5, steps = steps + 1, updated_at = now(),
                    runnable_at = CASE WHEN $8 THEN NULL
                                       WHEN state IN ('pending', 'running', 'waiting') AND $3 IN ('running', 'waiting', 'pending')
                                            AND pokes <> $6 THEN now()
                                       WHEN $3 IN ('running', 'waiting', 'pending') THEN to_timestamp($7)
                                       ELSE NULL END,
                    claimed_by = CASE WHEN $8 THEN claimed_by ELSE NULL END,
                    claim_token = CASE WHEN $8 THEN claim_token ELSE NULL END,
                    ended_at = CASE WHEN $3 IN ('completed', 'cancelled') THEN now() END
              WHERE id = $1 AND claim_token = $2 AND claimed_by = $9
                -- an ordered orchestration's step: only under its bucket's lease, at the
                -- epoch of its claim (locked: the bucket cannot move until this commits)
                AND (bucket IS NULL OR EXISTS (
                     SELECT 1 FROM leases l
                      WHERE l.orchestration_id = orchestration_instances.orchestration_id
                        AND l.bucket = orchestration_instances.bucket AND l.holder = $9
                        AND l.epoch = orchestration_instances.claim_epoch AND l.expires_at > now()
                        FOR SHARE))
             RETURNING extract(epoch FROM now())::float8",
        )
        .bind(step.instance_id)
        .bind(step.claim_token)
        .bind(step.state.as_str())
        .bind(&step.data)
        .bind(&step.error)
        .bind(step.pokes_seen)
        .bind(step.wake_at)
        .bind(step.keep_claim)
        .bind(instance)
        .fetch_optional(&mut *tx)
        .await?;
        // the transaction's time (the step's commit, as the database counts it)
        let Some(now) = updated else {
            return Ok(None);
        };
        self.commit_effects(&mut tx, &step).await?;
        tx.commit().await?;
        if !step.publish.is_empty() {
            self.notify_published().await;
        }
        Ok(Some(now))
    }

    async fn commit_effects(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        step: &StepCommit,
    ) -> Result<()> {
        if !step.consumed.is_empty() {
            sqlx::query("UPDATE orchestration_inbox SET consumed = true WHERE instance_id = $1 AND message_id = ANY($2)")
                .bind(step.instance_id)
                .bind(&step.consumed)
                .execute(&mut **tx)
                .await?;
        }
        sqlx::query("DELETE FROM orchestration_subscriptions WHERE instance_id = $1 AND (NOT activation OR $2)")
            .bind(step.instance_id)
            .bind(step.state.ended())
            .execute(&mut **tx)
            .await?;
        if !step.state.ended() && !step.subscriptions.is_empty() {
            sqlx::query(
                "INSERT INTO orchestration_subscriptions (orchestration_id, key, instance_id)
                 SELECT i.orchestration_id, k, i.id FROM orchestration_instances i, unnest($2::text[]) AS k
                  WHERE i.id = $1 ON CONFLICT DO NOTHING",
            )
            .bind(step.instance_id)
            .bind(&step.subscriptions)
            .execute(&mut **tx)
            .await?;
        }
        let published = if step.publish.is_empty() {
            Vec::new()
        } else {
            self.publish_in(tx, &Publisher::default(), step.publish.clone())
                .await?
                .0
        };
        record_step(tx, step, &published).await?;
        if step.state == ProcessState::Completed {
            self.reactivate_leftovers(tx, step.instance_id).await?;
        }
        if step.state.ended() {
            end_instances(tx, &[step.instance_id]).await?;
        }
        Ok(())
    }

    /// A convoy that completed with messages held for it that it did not take: each is
    /// routed again as if just published — to another instance that subscribes to it, or
    /// activating a new instance (the convoy's key is free now) — and only one that
    /// reaches nothing stays behind to become a zombie.
    async fn reactivate_leftovers(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        instance: Uuid,
    ) -> Result<()> {
        let left: Vec<(Uuid, sqlx::types::Json<Context>)> = sqlx::query_as(
            "SELECT b.message_id, m.context FROM orchestration_inbox b JOIN messages m ON m.id = b.message_id
              WHERE b.instance_id = $1 AND NOT b.consumed ORDER BY b.seq",
        )
        .bind(instance)
        .fetch_all(&mut **tx)
        .await?;
        if left.is_empty() {
            return Ok(());
        }
        sqlx::query("DELETE FROM orchestration_subscriptions WHERE instance_id = $1")
            .bind(instance)
            .execute(&mut **tx)
            .await?;
        let table = self.routing_for_publish(tx).await?;
        let ids: Vec<Uuid> = left.iter().map(|(id, _)| *id).collect();
        let contexts: Vec<Option<&Context>> = left.iter().map(|(_, c)| Some(&c.0)).collect();
        let only = sqlx::query_scalar(
            "SELECT orchestration_id FROM orchestration_instances WHERE id = $1",
        )
        .bind(instance)
        .fetch_one(&mut **tx)
        .await?;
        let routed = route_to_instances(tx, &table, &ids, &contexts, Some(only)).await?;
        let taken: Vec<Uuid> = routed.reached.keys().map(|&i| ids[i]).collect();
        sqlx::query(
            "DELETE FROM orchestration_inbox WHERE instance_id = $1 AND message_id = ANY($2)",
        )
        .bind(instance)
        .bind(&taken)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// A step's events by the host's tracking level: at `all` (or once tracked) they are
/// written; at `failures` they go to the instance's trail, written out with it when it
/// faults, only the final state when it ends cleanly; at `off` nothing. $1 instance, $2
/// consumed, $3 published, $4 outcome, $5 task, $6 detail, $7 the trail's length.
const RECORD_STEP: &str = "WITH i AS (SELECT i.steps, i.trail, i.tracked, coalesce(h.tracking, 'failures') AS level
                      FROM orchestration_instances i JOIN orchestrations o ON o.id = i.orchestration_id
                      JOIN hosts h ON h.id = o.host_id WHERE i.id = $1),
              m AS (SELECT CASE WHEN level = 'off' THEN 'none'
                                WHEN level = 'all' OR tracked THEN 'write'
                                WHEN $4 = 'faulted' THEN 'flush'
                                WHEN $4 IN ('completed', 'cancelled') THEN 'final'
                                ELSE 'keep' END AS mode, steps, trail FROM i),
              ev AS (
                SELECT m.steps AS step, CASE WHEN b.activating THEN 'activated' ELSE 'consumed' END AS event,
                       NULL::text AS task, b.message_id, NULL::text AS detail, 1 AS ord
                  FROM m, orchestration_inbox b WHERE b.instance_id = $1 AND b.message_id = ANY($2)
                UNION ALL
                SELECT m.steps, 'published', NULL::text, p, NULL::text, 2 FROM m, unnest($3::uuid[]) AS p
                UNION ALL
                SELECT m.steps, $4::text, $5::text, NULL::uuid, $6::text, 3 FROM m),
              grown AS (
                SELECT coalesce(m.trail, '[]') || (SELECT jsonb_agg(jsonb_build_object(
                           'at', clock_timestamp(), 'step', ev.step, 'event', ev.event, 'task', ev.task,
                           'message_id', ev.message_id, 'detail', ev.detail) ORDER BY ev.ord) FROM ev) AS t
                  FROM m WHERE m.mode = 'keep'),
              kept AS (
                -- the trail keeps the last $7 events (a flight recorder: never a row per step)
                UPDATE orchestration_instances SET
                       trail = (SELECT CASE WHEN jsonb_array_length(g.t) <= $7 THEN g.t
                                            ELSE (SELECT jsonb_agg(a.e ORDER BY a.n)
                                                    FROM jsonb_array_elements(g.t) WITH ORDINALITY AS a(e, n)
                                                   WHERE a.n > jsonb_array_length(g.t) - $7) END
                                  FROM grown g),
                       tracked = tracked OR (SELECT mode FROM m) = 'flush'
                 WHERE id = $1 AND (trail IS NOT NULL OR (SELECT mode FROM m) IN ('keep', 'flush')))
         INSERT INTO orchestration_events (instance_id, at, step, event, task, message_id, detail)
         SELECT $1, x.at, x.step, x.event, x.task, x.message_id, x.detail FROM (
             SELECT 0 AS grp, t.n AS ord, t.at, t.step, t.event, t.task, t.message_id, t.detail
               FROM m, ROWS FROM (jsonb_to_recordset(m.trail) AS (at timestamptz, step bigint, event text,
                                  task text, message_id uuid, detail text))
                       WITH ORDINALITY AS t(at, step, event, task, message_id, detail, n)
              WHERE m.mode IN ('flush', 'write')
             UNION ALL
             SELECT 1, ev.ord, clock_timestamp(), ev.step, ev.event, ev.task, ev.message_id, ev.detail
               FROM m, ev WHERE m.mode IN ('write', 'flush') OR (m.mode = 'final' AND ev.ord = 3)) x
          ORDER BY x.grp, x.ord";

/// The events a running instance's trail keeps at the `failures` tracking level (the last
/// ones; a longer history is not rewritten with every step of a long convoy).
const TRAIL_EVENTS: i32 = 32;

/// The step's history: the messages it consumed (or was activated by), those it
/// published, and how it ended — one statement.
async fn record_step(
    tx: &mut Transaction<'_, Postgres>,
    step: &StepCommit,
    published: &[crate::publish::Published],
) -> Result<()> {
    use crate::publish::Published;
    let published: Vec<Uuid> = published
        .iter()
        .filter_map(|p| match p {
            Published::Routed { message_id, .. } | Published::RoutingFailure { message_id, .. } => {
                Some(*message_id)
            }
            _ => None,
        })
        .collect();
    let outcome = match step.state {
        ProcessState::Running if step.keep_claim => "calling",
        ProcessState::Completed => "completed",
        ProcessState::Faulted => "faulted",
        ProcessState::Cancelled => "cancelled",
        _ => "waiting",
    };
    let detail = step.error.as_ref().map(|e| {
        e["title"]
            .as_str()
            .or(e["detail"].as_str())
            .unwrap_or("")
            .to_owned()
    });
    sqlx::query(RECORD_STEP)
        .bind(step.instance_id)
        .bind(&step.consumed)
        .bind(&published)
        .bind(outcome)
        .bind(&step.task)
        .bind(detail)
        .bind(TRAIL_EVENTS)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Instances ended: what each was held and did not take is a `zombie` suspended item
/// naming it (never dropped silently); their subscriptions and inboxes go, and the
/// messages nothing else references with them.
pub(crate) async fn end_instances(tx: &mut Transaction<'_, Postgres>, ids: &[Uuid]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM orchestration_subscriptions WHERE instance_id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "WITH left_over AS (
            DELETE FROM orchestration_inbox WHERE instance_id = ANY($1)
            RETURNING instance_id, message_id, consumed),
         zombies AS (
            INSERT INTO suspended_items (message_id, kind, reason, orchestration_instance_id)
            SELECT message_id, 'zombie',
                   'routed to orchestration instance ' || instance_id::text || ', which ended without taking it',
                   instance_id
              FROM left_over WHERE NOT consumed
            RETURNING message_id)
         DELETE FROM messages m
          WHERE m.id IN (SELECT message_id FROM left_over WHERE consumed)
            AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id)
            AND NOT EXISTS (SELECT 1 FROM suspended_items s WHERE s.message_id = m.id)
            AND NOT EXISTS (SELECT 1 FROM instance_deliveries r WHERE r.message_id = m.id)
            AND NOT EXISTS (SELECT 1 FROM orchestration_inbox b
                             WHERE b.message_id = m.id AND b.instance_id <> ALL($1))",
    )
    .bind(ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Every orchestration as routing sees it (part of the routing table).
pub(crate) async fn load_routes(tx: &mut Transaction<'_, Postgres>) -> Result<Vec<ProcessRoute>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        id: i64,
        enabled: bool,
        current_version: String,
        activation: sqlx::types::Json<Vec<Activation>>,
        shapes: sqlx::types::Json<Vec<Vec<String>>>,
        buckets: Option<i32>,
    }
    let rows = sqlx::query_as::<_, Row>(
        "SELECT o.id, o.state = 'enabled' AS enabled, o.current_version, v.activation,
                CASE WHEN o.ordered THEN o.buckets END AS buckets,
                coalesce((SELECT jsonb_agg(DISTINCT s) FROM orchestration_versions w,
                                 jsonb_array_elements(w.shapes) AS s
                           WHERE w.orchestration_id = o.id), '[]') AS shapes
           FROM orchestrations o
           JOIN orchestration_versions v ON v.orchestration_id = o.id AND v.version = o.current_version
          ORDER BY o.id",
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mut shapes = r.shapes.0;
            for a in &r.activation.0 {
                let s = a.shape();
                if !a.correlate.is_empty() && !shapes.contains(&s) {
                    shapes.push(s);
                }
            }
            ProcessRoute {
                orchestration_id: r.id,
                enabled: r.enabled,
                version: r.current_version,
                activations: r.activation.0,
                shapes,
                buckets: r.buckets,
            }
        })
        .collect())
}

/// The orchestration instances a dead host instance had claimed are runnable again: the
/// next step replays from their last persistence point (part of the reclaim of dead
/// instances).
pub(crate) async fn reclaim_dead(tx: &mut Transaction<'_, Postgres>) -> Result<u64> {
    Ok(sqlx::query(
        // rows a publish or a step holds are skipped (the next pass takes them): locking
        // them in another order than the publishes' (by id) could deadlock
        "WITH dead AS (
            SELECT o.id FROM orchestration_instances o JOIN host_instances h ON h.id = o.claimed_by
             WHERE h.state <> 'alive'
             ORDER BY o.id FOR UPDATE OF o SKIP LOCKED)
         UPDATE orchestration_instances o
            SET claimed_by = NULL, claim_token = NULL, runnable_at = now()
           FROM dead WHERE o.id = dead.id",
    )
    .execute(&mut **tx)
    .await?
    .rows_affected())
}
