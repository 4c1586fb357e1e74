//! Suspended items: messages held for an operator. List, show, save,
//! resume and terminate act on one id or on a filter, are idempotent and report counts.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::ordered::Slot;
use crate::publish::pg_bigint_array;
use crate::{Context, Error, MessageBox, Result};

crate::states::text_enum! {
    /// The kinds of suspended item.
    Kind ("kind") {
        /// Published, matched no subscriber; resumable once one matches.
        RoutingFailure = "routing-failure",
        /// Refused by a receive pipeline; kept for inspection, not resumable.
        ReceiveFailure = "receive-failure",
        /// A delivery whose retries ran out; resumable.
        Failed = "failed",
        /// A delivery that can never succeed (a bad address, a poison message).
        FailedFinal = "failed-final",
        /// Routed to an orchestration instance that ended without taking it; resumable
        /// (routed again, e.g. to a newer instance of its correlation).
        Zombie = "zombie",
    }
}

/// Which suspended items an operation acts on. All given conditions must hold.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub id: Option<i64>,
    pub port: Option<String>,
    pub kind: Option<Kind>,
    /// Case-insensitive substring of the reason or of any attempt's error.
    pub error_like: Option<String>,
    /// Suspended at least this long ago.
    pub older_than_s: Option<i64>,
    pub limit: Option<i64>,
    /// Only these items (a selection pinned when an operator confirmed it).
    pub ids: Option<Vec<i64>>,
    /// Only items after this id (the next page; items are listed by id).
    pub after_id: Option<i64>,
}

/// One line of `suspended list`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SuspendedItem {
    pub id: i64,
    pub message_id: Uuid,
    pub kind: Kind,
    pub resumable: bool,
    pub port: Option<String>,
    pub reason: String,
    pub suspended_at: DateTime<Utc>,
}

/// One recorded attempt.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AttemptError {
    pub at: DateTime<Utc>,
    pub transport: String,
    pub attempt: i64,
    #[serde(default)]
    pub instance: Option<Uuid>,
    pub error: String,
}

/// `suspended show`.
#[derive(Debug, Clone, Serialize)]
pub struct SuspendedDetail {
    #[serde(flatten)]
    pub item: SuspendedItem,
    pub content_type: String,
    pub body_size: i64,
    pub published_at: DateTime<Utc>,
    pub context: Context,
    pub attempts: Vec<AttemptError>,
}

/// What `resume` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResumeReport {
    /// Items put back as fresh deliveries or routed again.
    pub resumed: u64,
    /// Deliveries created by re-routing routing failures.
    pub deliveries: u64,
    /// Routing failures that still match no subscriber: they stay suspended.
    pub still_unrouted: u64,
    /// Selected items that cannot be resumed (receive-failure, failed-final).
    pub not_resumable: u64,
}

const SELECT_WHERE: &str = "
      FROM suspended_items s LEFT JOIN send_ports p ON p.id = s.port_id
     WHERE ($1::int8 IS NULL OR s.id = $1)
       AND ($2::text IS NULL OR p.name = $2)
       AND ($3::text IS NULL OR s.kind = $3)
       AND ($4::text IS NULL OR strpos(lower(s.reason), lower($4)) > 0
            OR strpos(lower(s.errors::text), lower($4)) > 0)
       AND ($5::float8 IS NULL OR s.suspended_at <= now() - make_interval(secs => $5))
       AND ($7::int8[] IS NULL OR s.id = ANY($7))
       AND ($8::int8 IS NULL OR s.id > $8)";

fn bind_selector<'q, O>(
    q: sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments>,
    sel: &'q Selector,
) -> sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments> {
    q.bind(sel.id)
        .bind(sel.port.as_deref())
        .bind(sel.kind.map(|k| k.as_str()))
        .bind(sel.error_like.as_deref())
        .bind(sel.older_than_s.map(|s| s as f64))
        .bind(sel.limit.unwrap_or(i64::MAX))
        .bind(sel.ids.as_deref())
        .bind(sel.after_id)
}

