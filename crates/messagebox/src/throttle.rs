//! Throttling: the figures a host instance needs to decide whether to slow down,
//! and where it records that it did (for `mbx status`).

use uuid::Uuid;

use crate::{Error, MessageBox, Result};

/// A host's throttling thresholds and its id (publishes are attributed to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    pub host_id: i64,
    /// Undelivered, unsuspended deliveries of messages this host published.
    pub throttle_publish: i64,
    /// In-flight messages per instance.
    pub throttle_inflight: i64,
}

impl MessageBox {
    /// The thresholds of host `name`.
    pub async fn host_limits(&self, name: &str) -> Result<HostLimits> {
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT id, throttle_publish, throttle_inflight FROM hosts WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let (host_id, throttle_publish, throttle_inflight) = row.ok_or_else(|| {
            Error::not_found(
                "host",
                name,
                format!("create it with `mbx host create {name}`"),
            )
        })?;
        Ok(HostLimits {
            host_id,
            throttle_publish,
            throttle_inflight,
        })
    }

    /// Deliveries not yet delivered (nor suspended: those leave `deliveries`) of messages
    /// host `host_id` published, counted up to `cap` — enough to compare with a threshold
    /// without counting a large backlog in full.
    pub async fn publish_backlog(&self, host_id: i64, cap: i64) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM (
                SELECT 1 FROM deliveries d JOIN messages m ON m.id = d.message_id
                 WHERE m.publisher_host_id = $1 LIMIT $2) b",
        )
        .bind(host_id)
        .bind(cap.max(0))
        .fetch_one(&self.pool)
        .await?)
    }

    /// Records what instance `id` is throttled on (`None`: nothing).
    pub async fn instance_set_throttle(&self, id: Uuid, throttle: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE host_instances SET throttle = $2 WHERE id = $1")
            .bind(id)
            .bind(throttle)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
