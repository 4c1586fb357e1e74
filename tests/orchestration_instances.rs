//! An operator's hold on orchestration instances, through a real `mbx-host` and real
//! PostgreSQL: a faulted instance keeps its task path and error, is refused onto a
//! version that lacks that task and resumed onto one that fixes it; a waiting instance is
//! suspended (its message held, nothing runs) and resumed; a message held for a cancelled
//! instance becomes a zombie suspended item, and resuming the zombie routes it to the
//! next instance of its order; an orchestration with live instances is deleted only with
//! --cancel-instances.

use std::path::Path;
use std::time::Duration;

use mbx_e2e::orders::{instances_in, wait_instances};
use mbx_e2e::{bodies_in, count, database_url, messagebox, start_host, wait_for, Mbx, FAST_HOST};
use mbx_messagebox::publish::NewMessage;
use mbx_messagebox::MessageBox;
use sqlx::PgPool;

fn message(message_type: &str, order: &str) -> NewMessage {
    mbx_e2e::orders::message(message_type, order, serde_json::json!({ "order": order }))
}

async fn publish(mbx: &MessageBox, m: NewMessage) {
    mbx_e2e::orders::publish(mbx, vec![m]).await
}

/// An order checker, version `version`, whose second task is `check` (`raise`: it
/// faults) or is fixed (`set`) or renamed, then confirms.
fn checker(version: &str, check: &str) -> String {
    format!(
        "document: {{dsl: 1.0.3, namespace: orders, name: checker, version: {version}}}\n\
         schedule:\n  on:\n    one:\n      with: {{type: OrderRequest}}\n      correlate: {{orderId: {{from: '${{ .properties[\"Order.Id\"] }}'}}}}\n\
         do:\n\
         \x20 - remember: {{set: {{orderId: '${{ .[0].properties[\"Order.Id\"] }}'}}, export: {{as: '${{ . }}'}}}}\n\
         \x20 - {check}\n\
         \x20 - confirm:\n      emit:\n        event:\n          with:\n            source: https://orders.example/checker\n            type: OrderConfirmed\n            Order.Id: '${{ $context.orderId }}'\n            data: '${{ {{orderId: $context.orderId}} }}'\n"
    )
}

/// Waits for an order's approval, then confirms it.
const WAITER: &str = "document: {dsl: 1.0.3, namespace: orders, name: waiter, version: 1.0.0}\n\
schedule:\n  on:\n    one:\n      with: {type: OrderRequest}\n      correlate: {orderId: {from: '${ .properties[\"Order.Id\"] }'}}\n\
do:\n\
\x20 - remember: {set: {orderId: '${ .[0].properties[\"Order.Id\"] }'}, export: {as: '${ . }'}}\n\
\x20 - approval:\n      listen:\n        to:\n          one:\n            with: {type: OrderApproval}\n            correlate: {orderId: {from: '${ .properties[\"Order.Id\"] }', expect: '${ $context.orderId }'}}\n\
\x20 - confirm:\n      emit:\n        event:\n          with:\n            source: https://orders.example/waiter\n            type: OrderConfirmed\n            Order.Id: '${ $context.orderId }'\n            data: '${ {orderId: $context.orderId} }'\n";

/// Declares `Order.Id` and a FILE port writing every confirmation to `<dir>/out`.
fn results(cli: &Mbx, dir: &Path) -> std::path::PathBuf {
    cli.ok(&["property", "create", "Order.Id", "--type", "string"]);
    mbx_e2e::orders::results_port(cli, dir, &["OrderConfirmed"])
}

fn define(cli: &Mbx, dir: &Path, verb: &str, yaml: &str) {
    let file = dir.join("flow.yaml");
    std::fs::write(&file, yaml).expect("write definition");
    cli.ok(&["orchestration", verb, "-f", file.to_str().expect("path")]);
}