impl MessageBox {
    pub async fn suspended_list(&self, sel: &Selector) -> Result<Vec<SuspendedItem>> {
        self.check_selector_port(sel).await?;
        let sql = format!(
            "SELECT s.id, s.message_id, s.kind, s.resumable, p.name AS port, s.reason, s.suspended_at
             {SELECT_WHERE} ORDER BY s.id LIMIT $6"
        );
        Ok(bind_selector(sqlx::query_as::<_, SuspendedItem>(&sql), sel)
            .fetch_all(&self.pool)
            .await?)
    }

    /// How many items the selector matches, counting at most `limit` of them.
    pub async fn suspended_count(&self, sel: &Selector) -> Result<i64> {
        self.check_selector_port(sel).await?;
        let sql = format!("SELECT count(*) FROM (SELECT 1 {SELECT_WHERE} LIMIT $6) c");
        let (n,): (i64,) = bind_selector(sqlx::query_as(&sql), sel)
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// The ids the selector matches, in order (what a confirmation pins).
    pub async fn suspended_ids(&self, sel: &Selector) -> Result<Vec<i64>> {
        self.check_selector_port(sel).await?;
        let sql = format!("SELECT s.id {SELECT_WHERE} ORDER BY s.id LIMIT $6");
        let rows: Vec<(i64,)> = bind_selector(sqlx::query_as(&sql), sel)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    pub async fn suspended_show(&self, id: i64) -> Result<SuspendedDetail> {
        let sel = Selector {
            id: Some(id),
            ..Default::default()
        };
        let item = self
            .suspended_list(&sel)
            .await?
            .pop()
            .ok_or_else(|| not_found(id))?;
        #[derive(sqlx::FromRow)]
        struct DetailRow {
            content_type: String,
            body_size: i64,
            published_at: DateTime<Utc>,
            context: serde_json::Value,
            errors: serde_json::Value,
        }
        let row = sqlx::query_as::<_, DetailRow>(
            "SELECT m.content_type, m.body_size, m.published_at, m.context, s.errors
               FROM suspended_items s JOIN messages m ON m.id = s.message_id WHERE s.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| not_found(id))?;
        let context: Context = serde_json::from_value(row.context)
            .map_err(|e| Error::Corrupt(format!("context of suspended item {id}: {e}")))?;
        let attempts: Vec<AttemptError> = serde_json::from_value(row.errors)
            .map_err(|e| Error::Corrupt(format!("errors of suspended item {id}: {e}")))?;
        Ok(SuspendedDetail {
            item,
            content_type: row.content_type,
            body_size: row.body_size,
            published_at: row.published_at,
            context,
            attempts,
        })
    }

    /// The body of a suspended item's message (`suspended save`).
    pub async fn suspended_body(&self, id: i64) -> Result<bytes::Bytes> {
        let message_id: Uuid =
            sqlx::query_scalar("SELECT message_id FROM suspended_items WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| not_found(id))?;
        self.message_body(message_id).await
    }

    /// Resumes the selected resumable items: `failed` ones become fresh deliveries
    /// (retries reset, primary transport); routing failures are routed again and stay
    /// suspended if still nothing matches.
    pub async fn suspended_resume(&self, sel: &Selector) -> Result<ResumeReport> {
        self.check_selector_port(sel).await?;
        let mut report = ResumeReport::default();
        let mut tx = self.pool.begin().await?;
        let rows = bind_selector(
            sqlx::query_as::<_, ResumeRow>(
                &format!(
                    "SELECT s.id, s.message_id, s.kind, s.port_id, s.via_port, s.via_groups, s.order_key, s.seq,
                            (SELECT context FROM messages m WHERE m.id = s.message_id),
                            (SELECT i.orchestration_id FROM orchestration_instances i
                              WHERE i.id = s.orchestration_instance_id)
                     {SELECT_WHERE} ORDER BY s.id LIMIT $6 FOR UPDATE OF s"
                ),
            ),
            sel,
        )
        .fetch_all(&mut *tx)
        .await?;
        if let (Some(id), true) = (sel.id, rows.is_empty()) {
            // idempotent: a second resume of the same id changes nothing and succeeds;
            // an id that never existed is refused
            tx.commit().await?;
            return match self.suspended_settled(id).await? {
                Some(_) => Ok(report),
                None => Err(not_found(id)),
            };
        }
        let mut failed_ids = Vec::new();
        let mut reroute = Vec::new();
        let mut zombies = Vec::new();
        for (id, message_id, kind, _port, _vp, _vg, _ok, _seq, ctx, orchestration) in rows {
            let context = || -> Result<Context> {
                serde_json::from_value(ctx.clone())
                    .map_err(|e| Error::Corrupt(format!("context of {message_id}: {e}")))
            };
            match kind.as_str() {
                "failed" => failed_ids.push(id),
                "routing-failure" => reroute.push((id, message_id, context()?)),
                "zombie" => zombies.push((id, message_id, context()?, orchestration)),
                _ => report.not_resumable += 1,
            }
        }
        if !failed_ids.is_empty() {
            resume_failed(&mut tx, &failed_ids).await?;
            report.resumed += failed_ids.len() as u64;
            report.deliveries += failed_ids.len() as u64;
        }
        if !reroute.is_empty() {
            self.route_again(&mut tx, &reroute, &mut report).await?;
        }
        if !zombies.is_empty() {
            self.route_zombies(&mut tx, &zombies, &mut report).await?;
        }
        tx.commit().await?;
        if report.deliveries > 0 || report.resumed > 0 {
            // deliveries, or messages held for orchestration instances: wake the hosts
            self.notify_published().await;
        }
        Ok(report)
    }

    /// Routes the routing failures `reroute` ((item, message, context)) again under the
    /// shared routing lock: one that matches now leaves the suspended items for its
    /// deliveries; one that still matches nothing stays.
    async fn route_again(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        reroute: &[(i64, Uuid, Context)],
        report: &mut ResumeReport,
    ) -> Result<()> {
        let table = self.routing_for_publish(tx).await?;
        // orchestration instances first: an activation or a waiting instance may take it
        let messages: Vec<Uuid> = reroute.iter().map(|(_, m, _)| *m).collect();
        let contexts: Vec<Option<&Context>> = reroute.iter().map(|(_, _, c)| Some(c)).collect();
        let processes =
            crate::process::route_to_instances(tx, &table, &messages, &contexts, None).await?;
        let mut routed_items = Vec::new();
        // (message, target, context) of every delivery the re-route makes
        let mut routed: Vec<(Uuid, crate::routing::RouteTarget, &Context)> = Vec::new();
        for (n, (id, message_id, context)) in reroute.iter().enumerate() {
            let targets = table.route(context);
            let to_instances = processes.reached.get(&n).copied().unwrap_or_default();
            if targets.is_empty() && to_instances == 0 {
                report.still_unrouted += 1;
                continue;
            }
            routed_items.push(*id);
            routed.extend(targets.into_iter().map(|t| (*message_id, t, context)));
        }
        if routed_items.is_empty() {
            return Ok(());
        }
        // ordered ports: the re-routed message takes the next sequence of its port
        // (or key); a port ordered by a property it lacks suspends it again
        let wanted: Vec<(i64, &Context)> = routed.iter().map(|(_, t, c)| (t.port_id, *c)).collect();
        let slots = crate::ordered::take_sequences(tx, &table, &wanted).await?;
        let mut rows = RoutedAgain::default();
        for ((message_id, target, _), slot) in routed.into_iter().zip(slots) {
            rows.push(message_id, target, slot);
        }
        let created = rows.insert(tx).await?;
        if !rows.no_key.is_empty() {
            crate::ordered::suspend_without_key(self, tx, &rows.no_key).await?;
        }
        settle_routed_again(tx, &routed_items).await?;
        report.resumed += routed_items.len() as u64;
        report.deliveries += created;
        Ok(())
    }

    /// Routes zombies ((item, message, context, the orchestration of the instance it was
    /// held for)) again, to that orchestration's instances only — a waiting instance of
    /// its correlation, or an activation — never to send ports, which had their deliveries
    /// when it was published. One that reaches nothing stays.
    async fn route_zombies(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        zombies: &[(i64, Uuid, Context, Option<i64>)],
        report: &mut ResumeReport,
    ) -> Result<()> {
        let table = self.routing_for_publish(tx).await?;
        let mut routed_items = Vec::new();
        for (id, message_id, context, orchestration) in zombies {
            let reached = match orchestration {
                Some(o) => {
                    crate::process::route_to_instances(
                        tx,
                        &table,
                        &[*message_id],
                        &[Some(context)],
                        Some(*o),
                    )
                    .await?
                    .reached
                }
                // its instance and orchestration are gone
                None => Default::default(),
            };
            if reached.is_empty() {
                report.still_unrouted += 1;
            } else {
                routed_items.push(*id);
            }
        }
        settle_routed_again(tx, &routed_items).await?;
        report.resumed += routed_items.len() as u64;
        Ok(())
    }

    /// Terminates the selected items: removes them, and their message when nothing else
    /// references it. Idempotent; returns how many were removed.
    pub async fn suspended_terminate(&self, sel: &Selector) -> Result<u64> {
        self.check_selector_port(sel).await?;
        let sql = format!(
            "WITH sel AS (SELECT s.id {SELECT_WHERE} ORDER BY s.id LIMIT $6 FOR UPDATE OF s),
             gone AS (DELETE FROM suspended_items x USING sel WHERE x.id = sel.id
                      RETURNING x.id, x.message_id, x.port_id),
             msgs AS (
                DELETE FROM messages m WHERE m.id IN (SELECT message_id FROM gone)
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id)
                   AND NOT EXISTS (SELECT 1 FROM suspended_items o
                                    WHERE o.message_id = m.id AND o.id NOT IN (SELECT id FROM gone))
                   AND NOT EXISTS (SELECT 1 FROM instance_deliveries r WHERE r.message_id = m.id)
               AND NOT EXISTS (SELECT 1 FROM orchestration_inbox b WHERE b.message_id = m.id)
                RETURNING m.id),
             settled AS (INSERT INTO suspended_outcomes (item_id, outcome)
                         SELECT id, 'terminated' FROM gone
                         ON CONFLICT (item_id) DO UPDATE SET outcome = excluded.outcome, at = excluded.at),
             ev AS (INSERT INTO tracking_events (message_id, event, port_id, detail)
                    SELECT g.message_id, 'terminated', g.port_id, 'by operator' FROM gone g
                      LEFT JOIN send_ports p ON p.id = g.port_id
                      LEFT JOIN hosts h ON h.id = coalesce(p.host_id,
                          (SELECT m.publisher_host_id FROM messages m WHERE m.id = g.message_id))
                     WHERE coalesce(p.tracking, h.tracking, 'failures') <> 'off')
             SELECT count(*) FROM gone"
        );
        let mut tx = self.pool.begin().await?;
        let (n,): (i64,) = bind_selector(sqlx::query_as(&sql), sel)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        if n == 0 {
            if let Some(id) = sel.id {
                // idempotent, as resume
                if self.suspended_settled(id).await?.is_none() {
                    return Err(not_found(id));
                }
            }
        }
        Ok(n as u64)
    }

    /// What became of suspended item `id` once it left the suspended items (within the
    /// tracking retention): resumed or terminated, and when. `None` for an item still
    /// suspended or that never existed.
    pub async fn suspended_settled(&self, id: i64) -> Result<Option<(Settled, DateTime<Utc>)>> {
        let row: Option<(String, DateTime<Utc>)> =
            sqlx::query_as("SELECT outcome, at FROM suspended_outcomes WHERE item_id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(outcome, at)| {
            let settled = match outcome.as_str() {
                "resumed" => Settled::Resumed,
                "terminated" => Settled::Terminated,
                other => return Err(Error::Corrupt(format!("suspended outcome '{other}'"))),
            };
            Ok((settled, at))
        })
        .transpose()
    }

    /// Keeps a message that a receive pipeline rejected (non-resumable).
    pub async fn suspend_receive_failure(
        &self,
        publisher: &crate::publish::Publisher,
        message: crate::publish::NewMessage,
        reason: &str,
    ) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let id = Uuid::now_v7();
        // like a published body: inline up to 1 MiB, else in chunks
        let inline = message.body.inline().await?;
        let chunked = inline.is_none();
        sqlx::query(
            "INSERT INTO messages (id, content_type, body, body_size, chunked, context, publisher_host_id, receive_location_id)
             VALUES ($1, $2, $3, $4, $3 IS NULL, $5, $6, $7)",
        )
        .bind(id)
        .bind(&message.content_type)
        .bind(inline)
        .bind(i64::try_from(message.body.len()).unwrap_or(i64::MAX))
        .bind(serde_json::to_value(&message.context).map_err(|e| Error::Invalid(e.to_string()))?)
        .bind(publisher.host_id)
        .bind(publisher.receive_location_id)
        .execute(&mut *tx)
        .await?;
        if chunked {
            crate::publish::store_chunks(&mut tx, id, &message.body).await?;
        }
        let sid: i64 = sqlx::query_scalar(
            "WITH s AS (INSERT INTO suspended_items (message_id, kind, reason, receive_location_id)
                        VALUES ($1, 'receive-failure', $2, $3) RETURNING id, message_id, reason),
             ev AS (INSERT INTO tracking_events (message_id, event, detail)
                    SELECT message_id, 'suspended', reason FROM s
                     WHERE coalesce((SELECT tracking FROM hosts WHERE id = $4), 'failures') <> 'off')
             SELECT id FROM s",
        )
        .bind(id)
        .bind(reason)
        .bind(publisher.receive_location_id)
        .bind(publisher.host_id)
        .fetch_one(&mut *tx)
        .await?;
        if let Some(location) = publisher.receive_location_id {
            let reported = crate::error_report::report_receive_failure(
                self, &mut tx, publisher, location, id, reason,
            )
            .await?;
            self.count_dropped_reports(reported.dropped);
        }
        tx.commit().await?;
        Ok(sid)
    }

    async fn check_selector_port(&self, sel: &Selector) -> Result<()> {
        if let Some(port) = &sel.port {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM send_ports WHERE name = $1)")
                    .bind(port)
                    .fetch_one(&self.pool)
                    .await?;
            if !exists {
                return Err(Error::not_found(
                    "send port",
                    port.clone(),
                    "`mbx send-port list` shows the ports",
                ));
            }
        }
        Ok(())
    }
}

