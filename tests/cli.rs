//! The `mbx` CLI, run as the real binary against a fresh database per test: prepare state
//! → run the binary → check exit code and output → check the MessageBox.

use mbx_e2e::{bin, database_url, Mbx};
use serde_json::Value as Json;
use sqlx::PgPool;

/// A fresh, empty database with `mbx init` run on it by the binary.
fn init(pool: &PgPool) -> Mbx {
    let mbx = Mbx::new(database_url(pool));
    mbx.ok(&["init"]);
    mbx
}

fn port_stats<'a>(stats: &'a Json, port: &str) -> &'a Json {
    stats["ports"]
        .as_array()
        .expect("ports array")
        .iter()
        .find(|p| p["name"] == port)
        .unwrap_or_else(|| panic!("no port {port} in {stats}"))
}

/// Counts of every configuration and message table: "nothing changed" means equal counts.
async fn snapshot(pool: &PgPool) -> Vec<i64> {
    let mut out = Vec::new();
    for t in [
        "hosts",
        "properties",
        "send_ports",
        "send_port_groups",
        "send_port_group_members",
        "subscriptions",
        "messages",
        "deliveries",
        "suspended_items",
        "receive_ports",
        "receive_locations",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {t}"))
            .fetch_one(pool)
            .await
            .expect("count");
        out.push(n);
    }
    let v: i64 = sqlx::query_scalar("SELECT version FROM routing_state")
        .fetch_one(pool)
        .await
        .expect("version");
    out.push(v);
    out
}

#[sqlx::test(migrations = false)]
async fn a_new_user_routes_a_message_and_resumes_a_routing_failure(pool: PgPool) {
    let mbx = Mbx::new(database_url(&pool));
    let first = mbx.ok(&["init"]);
    assert!(first.contains("created host 'default'"), "{first}");
    let second = mbx.ok(&["init"]);
    assert!(second.contains("schema is current"), "{second}");
    assert!(
        !second.contains("created host"),
        "init twice creates nothing: {second}"
    );

    let out = mbx.ok(&[
        "send-port",
        "create",
        "eu",
        "--address",
        "file:///tmp/eu/%MessageID%.xml",
        "--filter",
        "Order.Region == \"EU\"",
    ]);
    assert!(out.contains("(stopped)"), "{out}");

    let dir = tempfile::tempdir().expect("tempdir");
    let order = dir.path().join("order.xml");
    std::fs::write(&order, "<order region='EU'/>").expect("write order");
    let order = order.to_str().expect("utf-8 path");
    mbx.ok(&[
        "message",
        "publish",
        "--promote",
        "Order.Region=EU",
        "--file",
        order,
    ]);
    let stats = mbx.json(&["stats"]);
    let eu = port_stats(&stats, "eu");
    assert_eq!(eu["backlog"], 1, "{stats}");
    assert_eq!(eu["state"], "stopped");
    assert_eq!(eu["in_flight"], 0);
    assert_eq!(stats["spool_messages"], 1);

    let out = mbx.ok(&[
        "message",
        "publish",
        "--promote",
        "Order.Region=US",
        "--file",
        order,
    ]);
    assert!(out.contains("no subscriber matched"), "{out}");
    let items = mbx.json(&["suspended", "list"]);
    let items = items.as_array().expect("array");
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["kind"], "routing-failure");
    let reason = items[0]["reason"].as_str().expect("reason");
    assert!(
        reason.contains("Order.Region=US"),
        "the reason names the promoted properties: {reason}"
    );
    let id = items[0]["id"].to_string();

    mbx.ok(&[
        "send-port",
        "create",
        "us",
        "--address",
        "file:///tmp/us/%MessageID%.xml",
        "--filter",
        "Order.Region == 'US'",
    ]);
    let out = mbx.ok(&["suspended", "resume", &id]);
    assert!(out.contains("resumed 1"), "{out}");
    let stats = mbx.json(&["stats"]);
    assert_eq!(port_stats(&stats, "us")["backlog"], 1, "{stats}");
    assert_eq!(stats["suspended_total"], 0);
    // idempotent (issue 12): a runbook retrying the resume succeeds, says the item was
    // already resumed, and changes nothing; an id that never existed is still refused
    let before = snapshot(&pool).await;
    let out = mbx.ok(&["suspended", "resume", &id]);
    assert!(out.contains("already resumed"), "{out}");
    let out = mbx.ok(&["suspended", "terminate", &id]);
    assert!(out.contains("already resumed"), "{out}");
    assert_eq!(snapshot(&pool).await, before);
    let err = mbx.fails(&["suspended", "resume", "999999"], 2);
    assert!(err.contains("does not exist"), "{err}");
    // issue 13: tracking an id this MessageBox never saw is an error, not an empty table
    let err = mbx.fails(&["track", "0192f7a4-0c1e-7b5e-9a2f-3d4c5b6a7980"], 2);
    assert!(err.contains("no message 0192f7a4"), "{err}");

    let err = mbx.fails(
        &[
            "send-port",
            "create",
            "x",
            "--address",
            "file:///tmp/x/%MessageID%",
            "--filter",
            "Order.Region ==",
        ],
        2,
    );
    assert!(err.contains("column 16"), "names the column: {err}");
    assert!(err.contains("--filter"), "names the argument: {err}");
}

