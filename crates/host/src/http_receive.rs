//! HTTP receive: every instance of a host serves the host's enabled HTTP receive
//! locations on its `--http-listen` address (a load balancer fronts the instances). One-way:
//! a POST is answered 202 only after its publish committed; 413 over the location's size
//! limit; 401 on a missing or wrong bearer token when the location has one; 503 with
//! Retry-After when the MessageBox cannot take the message (throttling will answer the same).
//! The listener is bound when the first HTTP location starts, so instances without HTTP
//! locations need no port.
//!
//! A body is read as it arrives ([`read_body`]): up to 1 MiB in memory, a larger one into
//! a file of the host's spool folder (`spool.rs`) and published from it in 1 MiB chunks,
//! as FILE receive publishes a large file; reading stops past the limit (413). An
//! `Idempotency-Key` is the message's source id, kept for the dedup window with the
//! SHA-256 of the body (hashed while it is read): the same key with the same body is a
//! duplicate (one-way: 202, not published again; two-way: 409, the request was taken
//! before), with another body 422 and nothing published.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::time::Duration;

use bytes::BytesMut;
use mbx_adapters::body::BODY_IN_MEMORY_MAX_BYTES;
use mbx_adapters::{system, InboundMessage, MessageContext};
use mbx_messagebox::replies::Reply;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::receive::{LocationSubmitter, Requested, Sent};
use crate::spool::{Spool, SpoolFile};
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
    /// Where bodies above 1 MiB are written as they arrive (made with the first listener).
    spool: std::sync::OnceLock<Spool>,
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
    if shared.http.spool.get().is_none() {
        let root = std::env::temp_dir();
        let spool = Spool::open(&root).map_err(|e| {
            format!(
                "cannot make the HTTP receive spool folder under {}: {e}; set TMPDIR to a writable folder",
                root.join(crate::spool::SPOOL_FOLDER).display()
            )
        })?;
        let _ = shared.http.spool.set(spool);
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
        (shared.instance.config().https_listen, "--https-listen")
    } else {
        (shared.instance.config().http_listen, "--http-listen")
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
    if let Some(why) = shared.throttle.receive_throttled_why() {
        return unavailable(why);
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
    let Some(spool) = shared.http.spool.get() else {
        return unavailable("the HTTP receive spool folder is not ready; retry");
    };
    let received = match read_body(
        request.into_body(),
        route.max_bytes,
        declared,
        spool,
        source_id.is_some(),
    )
    .await
    {
        Ok(r) => r,
        Err(BodyError::TooLarge) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the limit is {} bytes", route.max_bytes),
            )
        }
        Err(BodyError::Spool(e)) => {
            warn!(location = %route.location, folder = %spool.dir().display(), error = %e,
                  "HTTP receive cannot spool a request body");
            return unavailable("this instance cannot spool the body now; retry");
        }
        Err(BodyError::Broken(e)) => {
            tracing::debug!(location = %route.location, error = %e, "HTTP request body broken off");
            return plain(
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read whole: {e}"),
            );
        }
    };
    // the spool file (a body above 1 MiB) is removed when its guard `spooled` goes: after
    // the publish, or when the client leaves and this handler is dropped
    let ReceivedBody {
        body,
        spooled,
        sha256,
    } = received;
    let properties = MessageContext::new().with(system::INBOUND_TRANSPORT_LOCATION, path.clone());
    let key = source_id.clone();
    let message = InboundMessage {
        body,
        content_type,
        properties,
        promoted: MessageContext::new(),
        source_id,
        source_identity: None,
    };
    if let Some(timeout) = route.two_way {
        return request_response(&shared, &route, message, sha256, spooled, timeout).await;
    }
    match route.submitter.submit_sent(message, sha256).await {
        // a repeat of an Idempotency-Key already published with the same body is
        // accepted again, not published twice
        Ok(Sent::Taken(_)) => plain(StatusCode::ACCEPTED, "accepted".into()),
        Ok(Sent::KeyReused) => key_reused(&route, key.as_deref().unwrap_or_default()),
        Err(e) => {
            warn!(location = %route.location, error = %e, "HTTP receive could not publish");
            unavailable("the MessageBox cannot take the message now; retry")
        }
    }
}

/// 422 to a request whose `Idempotency-Key` was published with another body.
fn key_reused(route: &Route, key: &str) -> Response {
    info!(location = %route.location, key, "Idempotency-Key reused with another body: refused (422)");
    plain(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!(
            "Idempotency-Key '{key}' was used within the dedup window (24h) for a different body; a key must not be reused with a different body: send this body under a new key"
        ),
    )
}

