//! Finding messages (`mbx message list`): the messages still in the MessageBox — waiting,
//! in flight, retrying or suspended — newest first, narrowed by a filter over their
//! context (the subscription language, over promoted and written properties), a send
//! port they are bound for or suspended on, and their age. A delivered message has left
//! the MessageBox; `mbx track ID` shows what its tracking level kept.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::filter::Filter;
use crate::{Context, Error, MessageBox, Result};

/// Messages a search looks at, newest first, at most (a bound on one query's work).
pub const SEARCH_SCAN_MAX: i64 = 100_000;

crate::states::text_enum! {
    /// Where a message stands, for `message list --state`.
    MessageState ("message state") {
        /// A delivery ready to be claimed (or held by a stopped port).
        Waiting = "waiting",
        /// A delivery claimed by an instance.
        InFlight = "in-flight",
        /// A delivery waiting for its retry time.
        Retrying = "retrying",
        /// A suspended item.
        Suspended = "suspended",
    }
}

/// What `message list` looks for; every given condition must hold.
#[derive(Debug, Clone, Default)]
pub struct MessageQuery {
    /// A filter over the context, e.g. `Order.Region == "EU"`.
    pub filter: Option<String>,
    /// Bound for, or suspended on, this send port.
    pub port: Option<String>,
    /// Received through a location of this receive port.
    pub receive_port: Option<String>,
    /// In this state (on any port).
    pub state: Option<MessageState>,
    /// Published at most this many seconds ago.
    pub newer_than_s: Option<i64>,
    /// Matches returned at most.
    pub limit: i64,
}

/// One message found, with where it stands.
#[derive(Debug, Clone, Serialize)]
pub struct FoundMessage {
    pub id: Uuid,
    pub published_at: DateTime<Utc>,
    /// The receive location it came in through (none: published by `mbx message publish`
    /// or a library call).
    pub location: Option<String>,
    pub content_type: String,
    pub body_size: i64,
    /// `mbx.SourceFileName`, when it came from a file.
    pub source_file: Option<String>,
    /// Where it stands, e.g. `eu: ready`, `us: claimed`, `suspended (failed) on eu`.
    pub state: Vec<String>,
    /// Its promoted properties, `Name=value`.
    pub promoted: String,
}

type Row = (
    Uuid,
    DateTime<Utc>,
    Option<String>,
    String,
    i64,
    serde_json::Value,
    Vec<String>,
);

impl MessageBox {
    /// Lists messages still in the MessageBox (see the module comment).
    pub async fn message_find(&self, query: &MessageQuery) -> Result<Vec<FoundMessage>> {
        let mut tx = self.pool.begin().await?;
        let filter = match &query.filter {
            Some(text) => Some(crate::config::compile_filter(&mut tx, text).await?),
            None => None,
        };
        check_names(&mut tx, query).await?;
        let rows = scan(&mut tx, query).await?;
        tx.commit().await?;
        narrow(rows, filter.as_ref(), query.limit)
    }
}

/// The send port and receive port `query` names exist: a name that does not exist is an
/// error, not an empty result.
async fn check_names(tx: &mut Transaction<'_, Postgres>, query: &MessageQuery) -> Result<()> {
    let named = [
        (
            &query.port,
            "send_ports",
            "send port",
            "`mbx send-port list` shows the ports",
        ),
        (
            &query.receive_port,
            "receive_ports",
            "receive port",
            "`mbx receive-port list` shows the ports",
        ),
    ];
    for (name, table, kind, hint) in named {
        let Some(name) = name else { continue };
        let known: bool = sqlx::query_scalar(&format!(
            "SELECT EXISTS (SELECT 1 FROM {table} WHERE name = $1)"
        ))
        .bind(name)
        .fetch_one(&mut **tx)
        .await?;
        if !known {
            return Err(Error::not_found(kind, name.clone(), hint));
        }
    }
    Ok(())
}

/// The newest messages (at most [`SEARCH_SCAN_MAX`]) that `query`'s age, port, receive
/// port and state select, newest first.
async fn scan(tx: &mut Transaction<'_, Postgres>, query: &MessageQuery) -> Result<Vec<Row>> {
    Ok(sqlx::query_as(
        "SELECT m.id, m.published_at, l.name, m.content_type, m.body_size, m.context,
                array(SELECT p.name || ': ' || CASE WHEN d.not_before > now() THEN 'retrying'
                                                     ELSE d.state END
                        FROM deliveries d JOIN send_ports p ON p.id = d.port_id
                       WHERE d.message_id = m.id
                      UNION ALL
                      SELECT 'suspended (' || s.kind || ')' || coalesce(' on ' || p.name, '')
                        FROM suspended_items s LEFT JOIN send_ports p ON p.id = s.port_id
                       WHERE s.message_id = m.id) AS state
           FROM messages m LEFT JOIN receive_locations l ON l.id = m.receive_location_id
          WHERE ($1::float8 IS NULL OR m.published_at > now() - make_interval(secs => $1))
            AND ($2::text IS NULL
                 OR EXISTS (SELECT 1 FROM deliveries d JOIN send_ports p ON p.id = d.port_id
                             WHERE d.message_id = m.id AND p.name = $2)
                 OR EXISTS (SELECT 1 FROM suspended_items s JOIN send_ports p ON p.id = s.port_id
                             WHERE s.message_id = m.id AND p.name = $2))
            AND ($4::text IS NULL
                 OR EXISTS (SELECT 1 FROM receive_ports r
                             WHERE r.id = l.receive_port_id AND r.name = $4))
            AND CASE $5::text
                WHEN 'waiting' THEN EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id
                                               AND d.state = 'ready' AND d.not_before <= now())
                WHEN 'in-flight' THEN EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id
                                                 AND d.state = 'claimed')
                WHEN 'retrying' THEN EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id
                                                AND d.state = 'ready' AND d.not_before > now())
                WHEN 'suspended' THEN EXISTS (SELECT 1 FROM suspended_items s
                                                 WHERE s.message_id = m.id)
                ELSE true END
          ORDER BY m.published_at DESC, m.id
          LIMIT $3",
    )
    .bind(query.newer_than_s.map(|s| s as f64))
    .bind(&query.port)
    .bind(SEARCH_SCAN_MAX)
    .bind(&query.receive_port)
    .bind(query.state)
    .fetch_all(&mut **tx)
    .await?)
}

/// The first `limit` of `rows` whose context `filter` (if any) matches, as found.
fn narrow(rows: Vec<Row>, filter: Option<&Filter>, limit: i64) -> Result<Vec<FoundMessage>> {
    let mut found = Vec::new();
    for (id, published_at, location, content_type, body_size, context, state) in rows {
        if found.len() as i64 >= limit {
            break;
        }
        let context: Context = serde_json::from_value(context)
            .map_err(|e| Error::Corrupt(format!("context of {id}: {e}")))?;
        if let Some(f) = filter {
            if !f.eval(|name| context.get(name).map(|p| &p.value)) {
                continue;
            }
        }
        found.push(FoundMessage {
            id,
            published_at,
            location,
            content_type,
            body_size,
            source_file: context
                .get(crate::context::system::SOURCE_FILE_NAME)
                .map(|p| p.value.to_plain_string()),
            state,
            promoted: context.promoted_summary(),
        });
    }
    Ok(found)
}