#[sqlx::test(migrations = false)]
async fn bad_input_exits_2_with_one_line_and_changes_nothing(pool: PgPool) {
    let mbx = init(&pool);
    mbx.ok(&["property", "create", "Order.Amount", "--type", "integer"]);
    mbx.ok(&["receive-port", "create", "orders"]);
    mbx.ok(&[
        "send-port",
        "create",
        "eu",
        "--address",
        "file:///tmp/eu/%MessageID%.xml",
        "--filter",
        "Order.Amount > 1",
    ]);
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "send-port",
                "create",
                "a",
                "--address",
                "file:///t/x",
                "--retry-interval",
                "5 parsecs",
            ],
            "--retry-interval",
        ),
        (
            &[
                "send-port",
                "create",
                "a",
                "--address",
                "file:///t/x",
                "--host",
                "nohost",
            ],
            "host 'nohost' does not exist",
        ),
        (
            &["send-port", "create", "a", "--address", "ftp://x/y"],
            "--address: no adapter for ftp:// in this build",
        ),
        // what an adapter cannot run is refused at creation, by the adapter that would
        // run it: a secret in an address, a wildcard to publish to, a mail without server
        (
            &[
                "send-port",
                "create",
                "a",
                "--address",
                "amqp://guest:guest@localhost/orders?queue=q",
            ],
            "a password is never part of the address",
        ),
        (
            &["send-port", "create", "a", "--address", "mqtt://localhost:1883/t/%2B"],
            "has a wildcard",
        ),
        (
            &["send-port", "create", "a", "--address", "mailto:ops@example.com"],
            "smtp_server",
        ),
        (
            &["send-port", "create", "a", "--address", "mbx://eu/orders"],
            "group link 'eu' does not exist",
        ),
        (
            &["send-port", "create", "a", "--address", "mbx://eu"],
            "RECEIVE_PORT",
        ),
        (
            &["send-port", "update", "nope", "--retry-count", "1"],
            "send port 'nope' does not exist",
        ),
        (
            &["send-port", "update", "nope"],
            "no change given",
        ),
        (
            &["send-port", "create", "a", "--address", "file:///tmp/x/%Bogus%.xml"],
            "--address",
        ),
        (
            &[
                "send-port",
                "create",
                "a",
                "--address",
                "file:///tmp/x/%MessageID%.xml",
                "--set",
                "append=maybe",
            ],
            "--set: setting append",
        ),
        (
            &[
                "send-port",
                "create",
                "a",
                "--address",
                "file:///tmp/x/%MessageID%.xml",
                "--set",
                "bogus=1",
            ],
            "--set: unknown setting \"bogus\"",
        ),
        (
            &[
                "send-port",
                "create",
                "a",
                "--address",
                "file:///tmp/x/%MessageID%.xml",
                "--backup-address",
                "https://partner.example/in",
                "--set",
                "append=true",
            ],
            "--set",
        ),
        (
            &[
                "send-port",
                "create",
                "a",
                "--address",
                "file:///t/%MessageID%.xml",
                "--solicit-response",
            ],
            "--address: 'file:///t/%MessageID%.xml' cannot answer a solicit-response port",
        ),
        (
            &[
                "send-port",
                "create",
                "a",
                "--address",
                "http://127.0.0.1:1/q",
                "--solicit-response",
                "--ordered",
            ],
            "--solicit-response: not available on an ordered port",
        ),
        (
            &[
                "send-port",
                "create",
                "a",
                "--address",
                "http://127.0.0.1:1/q",
                "--set",
                "reply_statuses=4xx",
            ],
            "--set reply_statuses: only a --solicit-response port",
        ),
        (
            &[
                "send-port",
                "create",
                "a",
                "--address",
                "http://127.0.0.1:1/q",
                "--solicit-response",
                "--set",
                "copy_properties=Order",
            ],
            "copy_properties",
        ),
        (
            &[
                "receive-location",
                "create",
                "in",
                "--port",
                "orders",
                "--address",
                "http:///orders",
                "--set",
                "timeout=5s",
            ],
            "--set timeout: receive port 'orders' is one-way",
        ),
        (
            &[
                "receive-location",
                "create",
                "in",
                "--port",
                "orders",
                "--address",
                "mqtt://localhost:1883/orders/%23/x",
            ],
            "# the whole last level",
        ),
        (
            &[
                "receive-location",
                "create",
                "in",
                "--port",
                "orders",
                "--address",
                "http://example.com/orders",
            ],
            "empty authority",
        ),
        (
            &[
                "receive-location",
                "create",
                "in",
                "--port",
                "orders",
                "--address",
                "http:///orders",
                "--set",
                "bogus=1",
            ],
            "--set: unknown setting",
        ),
        (
            &[
                "receive-location",
                "create",
                "in",
                "--port",
                "orders",
                "--address",
                "http:///orders",
                "--pipeline",
                "json",
                "--promote",
                "mbx.ReceivePortName=/rp",
            ],
            "--promote: setting --promote=\"mbx.ReceivePortName=/rp\": mbx.ReceivePortName is set by the engine",
        ),
        (
            &[
                "receive-location",
                "create",
                "in",
                "--port",
                "orders",
                "--address",
                "http:///orders",
                "--set",
                "bearer_token=hunter2",
            ],
            "--set: setting bearer_token: give a reference, env:NAME or file:PATH",
        ),
        (
            &[
                "send-port",
                "create",
                "a",
                "--address",
                "file:///t/x",
                "--filter",
                "Order.Amount > 'x'",
            ],
            "declared integer",
        ),
        (
            &[
                "send-port",
                "create",
                "a",
                "--address",
                "file:///t/x",
                "--set",
                "novalue",
            ],
            "--set",
        ),
        (
            &[
                "send-port",
                "create",
                "a",
                "--address",
                "file:///t/x",
                "--tracking",
                "verbose",
            ],
            "--tracking",
        ),
        (
            &[
                "send-port",
                "create",
                "a",
                "--address",
                "file:///t/x",
                "--retry-backoff",
                "linear",
            ],
            "--retry-backoff",
        ),
        (
            &[
                "send-port",
                "create",
                "a",
                "--dynamic",
                "--allow-address",
                "file:///out/",
                "--ordered",
            ],
            "cannot be ordered",
        ),
        (
            &[
                "send-port",
                "create",
                "a",
                "--address",
                "file:///t/x",
                "--ordered",
                "--backup-address",
                "file:///b/x",
            ],
            "backup",
        ),
        (
            &[
                "send-port",
                "create",
                "a",
                "--address",
                "file:///t/x",
                "--ordered-by",
                "Customer",
            ],
            "--ordered-by",
        ),
        (
            &[
                "send-port",
                "create",
                "a",
                "--address",
                "file:///t/x",
                "--ordered-by",
                "Order.Customer",
                "--ordered-buckets",
                "0",
            ],
            "--ordered-buckets",
        ),
        (
            &[
                "send-port",
                "create",
                "a",
                "--address",
                "file:///t/x",
                "--ordered-buckets",
                "8",
            ],
            "--ordered-by",
        ),
        (
            &[
                "send-port",
                "create",
                "a",
                "--address",
                "file:///t/x",
                "--ordered-by",
                "Order.Customer",
                "--set",
                "append=true",
            ],
            "append",
        ),
        (
            &[
                "send-port",
                "create",
                "bad name",
                "--address",
                "file:///t/x",
            ],
            "send port name",
        ),
        (
            &["send-port", "create", "eu", "--address", "file:///t/x"],
            "already exists",
        ),
        (
            &["send-port", "start", "nope"],
            "send port 'nope' does not exist",
        ),
        (
            &["send-port-group", "add", "nogroup", "eu"],
            "send port group 'nogroup' does not exist",
        ),
        (&["property", "create", "Region"], "namespace"),
        (
            &["property", "create", "Order.X", "--type", "float"],
            "--type",
        ),
        (
            &["message", "publish", "--promote", "Order.Amount=abc"],
            "not a valid integer",
        ),
        (
            &["message", "publish", "--promote", "mbx.MessageId=x"],
            "mbx namespace",
        ),
        (
            &["message", "publish", "--promote", "NoEquals"],
            "NAME=VALUE",
        ),
        (&["suspended", "list", "--kind", "broken"], "--kind"),
        (
            &["suspended", "list", "--older-than", "soon"],
            "--older-than",
        ),
        (&["suspended", "show", "abc"], "ID"),
        (&["suspended", "terminate"], "give an item id or a filter"),
        (&["track", "not-a-uuid"], "MESSAGE_ID"),
        (&["send-port", "frobnicate"], "unrecognized subcommand"),
        (
            &[
                "receive-location",
                "create",
                "in",
                "--port",
                "noport",
                "--address",
                "file:///in/*.xml",
            ],
            "receive port 'noport' does not exist",
        ),
        (
            &[
                "receive-location",
                "create",
                "in",
                "--port",
                "orders",
                "--address",
                "file:///in/*.xml",
                "--pipeline",
                "csv",
            ],
            "--pipeline",
        ),
        (
            &[
                "receive-location",
                "create",
                "in",
                "--port",
                "orders",
                "--address",
                "file:///in/*.xml",
                "--max-message-size",
                "huge",
            ],
            "--max-message-size",
        ),
        (
            &[
                "receive-location",
                "create",
                "in",
                "--port",
                "orders",
                "--address",
                "file:///in/*.json",
                "--pipeline",
                "json",
                "--promote",
                "Order.Region=region",
            ],
            "start with '/'",
        ),
        (
            &[
                "receive-location",
                "create",
                "in",
                "--port",
                "orders",
                "--address",
                "file:///in/*.xml",
                "--promote",
                "Order.Region=/r",
            ],
            "passthru",
        ),
        (
            &[
                "receive-location",
                "create",
                "in",
                "--port",
                "orders",
                "--address",
                "http:///orders",
                "--ordered",
            ],
            "--ordered",
        ),
        (
            &["receive-location", "enable", "nope"],
            "receive location 'nope' does not exist",
        ),
        (&["--output", "yaml", "stats"], "--output"),
    ];
    let before = snapshot(&pool).await;
    for (args, expected) in cases {
        let line = mbx.fails(args, 2);
        assert!(
            line.contains(expected),
            "mbx {args:?}: expected '{expected}' in: {line}"
        );
        assert!(!line.contains("hunter2"), "a secret was echoed: {line}");
        assert_eq!(snapshot(&pool).await, before, "mbx {args:?} changed state");
    }
}

