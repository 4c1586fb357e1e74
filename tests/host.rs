//! `mbx-host` as a real process: registration, graceful stop, and reclaiming the claims of
//! an instance killed with SIGKILL.

use std::process::Command;
use std::time::Duration;

use mbx_e2e::{database_url, instance_of_pid, messagebox, start_host, wait_for, wait_registered};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::delivery::ClaimLimits;
use mbx_messagebox::publish::{NewMessage, Publisher};
use mbx_messagebox::{Context, Value};
use sqlx::PgPool;

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_host_registers_and_stops_gracefully_on_sigterm(pool: PgPool) {
    messagebox(&pool).await;
    let url = database_url(&pool);
    let mut host = start_host(&url, &[]);
    let pid = host.pid();
    wait_registered(&pool, pid).await;
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let code = tokio::task::spawn_blocking(move || host.0.wait().expect("wait"))
        .await
        .expect("join");
    assert!(code.success(), "mbx-host exits 0 on SIGTERM: {code:?}");
    assert_eq!(
        instance_of_pid(&pool, pid).await.map(|i| i.1).as_deref(),
        Some("stopped")
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_live_host_reclaims_the_claims_of_a_killed_one(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let mut dying = start_host(&url, &[]);
    let pid = dying.pid();
    wait_for(
        "the first instance to register",
        Duration::from_secs(30),
        || async { instance_of_pid(&pool, pid).await.is_some() },
    )
    .await;
    let (dead_id, _) = instance_of_pid(&pool, pid).await.expect("registered");

    // the first instance holds a claim when it is killed (made by the test on its behalf:
    // the port is bound to a host no instance runs, so no loop sends it meanwhile)
    mbx.host_create(&mbx_messagebox::config::HostSpec {
        name: "elsewhere".into(),
        ..Default::default()
    })
    .await
    .expect("host");
    let mut spec = SendPortSpec::new("out", "file:///tmp/out/%MessageID%")
        .with_filter("exists(Order.Id)")
        .with_state(InitialState::Started);
    spec.host = "elsewhere".into();
    mbx.send_port_create(&spec).await.expect("port");
    let mut ctx = Context::new();
    ctx.promote("Order.Id", Value::Integer(1)).expect("promote");
    mbx.publish(
        &Publisher::default(),
        vec![NewMessage::new(&b"x"[..], "text/plain", ctx)],
    )
    .await
    .expect("publish");
    let port_id: i64 = sqlx::query_scalar("SELECT id FROM send_ports WHERE name = 'out'")
        .fetch_one(&pool)
        .await
        .expect("port id");
    let claimed = mbx
        .deliveries_claim(dead_id, port_id, ClaimLimits::default())
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    dying.0.kill().expect("SIGKILL");
    dying.0.wait().expect("reap");
    // its heartbeat is now as old as the dead timeout would make it
    sqlx::query(
        "UPDATE host_instances SET heartbeat_at = now() - interval '1 minute' WHERE id = $1",
    )
    .bind(dead_id)
    .execute(&pool)
    .await
    .expect("age heartbeat");

    let _survivor = start_host(&url, &[]);
    wait_for(
        "the survivor to reclaim the delivery",
        Duration::from_secs(30),
        || async {
            let row: (String, i32) = sqlx::query_as("SELECT state, reclaims FROM deliveries")
                .fetch_one(&pool)
                .await
                .expect("delivery");
            row == ("ready".to_owned(), 1)
        },
    )
    .await;
    assert_eq!(
        instance_of_pid(&pool, pid).await.map(|i| i.1).as_deref(),
        Some("dead")
    );
    // the former holder's completion is refused: its claim token no longer matches
    let done = mbx
        .deliveries_complete(dead_id, &[(claimed[0].delivery_id, claimed[0].claim_token)])
        .await
        .expect("complete");
    assert!(done.is_empty());
}

/// An instance declared dead while it still runs (its heartbeat was late, e.g. during a
/// database outage) registers again under a new id and goes on delivering under it: claims
/// made under the dead id would claim nothing.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_instance_declared_dead_registers_again_and_delivers(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    mbx.send_port_create(
        &SendPortSpec::new("drain", "null:drain")
            .with_filter("exists(Order.Id)")
            .with_state(InitialState::Started),
    )
    .await
    .expect("send port");
    let dir = tempfile::tempdir().expect("tempdir");
    let route = mbx_e2e::order_route(&mbx, dir.path()).await;
    let url = database_url(&pool);
    let host = start_host(&url, mbx_e2e::FAST_HOST);
    let pid = host.pid();
    wait_registered(&pool, pid).await;
    // the FILE location runs (a file goes through) before the instance is declared dead
    std::fs::write(route.inbox.join(".o-1.tmp"), "<order><id>1</id></order>").expect("write");
    std::fs::rename(route.inbox.join(".o-1.tmp"), route.inbox.join("o-1.xml")).expect("rename");
    wait_for(
        "the first file delivered",
        Duration::from_secs(30),
        || async { mbx_e2e::files_in(&route.outbox, "xml").len() == 1 },
    )
    .await;
    let (first, _) = instance_of_pid(&pool, pid).await.expect("instance");
    sqlx::query("UPDATE host_instances SET state = 'dead' WHERE id = $1")
        .bind(first)
        .execute(&pool)
        .await
        .expect("declare the instance dead");
    wait_for(
        "the process to register again under a new id",
        Duration::from_secs(30),
        || async {
            matches!(instance_of_pid(&pool, pid).await,
                     Some((id, s)) if id != first && s == "alive")
        },
    )
    .await;
    let mut ctx = Context::new();
    ctx.promote("Order.Id", Value::Integer(1)).expect("promote");
    mbx.publish(
        &Publisher::default(),
        vec![NewMessage::new("after re-registering", "text/plain", ctx)],
    )
    .await
    .expect("publish");
    wait_for(
        "the message delivered by the re-registered instance",
        Duration::from_secs(30),
        || async { mbx.stats().await.expect("stats").spool_messages == 0 },
    )
    .await;
    let still: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM host_instances WHERE pid = $1 AND state = 'alive'",
    )
    .bind(pid as i32)
    .fetch_one(&pool)
    .await
    .expect("instances");
    assert_eq!(
        still, 1,
        "one live instance for the process, not a new one per heartbeat"
    );

    // its FILE location (started before) now claims files under the new id: a file held
    // claimed while the publish waits for the routing lock carries the new id
    let (second, _) = instance_of_pid(&pool, pid).await.expect("instance");
    let mut admin = pool.acquire().await.expect("connection");
    sqlx::query("BEGIN")
        .execute(&mut *admin)
        .await
        .expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(mbx_messagebox::routing::ROUTING_LOCK_KEY)
        .execute(&mut *admin)
        .await
        .expect("hold the routing lock");
    std::fs::write(route.inbox.join(".o-2.tmp"), "<order><id>2</id></order>").expect("write");
    std::fs::rename(route.inbox.join(".o-2.tmp"), route.inbox.join("o-2.xml")).expect("rename");
    let claimed_by = |id: uuid::Uuid| format!(".mbx-claimed-{}", id.simple());
    wait_for("the file claimed", Duration::from_secs(30), || async {
        std::fs::read_dir(&route.inbox)
            .expect("inbox")
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains(".mbx-claimed-"))
    })
    .await;
    let names: Vec<String> = std::fs::read_dir(&route.inbox)
        .expect("inbox")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    sqlx::query("ROLLBACK")
        .execute(&mut *admin)
        .await
        .expect("rollback");
    assert!(
        names.iter().any(|n| n.ends_with(&claimed_by(second))),
        "claimed under the new id {second}, not the dead {first}: {names:?}"
    );
    wait_for("the file delivered", Duration::from_secs(30), || async {
        mbx_e2e::files_in(&route.outbox, "xml").len() == 2
    })
    .await;
    drop(host);
}