/// What became of a suspended item that left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Settled {
    Resumed,
    Terminated,
}

impl Settled {
    pub fn as_str(self) -> &'static str {
        match self {
            Settled::Resumed => "resumed",
            Settled::Terminated => "terminated",
        }
    }
}

/// A suspended item selected to resume: (id, message, kind, port, via port, via groups,
/// order key, sequence, the message's context).
type ResumeRow = (
    i64,
    Uuid,
    String,
    Option<i64>,
    bool,
    Vec<i64>,
    Option<String>,
    Option<i64>,
    serde_json::Value,
    // a zombie's orchestration
    Option<i64>,
);

/// Suspended items routed again leave, tracked and recorded resumed.
async fn settle_routed_again(tx: &mut Transaction<'_, Postgres>, ids: &[i64]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "WITH s AS (DELETE FROM suspended_items WHERE id = ANY($1) RETURNING message_id)
         INSERT INTO tracking_events (message_id, event, detail)
         SELECT s.message_id, 'resumed', 'routed again by operator' FROM s
           JOIN messages m ON m.id = s.message_id LEFT JOIN hosts h ON h.id = m.publisher_host_id
          WHERE coalesce(h.tracking, 'failures') <> 'off'",
    )
    .bind(ids)
    .execute(&mut **tx)
    .await?;
    record_settled(tx, ids, Settled::Resumed).await
}

