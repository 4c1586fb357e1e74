//! Orchestrations through real `mbx-host` processes and real PostgreSQL: an order
//! manager activated by a message calls an HTTP endpoint, waits for its correlated
//! approval and publishes its confirmation; follow-ups reach their own instance among
//! many waiting; a follow-up that arrives before its listen still reaches it; a durable
//! timer fires after its host was killed and another started; kill -9 at chosen points of
//! a step (a call in flight, a step's publication being delivered) repeats no step and
//! resends the call byte-identical.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mbx_e2e::orders::{instances_in, message, publish, wait_instances};
use mbx_e2e::{
    bodies_in, count, database_url, messagebox, serve_on_loopback, start_host, wait_for, Mbx,
    FAST_HOST,
};
use sqlx::PgPool;

/// Declares `Order.Id`, creates the orchestration `yaml` and a FILE port writing every
/// `OrderConfirmed` and `OrderRejected` to `out`.
fn bind(cli: &Mbx, dir: &std::path::Path, yaml: &str) -> std::path::PathBuf {
    mbx_e2e::orders::bind(cli, dir, yaml, &["OrderConfirmed", "OrderRejected"])
}

/// The order manager of the docs, calling `quote` for its price.
fn order_manager(quote: &str) -> String {
    include_str!("../demo/order-manager.yaml").replace("http://127.0.0.1:9290/quote", quote)
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_order_manager_calls_out_waits_for_its_approval_and_confirms(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    // the quote service records each call's Idempotency-Key
    let keys: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = keys.clone();
    let app = axum::Router::new().route(
        "/quote",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                seen.lock().expect("keys").push(key);
                let item: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let answer = serde_json::json!({"item": item["item"], "price": 12.5});
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    answer.to_string(),
                )
            }
        }),
    );
    let port = serve_on_loopback(app).await;
    let out = bind(
        &cli,
        dir.path(),
        &order_manager(&format!("http://127.0.0.1:{port}/quote")),
    );
    // the approval requests it publishes go to the approvers (here: nowhere, delivered)
    cli.ok(&[
        "send-port",
        "create",
        "approvers",
        "--start",
        "--filter",
        "mbx.MessageType == 'ApprovalRequest'",
        "--address",
        "null://",
    ]);
    let _host = start_host(&url, FAST_HOST);

    publish(
        &mbx,
        vec![message(
            "OrderRequest",
            "A-1",
            serde_json::json!({"item": "widget"}),
        )],
    )
    .await;
    wait_instances(&pool, "waiting", 1, Duration::from_secs(30)).await;
    assert_eq!(keys.lock().expect("keys").len(), 1, "one call");
    publish(
        &mbx,
        vec![message(
            "OrderApproval",
            "A-1",
            serde_json::json!({"approved": true}),
        )],
    )
    .await;
    wait_for("the confirmation", Duration::from_secs(30), || async {
        !bodies_in(&out, "json").is_empty()
    })
    .await;
    let confirmation: serde_json::Value =
        serde_json::from_str(&bodies_in(&out, "json")[0]).expect("json");
    assert_eq!(
        confirmation,
        serde_json::json!({"orderId": "A-1", "total": 12.5})
    );
    wait_instances(&pool, "completed", 1, Duration::from_secs(30)).await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM orchestration_subscriptions").await,
        0
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM suspended_items").await,
        0
    );
}

