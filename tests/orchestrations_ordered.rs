//! An ordered sequential convoy (`mbx orchestration create --ordered`) through real
//! `mbx-host` processes and real PostgreSQL: 1,000 messages per key over 50 keys, each
//! key's one instance taking its messages one after another and re-publishing each to a
//! port ordered by the key, while the instance holding the most buckets is killed (-9)
//! and, later, the one holding the most is paused (SIGSTOP) past its lease. Every key's
//! messages reach the endpoint in publication order, none lost; every re-publication
//! exists once in the MessageBox; the buckets moved with epoch + 1.

use std::collections::BTreeMap;
use std::time::Duration;

use mbx_e2e::orders::wait_instances;
use mbx_e2e::sink::{start_sink, Request};
use mbx_e2e::{
    count, database_url, eventually, messagebox, signal, start_host, wait_for, wait_for_alive, Mbx,
    FAST_HOST,
};
use mbx_messagebox::publish::NewMessage;
use mbx_messagebox::{Context, Value};
use sqlx::PgPool;

const KEYS: usize = 50;
const PER_KEY: usize = 1_000;

/// The lease of a bucket (as an ordered port's).
const LEASE_TTL: Duration = Duration::from_millis(mbx_messagebox::ordered::LEASE_TTL_MS as u64);

