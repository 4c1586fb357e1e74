//! Claiming, completing and failing deliveries. Every operation takes a
//! batch and is a fixed number of statements however large the batch: no per-message
//! round trips. Claims carry the instance id and a claim token that completions and
//! failures must match, so a reclaimed delivery cannot be completed by its former holder.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::context::system;
use crate::{Context, Error, MessageBox, Result, Value};

/// Default number of deliveries one claim takes.
pub const CLAIM_BATCH_DEFAULT: i64 = 100;

/// Default cap on the body bytes of one claim.
pub const CLAIM_BYTES_DEFAULT: i64 = 64 * 1024 * 1024;

/// Which transport of its port a delivery is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Primary,
    Backup,
}

impl Transport {
    fn parse(s: &str) -> Result<Self> {
        match s {
            "primary" => Ok(Transport::Primary),
            "backup" => Ok(Transport::Backup),
            other => Err(Error::Corrupt(format!("unknown transport '{other}'"))),
        }
    }
}

/// A delivery claimed by a host instance, with everything the adapter needs.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub delivery_id: i64,
    pub claim_token: Uuid,
    pub message_id: Uuid,
    pub port_id: i64,
    pub port_name: String,
    pub transport: Transport,
    /// The address of the transport in use (`None` for a dynamic port: the context has it).
    pub address: Option<String>,
    pub retries: i32,
    pub seq: Option<i64>,
    /// The key of a port ordered by a property (its value's text).
    pub order_key: Option<String>,
    /// The lease epoch the claim was made at (ordered ports).
    pub epoch: Option<i64>,
    /// The key's bucket (0 unless the port is ordered by a property).
    pub bucket: i32,
    pub content_type: String,
    /// The body, unless it is chunked (`MessageBox::message_body` streams it then).
    pub body: Option<Bytes>,
    pub body_size: i64,
    /// When the message's publish committed (database clock).
    pub published_at: DateTime<Utc>,
    /// The message's context with the per-delivery values overlaid.
    pub context: Context,
}

/// Limits of one claim.
#[derive(Debug, Clone, Copy)]
pub struct ClaimLimits {
    pub max_count: i64,
    pub max_bytes: i64,
}

impl ClaimLimits {
    /// At most `n` deliveries, whatever their size.
    pub fn count(n: i64) -> Self {
        Self {
            max_count: n,
            max_bytes: i64::MAX,
        }
    }
}

impl Default for ClaimLimits {
    fn default() -> Self {
        Self {
            max_count: CLAIM_BATCH_DEFAULT,
            max_bytes: CLAIM_BYTES_DEFAULT,
        }
    }
}

/// A failed attempt, reported by the adapter.
#[derive(Debug, Clone)]
pub struct Failure {
    pub delivery_id: i64,
    pub claim_token: Uuid,
    pub error: String,
    /// False when the message cannot be sent in principle (→ `failed-final` at once).
    pub retryable: bool,
}

/// Retry settings of one transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub count: i32,
    pub interval_s: i64,
    pub exponential: bool,
    pub max_interval_s: i64,
}

impl RetryPolicy {
    /// Delay before retry number `retry` (1-based).
    pub fn delay_s(&self, retry: i32) -> i64 {
        if !self.exponential {
            return self.interval_s;
        }
        let factor = 1i64
            .checked_shl((retry - 1).clamp(0, 62) as u32)
            .unwrap_or(i64::MAX);
        self.interval_s
            .saturating_mul(factor)
            .min(self.max_interval_s.max(self.interval_s))
    }
}

/// What happens to a delivery after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailDecision {
    /// Retry the same transport after `delay_s`; `retries` is the new count.
    Retry { retries: i32, delay_s: i64 },
    /// Retries exhausted on the primary: move to the backup transport now.
    ToBackup,
    /// Suspend the delivery as `failed` (resumable) or `failed-final`.
    Suspend { resumable: bool },
    /// An ordered port with `--stop-on-failure`: the port becomes `suspended`, the head
    /// stays in place.
    SuspendPort,
}

