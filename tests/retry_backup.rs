//! A failing endpoint, through two real `mbx-host` processes: the send port retries its
//! primary HTTP address at the configured interval, moves to the backup address, retries
//! that, then suspends the message `failed` with every attempt's error; once the endpoint
//! recovers, `mbx suspended resume` delivers it exactly once, with its idempotency key.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use mbx_e2e::{
    database_url, messagebox, start_host, wait_for, wait_for_alive, wait_for_empty_spool, Mbx,
};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::publish::{NewMessage, Published, Publisher};
use mbx_messagebox::suspended::{Kind, Selector};
use mbx_messagebox::{Context, Value};
use sqlx::PgPool;

const PORT: &str = "partner";
const BODY: &str = r#"{"orderId":7}"#;

/// One request an endpoint answered.
#[derive(Debug, Clone)]
struct Hit {
    at: Instant,
    idempotency_key: Option<String>,
    /// `X-Retry`: the port maps `mbx.RetryCount` and `mbx.RetryInterval` into it.
    retry: Option<String>,
    body: Vec<u8>,
    status: u16,
}

/// An HTTP endpoint on loopback that answers every request with a settable status and
/// records what it got. It runs on its own thread, so its timestamps do not depend on what
/// the test's runtime is doing.
#[derive(Clone)]
struct Endpoint {
    url: String,
    status: Arc<AtomicU16>,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Endpoint {
    fn start(status: u16) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let endpoint = Endpoint {
            url: format!("http://{}/orders", listener.local_addr().expect("addr")),
            status: Arc::new(AtomicU16::new(status)),
            hits: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(endpoint.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                axum::serve(listener, app).await.expect("serve");
            });
        });
        endpoint
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().expect("hits").clone()
    }
}

async fn answer(
    State(ep): State<Endpoint>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let status = ep.status.load(Ordering::SeqCst);
    ep.hits.lock().expect("hits").push(Hit {
        at: Instant::now(),
        idempotency_key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        retry: ["x-retry-count", "x-retry-interval"]
            .iter()
            .map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join("/")),
        body: body.to_vec(),
        status,
    });
    StatusCode::from_u16(status).expect("status")
}

/// The retry interval of both transports: long enough that 10% of it (400 ms) is well
/// above the time one failed attempt takes to be sent, answered and recorded, even on a
/// loaded machine (seen: a few ms to ~20 ms).
const RETRY_INTERVAL: Duration = Duration::from_secs(4);

/// `mbx-host` flags with a poll interval longer than the retry interval: a retry can then
/// only be sent on time if the delivery loop wakes at its due time, not on its poll.
const SLOW_POLL_HOST: &[&str] = &["--poll-interval", "10s", "--admin-listen", "127.0.0.1:0"];