#[sqlx::test(migrations = false)]
async fn refusals_name_their_counts_and_force_suspends(pool: PgPool) {
    let mbx = init(&pool);
    mbx.ok(&[
        "send-port",
        "create",
        "eu",
        "--address",
        "file:///tmp/eu/%MessageID%",
        "--filter",
        "exists(Order.Region)",
    ]);
    for _ in 0..2 {
        mbx.ok(&[
            "message",
            "publish",
            "--promote",
            "Order.Region=EU",
            "--file",
            "/dev/null",
        ]);
    }
    let before = snapshot(&pool).await;
    let err = mbx.fails(&["send-port", "unenlist", "eu"], 1);
    assert!(err.contains("2 waiting deliveries"), "{err}");
    let err = mbx.fails(&["send-port", "delete", "eu"], 1);
    assert!(err.contains("2 waiting"), "{err}");
    assert_eq!(snapshot(&pool).await, before);

    let out = mbx.ok(&["send-port", "unenlist", "eu", "--force"]);
    assert!(out.contains("stopped → unenlisted"), "{out}");
    assert!(out.contains("suspended 2"), "{out}");
    let stats = mbx.json(&["stats"]);
    assert_eq!(port_stats(&stats, "eu")["suspended"], 2, "{stats}");
    assert_eq!(port_stats(&stats, "eu")["backlog"], 0);
    // unenlisted: new messages no longer route to it
    let out = mbx.ok(&[
        "message",
        "publish",
        "--promote",
        "Order.Region=EU",
        "--file",
        "/dev/null",
    ]);
    assert!(out.contains("no subscriber matched"), "{out}");
    let out = mbx.ok(&["suspended", "terminate", "--port", "eu"]);
    assert!(out.contains("terminated 2"), "{out}");
    let out = mbx.ok(&["suspended", "terminate", "--port", "eu"]);
    assert!(out.contains("terminated 0"), "idempotent: {out}");
    mbx.ok(&["send-port", "delete", "eu"]);
    assert!(mbx
        .json(&["send-port", "list"])
        .as_array()
        .expect("array")
        .is_empty());
}

