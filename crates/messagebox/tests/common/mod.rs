//! Helpers shared by the MessageBox integration tests: a MessageBox on the per-test
//! database, ports, promoted contexts, publishing, claiming, and counting rows.
#![allow(dead_code)] // each test binary uses a different subset

use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::delivery::{ClaimLimits, ClaimedDelivery, Failure};
use mbx_messagebox::publish::{NewMessage, Published, Publisher};
use mbx_messagebox::{Context, MessageBox, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// A MessageBox on the test database, initialised (group row, host `default`).
pub async fn mbx(pool: PgPool) -> MessageBox {
    let mbx = MessageBox::from_pool(pool);
    mbx.init(None).await.expect("init");
    mbx
}

/// The URL of the database behind a `#[sqlx::test]` pool (on `DATABASE_URL`'s server).
pub fn database_url(pool: &PgPool) -> String {
    let server = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let db = pool
        .connect_options()
        .get_database()
        .expect("test pool names its database")
        .to_owned();
    mbx_messagebox::url_with_database(&server, &db)
}

/// A static file port spec with a filter (or none).
pub fn spec(name: &str, filter: Option<&str>) -> SendPortSpec {
    let mut s = SendPortSpec::new(name, &format!("file:///tmp/mbx-test/{name}"));
    s.filter = filter.map(str::to_owned);
    s
}

/// Creates a port in `state`; returns its id.
pub async fn port(mbx: &MessageBox, name: &str, filter: Option<&str>, state: InitialState) -> i64 {
    create(mbx, spec(name, filter).with_state(state)).await
}

/// Creates a started port; returns its id.
pub async fn started(mbx: &MessageBox, name: &str, filter: &str) -> i64 {
    port(mbx, name, Some(filter), InitialState::Started).await
}

pub async fn create(mbx: &MessageBox, spec: SendPortSpec) -> i64 {
    mbx.send_port_create(&spec)
        .await
        .expect("send_port_create")
        .id
}

/// A context with the given properties promoted.
pub fn ctx(props: &[(&str, Value)]) -> Context {
    let mut c = Context::new();
    for (k, v) in props {
        c.promote(k, v.clone()).expect("promote");
    }
    c
}

pub fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

/// A small message with promoted properties.
pub fn msg(props: &[(&str, Value)]) -> NewMessage {
    NewMessage::new(b"<order/>".to_vec(), "application/xml", ctx(props))
}

/// Publishes one message (no host, no location).
pub async fn publish(mbx: &MessageBox, m: NewMessage) -> Published {
    mbx.publish(&Publisher::default(), vec![m])
        .await
        .expect("publish")
        .pop()
        .expect("one outcome")
}

/// Publishes a message with `Order.Region = region`.
pub async fn publish_region(mbx: &MessageBox, region: &str) -> Published {
    publish(mbx, msg(&[("Order.Region", s(region))])).await
}

/// The message id of a routed or suspended outcome.
pub fn message_id(p: &Published) -> Uuid {
    match p {
        Published::Routed { message_id, .. } | Published::RoutingFailure { message_id, .. } => {
            *message_id
        }
        Published::Duplicate | Published::SourceReused | Published::Unsubscribed => {
            panic!("expected a stored message, got {p:?}")
        }
    }
}

/// The suspended item id of a routing failure.
pub fn routing_failure_id(p: &Published) -> i64 {
    match p {
        Published::RoutingFailure { suspended_id, .. } => *suspended_id,
        other => panic!("expected a routing failure, got {other:?}"),
    }
}

/// Registers an instance of host `default`.
pub async fn instance(mbx: &MessageBox) -> Uuid {
    mbx.instance_register("default", "test-machine", 4242, "0.0.0-test")
        .await
        .expect("instance_register")
}

/// Claims with the default limits.
pub async fn claim(mbx: &MessageBox, instance: Uuid, port_id: i64) -> Vec<ClaimedDelivery> {
    claim_n(mbx, instance, port_id, 100).await
}

pub async fn claim_n(
    mbx: &MessageBox,
    instance: Uuid,
    port_id: i64,
    n: i64,
) -> Vec<ClaimedDelivery> {
    mbx.deliveries_claim(
        instance,
        port_id,
        ClaimLimits {
            max_count: n,
            ..ClaimLimits::default()
        },
    )
    .await
    .expect("deliveries_claim")
}

/// Claims exactly one delivery.
pub async fn claim_one(mbx: &MessageBox, instance: Uuid, port_id: i64) -> ClaimedDelivery {
    let mut c = claim(mbx, instance, port_id).await;
    assert_eq!(c.len(), 1, "expected exactly one claimable delivery");
    c.pop().unwrap()
}

/// Completes claimed deliveries; returns the ids completed.
pub async fn complete(mbx: &MessageBox, instance: Uuid, claimed: &[&ClaimedDelivery]) -> Vec<i64> {
    let done: Vec<(i64, Uuid)> = claimed
        .iter()
        .map(|c| (c.delivery_id, c.claim_token))
        .collect();
    mbx.deliveries_complete(instance, &done)
        .await
        .expect("deliveries_complete")
}

pub fn failure(c: &ClaimedDelivery, error: &str, retryable: bool) -> Failure {
    Failure {
        delivery_id: c.delivery_id,
        claim_token: c.claim_token,
        error: error.to_owned(),
        retryable,
    }
}

/// Makes every retrying delivery due now (instead of waiting for the retry interval).
pub async fn make_due(pool: &PgPool) {
    sqlx::query("UPDATE deliveries SET not_before = now() WHERE state = 'ready'")
        .execute(pool)
        .await
        .expect("make_due");
}

/// `SELECT count(*) ...` (or any bigint scalar).
pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Deliveries of a message: (port name, via_port, via_groups), by port name.
pub async fn deliveries_of(pool: &PgPool, message_id: Uuid) -> Vec<(String, bool, Vec<i64>)> {
    sqlx::query_as(
        "SELECT p.name, d.via_port, d.via_groups FROM deliveries d JOIN send_ports p ON p.id = d.port_id
          WHERE d.message_id = $1 ORDER BY p.name",
    )
    .bind(message_id)
    .fetch_all(pool)
    .await
    .expect("deliveries_of")
}

/// Names of the ports a message has deliveries for.
pub async fn routed_to(pool: &PgPool, message_id: Uuid) -> Vec<String> {
    deliveries_of(pool, message_id)
        .await
        .into_iter()
        .map(|d| d.0)
        .collect()
}

pub async fn message_exists(pool: &PgPool, id: Uuid) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM messages WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("message_exists")
}

