//! Groups joined by forwarding: the links of this group to others, the calls a
//! forwarding host makes into another group's MessageBox ([`ForwardTarget`]: only the
//! `mbx_forward_*` functions, which a forwarder role may execute and nothing else), and
//! this group's side of what others forward in: [`MessageBox::inbox_publish`] publishes
//! accepted messages as received on their receive port.
//!
//! Exactly once: the target keeps (source group, send port, source message) of every
//! accepted message until the source, having completed its delivery, forgets it
//! ([`ForwardTarget::forget`]); a resend in between is answered "duplicate" with the id the
//! message has there.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use mbx_vocabulary::{GroupAddress, SecretRef};
use serde::Serialize;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::config::{validate_name, SendPortSpec};
use crate::context::system;
use crate::publish::{NewBody, NewMessage, Publisher};
use crate::{Context, Error, MessageBox, PropertyType, Result, Value};

/// The first migration with group links: a target's schema must be at least this.
pub const FORWARD_SCHEMA_MIN: i64 = 20261130000009;

/// The channel on which an accept (`mbx_forward_accept`, at its commit) wakes the
/// target's instances.
pub const INBOX_CHANNEL: &str = "mbx_inbox";

/// Advisory lock key: one instance at a time publishes the inbox, in id order.
const INBOX_LOCK_KEY: i64 = 0x6d62_785f_696e_6278; // "mbx_inbx"

/// Inline bodies published from the inbox per transaction, about (a batch holds them).
const INBOX_BATCH_BYTES: i64 = 16 * 1024 * 1024;

/// Connections a host keeps to one linked group.
const LINK_MAX_CONNECTIONS: u32 = 4;

/// A link to another group, as `mbx group link list` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct GroupLink {
    pub name: String,
    /// A secret reference (`env:NAME`, `file:PATH`) or a URL without a password.
    pub database_url: String,
    pub target_group_id: Uuid,
    pub target_group_name: String,
    pub created_at: DateTime<Utc>,
}

/// What a link's `--target-url` may be: a reference, or a URL with no password in it
/// (the MessageBox stores it and `list` prints it).
fn link_url(reference: &str) -> Result<String> {
    if reference.starts_with("env:") || reference.starts_with("file:") {
        let secret = SecretRef::parse("--target-url", reference).map_err(Error::Invalid)?;
        return secret.resolve("--target-url").map_err(Error::Invalid);
    }
    let _: sqlx::postgres::PgConnectOptions = reference.parse().map_err(|e| {
        Error::Invalid(format!(
            "--target-url: '{}' is not a PostgreSQL URL ({e}) (example: --target-url env:MANAGERS_DATABASE_URL)",
            crate::redact_url(reference)
        ))
    })?;
    if crate::redact_url(reference) != reference {
        return Err(Error::Invalid(
            "--target-url: the URL holds a password, which the MessageBox would store and print; give a reference instead (example: --target-url env:MANAGERS_DATABASE_URL)".into(),
        ));
    }
    Ok(reference.to_owned())
}

/// Resolves a stored link URL for the process that connects (references are read now).
pub fn resolve_link_url(stored: &str) -> Result<String> {
    link_url(stored)
}

/// Checks that every `mbx://LINK/…` address of a send port names an existing link.
pub(crate) async fn check_link_addresses(
    tx: &mut Transaction<'_, Postgres>,
    spec: &SendPortSpec,
) -> Result<()> {
    let addresses = [
        ("--address", spec.address.as_deref()),
        ("--backup-address", spec.backup_address.as_deref()),
    ];
    for (arg, address) in addresses {
        let Some(address) = address.filter(|a| GroupAddress::is_group_address(a)) else {
            continue;
        };
        let parsed =
            GroupAddress::parse(address).map_err(|e| Error::Invalid(format!("{arg}: {e}")))?;
        let known: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM group_links WHERE name = $1)")
                .bind(&parsed.link)
                .fetch_one(&mut **tx)
                .await?;
        if !known {
            return Err(Error::Invalid(format!(
                "{arg}: group link '{}' does not exist; `mbx group link add {} --target-url env:VAR` creates it, `mbx group link list` shows the links",
                parsed.link, parsed.link
            )));
        }
    }
    Ok(())
}

