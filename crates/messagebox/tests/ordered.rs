//! Ordered ports at the MessageBox level: one lease holder, in-order claims
//! that never overtake the head, takeover only after expiry with epoch + 1, and fencing of
//! a former holder's completions.

mod common;

use common::*;
use mbx_messagebox::config::InitialState;
use mbx_messagebox::ordered::LEASE_TTL_MS;
use mbx_messagebox::{MessageBox, Value};
use sqlx::PgPool;

async fn ordered_port(mbx: &MessageBox) -> i64 {
    let mut spec = spec("seq", Some("exists(Seq.N)")).with_state(InitialState::Started);
    spec.ordered = true;
    create(mbx, spec).await
}

async fn publish_n(mbx: &MessageBox, n: i64) {
    for i in 0..n {
        publish(mbx, msg(&[("Seq.N", Value::Integer(i))])).await;
    }
}

fn numbers(claimed: &[mbx_messagebox::delivery::ClaimedDelivery]) -> Vec<i64> {
    claimed
        .iter()
        .map(|d| match d.context.promoted("Seq.N") {
            Some(Value::Integer(n)) => *n,
            other => panic!("Seq.N missing: {other:?}"),
        })
        .collect()
}

async fn expire_lease(pool: &PgPool, port_id: i64) {
    sqlx::query("UPDATE leases SET expires_at = now() - interval '1 second' WHERE port_id = $1")
        .bind(port_id)
        .execute(pool)
        .await
        .expect("expire");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn one_holder_claims_in_order_and_a_takeover_fences_the_former(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let port = ordered_port(&mbx).await;
    publish_n(&mbx, 5).await;
    let (a, b) = (instance(&mbx).await, instance(&mbx).await);

    // unordered claims never take ordered deliveries
    assert!(claim(&mbx, a, port).await.is_empty());
    let epoch_a = mbx
        .port_lease_acquire(a, port, LEASE_TTL_MS)
        .await
        .unwrap()
        .expect("free lease");
    assert_eq!(epoch_a, 1);
    assert_eq!(
        mbx.port_lease_acquire(b, port, LEASE_TTL_MS).await.unwrap(),
        None,
        "held by A"
    );
    assert!(
        mbx.deliveries_claim_ordered(
            b,
            port,
            epoch_a,
            mbx_messagebox::delivery::ClaimLimits::count(10)
        )
        .await
        .unwrap()
        .is_empty(),
        "B holds nothing"
    );

    let head = mbx
        .deliveries_claim_ordered(
            a,
            port,
            epoch_a,
            mbx_messagebox::delivery::ClaimLimits::count(3),
        )
        .await
        .unwrap();
    assert_eq!(numbers(&head), vec![0, 1, 2]);
    let seqs: Vec<i64> = head.iter().map(|d| d.seq.expect("seq")).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(head[0].context.get("mbx.Epoch").is_some());
    assert_eq!(complete(&mbx, a, &[&head[0]]).await.len(), 1);
    assert!(mbx
        .port_lease_renew(a, port, epoch_a, LEASE_TTL_MS)
        .await
        .unwrap());

    // A pauses past the TTL; B takes over with epoch + 1 and re-claims from the head
    expire_lease(&pool, port).await;
    assert!(
        !mbx.port_lease_renew(a, port, epoch_a, LEASE_TTL_MS)
            .await
            .unwrap(),
        "an expired lease is not renewed"
    );
    let epoch_b = mbx
        .port_lease_acquire(b, port, LEASE_TTL_MS)
        .await
        .unwrap()
        .expect("expired lease");
    assert_eq!(epoch_b, epoch_a + 1);
    assert!(
        complete(&mbx, a, &[&head[1]]).await.is_empty(),
        "the former holder is fenced"
    );
    let fail = mbx
        .deliveries_fail(a, &[failure(&head[2], "late", true)])
        .await
        .unwrap();
    assert_eq!(fail.stale, 1, "its failures change nothing either");
    let taken = mbx
        .deliveries_claim_ordered(
            b,
            port,
            epoch_b,
            mbx_messagebox::delivery::ClaimLimits::count(10),
        )
        .await
        .unwrap();
    assert_eq!(
        numbers(&taken),
        vec![1, 2, 3, 4],
        "the new holder resumes at the first uncompleted"
    );
    let refs: Vec<_> = taken.iter().collect();
    assert_eq!(complete(&mbx, b, &refs).await.len(), 4);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_head_waiting_for_its_retry_blocks_everything_behind_it(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let port = ordered_port(&mbx).await;
    publish_n(&mbx, 3).await;
    let a = instance(&mbx).await;
    let epoch = mbx
        .port_lease_acquire(a, port, LEASE_TTL_MS)
        .await
        .unwrap()
        .expect("lease");
    let head = mbx
        .deliveries_claim_ordered(
            a,
            port,
            epoch,
            mbx_messagebox::delivery::ClaimLimits::count(1),
        )
        .await
        .unwrap();
    assert_eq!(numbers(&head), vec![0]);
    let r = mbx
        .deliveries_fail(a, &[failure(&head[0], "503", true)])
        .await
        .unwrap();
    assert_eq!(r.retried, 1);
    assert!(
        mbx.deliveries_claim_ordered(
            a,
            port,
            epoch,
            mbx_messagebox::delivery::ClaimLimits::count(10)
        )
        .await
        .unwrap()
        .is_empty(),
        "nothing overtakes a head that waits for its retry"
    );
    make_due(&pool).await;
    let again = mbx
        .deliveries_claim_ordered(
            a,
            port,
            epoch,
            mbx_messagebox::delivery::ClaimLimits::count(10),
        )
        .await
        .unwrap();
    assert_eq!(numbers(&again), vec![0, 1, 2]);
    assert_eq!(again[0].retries, 1);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_released_lease_is_taken_at_once_and_a_dead_instance_cannot_take_one(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let port = ordered_port(&mbx).await;
    let (a, b) = (instance(&mbx).await, instance(&mbx).await);
    let epoch = mbx
        .port_lease_acquire(a, port, LEASE_TTL_MS)
        .await
        .unwrap()
        .expect("lease");
    mbx.port_lease_release(a, port, epoch).await.unwrap();
    sqlx::query("UPDATE host_instances SET state = 'dead' WHERE id = $1")
        .bind(b)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        mbx.port_lease_acquire(b, port, LEASE_TTL_MS).await.unwrap(),
        None
    );
    let c = instance(&mbx).await;
    assert_eq!(
        mbx.port_lease_acquire(c, port, LEASE_TTL_MS).await.unwrap(),
        Some(epoch + 1)
    );
    let info = mbx.port_lease_info(port).await.unwrap().expect("ordered");
    assert_eq!(info.holder, Some(c));
    assert!(info.live);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn resume_retries_the_held_head_and_skip_suspends_it(pool: PgPool) {
    use mbx_messagebox::suspended::{Kind, Selector};
    let mbx = mbx(pool.clone()).await;
    let mut spec = spec("ledger", Some("exists(Seq.N)")).with_state(InitialState::Started);
    spec.ordered = true;
    spec.stop_on_failure = true;
    spec.retry_count = 0;
    let port = create(&mbx, spec).await;
    publish_n(&mbx, 3).await;
    let a = instance(&mbx).await;
    let refused = mbx
        .send_port_resume("ledger")
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("not suspended"), "{refused}");

    let head = claim_ordered(&mbx, a, port).await.remove(0);
    let r = mbx
        .deliveries_fail(a, &[failure(&head, "down", true)])
        .await
        .unwrap();
    assert_eq!(r.ports_suspended, 1);
    let epoch_before = mbx.port_lease_epoch(port).await.unwrap().unwrap();
    let c = mbx.send_port_resume("ledger").await.unwrap();
    assert_eq!((c.from.as_str(), c.to.as_str()), ("suspended", "started"));
    assert_eq!(
        mbx.port_lease_epoch(port).await.unwrap().unwrap(),
        epoch_before + 1,
        "the epoch moves"
    );
    assert!(
        complete(&mbx, a, &[&head]).await.is_empty(),
        "the old owner is fenced"
    );
    let again = claim_ordered(&mbx, a, port).await;
    assert_eq!(numbers(&again), vec![0, 1, 2], "the head is retried first");
    assert_eq!(again[0].retries, 0, "retries reset");

    mbx.deliveries_fail(a, &[failure(&again[0], "down again", true)])
        .await
        .unwrap();
    assert_eq!(
        mbx.send_port_show("ledger").await.unwrap().state,
        "suspended"
    );
    mbx.send_port_skip("ledger").await.unwrap();
    let items = mbx
        .suspended_list(&Selector {
            kind: Some(Kind::FailedFinal),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(items.len(), 1);
    let next = claim_ordered(&mbx, a, port).await;
    assert_eq!(
        numbers(&next),
        vec![1, 2],
        "after skip the port goes on with the next"
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_checkpoint_is_recorded_with_the_holders_completions_only(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let port = ordered_port(&mbx).await;
    publish_n(&mbx, 2).await;
    let (a, b) = (instance(&mbx).await, instance(&mbx).await);
    let epoch_a = mbx
        .port_lease_acquire(a, port, LEASE_TTL_MS)
        .await
        .unwrap()
        .unwrap();
    let head = mbx
        .deliveries_claim_ordered(
            a,
            port,
            epoch_a,
            mbx_messagebox::delivery::ClaimLimits::count(2),
        )
        .await
        .unwrap();
    let done = mbx
        .deliveries_complete_ordered(
            a,
            &[(head[0].delivery_id, head[0].claim_token)],
            port,
            epoch_a,
            Some("4:/x"),
        )
        .await
        .unwrap();
    assert_eq!(done.len(), 1);
    let info = mbx.port_lease_info(port).await.unwrap().unwrap();
    assert_eq!(info.checkpoint.as_deref(), Some("4:/x"));

    expire_lease(&pool, port).await;
    let epoch_b = mbx
        .port_lease_acquire(b, port, LEASE_TTL_MS)
        .await
        .unwrap()
        .unwrap();
    let stale = mbx
        .deliveries_complete_ordered(
            a,
            &[(head[1].delivery_id, head[1].claim_token)],
            port,
            epoch_a,
            Some("8:/x"),
        )
        .await
        .unwrap();
    assert!(stale.is_empty());
    let info = mbx.port_lease_info(port).await.unwrap().unwrap();
    assert_eq!(
        info.checkpoint.as_deref(),
        Some("4:/x"),
        "a fenced completion records nothing"
    );
    assert_eq!(info.epoch, epoch_b);
}

/// T3 at the MessageBox: three instances race for a free lease on a barrier, 50 rounds;
/// exactly one wins each round, with the epoch moving by one.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn racing_instances_get_exactly_one_owner_each_round(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let port = ordered_port(&mbx).await;
    let instances = [
        instance(&mbx).await,
        instance(&mbx).await,
        instance(&mbx).await,
    ];
    let mut last_epoch = 0;
    for round in 0..50 {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(instances.len()));
        let tasks: Vec<_> = instances
            .iter()
            .map(|&i| {
                // each racer is its own MessageBox handle, as separate hosts would be
                let racer = MessageBox::from_pool(pool.clone());
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    racer
                        .port_lease_acquire(i, port, LEASE_TTL_MS)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            if let Some(epoch) = t.await.unwrap() {
                winners.push(epoch);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        assert_eq!(winners[0], last_epoch + 1, "round {round}");
        last_epoch = winners[0];
        expire_lease(&pool, port).await;
    }
}

/// An ordered claim is bounded in bytes as well as count (the head alone may pass the
/// byte limit, or a large message could never be sent).
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_ordered_claim_stops_at_its_byte_limit_but_always_takes_the_head(pool: PgPool) {
    use mbx_messagebox::delivery::ClaimLimits;
    let mbx = mbx(pool.clone()).await;
    let port = ordered_port(&mbx).await;
    publish_n(&mbx, 5).await; // bodies of 8 bytes each
    let a = instance(&mbx).await;
    let epoch = mbx
        .port_lease_acquire(a, port, LEASE_TTL_MS)
        .await
        .unwrap()
        .expect("free lease");
    let limits = |max_bytes| ClaimLimits {
        max_count: 10,
        max_bytes,
    };
    let first = mbx
        .deliveries_claim_ordered(a, port, epoch, limits(1))
        .await
        .unwrap();
    assert_eq!(
        numbers(&first),
        vec![0],
        "the head alone passes a byte limit"
    );
    assert_eq!(complete(&mbx, a, &[&first[0]]).await.len(), 1);
    let next = mbx
        .deliveries_claim_ordered(a, port, epoch, limits(17))
        .await
        .unwrap();
    assert_eq!(
        numbers(&next),
        vec![1, 2, 3],
        "8 + 8 < 17 bytes before the third"
    );
}

/// An ordered receive location's publish commits only while its publisher
/// holds the location's live lease at its epoch; once the lease expired or moved, the
/// former holder's publish is refused and stores nothing.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_ordered_locations_publish_commits_only_under_its_live_lease(pool: PgPool) {
    use mbx_messagebox::publish::{LocationFence, Publisher};
    use mbx_messagebox::receive::ReceiveLocationSpec;
    let mbx = mbx(pool.clone()).await;
    ordered_port(&mbx).await;
    mbx.receive_port_create("rp", false).await.unwrap();
    let mut spec = ReceiveLocationSpec::new("rl", "rp", "file:///tmp/mbx-test/in/*.xml");
    spec.ordered = true;
    mbx.receive_location_create(&spec).await.unwrap();
    let loc = count(&pool, "SELECT id FROM receive_locations WHERE name = 'rl'").await;
    let (a, b) = (instance(&mbx).await, instance(&mbx).await);
    let epoch_a = mbx
        .location_lease_acquire(a, loc, LEASE_TTL_MS)
        .await
        .unwrap()
        .expect("free lease");
    let by = |holder, epoch| Publisher {
        host_id: None,
        receive_location_id: Some(loc),
        fence: Some(LocationFence {
            location_id: loc,
            holder,
            epoch,
        }),
    };
    let one = |n| msg(&[("Seq.N", Value::Integer(n))]);
    mbx.publish(&by(a, epoch_a), vec![one(0)])
        .await
        .expect("the holder publishes");
    assert!(
        matches!(
            mbx.publish(&by(b, epoch_a), vec![one(1)]).await,
            Err(mbx_messagebox::Error::Fenced(_))
        ),
        "not the holder"
    );
    sqlx::query(
        "UPDATE leases SET expires_at = now() - interval '1 second' WHERE location_id = $1",
    )
    .bind(loc)
    .execute(&pool)
    .await
    .unwrap();
    assert!(
        matches!(
            mbx.publish(&by(a, epoch_a), vec![one(1)]).await,
            Err(mbx_messagebox::Error::Fenced(_))
        ),
        "an expired lease fences its holder"
    );
    let epoch_b = mbx
        .location_lease_acquire(b, loc, LEASE_TTL_MS)
        .await
        .unwrap()
        .expect("expired lease taken");
    assert!(matches!(
        mbx.publish(&by(a, epoch_a), vec![one(1)]).await,
        Err(mbx_messagebox::Error::Fenced(_))
    ));
    mbx.publish(&by(b, epoch_b), vec![one(2)])
        .await
        .expect("the new holder publishes");
    assert_eq!(count(&pool, "SELECT count(*) FROM messages").await, 2);
    assert_eq!(count(&pool, "SELECT count(*) FROM deliveries").await, 2);
}