/// The facts a failure decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct FailFacts {
    pub transport: Transport,
    pub retries: i32,
    pub retryable: bool,
    pub primary: RetryPolicy,
    pub backup: Option<RetryPolicy>,
    pub ordered: bool,
    pub stop_on_failure: bool,
}

/// The retry policy: retries, then backup, then suspend; ordered ports never resume a
/// failed message later (it would break the order) and with stop-on-failure hold the port.
pub fn decide_failure(f: &FailFacts) -> FailDecision {
    let give_up = if f.ordered && f.stop_on_failure {
        FailDecision::SuspendPort
    } else if f.ordered || !f.retryable {
        FailDecision::Suspend { resumable: false }
    } else {
        FailDecision::Suspend { resumable: true }
    };
    if !f.retryable {
        return give_up;
    }
    let policy = match f.transport {
        Transport::Primary => f.primary,
        Transport::Backup => f.backup.unwrap_or(f.primary),
    };
    if f.retries < policy.count {
        let retries = f.retries + 1;
        return FailDecision::Retry {
            retries,
            delay_s: policy.delay_s(retries),
        };
    }
    if f.transport == Transport::Primary && f.backup.is_some() && !f.ordered {
        return FailDecision::ToBackup;
    }
    give_up
}

/// What a batch of failures turned into.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FailReport {
    pub retried: u64,
    pub moved_to_backup: u64,
    pub suspended: u64,
    pub ports_suspended: u64,
    /// Keys held on ports ordered by a property with `--stop-on-failure`.
    pub keys_held: u64,
    /// Failures whose claim no longer matched (reclaimed meanwhile): ignored.
    pub stale: u64,
}

impl MessageBox {
    /// Claims up to `limits.max_count` ready, due deliveries of a started port, capped by
    /// body bytes (their sum stays within `limits.max_bytes`, except that the first one
    /// always fits), for `instance`, which must be registered and alive. `FOR UPDATE SKIP LOCKED`
    /// lets every instance of the host claim from the same port at once.
    pub async fn deliveries_claim(
        &self,
        instance: Uuid,
        port_id: i64,
        limits: ClaimLimits,
    ) -> Result<Vec<ClaimedDelivery>> {
        self.deliveries_claim_as(instance, port_id, limits, Uuid::new_v4())
            .await
    }

    /// [`Self::deliveries_claim`] with the caller's claim token: if the claim fails with a
    /// connection-class error the caller cannot tell whether it committed, and gives
    /// whatever it may have claimed back with [`Self::deliveries_release_token`].
    pub async fn deliveries_claim_as(
        &self,
        instance: Uuid,
        port_id: i64,
        limits: ClaimLimits,
        token: Uuid,
    ) -> Result<Vec<ClaimedDelivery>> {
        let want = crate::subscribers::Want {
            subscriber: crate::subscribers::Subscriber::SendPort(port_id),
            limits,
        };
        let mut claimed = self.claim(instance, &[want], token).await?;
        Ok(claimed
            .work
            .remove(&crate::subscribers::Subscriber::SendPort(port_id))
            .unwrap_or_default())
    }

    /// How long until the port's next ready delivery falls due: the earliest `not_before`
    /// still in the future (a scheduled retry), measured on the database clock; `None`
    /// when no ready delivery of the port waits for a due time. A delivery loop that
    /// claimed nothing sleeps this long (at most its poll interval), so a retry is sent at
    /// its due time, not up to a poll interval later. Deliveries already due
    /// but not claimable (behind an ordered head, through a stopped group) are left out:
    /// waking for them would only spin.
    pub async fn deliveries_next_due(&self, port_id: i64) -> Result<Option<std::time::Duration>> {
        self.next_due(&[crate::subscribers::Subscriber::SendPort(port_id)])
            .await
    }

    /// Completes deliveries the endpoint confirmed: deletes them, and their message when
    /// nothing else references it, in one statement. Returns the ids completed; a
    /// delivery whose claim no longer matches (reclaimed meanwhile) is left alone.
    pub async fn deliveries_complete(
        &self,
        instance: Uuid,
        done: &[(i64, Uuid)],
    ) -> Result<Vec<i64>> {
        self.complete_with_checkpoint(instance, done, None).await
    }