/// Why another group did not take a batch.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The receive port does not exist there (resumable once it does).
    #[error("{0}")]
    NoReceivePort(String),
    /// The target is throttled: try again later, not a failure.
    #[error("{0}")]
    Throttled(String),
    /// An ordered stream's newer owner forwarded already: this owner is fenced off.
    #[error("{0}")]
    Fenced(String),
    /// Anything else (unreachable: retryable when connection-class).
    #[error(transparent)]
    Other(#[from] Error),
}

impl From<sqlx::Error> for ForwardError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            let text = db.message().to_owned();
            match db.code().as_deref() {
                Some("MB001") => return ForwardError::NoReceivePort(text),
                Some("MB002") => return ForwardError::Throttled(text),
                Some("MB003") => return ForwardError::Fenced(text),
                _ => {}
            }
        }
        ForwardError::Other(Error::Database(e))
    }
}

/// One message to forward.
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub source_message_id: Uuid,
    pub content_type: String,
    /// Promoted and written properties, typed by the target's declarations.
    pub context: Context,
    pub body: ForwardBody,
}

/// A forwarded message's body.
#[derive(Debug, Clone)]
pub enum ForwardBody {
    /// In memory (up to 1 MiB: what the claim returned).
    Bytes(Bytes),
    /// Stored in this group's chunks (`len` bytes): sent one chunk at a time, never whole.
    Chunks { len: u64 },
}

/// What the target answered for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Accepted {
    pub source_message_id: Uuid,
    /// Its id in the target group.
    pub message_id: Uuid,
    /// It was there already (a resend).
    pub duplicate: bool,
}

/// Another group's MessageBox, as a forwarding host reaches it.
#[derive(Clone)]
pub struct ForwardTarget {
    mbx: MessageBox,
    pub group_id: Uuid,
    pub group_name: String,
}

