//! Per-key ordering (`send-port create --ordered-by PROP`) through real `mbx-host`
//! processes and a real HTTP endpoint: order holds per value of the property, keys go
//! concurrently, a failure holds only its key, a message without the property is
//! suspended at routing, and killing an owner of buckets loses and reorders nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use mbx_e2e::sink::{start_sink, Request};
use mbx_e2e::{
    database_url, eventually, messagebox, serve_on_loopback, start_host, wait_for, wait_for_alive,
    Mbx, FAST_HOST,
};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::publish::{NewMessage, Published, Publisher};
use mbx_messagebox::{Context, MessageBox, Value};
use sqlx::PgPool;

/// `--ordered-commit-batch` (default): a crash re-sends at most that many messages of a key.
const COMMIT_BATCH: usize = 32;
/// The lease TTL.
const LEASE_TTL: Duration = Duration::from_secs(10);

/// Message `n` of key `key`: body "KEY N", `Order.Customer` = key and `Seq.N` = n promoted.
fn keyed(key: &str, n: usize) -> NewMessage {
    let mut ctx = Context::new();
    ctx.promote("Order.Customer", Value::String(key.to_owned()))
        .expect("promote key");
    ctx.promote("Seq.N", Value::Integer(n as i64))
        .expect("promote n");
    NewMessage::new(format!("{key} {n}"), "text/plain", ctx)
}

/// A started port ordered by `Order.Customer` (filter `exists(Seq.N)`) sending to `url`.
async fn keyed_port(mbx: &MessageBox, name: &str, url: &str, stop_on_failure: bool) {
    let mut spec = SendPortSpec::new(name, url)
        .with_filter("exists(Seq.N)")
        .with_state(InitialState::Started);
    spec.ordered = true;
    spec.ordered_by = Some("Order.Customer".into());
    spec.ordered_buckets = Some(16);
    spec.stop_on_failure = stop_on_failure;
    spec.retry_count = 0;
    mbx.send_port_create(&spec).await.expect("keyed send port");
}

async fn publish(mbx: &MessageBox, messages: Vec<NewMessage>) -> Vec<Published> {
    mbx.publish(&Publisher::default(), messages)
        .await
        .expect("publish")
}

/// Per key, the numbers of the bodies in order of first arrival, and the number of
/// duplicate arrivals of each key.
fn per_key(requests: &[Request]) -> (BTreeMap<String, Vec<usize>>, BTreeMap<String, usize>) {
    let mut first: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut dups: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for r in requests {
        let Some((key, n)) = r.body.split_once(' ') else {
            panic!("unexpected body {:?}", r.body);
        };
        let n: usize = n.parse().expect("number");
        if seen.insert(r.body.clone()) {
            first.entry(key.to_owned()).or_default().push(n);
        } else {
            *dups.entry(key.to_owned()).or_default() += 1;
        }
    }
    (first, dups)
}

const KEYS: usize = 20;
const PER_KEY: usize = 40;

