//! An HTTP endpoint for ordered-delivery tests: records every request with its
//! `mbx-sequence` / `mbx-epoch` headers and arrival/answer times, takes ~5 ms, answers
//! 200, and counts requests in progress at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;

use crate::serve_on_loopback;

/// One request as the endpoint saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub body: String,
    pub sequence: Option<i64>,
    pub epoch: Option<i64>,
    pub arrived: Instant,
    pub answered: Instant,
}

/// What the endpoint has seen.
#[derive(Default)]
pub struct Sink {
    pub requests: Mutex<Vec<Request>>,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

impl Sink {
    /// The requests so far, in order of arrival.
    pub fn by_arrival(&self) -> Vec<Request> {
        let mut r = self.requests.lock().expect("sink lock").clone();
        r.sort_by_key(|r| r.arrived);
        r
    }

    /// Whether a request with an epoch newer than `epoch` arrived (a takeover).
    pub fn sent_after_epoch(&self, epoch: i64) -> bool {
        self.requests
            .lock()
            .expect("sink lock")
            .iter()
            .any(|r| r.epoch.is_some_and(|e| e > epoch))
    }

    /// How many distinct bodies arrived.
    pub fn distinct(&self) -> usize {
        let r = self.requests.lock().expect("sink lock");
        r.iter()
            .map(|r| &r.body)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    }
}

/// Message N of an ordered run: body "message N", `Seq.N` = N promoted (what
/// [`check_in_order`] expects).
pub fn numbered(n: usize) -> mbx_messagebox::publish::NewMessage {
    let mut ctx = mbx_messagebox::Context::new();
    ctx.promote("Seq.N", mbx_messagebox::Value::Integer(n as i64))
        .expect("promote");
    mbx_messagebox::publish::NewMessage::new(format!("message {n}"), "text/plain", ctx)
}

/// The checker of an ordered run of `published` messages "message 0" … "message N-1":
/// nothing lost or unexpected, first arrivals in publication order. Returns the number of
/// duplicate requests (re-sends after a takeover).
pub fn check_in_order(requests: &[Request], published: usize) -> usize {
    let mut first: Vec<&str> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for r in requests {
        if seen.insert(r.body.as_str()) {
            first.push(&r.body);
        }
    }
    let expected: Vec<String> = (0..published).map(|n| format!("message {n}")).collect();
    assert_eq!(
        first, expected,
        "lost = 0, unexpected = 0, first arrivals in publication order"
    );
    requests.len() - published
}

/// Serves the endpoint at `http://127.0.0.1:<port>/sink`; returns the port.
pub async fn start_sink() -> (u16, Arc<Sink>) {
    let sink = Arc::new(Sink::default());
    let s = sink.clone();
    let app = Router::new().route(
        "/sink",
        post(move |headers: HeaderMap, body: String| {
            let s = s.clone();
            async move {
                let arrived = Instant::now();
                let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                s.max_in_flight.fetch_max(now, Ordering::SeqCst);
                let number = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i64>().ok())
                };
                let (sequence, epoch) = (number("mbx-sequence"), number("mbx-epoch"));
                tokio::time::sleep(Duration::from_millis(5)).await;
                s.in_flight.fetch_sub(1, Ordering::SeqCst);
                s.requests.lock().expect("sink lock").push(Request {
                    body,
                    sequence,
                    epoch,
                    arrived,
                    answered: Instant::now(),
                });
                "ok"
            }
        }),
    );
    (serve_on_loopback(app).await, sink)
}

/// A started ordered HTTP port `name` (filter `exists(Seq.N)`) sending to a new sink.
pub async fn ordered_http_port(mbx: &mbx_messagebox::MessageBox, name: &str) -> Arc<Sink> {
    use mbx_messagebox::config::{InitialState, SendPortSpec};
    let (sink_port, sink) = start_sink().await;
    let mut spec = SendPortSpec::new(name, &format!("http://127.0.0.1:{sink_port}/sink"))
        .with_filter("exists(Seq.N)")
        .with_state(InitialState::Started);
    spec.ordered = true;
    mbx.send_port_create(&spec)
        .await
        .expect("ordered send port");
    sink
}
