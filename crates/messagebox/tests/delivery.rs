//! Claim, complete, fail: skip-locked claims, caps, the context overlay,
//! claim tokens, body clean-up, retries, backup transport and suspension.

mod common;

use std::collections::HashSet;

use common::*;
use mbx_messagebox::config::InitialState;
use mbx_messagebox::delivery::{ClaimLimits, Transport};
use mbx_messagebox::publish::{NewMessage, Publisher};
use mbx_messagebox::suspended::{Kind, Selector};
use mbx_messagebox::{MessageBox, Value};
use sqlx::PgPool;
use uuid::Uuid;

const EU: &str = "Order.Region == 'EU'";

async fn publish_n(mbx: &MessageBox, n: usize) {
    let batch = (0..n).map(|_| msg(&[("Order.Region", s("EU"))])).collect();
    mbx.publish(&Publisher::default(), batch).await.unwrap();
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn concurrent_claims_never_return_the_same_delivery(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let id = started(&mbx, "p", EU).await;
    publish_n(&mbx, 200).await;
    let (a, b) = (instance(&mbx).await, instance(&mbx).await);
    let claimer = |i: Uuid| {
        let mbx = mbx.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let c = claim_n(&mbx, i, id, 7).await;
                if c.is_empty() {
                    return got;
                }
                got.extend(c.into_iter().map(|c| c.delivery_id));
            }
        })
    };
    let (ta, tb) = (claimer(a), claimer(b));
    let (ga, gb) = (ta.await.unwrap(), tb.await.unwrap());
    let all: HashSet<i64> = ga.iter().chain(&gb).copied().collect();
    assert_eq!(
        ga.len() + gb.len(),
        200,
        "a delivery was claimed twice or lost"
    );
    assert_eq!(all.len(), 200);
    assert!(
        !ga.is_empty() && !gb.is_empty(),
        "one claimer got everything"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM deliveries WHERE state = 'claimed'"
        )
        .await,
        200
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_claim_skips_rows_locked_by_another_claim(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let id = started(&mbx, "p", EU).await;
    publish_n(&mbx, 3).await;
    let i = instance(&mbx).await;
    // another transaction holds the first delivery's row lock
    let mut tx = pool.begin().await.unwrap();
    let locked: i64 = sqlx::query_scalar("SELECT min(id) FROM deliveries")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE")
        .bind(locked)
        .execute(&mut *tx)
        .await
        .unwrap();
    let got: Vec<i64> = claim(&mbx, i, id)
        .await
        .iter()
        .map(|c| c.delivery_id)
        .collect();
    assert_eq!(got.len(), 2);
    assert!(!got.contains(&locked));
    tx.rollback().await.unwrap();
    assert_eq!(claim_one(&mbx, i, id).await.delivery_id, locked);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn claims_are_capped_by_count_and_by_bytes(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let id = started(&mbx, "p", EU).await;
    let i = instance(&mbx).await;
    let sized = |n: usize| {
        NewMessage::new(
            vec![b'x'; n],
            "text/plain",
            ctx(&[("Order.Region", s("EU"))]),
        )
    };
    mbx.publish(
        &Publisher::default(),
        vec![sized(600), sized(300), sized(300), sized(100), sized(100)],
    )
    .await
    .unwrap();
    let claim_with = |max_count, max_bytes| {
        mbx.deliveries_claim(
            i,
            id,
            ClaimLimits {
                max_count,
                max_bytes,
            },
        )
    };
    // the first always fits, even over the cap
    let c = claim_with(10, 10).await.unwrap();
    assert_eq!(c.iter().map(|c| c.body_size).collect::<Vec<_>>(), [600]);
    // 300 + 300 = 600 ≤ 650; with the next 100 it would be 700: over the cap
    let c = claim_with(10, 650).await.unwrap();
    assert_eq!(
        c.iter().map(|c| c.body_size).collect::<Vec<_>>(),
        [300, 300]
    );
    let c = claim_with(10, 200).await.unwrap();
    assert_eq!(
        c.iter().map(|c| c.body_size).collect::<Vec<_>>(),
        [100, 100]
    );
    publish_n(&mbx, 5).await;
    assert_eq!(claim_with(2, i64::MAX).await.unwrap().len(), 2);
    assert_eq!(claim_with(100, i64::MAX).await.unwrap().len(), 3);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_claim_overlays_the_per_delivery_properties(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let id = started(&mbx, "out-eu", EU).await;
    let p = publish_region(&mbx, "EU").await;
    let i = instance(&mbx).await;
    let c = claim_one(&mbx, i, id).await;
    assert_eq!(c.message_id, message_id(&p));
    assert_eq!(c.port_name, "out-eu");
    assert_eq!(c.transport, Transport::Primary);
    assert_eq!(c.address.as_deref(), Some("file:///tmp/mbx-test/out-eu"));
    assert_eq!(c.body.as_deref(), Some(&b"<order/>"[..]));
    let value = |name: &str| c.context.get(name).map(|p| p.value.clone());
    assert_eq!(
        value("mbx.MessageId"),
        Some(Value::String(message_id(&p).to_string()))
    );
    assert_eq!(value("mbx.SendPortName"), Some(s("out-eu")));
    assert_eq!(value("mbx.RetryCount"), Some(Value::Integer(0)));
    assert!(value("mbx.PublishedAt").is_some());
    assert_eq!(value("Order.Region"), Some(s("EU")));
    // the overlay is per delivery: the stored message is unchanged
    let stored: serde_json::Value = sqlx::query_scalar("SELECT context FROM messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(stored.get("mbx.SendPortName").is_none(), "{stored}");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn complete_needs_the_claiming_instance_and_its_token(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let id = started(&mbx, "p", EU).await;
    let p = publish_region(&mbx, "EU").await;
    let (i, other) = (instance(&mbx).await, instance(&mbx).await);
    let c = claim_one(&mbx, i, id).await;
    let wrong_token = mbx
        .deliveries_complete(i, &[(c.delivery_id, Uuid::new_v4())])
        .await
        .unwrap();
    assert!(wrong_token.is_empty());
    let wrong_instance = mbx
        .deliveries_complete(other, &[(c.delivery_id, c.claim_token)])
        .await
        .unwrap();
    assert!(wrong_instance.is_empty());
    assert_eq!(count(&pool, "SELECT count(*) FROM deliveries").await, 1);

    assert_eq!(complete(&mbx, i, &[&c]).await, [c.delivery_id]);
    assert_eq!(count(&pool, "SELECT count(*) FROM deliveries").await, 0);
    assert!(
        !message_exists(&pool, message_id(&p)).await,
        "body left behind"
    );
    // again: nothing left to complete
    assert!(complete(&mbx, i, &[&c]).await.is_empty());
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn the_message_stays_while_another_delivery_of_it_exists(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let a = started(&mbx, "a", EU).await;
    let b = started(&mbx, "b", EU).await;
    let p = publish_region(&mbx, "EU").await;
    let i = instance(&mbx).await;
    let ca = claim_one(&mbx, i, a).await;
    complete(&mbx, i, &[&ca]).await;
    assert!(message_exists(&pool, message_id(&p)).await);
    assert_eq!(
        mbx.message_body(message_id(&p)).await.unwrap().as_ref(),
        b"<order/>"
    );
    let cb = claim_one(&mbx, i, b).await;
    complete(&mbx, i, &[&cb]).await;
    assert!(!message_exists(&pool, message_id(&p)).await);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn completing_both_deliveries_in_one_batch_removes_the_message(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let a = started(&mbx, "a", EU).await;
    let b = started(&mbx, "b", EU).await;
    let p = publish_region(&mbx, "EU").await;
    let i = instance(&mbx).await;
    let (ca, cb) = (claim_one(&mbx, i, a).await, claim_one(&mbx, i, b).await);
    assert_eq!(complete(&mbx, i, &[&ca, &cb]).await.len(), 2);
    assert!(!message_exists(&pool, message_id(&p)).await);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn completing_a_chunked_message_removes_its_chunks(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let id = started(&mbx, "p", EU).await;
    let big = NewMessage::new(
        vec![7u8; 3 * 1024 * 1024],
        "application/octet-stream",
        ctx(&[("Order.Region", s("EU"))]),
    );
    publish(&mbx, big).await;
    let i = instance(&mbx).await;
    let c = claim_one(&mbx, i, id).await;
    complete(&mbx, i, &[&c]).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM message_chunks").await, 0);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn release_makes_claims_ready_again(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let id = started(&mbx, "p", EU).await;
    publish_region(&mbx, "EU").await;
    let (i, other) = (instance(&mbx).await, instance(&mbx).await);
    let c = claim_one(&mbx, i, id).await;
    assert_eq!(
        mbx.deliveries_release(other, &[(c.delivery_id, c.claim_token)])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        mbx.deliveries_release(i, &[(c.delivery_id, c.claim_token)])
            .await
            .unwrap(),
        1
    );
    let again = claim_one(&mbx, other, id).await;
    assert_eq!(again.delivery_id, c.delivery_id);
    assert_ne!(again.claim_token, c.claim_token);
    // the former claim can no longer complete it
    assert!(complete(&mbx, i, &[&c]).await.is_empty());
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_retryable_failure_is_retried_after_the_interval(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let mut sp = spec("p", Some(EU)).with_state(mbx_messagebox::config::InitialState::Started);
    sp.retry_count = 2;
    sp.retry_interval_s = 60;
    let id = create(&mbx, sp).await;
    publish_region(&mbx, "EU").await;
    let i = instance(&mbx).await;
    let c = claim_one(&mbx, i, id).await;
    let r = mbx
        .deliveries_fail(i, &[failure(&c, "connection refused", true)])
        .await
        .unwrap();
    assert_eq!(r.retried, 1);
    let (due_in, retries, errors): (f64, i32, serde_json::Value) = sqlx::query_as(
        "SELECT extract(epoch FROM not_before - now())::float8, retries, errors FROM deliveries",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!((55.0..=61.0).contains(&due_in), "not_before in {due_in}s");
    assert_eq!(retries, 1);
    assert_eq!(errors.as_array().unwrap().len(), 1);
    assert_eq!(errors[0]["error"], "connection refused");
    assert!(claim(&mbx, i, id).await.is_empty(), "claimed before due");

    make_due(&pool).await;
    let again = claim_one(&mbx, i, id).await;
    assert_eq!(again.retries, 1);
    assert_eq!(
        again.context.get("mbx.RetryCount").unwrap().value,
        Value::Integer(1)
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn next_due_is_the_earliest_future_retry_of_the_port(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let mut sp = spec("p", Some(EU)).with_state(mbx_messagebox::config::InitialState::Started);
    sp.retry_count = 2;
    sp.retry_interval_s = 60;
    let id = create(&mbx, sp).await;
    let mut other = spec("q", Some(EU)).with_state(mbx_messagebox::config::InitialState::Started);
    other.retry_count = 2;
    other.retry_interval_s = 5;
    let other = create(&mbx, other).await;
    assert_eq!(
        mbx.deliveries_next_due(id).await.unwrap(),
        None,
        "no deliveries"
    );
    publish_n(&mbx, 2).await;
    assert_eq!(
        mbx.deliveries_next_due(id).await.unwrap(),
        None,
        "deliveries already due are for the claim, not for a wake-up"
    );
    let i = instance(&mbx).await;
    let c = claim_n(&mbx, i, id, 1).await;
    assert_eq!(mbx.deliveries_next_due(id).await.unwrap(), None, "claimed");
    mbx.deliveries_fail(i, &[failure(&c[0], "503", true)])
        .await
        .unwrap();
    // the other port's sooner retry is not this port's
    let q = claim_n(&mbx, i, other, 1).await;
    mbx.deliveries_fail(i, &[failure(&q[0], "503", true)])
        .await
        .unwrap();
    let due = mbx.deliveries_next_due(id).await.unwrap().expect("a retry");
    assert!(
        (55.0..=60.0).contains(&due.as_secs_f64()),
        "the retry is due in {due:?}"
    );
    let due = mbx
        .deliveries_next_due(other)
        .await
        .unwrap()
        .expect("a retry");
    assert!((0.0..=5.0).contains(&due.as_secs_f64()), "{due:?}");
    make_due(&pool).await;
    assert_eq!(mbx.deliveries_next_due(id).await.unwrap(), None, "due now");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn exponential_backoff_doubles_the_retry_interval(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let mut sp = spec("p", Some(EU)).with_state(mbx_messagebox::config::InitialState::Started);
    sp.retry_count = 5;
    sp.retry_interval_s = 60;
    sp.retry_backoff = mbx_messagebox::config::Backoff::Exponential;
    let id = create(&mbx, sp).await;
    publish_region(&mbx, "EU").await;
    let i = instance(&mbx).await;
    let mut delays = Vec::new();
    for _ in 0..3 {
        let c = claim_one(&mbx, i, id).await;
        mbx.deliveries_fail(i, &[failure(&c, "503", true)])
            .await
            .unwrap();
        let d: f64 = sqlx::query_scalar(
            "SELECT round(extract(epoch FROM not_before - now()))::float8 FROM deliveries",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        delays.push(d);
        make_due(&pool).await;
    }
    assert_eq!(delays, [60.0, 120.0, 240.0]);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn exhausted_retries_move_to_backup_then_suspend_with_every_attempt(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let mut sp = spec("p", Some(EU)).with_state(mbx_messagebox::config::InitialState::Started);
    sp.retry_count = 2;
    sp.backup_address = Some("file:///tmp/mbx-test/backup".into());
    sp.backup_retry_count = 1;
    let id = create(&mbx, sp).await;
    let p = publish_region(&mbx, "EU").await;
    let i = instance(&mbx).await;

    let mut seen = Vec::new();
    for attempt in 1..=5 {
        make_due(&pool).await;
        let c = claim_one(&mbx, i, id).await;
        seen.push((c.transport, c.address.clone().unwrap(), c.retries));
        mbx.deliveries_fail(i, &[failure(&c, &format!("error {attempt}"), true)])
            .await
            .unwrap();
    }
    let primary = "file:///tmp/mbx-test/p".to_owned();
    let backup = "file:///tmp/mbx-test/backup".to_owned();
    assert_eq!(
        seen,
        [
            (Transport::Primary, primary.clone(), 0),
            (Transport::Primary, primary.clone(), 1),
            (Transport::Primary, primary, 2),
            (Transport::Backup, backup.clone(), 0),
            (Transport::Backup, backup, 1),
        ]
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM deliveries").await, 0);
    let items = mbx.suspended_list(&Selector::default()).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].kind, "failed");
    assert_eq!(items[0].port.as_deref(), Some("p"));
    assert_eq!(items[0].message_id, message_id(&p));
    assert!(items[0].reason.contains("error 5"), "{}", items[0].reason);
    let detail = mbx.suspended_show(items[0].id).await.unwrap();
    // (retry_count + 1) + (backup_retry_count + 1)
    assert_eq!(detail.attempts.len(), 3 + 2);
    let errors: Vec<&str> = detail.attempts.iter().map(|a| a.error.as_str()).collect();
    assert_eq!(
        errors,
        ["error 1", "error 2", "error 3", "error 4", "error 5"]
    );
    let transports: Vec<&str> = detail
        .attempts
        .iter()
        .map(|a| a.transport.as_str())
        .collect();
    assert_eq!(
        transports,
        ["primary", "primary", "primary", "backup", "backup"]
    );
    assert!(detail.attempts.iter().all(|a| a.instance == Some(i)));
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_non_retryable_failure_is_final_at_once(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let id = started(&mbx, "p", EU).await;
    publish_region(&mbx, "EU").await;
    let i = instance(&mbx).await;
    let c = claim_one(&mbx, i, id).await;
    let r = mbx
        .deliveries_fail(
            i,
            &[failure(&c, "address outside the allowed folder", false)],
        )
        .await
        .unwrap();
    assert_eq!((r.suspended, r.retried), (1, 0));
    let items = mbx.suspended_list(&Selector::default()).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].kind, "failed-final");
    assert!(!items[0].resumable);
    assert_eq!(
        mbx.suspended_show(items[0].id)
            .await
            .unwrap()
            .attempts
            .len(),
        1
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_failure_with_a_stale_claim_is_ignored(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let id = started(&mbx, "p", EU).await;
    publish_region(&mbx, "EU").await;
    let (i, other) = (instance(&mbx).await, instance(&mbx).await);
    let c = claim_one(&mbx, i, id).await;
    let r = mbx
        .deliveries_fail(other, &[failure(&c, "boom", false)])
        .await
        .unwrap();
    assert_eq!((r.stale, r.suspended), (1, 0));
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM deliveries WHERE state = 'claimed'"
        )
        .await,
        1
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_batch_of_outcomes_is_decided_per_delivery(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let id = started(&mbx, "p", EU).await;
    publish_n(&mbx, 3).await;
    let i = instance(&mbx).await;
    let c = claim(&mbx, i, id).await;
    let r = mbx
        .deliveries_fail(
            i,
            &[
                failure(&c[0], "timeout", true),
                failure(&c[1], "bad", false),
            ],
        )
        .await
        .unwrap();
    assert_eq!((r.retried, r.suspended), (1, 1));
    assert_eq!(complete(&mbx, i, &[&c[2]]).await, [c[2].delivery_id]);
    assert_eq!(count(&pool, "SELECT count(*) FROM deliveries").await, 1);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM suspended_items").await,
        1
    );
    assert_eq!(
        mbx.suspended_list(&Selector {
            kind: Some(Kind::FailedFinal),
            ..Default::default()
        })
        .await
        .unwrap()
        .len(),
        1
    );
}

/// An ordered started port with no retries.
async fn ordered(mbx: &MessageBox, name: &str, stop_on_failure: bool) -> i64 {
    let mut sp = spec(name, Some(EU)).with_state(mbx_messagebox::config::InitialState::Started);
    sp.ordered = true;
    sp.stop_on_failure = stop_on_failure;
    sp.retry_count = 0;
    create(mbx, sp).await
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_ordered_port_numbers_its_deliveries_in_publish_order(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let id = ordered(&mbx, "o", false).await;
    publish_n(&mbx, 2).await;
    publish_n(&mbx, 1).await;
    let i = instance(&mbx).await;
    assert!(
        claim(&mbx, i, id).await.is_empty(),
        "only the lease holder claims an ordered port"
    );
    let c = claim_ordered(&mbx, i, id).await;
    let seqs: Vec<Option<i64>> = c.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [Some(1), Some(2), Some(3)]);
    assert_eq!(
        c[2].context.get("mbx.Sequence").unwrap().value,
        Value::Integer(3)
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_ordered_failure_is_final_or_suspends_the_port(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let plain = ordered(&mbx, "plain", false).await;
    let stop = ordered(&mbx, "stop", true).await;
    let p = publish_region(&mbx, "EU").await;
    let i = instance(&mbx).await;

    // without stop-on-failure: failed-final (resuming later would break the order)
    let c = claim_ordered(&mbx, i, plain).await.remove(0);
    mbx.deliveries_fail(i, &[failure(&c, "down", true)])
        .await
        .unwrap();
    let items = mbx.suspended_list(&Selector::default()).await.unwrap();
    assert_eq!(
        (items.len(), items[0].kind.as_str()),
        (1, Kind::FailedFinal.as_str())
    );

    // with it: the port is suspended, the head stays in place and is not retried
    let c = claim_ordered(&mbx, i, stop).await.remove(0);
    let r = mbx
        .deliveries_fail(i, &[failure(&c, "down", true)])
        .await
        .unwrap();
    assert_eq!((r.ports_suspended, r.retried, r.suspended), (1, 0, 0));
    assert_eq!(mbx.send_port_show("stop").await.unwrap().state, "suspended");
    make_due(&pool).await;
    assert!(claim_ordered(&mbx, i, stop).await.is_empty());
    let (state, seq): (String, Option<i64>) =
        sqlx::query_as("SELECT state, seq FROM deliveries WHERE port_id = $1")
            .bind(stop)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), seq), ("ready", Some(1)));
    let events: Vec<String> = mbx
        .tracking_events(message_id(&p))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.port.as_deref() == Some("stop"))
        .map(|e| e.event)
        .collect();
    assert_eq!(events, ["published", "attempt-failed"]);
}

/// The subscriber seam's claim: one statement for many ports, each within its own limits,
/// nothing for a port that is not started, nothing for a dead instance; the work comes
/// back by subscriber, in priority and publish order.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn one_claim_serves_many_ports_each_within_its_own_limits(pool: PgPool) {
    use mbx_messagebox::subscribers::{Subscriber, Want};
    let mbx = mbx(pool.clone()).await;
    let a = started(&mbx, "a", EU).await;
    let b = started(&mbx, "b", EU).await;
    let stopped = port(&mbx, "c", Some(EU), InitialState::Stopped).await;
    publish_n(&mbx, 5).await;
    let i = instance(&mbx).await;
    let want = |port, n| Want {
        subscriber: Subscriber::SendPort(port),
        limits: ClaimLimits::count(n),
    };
    let token = Uuid::new_v4();
    let claimed = mbx
        .claim(i, &[want(a, 2), want(b, 10), want(stopped, 10)], token)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 7);
    let ids = |port| -> Vec<i64> {
        claimed.work[&Subscriber::SendPort(port)]
            .iter()
            .map(|d| d.delivery_id)
            .collect()
    };
    let (got_a, got_b) = (ids(a), ids(b));
    assert_eq!(got_a.len(), 2, "port a's limit");
    assert_eq!(got_b.len(), 5, "port b takes all it has");
    assert!(got_a.windows(2).all(|w| w[0] < w[1]), "publish order");
    assert!(!claimed.work.contains_key(&Subscriber::SendPort(stopped)));
    for d in claimed.work.values().flatten() {
        assert_eq!(d.claim_token, token);
        let name = if d.port_id == a { "a" } else { "b" };
        assert_eq!(d.port_name, name);
        assert_eq!(
            d.context
                .get("mbx.SendPortName")
                .map(|p| p.value.to_plain_string()),
            Some(name.to_owned())
        );
    }
    // what is left of port a: the next claim; a dead instance gets nothing
    assert_eq!(
        mbx.next_due(&[Subscriber::SendPort(a)]).await.unwrap(),
        None
    );
    sqlx::query("UPDATE host_instances SET state = 'dead' WHERE id = $1")
        .bind(i)
        .execute(&pool)
        .await
        .unwrap();
    let none = mbx.claim(i, &[want(a, 10)], Uuid::new_v4()).await.unwrap();
    assert!(none.is_empty());
    let other = instance(&mbx).await;
    let rest = mbx
        .claim(other, &[want(a, 10), want(b, 10)], Uuid::new_v4())
        .await
        .unwrap();
    assert_eq!(rest.len(), 3, "port a's three left, port b's none");
}