/// A definition that keeps its order id, waits `pause`, then takes its `Go` by
/// correlation and publishes `OrderConfirmed` with what it was told.
fn wait_then_listen(pause: &str) -> String {
    format!(
        r#"document: {{dsl: 1.0.3, namespace: orders, name: waiter, version: 1.0.0}}
schedule:
  on:
    one:
      with: {{type: Start}}
      correlate: {{orderId: {{from: '${{ .properties["Order.Id"] }}'}}}}
do:
  - keep:
      set: {{orderId: '${{ .[0].properties["Order.Id"] }}'}}
      export: {{as: '${{ . }}'}}
  - pause: {{wait: {pause}}}
  - go:
      listen:
        to:
          one:
            with: {{type: Go}}
            correlate: {{orderId: {{from: '${{ .properties["Order.Id"] }}', expect: '${{ $context.orderId }}'}}}}
  - done:
      emit:
        event:
          with:
            source: https://orders.example/waiter
            type: OrderConfirmed
            Order.Id: '${{ $context.orderId }}'
            data: '${{ {{orderId: $context.orderId, said: .[0].said}} }}'
"#
    )
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn each_follow_up_reaches_its_own_instance_among_many_waiting(pool: PgPool) {
    const N: usize = 10_000;
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bind(&cli, dir.path(), &wait_then_listen("PT0S"));
    let _host = start_host(&url, FAST_HOST);
    for chunk in (0..N).collect::<Vec<_>>().chunks(100) {
        let starts = chunk
            .iter()
            .map(|i| message("Start", &format!("O-{i}"), serde_json::json!({})))
            .collect();
        publish(&mbx, starts).await;
    }
    wait_instances(&pool, "waiting", N as i64, Duration::from_secs(300)).await;
    // the follow-ups in reverse order, each saying which order it was for
    for chunk in (0..N).rev().collect::<Vec<_>>().chunks(100) {
        let gos = chunk
            .iter()
            .map(|i| {
                message(
                    "Go",
                    &format!("O-{i}"),
                    serde_json::json!({"said": format!("O-{i}")}),
                )
            })
            .collect();
        publish(&mbx, gos).await;
    }
    wait_for("every confirmation", Duration::from_secs(300), || async {
        bodies_in(&out, "json").len() == N
    })
    .await;
    for body in bodies_in(&out, "json") {
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            v["orderId"], v["said"],
            "a follow-up went to another instance: {v}"
        );
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM suspended_items").await,
        0
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_follow_up_that_arrives_before_its_listen_still_reaches_it(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bind(&cli, dir.path(), &wait_then_listen("PT3S"));
    let _host = start_host(&url, FAST_HOST);
    publish(&mbx, vec![message("Start", "E-1", serde_json::json!({}))]).await;
    // the instance's first step fixed its order id and subscribed by it: it waits on its timer
    wait_for(
        "the instance waiting on its timer",
        Duration::from_secs(30),
        || async {
            count(
                &pool,
                "SELECT count(*) FROM orchestration_subscriptions WHERE NOT activation",
            )
            .await
                == 1
        },
    )
    .await;
    publish(
        &mbx,
        vec![message("Go", "E-1", serde_json::json!({"said": "early"}))],
    )
    .await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM orchestration_inbox WHERE NOT consumed AND NOT activating"
        )
        .await,
        1,
        "held for the instance, not a routing failure"
    );
    wait_for("the confirmation", Duration::from_secs(30), || async {
        bodies_in(&out, "json").len() == 1
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&bodies_in(&out, "json")[0]).expect("json");
    assert_eq!(v["said"], "early");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_timer_fires_after_its_host_was_killed_and_another_started(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bind(&cli, dir.path(), &wait_then_listen("PT4S"));
    let mut host = start_host(&url, FAST_HOST);
    publish(&mbx, vec![message("Start", "T-1", serde_json::json!({}))]).await;
    wait_for("the instance waiting on its timer", Duration::from_secs(30), || async {
        count(&pool, "SELECT count(*) FROM orchestration_instances WHERE state = 'waiting' AND runnable_at IS NOT NULL").await == 1
    })
    .await;
    publish(
        &mbx,
        vec![message(
            "Go",
            "T-1",
            serde_json::json!({"said": "after the timer"}),
        )],
    )
    .await;
    host.0.kill().expect("kill -9");
    let _ = host.0.wait();
    assert!(bodies_in(&out, "json").is_empty(), "not before its timer");
    let _again = start_host(&url, FAST_HOST);
    wait_for(
        "the confirmation after the restart",
        Duration::from_secs(60),
        || async { bodies_in(&out, "json").len() == 1 },
    )
    .await;
}

/// An HTTP endpoint that records each request's Idempotency-Key and body and tells the
/// test about it; the first request is held (never answered: the test kills the host
/// that sent it), the others get `answer`.
struct Endpoint {
    seen: Arc<Mutex<Vec<(String, String)>>>,
    arrived: tokio::sync::mpsc::UnboundedReceiver<()>,
    port: u16,
}

async fn endpoint(path: &'static str, answer: serde_json::Value) -> Endpoint {
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let (tell, arrived) = tokio::sync::mpsc::unbounded_channel();
    let record = seen.clone();
    let app = axum::Router::new().route(
        path,
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let (record, tell, answer) = (record.clone(), tell.clone(), answer.clone());
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let first = {
                    let mut r = record.lock().expect("seen");
                    r.push((key, body));
                    r.len() == 1
                };
                let _ = tell.send(());
                if first {
                    // held until its sender is killed (then this future is dropped)
                    std::future::pending::<()>().await;
                }
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    answer.to_string(),
                )
            }
        }),
    );
    Endpoint {
        seen,
        arrived,
        port: serve_on_loopback(app).await,
    }
}

