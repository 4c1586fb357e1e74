//! Bindings as code (`mbx export` / `mbx apply`): a group's configuration round-trips
//! through YAML into an empty MessageBox; apply prints its plan and applies it in one
//! transaction; a second apply changes nothing; --prune deletes only the file's
//! applications' objects and never a port's messages unasked; a bad file names its line
//! and applies nothing.

use mbx_e2e::{count, database_url, messagebox, Mbx, OtherGroup};
use sqlx::PgPool;

/// A small group: a JSON location promoting the manager, two manager ports (one in
/// application manager-b), a group, a declared property.
fn configure(cli: &Mbx, dir: &std::path::Path) {
    let d = dir.display();
    cli.ok(&["property", "create", "Order.ManagerId"]);
    cli.ok(&["property", "create", "Order.Qty", "--type", "integer"]);
    cli.ok(&["host", "create", "edi", "--throttle-publish", "2000"]);
    cli.ok(&["receive-port", "create", "OrderBroker"]);
    cli.ok(&[
        "receive-location",
        "create",
        "broker-in",
        "--port",
        "OrderBroker",
        "--host",
        "edi",
        "--address",
        &format!("file://{d}/in/*.json"),
        "--pipeline",
        "json",
        "--promote",
        "Order.ManagerId=/managerId",
    ]);
    cli.ok(&["receive-location", "enable", "broker-in"]);
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
        "manager-a",
        "--start",
        "--retry-count",
        "5",
        "--address",
        &format!("file://{d}/a/%MessageID%.json"),
        "--filter",
        "Order.ManagerId == \"A\"",
        "--tracking",
        "all",
    ]);
    cli.ok(&[
        "send-port",
        "create",
        "manager-b",
        "--application",
        "manager-b",
        "--ordered",
        "--address",
        &format!("file://{d}/b/ledger.log"),
        "--set",
        "append=true",
        "--filter",
        "Order.ManagerId == \"B\" and Order.Qty > 0",
    ]);
    cli.ok(&[
        "send-port-group",
        "create",
        "everyone",
        "--start",
        "--filter",
        "exists(Order.ManagerId)",
    ]);
    cli.ok(&["send-port-group", "add", "everyone", "manager-a"]);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_group_round_trips_through_yaml_and_a_second_apply_changes_nothing(pool: PgPool) {
    let _mbx = messagebox(&pool).await;
    let cli = Mbx::new(database_url(&pool));
    let dir = tempfile::tempdir().unwrap();
    configure(&cli, dir.path());
    let exported = cli.ok(&["export"]);
    let file = dir.path().join("group.yaml");
    std::fs::write(&file, &exported).unwrap();
    let f = file.to_str().unwrap();

    let empty = OtherGroup::create(&pool, "copy").await;
    let result = async {
        let there = Mbx::new(empty.url.clone());
        let dry = there.ok(&["apply", "-f", f, "--dry-run"]);
        assert!(
            dry.contains("create send port 'manager-b'") && dry.contains("dry run"),
            "{dry}"
        );
        assert_eq!(
            count(empty.mbx.pool(), "SELECT count(*) FROM send_ports").await,
            0,
            "a dry run changes nothing"
        );
        let applied = there.ok(&["apply", "-f", f]);
        assert!(applied.contains("applied: "), "{applied}");
        assert_eq!(
            there.ok(&["export"]),
            exported,
            "export → apply → export is the same document"
        );
        let again = there.ok(&["apply", "-f", f]);
        assert!(again.contains("no changes"), "{again}");
        // the states came along
        let a = there.json(&["send-port", "show", "manager-a"]);
        assert_eq!(a["port"]["state"], "started");
        assert_eq!(a["port"]["groups"][0], "everyone");
        let locations = there.json(&["receive-location", "list"]);
        assert_eq!(locations[0]["enabled"], true);
        assert_eq!(locations[0]["host"], "edi");
    }
    .await;
    empty.drop_database().await;
    result
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn apply_plans_updates_and_prunes_only_the_files_applications(pool: PgPool) {
    let _mbx = messagebox(&pool).await;
    let cli = Mbx::new(database_url(&pool));
    let dir = tempfile::tempdir().unwrap();
    configure(&cli, dir.path());
    let file = dir.path().join("manager-b.yaml");
    let f = file.to_str().unwrap();
    cli.ok(&["export", "--application", "manager-b", "-f", f]);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains("manager-a") && !text.contains("broker-in"),
        "{text}"
    );

    // an edit becomes an update of exactly the fields that change
    let edited = text.replace("\n    retry_count: 3", "\n    retry_count: 9");
    std::fs::write(&file, &edited).unwrap();
    let plan = cli.json(&["apply", "-f", f, "--dry-run"]);
    let steps = plan["plan"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "{plan}");
    assert_eq!(steps[0]["action"], "update");
    assert_eq!(steps[0]["changes"][0]["field"], "retry_count");
    cli.ok(&["apply", "-f", f]);
    assert_eq!(
        cli.json(&["send-port", "show", "manager-b"])["port"]["retry_count"],
        9
    );

    // the port leaves the file: --prune deletes it — not while it holds messages, unless asked
    cli.ok(&[
        "message",
        "publish",
        "--promote",
        "Order.ManagerId=B",
        "--promote",
        "Order.Qty=2",
    ]);
    let start = edited.find("send_ports:").unwrap();
    let without_port = edited[..start].to_owned();
    std::fs::write(&file, &without_port).unwrap();
    let line = cli.fails(&["apply", "-f", f, "--prune"], 1);
    assert!(
        line.contains("manager-b")
            && line.contains("1 waiting")
            && line.contains("--discard-messages"),
        "{line}"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM send_ports WHERE name = 'manager-b'"
        )
        .await,
        1
    );
    let out = cli.ok(&["apply", "-f", f, "--prune", "--discard-messages"]);
    assert!(
        out.contains("delete send port 'manager-b' with its 1 messages"),
        "{out}"
    );
    // other applications and shared objects stay
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM send_ports WHERE name = 'manager-a'"
        )
        .await,
        1
    );
    let no_props = without_port.replace("  Order.Qty: integer\n", "");
    std::fs::write(&file, &no_props).unwrap();
    cli.ok(&["apply", "-f", f, "--prune"]);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM properties").await,
        2,
        "declarations are never pruned"
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_bad_file_names_its_line_and_applies_nothing(pool: PgPool) {
    let _mbx = messagebox(&pool).await;
    let cli = Mbx::new(database_url(&pool));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    let f = file.to_str().unwrap();
    let good = "mbx_bindings: 1\nreceive_ports:\n  r1: {}\nsend_ports:\n  p1:\n    address: file:///tmp/x/%MessageID%.xml\n    filter: A.B == 1\n";
    for (text, line, says) in [
        (
            good.replace("    filter:", "    filtr:"),
            ":7:",
            "unknown field `filtr`",
        ),
        (good.replace("A.B == 1", "A.B =="), ":5:", "send_ports.p1"),
        (
            good.replace("file:///tmp/x/%MessageID%.xml", "gopher://x"),
            ":5:",
            "--address",
        ),
        (
            good.replace("mbx_bindings: 1", "mbx_bindings: 1\nwidgets: 3"),
            ":2:",
            "unknown field `widgets`",
        ),
        (
            format!("{good}  p2:\n    address: mbx://nowhere/r\n"),
            ":8:",
            "group link 'nowhere'",
        ),
    ] {
        std::fs::write(&file, &text).unwrap();
        let err = cli.fails(&["apply", "-f", f], 2);
        assert!(err.contains(line) && err.contains(says), "{text}\n→ {err}");
        assert_eq!(
            count(&pool, "SELECT count(*) FROM receive_ports").await,
            0,
            "nothing applied: {err}"
        );
    }
    std::fs::write(&file, good).unwrap();
    cli.ok(&["apply", "-f", f]);
    assert_eq!(count(&pool, "SELECT count(*) FROM send_ports").await, 1);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn objects_move_between_applications_in_place(pool: PgPool) {
    let _mbx = messagebox(&pool).await;
    let cli = Mbx::new(database_url(&pool));
    let dir = tempfile::tempdir().unwrap();
    configure(&cli, dir.path());
    cli.ok(&[
        "receive-port",
        "update",
        "OrderBroker",
        "--application",
        "broker",
    ]);
    cli.ok(&[
        "receive-location",
        "update",
        "broker-in",
        "--application",
        "broker",
    ]);
    cli.ok(&[
        "send-port",
        "update",
        "manager-a",
        "--application",
        "broker",
    ]);
    let out = cli.ok(&[
        "send-port-group",
        "update",
        "everyone",
        "--application",
        "broker",
    ]);
    assert!(out.contains("application: default → broker"), "{out}");
    let broker = cli.ok(&["export", "--application", "broker"]);
    for name in ["OrderBroker:", "broker-in:", "manager-a:", "everyone:"] {
        assert!(broker.contains(name), "{name} in:\n{broker}");
    }
    assert!(!broker.contains("manager-b:"), "{broker}");
    cli.fails(&["receive-port", "update", "nope", "--application", "x"], 2);
    cli.fails(
        &[
            "receive-port",
            "update",
            "OrderBroker",
            "--application",
            "no way",
        ],
        2,
    );
    cli.fails(&["send-port-group", "update", "everyone"], 2);
    cli.fails(&["receive-port", "update", "OrderBroker"], 2);
    let default_app = cli.ok(&["export", "--application", "default"]);
    assert!(!default_app.contains("OrderBroker:"), "{default_app}");
    // failed-message routing switched on in place, and carried by the bindings
    let out = cli.ok(&["receive-port", "update", "OrderBroker", "--route-failed"]);
    assert!(out.contains("route_failed: false → true"), "{out}");
    let ports = cli.json(&["receive-port", "list"]);
    let port = ports
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "OrderBroker")
        .unwrap();
    assert_eq!(port["route_failed"], true);
    assert!(
        cli.ok(&["export", "--application", "broker"])
            .contains("route_failed: true"),
        "the export carries it"
    );
}

