//! Database faults: the hosts' PostgreSQL connections are terminated
//! (`pg_terminate_backend`, as an administrator or a failover would) again and again in
//! the middle of a 2,000-file FILE → FILE run through two real `mbx-host` processes. No
//! host exits, no transaction leaves partial state, nothing is lost: every unit of work is
//! retried on a connection-class error. Only the connections to this test's own database
//! are terminated, so other tests on the shared server are not disturbed.

use std::collections::BTreeMap;
use std::time::Duration;

use mbx_e2e::{
    bodies_in, database_url, files_in, messagebox, order_route, server_url, start_host, wait_for,
    wait_for_alive, FileRoute, FAST_HOST,
};
use sqlx::{Connection, PgPool};

const FILES: usize = 2000;

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn terminated_connections_mid_run_lose_nothing_and_leave_no_partial_state(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let FileRoute { inbox, outbox } = order_route(&mbx, dir.path()).await;
    let url = database_url(&pool);
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .expect("database name");
    let mut hosts = vec![start_host(&url, FAST_HOST), start_host(&url, FAST_HOST)];
    wait_for_alive(&mbx, 2).await;
    for i in 0..FILES {
        let tmp = inbox.join(format!(".o-{i:04}.tmp"));
        std::fs::write(&tmp, format!("<order><id>{i}</id></order>")).expect("write");
        std::fs::rename(&tmp, inbox.join(format!("o-{i:04}.xml"))).expect("rename");
    }

    // an administrator's session on another database terminates every connection to the
    // test database, 15 times, 300 ms apart, while the run is under way
    let mut admin = sqlx::PgConnection::connect(&server_url())
        .await
        .expect("admin connection");
    let mut terminated = 0i64;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
               FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&db)
        .fetch_one(&mut admin)
        .await
        .expect("terminate");
        terminated += n;
    }
    assert!(terminated > 15, "connections were terminated: {terminated}");

    wait_for(
        "every file delivered and the inbox empty after the faults",
        Duration::from_secs(120),
        || async { files_in(&outbox, "xml").len() >= FILES && files_in(&inbox, "xml").is_empty() },
    )
    .await;
    for h in &mut hosts {
        assert!(
            h.0.try_wait().expect("try_wait").is_none(),
            "a host exited on a database fault"
        );
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for body in bodies_in(&outbox, "xml") {
        *seen.entry(body).or_default() += 1;
    }
    let lost: Vec<usize> = (0..FILES)
        .filter(|i| !seen.contains_key(&format!("<order><id>{i}</id></order>")))
        .collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    // no partial state: every message that was published has been delivered and removed,
    // none is stuck claimed or half-written
    wait_for("the spool empties", Duration::from_secs(60), || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT (SELECT count(*) FROM deliveries) + (SELECT count(*) FROM messages)
                        + (SELECT count(*) FROM suspended_items)",
        )
        .fetch_one(&pool)
        .await
        .is_ok_and(|n| n == 0)
    })
    .await;
}
