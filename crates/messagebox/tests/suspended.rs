//! Suspended items: resume and terminate by id or by filter, with counts,
//! idempotent; terminate removes a message nothing else references.

mod common;

use common::*;
use mbx_messagebox::config::InitialState;
use mbx_messagebox::delivery::Transport;
use mbx_messagebox::suspended::{Kind, Selector};
use mbx_messagebox::{Error, MessageBox};
use sqlx::PgPool;
use uuid::Uuid;

const EU: &str = "Order.Region == 'EU'";

/// A started port `name` with no retries, one published message suspended on it with
/// `error` (kind failed or failed-final); returns (port id, item id, message id).
async fn suspended_on(
    mbx: &MessageBox,
    name: &str,
    error: &str,
    retryable: bool,
) -> (i64, i64, Uuid) {
    let id = match mbx.send_port_show(name).await {
        Ok(p) => p.id,
        Err(_) => {
            let mut sp = spec(name, Some(&format!("Test.Port == '{name}'")))
                .with_state(InitialState::Started);
            sp.retry_count = 0;
            create(mbx, sp).await
        }
    };
    let p = publish(mbx, msg(&[("Test.Port", s(name))])).await;
    let i = instance(mbx).await;
    let c = claim_one(mbx, i, id).await;
    mbx.deliveries_fail(i, &[failure(&c, error, retryable)])
        .await
        .unwrap();
    let item = mbx
        .suspended_list(&Selector::default())
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.message_id == message_id(&p))
        .expect("suspended item");
    (id, item.id, message_id(&p))
}