/// kill -9 at two chosen points of an instance's steps — while its call is in flight
/// (after the step that prepared it committed) and while the message its next step
/// published is being delivered (after that step committed): the call is made crashes + 1
/// times with one Idempotency-Key and identical bytes, and the step's publication exists
/// once (its deliveries may repeat, with one key).
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn kills_in_the_middle_of_steps_repeat_no_step_and_resend_calls_byte_identical(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut quote = endpoint("/quote", serde_json::json!({"price": 12.5})).await;
    let mut approvers = endpoint("/approvers", serde_json::json!({})).await;
    let out = bind(
        &cli,
        dir.path(),
        &order_manager(&format!("http://127.0.0.1:{}/quote", quote.port)),
    );
    cli.ok(&[
        "send-port",
        "create",
        "approvers",
        "--start",
        "--filter",
        "mbx.MessageType == 'ApprovalRequest'",
        "--address",
        &format!("http://127.0.0.1:{}/approvers", approvers.port),
    ]);
    let first = start_host(&url, FAST_HOST);
    publish(
        &mbx,
        vec![message(
            "OrderRequest",
            "K-1",
            serde_json::json!({"item": "bolt"}),
        )],
    )
    .await;

    // 1. killed while its call is in flight
    quote.arrived.recv().await.expect("the first call");
    drop(first); // kill -9
    let second = start_host(&url, FAST_HOST);
    tokio::time::timeout(Duration::from_secs(60), quote.arrived.recv())
        .await
        .expect("the call sent again after the takeover");

    // 2. killed while the approval request its next step published is delivered
    tokio::time::timeout(Duration::from_secs(60), approvers.arrived.recv())
        .await
        .expect("the approval request");
    drop(second); // kill -9
    let _third = start_host(&url, FAST_HOST);
    tokio::time::timeout(Duration::from_secs(60), approvers.arrived.recv())
        .await
        .expect("the approval request delivered again after the takeover");

    publish(
        &mbx,
        vec![message(
            "OrderApproval",
            "K-1",
            serde_json::json!({"approved": true}),
        )],
    )
    .await;
    wait_for("the confirmation", Duration::from_secs(60), || async {
        bodies_in(&out, "json").len() == 1
    })
    .await;

    let calls = quote.seen.lock().expect("seen").clone();
    assert_eq!(
        calls.len(),
        2,
        "one crash during the call: 2 calls: {calls:?}"
    );
    assert_eq!(calls[0], calls[1], "the same Idempotency-Key and body");
    let requests = approvers.seen.lock().expect("seen").clone();
    let keys: std::collections::BTreeSet<&String> = requests.iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys.len(),
        1,
        "the approval request was published once (delivered {} times): {requests:?}",
        requests.len()
    );
    assert_eq!(instances_in(&pool, "completed").await, 1);
    let confirmed: serde_json::Value =
        serde_json::from_str(&bodies_in(&out, "json")[0]).expect("json");
    assert_eq!(confirmed["total"], 12.5);
}

/// A convoy of two items per order: the first activates, a listen takes the second.
const PAIRS: &str = r#"document: {dsl: 1.0.3, namespace: orders, name: pairs, version: 1.0.0}
schedule:
  on:
    one:
      with: {type: Item}
      correlate: {orderId: {from: '${ .properties["Order.Id"] }'}}
do:
  - keep:
      set: {orderId: '${ .[0].properties["Order.Id"] }', first: '${ .[0].data.n }'}
      export: {as: '${ . }'}
  - second:
      listen:
        to:
          one:
            with: {type: Item}
            correlate: {orderId: {from: '${ .properties["Order.Id"] }', expect: '${ $context.orderId }'}}
  - done:
      emit:
        event:
          with:
            source: https://orders.example/pairs
            type: OrderConfirmed
            Order.Id: '${ $context.orderId }'
            data: '${ {pair: [$context.first, .[0].n]} }'
"#;

