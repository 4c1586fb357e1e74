//! A body the receive pipeline rejects becomes a non-resumable `receive-failure` item with
//! the parser's error and offset; its file is acknowledged (removed) and other traffic
//! through the same location is unaffected.

use std::time::Duration;

use mbx_e2e::{
    database_url, files_in, messagebox, start_host, wait_for, wait_for_alive, FAST_HOST,
};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::receive::ReceiveLocationSpec;
use mbx_messagebox::suspended::{Kind, Selector};
use sqlx::PgPool;

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_malformed_body_is_suspended_with_its_offset_and_the_rest_flows(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (inbox, outbox) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir_all(&inbox).expect("in");
    std::fs::create_dir_all(&outbox).expect("out");
    mbx.receive_port_create("orders", false)
        .await
        .expect("port");
    let mut loc = ReceiveLocationSpec::new(
        "orders-in",
        "orders",
        &format!("file://{}/*.json", inbox.display()),
    );
    loc.pipeline = "json".into();
    loc.promote.insert("Order.Id".into(), "/id".into());
    mbx.receive_location_create(&loc).await.expect("location");
    mbx.receive_location_set_enabled("orders-in", true)
        .await
        .expect("enable");
    mbx.send_port_create(
        &SendPortSpec::new(
            "out",
            &format!("file://{}/%MessageID%.json", outbox.display()),
        )
        .with_filter("exists(Order.Id)")
        .with_state(InitialState::Started),
    )
    .await
    .expect("send port");
    let _host = start_host(&database_url(&pool), FAST_HOST);
    wait_for_alive(&mbx, 1).await;

    std::fs::write(inbox.join("good-1.json"), r#"{"id": 1}"#).expect("write");
    std::fs::write(inbox.join("bad.json"), r#"{"id": 2, "oops" }"#).expect("write");
    std::fs::write(inbox.join("good-2.json"), r#"{"id": 3}"#).expect("write");

    wait_for(
        "both good orders delivered and the inbox empty",
        Duration::from_secs(30),
        || async { files_in(&outbox, "json").len() == 2 && files_in(&inbox, "json").is_empty() },
    )
    .await;
    let sel = Selector {
        kind: Some(Kind::ReceiveFailure),
        ..Default::default()
    };
    let items = mbx.suspended_list(&sel).await.expect("list");
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(!items[0].resumable);
    let reason = &items[0].reason;
    assert!(
        reason.contains("json") && reason.contains("byte"),
        "parser error and offset: {reason}"
    );
    let body = mbx.suspended_body(items[0].id).await.expect("body");
    assert_eq!(&body[..], br#"{"id": 2, "oops" }"#);
}
