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
