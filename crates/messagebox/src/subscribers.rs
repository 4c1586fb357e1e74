//! The subscriber seam: what a host instance sees of the MessageBox's storage when it
//! delivers work. Routing decides, once per message and in the publish's transaction,
//! which subscribers get it; a host instance then claims work for *all* the subscribers
//! it serves in one claim per round ([`MessageBox::claim`]), hands each subscriber its
//! part, and reports outcomes ([`MessageBox::deliveries_complete`],
//! [`MessageBox::deliveries_fail`], …, matched by claim token).
//!
//! Callers see subscribers, claims and outcomes, never tables: the storage beneath (today
//! one `deliveries` row per message × send port; docs/design/hot-path.md) can change
//! without changing them.
//!
//! Subscribers today:
//! - an unordered send port ([`Subscriber::SendPort`]): claimed here, many per statement;
//! - an ordered port or a bucket of a port ordered by a property: claimed by the holder of
//!   its lease only, in sequence (`ordered.rs`), because the claim is fenced on the lease;
//! - a waiting two-way client: its instance takes its replies (`replies.rs`).
//!
//! Process activations and correlated waits are the next subscribers.

use std::collections::HashMap;
use std::time::Duration;

use uuid::Uuid;

use crate::delivery::{claimed_deliveries, ClaimLimits, ClaimRow, ClaimedDelivery};
use crate::{MessageBox, Result};

/// Who a claim is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subscriber {
    /// An unordered send port, by id.
    SendPort(i64),
}

/// What one subscriber wants from a claim: at most `limits` of its due work.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    pub subscriber: Subscriber,
    pub limits: ClaimLimits,
}

/// One claim's work, by subscriber (a subscriber that got nothing is absent).
#[derive(Debug, Default)]
pub struct Claimed {
    pub token: Uuid,
    pub work: HashMap<Subscriber, Vec<ClaimedDelivery>>,
}

impl Claimed {
    /// How many deliveries the claim took, over all subscribers.
    pub fn len(&self) -> usize {
        self.work.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.work.values().all(Vec::is_empty)
    }
}

impl MessageBox {
    /// Claims due work for every subscriber in `wants` in one statement and one
    /// transaction, for `instance` (registered and alive; a declared-dead instance claims
    /// nothing), under the caller's claim `token`. Each subscriber gets at most its own
    /// limits — its count, and body bytes within its byte cap (its first delivery always
    /// fits) — highest priority first, then in publish order; a port that is not started
    /// gets nothing. `FOR UPDATE SKIP LOCKED` lets every instance claim from the same
    /// subscribers at once.
    ///
    /// If the claim fails with a connection-class error the caller cannot tell whether it
    /// committed: it gives back whatever the token may hold with
    /// [`Self::deliveries_release_token`].
    pub async fn claim(&self, instance: Uuid, wants: &[Want], token: Uuid) -> Result<Claimed> {
        let mut claimed = Claimed {
            token,
            work: HashMap::new(),
        };
        if wants.is_empty() {
            return Ok(claimed);
        }
        let (mut ports, mut counts, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
        for want in wants {
            let Subscriber::SendPort(port) = want.subscriber;
            ports.push(port);
            counts.push(want.limits.max_count.max(1));
            bytes.push(want.limits.max_bytes.max(1));
        }
        let mut tx = crate::begin_relaxed(&self.pool).await?;
        let rows: Vec<ClaimRow> = sqlx::query_as(
            "WITH want AS (
                SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])
                    AS w(port_id, max_count, max_bytes)),
             cand AS (
                SELECT w.port_id, w.max_bytes, d.id, d.body_size, d.priority
                  FROM want w
                  JOIN send_ports p ON p.id = w.port_id AND p.state = 'started'
                 CROSS JOIN LATERAL (
                    SELECT d.id, d.body_size, d.priority FROM deliveries d
                     WHERE d.port_id = w.port_id AND d.state = 'ready' AND d.not_before <= now()
                       AND d.seq IS NULL -- ordered ports are claimed by their lease holder only
                       AND (d.via_port OR EXISTS (SELECT 1 FROM send_port_groups g
                                                   WHERE g.id = ANY (d.via_groups) AND g.state = 'started'))
                     ORDER BY d.priority DESC, d.id
                     LIMIT w.max_count
                     FOR UPDATE OF d SKIP LOCKED) d
                 -- a declared-dead (or unknown) instance claims nothing: what it claimed
                 -- would only be reclaimed again, counting toward poison
                 WHERE EXISTS (SELECT 1 FROM host_instances i WHERE i.id = $4 AND i.state = 'alive')),
             capped AS (
                SELECT id FROM (
                    SELECT id, max_bytes,
                           sum(body_size) OVER (PARTITION BY port_id ORDER BY priority DESC, id) AS upto,
                           row_number() OVER (PARTITION BY port_id ORDER BY priority DESC, id) AS n
                      FROM cand) c
                 WHERE upto <= max_bytes OR n = 1),
             claimed AS (
                UPDATE deliveries d SET state = 'claimed', claimed_by = $4, claim_token = $5, claimed_at = now()
                  FROM capped WHERE d.id = capped.id
                RETURNING d.id, d.message_id, d.port_id, d.transport, d.retries, d.seq, d.priority),
             ev AS (
                INSERT INTO tracking_events (message_id, event, port_id, instance_id)
                SELECT c.message_id, 'claimed', c.port_id, $4 FROM claimed c
                  JOIN send_ports p ON p.id = c.port_id JOIN hosts h ON h.id = p.host_id
                 WHERE coalesce(p.tracking, h.tracking) = 'all')
             SELECT c.id, c.message_id, c.port_id, p.name AS port_name, c.transport, c.retries, c.seq,
                    CASE WHEN c.transport = 'backup' THEN p.backup_address ELSE p.address END AS address,
                    m.content_type, m.body, m.body_size, m.context, m.published_at
               FROM claimed c JOIN messages m ON m.id = c.message_id JOIN send_ports p ON p.id = c.port_id
              ORDER BY c.port_id, c.priority DESC, c.id",
        )
        .bind(&ports)
        .bind(&counts)
        .bind(&bytes)
        .bind(instance)
        .bind(token)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        // the rows come ordered by port: one run of rows per subscriber
        let mut rows = rows.into_iter().peekable();
        while let Some(first) = rows.next() {
            let port = first.port_id.unwrap_or_default();
            let mut run = vec![first];
            while let Some(row) = rows.next_if(|r| r.port_id == Some(port)) {
                run.push(row);
            }
            claimed.work.insert(
                Subscriber::SendPort(port),
                claimed_deliveries(run, token, port, None)?,
            );
        }
        Ok(claimed)
    }

    /// How long until the earliest scheduled retry of any of `subscribers` falls due
    /// (database clock); `None` when none waits for a due time. A host that claimed nothing
    /// sleeps this long (at most its poll interval), so a retry is sent at its due time.
    /// Deliveries already due but not claimable (behind an ordered head, through a stopped
    /// group) are left out: waking for them would only spin.
    pub async fn next_due(&self, subscribers: &[Subscriber]) -> Result<Option<Duration>> {
        let ports: Vec<i64> = subscribers
            .iter()
            .map(|s| match s {
                Subscriber::SendPort(id) => *id,
            })
            .collect();
        let secs: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM min(not_before) - now())::float8 FROM deliveries
              WHERE port_id = ANY ($1) AND state = 'ready' AND not_before > now()",
        )
        .bind(&ports)
        .fetch_one(&self.pool)
        .await?;
        Ok(secs.map(|s| Duration::from_secs_f64(s.max(0.0))))
    }
}
