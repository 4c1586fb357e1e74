//! Request-response through the MessageBox: a two-way receive publishes its
//! request together with an instance subscription keyed by the request's correlation
//! token; the first message published with that token (and not itself a request) takes
//! the subscription and becomes an instance delivery for the waiting instance, which is
//! woken on `mbx_reply` (payload: its id) and takes its replies in one statement. A reply
//! nobody waits for any more — the client timed out or left, the instance died — becomes a
//! routing failure with that reason, never dropped silently.

use std::collections::HashMap;

use bytes::Bytes;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::context::system;
use crate::publish::{NewMessage, Published, Publisher};
use crate::{Context, MessageBox, Result, Value};

/// The channel that wakes an instance whose client's reply arrived (payload: its id).
pub const REPLY_CHANNEL: &str = "mbx_reply";

/// The token a message answers with: its `mbx.CorrelationToken`, unless it is a request
/// itself (`mbx.IsRequestResponse == true`), which never answers its own client.
pub fn reply_token(context: &Context) -> Option<String> {
    let token = context.get(system::CORRELATION_TOKEN)?;
    let is_request = context
        .get(system::IS_REQUEST_RESPONSE)
        .is_some_and(|p| p.value == Value::Boolean(true));
    (!is_request).then(|| token.value.to_plain_string())
}

/// A reply handed to the instance whose client waits for it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub message_id: Uuid,
    pub correlation_token: String,
    pub content_type: String,
    pub context: Context,
    pub body: Bytes,
}

/// Routes the replies among `messages` (fresh ones only) to the instances whose clients
/// wait for their tokens: each waiting subscription is taken by the first message that
/// carries its token (deleted here, so a second answer finds none), and becomes an
/// instance delivery. Returns, by index into `messages`, the instance each reply goes to.
pub(crate) async fn route_replies(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
    messages: &[NewMessage],
    fresh: &[bool],
) -> Result<HashMap<usize, Uuid>> {
    let wanted: Vec<(usize, String)> = messages
        .iter()
        .enumerate()
        .filter(|(i, m)| {
            fresh[*i]
                && !matches!(
                    m.routing,
                    crate::publish::Routing::OnlyPort(_) | crate::publish::Routing::InstancesOnly
                )
        })
        .filter_map(|(i, m)| reply_token(&m.context).map(|t| (i, t)))
        .collect();
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let tokens: Vec<&str> = wanted.iter().map(|(_, t)| t.as_str()).collect();
    let waiting: HashMap<String, Uuid> = sqlx::query_as(
        "DELETE FROM subscriptions s USING host_instances i
          WHERE s.kind = 'instance' AND s.correlation_token = ANY($1)
            AND i.id = s.instance_id AND i.state = 'alive'
         RETURNING s.correlation_token, s.instance_id",
    )
    .bind(&tokens)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();
    let mut routed = HashMap::new();
    let mut taken = std::collections::HashSet::new();
    let (mut d_msg, mut d_inst, mut d_tok) = (Vec::new(), Vec::new(), Vec::new());
    for (i, token) in wanted {
        if let Some(instance) = waiting.get(&token) {
            if taken.insert(token.clone()) {
                routed.insert(i, *instance);
                d_msg.push(ids[i]);
                d_inst.push(*instance);
                d_tok.push(token);
            }
        }
    }
    if !d_msg.is_empty() {
        sqlx::query(
            "INSERT INTO instance_deliveries (message_id, instance_id, correlation_token)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[])",
        )
        .bind(&d_msg)
        .bind(&d_inst)
        .bind(&d_tok)
        .execute(&mut **tx)
        .await?;
    }
    Ok(routed)
}

