//! HTTP receive → HTTP send through two real `mbx-host` processes: every accepted POST
//! reaches the endpoint exactly once with its Idempotency-Key; wrong tokens, oversized
//! bodies and unknown paths are refused and publish nothing; a location that is disabled,
//! restarting or not serving yet tells senders to come back (503), never that nothing is
//! there (404).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use mbx_e2e::{database_url, free_port, start_host_with_env, wait_for, Mbx, Reaped};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::receive::ReceiveLocationSpec;
use mbx_messagebox::MessageBox;
use sqlx::PgPool;

const MESSAGES: usize = 200;
const TOKEN: &str = "s3cret-token";

fn start_host(url: &str, http_port: u16) -> Reaped {
    let listen = format!("127.0.0.1:{http_port}");
    start_host_with_env(
        url,
        &["--poll-interval", "200ms", "--http-listen", &listen],
        &[("MBX_TEST_BEARER", TOKEN)],
    )
}

type Received = Arc<Mutex<Vec<(Option<String>, String)>>>;

/// The endpoint: records (Idempotency-Key, body) of every request and answers 200.
async fn start_sink() -> (u16, Received) {
    let received: Received = Arc::default();
    let r = received.clone();
    let app = Router::new().route(
        "/sink",
        post(move |headers: HeaderMap, body: String| {
            let r = r.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                r.lock().expect("sink lock").push((key, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind sink");
    let port = listener.local_addr().expect("sink addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await.expect("sink serve") });
    (port, received)
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn http_posts_reach_the_endpoint_exactly_once_through_two_hosts(pool: PgPool) {
    let mbx = MessageBox::from_pool(pool.clone());
    mbx.init(None).await.expect("init");
    let (sink_port, received) = start_sink().await;
    mbx.receive_port_create("api", false)
        .await
        .expect("receive port");
    let mut loc = ReceiveLocationSpec::new("api-in", "api", "http:///orders");
    loc.pipeline = "json".into();
    loc.promote.insert("Order.Id".into(), "/id".into());
    loc.max_message_size = 1000;
    loc.settings
        .insert("bearer_token".into(), "env:MBX_TEST_BEARER".into());
    mbx.receive_location_create(&loc).await.expect("location");
    mbx.receive_location_set_enabled("api-in", true)
        .await
        .expect("enable");
    mbx.send_port_create(
        &SendPortSpec::new("to-sink", &format!("http://127.0.0.1:{sink_port}/sink"))
            .with_filter("mbx.ReceivePortName == 'api'")
            .with_state(InitialState::Started),
    )
    .await
    .expect("send port");

    let url = database_url(&pool);
    let ports = [free_port(), free_port()];
    let _hosts = [start_host(&url, ports[0]), start_host(&url, ports[1])];
    let client = reqwest::Client::new();
    let orders = |p: u16| format!("http://127.0.0.1:{p}/orders");
    for p in ports {
        // the route is served once an unauthenticated POST gets 401
        wait_for(
            "the HTTP receive location on each instance",
            Duration::from_secs(30),
            || {
                let req = client.post(orders(p)).body("{}");
                async move { matches!(req.send().await, Ok(r) if r.status() == 401) }
            },
        )
        .await;
    }

    let mut sent = BTreeMap::new();
    for i in 0..MESSAGES {
        let body = format!("{{\"id\": {i}, \"item\": \"widget-{i}\"}}");
        let r = client
            .post(orders(ports[i % 2]))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 202, "POST {i}");
        sent.insert(body, ());
    }
    // refusals publish nothing
    let wrong = client
        .post(orders(ports[0]))
        .bearer_auth("nope")
        .body("{\"id\": -1}")
        .send()
        .await
        .expect("post");
    assert_eq!(wrong.status(), 401);
    let big = client
        .post(orders(ports[1]))
        .bearer_auth(TOKEN)
        .body("x".repeat(2000))
        .send()
        .await
        .expect("post");
    assert_eq!(big.status(), 413);
    let unknown = client
        .post(format!("http://127.0.0.1:{}/nowhere", ports[0]))
        .bearer_auth(TOKEN)
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(unknown.status(), 404);

    wait_for(
        "every message at the endpoint",
        Duration::from_secs(60),
        || async { received.lock().expect("lock").len() >= MESSAGES },
    )
    .await;
    wait_for("an empty spool", Duration::from_secs(30), || async {
        mbx.stats().await.expect("stats").spool_messages == 0
    })
    .await;
    let got = received.lock().expect("lock").clone();
    assert_eq!(got.len(), MESSAGES, "exactly once each");
    let bodies: BTreeMap<String, ()> = got.iter().map(|(_, b)| (b.clone(), ())).collect();
    assert_eq!(
        bodies, sent,
        "every accepted body arrived intact; refused ones did not"
    );
    for (key, _) in &got {
        let key = key.as_deref().expect("Idempotency-Key header");
        assert!(key.ends_with(".to-sink"), "{key}");
    }
    let stats = mbx.stats().await.expect("stats");
    assert_eq!(stats.suspended_total, 0);
}

/// Issue 13: a POST to a disabled location is told to come back (503 with Retry-After:
/// senders retry), not that nothing is there (404: senders give up); an unknown path is
/// still 404.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_disabled_location_answers_503_and_an_unknown_path_404(pool: PgPool) {
    let mbx = MessageBox::from_pool(pool.clone());
    mbx.init(None).await.expect("init");
    mbx.receive_port_create("api", false).await.expect("port");
    for (name, path) in [("live-in", "/live"), ("paused-in", "/paused")] {
        mbx.receive_location_create(&ReceiveLocationSpec::new(
            name,
            "api",
            &format!("http://{path}"),
        ))
        .await
        .expect("location");
    }
    mbx.receive_location_set_enabled("live-in", true)
        .await
        .expect("enable");
    let http_port = free_port();
    let _host = start_host(&database_url(&pool), http_port);
    let client = reqwest::Client::new();
    let post = |path: &'static str| {
        let client = client.clone();
        async move {
            client
                .post(format!("http://127.0.0.1:{http_port}{path}"))
                .body("x")
                .send()
                .await
                .ok()
        }
    };
    wait_for(
        "the live location answers",
        Duration::from_secs(30),
        || async {
            post("/live")
                .await
                .is_some_and(|r| r.status().as_u16() == 202)
        },
    )
    .await;
    let paused = post("/paused").await.expect("an answer");
    assert_eq!(paused.status().as_u16(), 503);
    assert!(paused.headers().contains_key("retry-after"));
    assert!(paused
        .text()
        .await
        .unwrap_or_default()
        .contains("paused-in"));
    let unknown = post("/nowhere").await.expect("an answer");
    assert_eq!(unknown.status().as_u16(), 404);
}

/// What back-to-back POSTs to `url` (no token, body `x`) were answered, by status, until
/// one was answered `until`; whether every 503 carried `Retry-After`.
async fn answers_until(
    client: &reqwest::Client,
    url: &str,
    until: u16,
) -> (BTreeMap<u16, usize>, bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = BTreeMap::new();
    let mut retry_after = true;
    while std::time::Instant::now() < deadline {
        let answer = client
            .post(url)
            .body("x")
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = answer.status().as_u16();
        *seen.entry(status).or_insert(0) += 1;
        if status == 503 {
            retry_after &= answer.headers().contains_key("retry-after");
        }
        if status == until {
            return (seen, retry_after);
        }
    }
    panic!("no {until} from {url} within 30 s; answers by status: {seen:?}");
}

/// Issue 27: between a location's stop and its start again (`mbx receive-location
/// update`) its path is not mounted on the listener, and an enabled location that cannot
/// run (here its bearer token's variable is missing on the host) never mounts it: both
/// answer 503 with `Retry-After` (senders retry), never 404 (senders give up on it).
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_restarting_or_not_yet_serving_location_answers_503_never_404(pool: PgPool) {
    let mbx = MessageBox::from_pool(pool.clone());
    mbx.init(None).await.expect("init");
    mbx.receive_port_create("api", false).await.expect("port");
    for (name, path, token) in [
        ("live-in", "/live", "env:MBX_TEST_BEARER"),
        ("stuck-in", "/stuck", "env:MBX_TEST_BEARER_NOT_SET"),
    ] {
        let mut loc = ReceiveLocationSpec::new(name, "api", &format!("http://{path}"));
        loc.settings.insert("bearer_token".into(), token.into());
        mbx.receive_location_create(&loc).await.expect("location");
        mbx.receive_location_set_enabled(name, true)
            .await
            .expect("enable");
    }
    let url = database_url(&pool);
    let http_port = free_port();
    let _host = start_host(&url, http_port);
    let client = reqwest::Client::new();
    let at = |path: &str| format!("http://127.0.0.1:{http_port}{path}");
    // live-in mounted (a POST without its token: 401, nothing published)
    wait_for("the live location answers", Duration::from_secs(30), || {
        let req = client.post(at("/live")).body("x");
        async move { matches!(req.send().await, Ok(r) if r.status() == 401) }
    })
    .await;

    // enabled but not running: come back later
    let stuck = client
        .post(at("/stuck"))
        .body("x")
        .send()
        .await
        .expect("an answer");
    assert_eq!(stuck.status().as_u16(), 503);
    assert!(stuck.headers().contains_key("retry-after"));
    assert!(stuck.text().await.unwrap_or_default().contains("stuck-in"));
    let unknown = client
        .post(at("/nowhere"))
        .body("x")
        .send()
        .await
        .expect("an answer");
    assert_eq!(unknown.status().as_u16(), 404);

    // live-in is restarted without its token while POSTs keep coming: 401 until it
    // stops, 503 while it is not mounted, 202 once it runs with the new settings
    let cli = Mbx::new(url.clone());
    let update = tokio::task::spawn_blocking(move || {
        cli.ok(&[
            "receive-location",
            "update",
            "live-in",
            "--unset",
            "bearer_token",
        ])
    });
    let (seen, retry_after) = answers_until(&client, &at("/live"), 202).await;
    update.await.expect("the update ran");
    assert!(
        seen.keys().all(|s| [401, 503, 202].contains(s)),
        "answers during the restart: {seen:?}"
    );
    assert!(retry_after, "a 503 without Retry-After: {seen:?}");

    // stuck-in gets a token the host has: 503 until it runs (401 without the token)
    let cli = Mbx::new(url);
    let update = tokio::task::spawn_blocking(move || {
        cli.ok(&[
            "receive-location",
            "update",
            "stuck-in",
            "--set",
            "bearer_token=env:MBX_TEST_BEARER",
        ])
    });
    let (seen, retry_after) = answers_until(&client, &at("/stuck"), 401).await;
    update.await.expect("the update ran");
    assert!(
        seen.keys().all(|s| [503, 401].contains(s)),
        "answers while it came up: {seen:?}"
    );
    assert!(retry_after, "a 503 without Retry-After: {seen:?}");
}
