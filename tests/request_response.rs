//! Request-response through the MessageBox, with real `mbx-host` processes and
//! a real HTTP endpoint on loopback: a two-way HTTP receive publishes each request and
//! holds its client; a solicit-response port calls the endpoint and publishes the answer in
//! the transaction that completes the request; the answer reaches exactly the client that
//! asked, and subscribers too, never the port that produced it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::routing::post;
use axum::Router;
use mbx_e2e::{
    bodies_in, count, database_url, free_port, http_host_args, messagebox, serve_on_loopback,
    start_host, start_host_as, wait_for, wait_for_alive, Mbx, Reaped, FAST_HOST,
};
use sqlx::PgPool;

const CLIENTS: usize = 200;

/// The quote service: `/quote` answers `quote:<body>` (text/plain), `/slow` the same after
/// `SLOW`, `/reject` 404; counts the requests it got.
async fn quote_service() -> (u16, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let (c1, c2, c3) = (calls.clone(), calls.clone(), calls.clone());
    let app = Router::new()
        .route(
            "/quote",
            post(move |body: String| async move {
                c1.fetch_add(1, Ordering::SeqCst);
                (
                    [(header::CONTENT_TYPE, "text/plain")],
                    format!("quote:{body}"),
                )
            }),
        )
        .route(
            "/slow",
            post(move |body: String| async move {
                c2.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(SLOW).await;
                format!("late quote:{body}")
            }),
        )
        .route(
            "/reject",
            post(move || async move {
                c3.fetch_add(1, Ordering::SeqCst);
                (StatusCode::NOT_FOUND, "no such product")
            }),
        );
    (serve_on_loopback(app).await, calls)
}

const SLOW: Duration = Duration::from_secs(3);

