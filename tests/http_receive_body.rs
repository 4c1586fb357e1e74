//! Issue 26: an HTTP receive body above 1 MiB is streamed — written to the host's spool
//! folder as it arrives, published from there in 1 MiB chunks, and the file removed — so
//! it is never held whole; over the limit reading stops (413) and a client that leaves
//! mid-body leaves nothing behind. An `Idempotency-Key` reused with another body is
//! answered 422 and publishes nothing. Through a real `mbx-host` whose `TMPDIR` is the
//! test's own folder, so its spool files can be watched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::header;
use axum::routing::post;
use axum::Router;
use mbx_e2e::{
    count, database_url, free_port, messagebox, serve_on_loopback, start_host_with_env, wait_for,
    Mbx, Reaped,
};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::receive::ReceiveLocationSpec;
use mbx_messagebox::MessageBox;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;

/// The test body: `len` bytes of a pattern that repeats only every 251 bytes, `salt`
/// changing every byte.
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_add(salt))
        .collect()
}

/// A host serving HTTP receive on a free port, its temporary folder (and so its spool)
/// under `tmp`.
fn start_front(url: &str, tmp: &Path) -> (Reaped, u16) {
    let http = free_port();
    let listen = format!("127.0.0.1:{http}");
    let host = start_host_with_env(
        url,
        &["--poll-interval", "200ms", "--http-listen", &listen],
        &[("TMPDIR", tmp.to_str().expect("utf-8 path"))],
    );
    (host, http)
}

/// Waits until `path` is served (a GET is told to POST: 405, not 404).
async fn wait_served(http: u16, path: &str) {
    let client = reqwest::Client::new();
    let address = format!("http://127.0.0.1:{http}{path}");
    wait_for(
        &format!("HTTP receive of {path}"),
        Duration::from_secs(30),
        || {
            let req = client.get(&address);
            async move { matches!(req.send().await, Ok(r) if r.status() == 405) }
        },
    )
    .await;
}

/// The spooled bodies under `tmp` (files `*.part` of the spool folder) and their sizes.
fn spooled(tmp: &Path) -> Vec<(PathBuf, u64)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "part") {
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                out.push((path, len));
            }
        }
    }
    let mut out = Vec::new();
    walk(tmp, &mut out);
    out
}

/// Waits until one body of at least `min` bytes is being spooled under `tmp`.
async fn wait_spooling(tmp: &Path, min: u64) {
    wait_for(
        &format!("a spool file of at least {min} bytes"),
        Duration::from_secs(30),
        || async { spooled(tmp).iter().any(|(_, len)| *len >= min) },
    )
    .await;
}

/// A POST whose body goes in chunks (`Transfer-Encoding: chunked`, no length given), on
/// a connection of its own, sent piece by piece.
struct ChunkedPost(TcpStream);

