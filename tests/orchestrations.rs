//! Orchestrations through real `mbx-host` processes and real PostgreSQL: an order
//! manager activated by a message calls an HTTP endpoint, waits for its correlated
//! approval and publishes its confirmation; follow-ups reach their own instance among
//! many waiting; a follow-up that arrives before its listen still reaches it; a durable
//! timer fires after its host was killed and another started.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mbx_e2e::{
    bodies_in, count, database_url, messagebox, serve_on_loopback, start_host, wait_for, Mbx,
    FAST_HOST,
};
use mbx_messagebox::publish::{NewMessage, Publisher};
use mbx_messagebox::{Context, MessageBox, Value};
use sqlx::PgPool;

/// A message of `message_type` for order `order`, its body JSON `data`.
fn message(message_type: &str, order: &str, data: serde_json::Value) -> NewMessage {
    let mut context = Context::new();
    context
        .promote("mbx.MessageType", Value::String(message_type.to_owned()))
        .expect("type");
    context
        .promote("Order.Id", Value::String(order.to_owned()))
        .expect("order id");
    NewMessage::new(data.to_string(), "application/json", context)
}

async fn publish(mbx: &MessageBox, messages: Vec<NewMessage>) {
    mbx.publish(&Publisher::default(), messages)
        .await
        .expect("publish");
}

/// Declares `Order.Id`, creates the orchestration `yaml` (written to a file) and a FILE
/// port writing every `OrderConfirmed` and `OrderRejected` to `out`.
fn bind(cli: &Mbx, dir: &std::path::Path, yaml: &str) -> std::path::PathBuf {
    cli.ok(&["property", "create", "Order.Id", "--type", "string"]);
    let file = dir.join("flow.yaml");
    std::fs::write(&file, yaml).expect("write definition");
    cli.ok(&[
        "orchestration",
        "create",
        "-f",
        file.to_str().expect("path"),
    ]);
    let out = dir.join("out");
    std::fs::create_dir_all(&out).expect("out/");
    cli.ok(&[
        "send-port",
        "create",
        "results",
        "--start",
        "--filter",
        "mbx.MessageType == 'OrderConfirmed' or mbx.MessageType == 'OrderRejected'",
        "--address",
        &format!("file://{}/%MessageID%.json", out.display()),
    ]);
    out
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
    wait_for("the approval request", Duration::from_secs(30), || async {
        count(
            &pool,
            "SELECT count(*) FROM orchestration_instances WHERE state = 'waiting'",
        )
        .await
            == 1
    })
    .await;
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
    wait_for(
        "the instance completed",
        Duration::from_secs(30),
        || async {
            count(
                &pool,
                "SELECT count(*) FROM orchestration_instances WHERE state = 'completed'",
            )
            .await
                == 1
        },
    )
    .await;
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
    const N: usize = 1_000;
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
    wait_for(
        "every instance waiting",
        Duration::from_secs(300),
        || async {
            count(
                &pool,
                "SELECT count(*) FROM orchestration_instances WHERE state = 'waiting'",
            )
            .await
                == N as i64
        },
    )
    .await;
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
