//! The mbx MessageBox on PostgreSQL: schema access, publish and routing,
//! claim/complete/retry/suspend, suspended items, tracking, maintenance and stats.
//!
//! All SQL of mbx lives in this crate. Every operation that changes state is one
//! transaction; hot-path operations (publish, claim, complete, fail) take batches.

pub mod bindings;
pub mod config;
pub mod context;
pub mod delivery;
mod error;
pub mod error_report;
pub mod filter;
pub mod forward;
pub mod instances;
pub mod logs;
pub mod maintenance;
pub mod orchestrations;
pub mod ordered;
pub mod process;
pub mod process_admin;
pub mod process_calls;
pub mod process_leases;
pub mod publish;
pub mod receive;
pub mod replies;
pub mod routing;
pub mod search;
pub mod security;
pub mod states;
pub mod stats;
pub mod subscribers;
pub mod suspended;
pub mod throttle;
pub mod update;
pub mod value;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

pub use context::{Context, ContextProperty};
pub use error::{one_line, usage_line, Error, Result};
pub use routing::{RouteTarget, RoutingTable};
pub use value::{PropertyType, Value};

/// The MessageBox schema, embedded from `migrations/` at the workspace root.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Name of the host that `mbx init` creates and `--host` defaults to.
pub const DEFAULT_HOST: &str = "default";

/// Statement timeout set on every connection: nothing waits forever.
pub const STATEMENT_TIMEOUT_MS: u64 = 30_000;

/// `lock_timeout` of every connection: a lock waited for longer fails the statement
/// (SQLSTATE 55P03, retried as a transient error).
pub const LOCK_TIMEOUT_MS: u64 = 10_000;

/// `idle_in_transaction_session_timeout` of every connection: the server ends a session
/// whose transaction stays idle this long (a host cut off mid-transaction), freeing its
/// locks.
pub const IDLE_IN_TRANSACTION_TIMEOUT_MS: u64 = 30_000;

states::text_enum! {
    /// Tracking level.
    TrackingLevel ("tracking level") {
        Off = "off",
        Failures = "failures",
        All = "all",
    }
}

/// The LISTEN/NOTIFY channel on which publishes wake waiting host instances.
pub const PUBLISH_CHANNEL: &str = "mbx_publish";

/// The channel on which configuration changes (ports, groups, locations) are announced,
/// by triggers, on commit.
pub const CONFIG_CHANNEL: &str = "mbx_config";

/// At most one publish notification per publisher per this period. A publish inside the
/// period of the last one is announced at its end: this is the most a wake-up waits (10 ms
/// before issue 28: at half load that added up to 10 ms to a follow-up's correlation).
pub const NOTIFY_COALESCE_MS: u64 = 2;

/// Where a database's schema stands against this binary's migrations
/// ([`MessageBox::schema_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaState {
    /// No MessageBox yet (`mbx init` creates it).
    Missing,
    /// Some of this binary's migrations are not applied yet.
    Behind,
    /// Exactly this binary's migrations.
    Current,
    /// A migration this binary does not know (a newer mbx migrated it).
    Newer(i64),
}

/// A handle on one MessageBox (one group): a connection pool and the cached routing table.
#[derive(Clone)]
pub struct MessageBox {
    pool: PgPool,
    routing: Arc<RwLock<Arc<RoutingTable>>>,
    notify: Arc<NotifyState>,
    /// Error reports no subscriber took, dropped, since this value was made.
    reports_dropped: Arc<std::sync::atomic::AtomicU64>,
}

/// Coalescing of publish notifications: a leading notify, then at most one trailing one
/// per period, so the last publish of a burst is never left unannounced.
#[derive(Default)]
struct NotifyState {
    last: std::sync::Mutex<Option<std::time::Instant>>,
    trailing_pending: std::sync::atomic::AtomicBool,
}

impl MessageBox {
    /// Error reports dropped because no subscriber took them, counted since
    /// this value (and its clones) was made: the host exports it as a metric.
    pub fn error_reports_dropped(&self) -> u64 {
        self.reports_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn count_dropped_reports(&self, n: u64) {
        if n > 0 {
            tracing::warn!(
                dropped = n,
                "error reports found no subscriber; dropped (error reports are never reported again)"
            );
            self.reports_dropped
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Connects to the MessageBox at `url` (no migrations are run).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| Error::Invalid(format!("database url: {e}")))?;
        // nothing hangs forever: a statement, a lock wait, or a transaction left idle by a
        // client that vanished (its locks are freed by the server, not by TCP's keepalive)
        let options = options.options([
            ("statement_timeout", STATEMENT_TIMEOUT_MS.to_string()),
            ("lock_timeout", LOCK_TIMEOUT_MS.to_string()),
            (
                "idle_in_transaction_session_timeout",
                IDLE_IN_TRANSACTION_TIMEOUT_MS.to_string(),
            ),
        ]);
        // one connection first, for its own error: the pool retries a refused connection
        // until its acquire timeout and then reports only "pool timed out", where a wrong
        // port or a stopped server should say "connection refused" at once
        use sqlx::Connection as _;
        sqlx::PgConnection::connect_with(&options)
            .await?
            .close()
            .await?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Self::from_pool(pool))
    }