impl ChunkedPost {
    async fn start(http: u16, path: &str, key: Option<&str>) -> Self {
        let mut stream = TcpStream::connect(("127.0.0.1", http))
            .await
            .expect("connect");
        let key = key
            .map(|k| format!("Idempotency-Key: {k}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n{key}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        Self(stream)
    }

    /// Sends `data` in chunks of 64 KiB.
    async fn send(&mut self, data: &[u8]) {
        for piece in data.chunks(64 * 1024) {
            let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
            chunk.extend_from_slice(piece);
            chunk.extend_from_slice(b"\r\n");
            self.0.write_all(&chunk).await.expect("chunk");
        }
    }

    /// Ends the body (unless `ended` already) and reads the answer: status and text.
    async fn answer(mut self, end: bool) -> (u16, String) {
        if end {
            self.0.write_all(b"0\r\n\r\n").await.expect("last chunk");
        }
        let mut raw = Vec::new();
        self.0.read_to_end(&mut raw).await.expect("answer");
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
        (status, text)
    }
}

/// A one-way receive port `api` with location `api-in` at `http:///orders`, at most
/// `max` bytes, and a FILE send port (stopped: it keeps what it gets) to `out`.
async fn one_way(mbx: &MessageBox, max: u64, out: &Path) {
    mbx.receive_port_create("api", false).await.expect("port");
    let mut loc = ReceiveLocationSpec::new("api-in", "api", "http:///orders");
    loc.max_message_size = max;
    mbx.receive_location_create(&loc).await.expect("location");
    mbx.receive_location_set_enabled("api-in", true)
        .await
        .expect("enable");
    mbx.send_port_create(
        &SendPortSpec::new(
            "to-files",
            &format!("file://{}/%MessageID%.bin", out.display()),
        )
        .with_filter("mbx.ReceivePortName == 'api'")
        .with_state(InitialState::Stopped),
    )
    .await
    .expect("send port");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_large_post_is_spooled_as_it_arrives_stored_in_chunks_and_delivered_intact(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (tmp, out) = (dir.path().join("tmp"), dir.path().join("out"));
    std::fs::create_dir_all(&tmp).expect("tmp");
    std::fs::create_dir_all(&out).expect("out");
    one_way(&mbx, 10_000_000, &out).await;
    let (_host, http) = start_front(&database_url(&pool), &tmp);
    wait_served(http, "/orders").await;

    let body = pattern(3 * MIB + 123, 7);
    let mut post = ChunkedPost::start(http, "/orders", None).await;
    post.send(&body[..2 * MIB]).await;
    // on disk while it arrives, not in memory; nothing published before it is whole
    wait_spooling(&tmp, MIB as u64).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM messages").await, 0);
    post.send(&body[2 * MIB..]).await;
    let (status, text) = post.answer(true).await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(spooled(&tmp), vec![], "the spool file goes once published");

    let (chunked, size): (bool, i64) = sqlx::query_as("SELECT chunked, body_size FROM messages")
        .fetch_one(&pool)
        .await
        .expect("the message");
    assert!(chunked, "stored in chunks");
    assert_eq!(size, body.len() as i64);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM message_chunks").await,
        4,
        "3 MiB + 123 bytes in 1 MiB chunks"
    );
    mbx.send_port_start("to-files").await.expect("start");
    wait_for("the delivered file", Duration::from_secs(30), || async {
        mbx.stats().await.expect("stats").spool_messages == 0
    })
    .await;
    let files: Vec<_> = std::fs::read_dir(&out)
        .expect("out")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        std::fs::read(&files[0]).expect("read") == body,
        "delivered byte for byte"
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_streamed_post_over_the_limit_or_broken_off_leaves_nothing(pool: PgPool) {
    const LIMIT: usize = 2_000_000;
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (tmp, out) = (dir.path().join("tmp"), dir.path().join("out"));
    std::fs::create_dir_all(&tmp).expect("tmp");
    std::fs::create_dir_all(&out).expect("out");
    one_way(&mbx, LIMIT as u64, &out).await;
    let (_host, http) = start_front(&database_url(&pool), &tmp);
    wait_served(http, "/orders").await;

    // over the limit, with no length declared: refused at the first byte past it
    let body = pattern(LIMIT + 1, 3);
    let mut post = ChunkedPost::start(http, "/orders", None).await;
    post.send(&body[..3 * MIB / 2]).await;
    wait_spooling(&tmp, MIB as u64).await;
    post.send(&body[3 * MIB / 2..LIMIT]).await;
    // the last byte alone, so everything sent has been read when the answer comes
    post.send(&body[LIMIT..]).await;
    let (status, text) = post.answer(false).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("the limit is 2000000 bytes"), "{text}");
    assert_eq!(spooled(&tmp), vec![], "the partial spool file is removed");

    // a client that leaves mid-body
    let mut post = ChunkedPost::start(http, "/orders", None).await;
    post.send(&body[..3 * MIB / 2]).await;
    wait_spooling(&tmp, MIB as u64).await;
    drop(post);
    wait_for(
        "the spool file of the broken-off body to go",
        Duration::from_secs(30),
        || async { spooled(&tmp).is_empty() },
    )
    .await;

    for table in [
        "messages",
        "message_chunks",
        "suspended_items",
        "deliveries",
    ] {
        assert_eq!(
            count(&pool, &format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table}: nothing half-stored"
        );
    }
    // the location still takes a whole body
    let mut post = ChunkedPost::start(http, "/orders", None).await;
    post.send(&body[..LIMIT]).await;
    let (status, text) = post.answer(true).await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(count(&pool, "SELECT count(*) FROM messages").await, 1);
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_idempotency_key_reused_with_another_body_is_refused_422(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (tmp, out) = (dir.path().join("tmp"), dir.path().join("out"));
    std::fs::create_dir_all(&tmp).expect("tmp");
    std::fs::create_dir_all(&out).expect("out");
    one_way(&mbx, 10_000_000, &out).await;
    let (_host, http) = start_front(&database_url(&pool), &tmp);
    wait_served(http, "/orders").await;
    let client = reqwest::Client::new();
    let post = |key: &'static str, body: Vec<u8>| {
        let req = client
            .post(format!("http://127.0.0.1:{http}/orders"))
            .header("idempotency-key", key)
            .body(body);
        async move {
            let r = req.send().await.expect("post");
            (r.status().as_u16(), r.text().await.expect("answer"))
        }
    };

    // in memory: the same body again is a duplicate (202, not published twice)
    assert_eq!(post("order-1", b"{\"n\":1}".to_vec()).await.0, 202);
    assert_eq!(post("order-1", b"{\"n\":1}".to_vec()).await.0, 202);
    let (status, text) = post("order-1", b"{\"n\":2}".to_vec()).await;
    assert_eq!(status, 422, "{text}");
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    assert!(
        text.contains("'order-1'") && text.contains("must not be reused with a different body"),
        "{text}"
    );
    // streamed through the spool: hashed as it arrives
    let big = pattern(2 * MIB + 5, 1);
    let mut other = big.clone();
    if let Some(last) = other.last_mut() {
        *last ^= 0xff;
    }
    assert_eq!(post("order-2", big.clone()).await.0, 202);
    assert_eq!(post("order-2", big).await.0, 202);
    let (status, text) = post("order-2", other.clone()).await;
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("'order-2'"), "{text}");
    // a new key takes it
    assert_eq!(post("order-3", other).await.0, 202);

    assert_eq!(
        count(&pool, "SELECT count(*) FROM messages").await,
        3,
        "order-1, order-2 and order-3 once each; the refused bodies not at all"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM tracking_events WHERE event = 'duplicate-dropped'"
        )
        .await,
        2,
        "the two duplicates are tracked"
    );
    assert_eq!(spooled(&tmp), vec![]);
}