pub async fn group_id(pool: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar("SELECT id FROM send_port_groups WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("group_id")
}

/// Inserts a receive port and a location on host `default` (no API for locations yet).
pub async fn receive_location(pool: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar(
        "WITH rp AS (INSERT INTO receive_ports (name) VALUES ($1) RETURNING id)
         INSERT INTO receive_locations (name, receive_port_id, host_id, address)
         SELECT $1, rp.id, h.id, 'file:///tmp/mbx-test/in' FROM rp, hosts h WHERE h.name = 'default'
         RETURNING id",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .expect("receive_location")
}

/// The names of a slice of strings, owned (for group_add/remove).
pub fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Takes the (free) lease of an ordered port for `instance` and claims its head, in order.
pub async fn claim_ordered(mbx: &MessageBox, instance: Uuid, port_id: i64) -> Vec<ClaimedDelivery> {
    use mbx_messagebox::ordered::LEASE_TTL_MS;
    let epoch = match mbx
        .port_lease_acquire(instance, port_id, LEASE_TTL_MS)
        .await
        .expect("lease")
    {
        Some(e) => e,
        None => {
            mbx.port_lease_info(port_id)
                .await
                .expect("lease info")
                .expect("an ordered port")
                .epoch
        }
    };
    mbx.deliveries_claim_ordered(
        instance,
        port_id,
        epoch,
        mbx_messagebox::delivery::ClaimLimits::count(100),
    )
    .await
    .expect("ordered claim")
}