    /// Wraps an existing pool (tests get one per test database from `#[sqlx::test]`).
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            routing: Arc::new(RwLock::new(Arc::new(RoutingTable::default()))),
            notify: Arc::new(NotifyState::default()),
            reports_dropped: Arc::default(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies migrations (under sqlx's advisory lock, so concurrent callers do not race),
    /// records the group and creates host `default`. Idempotent; returns what it did.
    pub async fn init(&self, group_name: Option<&str>) -> Result<InitReport> {
        let before: i64 =
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await
                .unwrap_or_default(); // no table yet: nothing applied
        {
            // migrations wait for sqlx's advisory lock (another instance migrating) and
            // for table locks, and may run long on a big spool: no lock or statement
            // timeout on their connection, which is closed afterwards rather than
            // returned to the pool without the session's timeouts
            let mut conn = self.pool.acquire().await?;
            conn.close_on_drop();
            for set in ["SET lock_timeout = 0", "SET statement_timeout = 0"] {
                sqlx::query(set).execute(&mut *conn).await?;
            }
            MIGRATOR.run_direct(&mut *conn).await?;
        }
        let after: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await?;
        let mut tx = self.pool.begin().await?;
        let group_created = sqlx::query(
            "INSERT INTO mbx_group (id, name) VALUES ($1, $2) ON CONFLICT (singleton) DO NOTHING",
        )
        .bind(uuid::Uuid::new_v4())
        .bind(group_name.unwrap_or("default"))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let group: String = sqlx::query_scalar("SELECT name FROM mbx_group")
            .fetch_one(&mut *tx)
            .await?;
        if let Some(wanted) = group_name {
            if wanted != group {
                return Err(Error::Refused(format!(
                    "this MessageBox is group '{group}', not '{wanted}'; omit --group or use a new database"
                )));
            }
        }
        let host_created =
            sqlx::query("INSERT INTO hosts (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
                .bind(DEFAULT_HOST)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
        tx.commit().await?;
        Ok(InitReport {
            group,
            migrations_applied: (after - before).max(0) as u64,
            group_created,
            default_host_created: host_created,
        })
    }

    /// Where the database's schema stands against this binary's migrations.
    pub async fn schema_state(&self) -> Result<SchemaState> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        if !exists {
            return Ok(SchemaState::Missing);
        }
        let applied: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await?;
        let known: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        if let Some(v) = applied.iter().find(|v| !known.contains(v)) {
            return Ok(SchemaState::Newer(*v));
        }
        Ok(if applied.len() < known.len() {
            SchemaState::Behind
        } else {
            SchemaState::Current
        })
    }

    /// Fails with a clear error when the schema is missing, older or newer than this
    /// binary.
    pub async fn check_schema(&self) -> Result<()> {
        match self.schema_state().await? {
            SchemaState::Current => Ok(()),
            SchemaState::Missing => Err(Error::Refused(
                "this database has no MessageBox yet; run `mbx init` first".to_owned(),
            )),
            SchemaState::Behind => Err(Error::Refused(
                "the MessageBox schema is older than this binary; run `mbx init` to migrate it"
                    .to_owned(),
            )),
            SchemaState::Newer(v) => Err(Error::Refused(format!(
                "the MessageBox has migration {v}, newer than this binary knows; upgrade mbx"
            ))),
        }
    }

    /// Takes the routing lock in shared mode and returns the routing table current for
    /// this transaction, reloading the cache if the version moved.
    pub(crate) async fn routing_for_publish(
        &self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<Arc<RoutingTable>> {
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(routing::ROUTING_LOCK_KEY)
            .execute(&mut **tx)
            .await?;
        // A new statement: its snapshot is taken after the lock is held, so it sees every
        // routing change that committed before.
        let version: i64 = sqlx::query_scalar("SELECT version FROM routing_state")
            .fetch_one(&mut **tx)
            .await?;
        {
            let cached = self.routing.read().map_err(|_| poisoned())?;
            if cached.version == version {
                return Ok(cached.clone());
            }
        }
        let table = Arc::new(config::load_routing_table(tx, version).await?);
        let mut cached = self.routing.write().map_err(|_| poisoned())?;
        if cached.version < version {
            *cached = table.clone();
        }
        Ok(table)
    }
}

impl MessageBox {
    /// Wakes waiting host instances after a publish committed (never inside the publish
    /// transaction: PostgreSQL serialises the commits of notifying transactions). Failures
    /// are ignored: instances also poll.
    pub(crate) async fn notify_published(&self) {
        use std::sync::atomic::Ordering;
        let period = Duration::from_millis(NOTIFY_COALESCE_MS);
        let now = std::time::Instant::now();
        let leading = match self.notify.last.lock() {
            Ok(mut last) => {
                if last.is_none_or(|t| now.duration_since(t) >= period) {
                    *last = Some(now);
                    true
                } else {
                    false
                }
            }
            Err(_) => true,
        };
        if leading {
            self.send_notify().await;
        } else if !self.notify.trailing_pending.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(period).await;
                this.notify.trailing_pending.store(false, Ordering::Release);
                if let Ok(mut last) = this.notify.last.lock() {
                    *last = Some(std::time::Instant::now());
                }
                this.send_notify().await;
            });
        }
    }

