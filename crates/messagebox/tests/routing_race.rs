//! Routing consistency under concurrency: enlisting, unenlisting, filter
//! changes and group membership take effect for every message whose publish commits after
//! the change commits, on every host, however stale its cached routing table.
//!
//! How the order is observed: deferred triggers, created in this test's database only,
//! take a value of one sequence at the commit of every publish (per message) and of every
//! routing change (per routing version). A publish commits holding the routing lock in
//! shared mode and a change holding it exclusively, so these commit-time values order
//! every message exactly against every change: no sample is ambiguous. An implementation
//! that routed with a stale table, or let a change commit while a publish that had
//! already read the old table was still open, misroutes a message whose commit value
//! comes after the change's.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use mbx_messagebox::config::InitialState;
use mbx_messagebox::publish::Publisher;
use mbx_messagebox::MessageBox;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

/// Routing changes the changer makes.
const CHANGES: usize = 150;
/// Concurrent publishers; each alternates between its own MessageBox handle (its own
/// routing cache, like a separate host) and a shared one.
const PUBLISHERS: usize = 3;

const MATCH: &str = "Race.Kind == 'x'";
const NO_MATCH: &str = "Race.Kind == 'y'";

/// Which paths route a message: P (enlisted or not), Q (filter matches or not), R (member
/// of group G or not).
type Routing = (bool, bool, bool);

/// The routing state after change `k` (k = 0: the initial state). The changes cycle:
/// unenlist P, Q stops matching, R leaves G, enlist P, Q matches again, R rejoins G.
fn state_after(k: usize) -> Routing {
    match k % 6 {
        0 => (true, true, true),
        1 => (false, true, true),
        2 => (false, false, true),
        3 => (false, false, false),
        4 => (true, false, false),
        _ => (true, true, false),
    }
}

async fn change(mbx: &MessageBox, k: usize) {
    match k % 6 {
        1 => drop(mbx.send_port_unenlist("P", true).await.unwrap()),
        2 => mbx.send_port_set_filter("Q", Some(NO_MATCH)).await.unwrap(),
        3 => assert_eq!(mbx.group_remove("G", &names(&["R"])).await.unwrap(), 1),
        4 => drop(mbx.send_port_enlist("P").await.unwrap()),
        5 => mbx.send_port_set_filter("Q", Some(MATCH)).await.unwrap(),
        _ => assert_eq!(mbx.group_add("G", &names(&["R"])).await.unwrap(), 1),
    }
}

/// Commit-time clocks: one row per message and one per routing version.
async fn install_commit_clock(pool: &PgPool) {
    for sql in [
        "CREATE SEQUENCE race_clock",
        "CREATE TABLE race_message_commits (message_id uuid PRIMARY KEY, clock bigint NOT NULL)",
        "CREATE TABLE race_change_commits (version bigint PRIMARY KEY, clock bigint NOT NULL)",
        "CREATE FUNCTION race_message_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO race_message_commits VALUES (NEW.id, nextval('race_clock')); RETURN NULL; END $$",
        "CREATE FUNCTION race_change_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           INSERT INTO race_change_commits VALUES (NEW.version, nextval('race_clock'))
             ON CONFLICT (version) DO UPDATE SET clock = excluded.clock;
           RETURN NULL;
         END $$",
        "CREATE CONSTRAINT TRIGGER race_message_commit AFTER INSERT ON messages
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION race_message_commit()",
        "CREATE CONSTRAINT TRIGGER race_change_commit AFTER UPDATE ON routing_state
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION race_change_commit()",
    ] {
        sqlx::query(sql).execute(pool).await.unwrap();
    }
}

