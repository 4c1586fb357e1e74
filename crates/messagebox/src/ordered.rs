//! Ordered delivery: one lease per ordered port (holder, epoch, expiry on the
//! database clock) that changes hands only by expiry, and the in-order claim of its
//! lease holder.
//!
//! ```text
//!   free/expired ──acquire (epoch+1)──► held by A ──renew (same epoch)──► held by A
//!        ▲                                   │
//!        └──────── expiry (A paused, dead, partitioned) or release ◄───┘
//! ```
//! Fencing: a claim on an ordered port records the epoch; completing or failing it checks,
//! in the same statement, that the claimer still holds the lease at that epoch and that it
//! has not expired. So once the lease has moved, a former owner changes nothing.

use uuid::Uuid;

use crate::delivery::ClaimedDelivery;
use crate::{MessageBox, Result};

/// Lease time to live (10 s).
pub const LEASE_TTL_MS: i64 = 10_000;

/// The owner stops handing messages to the adapter once its last successful renewal is
/// older than TTL − this margin; ordered sends must time out within it.
pub const LEASE_MARGIN_MS: i64 = 3_000;

/// What a lease belongs to: an ordered send port or an ordered receive location.
#[derive(Debug, Clone, Copy)]
enum LeaseOf {
    Port(i64),
    Location(i64),
}

impl LeaseOf {
    /// The `leases` column naming the owner (a closed set: never input).
    fn column(self) -> &'static str {
        match self {
            LeaseOf::Port(_) => "port_id",
            LeaseOf::Location(_) => "location_id",
        }
    }

    fn id(self) -> i64 {
        match self {
            LeaseOf::Port(id) | LeaseOf::Location(id) => id,
        }
    }
}

/// An ordered port's lease, as `send-port show` and `status` report it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct LeaseInfo {
    pub holder: Option<Uuid>,
    pub epoch: i64,
    pub live: bool,
    pub next_seq: i64,
    /// The endpoint position committed with the last completion (FILE append).
    pub checkpoint: Option<String>,
    /// The head delivery: `none`, `waiting`, `retrying` (due later) or `in flight`.
    pub head: String,
}

impl MessageBox {
    /// Takes the lease of an ordered port if it is free or expired; returns the new epoch.
    /// A live lease (even this instance's own) is not taken: renew it instead.
    pub async fn port_lease_acquire(
        &self,
        instance: Uuid,
        port_id: i64,
        ttl_ms: i64,
    ) -> Result<Option<i64>> {
        self.lease_acquire(LeaseOf::Port(port_id), instance, ttl_ms)
            .await
    }

    /// Renews a lease this instance holds at `epoch`; false if it expired or moved.
    pub async fn port_lease_renew(
        &self,
        instance: Uuid,
        port_id: i64,
        epoch: i64,
        ttl_ms: i64,
    ) -> Result<bool> {
        self.lease_renew(LeaseOf::Port(port_id), instance, epoch, ttl_ms)
            .await
    }

    /// Graceful stop: lets the lease expire now, so another instance takes over at once.
    pub async fn port_lease_release(&self, instance: Uuid, port_id: i64, epoch: i64) -> Result<()> {
        self.lease_release(LeaseOf::Port(port_id), instance, epoch)
            .await
    }