/// The race of a message and a completing convoy (docs/orchestrations.md, "Races"): a third item held for an
/// instance that completes without taking it activates the next instance of the convoy
/// instead of becoming a zombie.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_message_left_by_a_completing_convoy_activates_the_next_instance(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bind(&cli, dir.path(), PAIRS);
    let item = |n: i64| message("Item", "P-1", serde_json::json!({ "n": n }));
    // all three in one publish: the first activates, the others are held for its instance
    publish(&mbx, vec![item(1), item(2), item(3)]).await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM orchestration_instances").await,
        1,
        "one instance per convoy"
    );
    let _host = start_host(&url, FAST_HOST);
    wait_for(
        "the first pair, and the next instance waiting",
        Duration::from_secs(30),
        || async {
            bodies_in(&out, "json").len() == 1 && instances_in(&pool, "waiting").await == 1
        },
    )
    .await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM suspended_items").await,
        0,
        "no zombie"
    );
    publish(&mbx, vec![item(4)]).await;
    wait_for("the second pair", Duration::from_secs(30), || async {
        bodies_in(&out, "json").len() == 2
    })
    .await;
    let mut pairs: Vec<serde_json::Value> = bodies_in(&out, "json")
        .iter()
        .map(|b| serde_json::from_str::<serde_json::Value>(b).expect("json")["pair"].clone())
        .collect();
    pairs.sort_by_key(|p| p[0].as_i64());
    assert_eq!(
        pairs,
        vec![serde_json::json!([1, 2]), serde_json::json!([3, 4])]
    );
}

/// Waits for an approval for 2 s; on the timeout it rejects the order.
const TIMED: &str = r#"document: {dsl: 1.0.3, namespace: orders, name: timed, version: 1.0.0}
schedule:
  on:
    one:
      with: {type: Start}
      correlate: {orderId: {from: '${ .properties["Order.Id"] }'}}
do:
  - keep:
      set: {orderId: '${ .[0].properties["Order.Id"] }'}
      export: {as: '${ . }'}
  - wait:
      try:
        - approval:
            listen:
              to:
                one:
                  with: {type: Go}
                  correlate: {orderId: {from: '${ .properties["Order.Id"] }', expect: '${ $context.orderId }'}}
            timeout: {after: {seconds: 2}}
      catch:
        errors: {with: {status: 408}}
        do:
          - late:
              emit:
                event:
                  with:
                    source: https://orders.example/timed
                    type: OrderRejected
                    Order.Id: '${ $context.orderId }'
                    data: '${ {orderId: $context.orderId, outcome: "rejected"} }'
              then: end
  - ok:
      emit:
        event:
          with:
            source: https://orders.example/timed
            type: OrderConfirmed
            Order.Id: '${ $context.orderId }'
            data: '${ {orderId: $context.orderId, outcome: "confirmed"} }'
"#;

/// The race of a timer and a message for the same wait (docs/orchestrations.md, "Races"): each message is
/// published when its instance's timeout falls due. Whichever commits first wins: the
/// order is confirmed (the message taken) or rejected (timed out) — never both — and a
/// message the timed-out instance did not take is a zombie, never lost.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_timer_and_a_message_for_one_wait_resolve_to_exactly_one_outcome(pool: PgPool) {
    const N: usize = 20;
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bind(&cli, dir.path(), TIMED);
    let _host = start_host(&url, FAST_HOST);
    let starts = (0..N)
        .map(|i| message("Start", &format!("R-{i}"), serde_json::json!({})))
        .collect();
    publish(&mbx, starts).await;
    wait_instances(&pool, "waiting", N as i64, Duration::from_secs(30)).await;
    // the messages go out when the timeouts fall due (the race is placed, not awaited)
    let until_due: f64 = sqlx::query_scalar(
        "SELECT greatest(extract(epoch FROM avg(runnable_at - now())), 0)::float8
           FROM orchestration_instances",
    )
    .fetch_one(&pool)
    .await
    .expect("due");
    tokio::time::sleep(Duration::from_secs_f64(until_due)).await;
    let gos = (0..N)
        .map(|i| message("Go", &format!("R-{i}"), serde_json::json!({})))
        .collect();
    publish(&mbx, gos).await;
    wait_for(
        "every instance ended, its outcome delivered",
        Duration::from_secs(60),
        || async {
            instances_in(&pool, "completed").await == N as i64 && bodies_in(&out, "json").len() >= N
        },
    )
    .await;
    let outcomes: Vec<serde_json::Value> = bodies_in(&out, "json")
        .iter()
        .map(|b| serde_json::from_str(b).expect("json"))
        .collect();
    assert_eq!(outcomes.len(), N, "one outcome per order: {outcomes:?}");
    let orders: std::collections::BTreeSet<String> =
        outcomes.iter().map(|o| o["orderId"].to_string()).collect();
    assert_eq!(orders.len(), N, "never both outcomes for one order");
    let rejected = outcomes
        .iter()
        .filter(|o| o["outcome"] == "rejected")
        .count() as i64;
    // each timed-out instance's message is kept: a zombie naming it if it was held for
    // it, a routing failure if it came after the instance ended
    assert_eq!(
        count(&pool, "SELECT count(*) FROM suspended_items").await,
        rejected,
        "every message a timed-out instance did not take is suspended"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM suspended_items WHERE kind NOT IN ('zombie', 'routing-failure')"
        )
        .await,
        0
    );
}