#[sqlx::test(migrations = false)]
async fn groups_deliver_once_per_member_and_typed_promotion_routes(pool: PgPool) {
    let mbx = init(&pool);
    mbx.ok(&["property", "create", "Order.Amount", "--type", "integer"]);
    mbx.ok(&[
        "send-port",
        "create",
        "big",
        "--address",
        "file:///tmp/big/%MessageID%",
        "--filter",
        "Order.Amount >= 100",
    ]);
    mbx.ok(&[
        "send-port",
        "create",
        "archive",
        "--address",
        "file:///tmp/archive/%MessageID%",
    ]);
    mbx.ok(&[
        "send-port-group",
        "create",
        "all",
        "--filter",
        "exists(Order.Amount)",
    ]);
    let out = mbx.ok(&["send-port-group", "add", "all", "big", "archive"]);
    assert!(out.contains("added 2"), "{out}");
    let groups = mbx.json(&["send-port-group", "list"]);
    assert_eq!(groups[0]["members"], serde_json::json!(["archive", "big"]));

    // 150 matches big's own filter and the group: one delivery each for big and archive
    mbx.ok(&[
        "message",
        "publish",
        "--promote",
        "Order.Amount=150",
        "--file",
        "/dev/null",
    ]);
    // 50 (numeric, not string compare) only reaches the group
    mbx.ok(&[
        "message",
        "publish",
        "--promote",
        "Order.Amount=50",
        "--file",
        "/dev/null",
    ]);
    let stats = mbx.json(&["stats"]);
    assert_eq!(port_stats(&stats, "big")["backlog"], 2, "{stats}");
    assert_eq!(port_stats(&stats, "archive")["backlog"], 2, "{stats}");
    let (via_port, via_group): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE via_port), count(*) FILTER (WHERE cardinality(via_groups) = 1)
           FROM deliveries d JOIN send_ports p ON p.id = d.port_id WHERE p.name = 'big'",
    )
    .fetch_one(&pool)
    .await
    .expect("paths");
    assert_eq!(
        (via_port, via_group),
        (1, 2),
        "the 150 delivery records both paths"
    );

    let out = mbx.ok(&["send-port-group", "start", "all"]);
    assert!(out.contains("stopped → started"), "{out}");
    let out = mbx.ok(&["send-port-group", "remove", "all", "archive"]);
    assert!(out.contains("removed 1"), "{out}");
}

#[sqlx::test(migrations = false)]
async fn publish_reads_stdin_and_save_writes_the_body_back(pool: PgPool) {
    let mbx = init(&pool);
    let r = mbx.run_with_stdin(
        &[
            "message",
            "publish",
            "--promote",
            "Order.Region=XX",
            "--content-type",
            "text/plain",
        ],
        b"hello body",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let items = mbx.json(&["suspended", "list", "--kind", "routing-failure"]);
    let id = items[0]["id"].to_string();
    let shown = mbx.json(&["suspended", "show", &id]);
    assert_eq!(shown["body_size"], 10);
    assert_eq!(shown["content_type"], "text/plain");
    let dir = tempfile::tempdir().expect("tempdir");
    let to = dir.path().join("body.txt");
    mbx.ok(&[
        "suspended",
        "save",
        &id,
        "--to",
        to.to_str().expect("utf-8"),
    ]);
    assert_eq!(std::fs::read(&to).expect("saved"), b"hello body");
}

#[sqlx::test(migrations = false)]
async fn status_and_lists_answer_in_tables_and_json(pool: PgPool) {
    let mbx = init(&pool);
    mbx.ok(&["host", "create", "edi", "--throttle-publish", "100"]);
    let hosts = mbx.json(&["host", "list"]);
    let names: Vec<&str> = hosts
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|h| h["name"].as_str())
        .collect();
    assert_eq!(names, vec!["default", "edi"]);
    let table = mbx.ok(&["host", "list"]);
    assert!(table.starts_with("HOST"), "{table}");
    let status = mbx.ok(&["status"]);
    assert!(
        status.contains("default") && status.contains("spool: 0"),
        "{status}"
    );
    let status = mbx.json(&["status"]);
    assert!(status["instances"]
        .as_array()
        .expect("instances")
        .is_empty());
    mbx.ok(&["host", "delete", "edi"]);
    assert_eq!(mbx.json(&["instance", "list"]), serde_json::json!([]));
}