/// A hostile bindings file cannot make `mbx apply` take unbounded memory: one 1 MiB
/// string aliased in 400 places (400 MiB once expanded) and a file over the size limit
/// are refused with one line, nothing applied, and the CLI stays under 200 MB.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_hostile_file_is_refused_within_bounded_memory(pool: PgPool) {
    let _mbx = messagebox(&pool).await;
    let cli = Mbx::new(database_url(&pool));
    let dir = tempfile::tempdir().unwrap();
    let aliased = dir.path().join("aliased.yaml");
    let mut text = format!(
        "mbx_bindings: 1\nsend_ports:\n  p0:\n    address: &big file:///tmp/{}/x\n",
        "x".repeat(1 << 20)
    );
    for i in 1..400 {
        text.push_str(&format!("  p{i}:\n    address: *big\n"));
    }
    std::fs::write(&aliased, &text).unwrap();
    let err = cli.fails(&["apply", "-f", aliased.to_str().unwrap()], 2);
    assert!(
        err.contains("aliases") && err.contains("nothing was applied"),
        "{err}"
    );
    // 50 MB of tiny nodes: over the size limit, refused before it is parsed
    let huge = dir.path().join("huge.yaml");
    let mut nodes = String::from("mbx_bindings: 1\nproperties:\n");
    while nodes.len() < 50 << 20 {
        nodes.push_str("  - a\n");
    }
    std::fs::write(&huge, &nodes).unwrap();
    let err = cli.fails(&["apply", "-f", huge.to_str().unwrap()], 2);
    assert!(err.contains("limit") && err.contains("split"), "{err}");
    // just under the size limit, tiny nodes: parsed (and refused for what it says)
    let under = dir.path().join("under.yaml");
    let mut nodes = String::from("mbx_bindings: 1\nwidgets:\n");
    while nodes.len() < (2 << 20) - 16 {
        nodes.push_str("- a\n");
    }
    std::fs::write(&under, &nodes).unwrap();
    let err = cli.fails(&["apply", "-f", under.to_str().unwrap()], 2);
    assert!(err.contains("widgets"), "{err}");
    assert_eq!(count(&pool, "SELECT count(*) FROM send_ports").await, 0);
    // the largest of the mbx processes this test ran and waited for
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given
    let usage = unsafe {
        assert_eq!(
            libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()),
            0
        );
        usage.assume_init()
    };
    let peak_mb = usage.ru_maxrss / 1024;
    assert!(peak_mb < 200, "mbx peaked at {peak_mb} MB");
}
