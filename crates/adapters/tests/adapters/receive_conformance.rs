//! The receive-side conformance test every registered receive adapter passes
//! (docs/adapter-contract.md), against real endpoints (a real folder, a real loopback HTTP
//! client, the machine's RabbitMQ and Mosquitto) and an in-memory submitter (the adapter
//! is under test, not the MessageBox):
//! - while the admission hook is closed, nothing is taken in (HTTP: 503 + Retry-After);
//! - a message whose submit fails is not acknowledged as accepted: it stays at its
//!   source and comes again (HTTP: the client is told 503, not 202);
//! - once accepted, a message was submitted exactly once, with its source id, and is
//!   acknowledged to its source (FILE: the file is gone; AMQP: the queue is empty; HTTP:
//!   202).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use mbx_adapters::http::spool::Spool;
use mbx_adapters::http::{HttpExchange, HttpListener, HttpMount};
use mbx_adapters::{ReceiveLocationSpec, Registry, Scheme, Settings};
use tokio::sync::{mpsc, oneshot};

use crate::support::{file_url, run, wait_for_messages, Recorder, TEST_DEADLINE};

/// How long a closed admission is watched for intake that must not happen.
const CLOSED_FOR: Duration = Duration::from_millis(1500);

fn spec(location: &str, address: &str, settings: Settings) -> ReceiveLocationSpec {
    ReceiveLocationSpec {
        location_name: location.to_owned(),
        address: address.to_owned(),
        settings,
        instance_id: "conformance-1".into(),
        ordered: false,
        two_way: false,
    }
}

/// What every receive adapter must show once its messages are in: each accepted exactly
/// once, with `source_id` where its source has one.
fn accepted_once(recorder: &Recorder, body: &[u8], source_id: Option<&str>) {
    let accepted: Vec<_> = recorder
        .messages()
        .into_iter()
        .filter(|m| m.body.in_memory().is_some_and(|b| &b[..] == body))
        .collect();
    assert_eq!(accepted.len(), 1, "accepted exactly once: {body:?}");
    if let Some(id) = source_id {
        assert_eq!(
            accepted[0].source_id.as_deref(),
            Some(id),
            "with its source id"
        );
    }
}

/// The files (claimed or not) in `dir`.
fn files_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_file()))
        .count()
}

