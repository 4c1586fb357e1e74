//! Activation by `schedule.on.any` and `schedule.on.all`, and a parallel convoy
//! (`listen.to.all`), through a real `mbx-host` and real PostgreSQL: either message
//! starts an instance; all of them, in either order and in separate publishes, start one
//! instance with all of them; an instance waiting for several messages takes them
//! whatever order they come in, and only once all are there.

use std::time::Duration;

use mbx_e2e::orders::{bind, instances_in, message, publish, wait_instances};
use mbx_e2e::{bodies_in, count, database_url, messagebox, start_host, wait_for, Mbx, FAST_HOST};
use sqlx::PgPool;

/// A filter on `type` correlated on the order id (`expect`: on the instance's context).
fn filter(message_type: &str, expect: bool) -> String {
    let expect = if expect {
        ", expect: '${ $context.orderId }'"
    } else {
        ""
    };
    format!(
        "{{with: {{type: {message_type}}}, correlate: {{orderId: {{from: '${{ .properties[\"Order.Id\"] }}'{expect}}}}}}}"
    )
}

/// An orchestration activated by `Order` and `Payment` as `strategy` says (`any`, `all`)
/// that emits `Started` naming the types it was started by.
fn activated_by(strategy: &str) -> String {
    format!(
        r#"document: {{dsl: 1.0.3, namespace: orders, name: starter, version: 1.0.0}}
schedule:
  on:
    {strategy}: [{order}, {payment}]
do:
  - started:
      emit:
        event:
          with:
            source: https://orders.example/starter
            type: Started
            Order.Id: '${{ .[0].properties["Order.Id"] }}'
            data: '${{ {{orderId: .[0].properties["Order.Id"], by: ([.[].type] | sort)}} }}'
"#,
        order = filter("Order", false),
        payment = filter("Payment", false),
    )
}

/// The `Started` results by order id: the types each instance was started by.
fn started(out: &std::path::Path) -> Vec<(String, Vec<String>)> {
    let mut all: Vec<(String, Vec<String>)> = bodies_in(out, "json")
        .iter()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).expect("json");
            let by = v["by"]
                .as_array()
                .expect("by")
                .iter()
                .map(|t| t.as_str().expect("type").to_owned())
                .collect();
            (v["orderId"].as_str().expect("orderId").to_owned(), by)
        })
        .collect();
    all.sort();
    all
}

fn pair(order: &str, by: &[&str]) -> (String, Vec<String>) {
    (
        order.to_owned(),
        by.iter().map(|s| (*s).to_owned()).collect(),
    )
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn either_message_of_an_any_activation_starts_an_instance(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bind(&cli, dir.path(), &activated_by("any"), &["Started"]);
    let _host = start_host(&url, FAST_HOST);
    publish(
        &mbx,
        vec![
            message("Order", "A-1", serde_json::json!({})),
            message("Payment", "A-2", serde_json::json!({})),
        ],
    )
    .await;
    wait_for("two instances started", Duration::from_secs(30), || async {
        bodies_in(&out, "json").len() == 2
    })
    .await;
    assert_eq!(
        started(&out),
        vec![pair("A-1", &["Order"]), pair("A-2", &["Payment"])]
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_all_activation_starts_one_instance_once_every_message_is_there(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bind(&cli, dir.path(), &activated_by("all"), &["Started"]);
    let _host = start_host(&url, FAST_HOST);
    // B-1's order alone, then a whole pair for C-1 (and D-1's payment alone)
    publish(&mbx, vec![message("Order", "B-1", serde_json::json!({}))]).await;
    publish(&mbx, vec![message("Payment", "D-1", serde_json::json!({}))]).await;
    publish(
        &mbx,
        vec![
            message("Payment", "C-1", serde_json::json!({})),
            message("Order", "C-1", serde_json::json!({})),
        ],
    )
    .await;
    wait_for("C-1 started", Duration::from_secs(30), || async {
        !bodies_in(&out, "json").is_empty()
    })
    .await;
    assert_eq!(started(&out), vec![pair("C-1", &["Order", "Payment"])]);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM suspended_items").await,
        0,
        "a message waiting for the rest of its activation is held, not a routing failure"
    );
    // the missing halves, in separate publishes
    publish(&mbx, vec![message("Payment", "B-1", serde_json::json!({}))]).await;
    publish(&mbx, vec![message("Order", "D-1", serde_json::json!({}))]).await;
    wait_for("B-1 and D-1 started", Duration::from_secs(30), || async {
        bodies_in(&out, "json").len() == 3
    })
    .await;
    assert_eq!(
        started(&out),
        vec![
            pair("B-1", &["Order", "Payment"]),
            pair("C-1", &["Order", "Payment"]),
            pair("D-1", &["Order", "Payment"]),
        ]
    );
    assert_eq!(
        instances_in(&pool, "completed").await,
        3,
        "one instance per order"
    );
}

/// A parallel convoy: the instance started by an order waits for its payment and its
/// shipment, whichever comes first, and goes on only with both.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_parallel_convoy_takes_its_messages_in_any_order_once_all_are_there(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        r#"document: {{dsl: 1.0.3, namespace: orders, name: both, version: 1.0.0}}
schedule:
  on:
    one: {order}
do:
  - keep:
      set: {{orderId: '${{ .[0].properties["Order.Id"] }}'}}
      export: {{as: '${{ . }}'}}
  - both:
      listen:
        to:
          all: [{payment}, {shipment}]
  - done:
      emit:
        event:
          with:
            source: https://orders.example/both
            type: Done
            Order.Id: '${{ $context.orderId }}'
            data: '${{ {{orderId: $context.orderId, by: ([.[].kind] | sort)}} }}'
"#,
        order = filter("Order", false),
        payment = filter("Payment", true),
        shipment = filter("Shipment", true),
    );
    let out = bind(&cli, dir.path(), &yaml, &["Done"]);
    let _host = start_host(&url, FAST_HOST);
    publish(&mbx, vec![message("Order", "P-1", serde_json::json!({}))]).await;
    wait_instances(&pool, "waiting", 1, Duration::from_secs(30)).await;
    // the shipment first: held, not taken, the instance still waits
    publish(
        &mbx,
        vec![message(
            "Shipment",
            "P-1",
            serde_json::json!({"kind": "shipment"}),
        )],
    )
    .await;
    wait_for("the shipment held", Duration::from_secs(30), || async {
        count(
            &pool,
            "SELECT count(*) FROM orchestration_inbox WHERE NOT consumed AND NOT activating",
        )
        .await
            == 1
    })
    .await;
    // a step ran on the shipment (the instance was woken by it) and waits again
    wait_for(
        "P-1 waiting after the shipment",
        Duration::from_secs(30),
        || async {
            count(
                &pool,
                "SELECT count(*) FROM orchestration_instances
                  WHERE state = 'waiting' AND runnable_at IS NULL AND claimed_by IS NULL",
            )
            .await
                == 1
        },
    )
    .await;
    assert!(
        bodies_in(&out, "json").is_empty(),
        "not done with one of two"
    );
    publish(
        &mbx,
        vec![message(
            "Payment",
            "P-1",
            serde_json::json!({"kind": "payment"}),
        )],
    )
    .await;
    wait_for("P-1 done", Duration::from_secs(30), || async {
        bodies_in(&out, "json").len() == 1
    })
    .await;
    let done: serde_json::Value = serde_json::from_str(&bodies_in(&out, "json")[0]).expect("json");
    assert_eq!(
        done,
        serde_json::json!({"orderId": "P-1", "by": ["payment", "shipment"]})
    );
}
