//! Each peer (pgmq, RabbitMQ, the pgbench ceiling) runs a tiny spec against a fresh
//! database and the local broker, measures something, and leaves nothing behind.
//!
//! Needs PostgreSQL at `DATABASE_URL` (default postgres://postgres@127.0.0.1:5432/postgres,
//! used as the admin URL to create and drop a scratch database), RabbitMQ at
//! `MBX_TEST_AMQP_URL` (default amqp://guest:guest@127.0.0.1:5672/%2f) and pgbench.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use mbx_bench::measure::Progress;
use mbx_bench::{peers, Measured, RunSpec};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection as _, PgConnection};

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn amqp_url() -> String {
    std::env::var("MBX_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A scratch database, dropped (FORCE) by [`ScratchDb::drop_now`].
struct ScratchDb {
    name: String,
    url: String,
}

impl ScratchDb {
    async fn create() -> Self {
        let name = format!("mbx_bench_peer_{}", suffix());
        let mut admin = PgConnection::connect(&admin_url())
            .await
            .expect("admin connection");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create database");
        admin.close().await.expect("close admin connection");
        let options: PgConnectOptions = admin_url().parse().expect("admin URL");
        let url = options.database(&name).to_url_lossy().to_string();
        Self { name, url }
    }

    async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .expect("scratch connection")
    }

    async fn drop_now(self) {
        let mut admin = PgConnection::connect(&admin_url())
            .await
            .expect("admin connection");
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await
        .expect("drop database");
    }
}

fn tiny_spec(database_url: &str) -> RunSpec {
    RunSpec {
        endpoint_latency: None,
        ports: None,
        subscribers: None,
        database_url: database_url.to_owned(),
        amqp_url: amqp_url(),
        duration: Duration::from_millis(1500),
        warmup: Duration::from_millis(500),
        batch: 10,
        body_size: 1024,
        consumers: 2,
        producers: 1,
        rate: None,
        window: 1000,
    }
}

fn assert_measured(m: &Measured, with_latency: bool) {
    eprintln!("{m:?}");
    let t = m.throughput.expect("throughput");
    assert!(t.count > 0, "nothing completed: {m:?}");
    assert!(t.seconds > 0.0, "{m:?}");
    assert!(!m.notes.is_empty());
    assert!(m.peak_rss_mb.is_none());
    match (with_latency, m.latency) {
        (true, Some(l)) => {
            assert!(l.samples > 0);
            assert!(l.p50_ms <= l.p99_ms && l.p99_ms <= l.max_ms, "{l:?}");
        }
        (true, None) => panic!("no latency: {m:?}"),
        (false, l) => assert!(l.is_none(), "{m:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgmq_measures_and_drops_its_queue() {
    let db = ScratchDb::create().await;
    let queue = format!("mbx_bench_{}", suffix());
    let result = peers::pgmq::run_on_queue(&tiny_spec(&db.url), &Progress::new(true), &queue).await;
    let mut conn = db.connect().await;
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'pgmq' AND tablename = $1",
    )
    .bind(format!("q_{queue}"))
    .fetch_one(&mut conn)
    .await
    .expect("look for the queue table");
    drop(conn);
    db.drop_now().await;
    let measured = result.expect("pgmq peer");
    assert_measured(&measured, true);
    assert_eq!(left, 0, "queue table q_{queue} left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_measures_and_deletes_its_queue() {
    let queue = format!("mbx-bench-test-{}", suffix());
    let measured = peers::rabbitmq::run_on_queue(
        &tiny_spec("postgres://unused"),
        &Progress::new(true),
        &queue,
    )
    .await
    .expect("rabbitmq peer");
    assert_measured(&measured, true);

    // A passive declare of a queue that does not exist fails (404 NOT_FOUND).
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("AMQP connection");
    let channel = conn.create_channel().await.expect("channel");
    let declared = channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(declared.is_err(), "queue {queue} left behind");
    let _ = conn.close(200, "test done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ceiling_measures_and_drops_its_table() {
    let db = ScratchDb::create().await;
    let table = format!("bench_ceiling_{}", suffix());
    let result =
        peers::ceiling::run_on_table(&tiny_spec(&db.url), &Progress::new(true), &table).await;
    let mut conn = db.connect().await;
    let left: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(&table)
        .fetch_one(&mut conn)
        .await
        .expect("look for the table");
    drop(conn);
    db.drop_now().await;
    let measured = result.expect("ceiling peer");
    assert_measured(&measured, false);
    assert_eq!(left, None, "table {table} left behind");
}
