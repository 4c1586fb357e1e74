//! Change in place (`mbx send-port|receive-location|send-port-group|host update`): one
//! transaction, checked as at creation; the backlog, the state and an ordered port's
//! sequence stay; running hosts pick the change up without a restart; what cannot change
//! in place is refused with the reason and changes nothing.

use std::time::Duration;

use mbx_e2e::{
    bodies_in, count, database_url, files_in, lines_of, messagebox, start_host, wait_for,
    wait_for_alive, Mbx, FAST_HOST,
};
use sqlx::PgPool;

fn publish(cli: &Mbx, region: &str, n: usize) {
    for i in 0..n {
        cli.ok(&[
            "message",
            "publish",
            "--promote",
            &format!("Order.Region={region}"),
            "--property",
            &format!("Order.N={i}"),
        ]);
    }
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_port_changes_address_and_filter_with_its_backlog_and_state_kept(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();
    cli.ok(&[
        "send-port",
        "create",
        "eu",
        "--address",
        &format!("file://{}/%MessageID%.txt", first.display()),
        "--filter",
        "Order.Region == \"EU\"",
    ]);
    // a stopped port collects a backlog
    publish(&cli, "EU", 10);
    let before = cli.json(&["send-port", "show", "eu"]);
    assert_eq!(before["counters"]["backlog"], 10);

    // the address changes in place: the backlog and the state (stopped) stay
    let changed = cli.json(&[
        "send-port",
        "update",
        "eu",
        "--address",
        &format!("file://{}/%MessageID%.txt", second.display()),
        "--retry-count",
        "7",
    ]);
    let fields: Vec<&str> = changed["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["address", "retry_count"], "{changed}");
    let after = cli.json(&["send-port", "show", "eu"]);
    assert_eq!(after["port"]["state"], "stopped");
    assert_eq!(after["port"]["retry_count"], 7);
    assert_eq!(after["counters"]["backlog"], 10);
    // the same again changes nothing
    let out = cli.ok(&["send-port", "update", "eu", "--retry-count", "7"]);
    assert!(out.contains("nothing changed"), "{out}");

    // started on a running host: the backlog goes to the new address
    let _host = start_host(&url, FAST_HOST);
    wait_for_alive(&mbx, 1).await;
    cli.ok(&["send-port", "start", "eu"]);
    wait_for(
        "the backlog at the new address",
        Duration::from_secs(30),
        || async { files_in(&second, "txt").len() == 10 },
    )
    .await;
    assert!(files_in(&first, "txt").is_empty());

    // while it runs: a new address is picked up without a restart
    let third = dir.path().join("third");
    std::fs::create_dir_all(&third).unwrap();
    cli.ok(&[
        "send-port",
        "update",
        "eu",
        "--address",
        &format!("file://{}/%MessageID%.txt", third.display()),
    ]);
    // and a new filter routes the publishes after it, never the ones before
    cli.ok(&[
        "send-port",
        "update",
        "eu",
        "--filter",
        "Order.Region == \"US\"",
    ]);
    publish(&cli, "EU", 3);
    publish(&cli, "US", 4);
    wait_for(
        "the US orders at the third address",
        Duration::from_secs(30),
        || async { files_in(&third, "txt").len() == 4 },
    )
    .await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM suspended_items WHERE kind = 'routing-failure'"
        )
        .await,
        3,
        "the EU orders after the filter change match nothing"
    );
    assert_eq!(files_in(&second, "txt").len(), 10);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_ordered_port_keeps_its_sequence_and_does_not_turn_unordered_with_a_backlog(
    pool: PgPool,
) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.log");
    let moved = dir.path().join("moved.log");
    cli.ok(&[
        "send-port",
        "create",
        "ledger",
        "--ordered",
        "--address",
        &format!("file://{}", ledger.display()),
        "--set",
        "append=true",
        "--set",
        "records=true",
        "--filter",
        "Order.Region == \"EU\"",
    ]);
    publish(&cli, "EU", 5);
    // ordered → unordered with a backlog: refused, with the reason and what to do
    let line = cli.fails(&["send-port", "update", "ledger", "--ordered", "false"], 1);
    assert!(
        line.contains("5 waiting") && line.contains("ordered → unordered"),
        "{line}"
    );
    let show = cli.json(&["send-port", "show", "ledger"]);
    assert_eq!(show["port"]["ordered"], true, "nothing changed");
    // the endpoint changes in place: the order and the sequence go on
    cli.ok(&[
        "send-port",
        "update",
        "ledger",
        "--address",
        &format!("file://{}", moved.display()),
    ]);
    publish(&cli, "EU", 5);
    let _host = start_host(&url, FAST_HOST);
    wait_for_alive(&mbx, 1).await;
    cli.ok(&["send-port", "start", "ledger"]);
    wait_for(
        "ten ordered lines at the new endpoint",
        Duration::from_secs(30),
        || async { moved.exists() && lines_of(&moved).len() == 10 },
    )
    .await;
    // each record: "#mbx Sequence=N Epoch=E Length=L" (the bodies are empty)
    let sequences: Vec<i64> = lines_of(&moved)
        .iter()
        .filter_map(|l| l.strip_prefix("#mbx Sequence="))
        .map(|rest| rest.split(' ').next().unwrap_or("").parse().unwrap_or(-1))
        .collect();
    assert_eq!(sequences.len(), 10);
    let mut sorted = sequences.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sequences, sorted, "in order, once each: {sequences:?}");
    assert!(!ledger.exists());
    // drained, it may turn unordered
    wait_for("drained", Duration::from_secs(10), || async {
        count(&pool, "SELECT count(*) FROM deliveries").await == 0
    })
    .await;
    let before = count(&pool, "SELECT epoch FROM leases WHERE port_id IS NOT NULL").await;
    assert!(before >= 1, "the port was owned: epoch {before}");
    cli.ok(&["send-port", "update", "ledger", "--ordered", "false"]);
    // ordered again, it goes on from its epoch: an epoch never goes back
    cli.ok(&["send-port", "update", "ledger", "--ordered"]);
    let show = cli.json(&["send-port", "show", "ledger"]);
    // (the running host may already own it again, one epoch on)
    let now = show["lease"]["epoch"].as_i64().unwrap_or(0);
    assert!(now >= before, "epoch {before} → {now}: {show}");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn locations_groups_and_hosts_change_in_place(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let dir = tempfile::tempdir().unwrap();
    let (in1, in2, out) = (
        dir.path().join("in1"),
        dir.path().join("in2"),
        dir.path().join("out"),
    );
    for d in [&in1, &in2, &out] {
        std::fs::create_dir_all(d).unwrap();
    }
    cli.ok(&["receive-port", "create", "orders"]);
    cli.ok(&[
        "receive-location",
        "create",
        "orders-in",
        "--port",
        "orders",
        "--address",
        &format!("file://{}/*.xml", in1.display()),
    ]);
    cli.ok(&["receive-location", "enable", "orders-in"]);
    cli.ok(&[
        "send-port",
        "create",
        "out",
        "--start",
        "--address",
        &format!("file://{}/%MessageID%.xml", out.display()),
    ]);
    cli.ok(&[
        "send-port-group",
        "create",
        "all",
        "--start",
        "--filter",
        "Order.Region == \"EU\"",
    ]);
    cli.ok(&["send-port-group", "add", "all", "out"]);
    let _host = start_host(&url, FAST_HOST);
    wait_for_alive(&mbx, 1).await;

    // the location moves to another folder and promotes from the body; its host restarts it
    let changed = cli.ok(&[
        "receive-location",
        "update",
        "orders-in",
        "--address",
        &format!("file://{}/*.xml", in2.display()),
        "--pipeline",
        "xml",
        "--promote",
        "Order.Region=/order/region",
    ]);
    assert!(
        changed.contains("address:") && changed.contains("pipeline: passthru → xml"),
        "{changed}"
    );
    std::fs::write(in2.join("a.xml"), "<order><region>EU</region></order>").unwrap();
    wait_for(
        "the order through the moved location and the group",
        Duration::from_secs(30),
        || async { bodies_in(&out, "xml").len() == 1 },
    )
    .await;
    // --ordered changes only on a disabled location
    let line = cli.fails(&["receive-location", "update", "orders-in", "--ordered"], 1);
    assert!(line.contains("disable"), "{line}");
    // a bad promotion is refused at update as at create, nothing changed
    let line = cli.fails(
        &[
            "receive-location",
            "update",
            "orders-in",
            "--promote",
            "mbx.ReceivePortName=/x",
        ],
        2,
    );
    assert!(line.contains("--promote"), "{line}");

    // the group's filter changes in place (a routing change)
    cli.ok(&[
        "send-port-group",
        "update",
        "all",
        "--filter",
        "Order.Region == \"US\"",
    ]);
    std::fs::write(in2.join("b.xml"), "<order><region>EU</region></order>").unwrap();
    wait_for(
        "the EU order unrouted now",
        Duration::from_secs(30),
        || async {
            count(
                &pool,
                "SELECT count(*) FROM suspended_items WHERE kind = 'routing-failure'",
            )
            .await
                == 1
        },
    )
    .await;
    let line = cli.fails(
        &[
            "send-port-group",
            "update",
            "all",
            "--filter",
            "Order.Region ==",
        ],
        2,
    );
    assert!(line.contains("--filter"), "{line}");

    // the host's thresholds
    let out = cli.ok(&[
        "host",
        "update",
        "default",
        "--throttle-publish",
        "1234",
        "--tracking",
        "all",
    ]);
    assert!(out.contains("throttle_publish: 50000 → 1234"), "{out}");
    let hosts = cli.json(&["host", "list"]);
    assert_eq!(hosts[0]["throttle_publish"], 1234);
    assert_eq!(hosts[0]["tracking"], "all");
    cli.fails(&["host", "update", "default", "--throttle-publish", "0"], 2);
    cli.fails(&["host", "update", "nope", "--throttle-publish", "10"], 2);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn bad_updates_change_nothing(pool: PgPool) {
    let _mbx = messagebox(&pool).await;
    let cli = Mbx::new(database_url(&pool));
    cli.ok(&[
        "send-port",
        "create",
        "eu",
        "--address",
        "file:///tmp/mbx-eu/%MessageID%.xml",
    ]);
    let before = cli.json(&["send-port", "show", "eu"]);
    for (args, says) in [
        (vec!["--filter", "Order.Region =="], "--filter"),
        (vec!["--address", "gopher://x"], "--address"),
        (vec!["--set", "bogus=1"], "--set"),
        (vec!["--host", "nope"], "host 'nope' does not exist"),
        (vec!["--stop-on-failure"], "--stop-on-failure"),
        (vec!["--retry-interval", "soon"], "--retry-interval"),
        // a file port cannot answer: refused as solicit-response
        (
            vec!["--solicit-response"],
            "cannot answer a solicit-response port",
        ),
        (
            vec!["--address", "mbx://nowhere/orders"],
            "group link 'nowhere'",
        ),
    ] {
        let mut all = vec!["send-port", "update", "eu"];
        all.extend(args.iter().copied());
        let line = cli.fails(&all, 2);
        assert!(line.contains(says), "{args:?}: {line}");
    }
    assert_eq!(
        cli.json(&["send-port", "show", "eu"]),
        before,
        "nothing changed"
    );
}