impl MessageBox {
    /// Publishes a two-way receive's request and, in the same transaction, the instance
    /// subscription that routes the first message carrying `token` to `instance`.
    pub async fn request_publish(
        &self,
        publisher: &Publisher,
        message: NewMessage,
        instance: Uuid,
        token: &str,
    ) -> Result<Published> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO subscriptions (kind, instance_id, correlation_token) VALUES ('instance', $1, $2)",
        )
        .bind(instance)
        .bind(token)
        .execute(&mut *tx)
        .await?;
        let (outcomes, replies) = self.publish_in(&mut tx, publisher, vec![message]).await?;
        let outcome = outcomes.first().cloned().unwrap_or(Published::Duplicate);
        if matches!(outcome, Published::Duplicate | Published::SourceReused) {
            // nothing published, so no reply can come: nobody waits (a duplicate's
            // tracking event is still committed)
            sqlx::query(
                "DELETE FROM subscriptions WHERE kind = 'instance' AND correlation_token = $1",
            )
            .bind(token)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.notify_after_publish(&outcomes, &replies).await;
        Ok(outcome)
    }

    /// The client waiting for `token` left (answered, timed out, gone): its subscription
    /// goes. `false` when a reply took it already (that reply then reaches this instance
    /// with no one waiting, and is suspended as late).
    pub async fn reply_cancel(&self, token: &str) -> Result<bool> {
        Ok(sqlx::query(
            "DELETE FROM subscriptions WHERE kind = 'instance' AND correlation_token = $1",
        )
        .bind(token)
        .execute(&self.pool)
        .await?
        .rows_affected()
            > 0)
    }

    /// Takes the replies routed to `instance`: those `waits` says a client still waits
    /// for are returned (bodies read whole: a reply is answered in one HTTP response);
    /// the others are suspended as routing failures with the reason, in the same
    /// transaction. Returns (replies for waiting clients, how many were suspended).
    pub async fn replies_take(
        &self,
        instance: Uuid,
        waits: impl Fn(&str) -> bool,
    ) -> Result<(Vec<Reply>, u64)> {
        #[derive(sqlx::FromRow)]
        struct ReplyRow {
            message_id: Uuid,
            correlation_token: String,
            content_type: String,
            context: serde_json::Value,
            body: Option<Vec<u8>>,
        }
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query_as::<_, ReplyRow>(
            "WITH t AS (DELETE FROM instance_deliveries WHERE instance_id = $1
                        RETURNING message_id, correlation_token)
             SELECT t.message_id, t.correlation_token, m.content_type, m.context,
                    CASE WHEN m.chunked
                         THEN (SELECT string_agg(c.data, ''::bytea ORDER BY c.seq)
                                 FROM message_chunks c WHERE c.message_id = m.id)
                         ELSE m.body END AS body
               FROM t JOIN messages m ON m.id = t.message_id
              ORDER BY t.message_id",
        )
        .bind(instance)
        .fetch_all(&mut *tx)
        .await?;
        let mut replies = Vec::new();
        let mut late = Vec::new();
        for row in rows {
            let message_id = row.message_id;
            let token = row.correlation_token;
            if !waits(&token) {
                late.push(message_id);
                continue;
            }
            let context: Context = serde_json::from_value(row.context)
                .map_err(|e| crate::Error::Corrupt(format!("context of {message_id}: {e}")))?;
            replies.push(Reply {
                message_id,
                correlation_token: token,
                content_type: row.content_type,
                context,
                body: Bytes::from(row.body.unwrap_or_default()),
            });
        }
        let suspended = suspend_late(
            &mut tx,
            &late,
            "a reply whose client no longer waited (it timed out or left) when it arrived",
        )
        .await?;
        tx.commit().await?;
        Ok((replies, suspended))
    }

    /// A reply taken for a client that left before it was handed over: suspended as a
    /// routing failure with the reason.
    pub async fn reply_suspend_late(&self, message_id: Uuid) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let n = suspend_late(
            &mut tx,
            &[message_id],
            "a reply whose client left (timed out) just as it arrived",
        )
        .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Records on a two-way request that its client was answered 504 (`detail`), so
    /// `mbx track` shows it at the default tracking level (`host_id`'s, unless off).
    pub async fn request_timed_out(
        &self,
        message_id: Uuid,
        host_id: i64,
        detail: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO tracking_events (message_id, event, detail)
             SELECT $1, 'request-timed-out', $2
              WHERE coalesce((SELECT tracking FROM hosts WHERE id = $3), 'failures') <> 'off'",
        )
        .bind(message_id)
        .bind(detail)
        .bind(host_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Wakes the instances that replies were routed to (after the publish committed).
    pub(crate) async fn notify_replies(&self, instances: &[Uuid]) {
        if instances.is_empty() {
            return;
        }
        let ids: Vec<String> = instances.iter().map(Uuid::to_string).collect();
        if let Err(e) = sqlx::query("SELECT pg_notify($1, i) FROM unnest($2::text[]) AS i")
            .bind(REPLY_CHANNEL)
            .bind(&ids)
            .execute(&self.pool)
            .await
        {
            // the instance looks again after its listener reconnects, and on its poll
            tracing::warn!(error = %e, "cannot notify instances of their replies");
        }
    }
}

/// Suspends replies nobody waits for as routing failures (those whose message is still
/// there); returns how many.
async fn suspend_late(
    tx: &mut Transaction<'_, Postgres>,
    messages: &[Uuid],
    reason: &str,
) -> Result<u64> {
    if messages.is_empty() {
        return Ok(0);
    }
    Ok(sqlx::query(
        "WITH s AS (INSERT INTO suspended_items (message_id, kind, reason)
                    SELECT m.id, 'routing-failure', $2 FROM messages m WHERE m.id = ANY($1)
                    RETURNING message_id, reason)
         INSERT INTO tracking_events (message_id, event, detail)
         SELECT message_id, 'routing-failed', reason FROM s",
    )
    .bind(messages)
    .bind(reason)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// The replies and instance subscriptions of instances that are no longer alive: the
/// subscriptions go (no client waits on a dead instance), the replies become routing
/// failures with the reason. Part of the dead-instance reclaim's transaction.
pub(crate) async fn reclaim_dead(tx: &mut Transaction<'_, Postgres>) -> Result<u64> {
    sqlx::query(
        "DELETE FROM subscriptions s USING host_instances i
          WHERE s.kind = 'instance' AND i.id = s.instance_id AND i.state <> 'alive'",
    )
    .execute(&mut **tx)
    .await?;
    let orphans: Vec<Uuid> = sqlx::query_scalar(
        "DELETE FROM instance_deliveries d USING host_instances i
          WHERE i.id = d.instance_id AND i.state <> 'alive'
         RETURNING d.message_id",
    )
    .fetch_all(&mut **tx)
    .await?;
    suspend_late(
        tx,
        &orphans,
        "a reply whose waiting instance died before handing it to its client",
    )
    .await
}