async fn routing_version(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT version FROM routing_state")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Publishes single messages (and now and then a batch of three) until `stop`; returns
/// the ids published.
async fn publisher(handles: [MessageBox; 2], stop: Arc<AtomicBool>) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let batch = if n % 5 == 4 { 3 } else { 1 };
        let messages = (0..batch).map(|_| msg(&[("Race.Kind", s("x"))])).collect();
        let out = handles[n % 2]
            .publish(&Publisher::default(), messages)
            .await
            .expect("publish");
        ids.extend(out.iter().map(message_id));
    }
    ids
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn every_message_routes_by_the_subscriptions_at_its_commit(
    pool_opts: PgPoolOptions,
    connect_opts: PgConnectOptions,
) {
    let pool = pool_opts
        .max_connections(PUBLISHERS as u32 + 3)
        .connect_with(connect_opts)
        .await
        .unwrap();
    let admin = mbx(pool.clone()).await;
    port(&admin, "P", Some(MATCH), InitialState::Stopped).await;
    port(&admin, "Q", Some(MATCH), InitialState::Stopped).await;
    port(&admin, "R", None, InitialState::Stopped).await;
    admin
        .group_create("G", Some(MATCH), InitialState::Stopped)
        .await
        .unwrap();
    admin.group_add("G", &names(&["R"])).await.unwrap();
    install_commit_clock(&pool).await;

    // publishers: their own handles (own caches) plus one shared with the other tasks
    let shared = MessageBox::from_pool(pool.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let handles = [MessageBox::from_pool(pool.clone()), shared.clone()];
            tokio::spawn(publisher(handles, stop.clone()))
        })
        .collect();

    // the changer: the routing state each version stands for
    let mut state_of_version = BTreeMap::new();
    state_of_version.insert(routing_version(&pool).await, state_after(0));
    for k in 1..=CHANGES {
        change(&admin, k).await;
        let v = routing_version(&pool).await;
        assert!(
            state_of_version.insert(v, state_after(k)).is_none(),
            "change {k} did not bump the routing version"
        );
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut published = Vec::new();
    for t in tasks {
        published.extend(t.await.unwrap());
    }

    // commit clocks of the changes, in order, with the state each one set
    let changes: Vec<(i64, i64)> =
        sqlx::query_as("SELECT clock, version FROM race_change_commits ORDER BY clock")
            .fetch_all(&pool)
            .await
            .unwrap();
    let initial = *state_of_version.first_key_value().unwrap().1;
    let expected_at = |clock: i64| -> Routing {
        changes
            .iter()
            .take_while(|(c, _)| *c < clock)
            .last()
            .map_or(initial, |(_, v)| state_of_version[v])
    };

    let observed: Vec<(Uuid, i64, bool, bool, bool)> = sqlx::query_as(
        "SELECT c.message_id, c.clock,
                EXISTS (SELECT 1 FROM deliveries d JOIN send_ports p ON p.id = d.port_id
                         WHERE d.message_id = c.message_id AND p.name = 'P')
             OR EXISTS (SELECT 1 FROM suspended_items s JOIN send_ports p ON p.id = s.port_id
                         WHERE s.message_id = c.message_id AND p.name = 'P'),
                EXISTS (SELECT 1 FROM deliveries d JOIN send_ports p ON p.id = d.port_id
                         WHERE d.message_id = c.message_id AND p.name = 'Q'),
                EXISTS (SELECT 1 FROM deliveries d JOIN send_ports p ON p.id = d.port_id
                         WHERE d.message_id = c.message_id AND p.name = 'R')
           FROM race_message_commits c ORDER BY c.clock",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(observed.len(), published.len(), "a publish went unrecorded");

    let mut wrong = Vec::new();
    let mut states_seen = BTreeSet::new();
    let mut interleavings = 0;
    let mut last_state = None;
    for (id, clock, p, q, r) in &observed {
        let expected = expected_at(*clock);
        if (*p, *q, *r) != expected {
            wrong.push(format!(
                "{id} at {clock}: routed (P, Q, R) = {:?}, expected {expected:?}",
                (p, q, r)
            ));
        }
        states_seen.insert(expected);
        if last_state.is_some_and(|s| s != expected) {
            interleavings += 1;
        }
        last_state = Some(expected);
    }
    assert!(
        wrong.is_empty(),
        "{} of {} messages misrouted, e.g.:\n{}",
        wrong.len(),
        observed.len(),
        wrong[..wrong.len().min(10)].join("\n")
    );
    eprintln!(
        "race: {} messages, {interleavings} interleavings, states {states_seen:?}",
        observed.len()
    );
    // the race was real: many messages, published across many changes
    assert!(observed.len() >= 200, "only {} messages", observed.len());
    assert!(
        states_seen.len() == 6,
        "messages saw only states {states_seen:?}"
    );
    assert!(
        interleavings >= CHANGES / 3,
        "only {interleavings} state changes between consecutive messages"
    );
    // nothing routed twice to one port
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM (SELECT 1 FROM deliveries GROUP BY message_id, port_id HAVING count(*) > 1) x"
        )
        .await,
        0
    );
}
