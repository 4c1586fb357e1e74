//! Stats (the per-port counters), tracking levels and maintenance.

mod common;

use common::*;
use mbx_messagebox::config::InitialState;
use mbx_messagebox::stats::PortStats;
use mbx_messagebox::suspended::Selector;
use mbx_messagebox::{MessageBox, TrackingLevel};
use sqlx::PgPool;
use uuid::Uuid;

const EU: &str = "Order.Region == 'EU'";

async fn events(mbx: &MessageBox, message: Uuid) -> Vec<String> {
    mbx.tracking_events(message)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect()
}

/// A started port with a tracking level and one retry.
async fn tracked(mbx: &MessageBox, name: &str, level: Option<TrackingLevel>) -> i64 {
    let mut sp = spec(name, Some(EU)).with_state(InitialState::Started);
    sp.tracking = level;
    sp.retry_count = 1;
    create(mbx, sp).await
}

/// One message through claim → fail (retry) → claim → fail (suspended) → terminate.
async fn fail_twice_and_terminate(mbx: &MessageBox, pool: &PgPool, port: i64) -> Uuid {
    let p = publish_region(mbx, "EU").await;
    let i = instance(mbx).await;
    for error in ["first", "second"] {
        make_due(pool).await;
        let c = claim_one(mbx, i, port).await;
        mbx.deliveries_fail(i, &[failure(&c, error, true)])
            .await
            .unwrap();
    }
    assert_eq!(
        mbx.suspended_terminate(&Selector::default()).await.unwrap(),
        1
    );
    message_id(&p)
}

