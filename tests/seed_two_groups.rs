//! The seed scenario across two groups: the OrderBroker flow promotes `Order.ManagerId`;
//! manager A is served in the broker's group; manager B is moved to the manager group by
//! configuration alone — `mbx export --application manager-b` → `mbx apply` there, a link,
//! and `mbx send-port update manager-b --address mbx://managers/from-broker` in place (its
//! backlog moves with it) — while the forwarding host is killed -9 and the manager
//! group's PostgreSQL (a private cluster) is restarted. Every order reaches exactly its
//! manager: 0 lost, 0 misrouted, 0 duplicates. And the same through an ordered forwarding
//! port: in order at the far end.

use std::time::Duration;

use mbx_e2e::pg_cluster::PgCluster;
use mbx_e2e::{
    database_url, drop_orders, files_in, lines_of, messagebox, received_json, start_host, wait_for,
    wait_for_alive, Mbx, FAST_HOST,
};
use mbx_messagebox::publish::{NewMessage, Publisher};
use mbx_messagebox::{Context, MessageBox, Value};
use sqlx::PgPool;

/// The manager group: a private cluster (so it can be restarted), initialised as group
/// `managers`.
async fn manager_group() -> (PgCluster, String, MessageBox) {
    let cluster = PgCluster::start();
    let url = cluster.url("postgres");
    let mbx = MessageBox::connect(&url, 4).await.expect("connect");
    mbx.init(Some("managers")).await.expect("init");
    (cluster, url, mbx)
}

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(f)
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn manager_b_moves_to_another_group_by_configuration_alone(pool: PgPool) {
    let broker = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let (cluster, managers_url, managers) = manager_group().await;
    let there = Mbx::new(managers_url.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let inbox = dir.path().join("broker");
    let (a, b) = (dir.path().join("manager-a"), dir.path().join("manager-b"));
    for d in [&inbox, &a, &b] {
        std::fs::create_dir_all(d).unwrap();
    }

    // the broker group as it starts: both managers served here
    cli.ok(&["receive-port", "create", "OrderBroker"]);
    cli.ok(&[
        "receive-location",
        "create",
        "OrderBroker",
        "--port",
        "OrderBroker",
        "--address",
        &format!("file://{}/*.json", inbox.display()),
        "--pipeline",
        "json",
        "--promote",
        "Order.ManagerId=/managerId",
    ]);
    cli.ok(&["receive-location", "enable", "OrderBroker"]);
    cli.ok(&[
        "send-port",
        "create",
        "manager-a",
        "--start",
        "--address",
        &format!("file://{}/%MessageID%.json", a.display()),
        "--filter",
        "Order.ManagerId == \"A\"",
    ]);
    // manager B's application: its port, and the receive port its orders will come in by
    // once it lives in its own group
    cli.ok(&[
        "receive-port",
        "create",
        "from-broker",
        "--application",
        "manager-b",
    ]);
    cli.ok(&[
        "send-port",
        "create",
        "manager-b",
        "--start",
        "--application",
        "manager-b",
        "--address",
        &format!("file://{}/%MessageID%.json", b.display()),
        "--filter",
        "Order.ManagerId == \"B\"",
    ]);
    let mut brokers = vec![start_host(&url, FAST_HOST), start_host(&url, FAST_HOST)];
    let _manager_host = start_host(&managers_url, FAST_HOST);
    wait_for_alive(&broker, 2).await;
    wait_for_alive(&managers, 1).await;

    let mut for_a = drop_orders(&inbox, "A", 0..20);
    let mut for_b = drop_orders(&inbox, "B", 0..20);
    wait_for(
        "phase 1 delivered in the broker group",
        Duration::from_secs(60),
        || async { files_in(&a, "json").len() >= 20 && files_in(&b, "json").len() >= 20 },
    )
    .await;

    // the move, by configuration alone: the application as it runs here, applied there
    let file = dir.path().join("manager-b.yaml");
    let f = file.to_str().unwrap().to_owned();
    cli.ok(&["export", "--application", "manager-b", "-f", &f]);
    cli.ok(&["send-port", "stop", "manager-b"]);
    for_b.extend(drop_orders(&inbox, "B", 20..50)); // a backlog for manager B
    let applied = there.ok(&["apply", "-f", &f]);
    assert!(
        applied.contains("create receive port 'from-broker'")
            && applied.contains("create send port 'manager-b'"),
        "{applied}"
    );
    cli.ok(&[
        "group",
        "link",
        "add",
        "managers",
        "--target-url",
        &managers_url,
    ]);
    wait_for(
        "manager B's backlog waiting in the broker group",
        Duration::from_secs(30),
        || async {
            let s = broker.stats().await.unwrap();
            s.ports
                .iter()
                .any(|p| p.name == "manager-b" && p.backlog == 30)
        },
    )
    .await;
    let moved = cli.ok(&[
        "send-port",
        "update",
        "manager-b",
        "--address",
        "mbx://managers/from-broker",
    ]);
    assert!(moved.contains("address:"), "{moved}");
    assert_eq!(
        cli.json(&["send-port", "show", "manager-b"])["counters"]["backlog"],
        30,
        "the backlog moved with the port"
    );
    cli.ok(&["send-port", "start", "manager-b"]);

    // more orders while the forwarding host dies and the manager group's server restarts
    for_a.extend(drop_orders(&inbox, "A", 20..60));
    for_b.extend(drop_orders(&inbox, "B", 50..110));
    wait_for("some forwarded", Duration::from_secs(60), || async {
        files_in(&b, "json").len() > 25
    })
    .await;
    brokers[0].0.kill().expect("kill -9 a broker host");
    let _ = brokers[0].0.wait();
    let server = blocking(move || {
        cluster.stop("fast");
        cluster.start_again();
        cluster
    });
    for_b.extend(drop_orders(&inbox, "B", 110..130));
    let cluster = server.await.expect("restart");
    brokers.push(start_host(&url, FAST_HOST));

    wait_for(
        "every order at its manager",
        Duration::from_secs(120),
        || async {
            files_in(&a, "json").len() >= for_a.len() && files_in(&b, "json").len() >= for_b.len()
        },
    )
    .await;
    wait_for("both groups drained", Duration::from_secs(60), || async {
        let (s, t) = (broker.stats().await, managers.stats().await);
        matches!((s, t), (Ok(s), Ok(t)) if s.spool_messages == 0 && t.spool_messages == 0)
    })
    .await;
    assert_eq!(
        received_json(&a),
        for_a,
        "manager A: exactly its own orders"
    );
    assert_eq!(
        received_json(&b),
        for_b,
        "manager B: exactly its own orders, across the move"
    );
    assert_eq!(
        files_in(&a, "json").len(),
        for_a.len(),
        "manager A: no duplicate"
    );
    assert_eq!(
        files_in(&b, "json").len(),
        for_b.len(),
        "manager B: no duplicate (each message of the target group writes its own file)"
    );
    let (suspended_here, suspended_there) = (
        broker.stats().await.unwrap().suspended_total,
        managers.stats().await.unwrap().suspended_total,
    );
    assert_eq!(
        (suspended_here, suspended_there),
        (0, 0),
        "nothing misrouted"
    );
    drop(cluster);
}

fn ordered_message(i: usize) -> NewMessage {
    let mut context = Context::new();
    context
        .promote("Ledger.Account", Value::String("L1".into()))
        .unwrap();
    NewMessage::new(format!("entry-{i:05}\n"), "text/plain", context)
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_ordered_forwarding_port_arrives_in_order_through_kill_9(pool: PgPool) {
    let broker = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let (cluster, managers_url, managers) = manager_group().await;
    let there = Mbx::new(managers_url.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = dir.path().join("ledger.log");
    there.ok(&["receive-port", "create", "from-broker"]);
    there.ok(&[
        "send-port",
        "create",
        "ledger",
        "--start",
        "--ordered",
        "--address",
        &format!("file://{}", ledger.display()),
        "--set",
        "append=true",
        "--filter",
        "mbx.ReceivePortName == \"from-broker\"",
    ]);
    cli.ok(&[
        "group",
        "link",
        "add",
        "managers",
        "--target-url",
        &managers_url,
    ]);
    cli.ok(&[
        "send-port",
        "create",
        "to-ledger",
        "--start",
        "--ordered",
        "--address",
        "mbx://managers/from-broker",
        "--filter",
        "Ledger.Account == \"L1\"",
    ]);
    let mut hosts = [start_host(&url, FAST_HOST), start_host(&url, FAST_HOST)];
    let _manager_host = start_host(&managers_url, FAST_HOST);
    wait_for_alive(&broker, 2).await;
    let total = 300;
    for chunk in (0..total).collect::<Vec<_>>().chunks(50) {
        broker
            .publish(
                &Publisher::default(),
                chunk.iter().map(|&i| ordered_message(i)).collect(),
            )
            .await
            .expect("publish");
    }
    wait_for(
        "some forwarded in order",
        Duration::from_secs(60),
        || async { lines_of(&ledger).len() > 40 },
    )
    .await;
    // kill the owner of the ordered forwarding port
    let owner = mbx_e2e::lease_owner(&pool, "to-ledger").await.map(|o| o.0);
    let mut victim = None;
    for (i, h) in hosts.iter().enumerate() {
        if mbx_e2e::instance_of_pid(&pool, h.pid()).await.map(|x| x.0) == owner {
            victim = Some(i);
        }
    }
    let victim = victim.expect("one of the two hosts owns the port");
    hosts[victim].0.kill().expect("kill -9 the owner");
    let _ = hosts[victim].0.wait();
    wait_for(
        "every entry at the far end",
        Duration::from_secs(120),
        || async { lines_of(&ledger).len() >= total },
    )
    .await;
    wait_for("drained", Duration::from_secs(30), || async {
        managers.stats().await.is_ok_and(|s| s.spool_messages == 0)
            && broker.stats().await.is_ok_and(|s| s.spool_messages == 0)
    })
    .await;
    let lines = lines_of(&ledger);
    let want: Vec<String> = (0..total).map(|i| format!("entry-{i:05}")).collect();
    assert_eq!(lines, want, "in order, each once, at the far end");
    drop(cluster);
}
