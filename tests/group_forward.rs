//! Groups joined by forwarding: a send port `mbx://LINK/RECEIVE_PORT` in one
//! group publishes into another group's MessageBox exactly once, through real `mbx-host`
//! processes on both sides; links refuse what cannot work; the target keeps each receipt
//! until the source has completed the delivery; the forwarder role can do nothing else.

use std::collections::BTreeSet;
use std::time::Duration;

use mbx_e2e::{
    bodies_in, count, database_url, messagebox, start_host, wait_for, wait_for_alive, Mbx,
    OtherGroup, FAST_HOST,
};
use mbx_messagebox::context::system;
use mbx_messagebox::forward::{context_for_target, ForwardBody, ForwardTarget, Forwarded};
use mbx_messagebox::publish::Publisher;
use mbx_messagebox::{Context, PropertyType, Value};
use sqlx::PgPool;
use uuid::Uuid;

fn forwarded(n: usize, manager: &str) -> Vec<Forwarded> {
    (0..n)
        .map(|i| {
            let mut context = Context::new();
            context
                .promote("Order.ManagerId", Value::String(manager.into()))
                .unwrap();
            context
                .write("Order.Qty", Value::String(i.to_string()))
                .unwrap();
            Forwarded {
                source_message_id: Uuid::now_v7(),
                content_type: "application/json".into(),
                context,
                body: ForwardBody::Bytes(format!("{{\"order\":{i}}}").into()),
            }
        })
        .collect()
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_resend_is_a_duplicate_until_the_source_forgets_it(pool: PgPool) {
    let source_mbx = messagebox(&pool).await;
    let managers = OtherGroup::create(&pool, "managers").await;
    let result = async {
        managers
            .mbx
            .receive_port_create("from-broker", false)
            .await
            .unwrap();
        let target = ForwardTarget::connect(&managers.url)
            .await
            .expect("connect");
        assert_eq!(target.group_name, "managers");
        let source = (Uuid::new_v4(), "broker");
        let batch = forwarded(3, "B");
        let first = target
            .accept(
                &source_mbx,
                source,
                "manager-b",
                "from-broker",
                None,
                &batch,
                &[],
            )
            .await
            .expect("accept");
        assert_eq!(first.len(), 3);
        assert!(first.iter().all(|a| !a.duplicate));
        // a resend (the source crashed before completing): nothing new, the same ids there
        let again = target
            .accept(
                &source_mbx,
                source,
                "manager-b",
                "from-broker",
                None,
                &batch,
                &[],
            )
            .await
            .expect("accept again");
        assert!(again.iter().all(|a| a.duplicate), "{again:?}");
        let ids = |v: &[mbx_messagebox::forward::Accepted]| {
            v.iter()
                .map(|a| (a.source_message_id, a.message_id))
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(ids(&first), ids(&again));
        // published into the target as received on the receive port
        let n = managers
            .mbx
            .inbox_publish(&Publisher::default(), 100)
            .await
            .expect("inbox publish");
        assert_eq!(n, 3);
        let failures = count(
            managers.mbx.pool(),
            "SELECT count(*) FROM suspended_items WHERE kind = 'routing-failure'",
        )
        .await;
        assert_eq!(
            failures, 3,
            "no subscriber in the target: routing failures there"
        );
        let ctx: serde_json::Value = sqlx::query_scalar("SELECT context FROM messages LIMIT 1")
            .fetch_one(managers.mbx.pool())
            .await
            .unwrap();
        assert_eq!(
            ctx[system::RECEIVE_PORT_NAME]["value"]["string"],
            "from-broker"
        );
        assert_eq!(
            ctx[system::INBOUND_TRANSPORT_TYPE]["value"]["string"],
            "mbx"
        );
        assert_eq!(
            ctx[system::INBOUND_TRANSPORT_LOCATION]["value"]["string"],
            "mbx://broker/manager-b"
        );
        // published, the receipts stay: a late resend, however late, is still a duplicate
        let late = target
            .accept(
                &source_mbx,
                source,
                "manager-b",
                "from-broker",
                None,
                &batch,
                &[],
            )
            .await
            .expect("late resend");
        assert!(late.iter().all(|a| a.duplicate));
        assert_eq!(
            managers
                .mbx
                .inbox_publish(&Publisher::default(), 100)
                .await
                .unwrap(),
            0
        );
        let receipts = target
            .receipts(source.0, "manager-b", 0, 100)
            .await
            .unwrap();
        assert_eq!(receipts.len(), 3);
        // the source forgets them once completed: with its next batch, or by the sweep
        let done: Vec<Uuid> = receipts.iter().map(|r| r.1).collect();
        target
            .accept(
                &source_mbx,
                source,
                "manager-b",
                "from-broker",
                None,
                &forwarded(1, "B"),
                &done[..2],
            )
            .await
            .expect("a batch that forgets two");
        let left = target
            .receipts(source.0, "manager-b", 0, 100)
            .await
            .unwrap();
        assert_eq!(left.len(), 1, "two forgotten with the batch: {left:?}");
        assert_eq!(
            target.forget(source.0, "manager-b", &done).await.unwrap(),
            1
        );
        assert!(target
            .receipts(source.0, "manager-b", 0, 100)
            .await
            .unwrap()
            .is_empty());
        // the new message is not published yet: it stays a message to publish
        assert_eq!(
            count(
                managers.mbx.pool(),
                "SELECT count(*) FROM forward_inbox WHERE NOT published"
            )
            .await,
            1
        );
        // a stale sender (paused while its claim was reclaimed and completed by another)
        // resending after the forget: still a duplicate, for a dedup window
        let stale = target
            .accept(
                &source_mbx,
                source,
                "manager-b",
                "from-broker",
                None,
                &batch,
                &[],
            )
            .await
            .expect("stale resend");
        assert!(stale.iter().all(|a| a.duplicate), "{stale:?}");
        // a dedup window after the forget, maintenance purges the receipts
        sqlx::query(
            "UPDATE forward_inbox SET forgotten_at = now() - interval '25 hours'
              WHERE forgotten_at IS NOT NULL",
        )
        .execute(managers.mbx.pool())
        .await
        .unwrap();
        managers
            .mbx
            .maintenance_run(7 * 86400, 1000)
            .await
            .expect("maintenance");
        assert_eq!(
            count(
                managers.mbx.pool(),
                "SELECT count(*) FROM forward_inbox WHERE forgotten_at IS NOT NULL"
            )
            .await,
            0
        );
        // an ordered stream's older owner is fenced off once a newer one forwarded
        let one = forwarded(1, "B");
        target
            .accept(
                &source_mbx,
                source,
                "ledger",
                "from-broker",
                Some(("ledger#1", 5)),
                &one,
                &[],
            )
            .await
            .expect("epoch 5");
        let stale = target
            .accept(
                &source_mbx,
                source,
                "ledger",
                "from-broker",
                Some(("ledger#1", 4)),
                &forwarded(1, "B"),
                &[],
            )
            .await
            .expect_err("epoch 4 after 5");
        assert!(
            matches!(stale, mbx_messagebox::forward::ForwardError::Fenced(_)),
            "{stale}"
        );
        // a receive port that does not exist there
        let missing = target
            .accept(
                &source_mbx,
                source,
                "manager-b",
                "nowhere",
                None,
                &forwarded(1, "B"),
                &[],
            )
            .await
            .expect_err("no receive port");
        assert!(
            matches!(
                missing,
                mbx_messagebox::forward::ForwardError::NoReceivePort(_)
            ),
            "{missing}"
        );
    }
    .await;
    managers.drop_database().await;
    result
}

#[test]
fn properties_are_typed_by_the_target_and_a_misfit_is_named() {
    let mut source = Context::new();
    source
        .promote("Order.Qty", Value::String("12".into()))
        .unwrap();
    source
        .write("Order.Note", Value::String("rush".into()))
        .unwrap();
    source
        .promote(system::RECEIVE_PORT_NAME, Value::String("spoofed".into()))
        .unwrap();
    let mut declared = std::collections::HashMap::new();
    declared.insert("Order.Qty".to_owned(), PropertyType::Integer);
    let out = context_for_target(&source, &declared).expect("fits");
    assert_eq!(out.promoted("Order.Qty"), Some(&Value::Integer(12)));
    assert!(
        out.promoted("Order.Note").is_none(),
        "written stays written"
    );
    assert!(out.get("Order.Note").is_some());
    assert!(
        out.get(system::RECEIVE_PORT_NAME).is_none(),
        "the engine's own are not carried"
    );
    let mut bad = Context::new();
    bad.promote("Order.Qty", Value::String("twelve".into()))
        .unwrap();
    let err = context_for_target(&bad, &declared).unwrap_err();
    assert!(err.contains("Order.Qty") && err.contains("twelve"), "{err}");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn links_refuse_what_cannot_work(pool: PgPool) {
    let _mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let managers = OtherGroup::create(&pool, "managers").await;
    let result = async {
        // this group itself
        let line = cli.fails(&["group", "link", "add", "self", "--target-url", &url], 2);
        assert!(line.contains("this group"), "{line}");
        // a password in the URL would be stored and printed
        let line = cli.fails(
            &[
                "group",
                "link",
                "add",
                "m",
                "--target-url",
                "postgres://u:secret@127.0.0.1/x",
            ],
            2,
        );
        assert!(
            line.contains("password") && !line.contains("secret"),
            "{line}"
        );
        // nothing listens there
        let port = mbx_e2e::free_port();
        let line = cli.fails(
            &[
                "group",
                "link",
                "add",
                "m",
                "--target-url",
                &format!("postgres://postgres@127.0.0.1:{port}/x"),
            ],
            1,
        );
        assert!(line.contains("cannot reach"), "{line}");
        // a database that is not a MessageBox
        let plain = mbx_e2e::with_database(&mbx_e2e::server_url(), "postgres");
        let line = cli.fails(&["group", "link", "add", "m", "--target-url", &plain], 1);
        assert!(line.contains("not an mbx MessageBox"), "{line}");
        // an unset variable
        let line = cli.fails(
            &[
                "group",
                "link",
                "add",
                "m",
                "--target-url",
                "env:MBX_TEST_UNSET_VAR",
            ],
            2,
        );
        assert!(line.contains("MBX_TEST_UNSET_VAR"), "{line}");
        assert_eq!(
            count(&pool, "SELECT count(*) FROM group_links").await,
            0,
            "nothing recorded"
        );
        // a forwarding port needs its link
        let line = cli.fails(
            &[
                "send-port",
                "create",
                "b",
                "--address",
                "mbx://managers/from-broker",
            ],
            2,
        );
        assert!(
            line.contains("group link 'managers' does not exist"),
            "{line}"
        );
        let line = cli.fails(
            &["send-port", "create", "b", "--address", "mbx://managers"],
            2,
        );
        assert!(line.contains("RECEIVE_PORT"), "{line}");
        // the link, then the port; the link cannot go while the port uses it
        let out = cli.ok(&[
            "group",
            "link",
            "add",
            "managers",
            "--target-url",
            &managers.url,
        ]);
        assert!(out.contains("group 'managers'"), "{out}");
        cli.fails(
            &[
                "group",
                "link",
                "add",
                "managers",
                "--target-url",
                &managers.url,
            ],
            2,
        );
        cli.ok(&[
            "send-port",
            "create",
            "b",
            "--address",
            "mbx://managers/from-broker",
        ]);
        let line = cli.fails(&["group", "link", "remove", "managers"], 1);
        assert!(line.contains("send port(s) b"), "{line}");
        let links = cli.json(&["group", "link", "list"]);
        assert_eq!(links[0]["target_group_name"], "managers");
        cli.fails(&["group", "link", "remove", "nope"], 2);
    }
    .await;
    managers.drop_database().await;
    result
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn orders_reach_the_manager_in_the_other_group_exactly_once(pool: PgPool) {
    let broker = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let managers = OtherGroup::create(&pool, "managers").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("manager-b");
    std::fs::create_dir_all(&out).unwrap();
    let result = async {
        // the manager group: a receive port for the broker's orders, manager B's port
        let there = Mbx::new(managers.url.clone());
        there.ok(&["property", "create", "Order.Qty", "--type", "integer"]);
        there.ok(&["receive-port", "create", "from-broker"]);
        there.ok(&[
            "send-port", "create", "manager-b", "--start",
            "--address", &format!("file://{}/%MessageID%.json", out.display()),
            "--filter", "mbx.ReceivePortName == \"from-broker\" and Order.Qty >= 0",
        ]);
        // the broker group forwards manager B's orders there
        cli.ok(&["group", "link", "add", "managers", "--target-url", &managers.url]);
        cli.ok(&[
            "send-port", "create", "to-managers", "--start",
            "--address", "mbx://managers/from-broker",
            "--filter", "Order.ManagerId == \"B\"",
        ]);
        let _hosts = [start_host(&url, FAST_HOST), start_host(&managers.url, FAST_HOST)];
        wait_for_alive(&broker, 1).await;
        wait_for_alive(&managers.mbx, 1).await;
        let n = 40;
        for i in 0..n {
            // promoted in the broker as text; the manager group declares it an integer
            cli.ok(&[
                "message", "publish", "--promote", "Order.ManagerId=B",
                "--promote", &format!("Order.Qty={i}"),
            ]);
        }
        wait_for("every order in manager B's folder", Duration::from_secs(60), || async {
            bodies_in(&out, "json").len() >= n
        })
        .await;
        // exactly once, and nothing left anywhere: the receipts forgotten too
        wait_for("both spools empty and the receipts forgotten", Duration::from_secs(30), || async {
            count(broker.pool(), "SELECT count(*) FROM deliveries").await == 0
                && count(managers.mbx.pool(), "SELECT count(*) FROM forward_inbox WHERE forgotten_at IS NULL").await == 0
                && count(managers.mbx.pool(), "SELECT count(*) FROM deliveries").await == 0
        })
        .await;
        assert_eq!(bodies_in(&out, "json").len(), n, "no duplicate in the target");
        assert_eq!(count(managers.mbx.pool(), "SELECT count(*) FROM suspended_items").await, 0);
        // tracking: forwarded in the source, the origin in the target
        let forwarded = count(
            broker.pool(),
            "SELECT count(*) FROM tracking_events WHERE event = 'forwarded' AND detail LIKE '%group ''managers''%'",
        )
        .await;
        assert_eq!(forwarded, n as i64);
        let origin: String = sqlx::query_scalar(
            "SELECT detail FROM tracking_events WHERE event = 'delivered' LIMIT 1",
        )
        .fetch_one(managers.mbx.pool())
        .await
        .unwrap();
        assert!(origin.contains("mbx://default/to-managers"), "{origin}");
    }
    .await;
    managers.drop_database().await;
    result
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_missing_receive_port_fails_resumably_and_a_misfit_fails_for_good(pool: PgPool) {
    let broker = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let managers = OtherGroup::create(&pool, "managers").await;
    let result = async {
        let there = Mbx::new(managers.url.clone());
        there.ok(&["property", "create", "Order.Qty", "--type", "integer"]);
        cli.ok(&[
            "group",
            "link",
            "add",
            "managers",
            "--target-url",
            &managers.url,
        ]);
        cli.ok(&[
            "send-port",
            "create",
            "to-managers",
            "--start",
            "--retry-count",
            "0",
            "--address",
            "mbx://managers/from-broker",
            "--filter",
            "Order.ManagerId == \"B\"",
        ]);
        let _hosts = [
            start_host(&url, FAST_HOST),
            start_host(&managers.url, FAST_HOST),
        ];
        wait_for_alive(&broker, 1).await;
        cli.ok(&[
            "message",
            "publish",
            "--promote",
            "Order.ManagerId=B",
            "--property",
            "Order.Qty=7",
        ]);
        cli.ok(&[
            "message",
            "publish",
            "--promote",
            "Order.ManagerId=B",
            "--property",
            "Order.Qty=seven",
        ]);
        wait_for(
            "both suspended in the source",
            Duration::from_secs(30),
            || async { count(broker.pool(), "SELECT count(*) FROM suspended_items").await == 2 },
        )
        .await;
        let kinds: Vec<(String, String)> =
            sqlx::query_as("SELECT kind, reason FROM suspended_items ORDER BY kind")
                .fetch_all(broker.pool())
                .await
                .unwrap();
        assert_eq!(kinds[0].0, "failed", "{kinds:?}");
        assert!(kinds[0].1.contains("from-broker"), "{kinds:?}");
        assert_eq!(kinds[1].0, "failed-final", "{kinds:?}");
        assert!(
            kinds[1].1.contains("Order.Qty") && kinds[1].1.contains("seven"),
            "{kinds:?}"
        );
        // the receive port is created there: the failed one resumes and arrives
        there.ok(&["receive-port", "create", "from-broker"]);
        cli.ok(&["suspended", "resume", "--kind", "failed"]);
        wait_for(
            "the resumed order in the target",
            Duration::from_secs(30),
            || async {
                count(
                    managers.mbx.pool(),
                    "SELECT count(*) FROM suspended_items WHERE kind = 'routing-failure'",
                )
                .await
                    == 1
            },
        )
        .await;
    }
    .await;
    managers.drop_database().await;
    result
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_forwarded_row_the_target_cannot_read_does_not_wedge_its_inbox(pool: PgPool) {
    let _source = messagebox(&pool).await;
    let managers = OtherGroup::create(&pool, "managers").await;
    let result = async {
        managers
            .mbx
            .receive_port_create("from-broker", false)
            .await
            .unwrap();
        // what a peer holding the forwarder role could send: a context that is no context,
        // and a promoted value longer than this group allows
        let long = "x".repeat(300);
        let contexts = [
            serde_json::json!({"not": "a context"}),
            serde_json::json!({"Order.Note": {"value": {"string": long}, "promoted": true},
                               "Order.Id": {"value": {"string": "7"}, "promoted": true}}),
        ];
        sqlx::query(
            "SELECT * FROM mbx_forward_accept(gen_random_uuid(), 'peer', 'p', 'from-broker', NULL, NULL,
                 ARRAY[gen_random_uuid(), gen_random_uuid()], ARRAY[gen_random_uuid(), gen_random_uuid()],
                 ARRAY['text/plain', 'text/plain'], $1::jsonb[], ARRAY['a'::bytea, 'b'::bytea], ARRAY[1, 1]::int8[], '{}')",
        )
        .bind(&contexts[..])
        .fetch_all(managers.mbx.pool())
        .await
        .expect("accept");
        let n = managers
            .mbx
            .inbox_publish(&Publisher::default(), 100)
            .await
            .expect("the inbox is published, not wedged");
        assert_eq!(n, 2);
        assert_eq!(
            count(
                managers.mbx.pool(),
                "SELECT count(*) FROM forward_inbox WHERE NOT published"
            )
            .await,
            0
        );
        // what was valid of the second arrived; the over-long promotion was dropped
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT context -> 'Order.Id' -> 'value' ->> 'string' FROM messages
              WHERE context ? 'Order.Id'",
        )
        .fetch_all(managers.mbx.pool())
        .await
        .unwrap();
        assert_eq!(ids, ["7"]);
    }
    .await;
    managers.drop_database().await;
    result
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_throttled_group_is_tried_again_later_never_failed(pool: PgPool) {
    let broker = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let managers = OtherGroup::create(&pool, "managers").await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("far");
    std::fs::create_dir_all(&out).unwrap();
    let result = async {
        let there = Mbx::new(managers.url.clone());
        there.ok(&["receive-port", "create", "from-broker"]);
        there.ok(&[
            "send-port", "create", "far", "--start",
            "--address", &format!("file://{}/%MessageID%.txt", out.display()),
            "--filter", "mbx.ReceivePortName == \"from-broker\"",
        ]);
        // the managers' inbox holds 20,000 forwarded messages no instance publishes yet
        sqlx::query(
            "INSERT INTO forward_inbox (source_group, source_group_name, send_port, source_message_id,
                                        message_id, receive_port, content_type, context, body)
             SELECT gen_random_uuid(), 'elsewhere', 'p', gen_random_uuid(), gen_random_uuid(),
                    'nowhere', 'text/plain', '{}', 'x'
               FROM generate_series(1, 20000)",
        )
        .execute(managers.mbx.pool())
        .await
        .unwrap();
        cli.ok(&["group", "link", "add", "managers", "--target-url", &managers.url]);
        // no retry at all: a counted failure would suspend at once
        cli.ok(&[
            "send-port", "create", "to-managers", "--start", "--retry-count", "0",
            "--address", "mbx://managers/from-broker", "--filter", "Order.ManagerId == \"B\"",
        ]);
        let _source_host = start_host(&url, FAST_HOST);
        wait_for_alive(&broker, 1).await;
        for _ in 0..3 {
            cli.ok(&["message", "publish", "--promote", "Order.ManagerId=B"]);
        }
        wait_for("the batch given back for later", Duration::from_secs(30), || async {
            count(broker.pool(), "SELECT count(*) FROM deliveries WHERE not_before > now()").await > 0
        })
        .await;
        assert_eq!(count(broker.pool(), "SELECT count(*) FROM suspended_items").await, 0);
        assert_eq!(count(broker.pool(), "SELECT coalesce(max(retries), 0)::int8 FROM deliveries").await, 0);
        // the other group catches up: the orders arrive, never counted as failures
        sqlx::query("DELETE FROM forward_inbox WHERE receive_port = 'nowhere'")
            .execute(managers.mbx.pool())
            .await
            .unwrap();
        let _target_host = start_host(&managers.url, FAST_HOST);
        wait_for("the orders in the other group", Duration::from_secs(30), || async {
            bodies_in(&out, "txt").len() == 3
        })
        .await;
        assert_eq!(count(broker.pool(), "SELECT count(*) FROM suspended_items").await, 0);
    }
    .await;
    managers.drop_database().await;
    result
}

/// The accept and the forget find receipts by the ids they are given, however many
/// receipts of the port the target holds (24 h of forgotten ones at full speed): counted in
/// the tuples the session reads, with the generic plans PL/pgSQL settles on after five calls
/// of a session, made before autovacuum first analyzes the inbox (a new group).
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_accept_reads_the_receipts_it_is_given_not_the_whole_inbox(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    mbx.receive_port_create("in", false).await.unwrap();
    let source = Uuid::new_v4();
    let mut conn = pool.acquire().await.unwrap();
    for setup in [
        "ALTER TABLE forward_inbox SET (autovacuum_enabled = false)",
        "SET plan_cache_mode = force_generic_plan",
    ] {
        sqlx::query(setup).execute(&mut *conn).await.unwrap();
    }
    // 20,000 forgotten receipts of the same port, as a day of forwarding leaves them
    sqlx::query(
        "INSERT INTO forward_inbox (source_group, source_group_name, send_port, source_message_id,
                                    message_id, receive_port, published, forgotten_at)
         SELECT $1, 'broker', 'p', gen_random_uuid(), gen_random_uuid(), 'in', true, now()
           FROM generate_series(1, 20000)",
    )
    .bind(source)
    .execute(&mut *conn)
    .await
    .unwrap();
    let accept = "WITH b AS (
                    SELECT array_agg(gen_random_uuid()) s, array_agg(gen_random_uuid()) m,
                           array_agg('text/plain'::text) ct, array_agg('{}'::jsonb) cx,
                           array_agg('x'::bytea) bo, array_agg(1::int8) sz
                      FROM generate_series(1, 500))
                  SELECT count(*) FROM b, mbx_forward_accept($1, 'broker', 'p', 'in', NULL, NULL,
                      b.s, b.m, b.ct, b.cx, b.bo, b.sz,
                      ARRAY(SELECT gen_random_uuid() FROM generate_series(1, 500)))";
    let forget = "SELECT mbx_forward_forget($1, 'p',
                      ARRAY(SELECT gen_random_uuid() FROM generate_series(1, 500)))";
    // what the session read of the inbox so far, flushed to the statistics
    let tuples_read = || async {
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query_scalar::<_, i64>(
            "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)
               FROM pg_stat_user_tables WHERE relname = 'forward_inbox'",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap()
    };
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap();
    let before = tuples_read().await;
    // (the accepts queue 5,000 behind the receipts: not enough to throttle)
    for _ in 0..10 {
        let n: i64 = sqlx::query_scalar(accept)
            .bind(source)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(n, 500);
        sqlx::query(forget)
            .bind(source)
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap();
    let read = tuples_read().await - before;
    assert!(
        read < 2_000,
        "10 accepts and forgets of 500 ids each read {read} inbox tuples: they scan the port's receipts"
    );
}
