//! Orchestration definitions through the real `mbx`: the demo's order manager is created
//! once its correlation property is declared, then listed and shown; a definition outside
//! the mbx profile, one whose activation filters on an undeclared property, the same
//! version with other content, `--buckets` out of range or without `--ordered`, and an
//! update that changes the ordering are refused with exit 2 and store nothing;
//! a new version becomes current with both versions kept; export → apply into an empty
//! group → export is the same document; delete removes it.

use std::path::{Path, PathBuf};

use mbx_e2e::{count, database_url, messagebox, Mbx, OtherGroup};
use sqlx::PgPool;

/// The demo's definition, shipped with the repository.
fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/order-manager.yaml")
}

/// The demo's definition with `from` replaced by `to` (each must occur), written to `dir`.
fn variant(dir: &Path, file: &str, edits: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(demo()).expect("read the demo");
    for (from, to) in edits {
        assert!(text.contains(from), "the demo has {from:?}");
        text = text.replacen(from, to, 1);
    }
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write the variant");
    path.to_str().expect("utf-8 path").to_owned()
}

async fn stored(pool: &PgPool) -> (i64, i64) {
    (
        count(pool, "SELECT count(*) FROM orchestrations").await,
        count(pool, "SELECT count(*) FROM orchestration_versions").await,
    )
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_definition_is_created_shown_versioned_and_deleted(pool: PgPool) {
    let _mbx = messagebox(&pool).await;
    let cli = Mbx::new(database_url(&pool));
    let demo = demo();
    let demo = demo.to_str().unwrap();
    // the activation correlates by Order.Id: declared first
    let refused = cli.fails(&["orchestration", "create", "-f", demo], 2);
    assert!(
        refused.contains("Order.Id") && refused.contains("mbx property create"),
        "{refused}"
    );
    assert_eq!(stored(&pool).await, (0, 0), "nothing stored");
    cli.ok(&["property", "create", "Order.Id"]);
    let created = cli.ok(&["orchestration", "create", "-f", demo]);
    assert!(
        created.contains("created orchestration 'order-manager' version 1.0.0"),
        "{created}"
    );
    let list = cli.json(&["orchestration", "list"]);
    assert_eq!(list[0]["name"], "order-manager");
    assert_eq!(list[0]["application"], "orders");
    assert_eq!(list[0]["current_version"], "1.0.0");
    assert_eq!(list[0]["state"], "enabled");
    assert_eq!(list[0]["host"], "default");
    let table = cli.ok(&["orchestration", "list"]);
    assert!(
        table.contains("order-manager") && table.contains("1.0.0"),
        "{table}"
    );
    let shown = cli.json(&["orchestration", "show", "order-manager"]);
    assert_eq!(shown["document"]["document"]["title"], "Order manager");
    let activation = &shown["versions"][0]["activation"][0];
    assert_eq!(activation["correlate"][0], "Order.Id");
    let text = cli.ok(&["orchestration", "show", "order-manager"]);
    assert!(
        text.contains(r#"mbx.MessageType == "OrderRequest""#),
        "{text}"
    );
    // create again: it exists, update adds versions
    let again = cli.fails(&["orchestration", "create", "-f", demo], 2);
    assert!(
        again.contains("already exists") && again.contains("update"),
        "{again}"
    );
    let same = cli.ok(&["orchestration", "update", "-f", demo]);
    assert!(same.contains("unchanged"), "{same}");

    let dir = tempfile::tempdir().unwrap();
    let next = variant(
        dir.path(),
        "next.yaml",
        &[("version: 1.0.0", "version: 1.1.0")],
    );
    let updated = cli.ok(&["orchestration", "update", "-f", &next]);
    assert!(updated.contains("version: 1.0.0 → 1.1.0"), "{updated}");
    let shown = cli.json(&["orchestration", "show", "order-manager"]);
    assert_eq!(shown["current_version"], "1.1.0");
    let versions: Vec<&str> = shown["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["1.1.0", "1.0.0"], "both versions are kept");

    // the same version with other content: refused, naming both digests
    let changed = variant(dir.path(), "changed.yaml", &[("hours: 24", "hours: 48")]);
    let line = cli.fails(&["orchestration", "update", "-f", &changed], 2);
    assert!(
        line.contains("version 1.0.0") && line.contains("digest") && line.contains("new version"),
        "{line}"
    );
    assert_eq!(stored(&pool).await, (1, 2), "nothing stored");

    let deleted = cli.ok(&["orchestration", "delete", "order-manager"]);
    assert!(deleted.contains("deleted orchestration"), "{deleted}");
    assert_eq!(stored(&pool).await, (0, 0));
    let gone = cli.fails(&["orchestration", "show", "order-manager"], 2);
    assert!(gone.contains("does not exist"), "{gone}");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn refused_definitions_and_flags_store_nothing(pool: PgPool) {
    let _mbx = messagebox(&pool).await;
    let cli = Mbx::new(database_url(&pool));
    cli.ok(&["property", "create", "Order.Id"]);
    let dir = tempfile::tempdir().unwrap();
    // outside the profile: a `run` task, named by its path
    let run = variant(
        dir.path(),
        "run.yaml",
        &[(
            "      call: http\n      with:\n        method: post\n        endpoint: http://127.0.0.1:9290/quote\n        body: '${ { item: $context.order.item } }'\n",
            "      run:\n        shell:\n          command: quote\n",
        )],
    );
    let line = cli.fails(&["orchestration", "create", "-f", &run], 2);
    assert!(
        line.contains("/do/1/price/run") && line.contains("nothing was stored"),
        "{line}"
    );
    // an activation filtering on an undeclared property
    let undeclared = variant(
        dir.path(),
        "undeclared.yaml",
        &[(
            "        type: OrderRequest\n",
            "        type: OrderRequest\n        Order.Region: EU\n",
        )],
    );
    let line = cli.fails(&["orchestration", "create", "-f", &undeclared], 2);
    assert!(
        line.contains("/schedule/on/one/with/Order.Region") && line.contains("not declared"),
        "{line}"
    );
    // declared, but its value is of another type: the filter language's own words
    cli.ok(&["property", "create", "Order.Region", "--type", "integer"]);
    let line = cli.fails(&["orchestration", "create", "-f", &undeclared], 2);
    assert!(line.contains("declared integer"), "{line}");
    // buckets out of range, or without --ordered, are refused
    let demo = demo();
    let demo = demo.to_str().unwrap();
    let line = cli.fails(
        &[
            "orchestration",
            "create",
            "-f",
            demo,
            "--ordered",
            "--buckets",
            "0",
        ],
        2,
    );
    assert!(
        line.contains("--buckets: 0 is out of range 1..1024"),
        "{line}"
    );
    let line = cli.fails(
        &["orchestration", "create", "-f", demo, "--buckets", "8"],
        2,
    );
    assert!(line.contains("--ordered"), "{line}");
    let line = cli.fails(
        &["orchestration", "create", "-f", demo, "--host", "nowhere"],
        2,
    );
    assert!(line.contains("host 'nowhere' does not exist"), "{line}");
    assert_eq!(stored(&pool).await, (0, 0), "nothing stored");
    cli.ok(&["orchestration", "create", "-f", demo]);
    let line = cli.fails(&["orchestration", "update", "-f", demo, "--ordered"], 2);
    assert!(line.contains("ordering does not change"), "{line}");
    // instance commands: a selection is required, ids must be instances
    let line = cli.fails(&["orchestration", "instance", "cancel"], 2);
    assert!(line.contains("--orchestration"), "{line}");
    let line = cli.fails(
        &[
            "orchestration",
            "instance",
            "resume",
            "0190f1c2-0000-7000-8000-000000000000",
        ],
        2,
    );
    assert!(line.contains("does not exist"), "{line}");
    let line = cli.fails(
        &["orchestration", "instance", "list", "--state", "asleep"],
        2,
    );
    assert!(
        line.contains("--state") && line.contains("waiting"),
        "{line}"
    );
    assert_eq!(stored(&pool).await, (1, 1));
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn orchestrations_round_trip_through_export_and_apply(pool: PgPool) {
    let _mbx = messagebox(&pool).await;
    let cli = Mbx::new(database_url(&pool));
    let dir = tempfile::tempdir().unwrap();
    cli.ok(&["property", "create", "Order.Id"]);
    cli.ok(&["host", "create", "processes"]);
    let demo = demo();
    cli.ok(&[
        "orchestration",
        "create",
        "-f",
        demo.to_str().unwrap(),
        "--host",
        "processes",
    ]);
    let second = variant(
        dir.path(),
        "second.yaml",
        &[
            ("name: order-manager", "name: returns"),
            ("namespace: orders", "namespace: returns"),
        ],
    );
    cli.ok(&["orchestration", "create", "-f", &second]);
    cli.ok(&["orchestration", "disable", "returns"]);
    let exported = cli.ok(&["export"]);
    assert!(
        exported.contains("orchestrations:\n  order-manager:\n    host: processes\n    enabled: true\n    definition:\n"),
        "the definition is a mapping: {exported}"
    );
    let file = dir.path().join("group.yaml");
    std::fs::write(&file, &exported).unwrap();
    let f = file.to_str().unwrap();

    let empty = OtherGroup::create(&pool, "orch").await;
    let result = async {
        let there = Mbx::new(empty.url.clone());
        let applied = there.ok(&["apply", "-f", f]);
        assert!(
            applied.contains("create orchestration 'order-manager'")
                && applied.contains("create orchestration 'returns'"),
            "{applied}"
        );
        assert_eq!(
            there.ok(&["export"]),
            exported,
            "export → apply → export is the same document"
        );
        let again = there.ok(&["apply", "-f", f]);
        assert!(again.contains("no changes"), "{again}");
        let list = there.json(&["orchestration", "list"]);
        assert_eq!(list[1]["name"], "returns");
        assert_eq!(list[1]["state"], "disabled");
        // a definition the profile refuses names its line and applies nothing
        let bad = exported.replace("call: http", "call: grpc");
        assert_ne!(bad, exported);
        let bad_file = dir.path().join("bad.yaml");
        std::fs::write(&bad_file, &bad).unwrap();
        let line = there.fails(&["apply", "-f", bad_file.to_str().unwrap()], 2);
        assert!(
            line.contains("orchestrations.order-manager") && line.contains("nothing was applied"),
            "{line}"
        );
    }
    .await;
    empty.drop_database().await;
    result
}
