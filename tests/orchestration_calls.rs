//! Calls through solicit-response send ports (`call: NAME@mbx`), through a real
//! `mbx-host` and real PostgreSQL: the port's retries carry an instance's request past
//! its endpoint's failures and the answer reaches the instance; a request the port
//! suspends raises `communication` in the instance, which handles it; an answer after an
//! operator resumes that request reaches the instance, which never takes it, and becomes
//! a zombie naming it when it ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mbx_e2e::orders::{message, publish, wait_instances};
use mbx_e2e::{
    bodies_in, count, database_url, messagebox, serve_on_loopback, start_host, wait_for, Mbx,
    FAST_HOST,
};
use sqlx::PgPool;

/// A quote service that answers 500 to its first `failures` requests (all when
/// `usize::MAX`), then `{"price": 9, "item": …}`; counts the requests it got.
async fn quote_service(failures: Arc<AtomicUsize>) -> (u16, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let app = axum::Router::new().route(
        "/quote",
        axum::routing::post(move |body: String| {
            let (seen, failures) = (seen.clone(), failures.clone());
            async move {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                if n < failures.load(Ordering::SeqCst) {
                    return (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        "quotes are down".to_owned(),
                    );
                }
                let order: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let answer = serde_json::json!({"item": order["item"], "price": 9});
                (axum::http::StatusCode::OK, answer.to_string())
            }
        }),
    );
    (serve_on_loopback(app).await, calls)
}

/// An orchestration activated by `OrderRequest` that prices the order through the
/// `quote-svc` port and confirms it with the price; a communication error rejects it,
/// with the error's status, and then waits for the order's `OrderClosed`.
const PRICER: &str = r#"
document: {dsl: 1.0.3, namespace: orders, name: pricer, version: 1.0.0}
schedule:
  on:
    one:
      with: {type: OrderRequest}
      correlate: {orderId: {from: '${ .properties["Order.Id"] }'}}
do:
  - remember:
      set: {orderId: '${ .[0].properties["Order.Id"] }', item: '${ .[0].data.item }'}
      export: {as: '${ $context + . }'}
  - attempt:
      try:
        - price:
            call: quote-svc@mbx
            with: {body: '${ { item: $context.item } }'}
        - confirm:
            emit:
              event:
                with:
                  source: https://orders.example/pricer
                  type: OrderConfirmed
                  Order.Id: '${ $context.orderId }'
                  data: '${ { orderId: $context.orderId, price: .price } }'
      catch:
        errors: {with: {type: 'https://serverlessworkflow.io/spec/1.0.0/errors/communication'}}
        as: failure
        do:
          - reject:
              emit:
                event:
                  with:
                    source: https://orders.example/pricer
                    type: OrderRejected
                    Order.Id: '${ $context.orderId }'
                    data: '${ { orderId: $context.orderId, status: $failure.status, detail: $failure.detail } }'
          - closing:
              listen:
                to:
                  one:
                    with: {type: OrderClosed}
                    correlate:
                      orderId: {from: '${ .properties["Order.Id"] }', expect: '${ $context.orderId }'}
"#;

/// Binds the pricer, the `quote-svc` port (solicit-response, no filter: only calls reach
/// it) to `service` with `retries` retries a second apart, and a FILE port for results.
fn bind(cli: &Mbx, dir: &std::path::Path, service: u16, retries: &str) -> std::path::PathBuf {
    cli.ok(&["property", "create", "Order.Id", "--type", "string"]);
    cli.ok(&[
        "send-port",
        "create",
        "quote-svc",
        "--start",
        "--solicit-response",
        "--address",
        &format!("http://127.0.0.1:{service}/quote"),
        "--retry-count",
        retries,
        "--retry-interval",
        "1s",
    ]);
    let file = dir.join("pricer.yaml");
    std::fs::write(&file, PRICER).expect("write definition");
    cli.ok(&[
        "orchestration",
        "create",
        "-f",
        file.to_str().expect("path"),
    ]);
    mbx_e2e::orders::results_port(cli, dir, &["OrderConfirmed", "OrderRejected"])
}

async fn results(out: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    wait_for("the results", Duration::from_secs(60), || async {
        bodies_in(out, "json").len() >= n
    })
    .await;
    bodies_in(out, "json")
        .iter()
        .map(|b| serde_json::from_str(b).expect("JSON result"))
        .collect()
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_port_call_is_retried_by_its_port_past_endpoint_failures_and_answers_the_instance(
    pool: PgPool,
) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let (service, calls) = quote_service(Arc::new(AtomicUsize::new(2))).await;
    let out = bind(&cli, dir.path(), service, "5");
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
    let got = results(&out, 1).await;
    assert_eq!(got, [serde_json::json!({"orderId": "A-1", "price": 9})]);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "two failures, then the answer"
    );
    wait_instances(&pool, "completed", 1, Duration::from_secs(30)).await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM suspended_items").await,
        0,
        "nothing suspended: the port's retries carried the request"
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_suspended_port_request_raises_communication_and_a_late_answer_becomes_a_zombie(
    pool: PgPool,
) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let failures = Arc::new(AtomicUsize::new(usize::MAX));
    let (service, calls) = quote_service(failures.clone()).await;
    let out = bind(&cli, dir.path(), service, "1");
    let _host = start_host(&url, FAST_HOST);

    publish(
        &mbx,
        vec![message(
            "OrderRequest",
            "B-1",
            serde_json::json!({"item": "bolt"}),
        )],
    )
    .await;
    // the port tried twice and suspended the request: the instance got a 502
    let got = results(&out, 1).await;
    assert_eq!(got[0]["orderId"], "B-1");
    assert_eq!(got[0]["status"], 502, "{got:?}");
    assert!(
        got[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("quote-svc")),
        "the error names the port: {got:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let suspended: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, kind FROM suspended_items ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("suspended");
    assert_eq!(suspended.len(), 1, "the request only: {suspended:?}");
    let (request_item, _) = &suspended[0];

    // the endpoint recovers and an operator resumes the request: its answer reaches the
    // instance, which no longer waits for it
    failures.store(0, Ordering::SeqCst);
    cli.ok(&["suspended", "resume", &request_item.to_string()]);
    wait_for(
        "the late answer to be held",
        Duration::from_secs(30),
        || async {
            count(
                &pool,
                "SELECT count(*) FROM orchestration_inbox WHERE NOT consumed",
            )
            .await
                == 1
        },
    )
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // the instance ends without taking it: a zombie naming the instance
    publish(
        &mbx,
        vec![message("OrderClosed", "B-1", serde_json::json!({}))],
    )
    .await;
    wait_for("the zombie", Duration::from_secs(30), || async {
        count(
            &pool,
            "SELECT count(*) FROM suspended_items WHERE kind = 'zombie'",
        )
        .await
            == 1
    })
    .await;
    let show = cli.ok(&["suspended", "list", "--kind", "zombie"]);
    let instance: String = sqlx::query_scalar("SELECT id::text FROM orchestration_instances")
        .fetch_one(&pool)
        .await
        .expect("instance");
    assert!(
        show.contains(&instance),
        "the zombie names its instance: {show}"
    );
}