/// Puts the `failed` items `ids` back as fresh deliveries (retries reset, primary
/// transport), tracked, and records them resumed.
async fn resume_failed(tx: &mut Transaction<'_, Postgres>, ids: &[i64]) -> Result<()> {
    sqlx::query(
        "WITH s AS (DELETE FROM suspended_items WHERE id = ANY($1) RETURNING *),
         d AS (
            INSERT INTO deliveries (message_id, port_id, via_port, via_groups, order_key, seq, body_size)
            SELECT s.message_id, s.port_id,
                   s.via_port OR cardinality(s.via_groups) = 0, s.via_groups, s.order_key, s.seq,
                   (SELECT body_size FROM messages m WHERE m.id = s.message_id)
              FROM s
            RETURNING message_id, port_id)
         INSERT INTO tracking_events (message_id, event, port_id, detail)
         SELECT d.message_id, 'resumed', d.port_id, 'by operator' FROM d
           JOIN send_ports p ON p.id = d.port_id JOIN hosts h ON h.id = p.host_id
          WHERE coalesce(p.tracking, h.tracking) <> 'off'",
    )
    .bind(ids)
    .execute(&mut **tx)
    .await?;
    record_settled(tx, ids, Settled::Resumed).await
}

/// The deliveries routing failures routed again make, one vector per column (bound to
/// `unnest`), and those to ports ordered by a property the message lacks.
#[derive(Default)]
struct RoutedAgain {
    msg: Vec<Uuid>,
    port: Vec<i64>,
    via_port: Vec<bool>,
    via_groups: Vec<String>,
    seq: Vec<Option<i64>>,
    key: Vec<Option<String>>,
    bucket: Vec<i32>,
    /// (message, target, body size (unknown here: 0), the property).
    no_key: Vec<(Uuid, crate::routing::RouteTarget, i64, String)>,
}