/// Seed 004: the database-size threshold, group-wide (`mbx group set`, shown by `mbx group
/// show`) and per host (`mbx host create|update NAME --throttle-database-size
/// SIZE|off|group`); a bad value is refused with exit 2 naming the flag, changing nothing.
#[sqlx::test(migrations = false)]
async fn the_database_size_threshold_is_set_for_the_group_and_overridden_per_host(pool: PgPool) {
    let mbx = init(&pool);
    let shown = mbx.json(&["group", "show"]);
    assert_eq!(
        shown["throttle_database_size"],
        Json::Null,
        "off by default"
    );
    assert!(shown["database_size"].as_i64().unwrap_or(0) > 0, "{shown}");
    let out = mbx.ok(&["group", "set", "--throttle-database-size", "50GB"]);
    assert!(out.contains("off → 50000000000"), "{out}");
    assert_eq!(
        mbx.json(&["group", "show"])["throttle_database_size"],
        50_000_000_000_i64
    );
    assert!(mbx.ok(&["group", "show"]).contains("50000000000 bytes"));
    mbx.ok(&[
        "host",
        "create",
        "edi",
        "--throttle-database-size",
        "512MiB",
    ]);
    mbx.ok(&[
        "host",
        "create",
        "archive",
        "--throttle-database-size",
        "off",
    ]);
    let hosts = mbx.json(&["host", "list"]);
    let of = |name: &str| {
        hosts
            .as_array()
            .expect("hosts")
            .iter()
            .find(|h| h["name"] == name)
            .map(|h| h["throttle_database_size"].clone())
            .expect("listed")
    };
    assert_eq!(of("default"), "group");
    assert_eq!(of("edi"), "536870912");
    assert_eq!(of("archive"), "off");
    let table = mbx.ok(&["host", "list"]);
    assert!(
        table.contains("THROTTLE DB SIZE") && table.contains("512.0 MiB"),
        "{table}"
    );
    let out = mbx.ok(&["host", "update", "edi", "--throttle-database-size", "group"]);
    assert!(out.contains("536870912 → group"), "{out}");
    mbx.ok(&["group", "set", "--throttle-database-size", "off"]);
    assert_eq!(
        mbx.json(&["group", "show"])["throttle_database_size"],
        Json::Null
    );

    let before = snapshot(&pool).await;
    let group_before = mbx.json(&["group", "show"])["throttle_database_size"].clone();
    for (args, expected) in [
        (
            &["group", "set", "--throttle-database-size", "lots"][..],
            "--throttle-database-size: 'lots' is not a size",
        ),
        (
            &["group", "set", "--throttle-database-size", "0"],
            "--throttle-database-size: '0' must be above 0",
        ),
        (
            &["group", "set", "--throttle-database-size", "group"],
            "--throttle-database-size: 'group' is not a size; use SIZE or off",
        ),
        (&["group", "set"], "group set: no change given"),
        (
            &["host", "update", "edi", "--throttle-database-size=-5GB"],
            "--throttle-database-size: '-5GB' is not a size",
        ),
        (
            &[
                "host",
                "create",
                "x",
                "--throttle-database-size",
                "10 parsecs",
            ],
            "--throttle-database-size: '10 parsecs' is not a size; use SIZE, off or group",
        ),
    ] {
        let line = mbx.fails(args, 2);
        assert!(
            line.contains(expected),
            "mbx {args:?}: expected '{expected}' in: {line}"
        );
        assert_eq!(snapshot(&pool).await, before, "mbx {args:?} changed state");
    }
    assert_eq!(
        mbx.json(&["group", "show"])["throttle_database_size"],
        group_before
    );
}

/// The tracking retention is one group-wide setting in whole days (7 by default);
/// anything else is refused with exit 2, changing nothing.
#[sqlx::test(migrations = false)]
async fn the_tracking_retention_is_set_for_the_group_in_whole_days(pool: PgPool) {
    let mbx = init(&pool);
    assert_eq!(mbx.json(&["group", "show"])["tracking_retention_days"], 7);
    let out = mbx.ok(&["group", "set", "--tracking-retention", "30d"]);
    assert!(out.contains("7 → 30"), "{out}");
    assert_eq!(mbx.json(&["group", "show"])["tracking_retention_days"], 30);
    assert!(mbx
        .ok(&["group", "show"])
        .contains("tracking retention:     30d"));
    let before = snapshot(&pool).await;
    for (value, expected) in [
        ("36h", "is not a whole number of days"),
        ("0d", "is not a whole number of days"),
        ("3651d", "out of range"),
        ("soon", "is not a duration"),
    ] {
        let line = mbx.fails(&["group", "set", "--tracking-retention", value], 2);
        assert!(
            line.contains("--tracking-retention") && line.contains(expected),
            "{value}: {line}"
        );
        assert_eq!(snapshot(&pool).await, before, "{value} changed state");
    }
}

