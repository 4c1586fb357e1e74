//! Failed-message routing through a real `mbx-host`: a failed send, a receive
//! failure and a routing failure each publish an error report that a dead-letter port
//! delivers, with the right `ErrorReport.*` values; the suspended items stay; a report no
//! subscriber takes is dropped, never suspended or reported again.

use std::time::Duration;

use mbx_e2e::{bodies_in, count, database_url, messagebox, start_host, wait_for, Mbx, FAST_HOST};
use sqlx::PgPool;

/// The context of the report kept by the stopped port `kept` that `condition` (SQL on
/// `m.context`) picks.
async fn kept(pool: &PgPool, condition: &str) -> serde_json::Value {
    sqlx::query_scalar(&format!(
        "SELECT m.context FROM messages m JOIN deliveries d ON d.message_id = m.id
           JOIN send_ports p ON p.id = d.port_id
          WHERE p.name = 'kept' AND {condition}"
    ))
    .fetch_one(pool)
    .await
    .unwrap()
}

fn text(ctx: &serde_json::Value, name: &str) -> String {
    ctx[name]["value"]["string"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn failures_are_reported_to_a_dead_letter_port_and_reports_never_loop(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let dir = tempfile::tempdir().unwrap();
    let (inbox, dead) = (dir.path().join("in"), dir.path().join("dead"));
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::create_dir_all(&dead).unwrap();
    let dead_letters = "ErrorReport.ErrorType == \"FailedMessage\" and ErrorReport.SendPortName == \"refused\" \
                        or ErrorReport.ErrorType == \"FailedMessage\" and ErrorReport.ReceivePortName == \"orders\" \
                        or ErrorReport.ErrorType == \"RoutingFailure\"";
    cli.ok(&[
        "send-port",
        "create",
        "dead",
        "--start",
        "--filter",
        dead_letters,
        "--address",
        &format!("file://{}/%MessageID%.xml", dead.display()),
    ]);
    // a stopped copy keeps the reports for the test to read
    cli.ok(&[
        "send-port",
        "create",
        "kept",
        "--address",
        "null://",
        "--filter",
        dead_letters,
    ]);
    // a send that fails for good (nothing listens on port 1; no retries)
    cli.ok(&[
        "send-port",
        "create",
        "refused",
        "--start",
        "--route-failed",
        "--retry-count",
        "0",
        "--address",
        "http://127.0.0.1:1/orders",
        "--filter",
        "Test.Send == \"refused\"",
    ]);
    // another failing port whose reports nobody subscribes to: dropped, never suspended
    cli.ok(&[
        "send-port",
        "create",
        "unheard",
        "--start",
        "--route-failed",
        "--retry-count",
        "0",
        "--address",
        "http://127.0.0.1:1/other",
        "--filter",
        "Test.Send == \"unheard\"",
    ]);
    // receive and routing failures of the receive port `orders`
    cli.ok(&["receive-port", "create", "orders", "--route-failed"]);
    cli.ok(&[
        "receive-location",
        "create",
        "orders-in",
        "--port",
        "orders",
        "--pipeline",
        "xml",
        "--address",
        &format!("file://{}/*.xml", inbox.display()),
        "--promote",
        "Order.Region=/order/region",
    ]);
    cli.ok(&["receive-location", "enable", "orders-in"]);
    let _host = start_host(&url, FAST_HOST);

    let body = dir.path().join("order.txt");
    std::fs::write(&body, "an order the endpoint never gets").unwrap();
    let body = body.display().to_string();
    cli.ok(&[
        "message",
        "publish",
        "--promote",
        "Test.Send=refused",
        "--file",
        &body,
    ]);
    cli.ok(&[
        "message",
        "publish",
        "--promote",
        "Test.Send=unheard",
        "--file",
        &body,
    ]);
    // not XML: a receive failure
    std::fs::write(inbox.join("broken.xml"), "<order><region>EU").unwrap();
    // XML that no port subscribes to: a routing failure
    std::fs::write(
        inbox.join("lost.xml"),
        "<order><region>Mars</region></order>",
    )
    .unwrap();

    wait_for(
        "three reports at the dead-letter port",
        Duration::from_secs(60),
        || async { bodies_in(&dead, "xml").len() == 3 },
    )
    .await;
    let mut bodies = bodies_in(&dead, "xml");
    bodies.sort();
    assert_eq!(
        bodies,
        [
            "<order><region>EU",
            "<order><region>Mars</region></order>",
            "an order the endpoint never gets",
        ]
    );

    let sent = kept(&pool, "m.context ? 'ErrorReport.SendPortName'").await;
    assert_eq!(text(&sent, "ErrorReport.SendPortName"), "refused");
    assert_eq!(
        text(&sent, "ErrorReport.OutboundTransportLocation"),
        "http://127.0.0.1:1/orders"
    );
    assert_eq!(text(&sent, "ErrorReport.FailureCode"), "failed");
    assert!(
        text(&sent, "ErrorReport.Description").contains("connect"),
        "{sent}"
    );
    assert_eq!(sent["ErrorReport.ErrorType"]["promoted"], true);
    // the original's properties travel along, no longer promoted; its mbx.* do not
    assert_eq!(sent["Test.Send"]["promoted"], false);
    assert!(
        sent.as_object()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with("mbx.")),
        "{sent}"
    );

    let received = kept(
        &pool,
        "m.context -> 'ErrorReport.FailureCode' -> 'value' ->> 'string' = 'receive-failure'",
    )
    .await;
    assert_eq!(text(&received, "ErrorReport.ErrorType"), "FailedMessage");
    assert_eq!(text(&received, "ErrorReport.ReceivePortName"), "orders");
    assert!(
        text(&received, "ErrorReport.Description").contains("xml pipeline"),
        "{received}"
    );

    let unrouted = kept(
        &pool,
        "m.context -> 'ErrorReport.ErrorType' -> 'value' ->> 'string' = 'RoutingFailure'",
    )
    .await;
    assert_eq!(text(&unrouted, "ErrorReport.ReceivePortName"), "orders");
    assert!(text(&unrouted, "ErrorReport.Description").contains("no subscriber matched"));

    // the suspended items stay as they are: two failed sends, a receive failure, a
    // routing failure — and nothing for the report nobody took
    wait_for(
        "the unheard port's failure suspended",
        Duration::from_secs(30),
        || async { count(&pool, "SELECT count(*) FROM suspended_items").await == 4 },
    )
    .await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM suspended_items WHERE kind = 'routing-failure'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM suspended_items WHERE kind = 'receive-failure'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM suspended_items WHERE kind = 'failed'"
        )
        .await,
        2
    );
    // no report of a report: the dead-letter port got exactly three
    wait_for("the dead-letter port idle", Duration::from_secs(30), || async {
        count(
            &pool,
            "SELECT count(*) FROM deliveries d JOIN send_ports p ON p.id = d.port_id WHERE p.name = 'dead'",
        )
        .await
            == 0
    })
    .await;
    assert_eq!(bodies_in(&dead, "xml").len(), 3);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM messages WHERE context ? 'ErrorReport.ErrorType'"
        )
        .await,
        3,
        "the unheard port's report was kept"
    );
    drop(mbx);
}
