//! The operator's counters (backlog, retrying, in flight, suspended), per port and
//! group-wide, and orchestration instances by state, in one query each.

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

/// Per-orchestration counts of the instances that have not ended, by state.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OrchestrationStats {
    pub name: String,
    pub pending: i64,
    pub running: i64,
    pub waiting: i64,
    pub suspended: i64,
    pub faulted: i64,
    /// Runnable now and not yet claimed: a message arrived, a timer or timeout is due.
    pub due: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Messages still referenced by a delivery or suspended item.
    pub spool_messages: i64,
    pub suspended_total: i64,
    pub ports: Vec<PortStats>,
    pub orchestrations: Vec<OrchestrationStats>,
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
        let orchestrations = sqlx::query_as::<_, OrchestrationStats>(
            "SELECT o.name,
                    count(i.id) FILTER (WHERE i.state = 'pending') AS pending,
                    count(i.id) FILTER (WHERE i.state = 'running') AS running,
                    count(i.id) FILTER (WHERE i.state = 'waiting') AS waiting,
                    count(i.id) FILTER (WHERE i.state = 'suspended') AS suspended,
                    count(i.id) FILTER (WHERE i.state = 'faulted') AS faulted,
                    count(i.id) FILTER (WHERE i.runnable_at <= now() AND i.claimed_by IS NULL
                                          AND i.state IN ('pending', 'running', 'waiting')) AS due
               FROM orchestrations o
               LEFT JOIN orchestration_instances i
                      ON i.orchestration_id = o.id AND i.state NOT IN ('completed', 'cancelled')
              GROUP BY o.name ORDER BY o.name",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Stats {
            spool_messages,
            suspended_total,
            ports,
            orchestrations,
        })
    }
}

/// Every instance's cumulative deliveries per send port, as last written with its
/// heartbeat. Two readings make a rate ([`DeliveredReading::rates_since`]).
#[derive(Debug, Clone, Default)]
pub struct DeliveredReading {
    /// When it was read (the database clock).
    pub at: chrono::DateTime<chrono::Utc>,
    /// (instance, port name) → messages delivered since the instance started.
    pub counts: std::collections::HashMap<(uuid::Uuid, String), i64>,
}

impl DeliveredReading {
    /// Messages delivered per second and port between `earlier` and this reading. Only
    /// instances present in both count (an instance that started or was pruned in between
    /// has no difference to give), and a counter that went back is ignored.
    pub fn rates_since(
        &self,
        earlier: &DeliveredReading,
    ) -> std::collections::HashMap<String, f64> {
        let secs = (self.at - earlier.at).num_milliseconds() as f64 / 1000.0;
        let mut rates = std::collections::HashMap::new();
        if secs <= 0.0 {
            return rates;
        }
        for ((instance, port), now) in &self.counts {
            let before = earlier.counts.get(&(*instance, port.clone()));
            let delta = match before {
                Some(b) if now >= b => now - b,
                _ => 0,
            };
            *rates.entry(port.clone()).or_insert(0.0) += delta as f64 / secs;
        }
        rates
    }
}

/// One ordered port as the console shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OrderedPortView {
    pub name: String,
    pub state: crate::states::PortState,
    pub stop_on_failure: bool,
    /// The instance holding the lease (live or not) and its host.
    pub holder: Option<uuid::Uuid>,
    pub holder_host: Option<String>,
    pub live: bool,
    pub epoch: i64,
    pub next_seq: i64,
    /// The head delivery: `none`, `waiting`, `retrying` or `in flight`.
    pub head: String,
    /// When the lease last changed hands.
    pub last_takeover: Option<chrono::DateTime<chrono::Utc>>,
    /// A port ordered by a property: the property, its buckets, how many of them are held
    /// (live) and by how many instances, and how many keys are held after a failure (the
    /// fields above then describe bucket 0 only).
    pub ordered_by: Option<String>,
    pub buckets: Option<i32>,
    pub buckets_live: i64,
    pub bucket_owners: i64,
    pub held_keys: i64,
}

impl MessageBox {
    /// Reads every instance's delivered counters (one query).
    pub async fn delivered_reading(&self) -> Result<DeliveredReading> {
        let mut tx = self.pool.begin().await?;
        let at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&mut *tx)
            .await?;
        let rows: Vec<(uuid::Uuid, String, i64)> = sqlx::query_as(
            "SELECT i.id, p.name, (e.value #>> '{}')::int8
               FROM host_instances i
              CROSS JOIN LATERAL jsonb_each(i.delivered) e
               JOIN send_ports p ON p.id = e.key::int8",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(DeliveredReading {
            at,
            counts: rows.into_iter().map(|(i, p, n)| ((i, p), n)).collect(),
        })
    }

    /// Every ordered port with its lease, sequence and head (one query).
    pub async fn ordered_ports(&self) -> Result<Vec<OrderedPortView>> {
        Ok(sqlx::query_as::<_, OrderedPortView>(
            "SELECT p.name, p.state, p.stop_on_failure, l.holder, h.name AS holder_host,
                    coalesce(l.expires_at > now(), false) AS live,
                    coalesce(l.epoch, 0) AS epoch, coalesce(s.next_seq, 0) AS next_seq,
                    coalesce((SELECT CASE WHEN d.state = 'claimed' THEN 'in flight'
                                          WHEN d.not_before > now() THEN 'retrying'
                                          ELSE 'waiting' END
                                FROM deliveries d WHERE d.port_id = p.id AND d.seq IS NOT NULL
                               ORDER BY d.seq LIMIT 1), 'none') AS head,
                    l.acquired_at AS last_takeover,
                    p.ordered_by, p.ordered_buckets AS buckets,
                    (SELECT count(*) FROM leases b WHERE b.port_id = p.id AND b.holder IS NOT NULL
                        AND b.expires_at > now()) AS buckets_live,
                    (SELECT count(DISTINCT b.holder) FROM leases b WHERE b.port_id = p.id
                        AND b.expires_at > now()) AS bucket_owners,
                    (SELECT count(*) FROM ordered_holds o WHERE o.port_id = p.id) AS held_keys
               FROM send_ports p
               LEFT JOIN leases l ON l.port_id = p.id AND l.bucket = 0
               LEFT JOIN ordered_sequences s ON s.port_id = p.id AND s.order_key = ''
               LEFT JOIN host_instances i ON i.id = l.holder
               LEFT JOIN hosts h ON h.id = i.host_id
              WHERE p.ordered
              ORDER BY p.name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Whether this connection's role may change the MessageBox (a console started on a
    /// read-only role, or against a standby, offers no action).
    pub async fn can_write(&self) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT NOT pg_is_in_recovery()
                AND has_table_privilege('send_ports', 'UPDATE')
                AND has_table_privilege('receive_locations', 'UPDATE')
                AND has_table_privilege('suspended_items', 'DELETE')
                AND has_table_privilege('deliveries', 'INSERT')",
        )
        .fetch_one(&self.pool)
        .await?)
    }
}
