//! What an operator does with orchestration instances (`mbx orchestration instance …`):
//! find them, look into one, and suspend, resume or cancel them. Each change is one
//! transaction; naming an instance that cannot take it changes nothing.
//!
//! - *Suspend* takes a pending, running or waiting instance out of the runnable set; its
//!   claim goes, so a step in flight on some host commits nothing (it replays on resume,
//!   a call resent with the key it recorded). Messages for it are held meanwhile.
//! - *Resume* makes a suspended or faulted instance runnable again (a faulted one from its
//!   failed task), optionally on another version of its orchestration (the caller checks
//!   that the instance's task path exists there: this module reads no document).
//! - *Cancel* ends an instance: what it was held and did not take becomes `zombie`
//!   suspended items, its subscriptions go.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::process::{end_instances, ProcessState};
use crate::{Error, MessageBox, Result};

/// Which instances: by id, or by orchestration, state, correlation values and age.
#[derive(Debug, Clone, Default)]
pub struct InstanceSelector {
    pub ids: Vec<Uuid>,
    pub orchestration: Option<String>,
    pub state: Option<ProcessState>,
    /// Correlation values the instance has (property, value as text).
    pub correlation: Vec<(String, String)>,
    /// Created at least this long ago.
    pub older_than_s: Option<f64>,
    pub limit: Option<i64>,
}

/// The most instances one selection lists or changes when no `--limit` is given.
pub const DEFAULT_LIMIT: i64 = 1000;

/// One line of `mbx orchestration instance list`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct InstanceRow {
    pub id: Uuid,
    pub orchestration: String,
    pub version: String,
    pub state: ProcessState,
    pub correlation: sqlx::types::Json<serde_json::Value>,
    pub steps: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// When it runs next without a message (a timer, a timeout, or now), if it does.
    pub runnable_at: Option<DateTime<Utc>>,
    /// The host instance running its step now.
    pub claimed_by: Option<Uuid>,
    /// A faulted instance's error (the DSL's: type, status, title, detail, instance).
    pub error: Option<sqlx::types::Json<serde_json::Value>>,
}

/// A message routed to an instance, as `instance show` lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct InboxEntry {
    pub message_id: Uuid,
    pub seq: i64,
    pub activating: bool,
    pub consumed: bool,
    pub message_type: Option<String>,
    pub published_at: DateTime<Utc>,
}

/// `mbx orchestration instance show`: the instance, its saved state, its messages and
/// what it subscribes to.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceDetail {
    #[serde(flatten)]
    pub instance: InstanceRow,
    pub orchestration_id: i64,
    /// The interpreter's saved state (`null` before the first step).
    pub data: serde_json::Value,
    pub messages: Vec<InboxEntry>,
    /// The correlation keys it is subscribed by (the canonical JSON of the values).
    pub subscriptions: Vec<String>,
}

/// The instances a selector names, locked for a change when `lock` (in id order).
async fn selected(
    tx: &mut Transaction<'_, Postgres>,
    sel: &InstanceSelector,
    lock: bool,
) -> Result<Vec<InstanceRow>> {
    let correlation: serde_json::Map<String, serde_json::Value> = sel
        .correlation
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let sql = format!(
        "SELECT i.id, o.name AS orchestration, i.version, i.state, i.correlation, i.steps,
                i.created_at, i.updated_at, i.ended_at, i.runnable_at, i.claimed_by, i.error
           FROM orchestration_instances i JOIN orchestrations o ON o.id = i.orchestration_id
          WHERE (cardinality($1::uuid[]) = 0 OR i.id = ANY($1))
            AND ($2::text IS NULL OR o.name = $2)
            AND ($3::text IS NULL OR i.state = $3)
            AND NOT EXISTS (SELECT 1 FROM jsonb_each_text($4) f
                             WHERE i.correlation ->> f.key IS DISTINCT FROM f.value)
            AND ($5::float8 IS NULL OR i.created_at <= now() - make_interval(secs => $5))
          ORDER BY i.created_at, i.id
          LIMIT $6 {}",
        if lock { "FOR UPDATE OF i" } else { "" }
    );
    Ok(sqlx::query_as::<_, InstanceRow>(&sql)
        .bind(&sel.ids)
        .bind(&sel.orchestration)
        .bind(sel.state.map(ProcessState::as_str))
        .bind(serde_json::Value::Object(correlation))
        .bind(sel.older_than_s)
        .bind(sel.limit.unwrap_or(DEFAULT_LIMIT))
        .fetch_all(&mut **tx)
        .await?)
}

/// An operator's change to instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceChange {
    Suspend,
    Resume,
    Cancel,
}

impl InstanceChange {
    /// The states it applies to.
    fn applies_to(self, state: ProcessState) -> bool {
        use ProcessState::*;
        match self {
            InstanceChange::Suspend => matches!(state, Pending | Running | Waiting),
            InstanceChange::Resume => matches!(state, Suspended | Faulted),
            InstanceChange::Cancel => !state.ended(),
        }
    }