#[test]
fn every_command_has_help_with_an_example() {
    let commands: &[&[&str]] = &[
        &[],
        &["init"],
        &["status"],
        &["host", "create"],
        &["host", "update"],
        &["host", "list"],
        &["group", "show"],
        &["group", "set"],
        &["host", "delete"],
        &["instance", "list"],
        &["property", "create"],
        &["property", "list"],
        &["property", "delete"],
        &["receive-port", "create"],
        &["receive-port", "list"],
        &["receive-location", "create"],
        &["receive-location", "enable"],
        &["receive-location", "disable"],
        &["receive-location", "delete"],
        &["receive-location", "list"],
        &["send-port", "create"],
        &["send-port", "show"],
        &["send-port", "list"],
        &["send-port", "enlist"],
        &["send-port", "start"],
        &["send-port", "stop"],
        &["send-port", "unenlist"],
        &["send-port", "resume"],
        &["send-port", "skip"],
        &["send-port", "delete"],
        &["send-port-group", "create"],
        &["send-port-group", "add"],
        &["send-port-group", "remove"],
        &["send-port-group", "start"],
        &["send-port-group", "stop"],
        &["send-port-group", "enlist"],
        &["send-port-group", "unenlist"],
        &["send-port-group", "delete"],
        &["send-port-group", "list"],
        &["message", "publish"],
        &["message", "list"],
        &["suspended", "list"],
        &["suspended", "show"],
        &["suspended", "save"],
        &["suspended", "resume"],
        &["suspended", "terminate"],
        &["stats"],
        &["track"],
    ];
    for c in commands {
        let out = std::process::Command::new(bin("mbx"))
            .args(c.iter().copied().chain(["--help"]))
            .output()
            .expect("run mbx");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "mbx {c:?} --help failed");
        assert!(
            text.contains("Example"),
            "mbx {c:?} --help has no example:\n{text}"
        );
        // the repository stands alone: help does not cite a spec users do not have
        assert!(
            !text.contains("SPEC"),
            "mbx {c:?} --help cites SPEC:\n{text}"
        );
        // every flag says what it does: clap prints a flag's text on its line, or on the
        // next lines when the help is laid out that way
        // (only in the Options section: prose may wrap a flag's name to a line's start)
        let options: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("Options:"))
            .skip(1)
            .take_while(|l| l.is_empty() || l.starts_with(' '))
            .collect();
        let lines: Vec<&str> = options.iter().map(|l| l.trim()).collect();
        for (i, line) in lines.iter().enumerate() {
            if line.starts_with('-') && !line.contains("  ") {
                let next = lines.get(i + 1).copied().unwrap_or("");
                assert!(
                    !next.is_empty() && !next.starts_with('-'),
                    "mbx {c:?} --help: flag without a description: {line}"
                );
            }
        }
    }
    // the commands that take addresses list every scheme with its address form and the
    // --set keys its adapter accepts (from the adapters' own tables)
    use mbx_adapters::amqp::config::{AMQP_RECEIVE_SETTINGS, AMQP_SEND_SETTINGS};
    use mbx_adapters::file::config::{FILE_RECEIVE_SETTINGS, FILE_SEND_SETTINGS};
    use mbx_adapters::http::config::{HTTP_RECEIVE_SETTINGS, HTTP_SEND_SETTINGS};
    use mbx_adapters::mqtt::config::{MQTT_RECEIVE_SETTINGS, MQTT_SEND_SETTINGS};
    use mbx_adapters::smtp::SMTP_SEND_SETTINGS;
    for (command, keys, schemes) in [
        (
            ["send-port", "create"],
            [
                FILE_SEND_SETTINGS,
                HTTP_SEND_SETTINGS,
                AMQP_SEND_SETTINGS,
                MQTT_SEND_SETTINGS,
                SMTP_SEND_SETTINGS,
            ]
            .concat(),
            &[
                "file", "http", "https", "null", "amqp", "amqps", "mqtt", "mqtts", "mailto",
            ][..],
        ),
        (
            ["receive-location", "create"],
            [
                FILE_RECEIVE_SETTINGS,
                HTTP_RECEIVE_SETTINGS,
                AMQP_RECEIVE_SETTINGS,
                MQTT_RECEIVE_SETTINGS,
            ]
            .concat(),
            &["file", "http", "https", "amqp", "amqps", "mqtt", "mqtts"][..],
        ),
    ] {
        let out = std::process::Command::new(bin("mbx"))
            .args(command.iter().copied().chain(["--help"]))
            .output()
            .expect("run mbx");
        let text = String::from_utf8_lossy(&out.stdout);
        for scheme in schemes {
            assert!(
                text.contains(&format!("{scheme}:")),
                "{command:?} --help lacks {scheme}:\n{text}"
            );
        }
        for key in keys.iter().filter(|k| **k != "max_message_size") {
            assert!(
                text.contains(key),
                "{command:?} --help lacks --set {key}:\n{text}"
            );
        }
    }
}