/// The T1 kill test on a port ordered by a property: two hosts share its 16 buckets (each
/// holds some before the kill), the
/// endpoint takes 5 ms per request; once a fifth of the messages arrived, the instance
/// holding a bucket is killed -9 (and restarted, as a supervisor would). Every key's
/// first arrivals are strictly increasing, nothing is lost, a key is re-sent at most its
/// commit batch, the keys went concurrently, and the killed instance's buckets moved by
/// expiry to the other instance with epoch + 1.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn killing_a_bucket_owner_loses_and_reorders_no_key(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let (sink_port, sink) = start_sink().await;
    keyed_port(
        &mbx,
        "accounts",
        &format!("http://127.0.0.1:{sink_port}/sink"),
        false,
    )
    .await;
    let url = database_url(&pool);
    let mut hosts = vec![start_host(&url, FAST_HOST), start_host(&url, FAST_HOST)];
    wait_for_alive(&mbx, 2).await;

    // keys interleaved, published in batches of 50 (each key's numbers in order)
    let all: Vec<(String, usize)> = (0..PER_KEY)
        .flat_map(|n| (0..KEYS).map(move |k| (format!("k{k:02}"), n)))
        .collect();
    for chunk in all.chunks(50) {
        let outcomes = publish(&mbx, chunk.iter().map(|(k, n)| keyed(k, *n)).collect()).await;
        assert!(outcomes
            .iter()
            .all(|o| matches!(o, Published::Routed { deliveries: 1, .. })));
    }
    let total = KEYS * PER_KEY;

    // the buckets spread: both instances hold some (each its fair share, 8 of 16)
    wait_for(
        "both instances holding buckets",
        Duration::from_secs(30),
        || async {
            let holders: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT l.holder) FROM leases l JOIN send_ports p ON p.id = l.port_id
              WHERE p.name = 'accounts' AND l.expires_at > now()",
        )
        .fetch_one(&pool)
        .await
        .expect("holders");
            holders == 2
        },
    )
    .await;
    wait_for(
        "a fifth of the messages",
        Duration::from_secs(60),
        || async { sink.distinct() >= total / 5 },
    )
    .await;
    // the instance holding bucket leases that has the most of them
    let (victim_id, victim_pid, epoch_before): (sqlx::types::Uuid, i32, i64) = sqlx::query_as(
        "SELECT l.holder, i.pid, max(l.epoch)
           FROM leases l JOIN send_ports p ON p.id = l.port_id JOIN host_instances i ON i.id = l.holder
          WHERE p.name = 'accounts' AND l.expires_at > now()
          GROUP BY l.holder, i.pid ORDER BY count(*) DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .expect("a bucket owner");
    let victim = hosts
        .iter()
        .position(|h| h.pid() as i32 == victim_pid)
        .expect("the bucket owner is one of the test's hosts");
    let mut victim = hosts.swap_remove(victim);
    victim.0.kill().expect("SIGKILL");
    victim.0.wait().expect("reap");
    let at_kill = sink.distinct();
    assert!(at_kill < total, "the kill happened during the run");
    hosts.push(start_host(&url, FAST_HOST));

    let done = eventually(LEASE_TTL + Duration::from_secs(60), || async {
        sink.distinct() >= total
    })
    .await;
    // the killed owner's last batch may have reached the endpoint unconfirmed: it is re-sent
    // once its buckets expire, so the arrivals are judged when no delivery is left
    let deliveries = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM deliveries")
            .fetch_one(&pool)
            .await
            .expect("deliveries")
    };
    let drained = eventually(LEASE_TTL + Duration::from_secs(30), || async {
        deliveries().await == 0
    })
    .await;
    let requests = sink.by_arrival();
    let (first, dups) = per_key(&requests);
    eprintln!(
        "{} requests, {} distinct, {at_kill} at the kill; duplicates per key {dups:?}; \
         most requests at once {}",
        requests.len(),
        sink.distinct(),
        sink.max_in_flight.load(Ordering::SeqCst)
    );
    assert!(
        done,
        "every message arrived: {} of {total}",
        sink.distinct()
    );
    assert!(
        drained,
        "every delivery completed: {} left",
        deliveries().await
    );
    assert_eq!(first.len(), KEYS, "every key arrived");
    for (key, numbers) in &first {
        let expected: Vec<usize> = (0..PER_KEY).collect();
        assert_eq!(
            numbers, &expected,
            "key {key}: first arrivals strictly increasing, none lost"
        );
    }
    for (key, d) in &dups {
        assert!(
            *d <= COMMIT_BATCH,
            "key {key} re-sent {d} times: at most its commit batch ({COMMIT_BATCH}) per takeover"
        );
    }
    assert!(
        sink.max_in_flight.load(Ordering::SeqCst) > 1,
        "keys are sent concurrently"
    );
    // every message may have arrived before the killed instance's buckets expired (the
    // last ones can lie in buckets it did not hold): they expire within the lease TTL
    let released = eventually(LEASE_TTL + Duration::from_secs(10), || async {
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM leases WHERE holder = $1 AND expires_at > now()",
        )
        .bind(victim_id)
        .fetch_one(&pool)
        .await
        .expect("leases");
        live == 0
    })
    .await;
    assert!(released, "the killed instance holds no live bucket");
    // and are taken by the live instances (by expiry, with epoch + 1)
    let max_epoch = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT max(l.epoch) FROM leases l JOIN send_ports p ON p.id = l.port_id WHERE p.name = 'accounts'",
        )
        .fetch_one(&pool)
        .await
        .expect("epochs")
    };
    eventually(Duration::from_secs(30), || async {
        max_epoch().await > epoch_before
    })
    .await;
    let max_epoch = max_epoch().await;
    assert!(
        max_epoch > epoch_before,
        "a bucket of the killed instance moved with epoch + 1 ({epoch_before} → {max_epoch})"
    );
}

