//! The seeds' scenario on orchestrations, deployed as shipped: `scripts/mbx-local
//! init-demo` creates the drop folder's receive locations, `demo/orchestrations/`'s order
//! broker and order managers A and B, and each manager's append FILE port. Orders and
//! payments are dropped as JSON files, some payments before their orders, some twice;
//! while a host is killed -9 twice and PostgreSQL (a private cluster) restarts once.
//! Every order is in its manager's ledger exactly once: confirmed when paid; the unpaid
//! ones, sent in a second phase on a version with short timeouts, escalated. Every
//! instance completed; no zombie, no suspended item.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mbx_e2e::pg_cluster::PgCluster;
use mbx_e2e::{bin, count, start_host, wait_for, wait_for_alive, Mbx, Reaped, FAST_HOST};
use sqlx::PgPool;

/// Orders 1..=ORDERS; the last UNPAID of them are never paid (the second phase).
const ORDERS: usize = 300;
const UNPAID: usize = 20;
/// Orders 1..=EARLY have their payment dropped before the order.
const EARLY: usize = 30;
/// Orders EARLY+1..=EARLY+TWICE have their payment dropped twice.
const TWICE: usize = 10;

/// The first phase's timeouts: long enough that no fault turns a late payment into an
/// escalation (the managers' wait 5 min), a paired broker staying 30 s for a second copy.
const FIRST_PHASE: &[(&str, &str)] = &[
    ("MBX_DEMO_PAYMENT_WAIT", "PT5M"),
    ("MBX_DEMO_ORDER_WAIT", "PT10M"),
    ("MBX_DEMO_LINGER", "PT30S"),
    ("MBX_DEMO_MANAGER_TIMEOUT", "PT5M"),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `scripts/mbx-local init-demo` against `url`, its folders under `demo`.
fn init_demo(url: &str, home: &Path, demo: &Path, env: &[(&str, &str)]) {
    let out = Command::new(repo().join("scripts/mbx-local"))
        .arg("init-demo")
        .env("MBX_DATABASE_URL", url)
        .env("MBX_HOME", home)
        .env("MBX_DEMO_DIR", demo)
        .env(
            "MBX_BIN_DIR",
            bin("mbx").parent().expect("the binaries' folder"),
        )
        .envs(env.iter().copied())
        .output()
        .expect("run scripts/mbx-local init-demo");
    assert!(
        out.status.success(),
        "init-demo failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn amount(order: usize) -> usize {
    order * 7 % 2000
}

fn manager(order: usize) -> &'static str {
    if amount(order) < 1000 {
        "A"
    } else {
        "B"
    }
}

/// Writes `body` under a hidden name, then renames it into the drop folder (a file
/// receive location never sees it half-written).
fn drop_file(drop: &Path, name: &str, body: &str) {
    let tmp = drop.join(format!(".{name}"));
    std::fs::write(&tmp, body).expect("write");
    std::fs::rename(&tmp, drop.join(name)).expect("rename");
}

fn drop_order(drop: &Path, n: usize) {
    let body = format!(
        r#"{{"id": {n}, "customer": "C{}", "amount": {}}}"#,
        n % 7,
        amount(n)
    );
    drop_file(drop, &format!("order-{n}.json"), &body);
}

fn drop_payment(drop: &Path, n: usize, copy: usize) {
    drop_file(
        drop,
        &format!("payment-{n}-{copy}.json"),
        &format!(r#"{{"payment_for": {n}}}"#),
    );
}

/// The ledgers' lines by order id: (manager, result) for each line about it.
fn ledgers(out: &Path) -> BTreeMap<u64, Vec<(String, String)>> {
    let mut all: BTreeMap<u64, Vec<(String, String)>> = BTreeMap::new();
    for m in ["A", "B"] {
        let Ok(text) = std::fs::read_to_string(out.join(format!("manager-{m}.jsonl"))) else {
            continue;
        };
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            assert_eq!(v["manager"], m, "{line} in manager {m}'s ledger");
            let id = v["orderId"].as_u64().expect("orderId");
            let result = v["result"].as_str().expect("result").to_owned();
            all.entry(id).or_default().push((m.to_owned(), result));
        }
    }
    all
}

fn lines(out: &Path) -> usize {
    ledgers(out).values().map(Vec::len).sum()
}

async fn not_completed(pool: &PgPool) -> i64 {
    count(
        pool,
        "SELECT count(*) FROM orchestration_instances WHERE state <> 'completed'",
    )
    .await
}

/// The drop folder is empty (every file received).
fn all_taken(drop: &Path) -> bool {
    std::fs::read_dir(drop)
        .map(|d| d.count() == 0)
        .unwrap_or(false)
}

/// Kills `hosts[i]` with SIGKILL and starts another in its place.
fn kill_and_restart(hosts: &mut [Reaped], i: usize, url: &str) {
    hosts[i].0.kill().expect("SIGKILL");
    hosts[i].0.wait().expect("reap");
    hosts[i] = start_host(url, FAST_HOST);
}

/// Drops the orders of `batch`, each paid — the payments of its first EARLY orders just
/// before them, the others after — in three parts; each part's `fault(i)` runs once a
/// quarter of the part's results are out (over the `before` results already there), so
/// instances, deliveries and the receive of the rest are in flight. Then, once every
/// file was taken, a second copy of the payments of the next TWICE orders.
async fn paid_batch(
    drop: &Path,
    out: &Path,
    batch: &[usize],
    before: usize,
    mut fault: impl FnMut(usize),
) {
    let part = batch.len().div_ceil(3);
    for (i, chunk) in batch.chunks(part).enumerate() {
        for (k, &n) in chunk.iter().enumerate() {
            let early = i * part + k < EARLY;
            if early {
                drop_payment(drop, n, 1);
            }
            drop_order(drop, n);
            if !early {
                drop_payment(drop, n, 1);
            }
        }
        let started = before + i * part + part / 4;
        wait_for(
            &format!("{started} results before fault {i}"),
            Duration::from_secs(180),
            || async { lines(out) >= started },
        )
        .await;
        fault(i);
        eprintln!("fault {i} with {} results out", lines(out));
    }
    wait_for(
        "the drop folder emptied",
        Duration::from_secs(120),
        || async { all_taken(drop) },
    )
    .await;
    for &n in &batch[EARLY..EARLY + TWICE] {
        drop_payment(drop, n, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_scenario_runs_as_shipped_through_kills_and_a_postgres_restart() {
    let cluster = PgCluster::start();
    let url = cluster.url("postgres");
    let home = tempfile::tempdir().expect("tempdir");
    let demo = home.path().join("demo");
    init_demo(&url, home.path(), &demo, FIRST_PHASE);
    let (drop, out) = (demo.join("drop"), demo.join("out"));
    let pool = PgPool::connect(&url).await.expect("connect");
    let mbx = mbx_messagebox::MessageBox::connect(&url, 2)
        .await
        .expect("connect");
    let cli = Mbx::new(url.clone());
    let mut hosts = vec![start_host(&url, FAST_HOST), start_host(&url, FAST_HOST)];
    wait_for_alive(&mbx, 2).await;

    // phase 1: every order paid; some payments first, some twice; faults meanwhile
    let paid = ORDERS - UNPAID;
    let batch: Vec<usize> = (1..=paid).collect();
    paid_batch(&drop, &out, &batch, 0, |i| match i {
        0 => kill_and_restart(&mut hosts, 0, &url),
        // sessions cut, a clean restart
        1 => {
            cluster.stop("fast");
            cluster.start_again();
        }
        _ => kill_and_restart(&mut hosts, 1, &url),
    })
    .await;
    wait_for(
        "every paid order's result",
        Duration::from_secs(300),
        || async { lines(&out) >= paid },
    )
    .await;
    // the brokers stay for a second copy (30 s), then every instance has completed
    wait_for(
        "every instance completed",
        Duration::from_secs(180),
        || async { not_completed(&pool).await == 0 },
    )
    .await;

    // phase 2: the unpaid orders, on versions with short timeouts
    for (file, replace) in [
        (
            "order-broker.yaml",
            vec![("PT10S", "PT2S"), ("PT1M", "PT2S")],
        ),
        ("order-manager-a.yaml", vec![("PT30S", "PT3S")]),
        ("order-manager-b.yaml", vec![("PT30S", "PT3S")]),
    ] {
        let mut text = std::fs::read_to_string(repo().join("demo/orchestrations").join(file))
            .expect("the shipped definition");
        text = text.replace("version: 1.0.0", "version: 1.0.1");
        for (from, to) in replace {
            text = text.replace(&format!("after: {from}"), &format!("after: {to}"));
        }
        let path = home.path().join(file);
        std::fs::write(&path, text).expect("write");
        cli.ok(&[
            "orchestration",
            "update",
            "-f",
            path.to_str().expect("utf-8"),
        ]);
    }
    for n in paid + 1..=ORDERS {
        drop_order(&drop, n);
    }
    wait_for("every order's result", Duration::from_secs(120), || async {
        lines(&out) >= ORDERS
    })
    .await;
    wait_for(
        "every instance completed",
        Duration::from_secs(60),
        || async { not_completed(&pool).await == 0 },
    )
    .await;

    let results = ledgers(&out);
    assert_eq!(results.len(), ORDERS, "every order has a result");
    for (id, lines) in &results {
        let n = *id as usize;
        assert_eq!(lines.len(), 1, "order {id} exactly once: {lines:?}");
        let expected = if n > paid { "escalated" } else { "confirmed" };
        assert_eq!(
            lines[0],
            (manager(n).to_owned(), expected.to_owned()),
            "order {id} (amount {})",
            amount(n)
        );
    }
    let suspended = count(&pool, "SELECT count(*) FROM suspended_items").await;
    assert_eq!(suspended, 0, "no suspended item, no zombie");
    std::mem::drop(hosts);
}

/// The move's timeouts: a broker sends an order alone after 3 s (so manager B's
/// instances wait in group A when B moves) and stays 2 min to send its late payment on;
/// the managers wait 5 min for a payment, and 20 s for the order of a payment that came
/// alone (a forwarded copy whose order is finished in group A).
const MOVE: &[(&str, &str)] = &[
    ("MBX_DEMO_PAYMENT_WAIT", "PT3S"),
    ("MBX_DEMO_ORDER_WAIT", "PT10M"),
    ("MBX_DEMO_LINGER", "PT2M"),
    ("MBX_DEMO_MANAGER_TIMEOUT", "PT5M"),
    ("MBX_DEMO_MANAGER_ORDER_WAIT", "PT20S"),
];

/// Instances of `orchestration` in `state` (any state when `None`).
async fn instances_of(pool: &PgPool, orchestration: &str, state: Option<&str>) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM orchestration_instances i JOIN orchestrations o ON o.id = i.orchestration_id
          WHERE o.name = $1 AND ($2::text IS NULL OR i.state = $2)",
    )
    .bind(orchestration)
    .bind(state)
    .fetch_one(pool)
    .await
    .expect("count instances")
}

/// Manager B moves to the group `managers` by configuration alone, with instances of it
/// waiting in group A: they finish there (their payments still reach them; the copy
/// forwarded to group B finds no order and ends unmatched), and every later order of
/// manager B is confirmed by group B's hosts — through a kill -9 in each group and a
/// restart of the server both groups' databases live on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_b_moves_to_a_second_group_by_configuration_alone() {
    let cluster = PgCluster::start();
    let (url, url_b) = (cluster.url("postgres"), cluster.url("managers"));
    let home = tempfile::tempdir().expect("tempdir");
    let demo = home.path().join("demo");
    init_demo(&url, home.path(), &demo, MOVE);
    let (drop, out) = (demo.join("drop"), demo.join("out"));
    let pool = PgPool::connect(&url).await.expect("connect");
    let mbx = mbx_messagebox::MessageBox::connect(&url, 2)
        .await
        .expect("connect");
    let (cli, there) = (Mbx::new(url.clone()), Mbx::new(url_b.clone()));
    let mut hosts = vec![start_host(&url, FAST_HOST), start_host(&url, FAST_HOST)];
    wait_for_alive(&mbx, 2).await;

    // orders of manager B without their payments: their brokers send them on alone, and
    // manager B's instances wait for the payments in group A
    let waiting: Vec<usize> = (1..).filter(|n| manager(*n) == "B").take(10).collect();
    for n in &waiting {
        drop_order(&drop, *n);
    }
    wait_for(
        "manager B's instances waiting in group A",
        Duration::from_secs(60),
        || async { instances_of(&pool, "order-manager-b", Some("waiting")).await == 10 },
    )
    .await;

    // the move, by configuration alone (docs/orchestrations.md, "Moving manager B")
    there.ok(&["init", "--group", "managers"]);
    let file = home.path().join("order-manager-b.yaml");
    let f = file.to_str().expect("utf-8").to_owned();
    cli.ok(&["export", "--application", "order-manager-b", "-f", &f]);
    there.ok(&["apply", "-f", &f]);
    there.ok(&["receive-port", "create", "from-group-a"]);
    cli.ok(&["group", "link", "add", "managers", "--target-url", &url_b]);
    for location in ["orders-in", "payments-in"] {
        cli.ok(&["receive-location", "disable", location]);
    }
    cli.ok(&[
        "send-port",
        "create",
        "to-manager-b",
        "--address",
        "mbx://managers/from-group-a",
        "--filter",
        "Order.ManagerId == \"B\"",
        "--start",
    ]);
    cli.ok(&["orchestration", "disable", "order-manager-b"]);
    for location in ["orders-in", "payments-in"] {
        cli.ok(&["receive-location", "enable", location]);
    }
    let mut far = start_host(&url_b, FAST_HOST);

    // the waiting instances' payments: they finish in group A
    for n in &waiting {
        drop_payment(&drop, *n, 1);
    }
    wait_for(
        "the waiting orders confirmed in group A",
        Duration::from_secs(120),
        || async { instances_of(&pool, "order-manager-b", Some("completed")).await == 10 },
    )
    .await;
    assert_eq!(lines(&out), waiting.len(), "{:?}", ledgers(&out));
    // its instances ended, manager B's application leaves group A (the port first: it
    // appends to the same ledger file as group B's here, on one machine)
    for step in ["stop", "unenlist", "delete"] {
        cli.ok(&["send-port", step, "manager-b-results"]);
    }
    cli.ok(&["orchestration", "delete", "order-manager-b"]);

    // a second batch in the new layout, with a fault in each group and a server restart
    let batch: Vec<usize> = (1001..=1000 + ORDERS - UNPAID).collect();
    paid_batch(&drop, &out, &batch, waiting.len(), |i| match i {
        0 => kill_and_restart(&mut hosts, 0, &url),
        1 => {
            cluster.stop("fast");
            cluster.start_again();
        }
        _ => {
            far.0.kill().expect("SIGKILL");
            far.0.wait().expect("reap");
            far = start_host(&url_b, FAST_HOST);
        }
    })
    .await;
    let total = waiting.len() + batch.len();
    wait_for("every result", Duration::from_secs(300), || async {
        lines(&out) >= total
    })
    .await;
    let pool_b = PgPool::connect(&url_b).await.expect("connect group B");
    wait_for(
        "every instance completed in both groups",
        Duration::from_secs(240),
        || async { not_completed(&pool).await == 0 && not_completed(&pool_b).await == 0 },
    )
    .await;

    let results = ledgers(&out);
    assert_eq!(results.len(), total, "every order has a result");
    for (id, lines) in &results {
        let n = *id as usize;
        assert_eq!(lines.len(), 1, "order {id} exactly once: {lines:?}");
        assert_eq!(
            lines[0],
            (manager(n).to_owned(), "confirmed".to_owned()),
            "order {id} (amount {})",
            amount(n)
        );
    }
    // group B ran manager B for the second batch (and, unmatched, for the copies of the
    // payments of the orders that finished in group A)
    let of_b = batch.iter().filter(|n| manager(**n) == "B").count() as i64;
    assert_eq!(
        instances_of(&pool_b, "order-manager-b", None).await,
        of_b + 10
    );
    for (group, p) in [("A", &pool), ("B", &pool_b)] {
        let suspended = count(p, "SELECT count(*) FROM suspended_items").await;
        assert_eq!(suspended, 0, "group {group}: no suspended item, no zombie");
    }
    std::mem::drop((hosts, far));
}