#[test]
fn a_missing_or_unreachable_database_is_named_with_its_password_hidden() {
    let out = std::process::Command::new(bin("mbx"))
        .args(["stats"])
        .env_remove("MBX_DATABASE_URL")
        .output()
        .expect("run mbx");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MBX_DATABASE_URL"), "{err}");

    let out = std::process::Command::new(bin("mbx"))
        .args(["stats"])
        .env(
            "MBX_DATABASE_URL",
            "postgres://admin:s3cret@127.0.0.1:1/nowhere",
        )
        .output()
        .expect("run mbx");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("postgres://admin:***@127.0.0.1:1/nowhere"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "password leaked: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // the cause, at once: not "pool timed out" after the pool's 10 s of retries
    assert!(err.contains("Connection refused"), "{err}");
    assert!(!err.contains("timed out"), "{err}");
}

#[sqlx::test(migrations = false)]
async fn receive_locations_are_created_disabled_and_deleted_only_when_disabled(pool: PgPool) {
    let mbx = init(&pool);
    mbx.ok(&["receive-port", "create", "orders"]);
    let out = mbx.ok(&[
        "receive-location",
        "create",
        "orders-in",
        "--port",
        "orders",
        "--address",
        "file:///data/in/*.json",
        "--pipeline",
        "json",
        "--promote",
        "Order.Region=/region",
        "--max-message-size",
        "1MiB",
        "--set",
        "poll_interval=1s",
    ]);
    assert!(out.contains("disabled"), "{out}");
    let list = mbx.json(&["receive-location", "list"]);
    let loc = &list[0];
    assert_eq!(loc["name"], "orders-in");
    assert_eq!(loc["port"], "orders");
    assert_eq!(loc["pipeline"], "json");
    assert_eq!(loc["promote"]["Order.Region"], "/region");
    assert_eq!(loc["settings"]["poll_interval"], "1s");
    assert_eq!(loc["max_message_size"], 1024 * 1024);
    assert_eq!(loc["enabled"], false);
    let ports = mbx.json(&["receive-port", "list"]);
    assert_eq!(ports[0]["locations"], serde_json::json!(["orders-in"]));

    assert!(mbx
        .ok(&["receive-location", "enable", "orders-in"])
        .contains("disabled → enabled"));
    assert!(mbx
        .ok(&["receive-location", "enable", "orders-in"])
        .contains("nothing changed"));
    let err = mbx.fails(&["receive-location", "delete", "orders-in"], 1);
    assert!(err.contains("disable it first"), "{err}");
    mbx.ok(&["receive-location", "disable", "orders-in"]);
    mbx.ok(&["receive-location", "delete", "orders-in"]);
    assert_eq!(
        mbx.json(&["receive-location", "list"]),
        serde_json::json!([])
    );

    // a secret is a reference, shown as written (issue 12)
    mbx.ok(&[
        "receive-location",
        "create",
        "secure-in",
        "--port",
        "orders",
        "--address",
        "http:///secure",
        "--set",
        "bearer_token=env:ORDERS_TOKEN",
    ]);
    let list = mbx.json(&["receive-location", "list"]);
    assert_eq!(list[0]["settings"]["bearer_token"], "env:ORDERS_TOKEN");

    // issue 13: a receive port is deleted once nothing feeds it
    let err = mbx.fails(&["receive-port", "delete", "orders"], 1);
    assert!(err.contains("secure-in"), "{err}");
    mbx.ok(&["receive-location", "delete", "secure-in"]);
    mbx.ok(&["receive-port", "delete", "orders"]);
    assert_eq!(mbx.json(&["receive-port", "list"]), serde_json::json!([]));
    mbx.fails(&["receive-port", "delete", "orders"], 2);
}

/// Issue 13: stopped and dead instances can be forgotten at once; live ones never.
#[sqlx::test(migrations = false)]
async fn instance_prune_forgets_stopped_instances_only(pool: PgPool) {
    let mbx = init(&pool);
    let lib = mbx_messagebox::MessageBox::from_pool(pool.clone());
    let gone = lib
        .instance_register("default", "m1", 1, "test")
        .await
        .expect("register");
    lib.instance_register("default", "m2", 2, "test")
        .await
        .expect("register");
    lib.instance_deregister(gone).await.expect("deregister");
    assert_eq!(
        mbx.json(&["instance", "list"]).as_array().map(Vec::len),
        Some(2)
    );
    let out = mbx.ok(&["instance", "prune"]);
    assert!(out.contains("forgot 1"), "{out}");
    let left = mbx.json(&["instance", "list"]);
    assert_eq!(left.as_array().map(Vec::len), Some(1), "{left}");
    assert_eq!(left[0]["state"], "alive");
    mbx.fails(&["instance", "prune", "--older-than", "soon"], 2);
}

#[sqlx::test(migrations = false)]
async fn a_closed_output_pipe_ends_quietly(pool: PgPool) {
    let mbx = init(&pool);
    let mut child = std::process::Command::new(bin("mbx"))
        .args(["host", "list"])
        .env("MBX_DATABASE_URL", &mbx.url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mbx");
    drop(child.stdout.take()); // the reader goes away, as with `mbx host list | head -0`
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked"),
        "mbx panicked on a closed pipe: {err}"
    );
}

#[sqlx::test(migrations = false)]
async fn send_port_show_reports_an_ordered_ports_lease_and_sequence(pool: PgPool) {
    let mbx = init(&pool);
    mbx.ok(&[
        "send-port",
        "create",
        "seq",
        "--address",
        "file:///tmp/seq/log",
        "--ordered",
        "--set",
        "append=true",
        "--filter",
        "exists(Order.Id)",
    ]);
    mbx.ok(&[
        "message",
        "publish",
        "--promote",
        "Order.Id=1",
        "--file",
        "/dev/null",
    ]);
    let shown = mbx.json(&["send-port", "show", "seq"]);
    assert_eq!(shown["lease"]["epoch"], 0, "{shown}");
    assert_eq!(shown["lease"]["holder"], serde_json::Value::Null);
    assert_eq!(shown["lease"]["next_seq"], 2, "one sequence number taken");
    assert_eq!(shown["lease"]["head"], "waiting");
    let text = mbx.ok(&["send-port", "show", "seq"]);
    assert!(
        text.contains("owner") && text.contains("next sequence"),
        "{text}"
    );
    let status = mbx.json(&["status"]);
    assert_eq!(status["ordered_ports"]["seq"]["next_seq"], 2, "{status}");
    let text = mbx.ok(&["status"]);
    assert!(
        text.contains("ordered: owner none epoch 0 next sequence 2 head waiting"),
        "{text}"
    );
    let plain = mbx.json(&[
        "send-port",
        "create",
        "plain",
        "--address",
        "file:///tmp/p/x",
    ]);
    assert_eq!(plain["ordered"], false);
    assert_eq!(
        mbx.json(&["send-port", "show", "plain"])["lease"],
        serde_json::Value::Null
    );
}

/// `mbx init` from many processes at once on a database that does not exist yet: one
/// creates it, every process exits 0 and the MessageBox is initialised once (on main,
/// 20 of 25 failed with a duplicate key of `pg_database`).
#[tokio::test]
async fn concurrent_init_of_a_missing_database_succeeds_everywhere() {
    use sqlx::Connection;
    let name = format!("mbx_init_race_{}", uuid::Uuid::new_v4().simple());
    let url = mbx_e2e::with_database(&mbx_e2e::server_url(), &name);
    let children: Vec<_> = (0..25)
        .map(|_| {
            std::process::Command::new(bin("mbx"))
                .args(["init", "--output", "json"])
                .env("MBX_DATABASE_URL", &url)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn mbx init")
        })
        .collect();
    let runs: Vec<mbx_e2e::Run> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait for mbx init").into())
        .collect();
    let mut server = sqlx::PgConnection::connect(&mbx_e2e::server_url())
        .await
        .expect("connect to the server");
    let hosts: Option<i64> = match sqlx::PgConnection::connect(&url).await {
        Ok(mut c) => sqlx::query_scalar("SELECT count(*) FROM hosts")
            .fetch_one(&mut c)
            .await
            .ok(),
        Err(_) => None,
    };
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut server)
        .await
        .expect("drop the test database");
    let failed: Vec<&mbx_e2e::Run> = runs.iter().filter(|r| r.code != 0).collect();
    assert!(
        failed.is_empty(),
        "{} of 25 `mbx init` failed, e.g.: {}",
        failed.len(),
        failed[0].stderr
    );
    let created = runs
        .iter()
        .filter(|r| {
            serde_json::from_str::<Json>(&r.stdout)
                .ok()
                .and_then(|j| j["database_created"].as_bool())
                == Some(true)
        })
        .count();
    assert_eq!(created, 1, "exactly one process created the database");
    assert_eq!(hosts, Some(1), "one default host");
}