/// The one instance of `orchestration` for order `order`, as `instance list` gives it.
fn instance(cli: &Mbx, orchestration: &str, order: &str) -> serde_json::Value {
    let list = cli.json(&[
        "orchestration",
        "instance",
        "list",
        "--orchestration",
        orchestration,
        "--correlation",
        &format!("Order.Id={order}"),
    ]);
    let all = list.as_array().expect("a list");
    assert_eq!(all.len(), 1, "one instance for {order}: {list}");
    all[0].clone()
}

async fn state_is(pool: &PgPool, id: &str, state: &str) -> bool {
    count(
        pool,
        &format!(
            "SELECT count(*) FROM orchestration_instances WHERE id = '{id}' AND state = '{state}'"
        ),
    )
    .await
        == 1
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_faulted_instance_is_resumed_onto_a_version_that_fixes_its_task(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = results(&cli, dir.path());
    let broken = "check: {raise: {error: {type: 'https://example.com/errors/bad-order', status: 422, title: bad order}}}";
    define(&cli, dir.path(), "create", &checker("1.0.0", broken));
    let _host = start_host(&url, FAST_HOST);
    publish(&mbx, message("OrderRequest", "F-1")).await;
    publish(&mbx, message("OrderRequest", "F-2")).await;
    wait_instances(&pool, "faulted", 2, Duration::from_secs(30)).await;

    let f1 = instance(&cli, "checker", "F-1");
    let id = f1["id"].as_str().expect("id").to_owned();
    assert_eq!(
        f1["error"]["instance"], "/do/1/check",
        "the task path is kept: {f1}"
    );
    assert_eq!(f1["error"]["status"], 422);
    let shown = cli.ok(&["orchestration", "instance", "show", &id]);
    assert!(
        shown.contains("/do/1/check") && shown.contains("faulted"),
        "{shown}"
    );

    // a version without that task is refused, naming the path; nothing changes
    define(
        &cli,
        dir.path(),
        "update",
        &checker("1.1.0", "verify: {set: '${ . }'}"),
    );
    let refused = cli.fails(
        &[
            "orchestration",
            "instance",
            "resume",
            &id,
            "--to-version",
            "1.1.0",
        ],
        2,
    );
    assert!(
        refused.contains("/do/1/check") && refused.contains("1.1.0"),
        "{refused}"
    );
    assert!(state_is(&pool, &id, "faulted").await, "nothing was resumed");

    // the fixed version has the task: resumed from it, the instance confirms
    define(
        &cli,
        dir.path(),
        "update",
        &checker("1.2.0", "check: {set: '${ . }'}"),
    );
    cli.ok(&[
        "orchestration",
        "instance",
        "resume",
        &id,
        "--to-version",
        "1.2.0",
    ]);
    wait_for("F-1's confirmation", Duration::from_secs(30), || async {
        bodies_in(&out, "json").len() == 1
    })
    .await;
    assert_eq!(
        bodies_in(&out, "json"),
        vec![serde_json::json!({"orderId": "F-1"}).to_string()]
    );
    let history = cli.json(&["orchestration", "instance", "history", &id]);
    let events: Vec<&str> = history
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert_eq!(
        events,
        ["activated", "faulted", "resumed", "published", "completed"],
        "{history}"
    );
    let done = instance(&cli, "checker", "F-1");
    assert_eq!(
        (done["state"].as_str(), done["version"].as_str()),
        (Some("completed"), Some("1.2.0"))
    );

    // a completed instance is not resumed; F-2 is cancelled by selection
    let again = cli.fails(&["orchestration", "instance", "resume", &id], 1);
    assert!(again.contains("completed"), "{again}");
    let cancelled = cli.json(&[
        "orchestration",
        "instance",
        "cancel",
        "--orchestration",
        "checker",
        "--state",
        "faulted",
    ]);
    assert_eq!(
        cancelled["cancelled"].as_array().map(Vec::len),
        Some(1),
        "{cancelled}"
    );
    assert_eq!(instance(&cli, "checker", "F-2")["state"], "cancelled");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn suspended_instances_hold_their_messages_and_a_zombie_is_resumed_to_the_next_instance(
    pool: PgPool,
) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = results(&cli, dir.path());
    define(&cli, dir.path(), "create", WAITER);
    let _host = start_host(&url, FAST_HOST);
    let waiting = |n: i64| {
        let pool = pool.clone();
        async move { instances_in(&pool, "waiting").await == n }
    };

    // suspended: its approval is held, nothing runs; resumed: it confirms
    publish(&mbx, message("OrderRequest", "S-1")).await;
    wait_for("S-1 waiting", Duration::from_secs(30), || waiting(1)).await;
    let s1 = instance(&cli, "waiter", "S-1")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    cli.ok(&["orchestration", "instance", "suspend", &s1]);
    publish(&mbx, message("OrderApproval", "S-1")).await;
    wait_for("the approval held for S-1", Duration::from_secs(30), || async {
        count(
            &pool,
            &format!("SELECT count(*) FROM orchestration_inbox WHERE instance_id = '{s1}' AND NOT consumed AND NOT activating"),
        )
        .await
            == 1
    })
    .await;
    assert!(state_is(&pool, &s1, "suspended").await);
    assert!(
        bodies_in(&out, "json").is_empty(),
        "a suspended instance runs nothing"
    );
    cli.ok(&["orchestration", "instance", "resume", &s1]);
    wait_for("S-1's confirmation", Duration::from_secs(30), || async {
        bodies_in(&out, "json").len() == 1
    })
    .await;

    // cancelled with its approval held: the approval is a zombie naming it
    publish(&mbx, message("OrderRequest", "Z-1")).await;
    wait_for("Z-1 waiting", Duration::from_secs(30), || waiting(1)).await;
    let z1 = instance(&cli, "waiter", "Z-1")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    cli.ok(&["orchestration", "instance", "suspend", &z1]);
    publish(&mbx, message("OrderApproval", "Z-1")).await;
    wait_for(
        "the approval held for Z-1",
        Duration::from_secs(30),
        || async {
            count(
                &pool,
                &format!("SELECT count(*) FROM orchestration_inbox WHERE instance_id = '{z1}'"),
            )
            .await
                == 2
        },
    )
    .await;
    cli.ok(&["orchestration", "instance", "cancel", &z1]);
    let zombies = cli.json(&["suspended", "list", "--kind", "zombie"]);
    let zombies = zombies.as_array().expect("a list");
    assert_eq!(zombies.len(), 1, "{zombies:?}");
    let zombie = zombies[0]["id"].to_string();
    let shown = cli.ok(&["suspended", "show", &zombie]);
    assert!(
        shown.contains(&z1),
        "the zombie names its instance: {shown}"
    );

    // a new instance of the order waits; the zombie resumed reaches it, and it confirms
    publish(&mbx, message("OrderRequest", "Z-1")).await;
    wait_for("a new Z-1 waiting", Duration::from_secs(30), || waiting(1)).await;
    cli.ok(&["suspended", "resume", &zombie]);
    wait_for("Z-1's confirmation", Duration::from_secs(30), || async {
        bodies_in(&out, "json").len() == 2
    })
    .await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM suspended_items").await,
        0,
        "the zombie left the suspended items"
    );

    // live instances: delete is refused, then cancels them with --cancel-instances
    publish(&mbx, message("OrderRequest", "D-1")).await;
    wait_for("D-1 waiting", Duration::from_secs(30), || waiting(1)).await;
    let refused = cli.fails(&["orchestration", "delete", "waiter"], 1);
    assert!(refused.contains("--cancel-instances"), "{refused}");
    cli.ok(&["orchestration", "delete", "waiter", "--cancel-instances"]);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM orchestration_instances").await,
        0
    );
}
