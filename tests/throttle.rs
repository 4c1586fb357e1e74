//! Throttling with a real `mbx-host`: T13 — messages arrive faster than they
//! drain (the send port is stopped: a drain rate of 0) past the host's publish threshold;
//! the throttle engages (FILE stops taking files, HTTP answers 503 + Retry-After, the state
//! shows in `mbx status` and `/metrics`), memory stays bounded, and once the port drains
//! everything arrives exactly once and the throttle releases. And the delivery throttle:
//! an instance never has more messages in flight than its `throttle_inflight`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use mbx_e2e::{
    bodies_in, database_url, file_route, files_in, free_port, messagebox, start_host, wait_for,
    wait_for_alive, FileRoute,
};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::receive::ReceiveLocationSpec;
use mbx_messagebox::MessageBox;
use sqlx::PgPool;

const FILES: usize = 400;
const THRESHOLD: i64 = 100;

async fn throttle_of_the_instance(mbx: &MessageBox) -> Option<String> {
    let list = mbx.instance_list().await.expect("instances");
    list.into_iter()
        .find(|i| i.state == "alive")
        .and_then(|i| i.throttle)
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_backlog_past_the_publish_threshold_slows_receive_down_and_drains_without_loss(
    pool: PgPool,
) {
    let mbx = messagebox(&pool).await;
    sqlx::query("UPDATE hosts SET throttle_publish = $1 WHERE name = 'default'")
        .bind(THRESHOLD)
        .execute(&pool)
        .await
        .expect("threshold");
    let dir = tempfile::tempdir().expect("tempdir");
    let FileRoute { inbox, outbox } =
        file_route(&mbx, dir.path(), "json", "json", "/id", "%MessageID%.json").await;
    mbx.send_port_stop("out").await.expect("stop the port");
    // an HTTP location on the same host
    mbx.receive_port_create("api", false).await.expect("port");
    mbx.receive_location_create(&ReceiveLocationSpec::new("api-in", "api", "http:///orders"))
        .await
        .expect("location");
    mbx.receive_location_set_enabled("api-in", true)
        .await
        .expect("enable");
    let (http, admin) = (free_port(), free_port());
    let args = mbx_e2e::http_host_args(http, admin);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let host = start_host(&database_url(&pool), &args);
    wait_for_alive(&mbx, 1).await;
    // files keep arriving (about 200/s) while nothing drains
    let writer = {
        let inbox = inbox.clone();
        tokio::spawn(async move {
            for i in 0..FILES {
                let (tmp, name) = (
                    inbox.join(format!(".o-{i:04}.tmp")),
                    inbox.join(format!("o-{i:04}.json")),
                );
                std::fs::write(&tmp, format!(r#"{{"id": {i}}}"#)).expect("write");
                std::fs::rename(&tmp, &name).expect("rename");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    wait_for(
        "the publish throttle engages",
        Duration::from_secs(60),
        || async { throttle_of_the_instance(&mbx).await.as_deref() == Some("publish") },
    )
    .await;
    // it holds: files wait in the inbox rather than piling up in the MessageBox
    let stats = mbx.stats().await.expect("stats");
    let backlog: i64 = stats.ports.iter().map(|p| p.backlog).sum();
    assert!(
        backlog >= THRESHOLD && backlog < FILES as i64,
        "backlog stops near the threshold: {backlog}"
    );
    assert!(
        !files_in(&inbox, "json").is_empty(),
        "files not taken stay in the inbox"
    );
    let client = reqwest::Client::new();
    let r = client
        .post(format!("http://127.0.0.1:{http}/orders"))
        .body("<order/>")
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let metrics = client
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("mbx_throttled{kind=\"publish\"} 1"),
        "{metrics}"
    );
    let status = mbx_e2e::Mbx::new(database_url(&pool)).ok(&["status"]);
    assert!(status.contains("THROTTLED (publish)"), "{status}");

    // drain: everything arrives once, and the throttle lets go
    writer.await.expect("writer");
    mbx.send_port_start("out").await.expect("start the port");
    wait_for(
        "every file delivered and the inbox empty",
        Duration::from_secs(120),
        || async {
            files_in(&outbox, "json").len() >= FILES && files_in(&inbox, "json").is_empty()
        },
    )
    .await;
    wait_for(
        "the publish throttle releases",
        Duration::from_secs(30),
        || async { throttle_of_the_instance(&mbx).await.is_none() },
    )
    .await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for body in bodies_in(&outbox, "json") {
        *seen.entry(body).or_default() += 1;
    }
    let lost: Vec<usize> = (0..FILES)
        .filter(|i| !seen.contains_key(&format!(r#"{{"id": {i}}}"#)))
        .collect();
    let duplicates: Vec<&String> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(b, _)| b)
        .collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(duplicates.is_empty(), "duplicates: {duplicates:?}");
    let rss = mbx_e2e::peak_rss_mb(host.pid());
    assert!(rss < 200.0, "host memory stays bounded: {rss:.0} MB");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_instance_never_has_more_in_flight_than_its_delivery_throttle(pool: PgPool) {
    const INFLIGHT: i64 = 5;
    let mbx = messagebox(&pool).await;
    sqlx::query("UPDATE hosts SET throttle_inflight = $1 WHERE name = 'default'")
        .bind(INFLIGHT)
        .execute(&pool)
        .await
        .expect("threshold");
    // an endpoint that holds every request until released, counting those it holds
    let (held, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let app = {
        let (held, most, gate) = (held.clone(), most.clone(), gate.clone());
        Router::new().route(
            "/slow",
            post(move || {
                let (held, most, gate) = (held.clone(), most.clone(), gate.clone());
                async move {
                    let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let _permit = gate.acquire().await.expect("gate");
                    held.fetch_sub(1, Ordering::SeqCst);
                    "ok"
                }
            }),
        )
    };
    let port = mbx_e2e::serve_on_loopback(app).await;
    for name in ["a", "b", "c"] {
        mbx.send_port_create(
            &SendPortSpec::new(name, &format!("http://127.0.0.1:{port}/slow"))
                .with_filter("exists(T.N)")
                .with_state(InitialState::Started),
        )
        .await
        .expect("port");
    }
    for i in 0..10 {
        let mut ctx = mbx_messagebox::Context::new();
        ctx.promote("T.N", mbx_messagebox::Value::Integer(i))
            .expect("promote");
        mbx.publish(
            &Default::default(),
            vec![mbx_messagebox::publish::NewMessage::new(
                "x".as_bytes().to_vec(),
                "text/plain",
                ctx,
            )],
        )
        .await
        .expect("publish");
    }
    let _host = start_host(&database_url(&pool), &["--poll-interval", "200ms"]);
    wait_for_alive(&mbx, 1).await;
    wait_for(
        "the delivery throttle engages with the endpoint holding its requests",
        Duration::from_secs(60),
        || async {
            held.load(Ordering::SeqCst) > 0
                && throttle_of_the_instance(&mbx).await.as_deref() == Some("inflight")
        },
    )
    .await;
    // 30 deliveries wait and three ports could each claim 10: still only 5 in flight
    let stats = mbx.stats().await.expect("stats");
    let in_flight: i64 = stats.ports.iter().map(|p| p.in_flight).sum();
    assert_eq!(in_flight, INFLIGHT, "{stats:?}");
    gate.add_permits(1000);
    wait_for(
        "all 30 deliveries done",
        Duration::from_secs(60),
        || async {
            mbx.stats()
                .await
                .map(|s| s.ports.iter().all(|p| p.backlog + p.in_flight == 0))
                .unwrap_or(false)
        },
    )
    .await;
    let most = most.load(Ordering::SeqCst);
    assert!(
        (1..=INFLIGHT as usize).contains(&most),
        "at most {INFLIGHT} requests at once, saw {most}"
    );
}

/// An ordered port with nothing to send does not hold the instance's in-flight budget:
/// an unordered port beside it on the same instance delivers everything (on main, an
/// idle ordered loop held a reservation of every in-flight byte through its idle wait,
/// and the other port delivered 0 of 2,000 in 30 s while `mbx status` said
/// `THROTTLED (inflight)`).
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_idle_ordered_port_leaves_the_in_flight_budget_to_the_other_ports(pool: PgPool) {
    use mbx_messagebox::publish::{NewMessage, Publisher};
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut idle = SendPortSpec::new("idle", &format!("file://{}/idle.log", dir.path().display()))
        .with_filter("Order.Kind == 'never'")
        .with_state(InitialState::Started);
    idle.ordered = true;
    idle.settings.insert("append".into(), "true".into());
    mbx.send_port_create(&idle).await.expect("ordered port");
    mbx.send_port_create(
        &SendPortSpec::new("bulk", "null:bulk")
            .with_filter("Order.Kind == 'bulk'")
            .with_state(InitialState::Started),
    )
    .await
    .expect("unordered port");
    let host = start_host(&database_url(&pool), mbx_e2e::FAST_HOST);
    wait_for_alive(&mbx, 1).await;
    wait_for(
        "the ordered port's lease taken",
        Duration::from_secs(30),
        || async { mbx_e2e::lease_owner(&pool, "idle").await.is_some() },
    )
    .await;
    const N: usize = 2_000;
    for chunk in (0..N).collect::<Vec<_>>().chunks(500) {
        let batch = chunk
            .iter()
            .map(|n| {
                let mut ctx = mbx_messagebox::Context::new();
                ctx.promote("Order.Kind", mbx_messagebox::Value::String("bulk".into()))
                    .expect("promote");
                NewMessage::new(format!("bulk {n}"), "text/plain", ctx)
            })
            .collect();
        mbx.publish(&Publisher::default(), batch)
            .await
            .expect("publish");
    }
    let drained = mbx_e2e::eventually(Duration::from_secs(60), || async {
        mbx.stats().await.expect("stats").spool_messages == 0
    })
    .await;
    let left = mbx.stats().await.expect("stats").spool_messages;
    let throttle = throttle_of_the_instance(&mbx).await;
    drop(host);
    assert!(
        drained,
        "{left} of {N} messages still undelivered after 60 s; instance throttle: {throttle:?}"
    );
    assert_eq!(throttle, None, "nothing in flight, so not throttled");
}

/// `/metrics` of a host's admin listener.
async fn metrics_of(client: &reqwest::Client, admin: u16) -> String {
    client
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The instance's throttle as `mbx status --output json` shows it.
fn status_throttle(cli: &mbx_e2e::Mbx) -> Option<String> {
    let status = cli.json(&["status"]);
    status["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .find(|i| i["state"] == "alive")
        .and_then(|i| i["throttle"].as_str().map(str::to_owned))
}

/// Seed 004: a MessageBox database past its size threshold (the group's, set below its
/// size now) stops the host's receive locations — FILE leaves its files, HTTP answers
/// 503 + Retry-After, `mbx status` and `/metrics` say `database-size` — while the work in
/// progress completes: a two-way client held before the throttle gets its reply (the
/// solicit-response port's response is published with its completion) and deliveries go
/// out. Setting the host's override `off` resumes receive by itself, nothing lost.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_database_past_its_size_threshold_stops_receive_while_work_in_progress_completes(
    pool: PgPool,
) {
    use mbx_messagebox::publish::{NewMessage, Publisher};
    const HELD_FILES: usize = 20;
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = mbx_e2e::Mbx::new(url.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let FileRoute { inbox, outbox } =
        file_route(&mbx, dir.path(), "json", "json", "/id", "%MessageID%.json").await;
    let mut api = ReceiveLocationSpec::new("api-in", "orders", "http:///orders");
    api.pipeline = "json".into();
    api.promote.insert("Order.Id".into(), "/id".into());
    mbx.receive_location_create(&api).await.expect("location");
    mbx.receive_location_set_enabled("api-in", true)
        .await
        .expect("enable");
    // a quote service that holds each request until the gate opens
    let (asked, gate) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(tokio::sync::Semaphore::new(0)),
    );
    let app = {
        let (asked, gate) = (asked.clone(), gate.clone());
        Router::new().route(
            "/quote",
            post(move |body: String| {
                let (asked, gate) = (asked.clone(), gate.clone());
                async move {
                    asked.fetch_add(1, Ordering::SeqCst);
                    let _permit = gate.acquire().await.expect("gate");
                    format!("quote:{body}")
                }
            }),
        )
    };
    let service = mbx_e2e::serve_on_loopback(app).await;
    mbx_e2e::two_way(&cli, "quotes", "quote", "60s");
    mbx_e2e::quote_port(&cli, service);
    // what is published by other means than a receive location is delivered all along
    let direct = dir.path().join("direct");
    std::fs::create_dir_all(&direct).expect("direct/");
    mbx.send_port_create(
        &SendPortSpec::new(
            "direct",
            &format!("file://{}/%MessageID%.txt", direct.display()),
        )
        .with_filter("exists(T.N)")
        .with_state(InitialState::Started),
    )
    .await
    .expect("direct port");
    let (http, admin) = (free_port(), free_port());
    let args = mbx_e2e::http_host_args(http, admin);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _host = start_host(&url, &args);
    wait_for_alive(&mbx, 1).await;
    let client = reqwest::Client::new();

    // a two-way client waits on the quote service when the throttle engages
    let waiting = {
        let client = client.clone();
        let address = format!("http://127.0.0.1:{http}/quote");
        tokio::spawn(async move {
            loop {
                match client.post(&address).body("early").send().await {
                    Err(e) if e.is_connect() => {}
                    Err(e) => panic!("ask: {e}"),
                    Ok(r) => {
                        let (status, text) = (r.status().as_u16(), r.text().await.expect("reply"));
                        // not mounted yet (the location starting: 503 saying so)
                        if !(status == 404 || status == 503 && text.contains("is not serving now"))
                        {
                            return (status, text);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    wait_for(
        "the request at the quote service",
        Duration::from_secs(30),
        || async { asked.load(Ordering::SeqCst) == 1 },
    )
    .await;
    let size = mbx.database_size().await.expect("size");
    cli.ok(&[
        "group",
        "set",
        "--throttle-database-size",
        &(size / 2).to_string(),
    ]);
    wait_for(
        "mbx status shows the database-size throttle",
        Duration::from_secs(30),
        || async { status_throttle(&cli).as_deref() == Some("database-size") },
    )
    .await;
    let status = cli.ok(&["status"]);
    assert!(status.contains("THROTTLED (database-size)"), "{status}");
    let metrics = metrics_of(&client, admin).await;
    assert!(
        metrics.contains("mbx_throttled{kind=\"database-size\"} 1"),
        "{metrics}"
    );
    let gauge = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mbx_database_size_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no mbx_database_size_bytes: {metrics}"));
    assert!(gauge >= size as f64 / 2.0, "{gauge} of {size}");

    // receive stops: HTTP 503 + Retry-After (one-way or two-way), FILE leaves its files
    for (path, body) in [("orders", "{\"id\": 1}"), ("quote", "late")] {
        let r = client
            .post(format!("http://127.0.0.1:{http}/{path}"))
            .body(body)
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status().as_u16(), 503, "{path}");
        assert!(r.headers().get("retry-after").is_some(), "{path}");
        let text = r.text().await.expect("text");
        assert!(text.contains("database-size throttle"), "{text}");
    }
    for i in 0..HELD_FILES {
        let tmp = inbox.join(format!(".o-{i:04}.tmp"));
        std::fs::write(&tmp, format!(r#"{{"id": {i}}}"#)).expect("write");
        std::fs::rename(&tmp, inbox.join(format!("o-{i:04}.json"))).expect("rename");
    }
    // the work in progress completes: the held client gets its reply ...
    gate.add_permits(1000);
    let (status_code, reply) = waiting.await.expect("the waiting client");
    assert_eq!((status_code, reply.as_str()), (200, "quote:early"));
    // ... and deliveries go out
    let published = (0..5)
        .map(|n| {
            let mut ctx = mbx_messagebox::Context::new();
            ctx.promote("T.N", mbx_messagebox::Value::Integer(n))
                .expect("promote");
            NewMessage::new(format!("direct {n}"), "text/plain", ctx)
        })
        .collect();
    mbx.publish(&Publisher::default(), published)
        .await
        .expect("publish");
    wait_for(
        "the deliveries sent while throttled",
        Duration::from_secs(30),
        || async { files_in(&direct, "txt").len() == 5 },
    )
    .await;
    // all this while (polled every 200 ms) not one file was taken
    assert_eq!(files_in(&inbox, "json").len(), HELD_FILES, "files stay");
    assert!(files_in(&outbox, "json").is_empty());
    assert_eq!(
        status_throttle(&cli).as_deref(),
        Some("database-size"),
        "still throttled"
    );

    // the host's override, off: receive resumes by itself, every file once
    cli.ok(&[
        "host",
        "update",
        "default",
        "--throttle-database-size",
        "off",
    ]);
    wait_for(
        "every held file delivered and the throttle off",
        Duration::from_secs(60),
        || async {
            files_in(&outbox, "json").len() == HELD_FILES
                && files_in(&inbox, "json").is_empty()
                && status_throttle(&cli).is_none()
        },
    )
    .await;
    let mut bodies = bodies_in(&outbox, "json");
    bodies.sort();
    let mut expected: Vec<String> = (0..HELD_FILES)
        .map(|i| format!(r#"{{"id": {i}}}"#))
        .collect();
    expected.sort();
    assert_eq!(bodies, expected, "every file exactly once");
    let r = client
        .post(format!("http://127.0.0.1:{http}/orders"))
        .body("{\"id\": 99}")
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 202, "HTTP receive accepts again");
    assert!(
        metrics_of(&client, admin)
            .await
            .contains("mbx_throttled{kind=\"database-size\"} 0"),
        "the gauge says so too"
    );
}
