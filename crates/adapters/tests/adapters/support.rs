//! Helpers shared by the tests: messages, outcome collection, a recording submitter and a
//! recording HTTP server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes as AxumBytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use mbx_adapters::{
    ClaimedSource, InboundMessage, MessageContext, OutboundMessage, ReceiveAdapter, SendAdapter,
    SendReport, Settings, SubmitError, Submitted, Submitter,
};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

/// A guard against a hung test, never a stand-in for a condition.
pub const TEST_DEADLINE: Duration = Duration::from_secs(20);

/// Distinct delivery ids for test messages.
static NEXT_DELIVERY_ID: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);

pub fn message(address: &str, settings: Settings, body: &str) -> OutboundMessage {
    let message_id = Uuid::new_v4();
    OutboundMessage {
        delivery_id: NEXT_DELIVERY_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        message_id,
        port_name: "out-port".to_owned(),
        address: address.to_owned(),
        settings,
        body: mbx_adapters::Body::Bytes(Bytes::from(body.to_owned())),
        content_type: "application/xml".to_owned(),
        context: MessageContext::new()
            .with(mbx_adapters::system::MESSAGE_ID, message_id.to_string()),
        fence: None,
        solicit_response: false,
    }
}

/// Sends `batch` and returns every report, once the adapter has dropped its senders.
pub async fn send_all(adapter: &dyn SendAdapter, batch: Vec<OutboundMessage>) -> Vec<SendReport> {
    let (tx, mut rx) = mpsc::channel(16);
    adapter.send(batch, tx);
    let mut reports = Vec::new();
    tokio::time::timeout(TEST_DEADLINE, async {
        while let Some(r) = rx.recv().await {
            reports.push(r);
        }
    })
    .await
    .expect("adapter reported within the test deadline");
    reports
}

/// Sends one message and returns its single outcome.
pub async fn send_one(adapter: &dyn SendAdapter, m: OutboundMessage) -> mbx_adapters::Outcome {
    let id = m.delivery_id;
    let mut reports = send_all(adapter, vec![m]).await;
    assert_eq!(reports.len(), 1, "exactly one report per message");
    let r = reports.remove(0);
    assert_eq!(r.delivery_id, id);
    r.outcome
}

pub fn assert_failed(outcome: &mbx_adapters::Outcome, want_retryable: bool) -> String {
    match outcome {
        mbx_adapters::Outcome::Failed { error, retryable } => {
            assert_eq!(*retryable, want_retryable, "retryable for error: {error}");
            error.clone()
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------
// A recording submitter

/// Code a test runs inside `submit`, i.e. while the batch's sources are claimed.
type DuringSubmit = Box<dyn Fn(&[InboundMessage]) + Send + Sync>;

/// Records submitted batches; fails while `fail` is set.
pub struct Recorder {
    pub batches: Mutex<Vec<Vec<InboundMessage>>>,
    pub fail: AtomicBool,
    during_submit: Mutex<Option<DuringSubmit>>,
    submitted: watch::Sender<usize>,
    /// Source ids accepted so far (the MessageBox's dedup, for the adapter's tests).
    sources: Mutex<std::collections::HashSet<String>>,
    /// Messages refused before the pipeline, with the reason.
    pub refused: Mutex<Vec<(InboundMessage, String)>>,
    /// Which messages "fail the pipeline" (kept as receive failures).
    pipeline_fails: Mutex<Option<PipelineFails>>,
    /// Which claimed sources `published_copies` says were published (none by default).
    published_when: Mutex<Option<PublishedWhen>>,
    /// Every source `published_copies` was asked about.
    pub asked: Mutex<Vec<ClaimedSource>>,
    /// Whether the admission hook is open (it is unless a test closes it).
    admission_open: AtomicBool,
}

type PublishedWhen = Box<dyn Fn(&ClaimedSource) -> bool + Send + Sync>;

type PipelineFails = Box<dyn Fn(&InboundMessage) -> bool + Send + Sync>;

impl Recorder {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            batches: Mutex::new(Vec::new()),
            fail: AtomicBool::new(false),
            during_submit: Mutex::new(None),
            submitted: watch::channel(0).0,
            sources: Mutex::new(std::collections::HashSet::new()),
            refused: Mutex::new(Vec::new()),
            pipeline_fails: Mutex::new(None),
            published_when: Mutex::new(None),
            asked: Mutex::new(Vec::new()),
            admission_open: AtomicBool::new(true),
        })
    }

    /// Opens or closes the admission hook ([`Submitter::admit`]).
    pub fn set_admission(&self, open: bool) {
        self.admission_open.store(open, Ordering::SeqCst);
    }

    /// Claimed sources for which `f` is true are "published from that very copy".
    pub fn set_published_when(&self, f: impl Fn(&ClaimedSource) -> bool + Send + Sync + 'static) {
        *self.published_when.lock().unwrap() = Some(Box::new(f));
    }

    /// Messages for which `f` is true are kept as receive failures, as a failing pipeline
    /// would keep them.
    pub fn set_pipeline_fails(&self, f: impl Fn(&InboundMessage) -> bool + Send + Sync + 'static) {
        *self.pipeline_fails.lock().unwrap() = Some(Box::new(f));
    }

    /// Every message submitted and accepted so far, in order.
    pub fn messages(&self) -> Vec<InboundMessage> {
        self.batches().into_iter().flatten().collect()
    }

    pub fn set_fail(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }

    pub fn set_during_submit(&self, f: impl Fn(&[InboundMessage]) + Send + Sync + 'static) {
        *self.during_submit.lock().unwrap() = Some(Box::new(f));
    }

    pub fn batches(&self) -> Vec<Vec<InboundMessage>> {
        self.batches.lock().unwrap().clone()
    }

    /// Waits until at least `n` batches were submitted (successfully or not).
    pub async fn wait_for_batches(&self, n: usize) {
        let mut rx = self.submitted.subscribe();
        tokio::time::timeout(TEST_DEADLINE, rx.wait_for(|c| *c >= n))
            .await
            .expect("batches submitted within the test deadline")
            .expect("recorder alive");
    }
}

