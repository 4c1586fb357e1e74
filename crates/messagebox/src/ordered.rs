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

use sqlx::Row;
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
        let rows = sqlx::query(
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
             SELECT c.id, c.message_id, c.transport, c.retries, c.seq, p.name,
                    CASE WHEN c.transport = 'backup' THEN p.backup_address ELSE p.address END,
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
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT id, state FROM send_ports WHERE name = $1 FOR NO KEY UPDATE")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let (port_id, state) = row.ok_or_else(|| {
            crate::Error::not_found("send port", name, "`mbx send-port list` shows the ports")
        })?;
        if state != "suspended" {
            let verb = if skip { "skip" } else { "resume" };
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
                sqlx::query(
                    "UPDATE deliveries SET state = 'ready', claimed_by = NULL, claim_token = NULL,
                            claimed_at = NULL, retries = 0, transport = 'primary', not_before = now()
                      WHERE id = $1",
                )
                .bind(head)
                .execute(&mut *tx)
                .await?;
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
        let row = sqlx::query("SELECT epoch FROM leases WHERE port_id = $1 AND bucket = 0")
            .bind(port_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }
}
