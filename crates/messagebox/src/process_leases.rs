//! Ordered orchestrations (`--ordered`): each instance belongs to its convoy key's bucket
//! (`routing::key_bucket`), and each (orchestration, bucket) has a lease in `leases`, as
//! a port ordered by a property has per bucket. A host instance takes free or expired
//! buckets that have work ([`MessageBox::process_leases_acquire`], epoch + 1), renews
//! those it holds every third of the TTL, and claims only the instances of its buckets
//! ([`MessageBox::process_claim_ordered`]) — taking over those a former holder still had
//! claimed at an older epoch. `process_commit` commits an ordered instance's step only
//! while the claim's epoch is still the bucket's and its lease unexpired (the lease row
//! locked until the commit), so an owner paused past its lease commits nothing once
//! another took the bucket: each convoy runs on one host instance at a time, its messages
//! taken in the order they were held.

use uuid::Uuid;

use crate::process::ClaimedInstance;
use crate::{MessageBox, Result};

/// A bucket of an ordered orchestration held at an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::FromRow)]
pub struct ProcessLease {
    pub orchestration_id: i64,
    pub bucket: i32,
    pub epoch: i64,
}

impl MessageBox {
    /// Whether `host_id` runs an ordered orchestration (whose buckets are then taken).
    pub async fn process_has_ordered(&self, host_id: i64) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM orchestrations WHERE host_id = $1 AND ordered)",
        )
        .bind(host_id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Takes up to `max` free or expired buckets of the ordered orchestrations of
    /// `host_id` that have live instances (runnable, or still claimed by a former holder);
    /// each moves to epoch + 1 under `instance` for `ttl_ms`.
    pub async fn process_leases_acquire(
        &self,
        instance: Uuid,
        host_id: i64,
        max: i64,
        ttl_ms: i64,
    ) -> Result<Vec<ProcessLease>> {
        if max <= 0 {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_as::<_, ProcessLease>(
            "UPDATE leases l SET holder = $2, epoch = l.epoch + 1, acquired_at = now(),
                                 expires_at = now() + make_interval(secs => $4)
              WHERE l.id IN (
                    SELECT f.id FROM leases f JOIN orchestrations o ON o.id = f.orchestration_id
                     WHERE o.host_id = $1
                       AND (f.holder IS NULL OR f.expires_at IS NULL OR f.expires_at <= now())
                       AND EXISTS (SELECT 1 FROM orchestration_instances i
                                    WHERE i.orchestration_id = f.orchestration_id AND i.bucket = f.bucket
                                      AND i.state IN ('pending', 'running', 'waiting')
                                      AND (i.runnable_at <= now() OR i.claimed_by IS NOT NULL))
                     ORDER BY f.orchestration_id, f.bucket LIMIT $3 FOR UPDATE OF f SKIP LOCKED)
                AND (l.holder IS NULL OR l.expires_at IS NULL OR l.expires_at <= now())
                AND EXISTS (SELECT 1 FROM host_instances h WHERE h.id = $2 AND h.state = 'alive')
             RETURNING l.orchestration_id, l.bucket, l.epoch",
        )
        .bind(host_id)
        .bind(instance)
        .bind(max)
        .bind(ttl_ms as f64 / 1000.0)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Renews the buckets `instance` holds at their epochs for `ttl_ms` — or, with
    /// `ttl_ms` `None`, lets them expire now (a graceful stop, or buckets without work
    /// handed back). Returns those renewed (the others expired or moved).
    pub async fn process_leases_renew(
        &self,
        instance: Uuid,
        held: &[ProcessLease],
        ttl_ms: Option<i64>,
    ) -> Result<Vec<ProcessLease>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let orchestrations: Vec<i64> = held.iter().map(|l| l.orchestration_id).collect();
        let buckets: Vec<i32> = held.iter().map(|l| l.bucket).collect();
        let epochs: Vec<i64> = held.iter().map(|l| l.epoch).collect();
        Ok(sqlx::query_as::<_, ProcessLease>(
            "UPDATE leases l SET expires_at = CASE WHEN $5::float8 IS NULL THEN now()
                                                ELSE now() + make_interval(secs => $5) END
               FROM unnest($2::int8[], $3::int4[], $4::int8[]) AS h(orchestration_id, bucket, epoch)
              WHERE l.orchestration_id = h.orchestration_id AND l.bucket = h.bucket
                AND l.holder = $1 AND l.epoch = h.epoch AND l.expires_at > now()
             RETURNING l.orchestration_id, l.bucket, l.epoch",
        )
        .bind(instance)
        .bind(&orchestrations)
        .bind(&buckets)
        .bind(&epochs)
        .bind(ttl_ms.map(|t| t as f64 / 1000.0))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Of the buckets `instance` holds, those without live instances (to hand back, so
    /// another host instance can take buckets that get work).
    pub async fn process_leases_idle(&self, held: &[ProcessLease]) -> Result<Vec<ProcessLease>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let orchestrations: Vec<i64> = held.iter().map(|l| l.orchestration_id).collect();
        let buckets: Vec<i32> = held.iter().map(|l| l.bucket).collect();
        let epochs: Vec<i64> = held.iter().map(|l| l.epoch).collect();
        Ok(sqlx::query_as::<_, ProcessLease>(
            "SELECT h.orchestration_id, h.bucket, h.epoch
               FROM unnest($1::int8[], $2::int4[], $3::int8[]) AS h(orchestration_id, bucket, epoch)
              WHERE NOT EXISTS (SELECT 1 FROM orchestration_instances i
                                 WHERE i.orchestration_id = h.orchestration_id AND i.bucket = h.bucket
                                   AND i.state IN ('pending', 'running', 'waiting')
                                   AND (i.runnable_at IS NOT NULL OR i.claimed_by IS NOT NULL))",
        )
        .bind(&orchestrations)
        .bind(&buckets)
        .bind(&epochs)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Claims up to `limit` runnable instances in the buckets `instance` holds (unexpired),
    /// and those a former holder still has claimed at an older epoch (taken over: its
    /// steps can no longer commit). Each claim records its bucket's epoch.
    pub async fn process_claim_ordered(
        &self,
        instance: Uuid,
        limit: i64,
    ) -> Result<Vec<ClaimedInstance>> {
        Ok(sqlx::query_as::<_, ClaimedInstance>(
            "WITH c AS (
                SELECT i.id, coalesce(i.runnable_at, now()) AS runnable_at, l.epoch
                  FROM leases l
                  JOIN orchestration_instances i
                    ON i.orchestration_id = l.orchestration_id AND i.bucket = l.bucket
                 WHERE l.holder = $1 AND l.expires_at > now() AND l.orchestration_id IS NOT NULL
                   AND i.state IN ('pending', 'running', 'waiting')
                   AND ((i.claimed_by IS NULL AND i.runnable_at <= now())
                        OR (i.claimed_by IS NOT NULL AND i.claim_epoch < l.epoch))
                 ORDER BY i.runnable_at NULLS FIRST
                 LIMIT $2 FOR UPDATE OF i SKIP LOCKED)
             UPDATE orchestration_instances i
                SET claimed_by = $1, claim_token = gen_random_uuid(), runnable_at = NULL,
                    claim_epoch = c.epoch
               FROM c, orchestrations o
              WHERE i.id = c.id AND o.id = i.orchestration_id
             RETURNING i.id, i.orchestration_id, o.name AS orchestration, i.version, i.state, i.data,
                       i.pokes, i.claim_token, extract(epoch FROM now())::float8 AS now,
                       extract(epoch FROM c.runnable_at)::float8 AS due",
        )
        .bind(instance)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}
