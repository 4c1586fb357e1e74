//! Two real `mbx-host` processes against one MessageBox: files dropped in a FILE receive
//! folder are routed and written to the send folder exactly once with intact bodies, and
//! bindings created while the hosts run reach them without a restart.

use std::collections::BTreeSet;
use std::time::Duration;

use mbx_e2e::{
    database_url, files_in, messagebox, order_route, start_host, wait_for, wait_for_alive,
    wait_for_empty_spool, FileRoute, FAST_HOST,
};
use sqlx::PgPool;

const FILES: usize = 1000;

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn files_flow_through_two_hosts_exactly_once(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = database_url(&pool);
    let _hosts = [start_host(&url, FAST_HOST), start_host(&url, FAST_HOST)];
    wait_for_alive(&mbx, 2).await;

    // bindings created while the hosts run
    let FileRoute { inbox, outbox } = order_route(&mbx, dir.path()).await;

    let mut sent = BTreeSet::new();
    for i in 0..FILES {
        let body = format!(
            "<order><id>{i}</id><pad>{}</pad></order>",
            "x".repeat(i % 97)
        );
        let tmp = inbox.join(format!(".order-{i}.tmp"));
        std::fs::write(&tmp, &body).expect("write");
        std::fs::rename(&tmp, inbox.join(format!("order-{i}.xml"))).expect("rename");
        sent.insert(body);
    }

    wait_for(
        "every file in the send folder",
        Duration::from_secs(180),
        || async { files_in(&outbox, "xml").len() >= FILES && files_in(&inbox, "xml").is_empty() },
    )
    .await;
    wait_for_empty_spool(&mbx, Duration::from_secs(30)).await;

    let out = files_in(&outbox, "xml");
    assert_eq!(out.len(), FILES, "no duplicates");
    let received: BTreeSet<String> = out
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read out"))
        .collect();
    assert_eq!(
        received.len(),
        FILES,
        "bodies are distinct: no duplicate deliveries"
    );
    assert_eq!(received, sent, "every body arrived intact, none lost");

    // issue 13: at the default tracking level a delivered message still says where it
    // came from (in its one delivered event)
    let id: uuid::Uuid = out[0]
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("a message id as the file name");
    let events = mbx.tracking_events(id).await.expect("events");
    assert_eq!(events.len(), 1, "{events:?}");
    let detail = events[0].detail.clone().unwrap_or_default();
    assert!(
        events[0].event == "delivered"
            && detail.starts_with("received from location orders-in (file order-"),
        "{events:?}"
    );
}