    fn verb(self) -> &'static str {
        match self {
            InstanceChange::Suspend => "suspended",
            InstanceChange::Resume => "resumed",
            InstanceChange::Cancel => "cancelled",
        }
    }

    fn which(self) -> &'static str {
        match self {
            InstanceChange::Suspend => "pending, running or waiting",
            InstanceChange::Resume => "suspended or faulted",
            InstanceChange::Cancel => "instances that have not ended (completed or cancelled)",
        }
    }
}

impl MessageBox {
    /// The instances `sel` names, oldest first.
    pub async fn process_instance_list(&self, sel: &InstanceSelector) -> Result<Vec<InstanceRow>> {
        let mut tx = self.pool.begin().await?;
        let rows = selected(&mut tx, sel, false).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// One instance, whole.
    pub async fn process_instance_show(&self, id: Uuid) -> Result<InstanceDetail> {
        let mut tx = self.pool.begin().await?;
        let sel = InstanceSelector {
            ids: vec![id],
            ..Default::default()
        };
        let instance = selected(&mut tx, &sel, false).await?.pop().ok_or_else(|| {
            Error::not_found(
                "orchestration instance",
                id.to_string(),
                "list them with `mbx orchestration instance list`",
            )
        })?;
        let (orchestration_id, data): (i64, Option<serde_json::Value>) = sqlx::query_as(
            "SELECT orchestration_id, data FROM orchestration_instances WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let messages = sqlx::query_as::<_, InboxEntry>(
            "SELECT b.message_id, b.seq, b.activating, b.consumed,
                    m.context -> 'mbx.MessageType' -> 'value' ->> 'string' AS message_type, m.published_at
               FROM orchestration_inbox b JOIN messages m ON m.id = b.message_id
              WHERE b.instance_id = $1 ORDER BY b.seq",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let subscriptions = sqlx::query_scalar(
            "SELECT key FROM orchestration_subscriptions WHERE instance_id = $1 ORDER BY activation DESC, key",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(InstanceDetail {
            instance,
            orchestration_id,
            data: data.unwrap_or(serde_json::Value::Null),
            messages,
            subscriptions,
        })
    }

    /// Suspends, resumes (onto `to_version` when given) or cancels the instances `sel`
    /// names, in one transaction; returns those changed. An instance named by id that the
    /// change does not apply to (or that does not exist) is refused and nothing changes;
    /// one found by a filter is passed over.
    pub async fn process_instance_change(
        &self,
        sel: &InstanceSelector,
        change: InstanceChange,
        to_version: Option<&str>,
    ) -> Result<Vec<Uuid>> {
        let mut tx = self.pool.begin().await?;
        let rows = selected(&mut tx, sel, true).await?;
        if let Some(missing) = sel.ids.iter().find(|id| !rows.iter().any(|r| r.id == **id)) {
            return Err(Error::not_found(
                "orchestration instance",
                missing.to_string(),
                "list them with `mbx orchestration instance list`",
            ));
        }
        if let Some(r) = rows
            .iter()
            .find(|r| !sel.ids.is_empty() && !change.applies_to(r.state))
        {
            return Err(Error::Refused(format!(
                "orchestration instance {} is {}: only {} instances can be {}; nothing was changed",
                r.id,
                r.state.as_str(),
                change.which(),
                change.verb()
            )));
        }
        let ids: Vec<Uuid> = rows
            .iter()
            .filter(|r| change.applies_to(r.state))
            .map(|r| r.id)
            .collect();
        match change {
            InstanceChange::Suspend => suspend(&mut tx, &ids).await?,
            InstanceChange::Resume => resume(&mut tx, &ids, to_version).await?,
            InstanceChange::Cancel => cancel(&mut tx, &ids).await?,
        }
        let detail = match to_version {
            Some(v) => format!("by operator, onto version {v}"),
            None => "by operator".to_owned(),
        };
        record(&mut tx, &ids, change.verb(), &detail).await?;
        tx.commit().await?;
        if change == InstanceChange::Resume && !ids.is_empty() {
            // the hosts' orchestration loops wake on the publish notification
            self.notify_published().await;
        }
        Ok(ids)
    }
}

async fn suspend(tx: &mut Transaction<'_, Postgres>, ids: &[Uuid]) -> Result<()> {
    sqlx::query(
        "UPDATE orchestration_instances
            SET state = 'suspended', claimed_by = NULL, claim_token = NULL, runnable_at = NULL,
                updated_at = now()
          WHERE id = ANY($1)",
    )
    .bind(ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn resume(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
    to_version: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE orchestration_instances
            SET state = CASE WHEN data IS NULL THEN 'pending' ELSE 'running' END,
                runnable_at = now(), error = NULL, version = coalesce($2, version),
                updated_at = now()
          WHERE id = ANY($1)",
    )
    .bind(ids)
    .bind(to_version)
    .execute(&mut **tx)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23503") => Error::Invalid(
            format!(
                "--to-version: {} is not a version of the instances' orchestration (see `mbx orchestration show NAME`)",
                to_version.unwrap_or_default()
            ),
        ),
        _ => Error::Database(e),
    })?;
    Ok(())
}