    /// The same lease for an ordered receive location.
    pub async fn location_lease_acquire(
        &self,
        instance: Uuid,
        location_id: i64,
        ttl_ms: i64,
    ) -> Result<Option<i64>> {
        // an ordered location has its lease row from its creation; a location whose
        // adapter runs on one instance at a time (MQTT) gets it at its first acquisition
        sqlx::query("INSERT INTO leases (location_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(location_id)
            .execute(&self.pool)
            .await?;
        self.lease_acquire(LeaseOf::Location(location_id), instance, ttl_ms)
            .await
    }

    pub async fn location_lease_renew(
        &self,
        instance: Uuid,
        location_id: i64,
        epoch: i64,
        ttl_ms: i64,
    ) -> Result<bool> {
        self.lease_renew(LeaseOf::Location(location_id), instance, epoch, ttl_ms)
            .await
    }

    pub async fn location_lease_release(
        &self,
        instance: Uuid,
        location_id: i64,
        epoch: i64,
    ) -> Result<()> {
        self.lease_release(LeaseOf::Location(location_id), instance, epoch)
            .await
    }

    async fn lease_acquire(&self, of: LeaseOf, instance: Uuid, ttl_ms: i64) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(&format!(
            "UPDATE leases SET holder = $2, epoch = epoch + 1, acquired_at = now(),
                               expires_at = now() + make_interval(secs => $3)
              WHERE {} = $1 AND bucket = 0
                AND (holder IS NULL OR expires_at IS NULL OR expires_at <= now())
                AND EXISTS (SELECT 1 FROM host_instances i WHERE i.id = $2 AND i.state = 'alive')
             RETURNING epoch",
            of.column()
        ))
        .bind(of.id())
        .bind(instance)
        .bind(ttl_ms as f64 / 1000.0)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn lease_renew(
        &self,
        of: LeaseOf,
        instance: Uuid,
        epoch: i64,
        ttl_ms: i64,
    ) -> Result<bool> {
        Ok(sqlx::query(&format!(
            "UPDATE leases SET expires_at = now() + make_interval(secs => $4)
              WHERE {} = $1 AND bucket = 0 AND holder = $2 AND epoch = $3 AND expires_at > now()",
            of.column()
        ))
        .bind(of.id())
        .bind(instance)
        .bind(epoch)
        .bind(ttl_ms as f64 / 1000.0)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    async fn lease_release(&self, of: LeaseOf, instance: Uuid, epoch: i64) -> Result<()> {
        sqlx::query(&format!(
            "UPDATE leases SET expires_at = now()
              WHERE {} = $1 AND bucket = 0 AND holder = $2 AND epoch = $3",
            of.column()
        ))
        .bind(of.id())
        .bind(instance)
        .bind(epoch)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The lease and sequence of an ordered port (`None` for an unordered one).
    pub async fn port_lease_info(&self, port_id: i64) -> Result<Option<LeaseInfo>> {
        Ok(sqlx::query_as::<_, LeaseInfo>(
            "SELECT l.holder, l.epoch, coalesce(l.expires_at > now(), false) AS live, s.next_seq,
                    l.checkpoint,
                    coalesce((SELECT CASE WHEN d.state = 'claimed' THEN 'in flight'
                                          WHEN d.not_before > now() THEN 'retrying'
                                          ELSE 'waiting' END
                                FROM deliveries d WHERE d.port_id = l.port_id AND d.seq IS NOT NULL
                               ORDER BY d.seq LIMIT 1), 'none') AS head
               FROM leases l JOIN ordered_sequences s ON s.port_id = l.port_id AND s.order_key = ''
              WHERE l.port_id = $1 AND l.bucket = 0",
        )
        .bind(port_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The lease holder's in-order claim: the head of the port's sequence, up to
    /// `limits` (count, and bytes of bodies: the head alone may pass the byte limit),
    /// stopping before the first one that is not due (waiting for a retry) or
    /// not claimable (only reached through a stopped group) — nothing overtakes the head.
    /// Deliveries still claimed by a former owner are taken over. Returns nothing unless
    /// `instance` holds the live lease at `epoch` and the port is started.
    pub async fn deliveries_claim_ordered(
        &self,
        instance: Uuid,
        port_id: i64,
        epoch: i64,
        limits: crate::delivery::ClaimLimits,
    ) -> Result<Vec<ClaimedDelivery>> {
        let token = Uuid::new_v4();
        let mut tx = crate::begin_relaxed(&self.pool).await?;
        let rows = sqlx::query_as::<_, crate::delivery::ClaimRow>(
            "WITH head AS (
                SELECT d.id, d.seq, d.body_size,
                       (d.not_before <= now()
                        AND (d.via_port OR EXISTS (SELECT 1 FROM send_port_groups g
                                                    WHERE g.id = ANY (d.via_groups) AND g.state = 'started')))
                       AS ready
                  FROM deliveries d
                 WHERE d.port_id = $1 AND d.seq IS NOT NULL
                   AND EXISTS (SELECT 1 FROM leases l WHERE l.port_id = $1 AND l.bucket = 0 AND l.holder = $2
                                  AND l.epoch = $3 AND l.expires_at > now())
                   AND EXISTS (SELECT 1 FROM send_ports p WHERE p.id = $1 AND p.state = 'started')
                 ORDER BY d.seq
                 LIMIT $4
                 FOR UPDATE OF d),
             due AS (
                SELECT h.id FROM head h
                 WHERE NOT EXISTS (SELECT 1 FROM head x WHERE x.seq <= h.seq AND NOT x.ready)
                   AND (SELECT coalesce(sum(x.body_size), 0) FROM head x WHERE x.seq < h.seq) < $6),
             claimed AS (
                UPDATE deliveries d SET state = 'claimed', claimed_by = $2, claim_token = $5,
                                        claimed_at = now(), claim_epoch = $3
                  FROM due WHERE d.id = due.id
                RETURNING d.id, d.message_id, d.port_id, d.transport, d.retries, d.seq),
             ev AS (
                INSERT INTO tracking_events (message_id, event, port_id, instance_id, detail)
                SELECT c.message_id, 'claimed', c.port_id, $2, 'epoch ' || $3 FROM claimed c
                  JOIN send_ports p ON p.id = c.port_id JOIN hosts h ON h.id = p.host_id
                 WHERE coalesce(p.tracking, h.tracking) = 'all')
             SELECT c.id, c.message_id, c.transport, c.retries, c.seq, p.name AS port_name,
                    CASE WHEN c.transport = 'backup' THEN p.backup_address ELSE p.address END
                      AS address,
                    m.content_type, m.body, m.body_size, m.context, m.published_at
               FROM claimed c JOIN messages m ON m.id = c.message_id JOIN send_ports p ON p.id = c.port_id
              ORDER BY c.seq",
        )
        .bind(port_id)
        .bind(instance)
        .bind(epoch)
        .bind(limits.max_count.max(1))
        .bind(token)
        .bind(limits.max_bytes.max(1))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        crate::delivery::claimed_deliveries(rows, token, port_id, Some(epoch))
    }

    /// `send-port resume`: an ordered port suspended after a failure retries its head
    /// (retries reset) and starts again.
    pub async fn send_port_resume(&self, name: &str) -> Result<crate::config::Change> {
        self.unsuspend(name, false).await
    }

    /// `send-port skip`: an ordered port suspended after a failure suspends its head as
    /// `failed-final` and goes on with the next message.
    pub async fn send_port_skip(&self, name: &str) -> Result<crate::config::Change> {
        self.unsuspend(name, true).await
    }

    /// Both lock the head and bump the lease epoch (expiring the lease), so they cannot
    /// race the owner: whatever it still does with the old epoch is fenced.
    async fn unsuspend(&self, name: &str, skip: bool) -> Result<crate::config::Change> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(i64, String, bool)> = sqlx::query_as(
            "SELECT id, state, ordered_by IS NOT NULL FROM send_ports WHERE name = $1 FOR NO KEY UPDATE",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let (port_id, state, keyed) = row.ok_or_else(|| {
            crate::Error::not_found("send port", name, "`mbx send-port list` shows the ports")
        })?;
        let verb = if skip { "skip" } else { "resume" };
        if keyed {
            return Err(crate::Error::Refused(format!(
                "send port '{name}' is ordered by a property: a failure holds one key, not the port; `mbx send-port show {name}` lists the held keys, then `mbx send-port {verb} {name} --key KEY`"
            )));
        }
        if state != "suspended" {
            return Err(crate::Error::Refused(format!(
                "send port '{name}' is {state}, not suspended; `send-port {verb}` acts on an ordered port held after a failure"
            )));
        }
        let head: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM deliveries WHERE port_id = $1 AND seq IS NOT NULL ORDER BY seq LIMIT 1 FOR UPDATE",
        )
        .bind(port_id)
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE leases SET epoch = epoch + 1, expires_at = now() WHERE port_id = $1 AND bucket = 0",
        )
        .bind(port_id)
        .execute(&mut *tx)
        .await?;
        if let Some(head) = head {
            if skip {
                crate::suspended::suspend_deliveries(
                    self,
                    &mut tx,
                    &[head],
                    &["failed-final"],
                    &["skipped by an operator (send-port skip)".to_owned()],
                    None,
                    false,
                )
                .await?;
            } else {
                reset_head(&mut tx, head).await?;
            }
        }
        sqlx::query("UPDATE send_ports SET state = 'started' WHERE id = $1")
            .bind(port_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(crate::config::Change {
            object: name.to_owned(),
            from: "suspended".to_owned(),
            to: "started".to_owned(),
            suspended: i64::from(skip && head.is_some()),
        })
    }

    /// How many leases changed hands (epoch above 1) — for tests and metrics.
    pub async fn port_lease_epoch(&self, port_id: i64) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT epoch FROM leases WHERE port_id = $1 AND bucket = 0")
                .bind(port_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

/// Where one routed delivery stands in its port's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Slot {
    /// An unordered port.
    Unordered,
    /// The next sequence of `key` (`''` on a port ordered as a whole) in `bucket`.
    Seq { key: String, bucket: i32, seq: i64 },
    /// A port ordered by `property`, which the message does not carry: refused at routing
    /// into a suspended item, never guessed.
    NoKey { property: String },
}

impl Slot {
    pub(crate) fn seq(&self) -> Option<i64> {
        match self {
            Slot::Seq { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    pub(crate) fn key(&self) -> Option<&str> {
        match self {
            Slot::Seq { key, .. } => Some(key),
            _ => None,
        }
    }

    pub(crate) fn bucket(&self) -> i32 {
        match self {
            Slot::Seq { bucket, .. } => *bucket,
            _ => 0,
        }
    }
}

/// Takes the sequences of routed deliveries (`(port, context)` in the order they are
/// inserted) in one statement: per (port, key) under that sequence row's lock, rows
/// locked in (port, key) order so concurrent publishers never deadlock; sequence order
/// is commit order.
pub(crate) async fn take_sequences(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    table: &crate::routing::RoutingTable,
    wanted: &[(i64, &crate::context::Context)],
) -> Result<Vec<Slot>> {
    use crate::routing::OrderedBy;
    let mut slots: Vec<Slot> = Vec::with_capacity(wanted.len());
    let mut counts: std::collections::BTreeMap<(i64, String), i64> = Default::default();
    for (port, context) in wanted {
        let slot = match table.ordering(*port) {
            None => Slot::Unordered,
            Some(OrderedBy::Port) => Slot::Seq {
                key: String::new(),
                bucket: 0,
                seq: 0,
            },
            Some(OrderedBy::Key { property, buckets }) => match context.promoted(property) {
                Some(value) => {
                    let key = value.to_plain_string();
                    Slot::Seq {
                        bucket: crate::routing::key_bucket(&key, *buckets),
                        key,
                        seq: 0,
                    }
                }
                None => Slot::NoKey {
                    property: property.clone(),
                },
            },
        };
        if let Slot::Seq { key, .. } = &slot {
            *counts.entry((*port, key.clone())).or_default() += 1;
        }
        slots.push(slot);
    }
    if counts.is_empty() {
        return Ok(slots);
    }
    let ports: Vec<i64> = counts.keys().map(|k| k.0).collect();
    let keys: Vec<&str> = counts.keys().map(|k| k.1.as_str()).collect();
    let ns: Vec<i64> = counts.values().copied().collect();
    let rows: Vec<(i64, String, i64)> = sqlx::query_as(
        "INSERT INTO ordered_sequences AS s (port_id, order_key, next_seq)
         SELECT p, k, n + 1 FROM unnest($1::int8[], $2::text[], $3::int8[]) AS t(p, k, n)
          ORDER BY p, k
         ON CONFLICT (port_id, order_key) DO UPDATE SET next_seq = s.next_seq + excluded.next_seq - 1
         RETURNING s.port_id, s.order_key, s.next_seq",
    )
    .bind(&ports)
    .bind(&keys)
    .bind(&ns)
    .fetch_all(&mut **tx)
    .await?;
    // the first sequence each (port, key) took
    let mut next: std::collections::HashMap<(i64, String), i64> = rows
        .into_iter()
        .map(|(p, k, after)| {
            let n = counts.get(&(p, k.clone())).copied().unwrap_or(0);
            ((p, k), after - n)
        })
        .collect();
    for ((port, _), slot) in wanted.iter().zip(slots.iter_mut()) {
        if let Slot::Seq { key, seq, .. } = slot {
            let Some(n) = next.get_mut(&(*port, key.clone())) else {
                return Err(crate::Error::Corrupt(format!(
                    "no sequence was taken for port {port}, key '{key}'"
                )));
            };
            *seq = *n;
            *n += 1;
        }
    }
    Ok(slots)
}

/// Deliveries to ports ordered by a property that the message does not carry: each is
/// suspended `failed-final` at once, with a reason that names the port and the property
/// (tracked, and reported on a `--route-failed` port, like any suspension).
pub(crate) async fn suspend_without_key(
    mbx: &MessageBox,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    missing: &[(Uuid, crate::routing::RouteTarget, i64, String)],
) -> Result<u64> {
    let msg: Vec<Uuid> = missing.iter().map(|m| m.0).collect();
    let port: Vec<i64> = missing.iter().map(|m| m.1.port_id).collect();
    let via_port: Vec<bool> = missing.iter().map(|m| m.1.via_port).collect();
    let via_groups: Vec<String> = missing
        .iter()
        .map(|m| crate::publish::pg_bigint_array(&m.1.via_groups))
        .collect();
    let size: Vec<i64> = missing.iter().map(|m| m.2).collect();
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO deliveries (message_id, port_id, via_port, via_groups, body_size)
         SELECT m, p, vp, vg::bigint[], sz
           FROM unnest($1::uuid[], $2::int8[], $3::bool[], $4::text[], $5::int8[]) AS t(m, p, vp, vg, sz)
         RETURNING id",
    )
    .bind(&msg)
    .bind(&port)
    .bind(&via_port)
    .bind(&via_groups)
    .bind(&size)
    .fetch_all(&mut **tx)
    .await?;
    let kinds = vec!["failed-final"; ids.len()];
    let errors: Vec<String> = missing
        .iter()
        .map(|m| {
            format!(
                "the message has no promoted property {} and its send port is ordered by it; promote {} at receive (a message without it cannot be placed in any order)",
                m.3, m.3
            )
        })
        .collect();
    // boxed: a suspension may publish an error report, whose publish may come back here
    Box::pin(crate::suspended::suspend_deliveries(
        mbx, tx, &ids, &kinds, &errors, None, false,
    ))
    .await
}

/// A bucket of a port ordered by a property, as its holder took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct BucketLease {
    pub bucket: i32,
    pub epoch: i64,
}

/// The buckets and held keys of a port ordered by a property (`send-port show`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyedInfo {
    pub property: String,
    pub buckets: i32,
    /// Live buckets per holding instance.
    pub owners: Vec<BucketOwner>,
    /// Buckets held by nobody (free or expired).
    pub unowned: i64,
    pub held_keys: Vec<HeldKey>,
}

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct BucketOwner {
    pub instance: Uuid,
    pub host: Option<String>,
    pub buckets: i64,
    /// The highest epoch among them (how often they changed hands).
    pub max_epoch: i64,
}

/// A key held after a failure on a `--stop-on-failure` port.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct HeldKey {
    pub key: String,
    pub held_at: chrono::DateTime<chrono::Utc>,
    pub error: Option<String>,
    /// Messages of this key waiting behind its head (the head included).
    pub waiting: i64,
}

/// `(bucket, epoch)` rows as leases.
fn bucket_leases(rows: Vec<(i32, i64)>) -> Vec<BucketLease> {
    rows.into_iter()
        .map(|(bucket, epoch)| BucketLease { bucket, epoch })
        .collect()
}

/// Rows of a port's deliveries the keyed claim reads, oldest first, to find the keys
/// with work (per message claimed at most).
const KEYED_SCAN_FACTOR: i64 = 4;

impl MessageBox {
    /// Takes up to `max` free or expired buckets of a port ordered by a property; each
    /// bucket taken moves to epoch + 1.
    pub async fn port_buckets_acquire(
        &self,
        instance: Uuid,
        port_id: i64,
        max: i64,
        ttl_ms: i64,
    ) -> Result<Vec<BucketLease>> {
        if max <= 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "UPDATE leases l SET holder = $2, epoch = l.epoch + 1, acquired_at = now(),
                                 expires_at = now() + make_interval(secs => $4)
              WHERE l.id IN (SELECT f.id FROM leases f
                              WHERE f.port_id = $1
                                AND (f.holder IS NULL OR f.expires_at IS NULL OR f.expires_at <= now())
                              ORDER BY f.bucket LIMIT $3 FOR UPDATE SKIP LOCKED)
                AND (l.holder IS NULL OR l.expires_at IS NULL OR l.expires_at <= now())
                AND EXISTS (SELECT 1 FROM host_instances i WHERE i.id = $2 AND i.state = 'alive')
             RETURNING l.bucket, l.epoch",
        )
        .bind(port_id)
        .bind(instance)
        .bind(max)
        .bind(ttl_ms as f64 / 1000.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(bucket_leases(rows))
    }

    /// Renews the buckets this instance holds at their epochs; returns those renewed (the
    /// others expired or moved).
    pub async fn port_buckets_renew(
        &self,
        instance: Uuid,
        port_id: i64,
        held: &[BucketLease],
        ttl_ms: i64,
    ) -> Result<Vec<BucketLease>> {
        self.buckets_update(instance, port_id, held, Some(ttl_ms))
            .await
    }

    /// Graceful stop or hand-over: lets these buckets expire now.
    pub async fn port_buckets_release(
        &self,
        instance: Uuid,
        port_id: i64,
        held: &[BucketLease],
    ) -> Result<()> {
        self.buckets_update(instance, port_id, held, None).await?;
        Ok(())
    }

    async fn buckets_update(
        &self,
        instance: Uuid,
        port_id: i64,
        held: &[BucketLease],
        ttl_ms: Option<i64>,
    ) -> Result<Vec<BucketLease>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let buckets: Vec<i32> = held.iter().map(|b| b.bucket).collect();
        let epochs: Vec<i64> = held.iter().map(|b| b.epoch).collect();
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "UPDATE leases l SET expires_at = CASE WHEN $5::float8 IS NULL THEN now()
                                                ELSE now() + make_interval(secs => $5) END
               FROM unnest($3::int4[], $4::int8[]) AS h(bucket, epoch)
              WHERE l.port_id = $1 AND l.bucket = h.bucket AND l.holder = $2 AND l.epoch = h.epoch
                AND l.expires_at > now()
             RETURNING l.bucket, l.epoch",
        )
        .bind(port_id)
        .bind(instance)
        .bind(&buckets)
        .bind(&epochs)
        .bind(ttl_ms.map(|t| t as f64 / 1000.0))
        .fetch_all(&self.pool)
        .await?;
        Ok(bucket_leases(rows))
    }

    /// The claim of the holder of `held` buckets of a port ordered by a property: for each
    /// key with work in those buckets (oldest first) and not held after a failure, the run
    /// of its head messages (at most `per_key`, stopping before the first that is not
    /// due), round-robin across keys up to `limits`. Deliveries still claimed by a former
    /// owner are taken over. Each claim records its bucket's epoch; buckets whose lease is
    /// no longer this instance's at that epoch give nothing. Returned in (key, sequence)
    /// order.
    pub async fn deliveries_claim_keyed(
        &self,
        instance: Uuid,
        port_id: i64,
        held: &[BucketLease],
        per_key: i64,
        limits: crate::delivery::ClaimLimits,
    ) -> Result<Vec<ClaimedDelivery>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let buckets: Vec<i32> = held.iter().map(|b| b.bucket).collect();
        let epochs: Vec<i64> = held.iter().map(|b| b.epoch).collect();
        let max_count = limits.max_count.max(1);
        let token = Uuid::new_v4();
        let mut tx = crate::begin_relaxed(&self.pool).await?;
        let rows = sqlx::query_as::<_, crate::delivery::ClaimRow>(
            "WITH held AS (
                SELECT h.bucket, h.epoch FROM unnest($2::int4[], $3::int8[]) AS h(bucket, epoch)
                 WHERE EXISTS (SELECT 1 FROM leases l WHERE l.port_id = $1 AND l.bucket = h.bucket
                                  AND l.holder = $4 AND l.epoch = h.epoch AND l.expires_at > now())
                   AND EXISTS (SELECT 1 FROM send_ports p WHERE p.id = $1 AND p.state = 'started')),
             keys AS (
                SELECT DISTINCT s.order_key FROM (
                    SELECT d.order_key FROM deliveries d
                     WHERE d.port_id = $1 AND d.seq IS NOT NULL
                       AND d.bucket IN (SELECT bucket FROM held)
                       AND NOT EXISTS (SELECT 1 FROM ordered_holds o
                                        WHERE o.port_id = $1 AND o.order_key = d.order_key)
                     ORDER BY d.id LIMIT $5) s),
             head AS (
                SELECT x.* FROM keys CROSS JOIN LATERAL (
                    SELECT d.id, d.order_key, d.seq, d.body_size, d.bucket,
                           (d.not_before <= now()
                            AND (d.via_port OR EXISTS (SELECT 1 FROM send_port_groups g
                                                        WHERE g.id = ANY (d.via_groups) AND g.state = 'started')))
                           AS ready
                      FROM deliveries d
                     WHERE d.port_id = $1 AND d.order_key = keys.order_key AND d.seq IS NOT NULL
                     ORDER BY d.seq
                     LIMIT $6
                     FOR UPDATE OF d) x),
             w AS (
                SELECT h.*, bool_and(h.ready) OVER (PARTITION BY h.order_key ORDER BY h.seq) AS prefix_ready,
                       row_number() OVER (PARTITION BY h.order_key ORDER BY h.seq) AS rn
                  FROM head h),
             v AS (
                SELECT w.id, w.bucket,
                       row_number() OVER (ORDER BY w.rn, w.order_key) AS pos,
                       sum(w.body_size) OVER (ORDER BY w.rn, w.order_key ROWS UNBOUNDED PRECEDING) - w.body_size AS before
                  FROM w WHERE w.prefix_ready),
             due AS (
                SELECT v.id, held.epoch FROM v JOIN held ON held.bucket = v.bucket
                 WHERE v.pos <= $7 AND (v.pos = 1 OR v.before < $8)),
             claimed AS (
                UPDATE deliveries d SET state = 'claimed', claimed_by = $4, claim_token = $9,
                                        claimed_at = now(), claim_epoch = due.epoch
                  FROM due WHERE d.id = due.id
                RETURNING d.id, d.message_id, d.port_id, d.transport, d.retries, d.seq, d.order_key, d.claim_epoch, d.bucket),
             ev AS (
                INSERT INTO tracking_events (message_id, event, port_id, instance_id, detail)
                SELECT c.message_id, 'claimed', c.port_id, $4, 'key ' || c.order_key || ', epoch ' || c.claim_epoch
                  FROM claimed c JOIN send_ports p ON p.id = c.port_id JOIN hosts h ON h.id = p.host_id
                 WHERE coalesce(p.tracking, h.tracking) = 'all')
             SELECT c.id, c.message_id, c.transport, c.retries, c.seq, p.name AS port_name, p.address,
                    m.content_type, m.body, m.body_size, m.context, m.published_at,
                    c.order_key, c.claim_epoch, c.bucket
               FROM claimed c JOIN messages m ON m.id = c.message_id JOIN send_ports p ON p.id = c.port_id
              ORDER BY c.order_key, c.seq",
        )
        .bind(port_id)
        .bind(&buckets)
        .bind(&epochs)
        .bind(instance)
        .bind(max_count.saturating_mul(KEYED_SCAN_FACTOR))
        .bind(per_key.max(1))
        .bind(max_count)
        .bind(limits.max_bytes.max(1))
        .bind(token)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        crate::delivery::claimed_deliveries(rows, token, port_id, None)
    }

    /// The buckets' owners and the held keys of a port ordered by a property (`None` for
    /// any other port).
    pub async fn port_keyed_info(&self, port_id: i64) -> Result<Option<KeyedInfo>> {
        let Some((property, buckets)): Option<(String, i32)> = sqlx::query_as(
            "SELECT ordered_by, ordered_buckets FROM send_ports WHERE id = $1 AND ordered_by IS NOT NULL",
        )
        .bind(port_id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let owners: Vec<BucketOwner> = sqlx::query_as(
            "SELECT l.holder AS instance, h.name AS host, count(*) AS buckets, max(l.epoch) AS max_epoch
               FROM leases l LEFT JOIN host_instances i ON i.id = l.holder LEFT JOIN hosts h ON h.id = i.host_id
              WHERE l.port_id = $1 AND l.holder IS NOT NULL AND l.expires_at > now()
              GROUP BY l.holder, h.name ORDER BY h.name, l.holder",
        )
        .bind(port_id)
        .fetch_all(&self.pool)
        .await?;
        let live: i64 = owners.iter().map(|o| o.buckets).sum();
        let held_keys: Vec<HeldKey> = sqlx::query_as(
            "SELECT o.order_key AS key, o.held_at, o.error,
                    (SELECT count(*) FROM deliveries d WHERE d.port_id = o.port_id AND d.order_key = o.order_key
                        AND d.seq IS NOT NULL) AS waiting
               FROM ordered_holds o WHERE o.port_id = $1 ORDER BY o.held_at, o.order_key LIMIT 1000",
        )
        .bind(port_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(KeyedInfo {
            property,
            buckets,
            owners,
            unowned: i64::from(buckets) - live,
            held_keys,
        }))
    }

    /// `send-port resume NAME --key K`: a key held after a failure retries its head
    /// (retries reset); the port's other keys never stopped.
    pub async fn send_port_resume_key(
        &self,
        name: &str,
        key: &str,
    ) -> Result<crate::config::Change> {
        self.unhold_key(name, key, false).await
    }

    /// `send-port skip NAME --key K`: suspends a held key's head as `failed-final` and goes
    /// on with the key's next message.
    pub async fn send_port_skip_key(&self, name: &str, key: &str) -> Result<crate::config::Change> {
        self.unhold_key(name, key, true).await
    }

    /// Both lock the key's head and bump its bucket's epoch (expiring that lease), so they
    /// cannot race the bucket's owner: whatever it still does with the old epoch is fenced.
    async fn unhold_key(&self, name: &str, key: &str, skip: bool) -> Result<crate::config::Change> {
        let verb = if skip { "skip" } else { "resume" };
        let mut tx = self.pool.begin().await?;
        let row: Option<(i64, Option<String>)> = sqlx::query_as(
            "SELECT id, ordered_by FROM send_ports WHERE name = $1 FOR NO KEY UPDATE",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let (port_id, ordered_by) = row.ok_or_else(|| {
            crate::Error::not_found("send port", name, "`mbx send-port list` shows the ports")
        })?;
        if ordered_by.is_none() {
            return Err(crate::Error::Refused(format!(
                "send port '{name}' is not ordered by a property: --key names a key of a port created with --ordered-by; run `mbx send-port {verb} {name}` without --key"
            )));
        }
        let held: Option<i64> = sqlx::query_scalar(
            "DELETE FROM ordered_holds WHERE port_id = $1 AND order_key = $2 RETURNING 1::int8",
        )
        .bind(port_id)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_none() {
            return Err(crate::Error::Refused(format!(
                "key '{key}' of send port '{name}' is not held; `mbx send-port show {name}` lists the held keys"
            )));
        }
        let head: Option<(i64, i32)> = sqlx::query_as(
            "SELECT id, bucket FROM deliveries WHERE port_id = $1 AND order_key = $2 AND seq IS NOT NULL
              ORDER BY seq LIMIT 1 FOR UPDATE",
        )
        .bind(port_id)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((head, bucket)) = head {
            sqlx::query(
                "UPDATE leases SET epoch = epoch + 1, expires_at = now() WHERE port_id = $1 AND bucket = $2",
            )
            .bind(port_id)
            .bind(bucket)
            .execute(&mut *tx)
            .await?;
            if skip {
                crate::suspended::suspend_deliveries(
                    self,
                    &mut tx,
                    &[head],
                    &["failed-final"],
                    &[format!(
                        "skipped by an operator (send-port skip --key {key})"
                    )],
                    None,
                    false,
                )
                .await?;
            } else {
                reset_head(&mut tx, head).await?;
            }
        }
        tx.commit().await?;
        Ok(crate::config::Change {
            object: format!("{name} key {key}"),
            from: "held".to_owned(),
            to: "started".to_owned(),
            suspended: i64::from(skip && head.is_some()),
        })
    }
}

/// A held head made ready again at once, retries reset, on its primary transport.
async fn reset_head(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, head: i64) -> Result<()> {
    sqlx::query(
        "UPDATE deliveries SET state = 'ready', claimed_by = NULL, claim_token = NULL,
                claimed_at = NULL, retries = 0, transport = 'primary', not_before = now()
          WHERE id = $1",
    )
    .bind(head)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
