//! The send port state machine and create-time validation.

mod common;

use common::*;
use mbx_messagebox::config::InitialState;
use mbx_messagebox::publish::Published;
use mbx_messagebox::suspended::{Kind, Selector};
use mbx_messagebox::Error;
use sqlx::PgPool;

const EU: &str = "Order.Region == 'EU'";

fn refused(err: Error) -> String {
    match err {
        Error::Refused(m) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn invalid(err: Error) -> String {
    match err {
        Error::Invalid(m) => m,
        other => panic!("expected bad input, got {other:?}"),
    }
}

async fn state(mbx: &mbx_messagebox::MessageBox, name: &str) -> String {
    mbx.send_port_show(name).await.unwrap().state.to_string()
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn create_leaves_a_port_stopped_and_enlisted(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    mbx.send_port_create(&spec("p", Some(EU))).await.unwrap();
    assert_eq!(state(&mbx, "p").await, "stopped");
    // enlisted: it collects from the first publish
    let p = publish_region(&mbx, "EU").await;
    assert_eq!(routed_to(&pool, message_id(&p)).await, ["p"]);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn create_started_and_unenlisted(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    port(&mbx, "s", Some(EU), InitialState::Started).await;
    port(&mbx, "u", Some(EU), InitialState::Unenlisted).await;
    assert_eq!(state(&mbx, "s").await, "started");
    assert_eq!(state(&mbx, "u").await, "unenlisted");
    let p = publish_region(&mbx, "EU").await;
    assert_eq!(routed_to(&pool, message_id(&p)).await, ["s"]);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn start_enlists_stop_keeps_the_subscription(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    port(&mbx, "p", Some(EU), InitialState::Unenlisted).await;
    let c = mbx.send_port_start("p").await.unwrap();
    assert_eq!((c.from.as_str(), c.to.as_str()), ("unenlisted", "started"));
    let p = publish_region(&mbx, "EU").await;
    assert_eq!(routed_to(&pool, message_id(&p)).await, ["p"]);

    let c = mbx.send_port_stop("p").await.unwrap();
    assert_eq!((c.from.as_str(), c.to.as_str()), ("started", "stopped"));
    let p = publish_region(&mbx, "EU").await;
    assert_eq!(routed_to(&pool, message_id(&p)).await, ["p"]);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn enlist_subscribes_an_unenlisted_port_and_is_idempotent(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    port(&mbx, "p", Some(EU), InitialState::Unenlisted).await;
    assert!(matches!(
        publish_region(&mbx, "EU").await,
        Published::RoutingFailure { .. }
    ));
    let c = mbx.send_port_enlist("p").await.unwrap();
    assert_eq!((c.from.as_str(), c.to.as_str()), ("unenlisted", "stopped"));
    assert!(!mbx.send_port_enlist("p").await.unwrap().changed());
    let p = publish_region(&mbx, "EU").await;
    assert_eq!(routed_to(&pool, message_id(&p)).await, ["p"]);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn unenlist_is_refused_with_the_count_while_deliveries_wait(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    port(&mbx, "p", Some(EU), InitialState::Stopped).await;
    for _ in 0..3 {
        publish_region(&mbx, "EU").await;
    }
    let msg = refused(mbx.send_port_unenlist("p", false).await.unwrap_err());
    assert!(msg.contains("3 waiting"), "{msg}");
    assert_eq!(state(&mbx, "p").await, "stopped");
    // still subscribed
    let p = publish_region(&mbx, "EU").await;
    assert_eq!(routed_to(&pool, message_id(&p)).await, ["p"]);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn unenlist_force_suspends_waiting_deliveries_as_failed(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    port(&mbx, "p", Some(EU), InitialState::Stopped).await;
    publish_region(&mbx, "EU").await;
    publish_region(&mbx, "EU").await;
    let c = mbx.send_port_unenlist("p", true).await.unwrap();
    assert_eq!((c.to.as_str(), c.suspended), ("unenlisted", 2));
    assert_eq!(count(&pool, "SELECT count(*) FROM deliveries").await, 0);
    let items = mbx
        .suspended_list(&Selector {
            port: Some("p".into()),
            kind: Some(Kind::Failed),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|i| i.resumable));
    let detail = mbx.suspended_show(items[0].id).await.unwrap();
    assert!(
        detail.item.reason.contains("unenlisted"),
        "{}",
        detail.item.reason
    );
    assert!(detail.attempts.is_empty(), "no send was attempted");
    // no longer routed to
    assert!(matches!(
        publish_region(&mbx, "EU").await,
        Published::RoutingFailure { .. }
    ));
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn unenlist_is_refused_while_deliveries_are_in_flight(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let id = started(&mbx, "p", EU).await;
    publish_region(&mbx, "EU").await;
    let i = instance(&mbx).await;
    claim_one(&mbx, i, id).await;
    let msg = refused(mbx.send_port_unenlist("p", true).await.unwrap_err());
    assert!(msg.contains("1 deliveries in flight"), "{msg}");
    assert_eq!(count(&pool, "SELECT count(*) FROM deliveries").await, 1);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn delete_is_refused_with_counts_while_work_remains(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let id = started(&mbx, "p", EU).await;
    publish_region(&mbx, "EU").await;
    publish_region(&mbx, "EU").await;
    let i = instance(&mbx).await;
    let c = claim_n(&mbx, i, id, 1).await;
    let msg = refused(mbx.send_port_delete("p").await.unwrap_err());
    assert!(
        msg.contains("1 waiting, 1 in-flight deliveries and 0 suspended"),
        "{msg}"
    );

    // a suspended item alone blocks it too
    mbx.deliveries_fail(i, &[failure(&c[0], "bad header", false)])
        .await
        .unwrap();
    let rest = claim(&mbx, i, id).await;
    complete(&mbx, i, &rest.iter().collect::<Vec<_>>()).await;
    let msg = refused(mbx.send_port_delete("p").await.unwrap_err());
    assert!(
        msg.contains("0 waiting, 0 in-flight deliveries and 1 suspended"),
        "{msg}"
    );

    mbx.suspended_terminate(&Selector::default()).await.unwrap();
    mbx.send_port_delete("p").await.unwrap();
    assert!(matches!(
        mbx.send_port_show("p").await.unwrap_err(),
        Error::NotFound { .. }
    ));
    assert!(matches!(
        publish_region(&mbx, "EU").await,
        Published::RoutingFailure { .. }
    ));
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_suspended_port_cannot_be_started_or_stopped(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let mut sp = spec("o", Some(EU));
    sp.ordered = true;
    sp.stop_on_failure = true;
    create(&mbx, sp).await;
    sqlx::query("UPDATE send_ports SET state = 'suspended' WHERE name = 'o'")
        .execute(&pool)
        .await
        .unwrap();
    let msg = refused(mbx.send_port_start("o").await.unwrap_err());
    assert!(msg.contains("suspended"), "{msg}");
    refused(mbx.send_port_stop("o").await.unwrap_err());
    refused(mbx.send_port_unenlist("o", true).await.unwrap_err());
    assert_eq!(state(&mbx, "o").await, "suspended");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn the_database_refuses_a_suspended_unordered_port(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    port(&mbx, "p", Some(EU), InitialState::Stopped).await;
    let err = sqlx::query("UPDATE send_ports SET state = 'suspended' WHERE name = 'p'")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("check constraint"), "{err}");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn ordered_dynamic_and_ordered_backup_are_refused_at_create(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let mut dynamic = spec("d", Some(EU));
    dynamic.address = None;
    dynamic.allow_address = vec!["file:///tmp/out/".into()];
    dynamic.ordered = true;
    let msg = invalid(mbx.send_port_create(&dynamic).await.unwrap_err());
    assert!(msg.contains("dynamic send port cannot be ordered"), "{msg}");

    let mut backup = spec("b", Some(EU));
    backup.ordered = true;
    backup.backup_address = Some("file:///tmp/backup".into());
    let msg = invalid(mbx.send_port_create(&backup).await.unwrap_err());
    assert!(msg.contains("ordered ports do not use backup"), "{msg}");
    assert!(mbx.send_port_list().await.unwrap().is_empty());
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_bad_filter_names_its_column_and_creates_nothing(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let err = mbx
        .send_port_create(&spec("p", Some("Order.Region == ")))
        .await
        .unwrap_err();
    let Error::Filter(f) = &err else {
        panic!("expected a filter error, got {err:?}")
    };
    assert!(f.column.is_some(), "{err}");
    assert!(err.to_string().contains("column"), "{err}");
    assert!(mbx.send_port_list().await.unwrap().is_empty());
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_unknown_host_is_not_found(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let mut sp = spec("p", Some(EU));
    sp.host = "nope".into();
    let err = mbx.send_port_create(&sp).await.unwrap_err();
    assert!(
        matches!(err, Error::NotFound { kind: "host", .. }),
        "{err:?}"
    );
    assert!(err.is_bad_input());
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_duplicate_name_already_exists(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    port(&mbx, "p", Some(EU), InitialState::Stopped).await;
    let err = mbx.send_port_create(&spec("p", None)).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn unknown_ports_are_not_found(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    for err in [
        mbx.send_port_start("nope").await.unwrap_err(),
        mbx.send_port_stop("nope").await.unwrap_err(),
        mbx.send_port_enlist("nope").await.unwrap_err(),
        mbx.send_port_unenlist("nope", false).await.unwrap_err(),
        mbx.send_port_delete("nope").await.unwrap_err(),
        mbx.send_port_set_filter("nope", Some(EU))
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    }
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn set_filter_changes_routing_and_none_stops_it(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    port(&mbx, "p", Some(EU), InitialState::Stopped).await;
    mbx.send_port_set_filter("p", Some("Order.Region == 'US'"))
        .await
        .unwrap();
    let us = publish_region(&mbx, "US").await;
    assert_eq!(routed_to(&pool, message_id(&us)).await, ["p"]);
    assert!(matches!(
        publish_region(&mbx, "EU").await,
        Published::RoutingFailure { .. }
    ));
    mbx.send_port_set_filter("p", None).await.unwrap();
    assert!(matches!(
        publish_region(&mbx, "US").await,
        Published::RoutingFailure { .. }
    ));
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn set_filter_on_an_unenlisted_port_takes_effect_at_enlist(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    port(&mbx, "p", Some(EU), InitialState::Unenlisted).await;
    mbx.send_port_set_filter("p", Some("Order.Region == 'US'"))
        .await
        .unwrap();
    assert!(matches!(
        publish_region(&mbx, "US").await,
        Published::RoutingFailure { .. }
    ));
    mbx.send_port_enlist("p").await.unwrap();
    let us = publish_region(&mbx, "US").await;
    assert_eq!(routed_to(&pool, message_id(&us)).await, ["p"]);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn group_membership_changes_routing(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    port(&mbx, "a", None, InitialState::Started).await;
    port(&mbx, "b", None, InitialState::Started).await;
    mbx.group_create("g", Some(EU), InitialState::Started)
        .await
        .unwrap();
    assert_eq!(mbx.group_add("g", &names(&["a", "b"])).await.unwrap(), 2);
    assert_eq!(mbx.group_add("g", &names(&["a"])).await.unwrap(), 0);
    let p = publish_region(&mbx, "EU").await;
    assert_eq!(routed_to(&pool, message_id(&p)).await, ["a", "b"]);
    assert_eq!(mbx.group_remove("g", &names(&["a"])).await.unwrap(), 1);
    let p = publish_region(&mbx, "EU").await;
    assert_eq!(routed_to(&pool, message_id(&p)).await, ["b"]);
    let err = mbx.group_add("g", &names(&["nope"])).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_unenlisted_group_routes_only_after_start(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    port(&mbx, "a", None, InitialState::Started).await;
    mbx.group_create("g", Some(EU), InitialState::Unenlisted)
        .await
        .unwrap();
    mbx.group_add("g", &names(&["a"])).await.unwrap();
    assert!(matches!(
        publish_region(&mbx, "EU").await,
        Published::RoutingFailure { .. }
    ));
    // stop does not enlist
    let c = mbx.group_stop("g").await.unwrap();
    assert_eq!(c.to, "unenlisted");
    assert!(matches!(
        publish_region(&mbx, "EU").await,
        Published::RoutingFailure { .. }
    ));
    mbx.group_start("g").await.unwrap();
    let p = publish_region(&mbx, "EU").await;
    assert_eq!(routed_to(&pool, message_id(&p)).await, ["a"]);
}

/// A send port group has the port's states, as in BizTalk: enlist, unenlist (refused while
/// what only it routes waits, --force suspends that), and delete (refused likewise; the
/// member ports stay).
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_group_enlists_unenlists_and_is_deleted(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    // "a" receives only through the group; "b" also has a filter of its own
    port(&mbx, "a", None, InitialState::Started).await;
    port(&mbx, "b", Some(EU), InitialState::Started).await;
    mbx.group_create("g", Some(EU), InitialState::Unenlisted)
        .await
        .unwrap();
    mbx.group_add("g", &names(&["a", "b"])).await.unwrap();

    // enlist: subscribed, stopped; what it routes waits
    let c = mbx.group_enlist("g").await.unwrap();
    assert_eq!((c.from.as_str(), c.to.as_str()), ("unenlisted", "stopped"));
    assert!(!mbx.group_enlist("g").await.unwrap().changed());
    let p = publish_region(&mbx, "EU").await;
    assert_eq!(routed_to(&pool, message_id(&p)).await, ["a", "b"]);

    // one delivery (to "a") only the group can release: unenlist and delete refused
    let why = refused(mbx.group_unenlist("g", false).await.unwrap_err());
    assert!(
        why.contains("1 waiting") && why.contains("--force"),
        "{why}"
    );
    let why = refused(mbx.group_delete("g").await.unwrap_err());
    assert!(why.contains("1 waiting"), "{why}");
    assert_eq!(
        mbx.group_list().await.unwrap()[0].state.to_string(),
        "stopped"
    );

    // --force suspends it (failed, resumable); "b"'s delivery stays, its own filter routes it
    let c = mbx.group_unenlist("g", true).await.unwrap();
    assert_eq!((c.to.as_str(), c.suspended), ("unenlisted", 1));
    let items = mbx
        .suspended_list(&Selector {
            port: Some("a".into()),
            kind: Some(Kind::Failed),
            ..Selector::default()
        })
        .await
        .unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(
        common_count(&pool, "SELECT count(*) FROM deliveries").await,
        1,
        "b's delivery stays"
    );
    // unenlisted: later publishes do not route through it
    let p = publish_region(&mbx, "EU").await;
    assert_eq!(routed_to(&pool, message_id(&p)).await, ["b"]);

    // delete: the group goes, its ports stay
    mbx.group_delete("g").await.unwrap();
    assert!(mbx.group_list().await.unwrap().is_empty());
    assert_eq!(mbx.send_port_list().await.unwrap().len(), 2);
    let err = mbx.group_delete("g").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

async fn common_count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn init_is_idempotent_and_keeps_the_group_name(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let again = mbx.init(None).await.unwrap();
    assert_eq!(again.group, "default");
    assert_eq!(again.migrations_applied, 0);
    assert!(!again.group_created && !again.default_host_created);
    refused(mbx.init(Some("other")).await.unwrap_err());
    mbx.check_schema().await.unwrap();
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_host_in_use_cannot_be_deleted(pool: PgPool) {
    use mbx_messagebox::config::HostSpec;
    let mbx = mbx(pool.clone()).await;
    let spec_of = |name: &str| HostSpec {
        name: name.into(),
        ..Default::default()
    };
    mbx.host_create(&spec_of("edge")).await.unwrap();
    assert!(matches!(
        mbx.host_create(&spec_of("edge")).await.unwrap_err(),
        Error::AlreadyExists { .. }
    ));
    let mut sp = spec("p", Some(EU));
    sp.host = "edge".into();
    create(&mbx, sp).await;
    let msg = refused(mbx.host_delete("edge").await.unwrap_err());
    assert!(msg.contains("1 send port(s)"), "{msg}");
    mbx.send_port_delete("p").await.unwrap();
    mbx.host_delete("edge").await.unwrap();
    let hosts: Vec<String> = mbx
        .host_list()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.name)
        .collect();
    assert_eq!(hosts, ["default"]);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_property_used_by_a_filter_cannot_be_deleted(pool: PgPool) {
    use mbx_messagebox::PropertyType;
    let mbx = mbx(pool.clone()).await;
    mbx.property_create("Order.Amount", PropertyType::Integer)
        .await
        .unwrap();
    port(
        &mbx,
        "big",
        Some("Order.Amount > 100"),
        InitialState::Stopped,
    )
    .await;
    let msg = refused(mbx.property_delete("Order.Amount").await.unwrap_err());
    assert!(msg.contains("big"), "{msg}");
    assert_eq!(mbx.property_list().await.unwrap().len(), 1);
    // an unenlisted port's filter counts too: it is compiled again when enlisted
    port(
        &mbx,
        "later",
        Some("Order.Amount < 5"),
        InitialState::Unenlisted,
    )
    .await;
    mbx.send_port_set_filter("big", Some("exists(Order.Region)"))
        .await
        .unwrap();
    let msg = refused(mbx.property_delete("Order.Amount").await.unwrap_err());
    assert!(msg.contains("later"), "{msg}");
    mbx.send_port_set_filter("later", Some("exists(Order.Region)"))
        .await
        .unwrap();
    mbx.property_delete("Order.Amount").await.unwrap();
    assert!(matches!(
        mbx.property_delete("Order.Amount").await.unwrap_err(),
        Error::NotFound { .. }
    ));
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn start_and_stop_do_not_wait_for_publishes_in_flight(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let id = port(&mbx, "p", Some(EU), InitialState::Stopped).await;
    // what a publish holds on the port row until it commits: the key-share lock of the
    // foreign key check of its deliveries
    let mut publishing = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM send_ports WHERE id = $1 FOR KEY SHARE")
        .bind(id)
        .execute(&mut *publishing)
        .await
        .unwrap();
    let not_blocked = std::time::Duration::from_secs(10);
    tokio::time::timeout(not_blocked, mbx.send_port_start("p"))
        .await
        .expect("start waited for a publish")
        .unwrap();
    tokio::time::timeout(not_blocked, mbx.send_port_stop("p"))
        .await
        .expect("stop waited for a publish")
        .unwrap();
    publishing.rollback().await.unwrap();
}