    /// Completes deliveries of an ordered port and, in the same statement, records the
    /// endpoint `checkpoint` (port, epoch, position) that includes them — only if the
    /// claimer still holds that port's lease at that epoch.
    pub async fn deliveries_complete_ordered(
        &self,
        instance: Uuid,
        done: &[(i64, Uuid)],
        port_id: i64,
        epoch: i64,
        checkpoint: Option<&str>,
    ) -> Result<Vec<i64>> {
        self.complete_with_checkpoint(instance, done, checkpoint.map(|c| (port_id, epoch, c)))
            .await
    }

    async fn complete_with_checkpoint(
        &self,
        instance: Uuid,
        done: &[(i64, Uuid)],
        checkpoint: Option<(i64, i64, &str)>,
    ) -> Result<Vec<i64>> {
        complete_exec(&self.pool, instance, done, checkpoint).await
    }

    /// Completes the deliveries of a solicit-response port and, in the same transaction,
    /// publishes the response of each one completed (`responses`: by delivery id; a
    /// delivery whose claim was reclaimed meanwhile completes nothing and publishes
    /// nothing — its new holder sends it again). Returns the completed delivery ids and
    /// what became of each response published.
    pub async fn deliveries_complete_with_responses(
        &self,
        instance: Uuid,
        done: &[(i64, Uuid)],
        publisher: &crate::publish::Publisher,
        mut responses: std::collections::HashMap<i64, crate::publish::NewMessage>,
    ) -> Result<(Vec<i64>, Vec<crate::publish::Published>)> {
        let mut tx = self.pool.begin().await?;
        let completed = complete_exec(&mut *tx, instance, done, None).await?;
        let messages: Vec<_> = completed
            .iter()
            .filter_map(|id| responses.remove(id))
            .collect();
        let (outcomes, replies) = self.publish_in(&mut tx, publisher, messages).await?;
        tx.commit().await?;
        self.notify_after_publish(&outcomes, &replies).await;
        Ok((completed, outcomes))
    }