/// The events of instance `order`'s history, as `mbx orchestration instance history`
/// shows them, and how many of them are rows of their own.
async fn history(cli: &Mbx, pool: &PgPool, order: &str) -> (Vec<String>, i64) {
    let id: String = sqlx::query_scalar(
        "SELECT id::text FROM orchestration_instances WHERE correlation::text LIKE '%' || $1 || '%'",
    )
    .bind(format!("\"{order}\""))
    .fetch_one(pool)
    .await
    .expect("the instance");
    let shown = cli.json(&["orchestration", "instance", "history", &id]);
    let events = shown
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event"].as_str().map(str::to_owned))
        .collect();
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orchestration_events WHERE instance_id = $1::text::uuid",
    )
    .bind(&id)
    .fetch_one(pool)
    .await
    .expect("rows");
    (events, rows)
}

/// Instance events follow the host's tracking level: `failures` (the default) keeps a
/// running instance's events in its row — shown by `history`, no row of their own — and
/// records only the final state of one that ends cleanly; `all` records every event;
/// `off` none.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn instance_events_follow_the_hosts_tracking_level(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bind(&cli, dir.path(), &wait_then_listen("PT0S"));
    let _host = start_host(&url, FAST_HOST);
    let waiting = |n: i64| wait_instances(&pool, "waiting", n, Duration::from_secs(30));
    let confirmed = |n: usize| {
        let out = out.clone();
        async move {
            wait_for("the confirmations", Duration::from_secs(30), || async {
                bodies_in(&out, "json").len() == n
            })
            .await
        }
    };
    let go = |order: &str| message("Go", order, serde_json::json!({"said": order}));

    // failures: the trail while it runs, then only its final state
    publish(&mbx, vec![message("Start", "T-1", serde_json::json!({}))]).await;
    waiting(1).await;
    let (events, rows) = history(&cli, &pool, "T-1").await;
    assert_eq!(events.first().map(String::as_str), Some("activated"));
    assert_eq!(events.last().map(String::as_str), Some("waiting"));
    assert_eq!(rows, 0, "a running instance's events are kept in its row");
    publish(&mbx, vec![go("T-1")]).await;
    confirmed(1).await;
    assert_eq!(
        history(&cli, &pool, "T-1").await,
        (vec!["completed".to_owned()], 1)
    );

    // all: every event, each a row
    cli.ok(&["host", "update", "default", "--tracking", "all"]);
    publish(&mbx, vec![message("Start", "T-2", serde_json::json!({}))]).await;
    waiting(1).await;
    publish(&mbx, vec![go("T-2")]).await;
    confirmed(2).await;
    let (events, rows) = history(&cli, &pool, "T-2").await;
    assert_eq!(events.first().map(String::as_str), Some("activated"));
    assert!(
        events.ends_with(&[
            "consumed".to_owned(),
            "published".to_owned(),
            "completed".to_owned()
        ]),
        "{events:?}"
    );
    assert_eq!(rows, events.len() as i64);

    // off: nothing
    cli.ok(&["host", "update", "default", "--tracking", "off"]);
    publish(&mbx, vec![message("Start", "T-3", serde_json::json!({}))]).await;
    waiting(1).await;
    publish(&mbx, vec![go("T-3")]).await;
    confirmed(3).await;
    assert_eq!(history(&cli, &pool, "T-3").await, (Vec::new(), 0));
}