/// Issue 13: a message is found by what it carries, where it waits and its age, not only
/// by its id.
#[sqlx::test(migrations = false)]
async fn messages_are_found_by_property_port_and_age(pool: PgPool) {
    let mbx = init(&pool);
    for (port, region) in [("eu", "EU"), ("us", "US")] {
        mbx.ok(&[
            "send-port",
            "create",
            port,
            "--address",
            &format!("file:///tmp/{port}/%MessageID%.xml"),
            "--filter",
            &format!("Order.Region == '{region}'"),
        ]);
    }
    for (region, note) in [("EU", "rush"), ("EU", "normal"), ("US", "normal")] {
        mbx.run_with_stdin(
            &[
                "message",
                "publish",
                "--promote",
                &format!("Order.Region={region}"),
                "--property",
                &format!("Order.Note={note}"),
            ],
            b"<order/>",
        );
    }
    let count = |args: &[&str]| -> usize {
        let mut all = vec!["message", "list"];
        all.extend_from_slice(args);
        mbx.json(&all).as_array().map_or(0, Vec::len)
    };
    assert_eq!(count(&[]), 3);
    assert_eq!(count(&["--where", "Order.Region == 'EU'"]), 2);
    // written (not promoted) properties are searched too
    assert_eq!(count(&["--where", "Order.Note == 'rush'"]), 1);
    assert_eq!(count(&["--port", "us"]), 1);
    assert_eq!(
        count(&["--port", "eu", "--where", "Order.Note == 'normal'"]),
        1
    );
    assert_eq!(count(&["--newer-than", "1h", "--limit", "2"]), 2);
    // the ports are stopped: everything waits, nothing is suspended or in flight
    assert_eq!(count(&["--state", "waiting"]), 3);
    assert_eq!(count(&["--state", "suspended"]), 0);
    mbx.ok(&["receive-port", "create", "orders"]);
    assert_eq!(count(&["--receive-port", "orders"]), 0);
    mbx.fails(&["message", "list", "--state", "lost"], 2);
    mbx.fails(&["message", "list", "--receive-port", "nope"], 2);
    let table = mbx.ok(&["message", "list", "--port", "us"]);
    assert!(table.contains("us: ready"), "{table}");
    let err = mbx.fails(&["message", "list", "--port", "nope"], 2);
    assert!(err.contains("send port 'nope' does not exist"), "{err}");
    let err = mbx.fails(&["message", "list", "--where", "Order.Region =="], 2);
    assert!(err.contains("--where"), "{err}");
}

/// Issue 13: docs/cli.md is the command reference the binary prints (`mbx reference`),
/// so the two cannot drift.
#[test]
fn the_command_reference_in_docs_is_the_binarys() {
    let out = std::process::Command::new(bin("mbx"))
        .arg("reference")
        .env_remove("MBX_DATABASE_URL")
        .output()
        .expect("run mbx reference");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8_lossy(&out.stdout);
    for command in [
        "## `mbx send-port create`",
        "## `mbx message list`",
        "## `mbx bench`",
    ] {
        assert!(generated.contains(command), "{command} missing");
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md");
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        written == generated,
        "docs/cli.md differs from the binary's reference: run `target/debug/mbx reference > docs/cli.md`"
    );
}

#[sqlx::test(migrations = false)]
async fn a_location_stamps_its_message_type_and_an_xml_one_is_refused_it(pool: PgPool) {
    let mbx = init(&pool);
    mbx.ok(&["receive-port", "create", "orders"]);
    // the xml pipeline names the type from the root element: refused, nothing stored
    let err = mbx.fails(
        &[
            "receive-location",
            "create",
            "xml-in",
            "--port",
            "orders",
            "--address",
            "file:///data/in/*.xml",
            "--pipeline",
            "xml",
            "--message-type",
            "Order",
        ],
        2,
    );
    assert!(err.contains("--message-type Order"), "{err}");
    assert!(err.contains("root element"), "{err}");
    assert_eq!(
        mbx.json(&["receive-location", "list"]),
        serde_json::json!([])
    );
    mbx.ok(&[
        "receive-location",
        "create",
        "payments-in",
        "--port",
        "orders",
        "--address",
        "file:///data/in/*payment*.json",
        "--pipeline",
        "json",
        "--message-type",
        "Payment",
        "--promote",
        "Order.Id=/payment_for",
    ]);
    assert_eq!(
        mbx.json(&["receive-location", "list"])[0]["message_type"],
        "Payment"
    );
    assert!(mbx
        .ok(&["receive-location", "list"])
        .contains("json (type Payment)"));
    // bindings as code carry it
    let exported = mbx.ok(&["export"]);
    assert!(exported.contains("message_type: Payment"), "{exported}");
    let err = mbx.fails(
        &[
            "receive-location",
            "update",
            "payments-in",
            "--message-type",
            "bad\ttype",
        ],
        2,
    );
    assert!(err.contains("control characters"), "{err}");
    let out = mbx.ok(&[
        "receive-location",
        "update",
        "payments-in",
        "--message-type",
        "Settlement",
    ]);
    assert!(out.contains("Payment → Settlement"), "{out}");
    mbx.ok(&[
        "receive-location",
        "update",
        "payments-in",
        "--no-message-type",
    ]);
    assert_eq!(
        mbx.json(&["receive-location", "list"])[0]["message_type"],
        serde_json::Value::Null
    );
}