async fn cancel(tx: &mut Transaction<'_, Postgres>, ids: &[Uuid]) -> Result<()> {
    sqlx::query(
        "UPDATE orchestration_instances
            SET state = 'cancelled', claimed_by = NULL, claim_token = NULL, runnable_at = NULL,
                updated_at = now(), ended_at = now()
          WHERE id = ANY($1)",
    )
    .bind(ids)
    .execute(&mut **tx)
    .await?;
    end_instances(tx, ids).await
}

/// Cancels every instance of orchestration `name` that has not ended (inside `tx`).
pub(crate) async fn cancel_all_of(tx: &mut Transaction<'_, Postgres>, name: &str) -> Result<()> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT i.id FROM orchestration_instances i JOIN orchestrations o ON o.id = i.orchestration_id
          WHERE o.name = $1 AND i.state NOT IN ('completed', 'cancelled')
          ORDER BY i.id FOR UPDATE OF i",
    )
    .bind(name)
    .fetch_all(&mut **tx)
    .await?;
    cancel(tx, &ids).await
}

/// An operator's change in the instances' histories.
async fn record(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
    event: &str,
    detail: &str,
) -> Result<()> {
    sqlx::query(
        // an operator's change is recorded at every tracking level but `off`, with the
        // trail a `failures` level kept before it; a suspended (and so resumed) instance
        // has every later event recorded
        "WITH i AS (SELECT i.id, i.steps, i.trail, coalesce(h.tracking, 'failures') AS level
                      FROM orchestration_instances i JOIN orchestrations o ON o.id = i.orchestration_id
                      JOIN hosts h ON h.id = o.host_id WHERE i.id = ANY($1)),
              u AS (UPDATE orchestration_instances o
                       SET trail = NULL, tracked = o.tracked OR $2 IN ('suspended', 'resumed')
                      FROM i WHERE o.id = i.id AND i.level <> 'off')
         INSERT INTO orchestration_events (instance_id, at, step, event, task, message_id, detail)
         SELECT x.id, x.at, x.step, x.event, x.task, x.message_id, x.detail FROM (
             SELECT i.id, 0 AS grp, t.n AS ord, t.at, t.step, t.event, t.task, t.message_id, t.detail
               FROM i, ROWS FROM (jsonb_to_recordset(i.trail) AS (at timestamptz, step bigint, event text,
                                  task text, message_id uuid, detail text))
                       WITH ORDINALITY AS t(at, step, event, task, message_id, detail, n)
              WHERE i.level <> 'off'
             UNION ALL
             SELECT i.id, 1, 0, clock_timestamp(), i.steps, $2, NULL, NULL, $3 FROM i WHERE i.level <> 'off') x
          ORDER BY x.id, x.grp, x.ord",
    )
    .bind(ids)
    .bind(event)
    .bind(detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One event of an instance's history.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct InstanceEvent {
    pub at: DateTime<Utc>,
    pub step: i64,
    pub event: String,
    pub task: Option<String>,
    pub message_id: Option<Uuid>,
    pub message_type: Option<String>,
    pub detail: Option<String>,
}

impl MessageBox {
    /// An instance's history, oldest first (kept for the tracking retention).
    pub async fn process_instance_history(&self, id: Uuid) -> Result<Vec<InstanceEvent>> {
        let events = sqlx::query_as::<_, InstanceEvent>(
            // the events written, then those a running instance's trail still keeps
            "SELECT e.at, e.step, e.event, e.task, e.message_id,
                    m.context -> 'mbx.MessageType' -> 'value' ->> 'string' AS message_type, e.detail
               FROM (SELECT 0 AS grp, e.id AS ord, e.at, e.step, e.event, e.task, e.message_id, e.detail
                       FROM orchestration_events e WHERE e.instance_id = $1
                     UNION ALL
                     SELECT 1, t.n, t.at, t.step, t.event, t.task, t.message_id, t.detail
                       FROM orchestration_instances i,
                            ROWS FROM (jsonb_to_recordset(i.trail) AS (at timestamptz, step bigint,
                                       event text, task text, message_id uuid, detail text))
                            WITH ORDINALITY AS t(at, step, event, task, message_id, detail, n)
                      WHERE i.id = $1) e
               LEFT JOIN messages m ON m.id = e.message_id
              ORDER BY e.grp, e.ord",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        if events.is_empty() {
            // an instance that exists has at least its activation, unless purged
            self.process_instance_show(id).await?;
        }
        Ok(events)
    }
}
