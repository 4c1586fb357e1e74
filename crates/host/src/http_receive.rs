//! HTTP receive: every instance of a host serves the host's enabled HTTP receive
//! locations on its `--http-listen` address (a load balancer fronts the instances). One-way:
//! a POST is answered 202 only after its publish committed; 413 over the location's size
//! limit; 401 on a missing or wrong bearer token when the location has one; 503 with
//! Retry-After when the MessageBox cannot take the message (throttling will answer the same).
//! The listener is bound when the first HTTP location starts, so instances without HTTP
//! locations need no port.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::time::Duration;

use mbx_adapters::{system, InboundMessage, MessageContext, Submitter};
use mbx_messagebox::replies::Reply;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::receive::{LocationSubmitter, Requested};
use crate::Shared;

/// Seconds a client is told to wait before retrying a 503.
pub const RETRY_AFTER_S: u64 = 1;

/// Longest accepted `Idempotency-Key`, used as the source id for deduplication.
pub const IDEMPOTENCY_KEY_MAX_BYTES: usize = 200;

/// One served location.
pub(crate) struct Route {
    pub location: String,
    pub max_bytes: u64,
    /// The expected bearer token, resolved from an `env:`/`file:` reference.
    pub token: Option<String>,
    /// A two-way location: how long a client is held for its reply.
    pub two_way: Option<Duration>,
    pub submitter: Arc<LocationSubmitter>,
}

/// The routes of this instance's HTTP receive locations, by listener and path: an
/// `https:///…` location is served only by the TLS listener, an `http:///…` one only by
/// the plain one.
#[derive(Default)]
pub(crate) struct HttpReceive {
    routes: RwLock<HashMap<(bool, String), Arc<Route>>>,
    /// Whether the plain and the TLS listener are bound.
    listening: Mutex<(bool, bool)>,
    /// The host's disabled HTTP locations by (listener, path): name.
    disabled: RwLock<HashMap<(bool, String), String>>,
}

/// The path an HTTP receive address serves: `http:///orders` → `/orders`.
pub(crate) fn path_of(address: &str) -> Option<String> {
    let rest = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))?;
    let slash = rest.find('/')?;
    let path = &rest[slash..];
    (path.len() > 1).then(|| path.to_owned())
}

impl HttpReceive {
    pub fn add(&self, tls: bool, path: String, route: Route) {
        if let Ok(mut routes) = self.routes.write() {
            routes.insert((tls, path), Arc::new(route));
        }
    }

    pub fn remove(&self, tls: bool, path: &str) {
        if let Ok(mut routes) = self.routes.write() {
            routes.remove(&(tls, path.to_owned()));
        }
    }

    fn route(&self, tls: bool, path: &str) -> Option<Arc<Route>> {
        self.routes
            .read()
            .ok()?
            .get(&(tls, path.to_owned()))
            .cloned()
    }

    /// Replaces the set of the host's disabled HTTP locations (the supervisor's view).
    pub fn set_disabled(&self, disabled: HashMap<(bool, String), String>) {
        if let Ok(mut d) = self.disabled.write() {
            *d = disabled;
        }
    }

    fn disabled(&self, tls: bool, path: &str) -> Option<String> {
        self.disabled
            .read()
            .ok()?
            .get(&(tls, path.to_owned()))
            .cloned()
    }
}

/// Binds the plain (`--http-listen`) or the TLS (`--https-listen`) listener once; the
/// reason when it cannot serve now (no TLS configured, the address taken).
pub(crate) async fn ensure_listener(shared: &Arc<Shared>, tls: bool) -> Result<(), String> {
    let mut listening = shared.http.listening.lock().await;
    let bound = if tls {
        &mut listening.1
    } else {
        &mut listening.0
    };
    if *bound {
        return Ok(());
    }
    let acceptor = match (tls, &shared.tls) {
        (false, _) => None,
        (true, Some(acceptor)) => Some(acceptor.clone()),
        (true, None) => {
            return Err(
                "this instance has no TLS: start mbx-host with --tls-cert and --tls-key to serve https:/// locations (never served in clear)"
                    .to_owned(),
            )
        }
    };
    let (addr, flag) = if tls {
        (shared.config.https_listen, "--https-listen")
    } else {
        (shared.config.http_listen, "--http-listen")
    };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => {
            info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), tls, "HTTP receive listener ready");
            let app = Router::new()
                .fallback(handle)
                .with_state((shared.clone(), tls));
            let cap = crate::http_server::connection_cap(crate::http_server::current_fd_limit());
            tokio::spawn(crate::http_server::serve(listener, app, cap, acceptor));
            *bound = true;
            Ok(())
        }
        Err(e) => Err(format!(
            "cannot bind {flag} {addr}: {e}; give each instance on a machine its own address"
        )),
    }
}

fn plain(status: StatusCode, text: String) -> Response {
    (status, format!("{text}\n")).into_response()
}

