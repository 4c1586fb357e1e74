//! Host instances: registration, heartbeats on the database clock, reclaiming a
//! dead instance's claims, poison detection.

mod common;

use common::*;
use mbx_messagebox::publish::{Published, Publisher};
use mbx_messagebox::suspended::{Kind, Selector};
use mbx_messagebox::{Error, Value};
use sqlx::PgPool;
use uuid::Uuid;

const EU: &str = "Order.Region == 'EU'";
const DEAD_AFTER_S: i64 = 10;

/// Ages an instance's heartbeat past the dead timeout (instead of waiting for it).
async fn age_heartbeat(pool: &PgPool, id: Uuid) {
    sqlx::query("UPDATE host_instances SET heartbeat_at = now() - interval '1 hour' WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn register_heartbeat_and_list(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let id = instance(&mbx).await;
    assert!(mbx.instance_heartbeat(id).await.unwrap());
    let list = mbx.instance_list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (
            list[0].id,
            list[0].host.as_str(),
            list[0].pid,
            list[0].state.as_str()
        ),
        (id, "default", 4242, "alive")
    );
    assert!(list[0].heartbeat_age_s < 5.0);

    age_heartbeat(&pool, id).await;
    assert_eq!(mbx.instance_list().await.unwrap()[0].state, "dead");
    // not yet declared dead: a late heartbeat still counts
    assert!(mbx.instance_heartbeat(id).await.unwrap());
    assert_eq!(mbx.instance_list().await.unwrap()[0].state, "alive");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn registering_on_an_unknown_host_is_not_found(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let err = mbx
        .instance_register("nope", "m", 1, "v")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NotFound { kind: "host", .. }),
        "{err:?}"
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_declared_dead_instance_cannot_heartbeat(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let id = instance(&mbx).await;
    age_heartbeat(&pool, id).await;
    let r = mbx.instances_reclaim_dead(DEAD_AFTER_S, 5).await.unwrap();
    assert_eq!(r.instances_declared_dead, 1);
    assert!(!mbx.instance_heartbeat(id).await.unwrap());
    assert_eq!(mbx.instance_list().await.unwrap()[0].state, "dead");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_dead_instances_claims_are_reclaimed_and_a_live_ones_are_not(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let port = started(&mbx, "p", EU).await;
    for _ in 0..2 {
        publish_region(&mbx, "EU").await;
    }
    let (dead, live) = (instance(&mbx).await, instance(&mbx).await);
    let lost = claim_n(&mbx, dead, port, 1).await.pop().unwrap();
    let kept = claim_n(&mbx, live, port, 1).await.pop().unwrap();
    age_heartbeat(&pool, dead).await;

    let r = mbx.instances_reclaim_dead(DEAD_AFTER_S, 5).await.unwrap();
    assert_eq!((r.instances_declared_dead, r.deliveries_reclaimed), (1, 1));
    let (state, reclaims): (String, i32) =
        sqlx::query_as("SELECT state, reclaims FROM deliveries WHERE id = $1")
            .bind(lost.delivery_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), reclaims), ("ready", 1));
    // the live instance's claim is untouched and still completes
    assert_eq!(complete(&mbx, live, &[&kept]).await, [kept.delivery_id]);
    // the dead one's former claim cannot complete; another instance gets it
    assert!(complete(&mbx, dead, &[&lost]).await.is_empty());
    let again = claim_one(&mbx, live, port).await;
    assert_eq!(again.delivery_id, lost.delivery_id);

    // a second pass finds nothing more to do
    let r = mbx.instances_reclaim_dead(DEAD_AFTER_S, 5).await.unwrap();
    assert_eq!((r.instances_declared_dead, r.deliveries_reclaimed), (0, 0));
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_declared_dead_instance_claims_nothing(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let port = started(&mbx, "p", EU).await;
    publish_region(&mbx, "EU").await;
    let dead = instance(&mbx).await;
    age_heartbeat(&pool, dead).await;
    mbx.instances_reclaim_dead(DEAD_AFTER_S, 5).await.unwrap();
    assert!(claim(&mbx, dead, port).await.is_empty());
    // nor does an id that never registered
    assert!(claim(&mbx, Uuid::new_v4(), port).await.is_empty());
    let fresh = instance(&mbx).await;
    claim_one(&mbx, fresh, port).await;
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_message_reclaimed_more_than_max_deliveries_times_is_poison(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let port = started(&mbx, "p", EU).await;
    let p = publish_region(&mbx, "EU").await;
    let max_deliveries = 2;
    for round in 1..=max_deliveries + 1 {
        let i = instance(&mbx).await;
        claim_one(&mbx, i, port).await;
        age_heartbeat(&pool, i).await;
        let r = mbx
            .instances_reclaim_dead(DEAD_AFTER_S, max_deliveries)
            .await
            .unwrap();
        let poisoned = round > max_deliveries;
        assert_eq!(
            (r.deliveries_reclaimed, r.poison_suspended),
            (u64::from(!poisoned), u64::from(poisoned)),
            "round {round}"
        );
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM deliveries").await, 0);
    let items = mbx
        .suspended_list(&Selector {
            kind: Some(Kind::FailedFinal),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].message_id, message_id(&p));
    assert!(items[0].reason.contains("poison"), "{}", items[0].reason);
    let detail = mbx.suspended_show(items[0].id).await.unwrap();
    assert!(
        detail.attempts.is_empty(),
        "no attempt failed: the holders died"
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn deregister_releases_claims_at_once(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let port = started(&mbx, "p", EU).await;
    publish_region(&mbx, "EU").await;
    let (i, other) = (instance(&mbx).await, instance(&mbx).await);
    claim_one(&mbx, i, port).await;
    assert_eq!(mbx.instance_deregister(i).await.unwrap(), 1);
    assert_eq!(mbx.instance_list().await.unwrap()[0].state, "stopped");
    let again = claim_one(&mbx, other, port).await;
    // a graceful release is not a crash: it does not count toward poison
    let reclaims: i32 = sqlx::query_scalar("SELECT reclaims FROM deliveries WHERE id = $1")
        .bind(again.delivery_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(reclaims, 0);
}

/// A reply routed to an instance that then died is not lost with it: the dead-instance
/// reclaim suspends it as a routing failure saying why, and removes the dead instance's
/// waiting subscriptions; a reply to a token whose instance is dead is routed like any
/// message (here to nobody: a routing failure that says no client waits).
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_dead_instances_replies_are_suspended_and_its_waits_removed(pool: PgPool) {
    use mbx_messagebox::context::system;
    let mbx = mbx(pool.clone()).await;
    let waiting = instance(&mbx).await;
    let reply = |token: &str| {
        msg(&[
            (system::CORRELATION_TOKEN, Value::String(token.into())),
            (system::IS_SOLICIT_RESPONSE, Value::Boolean(true)),
        ])
    };
    let request = |token: &str| {
        msg(&[
            (system::CORRELATION_TOKEN, Value::String(token.into())),
            (system::IS_REQUEST_RESPONSE, Value::Boolean(true)),
        ])
    };
    // two clients wait on the instance; the first one's reply arrives
    for token in ["t1", "t2"] {
        mbx.request_publish(&Publisher::default(), request(token), waiting, token)
            .await
            .unwrap();
    }
    let routed = publish(&mbx, reply("t1")).await;
    assert!(
        matches!(routed, Published::Routed { deliveries: 1, .. }),
        "{routed:?}"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM instance_deliveries").await,
        1
    );
    // the instance dies before it takes the reply
    age_heartbeat(&pool, waiting).await;
    let report = mbx.instances_reclaim_dead(DEAD_AFTER_S, 5).await.unwrap();
    assert_eq!(report.replies_suspended, 1);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM instance_deliveries").await,
        0
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM subscriptions WHERE kind = 'instance'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM suspended_items WHERE kind = 'routing-failure'
                AND reason LIKE '%waiting instance died%'"
        )
        .await,
        1
    );
    // the second client's reply comes later: nobody waits, and the reason says so
    let late = publish(&mbx, reply("t2")).await;
    assert!(matches!(late, Published::RoutingFailure { .. }), "{late:?}");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM suspended_items WHERE kind = 'routing-failure'
                AND reason LIKE '%no client waits for its correlation token t2%'"
        )
        .await,
        1
    );
}