    async fn send_notify(&self) {
        if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
            .bind(PUBLISH_CHANNEL)
            .execute(&self.pool)
            .await
        {
            tracing::debug!(error = %e, "publish notification failed; instances will poll");
        }
    }
}

/// What a [`Listener`] heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// Something was published: delivery loops look for work.
    Published,
    /// Ports, groups or locations changed: the supervisor reloads them.
    ConfigChanged,
    /// Another group forwarded messages into this one's inbox.
    Forwarded,
    /// A reply was routed to the client waiting on instance (the id).
    Replied(uuid::Uuid),
}

/// A dedicated connection LISTENing on the publish and configuration channels.
pub struct Listener(sqlx::postgres::PgListener);

impl Listener {
    /// The next notification; an error means the connection is gone (listen again: a new
    /// connection may have missed notifications, so look for work once after it).
    pub async fn recv(&mut self) -> Result<Wakeup> {
        let n = self.0.recv().await?;
        Ok(match n.channel() {
            CONFIG_CHANNEL => Wakeup::ConfigChanged,
            forward::INBOX_CHANNEL => Wakeup::Forwarded,
            replies::REPLY_CHANNEL => match n.payload().parse() {
                Ok(instance) => Wakeup::Replied(instance),
                Err(_) => Wakeup::Published,
            },
            _ => Wakeup::Published,
        })
    }
}

impl MessageBox {
    /// Opens a [`Listener`] on its own connection (with the pool's options).
    pub async fn listen(&self) -> Result<Listener> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener
            .listen_all([
                PUBLISH_CHANNEL,
                CONFIG_CHANNEL,
                forward::INBOX_CHANNEL,
                replies::REPLY_CHANNEL,
            ])
            .await?;
        Ok(Listener(listener))
    }
}

/// `text` cut to at most `max` bytes on a character boundary, with `…` when cut.
pub(crate) fn truncate_utf8(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn poisoned() -> Error {
    Error::Corrupt("routing cache lock poisoned".to_owned())
}

/// What `init` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InitReport {
    pub group: String,
    pub migrations_applied: u64,
    pub group_created: bool,
    pub default_host_created: bool,
}

/// Begins a transaction whose commit does not wait for its WAL to reach disk. Only for
/// work that a crash of PostgreSQL may undo without harm: a claim (a lost claim leaves the
/// delivery ready, and it is delivered again, as any claim of a crashed instance is; the
/// completion's synchronous commit flushes the claim's WAL with its own). Takes one fsync
/// off every claim (docs/PERFORMANCE.md).
pub(crate) async fn begin_relaxed(pool: &sqlx::PgPool) -> Result<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Takes the routing lock exclusively and bumps the routing version: call in every
/// transaction that changes routing, before reading what it changes.
pub(crate) async fn begin_routing_change(tx: &mut Transaction<'_, Postgres>) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(routing::ROUTING_LOCK_KEY)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE routing_state SET version = version + 1")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// `url` with its password replaced by `***`, for messages and logs (errors name
/// the URL, password hidden).
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end],
                    &userinfo[..colon],
                    &rest[at..]
                ),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

/// `url` with its database name replaced by `name` (query parameters kept).
pub fn url_with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

/// Creates the database named by `url` if it does not exist; returns whether it did.
/// Safe from many processes at once: one creates it, the others find it created
/// (`CREATE DATABASE` racing itself fails with `duplicate_database`, or with a unique
/// violation on `pg_database` when both pass the check at the same moment).
pub async fn create_database_if_missing(url: &str) -> Result<bool> {
    use sqlx::migrate::MigrateDatabase;
    if sqlx::Postgres::database_exists(url).await? {
        return Ok(false);
    }
    match sqlx::Postgres::create_database(url).await {
        Ok(()) => Ok(true),
        Err(sqlx::Error::Database(e))
            if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn the_database_name_is_replaced() {
        use super::url_with_database;
        assert_eq!(
            url_with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            url_with_database("postgres://u:p@h/db?sslmode=require", "x"),
            "postgres://u:p@h/x?sslmode=require"
        );
        assert_eq!(
            url_with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }

    #[test]
    fn passwords_are_hidden_and_nothing_else_changes() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db@x"), "postgres://h/db@x");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