/// A two-way location: the first request with a key is answered; the same key with the
/// same body is answered 409 (the request was taken; its response is not kept, and asking
/// the service again would break the key's promise); with another body 422.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_two_way_request_repeated_under_its_key_is_not_asked_again(pool: PgPool) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let service = serve_on_loopback(Router::new().route(
        "/quote",
        post(move |body: String| async move {
            c.fetch_add(1, Ordering::SeqCst);
            (
                [(header::CONTENT_TYPE, "text/plain")],
                format!("quote:{body}"),
            )
        }),
    ))
    .await;
    mbx_e2e::two_way(&cli, "quotes", "quote", "30s");
    mbx_e2e::quote_port(&cli, service);
    let dir = tempfile::tempdir().expect("tempdir");
    let (_host, http) = start_front(&url, dir.path());
    wait_served(http, "/quote").await;
    let client = reqwest::Client::new();
    let ask = |key: &'static str, body: &'static str| {
        let req = client
            .post(format!("http://127.0.0.1:{http}/quote"))
            .header("idempotency-key", key)
            .body(body);
        async move {
            let r = req.send().await.expect("post");
            (r.status().as_u16(), r.text().await.expect("answer"))
        }
    };

    assert_eq!(ask("q-1", "widget").await, (200, "quote:widget".to_owned()));
    let (status, text) = ask("q-1", "widget").await;
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("'q-1'") && text.contains("new key"), "{text}");
    let (status, text) = ask("q-1", "gadget").await;
    assert_eq!(status, 422, "{text}");
    assert!(
        text.contains("must not be reused with a different body"),
        "{text}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the service was asked once"
    );
    // nobody is left waiting for the refused ones
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM subscriptions WHERE kind = 'instance'"
        )
        .await,
        0
    );
    // without a key each request is a new one
    let (status, _) = {
        let r = client
            .post(format!("http://127.0.0.1:{http}/quote"))
            .body("widget")
            .send()
            .await
            .expect("post");
        (r.status().as_u16(), ())
    };
    assert_eq!(status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A `json` location reads a spooled body whole for its pipeline (as FILE does) and
/// promotes from it; the message is stored in chunks all the same.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_large_json_post_is_promoted_from_its_spooled_body(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (tmp, out) = (dir.path().join("tmp"), dir.path().join("out"));
    std::fs::create_dir_all(&tmp).expect("tmp");
    std::fs::create_dir_all(&out).expect("out");
    mbx.receive_port_create("api", false).await.expect("port");
    let mut loc = ReceiveLocationSpec::new("api-in", "api", "http:///orders");
    loc.pipeline = "json".into();
    loc.promote.insert("Order.Id".into(), "/id".into());
    mbx.receive_location_create(&loc).await.expect("location");
    mbx.receive_location_set_enabled("api-in", true)
        .await
        .expect("enable");
    mbx.send_port_create(
        &SendPortSpec::new(
            "order-7",
            &format!("file://{}/%MessageID%.json", out.display()),
        )
        .with_filter("Order.Id == '7'")
        .with_state(InitialState::Started),
    )
    .await
    .expect("send port");
    let (_host, http) = start_front(&database_url(&pool), &tmp);
    wait_served(http, "/orders").await;

    let body = format!("{{\"id\": \"7\", \"pad\": \"{}\"}}", "x".repeat(3 * MIB));
    let mut post = ChunkedPost::start(http, "/orders", None).await;
    post.send(&body.as_bytes()[..2 * MIB]).await;
    wait_spooling(&tmp, MIB as u64).await;
    post.send(&body.as_bytes()[2 * MIB..]).await;
    let (status, text) = post.answer(true).await;
    assert_eq!(status, 202, "{text}");
    wait_for("the delivered file", Duration::from_secs(30), || async {
        std::fs::read_dir(&out).expect("out").count() == 1
            && mbx.stats().await.expect("stats").spool_messages == 0
    })
    .await;
    let file = std::fs::read_dir(&out)
        .expect("out")
        .flatten()
        .next()
        .expect("a file")
        .path();
    assert!(
        std::fs::read(&file).expect("read") == body.as_bytes(),
        "routed on the promoted Order.Id and delivered byte for byte"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM suspended_items").await,
        0
    );
    assert_eq!(spooled(&tmp), vec![]);
}