impl RoutedAgain {
    fn push(&mut self, message_id: Uuid, target: crate::routing::RouteTarget, slot: Slot) {
        if let Slot::NoKey { property } = slot {
            self.no_key.push((message_id, target, 0, property));
            return;
        }
        self.msg.push(message_id);
        self.port.push(target.port_id);
        self.via_port.push(target.via_port);
        self.via_groups.push(pg_bigint_array(&target.via_groups));
        self.seq.push(slot.seq());
        self.key.push(slot.key().map(str::to_owned));
        self.bucket.push(slot.bucket());
    }

    /// Inserts the deliveries; returns how many.
    async fn insert(&self, tx: &mut Transaction<'_, Postgres>) -> Result<u64> {
        Ok(sqlx::query(
            "INSERT INTO deliveries (message_id, port_id, via_port, via_groups, seq, order_key, bucket, body_size)
             SELECT m, p, vp, vg::bigint[], s, k, b, (SELECT body_size FROM messages x WHERE x.id = m)
               FROM unnest($1::uuid[], $2::int8[], $3::bool[], $4::text[], $5::int8[], $6::text[], $7::int4[])
                    AS t(m, p, vp, vg, s, k, b)",
        )
        .bind(&self.msg)
        .bind(&self.port)
        .bind(&self.via_port)
        .bind(&self.via_groups)
        .bind(&self.seq)
        .bind(&self.key)
        .bind(&self.bucket)
        .execute(&mut **tx)
        .await?
        .rows_affected())
    }
}