fn bearer_ok(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn handle(State((shared, tls)): State<(Arc<Shared>, bool)>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let Some(route) = shared.http.route(tls, &path) else {
        if let Some(location) = shared.http.disabled(tls, &path) {
            return unavailable(&format!(
                "receive location '{location}' is disabled; retry later"
            ));
        }
        return plain(
            StatusCode::NOT_FOUND,
            format!("no receive location serves {path}"),
        );
    };
    if request.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use POST".into());
    }
    if let Some(token) = &route.token {
        if !bearer_ok(request.headers(), token) {
            return plain(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token".into(),
            );
        }
    }
    if shared.throttle.publish_throttled() {
        return unavailable(
            "publish throttle on: the backlog of this host is past its threshold; retry",
        );
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > route.max_bytes) {
        return plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the limit is {} bytes", route.max_bytes),
        );
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let source_id = match request.headers().get("idempotency-key").map(|v| v.to_str()) {
        Some(Ok(k)) if !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_MAX_BYTES => Some(k.to_owned()),
        Some(_) => {
            return plain(
                StatusCode::BAD_REQUEST,
                format!(
                "Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX_BYTES} visible ASCII characters"
            ),
            )
        }
        None => None,
    };
    let limit = usize::try_from(route.max_bytes).unwrap_or(usize::MAX);
    let body = match axum::body::to_bytes(Body::new(request.into_body()), limit).await {
        Ok(b) => b,
        Err(_) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the limit is {} bytes", route.max_bytes),
            )
        }
    };
    let properties = MessageContext::new().with(system::INBOUND_TRANSPORT_LOCATION, path.clone());
    let message = InboundMessage {
        body: mbx_adapters::Body::Bytes(body),
        content_type,
        properties,
        promoted: MessageContext::new(),
        source_id,
        source_identity: None,
    };
    if let Some(timeout) = route.two_way {
        return request_response(&shared, &route, message, timeout).await;
    }
    match route.submitter.submit(vec![message]).await {
        // a repeat of an Idempotency-Key already published is accepted again, not twice
        Ok(_) => plain(StatusCode::ACCEPTED, "accepted".into()),
        Err(e) => {
            warn!(location = %route.location, error = %e, "HTTP receive could not publish");
            unavailable("the MessageBox cannot take the message now; retry")
        }
    }
}

/// 503 with Retry-After.
fn unavailable(why: &str) -> Response {
    let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, why.to_owned());
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
    r
}

/// A two-way receive: publishes the request with a fresh correlation token and holds the
/// client until the first message carrying that token arrives (its status from
/// `http.StatusCode`, 200 without one; its content type and body), or `timeout` passes
/// (504: the request stays in the MessageBox, traceable by its id).
async fn request_response(
    shared: &Arc<Shared>,
    route: &Route,
    message: InboundMessage,
    timeout: Duration,
) -> Response {
    let token = uuid::Uuid::new_v4().to_string();
    // waiting before the publish commits: a reply may come at once
    let mut client = shared.waiting.register(token.clone(), shared.clone());
    let requested = route
        .submitter
        .request(message, &token, shared.instance_id())
        .await;
    let message_id = match requested {
        Ok(Requested::Published(id)) => id,
        Ok(Requested::Unrouted(id, suspended)) => {
            return plain(
                StatusCode::BAD_GATEWAY,
                format!(
                    "no send port subscribes to the request (message {id}); kept as suspended item {suspended} (routing-failure): `mbx suspended resume {suspended}` once a port subscribes"
                ),
            )
        }
        Ok(Requested::Failed(reason)) => {
            return plain(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("not published (kept as a receive failure): {reason}"),
            )
        }
        Err(e) => {
            warn!(location = %route.location, error = %e, "HTTP receive could not publish");
            return unavailable("the MessageBox cannot take the message now; retry");
        }
    };
    match client.reply(timeout).await {
        Some(reply) => answer(reply),
        None => {
            metrics::counter!("mbx_request_timeouts_total", "location" => route.location.clone())
                .increment(1);
            let detail = format!(
                "two-way receive location '{}' answered its client 504: no response within {}",
                route.location,
                humantime::format_duration(timeout)
            );
            if let Err(e) = shared
                .mbx
                .request_timed_out(message_id, shared.host_id, &detail)
                .await
            {
                warn!(%message_id, error = %e, "cannot record a request's timeout");
            }
            let mut r = plain(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "no response within {}; the request is message {message_id} (`mbx track {message_id}`)",
                    humantime::format_duration(timeout)
                ),
            );
            if let Ok(v) = HeaderValue::from_str(&message_id.to_string()) {
                r.headers_mut().insert("mbx-message-id", v);
            }
            r
        }
    }
}

/// The HTTP answer a reply makes.
fn answer(reply: Reply) -> Response {
    let status = reply
        .context
        .get(crate::solicit::STATUS_CODE)
        .and_then(|p| p.value.to_plain_string().parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut r = (status, reply.body).into_response();
    if let Ok(v) = HeaderValue::from_str(&reply.content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&reply.message_id.to_string()) {
        r.headers_mut().insert("mbx-message-id", v);
    }
    r
}