    /// Gives back whatever a claim with `token` took (the claim's outcome was unknown to
    /// its caller); idempotent.
    pub async fn deliveries_release_token(&self, instance: Uuid, token: Uuid) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE deliveries SET state = 'ready', claimed_by = NULL, claim_token = NULL, claimed_at = NULL
              WHERE claim_token = $1 AND claimed_by = $2",
        )
        .bind(token)
        .bind(instance)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Gives claimed deliveries back unchanged (graceful stop): ready again at once.
    pub async fn deliveries_release(&self, instance: Uuid, claims: &[(i64, Uuid)]) -> Result<u64> {
        let ids: Vec<i64> = claims.iter().map(|d| d.0).collect();
        let tokens: Vec<Uuid> = claims.iter().map(|d| d.1).collect();
        Ok(sqlx::query(
            "UPDATE deliveries d SET state = 'ready', claimed_by = NULL, claim_token = NULL, claimed_at = NULL
               FROM unnest($1::int8[], $2::uuid[]) AS c(id, token)
              WHERE d.id = c.id AND d.claim_token = c.token AND d.claimed_by = $3",
        )
        .bind(&ids)
        .bind(&tokens)
        .bind(instance)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Gives claimed deliveries back to be tried again after `delay_ms`, without counting
    /// an attempt (the endpoint said "later", e.g. another group that is throttled).
    pub async fn deliveries_postpone(
        &self,
        instance: Uuid,
        claims: &[(i64, Uuid)],
        delay_ms: i64,
    ) -> Result<u64> {
        let ids: Vec<i64> = claims.iter().map(|d| d.0).collect();
        let tokens: Vec<Uuid> = claims.iter().map(|d| d.1).collect();
        Ok(sqlx::query(
            "UPDATE deliveries d SET state = 'ready', claimed_by = NULL, claim_token = NULL, claimed_at = NULL,
                    not_before = now() + make_interval(secs => $4 / 1000.0)
               FROM unnest($1::int8[], $2::uuid[]) AS c(id, token)
              WHERE d.id = c.id AND d.claim_token = c.token AND d.claimed_by = $3",
        )
        .bind(&ids)
        .bind(&tokens)
        .bind(instance)
        .bind(delay_ms as f64)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Records failed attempts and decides each delivery's fate (retry at `not_before`,
    /// backup transport, suspend `failed`/`failed-final`, or suspend an ordered port), in
    /// one transaction with a fixed number of statements.
    pub async fn deliveries_fail(
        &self,
        instance: Uuid,
        failures: &[Failure],
    ) -> Result<FailReport> {
        let mut report = FailReport::default();
        if failures.is_empty() {
            return Ok(report);
        }
        let mut tx = self.pool.begin().await?;
        let rows = FailRow::lock(&mut tx, instance, failures).await?;
        report.stale = (failures.len() - rows.len()) as u64;
        let fates = FailFates::decide(rows, failures, &mut report)?;
        fates.reschedule(&mut tx, instance).await?;
        if !fates.sus_ids.is_empty() {
            crate::suspended::suspend_deliveries(
                self,
                &mut tx,
                &fates.sus_ids,
                &fates.sus_kind,
                &fates.sus_error,
                Some(instance),
                true,
            )
            .await?;
        }
        if !fates.hold_ports.is_empty() {
            report.keys_held = fates.hold_keys(&mut tx).await?;
        }
        if !fates.ports_to_suspend.is_empty() {
            report.ports_suspended = fates.suspend_ports(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(report)
    }
}

/// A failed delivery still claimed as its failure says, with its port's retry policy.
#[derive(sqlx::FromRow)]
struct FailRow {
    id: i64,
    transport: String,
    retries: i32,
    retry_count: i32,
    retry_interval_s: i64,
    exponential: bool,
    retry_max_interval_s: i64,
    has_backup: bool,
    backup_retry_count: i32,
    backup_retry_interval_s: i64,
    ordered: bool,
    stop_on_failure: bool,
    port_id: i64,
    order_key: Option<String>,
    keyed: bool,
}

impl FailRow {
    /// Locks the deliveries of `failures` still claimed by `instance` with their claim
    /// token (and, for an ordered port, under the lease of the claim's epoch), in id order.
    async fn lock(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        instance: Uuid,
        failures: &[Failure],
    ) -> Result<Vec<FailRow>> {
        let ids: Vec<i64> = failures.iter().map(|f| f.delivery_id).collect();
        let tokens: Vec<Uuid> = failures.iter().map(|f| f.claim_token).collect();
        Ok(sqlx::query_as::<_, FailRow>(
            "SELECT d.id, d.transport, d.retries, p.retry_count, p.retry_interval_s,
                    p.retry_backoff = 'exponential' AS exponential, p.retry_max_interval_s,
                    p.backup_address IS NOT NULL AS has_backup, p.backup_retry_count,
                    p.backup_retry_interval_s, p.ordered, p.stop_on_failure, p.id AS port_id,
                    d.order_key, p.ordered_by IS NOT NULL AS keyed
               FROM deliveries d JOIN send_ports p ON p.id = d.port_id
               JOIN unnest($1::int8[], $2::uuid[]) AS c(id, token) ON c.id = d.id AND c.token = d.claim_token
              WHERE d.claimed_by = $3
                AND (d.seq IS NULL OR EXISTS (
                     SELECT 1 FROM leases l WHERE l.port_id = d.port_id AND l.bucket = d.bucket AND l.holder = $3
                        AND l.epoch = d.claim_epoch AND l.expires_at > now()))
              ORDER BY d.id
              FOR UPDATE OF d",
        )
        .bind(&ids)
        .bind(&tokens)
        .bind(instance)
        .fetch_all(&mut **tx)
        .await?)
    }

    /// What [`decide_failure`] needs to know of this delivery, failed with `retryable`.
    fn facts(&self, transport: Transport, retryable: bool) -> FailFacts {
        FailFacts {
            transport,
            retries: self.retries,
            retryable,
            primary: RetryPolicy {
                count: self.retry_count,
                interval_s: self.retry_interval_s,
                exponential: self.exponential,
                max_interval_s: self.retry_max_interval_s,
            },
            backup: self.has_backup.then_some(RetryPolicy {
                count: self.backup_retry_count,
                interval_s: self.backup_retry_interval_s,
                exponential: false,
                max_interval_s: self.backup_retry_interval_s,
            }),
            ordered: self.ordered,
            stop_on_failure: self.stop_on_failure,
        }
    }
}

/// The fates [`decide_failure`] gave a batch of failed deliveries, one vector per column
/// of the statement that applies each (bound to `unnest`).
#[derive(Default)]
struct FailFates {
    // made ready again: to retry later, on the backup, or kept as a suspended port's head
    upd_ids: Vec<i64>,
    upd_retries: Vec<i32>,
    upd_delay: Vec<f64>,
    upd_transport: Vec<&'static str>,
    upd_error: Vec<String>,
    /// The tracking event after `attempt-failed`, if any.
    upd_event: Vec<Option<&'static str>>,
    // suspended
    sus_ids: Vec<i64>,
    sus_kind: Vec<&'static str>,
    sus_error: Vec<String>,
    /// Ordered ports (as a whole) to suspend.
    ports_to_suspend: Vec<i64>,
    // keys of ports ordered by a property to hold: (port, key, error)
    hold_ports: Vec<i64>,
    hold_keys: Vec<String>,
    hold_errors: Vec<String>,
}

impl FailFates {
    /// Decides the fate of each locked row, counting it in `report`.
    fn decide(rows: Vec<FailRow>, failures: &[Failure], report: &mut FailReport) -> Result<Self> {
        let mut fates = Self::default();
        for row in rows {
            let id = row.id;
            let Some(failure) = failures.iter().find(|f| f.delivery_id == id) else {
                continue;
            };
            let transport = Transport::parse(&row.transport)?;
            let facts = row.facts(transport, failure.retryable);
            let error = truncate_error(&failure.error);
            match decide_failure(&facts) {
                FailDecision::Retry { retries, delay_s } => {
                    report.retried += 1;
                    let transport = if transport == Transport::Primary {
                        "primary"
                    } else {
                        "backup"
                    };
                    let event = Some("retry-scheduled");
                    fates.ready(id, retries, delay_s as f64, transport, error, event);
                }
                FailDecision::ToBackup => {
                    report.moved_to_backup += 1;
                    let event = Some("moved-to-backup");
                    fates.ready(id, 0, 0.0, "backup", error, event);
                }
                FailDecision::SuspendPort => {
                    // the head stays in place, unclaimed, until resume or skip
                    let port_id = row.port_id;
                    if row.keyed {
                        // a port ordered by a property holds only this key
                        fates.hold_ports.push(port_id);
                        fates.hold_keys.push(row.order_key.unwrap_or_default());
                        fates.hold_errors.push(error.clone());
                    } else if !fates.ports_to_suspend.contains(&port_id) {
                        fates.ports_to_suspend.push(port_id);
                    }
                    fates.ready(id, facts.retries, 0.0, "primary", error, None);
                }
                FailDecision::Suspend { resumable } => {
                    report.suspended += 1;
                    fates.sus_ids.push(id);
                    let kind = if resumable { "failed" } else { "failed-final" };
                    fates.sus_kind.push(kind);
                    fates.sus_error.push(error);
                }
            }
        }
        Ok(fates)
    }

    /// One delivery made ready again, and the tracking event after its `attempt-failed`.
    fn ready(
        &mut self,
        id: i64,
        retries: i32,
        delay_s: f64,
        transport: &'static str,
        error: String,
        event: Option<&'static str>,
    ) {
        self.upd_ids.push(id);
        self.upd_retries.push(retries);
        self.upd_delay.push(delay_s);
        self.upd_transport.push(transport);
        self.upd_error.push(error);
        self.upd_event.push(event);
    }

    /// Makes the deliveries to try again ready at their `not_before`, recording the
    /// attempt's error; tracks the attempt and what follows it.
    async fn reschedule(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        instance: Uuid,
    ) -> Result<()> {
        if self.upd_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "WITH u AS (
                UPDATE deliveries d
                   SET state = 'ready', claimed_by = NULL, claim_token = NULL, claimed_at = NULL,
                       retries = c.retries, transport = c.transport,
                       not_before = now() + make_interval(secs => c.delay),
                       errors = d.errors || jsonb_build_array(jsonb_build_object(
                           'at', now(), 'transport', d.transport, 'attempt', d.retries + 1,
                           'instance', $6::uuid, 'error', c.error))
                  FROM unnest($1::int8[], $2::int4[], $3::float8[], $4::text[], $5::text[], $7::text[])
                       AS c(id, retries, delay, transport, error, event)
                 WHERE d.id = c.id
                RETURNING d.id, d.message_id, d.port_id, d.transport, d.not_before,
                          jsonb_array_length(d.errors) AS n, c.error, c.event)
             INSERT INTO tracking_events (message_id, event, port_id, instance_id, detail)
             SELECT u.message_id, 'published', u.port_id, NULL, 'routed to ' || p.name
               FROM u JOIN send_ports p ON p.id = u.port_id JOIN hosts h ON h.id = p.host_id
              WHERE u.n = 1 AND coalesce(p.tracking, h.tracking) = 'failures'
             UNION ALL
             SELECT u.message_id, 'attempt-failed', u.port_id, $6, u.error
               FROM u JOIN send_ports p ON p.id = u.port_id JOIN hosts h ON h.id = p.host_id
              WHERE coalesce(p.tracking, h.tracking) <> 'off'
             UNION ALL
             SELECT u.message_id, u.event, u.port_id, $6,
                    u.transport || ' transport at ' || to_char(u.not_before AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
               FROM u JOIN send_ports p ON p.id = u.port_id JOIN hosts h ON h.id = p.host_id
              WHERE coalesce(p.tracking, h.tracking) <> 'off' AND u.event IS NOT NULL",
        )
        .bind(&self.upd_ids)
        .bind(&self.upd_retries)
        .bind(&self.upd_delay)
        .bind(&self.upd_transport)
        .bind(&self.upd_error)
        .bind(instance)
        .bind(&self.upd_event)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Holds the keys of ports ordered by a property; returns how many were not held yet.
    async fn hold_keys(&self, tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> Result<u64> {
        Ok(sqlx::query(
            "INSERT INTO ordered_holds (port_id, order_key, error)
             SELECT * FROM unnest($1::int8[], $2::text[], $3::text[])
             ON CONFLICT (port_id, order_key) DO NOTHING",
        )
        .bind(&self.hold_ports)
        .bind(&self.hold_keys)
        .bind(&self.hold_errors)
        .execute(&mut **tx)
        .await?
        .rows_affected())
    }

    /// Suspends the ordered ports; returns how many were not suspended yet.
    async fn suspend_ports(&self, tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE send_ports SET state = 'suspended' WHERE id = ANY($1) AND state <> 'suspended'",
        )
        .bind(&self.ports_to_suspend)
        .execute(&mut **tx)
        .await?
        .rows_affected())
    }
}

/// A row of every claim statement, by column name (the port's `p.name AS port_name`, the
/// transport's endpoint `AS address`); a keyed claim (a port ordered by a property) adds
/// the key, the claim's epoch and the bucket.
#[derive(sqlx::FromRow)]
pub(crate) struct ClaimRow {
    id: i64,
    message_id: Uuid,
    transport: String,
    retries: i32,
    seq: Option<i64>,
    port_name: String,
    address: Option<String>,
    content_type: String,
    body: Option<Vec<u8>>,
    body_size: i64,
    context: serde_json::Value,
    published_at: DateTime<Utc>,
    /// The delivery's port (a claim for many subscribers returns it; one port's claim
    /// knows it).
    #[sqlx(default)]
    pub(crate) port_id: Option<i64>,
    #[sqlx(default)]
    order_key: Option<String>,
    #[sqlx(default)]
    claim_epoch: Option<i64>,
    /// `None`: not a keyed claim.
    #[sqlx(default)]
    bucket: Option<i32>,
}

/// Maps the rows of a claim statement to claimed deliveries.
pub(crate) fn claimed_deliveries(
    rows: Vec<ClaimRow>,
    token: Uuid,
    port_id: i64,
    epoch: Option<i64>,
) -> Result<Vec<ClaimedDelivery>> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let transport = Transport::parse(&row.transport)?;
        let retries = row.retries;
        let seq = row.seq;
        let port_name = row.port_name;
        let message_id = row.message_id;
        let published_at = row.published_at;
        let mut context: Context = serde_json::from_value(row.context)
            .map_err(|e| Error::Corrupt(format!("context of {message_id}: {e}")))?;
        overlay(
            &mut context,
            message_id,
            published_at,
            &port_name,
            retries,
            seq,
        )?;
        // a keyed claim returns each delivery's key and its bucket's epoch
        let keyed = row.bucket.is_some();
        let order_key = if keyed { row.order_key } else { None };
        let epoch = if keyed { row.claim_epoch } else { epoch };
        if let Some(epoch) = epoch {
            context.write(system::EPOCH, Value::Integer(epoch))?;
        }
        out.push(ClaimedDelivery {
            delivery_id: row.id,
            claim_token: token,
            message_id,
            port_id,
            port_name,
            transport,
            address: row.address,
            retries,
            seq,
            order_key,
            epoch,
            bucket: row.bucket.unwrap_or(0),
            content_type: row.content_type,
            body: row.body.map(Bytes::from),
            body_size: row.body_size,
            published_at,
            context,
        });
    }
    Ok(out)
}

/// Longest error text kept per attempt.
pub const ERROR_TEXT_MAX_BYTES: usize = 4096;

/// The completion statement (see [`MessageBox::deliveries_complete`]), on a pool or in a
/// transaction.
async fn complete_exec<'e, E: sqlx::PgExecutor<'e>>(
    exec: E,
    instance: Uuid,
    done: &[(i64, Uuid)],
    checkpoint: Option<(i64, i64, &str)>,
) -> Result<Vec<i64>> {
    if done.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = done.iter().map(|d| d.0).collect();
    let tokens: Vec<Uuid> = done.iter().map(|d| d.1).collect();
    let completed: Vec<i64> = sqlx::query_scalar(
        "WITH done AS (
            DELETE FROM deliveries d USING unnest($1::int8[], $2::uuid[]) AS c(id, token)
             WHERE d.id = c.id AND d.claim_token = c.token AND d.claimed_by = $3
               AND (d.seq IS NULL OR EXISTS (
                    SELECT 1 FROM leases l WHERE l.port_id = d.port_id AND l.bucket = d.bucket AND l.holder = $3
                       AND l.epoch = d.claim_epoch AND l.expires_at > now()))
            RETURNING d.id, d.message_id, d.port_id),
         gone AS (
            DELETE FROM messages m WHERE m.id IN (SELECT message_id FROM done)
               AND NOT EXISTS (SELECT 1 FROM deliveries x
                                WHERE x.message_id = m.id AND x.id NOT IN (SELECT id FROM done))
               AND NOT EXISTS (SELECT 1 FROM suspended_items s WHERE s.message_id = m.id)
               AND NOT EXISTS (SELECT 1 FROM instance_deliveries r WHERE r.message_id = m.id)
               AND NOT EXISTS (SELECT 1 FROM orchestration_inbox b WHERE b.message_id = m.id)
            RETURNING m.id),
         cp AS (
            UPDATE leases l SET checkpoint = $6
             WHERE $6::text IS NOT NULL AND l.port_id = $4 AND l.bucket = 0 AND l.holder = $3
               AND l.epoch = $5 AND l.expires_at > now() AND EXISTS (SELECT 1 FROM done)),
         -- the delivered event says where the message came from, so that `mbx track`
         -- shows it at the default level without a second event per message (every
         -- part of one statement sees the message row, even the one `gone` deletes)
         ev AS (
            INSERT INTO tracking_events (message_id, event, port_id, instance_id, detail)
            SELECT done.message_id, 'delivered', done.port_id, $3,
                   'received from ' || coalesce('location ' || rl.name,
                       CASE WHEN m.context -> 'mbx.InboundTransportType' -> 'value' ->> 'string' = 'mbx'
                            THEN 'another group, ' || (m.context -> 'mbx.InboundTransportLocation' -> 'value' ->> 'string')
                                 || ', on receive port ' || (m.context -> 'mbx.ReceivePortName' -> 'value' ->> 'string') END,
                       'a publish call')
                   || coalesce(' (file ' || (m.context -> 'mbx.SourceFileName' -> 'value' ->> 'string') || ')', '')
              FROM done
              JOIN send_ports p ON p.id = done.port_id JOIN hosts h ON h.id = p.host_id
              LEFT JOIN messages m ON m.id = done.message_id
              LEFT JOIN receive_locations rl ON rl.id = m.receive_location_id
             WHERE coalesce(p.tracking, h.tracking) <> 'off')
         SELECT id FROM done",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(instance)
    .bind(checkpoint.map(|c| c.0))
    .bind(checkpoint.map(|c| c.1))
    .bind(checkpoint.map(|c| c.2))
    .fetch_all(exec)
    .await?;
    Ok(completed)
}

fn truncate_error(e: &str) -> String {
    crate::truncate_utf8(e, ERROR_TEXT_MAX_BYTES)
}

/// Overlays the per-delivery and row-derived system properties on a stored context.
fn overlay(
    context: &mut Context,
    message_id: Uuid,
    published_at: DateTime<Utc>,
    port_name: &str,
    retries: i32,
    seq: Option<i64>,
) -> Result<()> {
    context.promote(system::MESSAGE_ID, Value::String(message_id.to_string()))?;
    context.write(system::PUBLISHED_AT, Value::Timestamp(published_at))?;
    context.write(system::SEND_PORT_NAME, Value::String(port_name.to_owned()))?;
    context.write(system::RETRY_COUNT, Value::Integer(i64::from(retries)))?;
    if let Some(seq) = seq {
        context.write(system::SEQUENCE, Value::Integer(seq))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RetryPolicy = RetryPolicy {
        count: 2,
        interval_s: 10,
        exponential: false,
        max_interval_s: 10,
    };

    fn facts() -> FailFacts {
        FailFacts {
            transport: Transport::Primary,
            retries: 0,
            retryable: true,
            primary: P,
            backup: None,
            ordered: false,
            stop_on_failure: false,
        }
    }

    #[test]
    fn retries_then_suspends_failed() {
        let mut f = facts();
        assert_eq!(
            decide_failure(&f),
            FailDecision::Retry {
                retries: 1,
                delay_s: 10
            }
        );
        f.retries = 2;
        assert_eq!(
            decide_failure(&f),
            FailDecision::Suspend { resumable: true }
        );
    }

    #[test]
    fn exhausted_primary_moves_to_backup_then_backup_retries_then_suspends() {
        let mut f = facts();
        f.retries = 2;
        f.backup = Some(RetryPolicy {
            count: 1,
            interval_s: 5,
            exponential: false,
            max_interval_s: 5,
        });
        assert_eq!(decide_failure(&f), FailDecision::ToBackup);
        f.transport = Transport::Backup;
        f.retries = 0;
        assert_eq!(
            decide_failure(&f),
            FailDecision::Retry {
                retries: 1,
                delay_s: 5
            }
        );
        f.retries = 1;
        assert_eq!(
            decide_failure(&f),
            FailDecision::Suspend { resumable: true }
        );
    }

    #[test]
    fn not_retryable_is_final_at_once() {
        let mut f = facts();
        f.retryable = false;
        assert_eq!(
            decide_failure(&f),
            FailDecision::Suspend { resumable: false }
        );
    }

    #[test]
    fn ordered_ports_suspend_final_or_hold_the_port() {
        let mut f = facts();
        f.ordered = true;
        f.retries = 2;
        assert_eq!(
            decide_failure(&f),
            FailDecision::Suspend { resumable: false }
        );
        f.stop_on_failure = true;
        assert_eq!(decide_failure(&f), FailDecision::SuspendPort);
    }

    #[test]
    fn exponential_backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            count: 10,
            interval_s: 10,
            exponential: true,
            max_interval_s: 60,
        };
        let delays: Vec<i64> = (1..=5).map(|r| p.delay_s(r)).collect();
        assert_eq!(delays, vec![10, 20, 40, 60, 60]);
        assert_eq!(p.delay_s(100), 60);
    }
}