/// Records what became of the items `ids`, in the transaction that removes them.
async fn record_settled(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[i64],
    settled: Settled,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO suspended_outcomes (item_id, outcome) SELECT unnest($1::int8[]), $2
         ON CONFLICT (item_id) DO UPDATE SET outcome = excluded.outcome, at = excluded.at",
    )
    .bind(ids)
    .bind(settled.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn not_found(id: i64) -> Error {
    Error::not_found(
        "suspended item",
        id.to_string(),
        "it may have been resumed or terminated already; `mbx suspended list` shows the items",
    )
}

/// Moves deliveries (claimed or not) to suspended items of the given kinds, in one
/// statement, with `errors` as their reasons; writes a `suspended` tracking event. When
/// `attempt` is true the suspension ends a failed send attempt: its error is appended to
/// the item's attempts and tracked as `attempt-failed`. Otherwise (unenlist --force,
/// poison) no attempt is invented: the reason says why.
pub(crate) async fn suspend_deliveries(
    mbx: &crate::MessageBox,
    tx: &mut Transaction<'_, Postgres>,
    ids: &[i64],
    kinds: &[&str],
    errors: &[String],
    instance: Option<Uuid>,
    attempt: bool,
) -> Result<u64> {
    crate::process_calls::answer_suspended_calls(mbx, tx, ids, errors).await?;
    let reporting: Vec<(Uuid, String, Option<String>, String, String)> = sqlx::query_as(
        "WITH c AS (SELECT * FROM unnest($1::int8[], $2::text[], $3::text[]) AS c(id, kind, error)),
         d AS (DELETE FROM deliveries d USING c WHERE d.id = c.id
               RETURNING d.*, c.kind AS new_kind, c.error AS new_error),
         s AS (
            INSERT INTO suspended_items (message_id, kind, port_id, via_port, via_groups, order_key, seq, reason, errors)
            SELECT d.message_id, d.new_kind, d.port_id, d.via_port, d.via_groups, d.order_key, d.seq, d.new_error,
                   CASE WHEN $5 THEN d.errors || jsonb_build_array(jsonb_build_object(
                       'at', now(), 'transport', d.transport, 'attempt', d.retries + 1,
                       'instance', $4::uuid, 'error', d.new_error))
                   ELSE d.errors END
              FROM d
            RETURNING message_id, port_id, kind, reason, jsonb_array_length(errors) AS n),
         ev AS (
         INSERT INTO tracking_events (message_id, event, port_id, instance_id, detail)
         SELECT s.message_id, 'published', s.port_id, NULL, 'routed to ' || p.name
           FROM s JOIN send_ports p ON p.id = s.port_id JOIN hosts h ON h.id = p.host_id
          WHERE s.n = (CASE WHEN $5 THEN 1 ELSE 0 END) AND coalesce(p.tracking, h.tracking) = 'failures'
         UNION ALL
         SELECT s.message_id, 'attempt-failed', s.port_id, $4, s.reason
           FROM s JOIN send_ports p ON p.id = s.port_id JOIN hosts h ON h.id = p.host_id
          WHERE $5 AND coalesce(p.tracking, h.tracking) <> 'off'
         UNION ALL
         SELECT s.message_id, 'suspended', s.port_id, $4, s.kind || ': ' || s.reason
           FROM s JOIN send_ports p ON p.id = s.port_id JOIN hosts h ON h.id = p.host_id
          WHERE coalesce(p.tracking, h.tracking) <> 'off')
         -- the suspensions of ports that route their failures
         SELECT s.message_id, p.name, p.address, s.kind, s.reason
           FROM s JOIN send_ports p ON p.id = s.port_id WHERE p.route_failed",
    )
    .bind(ids)
    .bind(kinds)
    .bind(errors)
    .bind(instance)
    .bind(attempt)
    .fetch_all(&mut **tx)
    .await?;
    if !reporting.is_empty() {
        let failures: Vec<crate::error_report::SendFailure> = reporting
            .into_iter()
            .map(
                |(message_id, port, address, kind, reason)| crate::error_report::SendFailure {
                    message_id,
                    port,
                    address,
                    kind,
                    reason,
                },
            )
            .collect();
        let reported = crate::error_report::report_send_failures(mbx, tx, &failures).await?;
        mbx.count_dropped_reports(reported.dropped);
    }
    Ok(ids.len() as u64)
}

/// `unenlist --force`: suspends every waiting delivery of a port as `failed`.
pub(crate) async fn suspend_waiting_of_port(
    mbx: &crate::MessageBox,
    tx: &mut Transaction<'_, Postgres>,
    port_id: i64,
    reason: &str,
) -> Result<i64> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM deliveries WHERE port_id = $1 AND state = 'ready' ORDER BY id FOR UPDATE",
    )
    .bind(port_id)
    .fetch_all(&mut **tx)
    .await?;
    let kinds = vec!["failed"; ids.len()];
    let errors = vec![reason.to_owned(); ids.len()];
    suspend_deliveries(mbx, tx, &ids, &kinds, &errors, None, false).await?;
    Ok(ids.len() as i64)
}