/// POSTs `body` to a two-way location, asking again while the host has not started
/// serving it yet (connection refused, or its own 404): status, headers, body.
async fn ask(
    client: &reqwest::Client,
    address: &str,
    body: String,
) -> (StatusCode, axum::http::HeaderMap, String) {
    loop {
        match client.post(address).body(body.clone()).send().await {
            Err(e) if e.is_connect() => {}
            Err(e) => panic!("ask {address}: {e}"),
            Ok(r) => {
                let (status, headers) = (r.status(), r.headers().clone());
                let text = r.text().await.expect("answer");
                // not mounted yet: 503 saying so (404 before the host knows the location)
                let not_yet = (status == StatusCode::NOT_FOUND
                    && text.starts_with("no receive location"))
                    || (status == StatusCode::SERVICE_UNAVAILABLE
                        && text.contains("is not serving now"));
                if !not_yet {
                    return (status, headers, text);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts an `mbx-host` of host `default` serving HTTP receive: it and its HTTP port.
fn start_front(url: &str) -> (Reaped, u16) {
    let http = free_port();
    let args = http_host_args(http, free_port());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (start_host(url, &args), http)
}

/// No client waits any more and no reply waits for one.
async fn nothing_waits(pool: &PgPool) {
    for table in [
        "subscriptions WHERE kind = 'instance'",
        "instance_deliveries",
    ] {
        assert_eq!(
            count(pool, &format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn each_client_gets_its_own_answer_and_responses_never_loop(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let (service, calls) = quote_service().await;
    let out = tempfile::tempdir().unwrap();
    mbx_e2e::two_way(&cli, "quotes", "quote", "30s");
    // its filter would match its own responses too: they must not come back to it
    cli.ok(&[
        "send-port",
        "create",
        "quote-svc",
        "--start",
        "--solicit-response",
        "--address",
        &format!("http://127.0.0.1:{service}/quote"),
        "--filter",
        "mbx.ReceivePortName == \"quotes\" or mbx.SendPortName == \"quote-svc\"",
        "--set",
        "copy_properties=mbx.ReceiveLocationName",
    ]);
    // responses are routed to subscribers as well
    cli.ok(&[
        "send-port",
        "create",
        "answers",
        "--start",
        "--address",
        &format!("file://{}/%MessageID%.txt", out.path().display()),
        "--filter",
        "mbx.SendPortName == \"quote-svc\" and http.StatusCode == 200",
    ]);
    cli.ok(&[
        "send-port",
        "create",
        "kept",
        "--address",
        "null://",
        "--filter",
        "mbx.IsSolicitResponse == true",
    ]);
    let (_host, http) = start_front(&url);
    wait_for_alive(&mbx, 1).await;

    let client = reqwest::Client::new();
    let mut asks = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let (client, address) = (client.clone(), format!("http://127.0.0.1:{http}/quote"));
        asks.spawn(async move {
            let (status, headers, body) = ask(&client, &address, format!("item-{i}")).await;
            let content_type = headers[header::CONTENT_TYPE].to_str().unwrap().to_owned();
            (i, status, content_type, body)
        });
    }
    while let Some(asked) = asks.join_next().await {
        let (i, status, content_type, body) = asked.unwrap();
        assert_eq!(status, StatusCode::OK, "client {i}: {body}");
        assert_eq!(
            body,
            format!("quote:item-{i}"),
            "client {i} got another's answer"
        );
        assert_eq!(content_type, "text/plain");
    }
    wait_for(
        "every response at the subscriber",
        Duration::from_secs(60),
        || async { bodies_in(out.path(), "txt").len() == CLIENTS },
    )
    .await;
    wait_for(
        "the MessageBox to drain",
        Duration::from_secs(30),
        || async {
            count(
                &pool,
                "SELECT count(*) FROM deliveries d JOIN send_ports p ON p.id = d.port_id
              WHERE p.name <> 'kept'",
            )
            .await
                == 0
        },
    )
    .await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        CLIENTS,
        "a response was sent back to its port"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM suspended_items").await,
        0
    );
    nothing_waits(&pool).await;

    // the response's context is exactly what a response carries (one kept by a stopped port)
    let ctx: serde_json::Value = sqlx::query_scalar(
        "SELECT m.context FROM messages m JOIN deliveries d ON d.message_id = m.id
           JOIN send_ports p ON p.id = d.port_id WHERE p.name = 'kept' LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let mut names: Vec<&str> = ctx
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "http.StatusCode",
            "mbx.ContentType",
            "mbx.CorrelationToken",
            "mbx.IsSolicitResponse",
            "mbx.ReceiveLocationName",
            "mbx.SendPortName"
        ]
    );
    assert_eq!(
        ctx["mbx.ReceiveLocationName"]["value"]["string"],
        "quotes-http"
    );
    assert_eq!(ctx["http.StatusCode"]["value"]["integer"], 200);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_client_waits_its_timeout_and_a_late_answer_is_suspended_with_the_reason(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let (service, _) = quote_service().await;
    mbx_e2e::two_way(&cli, "slow", "slow", "1s");
    cli.ok(&[
        "send-port",
        "create",
        "slow-svc",
        "--start",
        "--solicit-response",
        "--address",
        &format!("http://127.0.0.1:{service}/slow"),
        "--filter",
        "mbx.ReceivePortName == \"slow\"",
    ]);
    let (_host, http) = start_front(&url);
    wait_for_alive(&mbx, 1).await;
    let client = reqwest::Client::new();
    let address = format!("http://127.0.0.1:{http}/slow");
    let (status, headers, text) = ask(&client, &address, "x".into()).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{text}");
    let request = headers["mbx-message-id"].to_str().unwrap().to_owned();
    assert!(text.contains(&format!("mbx track {request}")), "{text}");
    // the request stays traceable
    let track = cli.ok(&["track", &request]);
    assert!(track.contains("request-timed-out"), "{track}");
    // the answer comes after its client left: suspended, saying why
    wait_for(
        "the late answer suspended",
        Duration::from_secs(30),
        || async {
            count(
                &pool,
                "SELECT count(*) FROM suspended_items WHERE kind = 'routing-failure'
                AND reason LIKE '%no client waits for its correlation token%'",
            )
            .await
                == 1
        },
    )
    .await;
    nothing_waits(&pool).await;
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_rejected_request_answers_502_unless_the_port_replies_with_4xx(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let (service, _) = quote_service().await;
    mbx_e2e::two_way(&cli, "strict", "strict", "20s");
    mbx_e2e::two_way(&cli, "lenient", "lenient", "20s");
    let reject = format!("http://127.0.0.1:{service}/reject");
    cli.ok(&[
        "send-port",
        "create",
        "strict-svc",
        "--start",
        "--solicit-response",
        "--address",
        &reject,
        "--filter",
        "mbx.ReceivePortName == \"strict\"",
    ]);
    cli.ok(&[
        "send-port",
        "create",
        "lenient-svc",
        "--start",
        "--solicit-response",
        "--address",
        &reject,
        "--filter",
        "mbx.ReceivePortName == \"lenient\"",
        "--set",
        "reply_statuses=4xx",
    ]);
    // a two-way port nothing subscribes to: no reply can come, the client is not held
    mbx_e2e::two_way(&cli, "nowhere", "nowhere", "20s");
    // a dynamic solicit-response port: the address comes from the request
    mbx_e2e::two_way(&cli, "anywhere", "anywhere", "20s");
    cli.ok(&[
        "receive-location",
        "update",
        "anywhere-http",
        "--pipeline",
        "json",
        "--promote",
        "mbx.OutboundTransportLocation=/to",
    ]);
    cli.ok(&[
        "send-port",
        "create",
        "dyn-svc",
        "--start",
        "--solicit-response",
        "--dynamic",
        "--allow-address",
        &format!("http://127.0.0.1:{service}/"),
        "--filter",
        "mbx.ReceivePortName == \"anywhere\"",
    ]);
    let (_host, http) = start_front(&url);
    wait_for_alive(&mbx, 1).await;
    let client = reqwest::Client::new();
    let asks = |path: &str, body: String| {
        let (client, address) = (client.clone(), format!("http://127.0.0.1:{http}/{path}"));
        async move {
            let (status, _, text) = ask(&client, &address, body).await;
            (status, text)
        }
    };
    let asked = std::time::Instant::now();
    let (status, body) = asks("nowhere", "x".into()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("no send port subscribes"), "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "held until its timeout"
    );
    let (status, body) = asks("strict", "x".into()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body.contains("strict-svc") && body.contains("404"),
        "{body}"
    );
    let (status, body) = asks("lenient", "x".into()).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_FOUND, "no such product")
    );
    let to = format!("http://127.0.0.1:{service}/quote");
    let (status, body) = asks("anywhere", format!("{{\"to\":\"{to}\"}}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, format!("quote:{{\"to\":\"{to}\"}}"));
    // the strict port's request is suspended as it would be without a waiting client
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM suspended_items WHERE kind = 'failed-final'"
        )
        .await,
        1
    );
}

/// kill -9 of the instance running the solicit-response port (not the one holding the
/// clients) in the middle of 200 exchanges, a replacement started at once: every client
/// gets its own answer within its timeout (the dead instance's claims come back after the
/// dead timeout and are sent again; a response it had not committed is published by the
/// replacement), none hangs, none gets another's, and nothing is left waiting or lost.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn kill_9_of_the_responding_instance_leaves_no_client_without_its_answer(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    // a service that takes its time, so that requests are in flight when the kill lands
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let service = serve_on_loopback(Router::new().route(
        "/quote",
        post(move |body: String| async move {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            (
                [(header::CONTENT_TYPE, "text/plain")],
                format!("quote:{body}"),
            )
        }),
    ))
    .await;
    cli.ok(&["host", "create", "back"]);
    // the clients wait longer than a takeover takes (the dead timeout, 10 s, and a resend)
    mbx_e2e::two_way(&cli, "quotes", "quote", "45s");
    cli.ok(&[
        "send-port",
        "create",
        "quote-svc",
        "--start",
        "--solicit-response",
        "--host",
        "back",
        "--address",
        &format!("http://127.0.0.1:{service}/quote"),
        "--filter",
        "mbx.ReceivePortName == \"quotes\"",
    ]);
    let (_front, http) = start_front(&url);
    let mut victim = start_host_as(&url, "back", FAST_HOST);
    wait_for_alive(&mbx, 2).await;

    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let mut asks = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let (client, address) = (client.clone(), format!("http://127.0.0.1:{http}/quote"));
        asks.spawn(async move {
            let (status, _, body) = ask(&client, &address, format!("item-{i}")).await;
            (i, status, body)
        });
    }
    wait_for(
        "requests in flight at the service",
        Duration::from_secs(30),
        || async { calls.load(Ordering::SeqCst) >= CLIENTS / 4 },
    )
    .await;
    victim.0.kill().expect("SIGKILL");
    let _replacement = start_host_as(&url, "back", FAST_HOST);
    let mut answered = 0;
    while let Some(asked) = asks.join_next().await {
        let (i, status, body) = asked.unwrap();
        assert_eq!(status, StatusCode::OK, "client {i}: {body}");
        assert_eq!(
            body,
            format!("quote:item-{i}"),
            "client {i} got another's answer"
        );
        answered += 1;
    }
    assert_eq!(answered, CLIENTS);
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "a client was held past its timeout"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM suspended_items").await,
        0
    );

    nothing_waits(&pool).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM deliveries").await, 0);
    // the kill landed mid-run: the victim's claims were taken back and sent again (with
    // the same Idempotency-Key)
    assert!(
        count(
            &pool,
            "SELECT count(*) FROM tracking_events WHERE event = 'reclaimed'"
        )
        .await
            > 0,
        "the kill must land while the victim held requests"
    );
    assert!(calls.load(Ordering::SeqCst) >= CLIENTS);
}