fn port_stats<'a>(stats: &'a [PortStats], name: &str) -> &'a PortStats {
    stats
        .iter()
        .find(|p| p.name == name)
        .expect("port in stats")
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn stats_counters_do_not_overlap(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let p = started(&mbx, "p", EU).await;
    port(&mbx, "stopped", Some(EU), InitialState::Stopped).await;
    started(&mbx, "idle", "Order.Region == 'JP'").await;
    for _ in 0..6 {
        publish_region(&mbx, "EU").await;
    }
    publish_region(&mbx, "US").await; // a routing failure
    let i = instance(&mbx).await;
    let c = claim_n(&mbx, i, p, 3).await;
    // one in flight stays, one retries, one is suspended
    mbx.deliveries_fail(
        i,
        &[
            failure(&c[0], "timeout", true),
            failure(&c[1], "bad", false),
        ],
    )
    .await
    .unwrap();

    let stats = mbx.stats().await.unwrap();
    let sp = port_stats(&stats.ports, "p");
    assert_eq!(
        (sp.backlog, sp.retrying, sp.in_flight, sp.suspended),
        (3, 1, 1, 1)
    );
    let st = port_stats(&stats.ports, "stopped");
    assert_eq!(st.state, "stopped");
    assert_eq!(
        (st.backlog, st.retrying, st.in_flight, st.suspended),
        (6, 0, 0, 0)
    );
    let idle = port_stats(&stats.ports, "idle");
    assert_eq!((idle.backlog, idle.in_flight), (0, 0));
    assert_eq!(stats.spool_messages, 7);
    assert_eq!(stats.suspended_total, 2);
    // the per-port counters add up to the deliveries and port-owned suspended items
    let deliveries = count(&pool, "SELECT count(*) FROM deliveries").await;
    let sum: i64 = stats
        .ports
        .iter()
        .map(|p| p.backlog + p.retrying + p.in_flight)
        .sum();
    assert_eq!(sum, deliveries);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn tracking_all_records_published_claimed_delivered(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let port = tracked(&mbx, "p", Some(TrackingLevel::All)).await;
    let p = publish_region(&mbx, "EU").await;
    let i = instance(&mbx).await;
    let c = claim_one(&mbx, i, port).await;
    complete(&mbx, i, &[&c]).await;
    let ev = mbx.tracking_events(message_id(&p)).await.unwrap();
    let names: Vec<&str> = ev.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["published", "claimed", "delivered"]);
    assert!(ev.iter().all(|e| e.port.as_deref() == Some("p")));
    assert_eq!(ev[1].instance_id, Some(i));
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn tracking_failures_records_only_the_final_state_of_a_clean_delivery(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let port = tracked(&mbx, "p", None).await;
    assert_eq!(mbx.send_port_show("p").await.unwrap().tracking, "failures");
    let p = publish_region(&mbx, "EU").await;
    let i = instance(&mbx).await;
    let c = claim_one(&mbx, i, port).await;
    complete(&mbx, i, &[&c]).await;
    assert_eq!(events(&mbx, message_id(&p)).await, ["delivered"]);
    // where it came from, in that one event
    let delivered = &mbx.tracking_events(message_id(&p)).await.unwrap()[0];
    assert_eq!(
        delivered.detail.as_deref(),
        Some("received from a publish call")
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn tracking_failures_records_every_event_of_a_failed_message(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let port = tracked(&mbx, "p", None).await;
    let m = fail_twice_and_terminate(&mbx, &pool, port).await;
    assert_eq!(
        events(&mbx, m).await,
        [
            "published",
            "attempt-failed",
            "retry-scheduled",
            "attempt-failed",
            "suspended",
            "terminated"
        ]
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn tracking_records_the_move_to_backup(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let mut sp = spec("p", Some(EU)).with_state(InitialState::Started);
    sp.retry_count = 0;
    sp.backup_address = Some("file:///tmp/mbx-test/backup".into());
    let port = create(&mbx, sp).await;
    let p = publish_region(&mbx, "EU").await;
    let i = instance(&mbx).await;
    let c = claim_one(&mbx, i, port).await;
    mbx.deliveries_fail(i, &[failure(&c, "down", true)])
        .await
        .unwrap();
    assert_eq!(
        events(&mbx, message_id(&p)).await,
        ["published", "attempt-failed", "moved-to-backup"]
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn tracking_off_records_nothing(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let port = tracked(&mbx, "p", Some(TrackingLevel::Off)).await;
    let clean = publish_region(&mbx, "EU").await;
    let i = instance(&mbx).await;
    let c = claim_one(&mbx, i, port).await;
    complete(&mbx, i, &[&c]).await;
    let failed = fail_twice_and_terminate(&mbx, &pool, port).await;
    // a reclaim from a dead instance
    let reclaimed = publish_region(&mbx, "EU").await;
    let dead = instance(&mbx).await;
    claim_one(&mbx, dead, port).await;
    sqlx::query("UPDATE host_instances SET heartbeat_at = now() - interval '1 hour' WHERE id = $1")
        .bind(dead)
        .execute(&pool)
        .await
        .unwrap();
    mbx.instances_reclaim_dead(10, 5).await.unwrap();

    assert!(events(&mbx, message_id(&clean)).await.is_empty());
    assert!(events(&mbx, failed).await.is_empty());
    assert!(events(&mbx, message_id(&reclaimed)).await.is_empty());
    assert_eq!(
        count(&pool, "SELECT count(*) FROM tracking_events").await,
        0
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_routing_failure_and_its_resume_are_tracked(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let p = publish_region(&mbx, "US").await;
    started(&mbx, "us", "Order.Region == 'US'").await;
    mbx.suspended_resume(&Selector::default()).await.unwrap();
    assert_eq!(
        events(&mbx, message_id(&p)).await,
        ["routing-failed", "resumed"]
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn maintenance_deletes_orphans_but_not_suspended_messages(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let orphan = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO messages (id, content_type, body, body_size, context, published_at)
         VALUES ($1, 'text/plain', 'x', 1, '{}', now() - interval '1 hour')",
    )
    .bind(orphan)
    .execute(&pool)
    .await
    .unwrap();
    let young = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO messages (id, content_type, body, body_size, context) VALUES ($1, 'text/plain', 'x', 1, '{}')",
    )
    .bind(young)
    .execute(&pool)
    .await
    .unwrap();
    let suspended = message_id(&publish_region(&mbx, "US").await);
    started(&mbx, "eu", EU).await;
    let delivering = message_id(&publish_region(&mbx, "EU").await);
    sqlx::query("UPDATE messages SET published_at = now() - interval '1 hour' WHERE id <> $1")
        .bind(young)
        .execute(&pool)
        .await
        .unwrap();

    let r = mbx.maintenance_run(7 * 24 * 3600, 1000).await.unwrap();
    assert_eq!(r.orphan_messages_deleted, 1);
    assert!(!message_exists(&pool, orphan).await);
    // a publish may still be in flight for a young message
    assert!(message_exists(&pool, young).await);
    assert!(message_exists(&pool, suspended).await);
    assert!(message_exists(&pool, delivering).await);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn maintenance_purges_old_tracking_events_and_dedup_records(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    for _ in 0..5 {
        publish_region(&mbx, "US").await; // routing-failed events
    }
    sqlx::query(
        "UPDATE tracking_events SET at = now() - interval '8 days'
          WHERE id IN (SELECT id FROM tracking_events ORDER BY id LIMIT 3)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let loc = receive_location(&pool, "in").await;
    sqlx::query(
        "INSERT INTO received_sources (receive_location_id, source_id, message_id, published_at)
         VALUES ($1, 'old', gen_random_uuid(), now() - interval '2 days'),
                ($1, 'new', gen_random_uuid(), now())",
    )
    .bind(loc)
    .execute(&pool)
    .await
    .unwrap();

    // batches of 2: the loop must go on until nothing old is left
    let r = mbx.maintenance_run(7 * 24 * 3600, 2).await.unwrap();
    assert_eq!((r.tracking_events_purged, r.dedup_records_purged), (3, 1));
    assert_eq!(
        count(&pool, "SELECT count(*) FROM tracking_events").await,
        2
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM received_sources").await,
        1
    );
    let r = mbx.maintenance_run(7 * 24 * 3600, 2).await.unwrap();
    assert_eq!((r.tracking_events_purged, r.dedup_records_purged), (0, 0));
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn maintenance_forgets_old_dead_instances_that_hold_nothing(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let old_dead = mbx.instance_register("default", "m", 1, "t").await.unwrap();
    let old_holder = mbx.instance_register("default", "m", 2, "t").await.unwrap();
    let alive = mbx.instance_register("default", "m", 3, "t").await.unwrap();
    started(&mbx, "eu", EU).await;
    publish_region(&mbx, "EU").await;
    let port_id: i64 = sqlx::query_scalar("SELECT id FROM send_ports WHERE name = 'eu'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let claimed = mbx
        .deliveries_claim(old_holder, port_id, Default::default())
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    sqlx::query(
        "UPDATE host_instances SET state = 'dead', heartbeat_at = now() - interval '30 days' WHERE id <> $1",
    )
    .bind(alive)
    .execute(&pool)
    .await
    .unwrap();
    let r = mbx.maintenance_run(7 * 24 * 3600, 1000).await.unwrap();
    assert_eq!(r.instances_forgotten, 1);
    let left: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM host_instances ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(!left.contains(&old_dead));
    assert!(
        left.contains(&old_holder),
        "an instance still holding a claim is kept"
    );
    assert!(left.contains(&alive));

    // nor one holding an unexpired lease of an ordered port (issue 13), whatever the
    // retention (here a configured 1 s)
    let mut ordered = spec("ord", Some(EU)).with_state(InitialState::Started);
    ordered.ordered = true;
    let ord = create(&mbx, ordered).await;
    let lessee = mbx.instance_register("default", "m", 4, "t").await.unwrap();
    assert!(mbx
        .port_lease_acquire(lessee, ord, 600_000)
        .await
        .unwrap()
        .is_some());
    sqlx::query(
        "UPDATE host_instances SET state = 'dead', heartbeat_at = now() - interval '1 hour' WHERE id = $1",
    )
    .bind(lessee)
    .execute(&pool)
    .await
    .unwrap();
    let r = mbx
        .maintenance_run_with(7 * 24 * 3600, 1, 1000)
        .await
        .unwrap();
    assert_eq!(r.instances_forgotten, 0);
    assert_eq!(mbx.instance_prune(0).await.unwrap(), 0);
}

/// The tracking retention is one group-wide setting in whole days (7 unless set):
/// maintenance purges what is older than the group says.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn the_tracking_retention_is_the_groups_setting(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    assert_eq!(mbx.tracking_retention_s().await.unwrap(), 7 * 86_400);
    for _ in 0..3 {
        publish_region(&mbx, "US").await;
    }
    // one event 2 days old, one 12 hours old, one now
    sqlx::query(
        "UPDATE tracking_events SET at = now() - CASE WHEN id = (SELECT min(id) FROM tracking_events)
                THEN interval '2 days' ELSE interval '12 hours' END
          WHERE id < (SELECT max(id) FROM tracking_events)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let before = count(&pool, "SELECT count(*) FROM tracking_events").await;
    let r = mbx
        .maintenance_run(mbx.tracking_retention_s().await.unwrap(), 100)
        .await
        .unwrap();
    assert_eq!(r.tracking_events_purged, 0, "all within 7 days");
    let update = mbx
        .group_set(&mbx_messagebox::throttle::GroupSet {
            tracking_retention_days: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(update.changed());
    assert_eq!(
        mbx.group_settings().await.unwrap().tracking_retention_days,
        1
    );
    let r = mbx
        .maintenance_run(mbx.tracking_retention_s().await.unwrap(), 100)
        .await
        .unwrap();
    assert_eq!(r.tracking_events_purged, 1, "only the 2-day-old event");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM tracking_events").await,
        before - 1
    );
    // out of range: refused, nothing changed
    for days in [0, 3651] {
        let err = mbx
            .group_set(&mbx_messagebox::throttle::GroupSet {
                tracking_retention_days: Some(days),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--tracking-retention"), "{err}");
    }
    assert_eq!(
        mbx.group_settings().await.unwrap().tracking_retention_days,
        1
    );
}
