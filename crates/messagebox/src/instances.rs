//! The host-instance registry: registration, heartbeats on the database clock,
//! dead-instance detection and reclaiming of a dead instance's claims, with poison
//! detection (a message reclaimed more than `max_deliveries` times is suspended).

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::{Error, MessageBox, Result};

/// An instance whose heartbeat is older than this is dead.
pub const DEAD_AFTER_S: i64 = 10;

/// Default `--max-deliveries`.
pub const MAX_DELIVERIES_DEFAULT: i32 = 5;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Instance {
    pub id: Uuid,
    pub host: String,
    pub machine: String,
    pub pid: i32,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_age_s: f64,
    pub state: crate::states::InstanceState,
    /// What it is throttled on (`publish`, `inflight`, both), if anything.
    pub throttle: Option<String>,
}

/// What one reclaim pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReclaimReport {
    pub instances_declared_dead: u64,
    /// Replies routed to a dead instance's waiting clients, suspended with the reason.
    pub replies_suspended: u64,
    pub deliveries_reclaimed: u64,
    pub poison_suspended: u64,
}

impl MessageBox {
    /// Registers a new instance of `host`; returns its id.
    pub async fn instance_register(
        &self,
        host: &str,
        machine: &str,
        pid: i32,
        version: &str,
    ) -> Result<Uuid> {
        let id = Uuid::now_v7();
        let n = sqlx::query(
            "INSERT INTO host_instances (id, host_id, machine, pid, version)
             SELECT $1, h.id, $3, $4, $5 FROM hosts h WHERE h.name = $2",
        )
        .bind(id)
        .bind(host)
        .bind(machine)
        .bind(pid)
        .bind(version)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(Error::not_found(
                "host",
                host,
                "create it with `mbx host create NAME`",
            ));
        }
        Ok(id)
    }

    /// Renews the heartbeat. Returns false when the instance was declared dead (it must
    /// drop its in-flight work and re-register).
    pub async fn instance_heartbeat(&self, id: Uuid) -> Result<bool> {
        self.instance_heartbeat_with(id, None).await
    }

    /// A heartbeat carrying the instance's cumulative deliveries per send port id since it
    /// started (`mbx stats --watch` and the console make rates of them).
    pub async fn instance_heartbeat_with(
        &self,
        id: Uuid,
        delivered: Option<&std::collections::BTreeMap<i64, u64>>,
    ) -> Result<bool> {
        let delivered = delivered.map(|d| {
            serde_json::Value::Object(
                d.iter()
                    .map(|(port, n)| (port.to_string(), serde_json::Value::from(*n)))
                    .collect(),
            )
        });
        Ok(sqlx::query(
            "UPDATE host_instances SET heartbeat_at = now(), delivered = coalesce($2, delivered)
              WHERE id = $1 AND state = 'alive'",
        )
        .bind(id)
        .bind(delivered)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// Graceful stop: releases the instance's claims and marks it stopped.
    pub async fn instance_deregister(&self, id: Uuid) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let released = sqlx::query(
            "UPDATE deliveries SET state = 'ready', claimed_by = NULL, claim_token = NULL, claimed_at = NULL
              WHERE state = 'claimed' AND claimed_by = $1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // its orchestration claims and the buckets of ordered orchestrations it holds go
        // back now (a step still in flight can no longer commit: its claim token is gone)
        sqlx::query(
            // by id, skipping rows a publish holds (as reclaim_dead: no deadlock with the
            // publishes; what is skipped the reclaim of stopped instances takes)
            "WITH c AS (SELECT id FROM orchestration_instances WHERE claimed_by = $1
                         ORDER BY id FOR UPDATE SKIP LOCKED)
             UPDATE orchestration_instances o
                SET claimed_by = NULL, claim_token = NULL, runnable_at = now()
               FROM c WHERE o.id = c.id",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE leases SET expires_at = now()
              WHERE holder = $1 AND orchestration_id IS NOT NULL AND expires_at > now()",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE host_instances SET state = 'stopped' WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(released)
    }

    pub async fn instance_list(&self) -> Result<Vec<Instance>> {
        Ok(sqlx::query_as::<_, Instance>(
            "SELECT i.id, h.name AS host, i.machine, i.pid, i.version, i.started_at,
                    extract(epoch FROM now() - i.heartbeat_at)::float8 AS heartbeat_age_s,
                    CASE WHEN i.state = 'alive' AND i.heartbeat_at < now() - make_interval(secs => $1)
                         THEN 'dead' ELSE i.state END AS state,
                    CASE WHEN i.state = 'alive' THEN i.throttle END AS throttle
               FROM host_instances i JOIN hosts h ON h.id = i.host_id
              ORDER BY h.name, i.started_at",
        )
        .bind(DEAD_AFTER_S as f64)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Declares instances whose heartbeat is older than `dead_after_s` dead, puts their
    /// claimed deliveries back (claims never expire on their own: only a dead holder
    /// loses them), and suspends as poison every delivery reclaimed more than
    /// `max_deliveries` times. One transaction; safe to run on every instance at once.
    pub async fn instances_reclaim_dead(
        &self,
        dead_after_s: i64,
        max_deliveries: i32,
    ) -> Result<ReclaimReport> {
        let mut tx = self.pool.begin().await?;
        let dead = sqlx::query(
            "UPDATE host_instances SET state = 'dead'
              WHERE state = 'alive' AND heartbeat_at < now() - make_interval(secs => $1)",
        )
        .bind(dead_after_s as f64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let reclaimed: Vec<(i64, i32)> = sqlx::query_as(
            "WITH r AS (
                UPDATE deliveries d
                   SET state = 'ready', claimed_by = NULL, claim_token = NULL, claimed_at = NULL,
                       reclaims = d.reclaims + 1
                  FROM host_instances i
                 WHERE d.state = 'claimed' AND d.claimed_by = i.id AND i.state <> 'alive'
                RETURNING d.id, d.reclaims, d.message_id, d.port_id, i.id AS instance),
             ev AS (INSERT INTO tracking_events (message_id, event, port_id, instance_id, detail)
                    SELECT r.message_id, 'reclaimed', r.port_id, r.instance, 'holder instance died'
                      FROM r JOIN send_ports p ON p.id = r.port_id JOIN hosts h ON h.id = p.host_id
                     WHERE coalesce(p.tracking, h.tracking) <> 'off')
             SELECT id, reclaims FROM r",
        )
        .fetch_all(&mut *tx)
        .await?;
        let poison: Vec<i64> = reclaimed
            .iter()
            .filter(|(_, n)| *n > max_deliveries)
            .map(|(id, _)| *id)
            .collect();
        if !poison.is_empty() {
            let kinds = vec!["failed-final"; poison.len()];
            let errors: Vec<String> = reclaimed
                .iter()
                .filter(|(_, n)| *n > max_deliveries)
                .map(|(_, n)| format!("poison message: its holder died {n} times while sending it (--max-deliveries {max_deliveries})"))
                .collect();
            crate::suspended::suspend_deliveries(
                self, &mut tx, &poison, &kinds, &errors, None, false,
            )
            .await?;
        }
        let replies_suspended = crate::replies::reclaim_dead(&mut tx).await?;
        crate::process::reclaim_dead(&mut tx).await?;
        tx.commit().await?;
        Ok(ReclaimReport {
            replies_suspended,
            instances_declared_dead: dead,
            deliveries_reclaimed: (reclaimed.len() - poison.len()) as u64,
            poison_suspended: poison.len() as u64,
        })
    }
}