#[async_trait]
impl Submitter for Recorder {
    async fn submit(&self, batch: Vec<InboundMessage>) -> Result<Vec<Submitted>, SubmitError> {
        if let Some(f) = self.during_submit.lock().unwrap().as_ref() {
            f(&batch);
        }
        let failing = self.fail.load(Ordering::SeqCst);
        // a source id seen in an earlier batch is a duplicate, as the MessageBox says
        let outcomes = {
            let mut seen = self.sources.lock().unwrap();
            let fails = self.pipeline_fails.lock().unwrap();
            batch
                .iter()
                .map(|m| match &m.source_id {
                    _ if fails.as_ref().is_some_and(|f| f(m)) => Submitted::ReceiveFailure,
                    Some(id) if !failing && !seen.insert(id.clone()) => Submitted::Duplicate,
                    _ => Submitted::Accepted,
                })
                .collect()
        };
        if !failing {
            self.batches.lock().unwrap().push(batch);
        }
        self.submitted.send_modify(|c| *c += 1);
        if failing {
            Err(SubmitError::new("messagebox unreachable (test)"))
        } else {
            Ok(outcomes)
        }
    }

    fn admit(&self) -> mbx_adapters::Admission {
        if self.admission_open.load(Ordering::SeqCst) {
            mbx_adapters::Admission::Open
        } else {
            mbx_adapters::Admission::Throttled {
                why: "closed by the test".to_owned(),
                retry_after: Duration::from_millis(50),
            }
        }
    }

    async fn refuse(&self, m: InboundMessage, reason: &str) -> Result<(), SubmitError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(SubmitError::new("messagebox unreachable (test)"));
        }
        self.refused.lock().unwrap().push((m, reason.to_owned()));
        Ok(())
    }

    async fn published_copies(&self, sources: &[ClaimedSource]) -> Result<Vec<bool>, SubmitError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(SubmitError::new("messagebox unreachable (test)"));
        }
        self.asked.lock().unwrap().extend(sources.iter().cloned());
        let when = self.published_when.lock().unwrap();
        Ok(sources
            .iter()
            .map(|s| when.as_ref().is_some_and(|f| f(s)))
            .collect())
    }
}

// ------------------------------------------------------------------------------------------
// A recording HTTP server

#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub path: String,
    pub headers: HeaderMap,
    pub body: AxumBytes,
}

/// An axum server on 127.0.0.1:0: `/status/{code}` answers that code after recording the
/// request; `/hang` records it and never answers.
pub struct TestServer {
    pub base: String,
    pub seen: Arc<Mutex<Vec<SeenRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Seen = Arc<Mutex<Vec<SeenRequest>>>;

async fn answer(
    State(seen): State<Seen>,
    Path(code): Path<u16>,
    headers: HeaderMap,
    body: AxumBytes,
) -> StatusCode {
    seen.lock().unwrap().push(SeenRequest {
        path: format!("/status/{code}"),
        headers,
        body,
    });
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

async fn hang(State(seen): State<Seen>, headers: HeaderMap, body: AxumBytes) -> StatusCode {
    seen.lock().unwrap().push(SeenRequest {
        path: "/hang".to_owned(),
        headers,
        body,
    });
    std::future::pending::<()>().await;
    StatusCode::OK
}

impl TestServer {
    pub async fn start() -> Self {
        let seen: Seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/status/{code}", post(answer).put(answer))
            .route("/hang", post(hang))
            .with_state(Arc::clone(&seen));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { base, seen, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests carried each Idempotency-Key.
    pub fn keys(&self) -> HashMap<String, usize> {
        let mut keys = HashMap::new();
        for r in self.seen() {
            if let Some(k) = r
                .headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
            {
                *keys.entry(k.to_owned()).or_default() += 1;
            }
        }
        keys
    }
}

/// An address where nothing listens: bind, note the port, close.
pub async fn refused_address() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/status/200")
}

pub fn file_url(dir: &std::path::Path, last: &str) -> String {
    format!("file://{}/{last}", dir.display())
}

/// Names in `dir`, sorted (hidden ones included).
pub fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Runs `adapter` until the returned sender fires (or is dropped).
pub fn run(
    adapter: Box<dyn ReceiveAdapter>,
    recorder: Arc<Recorder>,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = Box::pin(async move {
            let _ = stopped.await;
        });
        adapter.run(recorder.as_ref(), shutdown).await.unwrap();
    });
    (stop, task)
}

/// Waits until the recorder has `n` accepted messages.
pub async fn wait_for_messages(recorder: &Recorder, n: usize) {
    tokio::time::timeout(TEST_DEADLINE, async {
        loop {
            if recorder.messages().len() >= n {
                return;
            }
            recorder
                .wait_for_batches(recorder.batches().len() + 1)
                .await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} messages submitted; got {}", recorder.messages().len()));
}
