//! Nothing hangs forever (issue 6): the connections of `MessageBox::connect` carry a lock
//! timeout, a statement timeout and an idle-in-transaction timeout. A publish that waits
//! for the routing lock held by a stuck administrator fails after the lock timeout with a
//! transient (retryable) error instead of waiting.

use std::time::{Duration, Instant};

use mbx_messagebox::publish::{NewMessage, Publisher};
use mbx_messagebox::{Context, MessageBox, Value};
use sqlx::{Connection, PgPool};

mod common;

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_publish_stuck_behind_a_held_routing_lock_fails_after_the_lock_timeout(pool: PgPool) {
    common::mbx(pool.clone()).await;
    let url = common::database_url(&pool);
    let mbx = MessageBox::connect(&url, 2).await.expect("connect");
    let timeouts: (String, String, String) = sqlx::query_as(
        "SELECT current_setting('lock_timeout'), current_setting('statement_timeout'),
                current_setting('idle_in_transaction_session_timeout')",
    )
    .fetch_one(mbx.pool())
    .await
    .expect("settings");
    assert_eq!(timeouts, ("10s".into(), "30s".into(), "30s".into()));

    // an administrator's session takes the routing lock (as a routing change does) and
    // stalls
    let mut stuck = sqlx::PgConnection::connect(&url).await.expect("connect");
    let mut tx = stuck.begin().await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(mbx_messagebox::routing::ROUTING_LOCK_KEY)
        .execute(&mut *tx)
        .await
        .expect("take the routing lock");

    let mut ctx = Context::new();
    ctx.promote("Order.Id", Value::Integer(1)).expect("promote");
    let started = Instant::now();
    let err = mbx
        .publish(
            &Publisher::default(),
            vec![NewMessage::new("stuck", "text/plain", ctx)],
        )
        .await
        .expect_err("the publish cannot take the routing lock");
    let waited = started.elapsed();
    assert!(err.is_retryable(), "a lock timeout is transient: {err}");
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(25),
        "failed after {waited:?}: the lock timeout (10 s), not the statement timeout (30 s)"
    );
    tx.rollback().await.expect("rollback");
}