/// An endpoint that refuses (500) every request whose body starts with "bad" while
/// `refusing` is set, and records the others in order of arrival.
async fn picky_endpoint(refusing: Arc<AtomicBool>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let app = Router::new().route(
        "/in",
        post(move |body: String| {
            let (g, refusing) = (g.clone(), refusing.clone());
            async move {
                if body.starts_with("bad") && refusing.load(Ordering::SeqCst) {
                    return (StatusCode::INTERNAL_SERVER_ERROR, "no");
                }
                g.lock().expect("lock").push(body);
                (StatusCode::OK, "ok")
            }
        }),
    );
    (serve_on_loopback(app).await, got)
}

/// `--stop-on-failure` on a port ordered by a property: the failing key is held (its later
/// messages wait), every other key is delivered; `send-port show` lists the held key;
/// `resume --key` delivers the held key's messages in order. A message without the
/// property is suspended `failed-final` at publish, naming the property. `resume` without
/// `--key`, or of a key that is not held, is refused.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_failing_key_is_held_and_the_other_keys_go_on(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let refusing = Arc::new(AtomicBool::new(true));
    let (port, got) = picky_endpoint(refusing.clone()).await;
    keyed_port(
        &mbx,
        "accounts",
        &format!("http://127.0.0.1:{port}/in"),
        true,
    )
    .await;
    let url = database_url(&pool);
    let _host = start_host(&url, FAST_HOST);
    wait_for_alive(&mbx, 1).await;

    let mut batch = Vec::new();
    for n in 0..5 {
        for key in ["good", "fine", "bad"] {
            batch.push(keyed(key, n));
        }
    }
    // no key: suspended at publish, the others unaffected
    let mut ctx = Context::new();
    ctx.promote("Seq.N", Value::Integer(99)).expect("promote");
    batch.push(NewMessage::new("keyless", "text/plain", ctx));
    publish(&mbx, batch).await;

    let delivered = |key: &'static str| {
        let got = got.clone();
        move || {
            let got = got.clone();
            async move {
                got.lock()
                    .expect("lock")
                    .iter()
                    .filter(|b| b.starts_with(key))
                    .count()
            }
        }
    };
    wait_for(
        "the good and fine keys",
        Duration::from_secs(30),
        || async { delivered("good")().await == 5 && delivered("fine")().await == 5 },
    )
    .await;
    let cli = Mbx::new(url.clone());
    let show = cli.json(&["send-port", "show", "accounts"]);
    let held = show["keys"]["held_keys"].as_array().expect("held keys");
    assert_eq!(held.len(), 1, "one key held: {show}");
    assert_eq!(held[0]["key"], "bad");
    assert_eq!(held[0]["waiting"], 5, "the head and 4 behind it wait");
    assert_eq!(show["port"]["state"], "started", "the port itself goes on");
    let text = cli.ok(&["send-port", "show", "accounts"]);
    assert!(text.contains("HELD KEY") && text.contains("bad"), "{text}");

    // more messages of a good key still go while bad is held
    publish(&mbx, vec![keyed("good", 5), keyed("bad", 5)]).await;
    wait_for(
        "good 5 while bad is held",
        Duration::from_secs(30),
        || async { delivered("good")().await == 6 },
    )
    .await;
    assert_eq!(
        delivered("bad")().await,
        0,
        "nothing of the held key was sent"
    );
    // what was claimed behind the held head was given back: nothing counts as in flight
    wait_for(
        "nothing in flight on the held port",
        Duration::from_secs(10),
        || async {
            let in_flight: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM deliveries d JOIN send_ports p ON p.id = d.port_id
              WHERE p.name = 'accounts' AND d.state = 'claimed'",
            )
            .fetch_one(&pool)
            .await
            .expect("claimed");
            in_flight == 0
        },
    )
    .await;

    let keyless: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT s.kind, s.reason FROM suspended_items s JOIN send_ports p ON p.id = s.port_id
          WHERE p.name = 'accounts'",
    )
    .fetch_all(&pool)
    .await
    .expect("suspended");
    assert_eq!(
        keyless.len(),
        1,
        "only the keyless message is suspended: {keyless:?}"
    );
    assert_eq!(keyless[0].0, "failed-final");
    assert!(
        keyless[0]
            .1
            .as_deref()
            .is_some_and(|r| r.contains("Order.Customer")),
        "the reason names the property: {keyless:?}"
    );

    let refused = cli.fails(&["send-port", "resume", "accounts"], 1);
    assert!(refused.contains("--key"), "{refused}");
    let refused = cli.fails(&["send-port", "resume", "accounts", "--key", "good"], 1);
    assert!(refused.contains("not held"), "{refused}");

    refusing.store(false, Ordering::SeqCst);
    let out = cli.ok(&["send-port", "resume", "accounts", "--key", "bad"]);
    assert!(out.contains("bad"), "{out}");
    wait_for(
        "the held key's messages",
        Duration::from_secs(30),
        || async { delivered("bad")().await == 6 },
    )
    .await;
    let bad: Vec<String> = got
        .lock()
        .expect("lock")
        .iter()
        .filter(|b| b.starts_with("bad"))
        .cloned()
        .collect();
    let expected: Vec<String> = (0..6).map(|n| format!("bad {n}")).collect();
    assert_eq!(
        bad, expected,
        "the held key's messages, in order, once each"
    );
    let holds: i64 = sqlx::query_scalar("SELECT count(*) FROM ordered_holds")
        .fetch_one(&pool)
        .await
        .expect("holds");
    assert_eq!(holds, 0);
}

