//! Maintenance: deletes message bodies that no delivery or suspended item references,
//! purges tracking events past retention and expired dedup records — each in bounded
//! batches so no statement holds locks for long.

use serde::Serialize;

use crate::publish::DEDUP_WINDOW_S;
use crate::{MessageBox, Result};

/// Rows one maintenance statement touches at most.
pub const MAINTENANCE_BATCH_MAX: i64 = 1000;

/// Dead or stopped instances holding nothing are forgotten after this long.
pub const INSTANCE_RETENTION_S: i64 = 7 * 24 * 3600;

/// The tracking retention of a group that has not set one (`mbx group set
/// --tracking-retention`; 7 days, as the column's default).
pub const TRACKING_RETENTION_DEFAULT_S: i64 = 7 * 24 * 3600;

#[derive(Debug, Clone, Default, Serialize)]
pub struct MaintenanceReport {
    pub orphan_messages_deleted: u64,
    pub tracking_events_purged: u64,
    pub dedup_records_purged: u64,
    pub instances_forgotten: u64,
    /// Completed or cancelled orchestration instances past the tracking retention.
    pub instances_ended_purged: u64,
}

impl MessageBox {
    /// One maintenance pass: each step repeats in batches of `batch` until nothing is left.
    /// Stopped and dead instances are forgotten after [`INSTANCE_RETENTION_S`].
    pub async fn maintenance_run(
        &self,
        tracking_retention_s: i64,
        batch: i64,
    ) -> Result<MaintenanceReport> {
        self.maintenance_run_with(tracking_retention_s, INSTANCE_RETENTION_S, batch)
            .await
    }

    /// [`MessageBox::maintenance_run`] forgetting stopped and dead instances (that hold
    /// nothing) after `instance_retention_s` (`mbx-host --forget-instances-after`).
    pub async fn maintenance_run_with(
        &self,
        tracking_retention_s: i64,
        instance_retention_s: i64,
        batch: i64,
    ) -> Result<MaintenanceReport> {
        let batch = batch.clamp(1, MAINTENANCE_BATCH_MAX);
        let mut report = MaintenanceReport::default();
        loop {
            // messages older than a minute only: a publish in flight has no deliveries yet
            let n = sqlx::query(
                "DELETE FROM messages WHERE id IN (
                    SELECT m.id FROM messages m
                     WHERE m.published_at < now() - interval '1 minute'
                       AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id)
                       AND NOT EXISTS (SELECT 1 FROM suspended_items s WHERE s.message_id = m.id)
                       AND NOT EXISTS (SELECT 1 FROM instance_deliveries r WHERE r.message_id = m.id)
               AND NOT EXISTS (SELECT 1 FROM orchestration_inbox b WHERE b.message_id = m.id)
                     LIMIT $1 FOR UPDATE SKIP LOCKED)",
            )
            .bind(batch)
            .execute(&self.pool)
            .await?
            .rows_affected();
            report.orphan_messages_deleted += n;
            if n < batch as u64 {
                break;
            }
        }
        report.tracking_events_purged = self
            .purge_older(
                "DELETE FROM tracking_events WHERE id IN (
                    SELECT id FROM tracking_events WHERE at < now() - make_interval(secs => $1) LIMIT $2)",
                tracking_retention_s,
                batch,
            )
            .await?;
        let (events, ended) = self
            .purge_orchestrations(tracking_retention_s, batch)
            .await?;
        report.tracking_events_purged += events;
        report.instances_ended_purged = ended;
        // what became of suspended items is kept as long as their tracking events
        self.purge_older(
            "DELETE FROM suspended_outcomes WHERE item_id IN (
                SELECT item_id FROM suspended_outcomes WHERE at < now() - make_interval(secs => $1) LIMIT $2)",
            tracking_retention_s,
            batch,
        )
        .await?;
        report.dedup_records_purged += self
            .purge_older(
                "DELETE FROM received_sources WHERE (receive_location_id, source_id) IN (
                    SELECT receive_location_id, source_id FROM received_sources
                     WHERE published_at < now() - make_interval(secs => $1) LIMIT $2)",
                DEDUP_WINDOW_S,
                batch,
            )
            .await?;
        // forwarded-in receipts the source forgot a dedup window ago (published ones: a
        // row not yet published is a message)
        report.dedup_records_purged += self
            .purge_older(
                "DELETE FROM forward_inbox WHERE id IN (
                    SELECT id FROM forward_inbox
                     WHERE forgotten_at < now() - make_interval(secs => $1) AND published
                     LIMIT $2)",
                DEDUP_WINDOW_S,
                batch,
            )
            .await?;
        report.instances_forgotten = self.instance_prune(instance_retention_s).await?;
        Ok(report)
    }

    /// Runs `delete` (older than `$1` seconds, at most `$2` rows) until a pass deletes
    /// fewer than `batch` rows; returns how many went.
    /// Orchestration instances' histories, and ended instances, past the tracking
    /// retention: (events, instances) purged.
    async fn purge_orchestrations(&self, retention_s: i64, batch: i64) -> Result<(u64, u64)> {
        let events = self
            .purge_older(
                "DELETE FROM orchestration_events WHERE id IN (
                    SELECT id FROM orchestration_events WHERE at < now() - make_interval(secs => $1) LIMIT $2)",
                retention_s,
                batch,
            )
            .await?;
        let ended = self
            .purge_older(
                "DELETE FROM orchestration_instances WHERE id IN (
                    SELECT id FROM orchestration_instances
                     WHERE ended_at < now() - make_interval(secs => $1) LIMIT $2)",
                retention_s,
                batch,
            )
            .await?;
        Ok((events, ended))
    }

    async fn purge_older(&self, delete: &str, older_than_s: i64, batch: i64) -> Result<u64> {
        let mut total = 0;
        loop {
            let n = sqlx::query(delete)
                .bind(older_than_s as f64)
                .bind(batch)
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += n;
            if n < batch as u64 {
                return Ok(total);
            }
        }
    }

    /// Forgets stopped and dead instances whose last heartbeat is older than
    /// `older_than_s` and that hold no claim and no unexpired lease (`mbx instance prune`;
    /// maintenance does it after a week). Returns how many went.
    pub async fn instance_prune(&self, older_than_s: i64) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM host_instances i
              WHERE i.state <> 'alive' AND i.heartbeat_at < now() - make_interval(secs => $1)
                AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.claimed_by = i.id)
                AND NOT EXISTS (SELECT 1 FROM leases l
                                 WHERE l.holder = i.id AND l.expires_at > now())",
        )
        .bind(older_than_s as f64)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Whether this MessageBox holds message `id` or any event of it.
    pub async fn message_known(&self, id: uuid::Uuid) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM messages WHERE id = $1)
                 OR EXISTS (SELECT 1 FROM tracking_events WHERE message_id = $1)",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Every tracking event of a message, in order (`mbx track`).
    pub async fn tracking_events(&self, message_id: uuid::Uuid) -> Result<Vec<TrackingEvent>> {
        Ok(sqlx::query_as::<_, TrackingEvent>(
            "SELECT e.at, e.event, p.name AS port, e.instance_id, e.detail
               FROM tracking_events e LEFT JOIN send_ports p ON p.id = e.port_id
              WHERE e.message_id = $1 ORDER BY e.id",
        )
        .bind(message_id)
        .fetch_all(&self.pool)
        .await?)
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TrackingEvent {
    pub at: chrono::DateTime<chrono::Utc>,
    pub event: String,
    pub port: Option<String>,
    pub instance_id: Option<uuid::Uuid>,
    pub detail: Option<String>,
}