fn by_id(id: i64) -> Selector {
    Selector {
        id: Some(id),
        ..Default::default()
    }
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn resuming_a_failed_item_makes_a_fresh_delivery(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let mut sp = spec("p", Some(EU)).with_state(InitialState::Started);
    sp.retry_count = 0;
    sp.backup_address = Some("file:///tmp/mbx-test/backup".into());
    sp.backup_retry_count = 0;
    let id = create(&mbx, sp).await;
    let p = publish_region(&mbx, "EU").await;
    let i = instance(&mbx).await;
    for _ in 0..2 {
        let c = claim_one(&mbx, i, id).await;
        mbx.deliveries_fail(i, &[failure(&c, "down", true)])
            .await
            .unwrap();
    }
    let item = mbx.suspended_list(&Selector::default()).await.unwrap()[0].clone();
    assert_eq!(item.kind, "failed");

    let r = mbx.suspended_resume(&by_id(item.id)).await.unwrap();
    assert_eq!((r.resumed, r.deliveries, r.not_resumable), (1, 1, 0));
    let c = claim_one(&mbx, i, id).await;
    assert_eq!(c.message_id, message_id(&p));
    assert_eq!((c.transport, c.retries), (Transport::Primary, 0));
    assert!(mbx
        .suspended_list(&Selector::default())
        .await
        .unwrap()
        .is_empty());

    // resumed again (a runbook retrying): nothing changes, no second delivery, success
    let again = mbx.suspended_resume(&by_id(item.id)).await.unwrap();
    assert_eq!((again.resumed, again.deliveries), (0, 0));
    assert!(matches!(
        mbx.suspended_settled(item.id).await.unwrap(),
        Some((mbx_messagebox::suspended::Settled::Resumed, _))
    ));
    let never = mbx
        .suspended_resume(&by_id(item.id + 1000))
        .await
        .unwrap_err();
    assert!(matches!(never, Error::NotFound { .. }), "{never}");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_failed_final_item_is_not_resumable(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let (_, item, _) = suspended_on(&mbx, "p", "invalid header", false).await;
    let r = mbx.suspended_resume(&by_id(item)).await.unwrap();
    assert_eq!((r.resumed, r.not_resumable), (0, 1));
    assert_eq!(count(&pool, "SELECT count(*) FROM deliveries").await, 0);
    assert_eq!(mbx.suspended_list(&by_id(item)).await.unwrap().len(), 1);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn resume_by_port_resumes_only_that_ports_resumable_items(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    suspended_on(&mbx, "a", "down", true).await;
    suspended_on(&mbx, "a", "down", true).await;
    suspended_on(&mbx, "a", "bad", false).await;
    suspended_on(&mbx, "b", "down", true).await;
    let sel = Selector {
        port: Some("a".into()),
        ..Default::default()
    };
    let r = mbx.suspended_resume(&sel).await.unwrap();
    assert_eq!((r.resumed, r.not_resumable), (2, 1));
    assert_eq!(count(&pool, "SELECT count(*) FROM deliveries").await, 2);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM suspended_items").await,
        2
    );
    let err = mbx
        .suspended_resume(&Selector {
            port: Some("nope".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn terminate_by_id_removes_the_item_and_its_message(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let (_, item, message) = suspended_on(&mbx, "p", "bad", false).await;
    assert_eq!(mbx.suspended_terminate(&by_id(item)).await.unwrap(), 1);
    assert!(!message_exists(&pool, message).await);
    // a runbook retrying: the second terminate changes nothing and succeeds
    assert_eq!(mbx.suspended_terminate(&by_id(item)).await.unwrap(), 0);
    assert!(matches!(
        mbx.suspended_settled(item).await.unwrap(),
        Some((mbx_messagebox::suspended::Settled::Terminated, _))
    ));
    // an id that never existed is still refused
    let never = mbx
        .suspended_terminate(&by_id(item + 1000))
        .await
        .unwrap_err();
    assert!(matches!(never, Error::NotFound { .. }), "{never}");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn terminate_keeps_a_message_another_delivery_references(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let a = started(&mbx, "a", EU).await;
    started(&mbx, "b", EU).await;
    let p = publish_region(&mbx, "EU").await;
    let i = instance(&mbx).await;
    let c = claim_one(&mbx, i, a).await;
    mbx.deliveries_fail(i, &[failure(&c, "bad", false)])
        .await
        .unwrap();
    assert_eq!(
        mbx.suspended_terminate(&Selector::default()).await.unwrap(),
        1
    );
    assert!(message_exists(&pool, message_id(&p)).await);
    assert_eq!(routed_to(&pool, message_id(&p)).await, ["b"]);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn terminate_by_filter_counts_and_is_idempotent(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    suspended_on(&mbx, "a", "Connection refused", true).await;
    suspended_on(&mbx, "a", "invalid header", false).await;
    suspended_on(&mbx, "b", "connection REFUSED again", true).await;
    suspended_on(&mbx, "b", "disk full", true).await;
    publish_region(&mbx, "US").await; // a routing failure

    let terminate = |sel: Selector| {
        let mbx = mbx.clone();
        async move { mbx.suspended_terminate(&sel).await.unwrap() }
    };
    let kind = Selector {
        kind: Some(Kind::FailedFinal),
        ..Default::default()
    };
    assert_eq!(terminate(kind.clone()).await, 1);
    assert_eq!(terminate(kind).await, 0);

    let like = Selector {
        error_like: Some("connection refused".into()),
        ..Default::default()
    };
    assert_eq!(terminate(like.clone()).await, 2);
    assert_eq!(terminate(like).await, 0);

    // older_than: nothing is old yet; age one item
    let old = Selector {
        older_than_s: Some(3600),
        ..Default::default()
    };
    assert_eq!(terminate(old.clone()).await, 0);
    sqlx::query(
        "UPDATE suspended_items SET suspended_at = now() - interval '2 hours' WHERE kind = 'routing-failure'",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(terminate(old).await, 1);

    let port_b = Selector {
        port: Some("b".into()),
        ..Default::default()
    };
    assert_eq!(terminate(port_b.clone()).await, 1);
    assert_eq!(terminate(port_b).await, 0);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM suspended_items").await,
        0
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM messages").await, 0);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn selector_conditions_all_hold(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    suspended_on(&mbx, "a", "timeout", true).await;
    suspended_on(&mbx, "a", "bad", false).await;
    suspended_on(&mbx, "b", "timeout", false).await;
    let sel = Selector {
        port: Some("a".into()),
        kind: Some(Kind::Failed),
        error_like: Some("TIMEOUT".into()),
        ..Default::default()
    };
    let items = mbx.suspended_list(&sel).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].port.as_deref(), Some("a"));
    let limited = Selector {
        limit: Some(2),
        ..Default::default()
    };
    assert_eq!(mbx.suspended_list(&limited).await.unwrap().len(), 2);
    assert_eq!(mbx.suspended_terminate(&limited).await.unwrap(), 2);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM suspended_items").await,
        1
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn show_and_body_of_a_suspended_item(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let (_, item, message) = suspended_on(&mbx, "p", "bad", false).await;
    let d = mbx.suspended_show(item).await.unwrap();
    assert_eq!(d.item.message_id, message);
    assert_eq!(d.content_type, "application/xml");
    assert_eq!(d.body_size, 8);
    assert_eq!(d.context.promoted("Test.Port"), Some(&s("p")));
    assert_eq!(
        mbx.suspended_body(item).await.unwrap().as_ref(),
        b"<order/>"
    );
    assert!(matches!(
        mbx.suspended_show(item + 100).await.unwrap_err(),
        Error::NotFound { .. }
    ));
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_receive_failure_is_kept_and_not_resumable(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let id = mbx
        .suspend_receive_failure(
            &Default::default(),
            msg(&[]),
            "json: expected value at offset 3",
        )
        .await
        .unwrap();
    let d = mbx.suspended_show(id).await.unwrap();
    assert_eq!(d.item.kind, "receive-failure");
    assert!(!d.item.resumable);
    let r = mbx.suspended_resume(&by_id(id)).await.unwrap();
    assert_eq!((r.resumed, r.not_resumable), (0, 1));
    assert_eq!(mbx.suspended_terminate(&by_id(id)).await.unwrap(), 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM messages").await, 0);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_large_receive_failure_is_chunked_and_saved_identical(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let body: Vec<u8> = (0..(2 * 1024 * 1024 + 17))
        .map(|i: u32| (i % 253) as u8)
        .collect();
    let m = mbx_messagebox::publish::NewMessage::new(body.clone(), "application/json", ctx(&[]));
    let id = mbx
        .suspend_receive_failure(&Default::default(), m, "json: expected ',' at offset 9")
        .await
        .unwrap();
    let chunked: bool = sqlx::query_scalar("SELECT chunked FROM messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(chunked, "a body over 1 MiB must be stored in chunks");
    assert!(
        mbx.suspended_body(id).await.unwrap() == body,
        "body differs"
    );
}