/// Each key's convoy: the first `Line` activates it, every later one is listened for by
/// key; each is re-published as it is (type `LineOut`).
fn convoy() -> String {
    let take =
        r#"{orderId: {from: '${ .properties["Order.Id"] }', expect: '${ $context.orderId }'}}"#;
    format!(
        r#"
document: {{dsl: 1.0.3, namespace: orders, name: lines, version: 1.0.0}}
schedule:
  on:
    one:
      with: {{type: Line}}
      correlate: {{orderId: {{from: '${{ .properties["Order.Id"] }}'}}}}
do:
  - first:
      set: {{orderId: '${{ .[0].properties["Order.Id"] }}', id: '${{ .[0].id }}'}}
      export: {{as: '${{ . }}'}}
  - forward:
      emit:
        event:
          x-mbx-republish: '${{ $context.id }}'
          with: {{source: https://orders.example/lines, type: LineOut}}
  - rest:
      for: {{in: '${{ [range({rest})] }}', each: n}}
      do:
        - next:
            listen: {{to: {{one: {{with: {{type: Line}}, correlate: {take}}}}}, read: envelope}}
            export: {{as: '${{ $context + {{id: .[0].id}} }}'}}
        - out:
            emit:
              event:
                x-mbx-republish: '${{ $context.id }}'
                with: {{source: https://orders.example/lines, type: LineOut}}
"#,
        rest = PER_KEY - 1
    )
}

/// Line `n` of key `key`: body "KEY N".
fn line(key: &str, n: usize) -> NewMessage {
    let mut context = Context::new();
    context
        .promote("mbx.MessageType", Value::String("Line".into()))
        .expect("type");
    context
        .promote("Order.Id", Value::String(key.to_owned()))
        .expect("key");
    NewMessage::new(format!("{key} {n}"), "text/plain", context)
}

/// Each key's numbers in order of first arrival, and its duplicate count.
fn per_key(requests: &[Request]) -> (BTreeMap<String, Vec<usize>>, BTreeMap<String, usize>) {
    let mut first: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut dups: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for r in requests {
        let Some((key, n)) = r.body.split_once(' ') else {
            panic!("unexpected body {:?}", r.body)
        };
        let n: usize = n.parse().expect("a number");
        if seen.insert(r.body.clone()) {
            first.entry(key.to_owned()).or_default().push(n);
        } else {
            *dups.entry(key.to_owned()).or_default() += 1;
        }
    }
    (first, dups)
}

/// Of the running `hosts`, the one holding the most live buckets of the convoy: (its
/// pid, the highest epoch it holds).
async fn busiest_holder(pool: &PgPool, hosts: &[mbx_e2e::Reaped]) -> (i32, i64) {
    let pids: Vec<i32> = hosts.iter().map(|h| h.pid() as i32).collect();
    sqlx::query_as(
        "SELECT i.pid, max(l.epoch)
           FROM leases l JOIN host_instances i ON i.id = l.holder
          WHERE l.orchestration_id IS NOT NULL AND l.expires_at > now() AND i.pid = ANY($1)
          GROUP BY i.pid ORDER BY count(*) DESC LIMIT 1",
    )
    .bind(&pids)
    .fetch_one(pool)
    .await
    .expect("a bucket holder")
}

/// How many lines the convoys have re-published so far (each step's publications are
/// recorded in its own transaction).
async fn republished(pool: &PgPool) -> i64 {
    count(
        pool,
        "SELECT count(*) FROM orchestration_events WHERE event = 'published'",
    )
    .await
}

async fn max_epoch(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT max(epoch) FROM leases WHERE orchestration_id IS NOT NULL")
        .fetch_one(pool)
        .await
        .expect("epochs")
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_ordered_convoy_keeps_each_keys_order_through_a_kill_and_a_pause_past_its_lease(
    pool: PgPool,
) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    cli.ok(&["property", "create", "Order.Id", "--type", "string"]);
    // every step's events recorded: the test counts the re-publications in the histories
    cli.ok(&["host", "update", "default", "--tracking", "all"]);
    let file = dir.path().join("lines.yaml");
    std::fs::write(&file, convoy()).expect("write definition");
    cli.ok(&[
        "orchestration",
        "create",
        "-f",
        file.to_str().expect("path"),
        "--ordered",
        "--buckets",
        "16",
    ]);
    let (sink_port, sink) = start_sink().await;
    cli.ok(&[
        "send-port",
        "create",
        "lines-out",
        "--start",
        "--filter",
        "mbx.MessageType == 'LineOut'",
        "--ordered-by",
        "Order.Id",
        "--address",
        &format!("http://127.0.0.1:{sink_port}/sink"),
    ]);
    let mut hosts = vec![start_host(&url, FAST_HOST), start_host(&url, FAST_HOST)];
    wait_for_alive(&mbx, 2).await;

    // keys interleaved, each key's lines in order, in batches of 500
    let all: Vec<(String, usize)> = (0..PER_KEY)
        .flat_map(|n| (0..KEYS).map(move |k| (format!("k{k:02}"), n)))
        .collect();
    // (published while the faults happen)
    let publisher = {
        let mbx = mbx.clone();
        tokio::spawn(async move {
            for chunk in all.chunks(500) {
                mbx_e2e::orders::publish(&mbx, chunk.iter().map(|(k, n)| line(k, *n)).collect())
                    .await;
            }
        })
    };
    let total = KEYS * PER_KEY;

    // kill -9 the instance holding the most buckets, a fifth of the way
    wait_for("a fifth of the lines", Duration::from_secs(300), || async {
        republished(&pool).await >= (total / 5) as i64
    })
    .await;
    let (pid, epoch_at_kill) = busiest_holder(&pool, &hosts).await;
    let at = hosts
        .iter()
        .position(|h| h.pid() as i32 == pid)
        .expect("the holder is one of the test's hosts");
    let mut killed = hosts.swap_remove(at);
    killed.0.kill().expect("SIGKILL");
    killed.0.wait().expect("reap");
    hosts.push(start_host(&url, FAST_HOST));
    let at_kill = republished(&pool).await;
    assert!(at_kill < total as i64, "the kill happened during the run");
    wait_for(
        "a bucket of the killed instance taken with epoch + 1",
        LEASE_TTL + Duration::from_secs(60),
        || async { max_epoch(&pool).await > epoch_at_kill },
    )
    .await;

    // pause the instance holding the most buckets past its lease, then let it go on
    wait_for(
        "three fifths of the lines",
        Duration::from_secs(300),
        || async { republished(&pool).await >= (total * 3 / 5) as i64 },
    )
    .await;
    let at_pause = republished(&pool).await;
    assert!(at_pause < total as i64, "the pause happened during the run");
    let (paused, epoch_at_pause) = busiest_holder(&pool, &hosts).await;
    signal(paused, "-STOP");
    let taken_over = eventually(LEASE_TTL + Duration::from_secs(30), || async {
        max_epoch(&pool).await > epoch_at_pause
    })
    .await;
    signal(paused, "-CONT");
    assert!(
        taken_over,
        "another instance took the paused owner's buckets"
    );

    publisher.await.expect("every line published");
    let done = eventually(Duration::from_secs(600), || async {
        sink.distinct() >= total
    })
    .await;
    let requests = sink.by_arrival();
    let (first, dups) = per_key(&requests);
    eprintln!(
        "{} requests, {} distinct, {at_kill} re-published at the kill, {at_pause} at the pause; duplicates per key {dups:?}",
        requests.len(),
        sink.distinct()
    );
    if !done {
        let states: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state || coalesce(' claimed@' || claim_epoch, '') || coalesce(' runnable', ''), count(*)::int8
               FROM orchestration_instances GROUP BY 1",
        )
        .fetch_all(&pool)
        .await
        .expect("states");
        let waiting = count(
            &pool,
            "SELECT count(*) FROM orchestration_inbox WHERE NOT consumed",
        )
        .await;
        let deliveries: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*)::int8 FROM deliveries GROUP BY 1")
                .fetch_all(&pool)
                .await
                .expect("deliveries");
        let suspended = count(&pool, "SELECT count(*) FROM suspended_items").await;
        eprintln!(
            "instances {states:?}; {waiting} held, not taken; deliveries {deliveries:?}; \
             {suspended} suspended; {} re-published",
            republished(&pool).await
        );
    }
    assert!(done, "every line arrived: {} of {total}", sink.distinct());
    assert_eq!(first.len(), KEYS, "every key arrived");
    for (key, numbers) in &first {
        let expected: Vec<usize> = (0..PER_KEY).collect();
        assert!(
            numbers == &expected,
            "key {key}: first arrivals in publication order, none lost"
        );
    }
    // inside the MessageBox every step happened once: one re-publication per line
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM orchestration_events WHERE event = 'published'"
        )
        .await,
        total as i64,
        "each line re-published exactly once"
    );
    wait_instances(&pool, "completed", KEYS as i64, Duration::from_secs(60)).await;
    drop(hosts);
}