impl ForwardTarget {
    /// Connects and checks that the database is an mbx MessageBox with group links.
    pub async fn connect(url: &str) -> Result<Self> {
        let mbx = MessageBox::connect(url, LINK_MAX_CONNECTIONS).await?;
        #[derive(sqlx::FromRow)]
        struct Hello {
            group_id: Uuid,
            group_name: String,
            schema_version: Option<i64>,
        }
        let row = sqlx::query_as::<_, Hello>("SELECT group_id, group_name, schema_version FROM mbx_forward_hello()")
            .fetch_optional(&mbx.pool)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(db) if db.code().as_deref() == Some("42883") => Error::Refused(
                    "the target is not an mbx MessageBox with group links (no mbx_forward_hello); run `mbx init` there with this version".into(),
                ),
                sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => Error::Refused(format!(
                    "the target refused the call ({}); connect as its forwarder role (`mbx roles create` there makes <prefix>_forwarder)",
                    db.message()
                )),
                _ => Error::Database(e),
            })?
            .ok_or_else(|| {
                Error::Refused("the target MessageBox has no group recorded; run `mbx init` there".into())
            })?;
        let version = row.schema_version;
        if version.unwrap_or(0) < FORWARD_SCHEMA_MIN {
            return Err(Error::Refused(format!(
                "the target MessageBox's schema ({}) is older than group links ({FORWARD_SCHEMA_MIN}); run `mbx init` there",
                version.unwrap_or(0)
            )));
        }
        Ok(Self {
            mbx,
            group_id: row.group_id,
            group_name: row.group_name,
        })
    }

    /// The target's declared property types.
    pub async fn declarations(&self) -> Result<HashMap<String, PropertyType>> {
        let rows = sqlx::query_as("SELECT name, type FROM mbx_forward_declarations()")
            .fetch_all(&self.mbx.pool)
            .await?;
        crate::config::declarations(rows)
    }

    /// Publishes a batch into the target in one transaction there (see the module header),
    /// forgetting in the same transaction the receipts `forget` of messages this port has
    /// completed since. `epoch` is an ordered port's (stream key, lease epoch), fenced
    /// there; `None` when unordered. The stream key names the port's incarnation (a port
    /// deleted and created again under its name starts a new stream). A body stored in chunks here (`from`, this group) is sent one chunk
    /// at a time in that transaction, before the accept.
    #[allow(clippy::too_many_arguments)]
    pub async fn accept(
        &self,
        from: &MessageBox,
        source: (Uuid, &str),
        send_port: &str,
        receive_port: &str,
        epoch: Option<(&str, i64)>,
        batch: &[Forwarded],
        forget: &[Uuid],
    ) -> std::result::Result<Vec<Accepted>, ForwardError> {
        let mut source_ids = Vec::with_capacity(batch.len());
        let mut ids = Vec::with_capacity(batch.len());
        let mut types = Vec::with_capacity(batch.len());
        let mut contexts = Vec::with_capacity(batch.len());
        let mut bodies: Vec<Option<&[u8]>> = Vec::with_capacity(batch.len());
        let mut sizes: Vec<i64> = Vec::with_capacity(batch.len());
        let mut tx = self.mbx.pool.begin().await?;
        for m in batch {
            source_ids.push(m.source_message_id);
            ids.push(Uuid::now_v7());
            types.push(m.content_type.clone());
            contexts
                .push(serde_json::to_value(&m.context).map_err(|e| Error::Invalid(e.to_string()))?);
            match &m.body {
                ForwardBody::Bytes(b) => {
                    bodies.push(Some(b.as_ref()));
                    sizes.push(i64::try_from(b.len()).unwrap_or(i64::MAX));
                }
                ForwardBody::Chunks { len } => {
                    send_chunks(
                        &mut tx,
                        from,
                        source.0,
                        send_port,
                        m.source_message_id,
                        *len,
                    )
                    .await?;
                    bodies.push(None);
                    sizes.push(i64::try_from(*len).unwrap_or(i64::MAX));
                }
            }
        }
        let rows = sqlx::query_as::<_, Accepted>(
            "SELECT source_message_id, message_id, duplicate
               FROM mbx_forward_accept($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(source.0)
        .bind(source.1)
        .bind(send_port)
        .bind(receive_port)
        .bind(epoch.map(|e| e.1))
        .bind(epoch.map(|e| e.0))
        .bind(&source_ids)
        .bind(&ids)
        .bind(&types)
        .bind(&contexts)
        .bind(&bodies)
        .bind(&sizes)
        .bind(forget)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Receipts of messages published there from `send_port`, after `after` (their ids
    /// there, in order).
    pub async fn receipts(
        &self,
        source_group: Uuid,
        send_port: &str,
        after: i64,
        limit: i32,
    ) -> Result<Vec<(i64, Uuid)>> {
        Ok(
            sqlx::query_as(
                "SELECT id, source_message_id FROM mbx_forward_receipts($1, $2, $3, $4)",
            )
            .bind(source_group)
            .bind(send_port)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.mbx.pool)
            .await?,
        )
    }

    /// Forgets the receipts of messages whose completion the source recorded.
    pub async fn forget(&self, source_group: Uuid, send_port: &str, ids: &[Uuid]) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT mbx_forward_forget($1, $2, $3)")
            .bind(source_group)
            .bind(send_port)
            .bind(ids)
            .fetch_one(&self.mbx.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// Sends a body stored in chunks in `from` to the target, one chunk at a time, inside the
/// accept's transaction; fails if what was read is not `len` bytes.
async fn send_chunks(
    tx: &mut Transaction<'_, Postgres>,
    from: &MessageBox,
    source_group: Uuid,
    send_port: &str,
    message: Uuid,
    len: u64,
) -> Result<()> {
    let mut sent: u64 = 0;
    let mut seq: i32 = 0;
    while let Some(chunk) = from.message_chunk(message, seq).await? {
        sqlx::query("SELECT mbx_forward_chunk($1, $2, $3, $4, $5)")
            .bind(source_group)
            .bind(send_port)
            .bind(message)
            .bind(seq)
            .bind(chunk.as_ref())
            .execute(&mut **tx)
            .await?;
        sent += chunk.len() as u64;
        seq += 1;
    }
    if sent != len {
        return Err(Error::Corrupt(format!(
            "message {message}: its stored chunks hold {sent} bytes, not the {len} of its body"
        )));
    }
    Ok(())
}

/// A forwarded message's context as the target declares its properties: every property
/// that crosses groups (outside the engine's namespace, and `mbx.MessageType`), promoted
/// or written as in the source, its value parsed as the target's declared type
/// (undeclared: a string). The error names the property that does not fit.
pub fn context_for_target(
    source: &Context,
    declared: &HashMap<String, PropertyType>,
) -> std::result::Result<Context, String> {
    let mut out = Context::new();
    for (name, p) in source.iter() {
        if !system::crosses_groups(name) {
            continue;
        }
        let ty = declared.get(name).copied().unwrap_or(PropertyType::String);
        let text = p.value.to_plain_string();
        let value = Value::parse_as(ty, &text).map_err(|e| {
            format!("property {name} = '{text}' does not fit the target group's declared type {ty}: {e}")
        })?;
        let put = if p.promoted {
            out.promote(name, value)
        } else {
            out.write(name, value)
        };
        put.map_err(|e| format!("property {name}: {e}"))?;
    }
    Ok(out)
}

impl MessageBox {
    /// This group's id and name.
    pub async fn group_identity(&self) -> Result<(Uuid, String)> {
        #[derive(sqlx::FromRow)]
        struct Group {
            id: Uuid,
            name: String,
        }
        let row = sqlx::query_as::<_, Group>("SELECT id, name FROM mbx_group")
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| {
                Error::Refused("this MessageBox has no group recorded; run `mbx init`".into())
            })?;
        Ok((row.id, row.name))
    }

    /// Checks a link's target before it is recorded: resolves the reference, connects,
    /// checks it is an mbx MessageBox with group links and not this group itself; returns
    /// the target's group id and name.
    pub async fn link_check(&self, database_url: &str) -> Result<(Uuid, String)> {
        let url = link_url(database_url)?;
        let target = ForwardTarget::connect(&url).await.map_err(|e| match e {
            Error::Database(inner) => Error::Refused(format!(
                "cannot reach the target MessageBox at {}: {inner}; check the URL and that PostgreSQL runs there",
                crate::redact_url(&url)
            )),
            other => other,
        })?;
        target.mbx.pool.close().await;
        let (own, own_name) = self.group_identity().await?;
        if target.group_id == own {
            return Err(Error::Invalid(format!(
                "--target-url: it is this group ('{own_name}') itself; a link names another group's MessageBox"
            )));
        }
        Ok((target.group_id, target.group_name))
    }

    /// Adds a link to another group (checked by [`link_check`](Self::link_check)).
    pub async fn link_add(&self, name: &str, database_url: &str) -> Result<GroupLink> {
        validate_name("group link", name)?;
        let (group_id, group_name) = self.link_check(database_url).await?;
        let res = sqlx::query_as::<_, GroupLink>(
            "INSERT INTO group_links (name, database_url, target_group_id, target_group_name)
             VALUES ($1, $2, $3, $4)
             RETURNING name, database_url, target_group_id, target_group_name, created_at",
        )
        .bind(name)
        .bind(database_url)
        .bind(group_id)
        .bind(&group_name)
        .fetch_one(&self.pool)
        .await;
        res.map_err(|e| {
            crate::error::exists_or(
                e,
                "group link",
                name,
                "remove it first to point it elsewhere",
            )
        })
    }

    pub async fn link_list(&self) -> Result<Vec<GroupLink>> {
        Ok(sqlx::query_as::<_, GroupLink>(
            "SELECT name, database_url, target_group_id, target_group_name, created_at
               FROM group_links ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// One link by name.
    pub async fn link_get(&self, name: &str) -> Result<GroupLink> {
        sqlx::query_as::<_, GroupLink>(
            "SELECT name, database_url, target_group_id, target_group_name, created_at
               FROM group_links WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| link_not_found(name))
    }

    /// Removes a link; refused while a send port forwards through it.
    pub async fn link_remove(&self, name: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let found = sqlx::query("SELECT 1 FROM group_links WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if found.is_none() {
            return Err(link_not_found(name));
        }
        let users = link_users(&mut tx, name).await?;
        if !users.is_empty() {
            return Err(Error::Refused(format!(
                "group link '{name}' is used by send port(s) {}; change their address first (`mbx send-port update NAME --address …`)",
                users.join(", ")
            )));
        }
        sqlx::query("DELETE FROM group_links WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Of `message_ids`, those that still have a delivery or a suspended item on
    /// `port_id`: their receipts in the target must stay.
    pub async fn forward_still_held(
        &self,
        port_id: i64,
        message_ids: &[Uuid],
    ) -> Result<HashSet<Uuid>> {
        let held: Vec<Uuid> = sqlx::query_scalar(
            "SELECT d.message_id FROM deliveries d WHERE d.port_id = $1 AND d.message_id = ANY($2)
             UNION
             SELECT s.message_id FROM suspended_items s WHERE s.port_id = $1 AND s.message_id = ANY($2)",
        )
        .bind(port_id)
        .bind(message_ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(held.into_iter().collect())
    }

    /// Records `forwarded` events (message here, detail naming the target group and the
    /// message's id there) at the port's tracking level. Committed without waiting for the
    /// WAL flush: it is on no message's path (a crash of PostgreSQL may lose the events of
    /// its last moment, never a message), and a forwarding loop must not wait for a third
    /// flush per batch.
    pub async fn forward_track(
        &self,
        port_id: i64,
        instance: Uuid,
        events: &[(Uuid, String)],
    ) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = events.iter().map(|e| e.0).collect();
        let details: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
        let mut tx = crate::begin_relaxed(&self.pool).await?;
        sqlx::query(
            "INSERT INTO tracking_events (message_id, event, port_id, instance_id, detail)
             SELECT t.m, 'forwarded', $3, $4, t.d FROM unnest($1::uuid[], $2::text[]) AS t(m, d)
              WHERE (SELECT coalesce(p.tracking, h.tracking) FROM send_ports p JOIN hosts h ON h.id = p.host_id
                      WHERE p.id = $3) <> 'off'",
        )
        .bind(&ids)
        .bind(&details)
        .bind(port_id)
        .bind(instance)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Publishes up to `max` forwarded messages waiting in this group's inbox, in the order
    /// they came, as received on their receive port; one instance at a time (the others
    /// return 0 at once). Returns how many were published.
    pub async fn inbox_publish(&self, publisher: &Publisher, max: i64) -> Result<usize> {
        let mut tx = self.pool.begin().await?;
        let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(INBOX_LOCK_KEY)
            .fetch_one(&mut *tx)
            .await?;
        if !mine {
            return Ok(0);
        }
        let rows = InboxRow::waiting(&mut tx, max).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut inbox_ids = Vec::with_capacity(rows.len());
        let mut messages = Vec::with_capacity(rows.len());
        // (message, how it was received) of each, to track
        let mut received: Vec<(Uuid, String)> = Vec::with_capacity(rows.len());
        for row in rows {
            inbox_ids.push(row.id);
            let message_id = row.message_id;
            let (message, detail) = row.into_message()?;
            received.push((message_id, detail));
            messages.push(message);
        }
        let n = messages.len();
        let (outcomes, replies) = self.publish_in(&mut tx, publisher, messages).await?;
        let ids: Vec<Uuid> = received.iter().map(|r| r.0).collect();
        let details: Vec<&str> = received.iter().map(|r| r.1.as_str()).collect();
        sqlx::query(
            "INSERT INTO tracking_events (message_id, event, detail)
             SELECT t.m, 'received', t.d FROM unnest($1::uuid[], $2::text[]) AS t(m, d)
              WHERE coalesce((SELECT tracking FROM hosts WHERE id = $3), 'failures') = 'all'",
        )
        .bind(&ids)
        .bind(&details)
        .bind(publisher.host_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE forward_inbox SET published = true, body = NULL, context = NULL
              WHERE id = ANY($1)",
        )
        .bind(&inbox_ids)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.notify_after_publish(&outcomes, &replies).await;
        Ok(n)
    }

    /// Forwarded messages waiting in this group's inbox to be published (for status).
    pub async fn inbox_waiting(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM forward_inbox WHERE NOT published")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

/// A forwarded message waiting in this group's inbox.
#[derive(sqlx::FromRow)]
struct InboxRow {
    id: i64,
    source_group: Uuid,
    source_group_name: String,
    send_port: String,
    source_message_id: Uuid,
    message_id: Uuid,
    receive_port: String,
    content_type: Option<String>,
    context: Option<serde_json::Value>,
    body: Option<Vec<u8>>,
    body_size: i64,
    chunked: bool,
}

impl InboxRow {
    /// The next messages of the inbox to publish, in the order they came: at most `max`,
    /// and about [`INBOX_BATCH_BYTES`] of inline bodies (always the first).
    async fn waiting(tx: &mut Transaction<'_, Postgres>, max: i64) -> Result<Vec<InboxRow>> {
        Ok(sqlx::query_as::<_, InboxRow>(
            // at most `max` rows and about INBOX_BATCH_BYTES of inline bodies (always the
            // first row)
            "SELECT id, source_group, source_group_name, send_port, source_message_id, message_id,
                    receive_port, content_type, context, body, body_size, chunked
               FROM (SELECT f.*, sum(coalesce(length(f.body), 0)) OVER (ORDER BY f.id) AS running
                       FROM forward_inbox f WHERE NOT f.published ORDER BY f.id LIMIT $1) w
              WHERE w.running - coalesce(length(w.body), 0) < $2
              ORDER BY id",
        )
        .bind(max)
        .bind(INBOX_BATCH_BYTES)
        .fetch_all(&mut **tx)
        .await?)
    }

    /// The message to publish, as received on its receive port, and how it was received
    /// (the detail of its `received` tracking event).
    fn into_message(self) -> Result<(NewMessage, String)> {
        let source_name = self.source_group_name;
        let send_port = self.send_port;
        let source_message = self.source_message_id;
        let receive_port = self.receive_port;
        let mut context = forwarded_context(self.context, source_message, &send_port);
        let origin = format!("mbx://{source_name}/{send_port}");
        context.promote(
            system::RECEIVE_PORT_NAME,
            Value::String(receive_port.clone()),
        )?;
        context.promote(system::INBOUND_TRANSPORT_TYPE, Value::String("mbx".into()))?;
        context.promote(system::INBOUND_TRANSPORT_LOCATION, Value::String(origin))?;
        let content_type = self
            .content_type
            .unwrap_or_else(|| "application/octet-stream".into());
        context.write(system::CONTENT_TYPE, Value::String(content_type.clone()))?;
        let detail = format!(
            "forwarded from group '{source_name}' by send port '{send_port}' (message {source_message} there) to receive port '{receive_port}'"
        );
        let message = NewMessage {
            id: Some(self.message_id),
            body: if self.chunked {
                NewBody::Staged {
                    source_group: self.source_group,
                    send_port,
                    source_message_id: source_message,
                    len: u64::try_from(self.body_size).unwrap_or(0),
                }
            } else {
                NewBody::Bytes(Bytes::from(self.body.unwrap_or_default()))
            },
            content_type,
            context,
            source: None,
            source_identity: None,
            routing: Default::default(),
        };
        Ok((message, detail))
    }
}

/// The context a forwarded message was sent with (`stored`), as this group takes it.
/// What the sender sent is input: one row this group cannot read must not wedge the
/// inbox. A context that does not parse, or a property that is not valid here, is dropped
/// (logged) and the message published with what remains; the engine's properties are this
/// group's to set, never the sender's — except the message type, which names what the
/// message is (`system::crosses_groups`).
fn forwarded_context(
    stored: Option<serde_json::Value>,
    source_message: Uuid,
    send_port: &str,
) -> Context {
    let sent = match stored.map(serde_json::from_value::<Context>) {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            tracing::warn!(%source_message, %send_port, error = %e,
                "a forwarded message's context cannot be read; published without it");
            Context::new()
        }
        None => Context::new(),
    };
    let mut context = Context::new();
    for (name, p) in sent.iter() {
        if !system::crosses_groups(name) {
            continue;
        }
        let put = if p.promoted {
            context.promote(name, p.value.clone())
        } else {
            context.write(name, p.value.clone())
        };
        if let Err(e) = put {
            tracing::warn!(%source_message, property = name, error = %e,
                "a forwarded property is not valid here; dropped");
        }
    }
    context
}

/// The send ports that forward through link `name`.
pub(crate) async fn link_users(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT name FROM send_ports
          WHERE lower(address) LIKE $1 OR lower(backup_address) LIKE $1 ORDER BY name",
    )
    .bind(format!("mbx://{}/%", name.to_ascii_lowercase()))
    .fetch_all(&mut **tx)
    .await?)
}

/// Records a checked link inside `tx` (created, or pointed at its new target).
pub(crate) async fn link_upsert(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    database_url: &str,
    group_id: Uuid,
    group_name: &str,
) -> Result<()> {
    validate_name("group link", name)?;
    sqlx::query(
        "INSERT INTO group_links (name, database_url, target_group_id, target_group_name)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO UPDATE SET database_url = excluded.database_url,
             target_group_id = excluded.target_group_id, target_group_name = excluded.target_group_name",
    )
    .bind(name)
    .bind(database_url)
    .bind(group_id)
    .bind(group_name)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn link_not_found(name: &str) -> Error {
    Error::not_found(
        "group link",
        name,
        "`mbx group link list` shows the links; `mbx group link add NAME --target-url env:VAR` creates one",
    )
}