/// `--claim-batch N` caps what a send port's loop claims at a time (`mbx bench --batch`
/// starts its hosts with it, so every peer works in the same batches).
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn the_claim_batch_caps_what_a_port_claims(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let mut port = SendPortSpec::new("slow", "null:slow")
        .with_filter("exists(Order.Id)")
        .with_state(InitialState::Started);
    port.settings.insert("delay".into(), "300ms".into());
    mbx.send_port_create(&port).await.expect("send port");
    let batch = (0..50)
        .map(|i| {
            let mut ctx = Context::new();
            ctx.promote("Order.Id", Value::Integer(i)).expect("promote");
            NewMessage::new("x", "text/plain", ctx)
        })
        .collect();
    mbx.publish(&Publisher::default(), batch)
        .await
        .expect("publish");
    let url = database_url(&pool);
    let mut args = mbx_e2e::FAST_HOST.to_vec();
    args.extend(["--claim-batch", "5"]);
    let _host = start_host(&url, &args);
    // a batch at the endpoint and the one before it being recorded: at most two
    let mut most = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while mbx.stats().await.expect("stats").spool_messages > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "delivered within the deadline"
        );
        let claimed = mbx_e2e::count(
            &pool,
            "SELECT count(*) FROM deliveries WHERE claimed_by IS NOT NULL",
        )
        .await;
        most = most.max(claimed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        (1..=10).contains(&most),
        "at most two batches of 5 claimed at once, saw {most}"
    );
}

#[test]
fn a_claim_batch_out_of_range_is_refused() {
    let out = Command::new(mbx_e2e::bin("mbx-host"))
        .args(["--claim-batch", "0"])
        .output()
        .expect("run mbx-host");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--claim-batch"), "{err}");
}
