//! The seed scenario (seeds 000/001) through two real `mbx-host` processes: the
//! "OrderBroker" receive location promotes `Order.ManagerId` from each JSON order; the
//! "OrderManager" send ports `manager-a` and `manager-b` filter on it and each gets exactly
//! its own orders; an order for an unknown manager becomes a routing failure that
//! `mbx suspended resume` routes once a matching port exists.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use mbx_e2e::{
    database_url, drop_orders, files_in, messagebox, received_json, start_host, wait_for,
    wait_for_alive, wait_for_empty_spool, Mbx, FAST_HOST,
};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::receive::ReceiveLocationSpec;
use mbx_messagebox::suspended::{Kind, Selector};
use mbx_messagebox::MessageBox;
use sqlx::PgPool;

/// A started OrderManager port for `manager`, writing to `folder`.
async fn manager_port(mbx: &MessageBox, manager: &str, folder: &Path) {
    std::fs::create_dir_all(folder).expect("folder");
    mbx.send_port_create(
        &SendPortSpec::new(
            &format!("manager-{}", manager.to_lowercase()),
            &format!("file://{}/%MessageID%.json", folder.display()),
        )
        .with_filter(&format!("Order.ManagerId == \"{manager}\""))
        .with_state(InitialState::Started),
    )
    .await
    .expect("send port");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn each_order_manager_gets_exactly_its_own_orders(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let inbox = dir.path().join("broker");
    let [a, b, c] = ["a", "b", "c"].map(|m| dir.path().join(format!("manager-{m}")));
    std::fs::create_dir_all(&inbox).expect("inbox");

    let url = database_url(&pool);
    let _hosts = [start_host(&url, FAST_HOST), start_host(&url, FAST_HOST)];
    wait_for_alive(&mbx, 2).await;

    mbx.receive_port_create("OrderBroker", false)
        .await
        .expect("receive port");
    let mut loc = ReceiveLocationSpec::new(
        "OrderBroker",
        "OrderBroker",
        &format!("file://{}/*.json", inbox.display()),
    );
    loc.pipeline = "json".into();
    loc.promote
        .insert("Order.ManagerId".into(), "/managerId".into());
    mbx.receive_location_create(&loc).await.expect("location");
    mbx.receive_location_set_enabled("OrderBroker", true)
        .await
        .expect("enable");
    manager_port(&mbx, "A", &a).await;
    manager_port(&mbx, "B", &b).await;

    let for_a = drop_orders(&inbox, "A", 0..20);
    let for_b = drop_orders(&inbox, "B", 0..15);
    let for_c = drop_orders(&inbox, "C", 0..1);

    let routing_failures = Selector {
        kind: Some(Kind::RoutingFailure),
        ..Selector::default()
    };
    wait_for(
        "every order received and routed",
        Duration::from_secs(30),
        || async {
            let s = mbx.stats().await.expect("stats");
            files_in(&inbox, "json").is_empty()
                && s.spool_messages == s.suspended_total
                && s.suspended_total == 1
                && files_in(&a, "json").len() >= 20
                && files_in(&b, "json").len() >= 15
        },
    )
    .await;
    assert_eq!(files_in(&a, "json").len(), 20, "manager-a: no duplicates");
    assert_eq!(files_in(&b, "json").len(), 15, "manager-b: no duplicates");
    assert_eq!(
        received_json(&a),
        for_a,
        "manager-a gets exactly its own orders"
    );
    assert_eq!(
        received_json(&b),
        for_b,
        "manager-b gets exactly its own orders"
    );

    let items = mbx.suspended_list(&routing_failures).await.expect("list");
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(
        items[0].reason.contains("Order.ManagerId=C"),
        "the reason names the promoted property: {}",
        items[0].reason
    );
    let body = mbx.suspended_body(items[0].id).await.expect("body");
    assert_eq!(
        BTreeSet::from([String::from_utf8(body.to_vec()).expect("utf-8")]),
        for_c
    );

    // a manager for C appears; the operator routes the order again with the real CLI
    manager_port(&mbx, "C", &c).await;
    let id = items[0].id.to_string();
    let cli = Mbx::new(url.clone());
    let out = tokio::task::spawn_blocking(move || cli.ok(&["suspended", "resume", &id]))
        .await
        .expect("join");
    assert!(out.contains("resumed 1"), "{out}");
    wait_for_empty_spool(&mbx, Duration::from_secs(30)).await;
    assert_eq!(
        files_in(&c, "json").len(),
        1,
        "manager-c gets it exactly once"
    );
    assert_eq!(received_json(&c), for_c);
    assert_eq!(
        (files_in(&a, "json").len(), files_in(&b, "json").len()),
        (20, 15),
        "the others get nothing more"
    );
}
