//! A body the receive pipeline rejects becomes a non-resumable `receive-failure` item with
//! the parser's error and offset; its file is acknowledged (removed) and other traffic
//! through the same location is unaffected.

use std::time::Duration;

use mbx_e2e::{
    database_url, file_route, files_in, messagebox, start_host, wait_for, wait_for_alive,
    FileRoute, FAST_HOST,
};
use mbx_messagebox::suspended::{Kind, Selector};
use sqlx::PgPool;

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_malformed_body_is_suspended_with_its_offset_and_the_rest_flows(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let FileRoute { inbox, outbox } =
        file_route(&mbx, dir.path(), "json", "json", "/id", "%MessageID%.json").await;
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