/// Nothing new was submitted while the admission stayed closed for [`CLOSED_FOR`].
async fn nothing_taken_while_closed(recorder: &Recorder, name: &str) {
    let before = recorder.batches().len();
    tokio::time::sleep(CLOSED_FOR).await;
    assert_eq!(
        recorder.batches().len(),
        before,
        "{name}: took a message while the admission was closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_registered_receive_adapter_honours_the_contract() {
    let listener = Arc::new(TestListener::start().await);
    let registry = Registry::new()
        .unwrap()
        .with_http_listener(listener.clone());
    for scheme in registry.receive_schemes() {
        let recorder = Recorder::new();
        recorder.set_admission(false);
        // Exhaustive on purpose: a new scheme does not compile until it has a fixture here.
        match scheme {
            Scheme::File => {
                let dir = tempfile::tempdir().unwrap();
                let settings: Settings = [
                    ("poll_interval".to_owned(), "50ms".to_owned()),
                    ("settle".to_owned(), "0s".to_owned()),
                ]
                .into();
                let adapter = registry
                    .receive_adapter(spec("file-in", &file_url(dir.path(), "*.xml"), settings))
                    .unwrap();
                let (stop, task) = run(adapter, recorder.clone());
                let file = dir.path().join("a.xml");
                std::fs::write(&file, b"<file/>").unwrap();
                nothing_taken_while_closed(&recorder, "FILE").await;
                assert!(file.exists(), "FILE: left in place while closed");
                // the submit fails: the file is not acknowledged (put back, not deleted)
                recorder.set_fail(true);
                recorder.set_admission(true);
                recorder.wait_for_batches(1).await;
                assert!(recorder.messages().is_empty());
                assert!(
                    files_in(dir.path()) > 0,
                    "FILE: not deleted after a failed submit"
                );
                recorder.set_fail(false);
                wait_for_messages(&recorder, 1).await;
                accepted_once(&recorder, b"<file/>", None);
                assert!(
                    recorder.messages()[0].source_id.is_some(),
                    "FILE submits a source id"
                );
                let deadline = std::time::Instant::now() + TEST_DEADLINE;
                while files_in(dir.path()) > 0 {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "FILE: acknowledged (deleted)"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                stop.send(()).unwrap();
                task.await.unwrap();
            }
            Scheme::Amqp | Scheme::Amqps => {
                let mut broker = crate::amqp::Broker::connect().await;
                let q = crate::amqp::unique("receive-conformance");
                broker.queue(&q, &[]).await;
                let adapter = registry
                    .receive_adapter(spec(
                        "amqp-in",
                        &crate::amqp::address(&format!("queue={q}")),
                        Settings::new(),
                    ))
                    .unwrap();
                let (stop, task) = run(adapter, recorder.clone());
                let properties = lapin::BasicProperties::default()
                    .with_message_id("amqp-1".into())
                    .with_content_type("text/plain".into());
                broker.publish(&q, b"amqp body", properties).await;
                nothing_taken_while_closed(&recorder, "AMQP").await;
                recorder.set_fail(true);
                recorder.set_admission(true);
                recorder.wait_for_batches(1).await;
                assert!(recorder.messages().is_empty());
                // not acknowledged: requeued, and taken again once the submit works
                recorder.set_fail(false);
                wait_for_messages(&recorder, 1).await;
                accepted_once(&recorder, b"amqp body", Some("amqp:amqp-1"));
                stop.send(()).unwrap();
                task.await.unwrap();
                assert_eq!(
                    broker.ready(&q).await,
                    0,
                    "AMQP: acknowledged, not requeued"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
                accepted_once(&recorder, b"amqp body", Some("amqp:amqp-1"));
                broker.cleanup().await;
            }
            Scheme::Mqtt | Scheme::Mqtts => {
                let location = format!("mqtt-in-{}", uuid::Uuid::new_v4().simple());
                let topic = crate::mqtt::unique_topic("receive-conformance");
                // open while it subscribes: a first message taken in says it is
                recorder.set_admission(true);
                let adapter = registry
                    .receive_adapter(spec(
                        &location,
                        &crate::mqtt::address(&topic),
                        Settings::new(),
                    ))
                    .unwrap();
                let (stop, task) = run(adapter, recorder.clone());
                loop {
                    crate::mqtt::publish(&topic, &[b"first".to_vec()]).await;
                    if tokio::time::timeout(
                        Duration::from_millis(500),
                        recorder.wait_for_batches(1),
                    )
                    .await
                    .is_ok()
                    {
                        break;
                    }
                }
                recorder.set_admission(false);
                // a batch already in hand may still be finished; then nothing more
                tokio::time::sleep(Duration::from_millis(200)).await;
                crate::mqtt::publish(&topic, &[b"mqtt body".to_vec()]).await;
                nothing_taken_while_closed(&recorder, "MQTT").await;
                recorder.set_fail(true);
                let failed_from = recorder.batches().len();
                recorder.set_admission(true);
                recorder.wait_for_batches(failed_from + 1).await;
                recorder.set_fail(false);
                let deadline = std::time::Instant::now() + TEST_DEADLINE;
                while !recorder
                    .messages()
                    .iter()
                    .any(|m| m.body.in_memory().is_some_and(|b| &b[..] == b"mqtt body"))
                {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "MQTT: a message whose submit failed comes again"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                accepted_once(&recorder, b"mqtt body", None);
                stop.send(()).unwrap();
                task.await.unwrap();
            }
            Scheme::Http | Scheme::Https => {
                let adapter = registry
                    .receive_adapter(spec("http-in", "http:///orders", Settings::new()))
                    .unwrap();
                let (stop, task) = run(adapter, recorder.clone());
                let client = reqwest::Client::new();
                let post = |key: &'static str, body: &'static str| {
                    client
                        .post(format!("{}/orders", listener.base))
                        .header("Idempotency-Key", key)
                        .body(body)
                        .send()
                };
                // mounted once it answers (its path is not served before)
                let deadline = std::time::Instant::now() + TEST_DEADLINE;
                let closed = loop {
                    let r = post("http-1", "http body").await.unwrap();
                    if r.status() != 404 {
                        break r;
                    }
                    assert!(std::time::Instant::now() < deadline, "HTTP: mounted");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                assert_eq!(closed.status(), 503, "HTTP: closed admission is 503");
                assert!(closed.headers().contains_key("retry-after"));
                assert!(
                    recorder.batches().is_empty(),
                    "HTTP: nothing taken while closed"
                );
                recorder.set_admission(true);
                recorder.set_fail(true);
                let failed = post("http-1", "http body").await.unwrap();
                assert_eq!(failed.status(), 503, "HTTP: a failed submit is not 202");
                assert!(recorder.messages().is_empty());
                recorder.set_fail(false);
                let taken = post("http-1", "http body").await.unwrap();
                assert_eq!(taken.status(), 202, "HTTP: 202 once accepted");
                accepted_once(&recorder, b"http body", Some("http-1"));
                stop.send(()).unwrap();
                task.await.unwrap();
            }
            other => panic!("{other:?} is listed as a receive scheme without a fixture"),
        }
    }
}

/// A loopback listener standing in for the host's: routes every request to the last
/// location mounted (one path at a time is enough here).
struct TestListener {
    base: String,
    mounted: Arc<std::sync::Mutex<Option<mpsc::Sender<HttpExchange>>>>,
    spool: Arc<Spool>,
    _root: tempfile::TempDir,
}

impl TestListener {
    async fn start() -> Self {
        let mounted: Arc<std::sync::Mutex<Option<mpsc::Sender<HttpExchange>>>> = Default::default();
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(mounted.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let root = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(root.path()).unwrap());
        Self {
            base,
            mounted,
            spool,
            _root: root,
        }
    }
}

async fn forward(
    State(mounted): State<Arc<std::sync::Mutex<Option<mpsc::Sender<HttpExchange>>>>>,
    request: Request,
) -> Response {
    let route = mounted.lock().unwrap().clone();
    let Some(route) = route else {
        return (axum::http::StatusCode::NOT_FOUND, "not mounted").into_response();
    };
    let (respond, response) = oneshot::channel();
    if route.send(HttpExchange { request, respond }).await.is_err() {
        return (axum::http::StatusCode::NOT_FOUND, "unmounted").into_response();
    }
    response.await.unwrap_or_else(|_| {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "dropped").into_response()
    })
}

#[async_trait]
impl HttpListener for TestListener {
    async fn mount(&self, _tls: bool, _path: &str, _location: &str) -> Result<HttpMount, String> {
        let (tx, rx) = mpsc::channel(16);
        *self.mounted.lock().unwrap() = Some(tx);
        Ok(HttpMount {
            requests: rx,
            spool: self.spool.clone(),
            guard: Box::new(()),
        })
    }
}