/// A request body as it was read: in memory up to 1 MiB, else in a spool file.
struct ReceivedBody {
    body: mbx_adapters::Body,
    /// The spool file of a body above 1 MiB (removed when dropped).
    spooled: Option<SpoolFile>,
    /// The SHA-256 of the body, when it was asked for (an `Idempotency-Key` came).
    sha256: Option<[u8; 32]>,
}

/// Why a request body was not read.
enum BodyError {
    /// Over the location's limit: reading stopped there.
    TooLarge,
    /// The spool file could not be written (disk full, folder gone).
    Spool(std::io::Error),
    /// The body broke off (the client left, a malformed chunk).
    Broken(String),
}

/// The size of the writes to a spool file.
const SPOOL_WRITE_BYTES: usize = 256 * 1024;

/// Reads a request body as it arrives: up to [`BODY_IN_MEMORY_MAX_BYTES`] in memory; past
/// that, everything so far and the rest go to a new spool file, so a large body is never
/// held whole. Stops at once past `max` bytes (the partial spool file removed), and
/// hashes the body on the way when `digest`.
async fn read_body(
    mut body: Body,
    max: u64,
    declared: Option<u64>,
    spool: &Spool,
    digest: bool,
) -> Result<ReceivedBody, BodyError> {
    use hyper::body::Body as _;
    use sha2::Digest as _;
    use tokio::io::AsyncWriteExt;
    let mut hasher = digest.then(sha2::Sha256::new);
    let expected = declared.unwrap_or(0).min(BODY_IN_MEMORY_MAX_BYTES);
    let mut memory = BytesMut::with_capacity(usize::try_from(expected).unwrap_or(0));
    let mut file: Option<(SpoolFile, tokio::io::BufWriter<tokio::fs::File>)> = None;
    let mut len = 0u64;
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(BodyError::Broken(e.to_string())),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers
            },
        };
        len += data.len() as u64;
        if len > max {
            return Err(BodyError::TooLarge);
        }
        if let Some(h) = &mut hasher {
            h.update(&data);
        }
        match &mut file {
            Some((_, w)) => w.write_all(&data).await.map_err(BodyError::Spool)?,
            None if len <= BODY_IN_MEMORY_MAX_BYTES => memory.extend_from_slice(&data),
            None => {
                let (guard, f) = spool.create().await.map_err(BodyError::Spool)?;
                let mut w = tokio::io::BufWriter::with_capacity(SPOOL_WRITE_BYTES, f);
                w.write_all(&memory).await.map_err(BodyError::Spool)?;
                w.write_all(&data).await.map_err(BodyError::Spool)?;
                memory = BytesMut::new();
                file = Some((guard, w));
            }
        }
    }
    let sha256 = hasher.map(|h| h.finalize().into());
    Ok(match file {
        None => ReceivedBody {
            body: mbx_adapters::Body::Bytes(memory.freeze()),
            spooled: None,
            sha256,
        },
        Some((guard, mut w)) => {
            // written whole (and the file's last write finished) before it is read
            w.flush().await.map_err(BodyError::Spool)?;
            drop(w);
            ReceivedBody {
                body: mbx_adapters::Body::File {
                    path: guard.path().to_owned(),
                    len,
                },
                spooled: Some(guard),
                sha256,
            }
        }
    })
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
    sha256: Option<[u8; 32]>,
    spooled: Option<SpoolFile>,
    timeout: Duration,
) -> Response {
    let token = uuid::Uuid::new_v4().to_string();
    let key = message.source_id.clone().unwrap_or_default();
    // waiting before the publish commits: a reply may come at once
    let mut client = shared
        .waiting
        .register(token.clone(), &shared.instance, &shared.wake);
    let requested = route
        .submitter
        .request(message, sha256, &token, shared.instance.id())
        .await;
    // published (or not): its spool file is not needed while the client waits
    drop(spooled);
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
        Ok(Requested::Repeated) => {
            return plain(
                StatusCode::CONFLICT,
                format!(
                    "Idempotency-Key '{key}' was used within the dedup window (24h) for this request already, which was taken then; its response is not kept to be answered again: send a new key to ask again"
                ),
            )
        }
        Ok(Requested::KeyReused) => return key_reused(route, &key),
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
                .instance
                .mbx()
                .request_timed_out(message_id, shared.instance.host_id(), &detail)
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
