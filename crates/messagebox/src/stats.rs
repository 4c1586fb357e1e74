//! The operator's counters (backlog, retrying, in flight, suspended), per port and
//! group-wide, in one query each.

use serde::Serialize;

use crate::{MessageBox, Result};

/// Per-port counters; they do not overlap.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PortStats {
    pub name: String,
    pub state: crate::states::PortState,
    /// Ready or held (port stopped or suspended, or queued behind an ordered head).
    pub backlog: i64,
    /// Waiting for a retry time.
    pub retrying: i64,
    /// Claimed by an instance.
    pub in_flight: i64,
    /// Suspended items of this port.
    pub suspended: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Messages still referenced by a delivery or suspended item.
    pub spool_messages: i64,
    pub suspended_total: i64,
    pub ports: Vec<PortStats>,
}

impl MessageBox {
    /// How the live leases of ordered ports are spread: (leases held in all, most held by
    /// one instance). `mbx bench` waits for an even spread before it measures.
    pub async fn lease_spread(&self) -> Result<(i64, i64)> {
        Ok(sqlx::query_as(
            "SELECT coalesce(sum(n), 0)::int8, coalesce(max(n), 0)::int8 FROM (
                SELECT count(*) AS n FROM leases
                 WHERE port_id IS NOT NULL AND holder IS NOT NULL AND expires_at > now()
                 GROUP BY holder) h",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// The spool's size now: (deliveries waiting or in flight, bytes of the message and
    /// delivery tables on disk).
    pub async fn spool_size(&self) -> Result<(i64, i64)> {
        Ok(sqlx::query_as(
            "SELECT (SELECT count(*) FROM deliveries),
                    pg_total_relation_size('messages') + pg_total_relation_size('deliveries')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn stats(&self) -> Result<Stats> {
        let mut tx = self.pool.begin().await?;
        // one snapshot for all counters
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let ports = sqlx::query_as::<_, PortStats>(
            "SELECT p.name, p.state,
                    coalesce(d.backlog, 0) AS backlog, coalesce(d.retrying, 0) AS retrying,
                    coalesce(d.in_flight, 0) AS in_flight, coalesce(s.n, 0) AS suspended
               FROM send_ports p
               LEFT JOIN (SELECT port_id,
                                 count(*) FILTER (WHERE state = 'ready' AND not_before <= now()) AS backlog,
                                 count(*) FILTER (WHERE state = 'ready' AND not_before > now()) AS retrying,
                                 count(*) FILTER (WHERE state = 'claimed') AS in_flight
                            FROM deliveries GROUP BY port_id) d ON d.port_id = p.id
               LEFT JOIN (SELECT port_id, count(*) AS n FROM suspended_items GROUP BY port_id) s ON s.port_id = p.id
              ORDER BY p.name",
        )
        .fetch_all(&mut *tx)
        .await?;
        let (spool_messages, suspended_total): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM messages m
                      WHERE EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id)
                         OR EXISTS (SELECT 1 FROM suspended_items s WHERE s.message_id = m.id)),
                    (SELECT count(*) FROM suspended_items)",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Stats {
            spool_messages,
            suspended_total,
            ports,
        })
    }
}
