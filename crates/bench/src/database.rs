//! Scratch databases: every run gets a fresh database on the server it was pointed at,
//! dropped afterwards (also when the run fails).

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

pub use mbx_messagebox::{redact_url as redact, url_with_database as with_database};

use crate::BenchError;

/// A database created for one run.
#[derive(Debug)]
pub struct Scratch {
    server_url: String,
    name: String,
    url: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name no other run uses: `<prefix>_<12 hex digits>` (a plain lower-case identifier).
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

impl Scratch {
    /// Creates `mbx_bench_<pid>_<tag>_<n>` on the server of `url` (any database on it).
    pub async fn create(url: &str, tag: &str) -> Result<Self, BenchError> {
        let name = format!(
            "mbx_bench_{}_{}_{}",
            std::process::id(),
            tag.replace('-', "_"),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = sqlx::PgConnection::connect(url).await.map_err(|e| {
            BenchError::Setup(format!(
                "cannot connect to PostgreSQL at {}: {e}; start it or pass --database-url",
                redact(url)
            ))
        })?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok(Self {
            server_url: url.to_owned(),
            url: with_database(url, &name),
            name,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops the database (forcing its connections off); failures are only logged.
    pub async fn drop_now(self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        match sqlx::PgConnection::connect(&self.server_url).await {
            Ok(mut conn) => {
                if let Err(e) = sqlx::query(&sql).execute(&mut conn).await {
                    tracing::warn!(database = %self.name, error = %e, "could not drop the scratch database");
                }
                let _ = conn.close().await;
            }
            Err(e) => {
                tracing::warn!(database = %self.name, error = %e, "could not drop the scratch database")
            }
        }
    }
}

/// A connection pool for the benchmark's own measurements on one database (the rows and
/// WAL a run writes, the orchestration instances it follows): statements about the
/// benchmark, never the product's (those are the MessageBox's).
#[derive(Debug, Clone)]
pub struct Probe {
    pool: sqlx::PgPool,
}

/// What the server had written when it was read: WAL position and row changes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Activity {
    /// `pg_current_wal_lsn()` in bytes (server-wide).
    pub wal_bytes: i64,
    /// Σ n_tup_ins + n_tup_upd + n_tup_del of this database's user tables.
    pub rows: i64,
}

impl Activity {
    /// Per unit of work since `before`: (rows, WAL bytes).
    pub fn per(&self, before: &Activity, units: u64) -> Option<(f64, f64)> {
        (units > 0).then(|| {
            (
                (self.rows - before.rows) as f64 / units as f64,
                (self.wal_bytes - before.wal_bytes) as f64 / units as f64,
            )
        })
    }
}

#[derive(sqlx::FromRow)]
struct ActivityRow {
    wal_bytes: i64,
    rows: i64,
}

/// An instance waiting for a message: its `Order.Id`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Waiting {
    pub order_id: String,
}

impl Probe {
    pub async fn connect(url: &str) -> Result<Self, BenchError> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await
            .map_err(|e| BenchError::Setup(format!("cannot connect to {}: {e}", redact(url))))?;
        Ok(Self { pool })
    }

    /// The WAL position and this database's row changes so far (the statistics a backend
    /// reports at most about once a second).
    pub async fn activity(&self) -> Result<Activity, BenchError> {
        let row: ActivityRow = sqlx::query_as(
            "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint AS wal_bytes,
                    coalesce((SELECT sum(n_tup_ins + n_tup_upd + n_tup_del)
                                FROM pg_stat_user_tables), 0)::bigint AS rows",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Activity {
            wal_bytes: row.wal_bytes,
            rows: row.rows,
        })
    }

    /// The id of orchestration `name`.
    pub async fn orchestration_id(&self, name: &str) -> Result<i64, BenchError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM orchestrations WHERE name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Instances of orchestration `id` in `state` (through its (orchestration, state) index).
    pub async fn instances_in(&self, id: i64, state: &str) -> Result<i64, BenchError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM orchestration_instances WHERE orchestration_id = $1 AND state = $2",
        )
        .bind(id)
        .bind(state)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The instances of orchestration `id` waiting now, by their `Order.Id`.
    pub async fn waiting(&self, id: i64) -> Result<Vec<Waiting>, BenchError> {
        Ok(sqlx::query_as(
            "SELECT correlation->>'Order.Id' AS order_id FROM orchestration_instances
              WHERE orchestration_id = $1 AND state = 'waiting' AND correlation ? 'Order.Id'",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Copies the waiting instances of orchestration `id` the engine made (order ids
    /// `w-N`) into instances `c-K` for K in `from..to`: each a copy of template `K mod
    /// templates` — its row, its correlation subscriptions and its inbox rows — with the
    /// order id replaced in its data, correlation and keys. The rows a million waiting
    /// instances leave, in minutes instead of the hours the engine takes to activate
    /// them one step each.
    pub async fn copy_waiting(&self, id: i64, from: i64, to: i64) -> Result<(), BenchError> {
        sqlx::query(
            "WITH tpl AS (
                SELECT i.id, i.correlation->>'Order.Id' AS ord, row_number() OVER (ORDER BY i.id) - 1 AS n
                  FROM orchestration_instances i
                 WHERE i.orchestration_id = $1 AND i.state = 'waiting'
                   AND i.correlation->>'Order.Id' LIKE 'w-%'),
             b AS (SELECT count(*) AS b FROM tpl),
             g AS (SELECT s AS k, gen_random_uuid() AS nid, tpl.id AS tid,
                          '\"' || tpl.ord || '\"' AS old, '\"c-' || s || '\"' AS new
                     FROM generate_series($2::int8, $3::int8 - 1) AS s, b, tpl
                    WHERE b.b > 0 AND tpl.n = s % b.b),
             ins AS (
                INSERT INTO orchestration_instances (id, orchestration_id, version, state, data,
                                                     correlation, pokes, steps, bucket)
                SELECT g.nid, i.orchestration_id, i.version, i.state,
                       replace(i.data::text, g.old, g.new)::jsonb,
                       replace(i.correlation::text, g.old, g.new)::jsonb, i.pokes, i.steps, i.bucket
                  FROM g JOIN orchestration_instances i ON i.id = g.tid
                RETURNING id),
             sub AS (
                INSERT INTO orchestration_subscriptions (orchestration_id, key, instance_id, activation)
                SELECT s.orchestration_id, replace(s.key, g.old, g.new), g.nid, s.activation
                  FROM g JOIN orchestration_subscriptions s ON s.instance_id = g.tid)
             INSERT INTO orchestration_inbox (instance_id, message_id, activating, consumed)
             SELECT g.nid, x.message_id, x.activating, x.consumed
               FROM g JOIN orchestration_inbox x ON x.instance_id = g.tid",
        )
        .bind(id)
        .bind(from)
        .bind(to)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Lets the server settle after a bulk load, before a measured run: the orchestration
    /// tables vacuumed and analysed (fresh statistics, a visibility map), the dirty pages
    /// written by a checkpoint (not by the measured run's commits).
    pub async fn settle(&self) -> Result<(), BenchError> {
        sqlx::query(
            "VACUUM (ANALYZE) orchestration_instances, orchestration_subscriptions, orchestration_inbox",
        )
        .execute(&self.pool)
        .await?;
        sqlx::query("CHECKPOINT").execute(&self.pool).await?;
        Ok(())
    }

    /// Runs one statement of the benchmark's own (a peer's set-up).
    pub async fn execute(&self, sql: &str) -> Result<(), BenchError> {
        sqlx::query(sql).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(self) {
        self.pool.close().await;
    }
}