/// A routing failure resumed once a group routes it to a port ordered by a property it
/// does not carry: suspended again as `failed-final` on that port, keeping the path it came
/// by (the group), and naming the property; nothing is left waiting.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_keyless_message_routed_again_through_a_group_is_suspended_on_the_keyed_port(
    pool: PgPool,
) {
    let mbx = messagebox(&pool).await;
    let mut ctx = Context::new();
    ctx.promote("Seq.N", Value::Integer(1)).expect("promote");
    let outcome = publish(&mbx, vec![NewMessage::new("keyless", "text/plain", ctx)]).await;
    assert!(
        matches!(outcome[0], Published::RoutingFailure { .. }),
        "nobody subscribes yet: {outcome:?}"
    );
    let mut spec = SendPortSpec::new("accounts", "null://out")
        .with_filter("Order.Customer == \"nobody\"")
        .with_state(InitialState::Started);
    spec.ordered = true;
    spec.ordered_by = Some("Order.Customer".into());
    mbx.send_port_create(&spec).await.expect("keyed port");
    mbx.group_create("all", Some("exists(Seq.N)"), InitialState::Started)
        .await
        .expect("group");
    mbx.group_add("all", &["accounts".to_owned()])
        .await
        .expect("member");
    let report = mbx
        .suspended_resume(&mbx_messagebox::suspended::Selector {
            kind: Some("routing-failure".parse().expect("kind")),
            ..Default::default()
        })
        .await
        .expect("resume");
    assert_eq!(report.resumed, 1, "{report:?}");
    let items: Vec<(String, bool, Vec<i64>, Option<String>)> = sqlx::query_as(
        "SELECT s.kind, s.via_port, s.via_groups, s.reason FROM suspended_items s
           JOIN send_ports p ON p.id = s.port_id WHERE p.name = 'accounts'",
    )
    .fetch_all(&pool)
    .await
    .expect("items");
    let group_id: i64 = sqlx::query_scalar("SELECT id FROM send_port_groups WHERE name = 'all'")
        .fetch_one(&pool)
        .await
        .expect("group id");
    assert_eq!(items.len(), 1, "{items:?}");
    let (kind, via_port, via_groups, reason) = &items[0];
    assert_eq!(kind, "failed-final");
    assert!(!via_port, "it came through the group only");
    assert_eq!(via_groups, &vec![group_id], "the group path is kept");
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("Order.Customer")),
        "{reason:?}"
    );
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries")
        .fetch_one(&pool)
        .await
        .expect("deliveries");
    assert_eq!(waiting, 0);
}