/// Every gap between consecutive attempts, measured at the endpoint by arrival time, is
/// within 10% of the retry interval (a retry is sent at its due time).
fn assert_spaced(what: &str, hits: &[Hit]) {
    let gaps: Vec<Duration> = hits.windows(2).map(|w| w[1].at - w[0].at).collect();
    eprintln!("{what} attempts {} apart by {gaps:?}", hits.len());
    let (low, high) = (RETRY_INTERVAL.mul_f64(0.9), RETRY_INTERVAL.mul_f64(1.1));
    for gap in gaps {
        assert!(
            gap >= low && gap <= high,
            "{what} attempts are spaced by the {RETRY_INTERVAL:?} retry interval ± 10%, got {gap:?}"
        );
    }
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_failing_endpoint_retries_goes_to_backup_suspends_and_resumes(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let (primary, backup) = (Endpoint::start(503), Endpoint::start(503));
    let _hosts = [
        start_host(&url, SLOW_POLL_HOST),
        start_host(&url, SLOW_POLL_HOST),
    ];
    wait_for_alive(&mbx, 2).await;

    let mut spec = SendPortSpec::new(PORT, &primary.url)
        .with_filter("exists(Order.Id)")
        .with_state(InitialState::Started);
    spec.retry_count = 2;
    spec.retry_interval_s = RETRY_INTERVAL.as_secs() as i64;
    spec.backup_address = Some(backup.url.clone());
    spec.backup_retry_count = 1;
    spec.backup_retry_interval_s = RETRY_INTERVAL.as_secs() as i64;
    mbx.send_port_create(&spec).await.expect("send port");

    let mut ctx = Context::new();
    ctx.promote("Order.Id", Value::Integer(7)).expect("promote");
    let published = mbx
        .publish(
            &Publisher::default(),
            vec![NewMessage::new(BODY.as_bytes(), "application/json", ctx)],
        )
        .await
        .expect("publish");
    let Published::Routed { message_id, .. } = published[0] else {
        panic!("the message is routed to the port: {published:?}");
    };

    // primary: 1 attempt + 2 retries; backup: 1 attempt + 1 retry; then suspended
    let failed = Selector {
        port: Some(PORT.into()),
        kind: Some(Kind::Failed),
        ..Selector::default()
    };
    wait_for(
        "the message to be suspended",
        Duration::from_secs(60),
        || async { !mbx.suspended_list(&failed).await.expect("list").is_empty() },
    )
    .await;
    let (p, b) = (primary.hits(), backup.hits());
    assert_eq!(p.len(), 3, "primary attempts: {p:?}");
    assert_eq!(b.len(), 2, "backup attempts: {b:?}");
    assert_spaced("primary", &p);
    assert_spaced("backup", &b);
    assert!(
        p.last().expect("primary hit").at <= b[0].at,
        "the backup is tried only after the primary's retries"
    );

    let items = mbx.suspended_list(&failed).await.expect("list");
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(items[0].resumable);
    assert_eq!(items[0].message_id, message_id);
    let detail = mbx.suspended_show(items[0].id).await.expect("show");
    let attempts = &detail.attempts;
    assert_eq!(
        attempts.len(),
        5,
        "every attempt's error is kept: {attempts:?}"
    );
    let on = |t: &str| attempts.iter().filter(|a| a.transport == t).count();
    assert_eq!((on("primary"), on("backup")), (3, 2), "{attempts:?}");
    assert!(
        attempts.iter().all(|a| a.error.contains("503")),
        "each error names the status: {attempts:?}"
    );

    // the endpoint recovers; the operator resumes with the real CLI
    primary.status.store(200, Ordering::SeqCst);
    let id = items[0].id.to_string();
    let cli = Mbx::new(url.clone());
    let out = tokio::task::spawn_blocking(move || cli.ok(&["suspended", "resume", &id]))
        .await
        .expect("join");
    assert!(out.contains("resumed 1"), "{out}");
    wait_for_empty_spool(&mbx, Duration::from_secs(30)).await;
    let stats = mbx.stats().await.expect("stats");
    let port = stats.ports.iter().find(|s| s.name == PORT).expect("port");
    assert_eq!(
        (port.backlog, port.retrying, port.in_flight, port.suspended),
        (0, 0, 0, 0),
        "{port:?}"
    );

    let (p, b) = (primary.hits(), backup.hits());
    assert_eq!(
        p.len(),
        4,
        "the primary got the message exactly once more: {p:?}"
    );
    assert_eq!(b.len(), 2, "the backup got nothing more: {b:?}");
    assert_eq!(p[3].status, 200);
    let key = format!("{message_id}.{PORT}");
    for hit in p.iter().chain(&b) {
        assert_eq!(
            hit.idempotency_key.as_deref(),
            Some(key.as_str()),
            "{hit:?}"
        );
        assert_eq!(hit.body, BODY.as_bytes(), "{hit:?}");
    }
}

/// The context an adapter sees carries the attempt's `mbx.RetryCount` and
/// `mbx.RetryInterval` (the seconds the next retry waits if this attempt fails, the
/// backoff applied), so an endpoint or a header can show them.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_attempt_carries_its_retry_count_and_interval(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let endpoint = Endpoint::start(503);
    let _host = start_host(&url, mbx_e2e::FAST_HOST);
    let mut spec = SendPortSpec::new(PORT, &endpoint.url)
        .with_filter("exists(Order.Id)")
        .with_state(InitialState::Started);
    spec.retry_count = 2;
    spec.retry_interval_s = 1;
    spec.retry_backoff = mbx_messagebox::config::Backoff::Exponential;
    spec.retry_max_interval_s = 60;
    spec.settings
        .insert("header.X-Retry-Count".into(), "mbx.RetryCount".into());
    spec.settings
        .insert("header.X-Retry-Interval".into(), "mbx.RetryInterval".into());
    mbx.send_port_create(&spec).await.expect("send port");
    let mut ctx = Context::new();
    ctx.promote("Order.Id", Value::Integer(8)).expect("promote");
    mbx.publish(
        &Publisher::default(),
        vec![NewMessage::new(BODY.as_bytes(), "application/json", ctx)],
    )
    .await
    .expect("publish");
    wait_for("three attempts", Duration::from_secs(60), || async {
        endpoint.hits().len() >= 3
    })
    .await;
    let seen: Vec<Option<String>> = endpoint.hits().into_iter().map(|h| h.retry).collect();
    assert_eq!(
        seen,
        [Some("0/1".into()), Some("1/2".into()), Some("2/4".into())],
        "count/interval of each attempt"
    );
}
