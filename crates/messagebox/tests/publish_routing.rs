//! Publishing and routing: storage once, one delivery per subscriber, groups,
//! stopped ports and groups, routing failures, idempotent receive, large bodies, typed
//! filters.

mod common;

use bytes::Bytes;
use common::*;
use mbx_messagebox::config::InitialState;
use mbx_messagebox::publish::{NewMessage, Published, Publisher, Source};
use mbx_messagebox::suspended::{Kind, Selector};
use mbx_messagebox::{Error, PropertyType, Value};
use sqlx::PgPool;

const EU: &str = "Order.Region == 'EU'";

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn publish_stores_message_and_context_once_with_one_delivery(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    started(&mbx, "eu", EU).await;
    let mut m = msg(&[("Order.Region", s("EU"))]);
    m.context
        .write("Order.Note", Value::String("carried".into()))
        .unwrap();
    let p = publish(&mbx, m.clone()).await;
    assert_eq!(
        p,
        Published::Routed {
            message_id: message_id(&p),
            deliveries: 1
        }
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM messages").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM deliveries").await, 1);
    let stored: serde_json::Value = sqlx::query_scalar("SELECT context FROM messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    let stored: mbx_messagebox::Context = serde_json::from_value(stored).unwrap();
    assert_eq!(stored, m.context);
    assert_eq!(
        mbx.message_body(message_id(&p)).await.unwrap(),
        Bytes::from_static(b"<order/>")
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn fan_out_to_three_ports_stores_the_body_once(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    for name in ["a", "b", "c"] {
        started(&mbx, name, EU).await;
    }
    started(&mbx, "us-only", "Order.Region == 'US'").await;
    let p = publish_region(&mbx, "EU").await;
    assert!(
        matches!(p, Published::Routed { deliveries: 3, .. }),
        "{p:?}"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM messages").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM deliveries").await, 3);
    assert_eq!(routed_to(&pool, message_id(&p)).await, ["a", "b", "c"]);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_port_reached_by_several_paths_gets_one_delivery_recording_them(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    started(&mbx, "both", EU).await;
    port(&mbx, "member", None, InitialState::Started).await;
    for g in ["g1", "g2"] {
        mbx.group_create(g, Some("exists(Order.Region)"), InitialState::Started)
            .await
            .unwrap();
        mbx.group_add(g, &names(&["both", "member"])).await.unwrap();
    }
    let (g1, g2) = (group_id(&pool, "g1").await, group_id(&pool, "g2").await);

    let p = publish_region(&mbx, "EU").await;
    assert_eq!(
        deliveries_of(&pool, message_id(&p)).await,
        [
            ("both".to_owned(), true, vec![g1, g2]),
            ("member".to_owned(), false, vec![g1, g2]),
        ]
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn group_members_receive_when_the_group_filter_matches(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    port(&mbx, "m1", None, InitialState::Started).await;
    port(&mbx, "m2", None, InitialState::Started).await;
    mbx.group_create("eu", Some(EU), InitialState::Started)
        .await
        .unwrap();
    mbx.group_add("eu", &names(&["m1", "m2"])).await.unwrap();

    let eu = publish_region(&mbx, "EU").await;
    assert_eq!(routed_to(&pool, message_id(&eu)).await, ["m1", "m2"]);
    let us = publish_region(&mbx, "US").await;
    assert!(matches!(us, Published::RoutingFailure { .. }), "{us:?}");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn ports_and_groups_without_filter_and_unenlisted_ports_receive_nothing(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    port(&mbx, "no-filter", None, InitialState::Started).await;
    port(&mbx, "unenlisted", Some(EU), InitialState::Unenlisted).await;
    port(&mbx, "member", None, InitialState::Started).await;
    mbx.group_create("no-filter-group", None, InitialState::Started)
        .await
        .unwrap();
    mbx.group_add("no-filter-group", &names(&["member"]))
        .await
        .unwrap();

    let p = publish_region(&mbx, "EU").await;
    assert!(matches!(p, Published::RoutingFailure { .. }), "{p:?}");
    assert_eq!(count(&pool, "SELECT count(*) FROM deliveries").await, 0);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_unenlisted_group_member_is_not_routed_to(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    port(&mbx, "in", None, InitialState::Started).await;
    port(&mbx, "out", None, InitialState::Unenlisted).await;
    mbx.group_create("g", Some(EU), InitialState::Started)
        .await
        .unwrap();
    mbx.group_add("g", &names(&["in", "out"])).await.unwrap();

    let p = publish_region(&mbx, "EU").await;
    assert_eq!(routed_to(&pool, message_id(&p)).await, ["in"]);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_stopped_port_collects_and_releases_its_deliveries_on_start(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let id = port(&mbx, "p", Some(EU), InitialState::Stopped).await;
    let i = instance(&mbx).await;
    let p = publish_region(&mbx, "EU").await;
    assert_eq!(routed_to(&pool, message_id(&p)).await, ["p"]);
    assert!(claim(&mbx, i, id).await.is_empty(), "stopped port claimed");

    mbx.send_port_start("p").await.unwrap();
    let c = claim_one(&mbx, i, id).await;
    assert_eq!(c.message_id, message_id(&p));
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_delivery_reached_only_through_a_stopped_group_waits_for_the_group(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let id = port(&mbx, "member", None, InitialState::Started).await;
    mbx.group_create("g", Some(EU), InitialState::Stopped)
        .await
        .unwrap();
    mbx.group_add("g", &names(&["member"])).await.unwrap();
    let i = instance(&mbx).await;
    let p = publish_region(&mbx, "EU").await;
    assert_eq!(routed_to(&pool, message_id(&p)).await, ["member"]);
    assert!(
        claim(&mbx, i, id).await.is_empty(),
        "claimed via a stopped group"
    );

    mbx.group_start("g").await.unwrap();
    assert_eq!(claim_one(&mbx, i, id).await.message_id, message_id(&p));
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_delivery_with_its_own_path_does_not_wait_for_a_stopped_group(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let id = started(&mbx, "p", EU).await;
    mbx.group_create("g", Some(EU), InitialState::Stopped)
        .await
        .unwrap();
    mbx.group_add("g", &names(&["p"])).await.unwrap();
    let i = instance(&mbx).await;
    publish_region(&mbx, "EU").await;
    claim_one(&mbx, i, id).await;
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn no_match_is_a_routing_failure_naming_the_promoted_properties(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    started(&mbx, "eu", EU).await;
    let p = publish_region(&mbx, "US").await;
    let id = routing_failure_id(&p);
    let item = mbx.suspended_show(id).await.unwrap();
    assert_eq!(item.item.kind, "routing-failure");
    assert!(item.item.resumable);
    assert!(item.item.port.is_none());
    assert!(
        item.item.reason.contains("no subscriber matched"),
        "{}",
        item.item.reason
    );
    assert!(
        item.item.reason.contains("Order.Region=US"),
        "{}",
        item.item.reason
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM deliveries").await, 0);
    assert!(message_exists(&pool, message_id(&p)).await);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn resuming_a_routing_failure_routes_it_once_a_subscriber_matches(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let p = publish_region(&mbx, "US").await;
    let id = routing_failure_id(&p);
    let by_id = Selector {
        id: Some(id),
        ..Default::default()
    };

    // still nothing matches: it stays and says so
    let r = mbx.suspended_resume(&by_id).await.unwrap();
    assert_eq!((r.resumed, r.still_unrouted, r.deliveries), (0, 1, 0));
    assert_eq!(mbx.suspended_list(&by_id).await.unwrap().len(), 1);

    started(&mbx, "us", "Order.Region == 'US'").await;
    started(&mbx, "all", "exists(Order.Region)").await;
    let r = mbx.suspended_resume(&by_id).await.unwrap();
    assert_eq!((r.resumed, r.still_unrouted, r.deliveries), (1, 0, 2));
    assert_eq!(routed_to(&pool, message_id(&p)).await, ["all", "us"]);
    assert!(mbx.suspended_list(&by_id).await.unwrap().is_empty());

    // idempotent: the item is gone, a second resume of its id succeeds and changes nothing
    let again = mbx.suspended_resume(&by_id).await.unwrap();
    assert_eq!((again.resumed, again.deliveries), (0, 0));
    assert_eq!(count(&pool, "SELECT count(*) FROM deliveries").await, 2);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn resume_by_kind_routes_every_routing_failure_that_now_matches(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    publish_region(&mbx, "US").await;
    publish_region(&mbx, "US").await;
    publish_region(&mbx, "JP").await;
    started(&mbx, "us", "Order.Region == 'US'").await;
    let sel = Selector {
        kind: Some(Kind::RoutingFailure),
        ..Default::default()
    };
    let r = mbx.suspended_resume(&sel).await.unwrap();
    assert_eq!((r.resumed, r.still_unrouted, r.deliveries), (2, 1, 2));
    let r = mbx.suspended_resume(&sel).await.unwrap();
    assert_eq!((r.resumed, r.still_unrouted, r.deliveries), (0, 1, 0));
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_source_id_published_twice_is_a_duplicate(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    started(&mbx, "eu", EU).await;
    let loc = receive_location(&pool, "in").await;
    let publisher = Publisher {
        host_id: None,
        receive_location_id: Some(loc),
        fence: None,
    };
    let sourced = |src: &str| {
        let mut m = msg(&[("Order.Region", s("EU"))]);
        m.source = Some(Source::new(loc, src));
        m
    };
    let first = mbx
        .publish(&publisher, vec![sourced("a.xml")])
        .await
        .unwrap();
    assert!(matches!(first[0], Published::Routed { .. }), "{first:?}");
    // again, alone and in a batch with a new one and an in-batch duplicate
    let again = mbx
        .publish(
            &publisher,
            vec![sourced("a.xml"), sourced("b.xml"), sourced("b.xml")],
        )
        .await
        .unwrap();
    assert_eq!(again[0], Published::Duplicate);
    assert!(matches!(again[1], Published::Routed { .. }), "{again:?}");
    assert_eq!(again[2], Published::Duplicate);
    assert_eq!(count(&pool, "SELECT count(*) FROM messages").await, 2);
    assert_eq!(count(&pool, "SELECT count(*) FROM deliveries").await, 2);
    // never silent: each repeat is tracked on the message published first
    let first_id = message_id(&first[0]);
    let b_id = message_id(&again[1]);
    let dropped = |id: uuid::Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT detail FROM tracking_events WHERE message_id = $1 AND event = 'duplicate-dropped'",
            )
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let a_events = dropped(first_id).await;
    assert_eq!(a_events.len(), 1, "{a_events:?}");
    assert!(
        a_events[0].contains("a.xml") && a_events[0].contains("received again by in"),
        "{a_events:?}"
    );
    assert_eq!(dropped(b_id).await.len(), 1, "the in-batch repeat too");

    // past the dedup window the same source id is a new message
    sqlx::query("UPDATE received_sources SET published_at = now() - interval '25 hours'")
        .execute(&pool)
        .await
        .unwrap();
    let later = mbx
        .publish(&publisher, vec![sourced("a.xml")])
        .await
        .unwrap();
    assert!(matches!(later[0], Published::Routed { .. }), "{later:?}");
}

/// Issue 26: a source id that carries the body's digest (an HTTP `Idempotency-Key`) and
/// comes again with the same body is a duplicate; with another body it is refused as a
/// reuse, nothing published or tracked, and the first digest stays the one compared.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_source_id_reused_with_another_body_is_refused_not_dropped(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    started(&mbx, "eu", EU).await;
    let loc = receive_location(&pool, "in").await;
    let publisher = Publisher {
        host_id: None,
        receive_location_id: Some(loc),
        fence: None,
    };
    let keyed = |digest: u8| {
        let mut m = msg(&[("Order.Region", s("EU"))]);
        m.source = Some(Source {
            body_sha256: Some([digest; 32]),
            ..Source::new(loc, "key-1")
        });
        m
    };
    let first = mbx.publish(&publisher, vec![keyed(1)]).await.unwrap();
    assert!(matches!(first[0], Published::Routed { .. }), "{first:?}");
    let again = mbx
        .publish(&publisher, vec![keyed(1), keyed(2)])
        .await
        .unwrap();
    assert_eq!(again, vec![Published::Duplicate, Published::SourceReused]);
    // in one batch too: each compared with the digest the key was published with first
    let batch = mbx
        .publish(&publisher, vec![keyed(2), keyed(1)])
        .await
        .unwrap();
    assert_eq!(batch, vec![Published::SourceReused, Published::Duplicate]);
    assert_eq!(count(&pool, "SELECT count(*) FROM messages").await, 1);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM tracking_events WHERE event = 'duplicate-dropped'"
        )
        .await,
        2,
        "the duplicates are tracked, the refused reuses are not"
    );
    // a source id without a digest (FILE) repeated is a duplicate whatever the body
    let mut plain = msg(&[("Order.Region", s("EU"))]);
    plain.source = Some(Source::new(loc, "key-1"));
    let dropped = mbx.publish(&publisher, vec![plain]).await.unwrap();
    assert_eq!(dropped, vec![Published::Duplicate]);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_copy_found_claimed_is_known_published_only_by_its_identity(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    started(&mbx, "eu", EU).await;
    let loc = receive_location(&pool, "in").await;
    let other = receive_location(&pool, "in-2").await;
    let publisher = Publisher {
        host_id: None,
        receive_location_id: Some(loc),
        fence: None,
    };
    let mut m = msg(&[("Order.Region", s("EU"))]);
    m.source = Some(Source::new(loc, "a.xml:4:17"));
    m.source_identity = Some("2049:12:100.000000001".to_owned());
    let first = mbx.publish(&publisher, vec![m]).await.unwrap();
    let first_id = message_id(&first[0]);
    let ask = |src: &str, ident: &str| (src.to_owned(), ident.to_owned());
    let instance = uuid::Uuid::now_v7();
    let found = mbx
        .published_copies(
            loc,
            &[
                // the very file its claimant published
                ask("a.xml:4:17", "2049:12:100.000000001"),
                // a new file with the same name, size and mtime (on a reused inode)
                ask("a.xml:4:17", "2049:12:160.000000002"),
                // never published
                ask("b.xml:4:17", "2049:13:100.000000001"),
            ],
            Some(instance),
        )
        .await
        .unwrap();
    assert_eq!(found, vec![true, false, false]);
    let elsewhere = mbx
        .published_copies(other, &[ask("a.xml:4:17", "2049:12:100.000000001")], None)
        .await
        .unwrap();
    assert_eq!(
        elsewhere,
        vec![false],
        "another location's sources are its own"
    );
    // tracked on the message that was published
    let events: Vec<(String, Option<uuid::Uuid>)> = sqlx::query_as(
        "SELECT detail, instance_id FROM tracking_events WHERE message_id = $1 AND event = 'reclaimed'",
    )
    .bind(first_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0].0.contains("a.xml:4:17") && events[0].0.contains("found still claimed by in "),
        "{events:?}"
    );
    assert_eq!(events[0].1, Some(instance));
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_large_body_is_chunked_and_read_back_identical(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    started(&mbx, "eu", EU).await;
    let body: Vec<u8> = (0..(5 * 1024 * 1024 / 2))
        .map(|i: u32| (i % 251) as u8)
        .collect();
    let p = publish(
        &mbx,
        NewMessage::new(
            body.clone(),
            "application/octet-stream",
            ctx(&[("Order.Region", s("EU"))]),
        ),
    )
    .await;
    let id = message_id(&p);
    let (chunked, size): (bool, i64) =
        sqlx::query_as("SELECT chunked, body_size FROM messages WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(chunked);
    assert_eq!(size, body.len() as i64);
    assert_eq!(count(&pool, "SELECT count(*) FROM message_chunks").await, 3);
    assert!(mbx.message_body(id).await.unwrap() == body, "body differs");

    // the claim hands out no inline body; its size tells the adapter to stream it
    let i = instance(&mbx).await;
    let port_id = mbx.send_port_show("eu").await.unwrap().id;
    let c = claim_one(&mbx, i, port_id).await;
    assert!(c.body.is_none());
    assert_eq!(c.body_size, body.len() as i64);
}

/// A body given as a file is read into chunks one at a time inside the publish, and read
/// back one chunk at a time; a file that is no longer the length it was taken with is
/// refused and nothing is stored.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_file_body_is_stored_in_chunks_and_a_changed_file_is_refused(pool: PgPool) {
    use mbx_messagebox::publish::NewBody;
    let mbx = mbx(pool.clone()).await;
    started(&mbx, "eu", EU).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    let body: Vec<u8> = (0..(3 * 1024 * 1024 + 17))
        .map(|i: u32| (i % 253) as u8)
        .collect();
    std::fs::write(&path, &body).unwrap();
    let from_file = |len: u64| {
        let mut m = msg(&[("Order.Region", s("EU"))]);
        m.body = NewBody::File {
            path: path.clone(),
            len,
        };
        m
    };
    let p = publish(&mbx, from_file(body.len() as u64)).await;
    let id = message_id(&p);
    assert_eq!(count(&pool, "SELECT count(*) FROM message_chunks").await, 4);
    let mut back = Vec::new();
    let mut seq = 0;
    while let Some(chunk) = mbx.message_chunk(id, seq).await.unwrap() {
        assert!(chunk.len() <= 1024 * 1024);
        back.extend_from_slice(&chunk);
        seq += 1;
    }
    assert!(back == body, "read back chunk by chunk, identical");

    // the file grew (or shrank) after it was taken: refused, nothing stored
    for len in [body.len() as u64 - 1, body.len() as u64 + 1] {
        let err = mbx
            .publish(&Publisher::default(), vec![from_file(len)])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Body(_)), "{err}");
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM messages").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM message_chunks").await, 4);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn typed_filters_compare_declared_integers(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    mbx.property_create("Order.Amount", PropertyType::Integer)
        .await
        .unwrap();
    started(&mbx, "big", "Order.Amount > 100").await;
    let amount = |v: Value| msg(&[("Order.Amount", v)]);

    let big = publish(&mbx, amount(Value::Integer(150))).await;
    assert_eq!(routed_to(&pool, message_id(&big)).await, ["big"]);
    let small = publish(&mbx, amount(Value::Integer(50))).await;
    assert!(
        matches!(small, Published::RoutingFailure { .. }),
        "{small:?}"
    );
    let text = publish(&mbx, amount(Value::String("150".into()))).await;
    assert!(matches!(text, Published::RoutingFailure { .. }), "{text:?}");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_filter_comparing_a_declared_integer_with_a_string_is_refused(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    mbx.property_create("Order.Amount", PropertyType::Integer)
        .await
        .unwrap();
    let err = mbx
        .send_port_create(&spec("p", Some("Order.Amount > '100'")))
        .await
        .unwrap_err();
    let Error::Filter(f) = &err else {
        panic!("expected a filter error, got {err}")
    };
    assert_eq!(f.column, Some(16), "{err}");
    assert!(err.to_string().contains("Order.Amount > 100"), "{err}");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn written_properties_do_not_route(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    started(&mbx, "eu", EU).await;
    let mut m = msg(&[]);
    m.context.write("Order.Region", s("EU")).unwrap();
    let p = publish(&mbx, m).await;
    assert!(matches!(p, Published::RoutingFailure { .. }), "{p:?}");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_batch_routes_each_message_on_its_own(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    started(&mbx, "eu", EU).await;
    let out = mbx
        .publish(
            &Publisher::default(),
            vec![
                msg(&[("Order.Region", s("EU"))]),
                msg(&[("Order.Region", s("US"))]),
                msg(&[("Order.Region", s("EU"))]),
            ],
        )
        .await
        .unwrap();
    assert!(matches!(out[0], Published::Routed { deliveries: 1, .. }));
    assert!(matches!(out[1], Published::RoutingFailure { .. }));
    assert!(matches!(out[2], Published::Routed { deliveries: 1, .. }));
    assert_eq!(count(&pool, "SELECT count(*) FROM messages").await, 3);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn concurrent_publishes_of_one_source_id_store_it_once(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    started(&mbx, "eu", EU).await;
    let loc = receive_location(&pool, "in").await;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let mbx = mbx.clone();
            tokio::spawn(async move {
                let mut m = msg(&[("Order.Region", s("EU"))]);
                m.source = Some(Source::new(loc, "same.xml"));
                let publisher = Publisher {
                    host_id: None,
                    receive_location_id: Some(loc),
                    fence: None,
                };
                mbx.publish(&publisher, vec![m])
                    .await
                    .unwrap()
                    .pop()
                    .unwrap()
            })
        })
        .collect();
    let mut routed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Published::Routed { .. } => routed += 1,
            Published::Duplicate => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(routed, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM messages").await, 1);
}
