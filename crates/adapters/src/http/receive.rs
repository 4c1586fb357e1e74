//! The HTTP adapter, receive side. An HTTP receive location is served on its host
//! instance's shared listener (`--http-listen`, `--https-listen` for `https:///…`): the
//! host owns the sockets, TLS and the connection limits, and implements [`HttpListener`];
//! the location's adapter mounts its path there for as long as it runs and answers each
//! request through the [`Submitter`], like every receive adapter:
//!
//! - the admission hook first ([`Submitter::admit`]): not open → 503 with `Retry-After`,
//!   before the body is read;
//! - one-way: 202 only after the publish committed ([`Submitted::Accepted`] or
//!   `Duplicate`); 413 over the location's size limit; 401 on a missing or wrong bearer
//!   token when the location has one; 503 with `Retry-After` when the submit fails;
//! - two-way: [`Submitter::request`] publishes the request and waits for its answer,
//!   which becomes the response (504 when none came in time).
//!
//! A body is read as it arrives ([`read_body`]): up to 1 MiB in memory, a larger one into
//! a file of the host's spool folder ([`super::spool`]) and published from it in 1 MiB
//! chunks, as FILE receive publishes a large file; reading stops past the limit (413). An
//! `Idempotency-Key` is the message's source id, kept for the dedup window with the
//! SHA-256 of the body (hashed while it is read): the same key with the same body is a
//! duplicate (one-way: 202, not published again; two-way: 409, the request was taken
//! before), with another body 422 and nothing published.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body as HttpBody;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::config::HttpReceiveConfig;
use super::spool::{Spool, SpoolFile};
use crate::body::BODY_IN_MEMORY_MAX_BYTES;
use crate::error::ConfigError;
use crate::{
    system, Admission, Health, InboundMessage, MessageContext, ReceiveAdapter, ReceiveError,
    ReceiveLocationSpec, Reply, Requested, ShutdownSignal, Submitted, Submitter,
};

/// Seconds a client is told to wait before retrying a 503, unless the admission hook
/// says otherwise.
pub const RETRY_AFTER_S: u64 = 1;

/// Longest accepted `Idempotency-Key`, used as the source id for deduplication.
pub const IDEMPOTENCY_KEY_MAX_BYTES: usize = 200;

/// How often a location whose listener cannot serve now (its address taken) asks again.
const MOUNT_RETRY: Duration = Duration::from_secs(1);

/// One request to a mounted path, and where its response goes. A dropped `respond` (the
/// location stopped before answering) is answered 503 by the listener.
pub struct HttpExchange {
    pub request: Request,
    pub respond: oneshot::Sender<Response>,
}

/// A path mounted on the host's listener: its requests arrive on `requests` until this
/// is dropped (then the path is served no more).
pub struct HttpMount {
    pub requests: mpsc::Receiver<HttpExchange>,
    /// Where bodies above 1 MiB are written as they arrive (one folder per process).
    pub spool: Arc<Spool>,
    /// Unmounts the path when dropped.
    pub guard: Box<dyn Send + Sync>,
}

/// The host's shared HTTP receive listeners, as an HTTP receive location sees them.
#[async_trait]
pub trait HttpListener: Send + Sync {
    /// Serves `path` on the TLS (`tls`) or the plain listener, binding it first if no
    /// location did yet; `Err` says why it cannot now (no TLS configured, the address
    /// taken, the path served by another location).
    async fn mount(&self, tls: bool, path: &str, location: &str) -> Result<HttpMount, String>;
}

/// The receive adapter of one HTTP receive location.
pub struct HttpReceiveAdapter {
    location: String,
    tls: bool,
    path: String,
    max_bytes: u64,
    /// The expected bearer token, resolved from an `env:`/`file:` reference now (never
    /// stored).
    token: Option<String>,
    /// A two-way location: how long a client is held for its answer.
    two_way: Option<Duration>,
    listener: Arc<dyn HttpListener>,
}

impl HttpReceiveAdapter {
    /// Checks the location as `mbx` checked it at creation (a row written otherwise is
    /// refused here too) and resolves its bearer token.
    pub fn new(
        spec: ReceiveLocationSpec,
        listener: Arc<dyn HttpListener>,
    ) -> Result<Self, ConfigError> {
        let mut settings = spec.settings.clone();
        // a location's max_message_size is its --max-message-size (given by the host)
        let max_bytes = settings
            .remove("max_message_size")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        let config = HttpReceiveConfig::parse(&spec.address, &settings)?;
        let token = config
            .bearer_token
            .map(|r| r.resolve("bearer_token"))
            .transpose()
            .map_err(|problem| ConfigError::Secret { problem })?;
        Ok(Self {
            location: spec.location_name,
            tls: config.tls,
            path: config.path,
            max_bytes,
            token,
            two_way: spec.two_way.then_some(config.timeout),
            listener,
        })
    }
}

#[async_trait]
impl ReceiveAdapter for HttpReceiveAdapter {
    fn name(&self) -> &'static str {
        "HTTP"
    }

    /// Mounts the path (asking again every second while the listener cannot serve, the
    /// reason reported as the location's problem), then answers its requests until
    /// `shutdown`; requests in progress are finished, those not started get 503.
    async fn run(
        &self,
        submitter: &dyn Submitter,
        mut shutdown: ShutdownSignal,
    ) -> Result<(), ReceiveError> {
        let mut mount = loop {
            match self
                .listener
                .mount(self.tls, &self.path, &self.location)
                .await
            {
                Ok(m) => break m,
                Err(why) => {
                    submitter.problem(Some(&why)).await;
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = tokio::time::sleep(MOUNT_RETRY) => {}
                    }
                }
            }
        };
        submitter.problem(None).await;
        let mut in_progress = FuturesUnordered::new();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                exchange = mount.requests.recv() => match exchange {
                    Some(HttpExchange { request, respond }) => {
                        let spool = mount.spool.clone();
                        in_progress.push(async move {
                            let response = self.answer(request, &spool, submitter).await;
                            // the client may have left: nothing to answer
                            let _ = respond.send(response);
                        });
                    }
                    None => break,
                },
                Some(()) = in_progress.next(), if !in_progress.is_empty() => {}
            }
        }
        // served no more (requests queued but not started are answered 503 by the
        // listener); those in progress finish
        drop(mount);
        while in_progress.next().await.is_some() {}
        Ok(())
    }

    async fn health(&self) -> Health {
        Health::Healthy
    }
}

fn plain(status: StatusCode, text: String) -> Response {
    (status, format!("{text}\n")).into_response()
}

/// 503 with Retry-After.
pub fn unavailable(why: &str, retry_after: Duration) -> Response {
    let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, why.to_owned());
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(retry_after.as_secs().max(1)),
    );
    r
}

fn retry_soon(why: &str) -> Response {
    unavailable(why, Duration::from_secs(RETRY_AFTER_S))
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

impl HttpReceiveAdapter {
    /// The response to one request.
    async fn answer(
        &self,
        request: Request,
        spool: &Arc<Spool>,
        submitter: &dyn Submitter,
    ) -> Response {
        let head = match self.check_head(&request, submitter) {
            Ok(head) => head,
            Err(refused) => return *refused,
        };
        let path = request.uri().path().to_owned();
        let received = match self.read(request, spool, &head).await {
            Ok(received) => received,
            Err(refused) => return refused,
        };
        // the spool file (a body above 1 MiB) is removed when its guard `spooled` goes:
        // after the publish, or when the client leaves and this answer is dropped
        let ReceivedBody {
            body,
            spooled,
            sha256,
        } = received;
        let Head {
            content_type,
            source_id,
            ..
        } = head;
        let key = source_id.clone().unwrap_or_default();
        let message = InboundMessage {
            body,
            content_type,
            properties: MessageContext::new().with(system::INBOUND_TRANSPORT_LOCATION, path),
            promoted: MessageContext::new(),
            source_id,
            source_identity: None,
            body_sha256: sha256,
        };
        if let Some(timeout) = self.two_way {
            let requested = submitter.request(message, timeout).await;
            drop(spooled);
            return self.two_way_answer(requested, &key, timeout);
        }
        let submitted = submitter.submit(vec![message]).await;
        drop(spooled);
        self.one_way_answer(submitted, &key)
    }

    /// What the request's line and headers say, before its body is read; or why it is
    /// refused (boxed: a response is large) (not POST, no or a wrong bearer token, not admitted now, too large, a bad
    /// `Idempotency-Key`).
    fn check_head(
        &self,
        request: &Request,
        submitter: &dyn Submitter,
    ) -> Result<Head, Box<Response>> {
        if request.method() != Method::POST {
            return Err(plain(StatusCode::METHOD_NOT_ALLOWED, "use POST".into()).into());
        }
        if let Some(token) = &self.token {
            if !bearer_ok(request.headers(), token) {
                return Err(plain(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong bearer token".into(),
                )
                .into());
            }
        }
        if let Admission::Throttled { why, retry_after } = submitter.admit() {
            return Err(unavailable(&why, retry_after).into());
        }
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_bytes) {
            return Err(self.too_large().into());
        }
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        let source_id = match request.headers().get("idempotency-key").map(|v| v.to_str()) {
            Some(Ok(k)) if !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_MAX_BYTES => {
                Some(k.to_owned())
            }
            Some(_) => {
                return Err(plain(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX_BYTES} visible ASCII characters"
                    ),
                )
                .into())
            }
            None => None,
        };
        Ok(Head {
            declared,
            content_type,
            source_id,
        })
    }

    /// Reads the request's body, or answers why it could not be.
    async fn read(
        &self,
        request: Request,
        spool: &Arc<Spool>,
        head: &Head,
    ) -> Result<ReceivedBody, Response> {
        // read on a task of its own (hashing and spooling a large body take CPU), while
        // this location's other requests go on
        let reading = tokio::spawn(read_body(
            request.into_body(),
            self.max_bytes,
            head.declared,
            spool.clone(),
            head.source_id.is_some(),
        ));
        match reading.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(BodyError::TooLarge)) => Err(self.too_large()),
            Ok(Err(BodyError::Spool(e))) => {
                warn!(location = %self.location, folder = %spool.dir().display(), error = %e,
                      "HTTP receive cannot spool a request body");
                Err(retry_soon("this instance cannot spool the body now; retry"))
            }
            Ok(Err(BodyError::Broken(e))) => {
                tracing::debug!(location = %self.location, error = %e, "HTTP request body broken off");
                Err(plain(
                    StatusCode::BAD_REQUEST,
                    format!("the request body could not be read whole: {e}"),
                ))
            }
            Err(e) => {
                warn!(location = %self.location, error = %e, "reading an HTTP request body failed");
                Err(retry_soon("the body could not be read; retry"))
            }
        }
    }

    /// The response to a one-way request once the submit returned.
    fn one_way_answer(
        &self,
        submitted: Result<Vec<Submitted>, crate::SubmitError>,
        key: &str,
    ) -> Response {
        match submitted.map(|mut s| s.pop()) {
            // a repeat of an Idempotency-Key already published with the same body is
            // accepted again, not published twice; so is one kept as a receive failure
            Ok(Some(Submitted::Accepted | Submitted::Duplicate | Submitted::ReceiveFailure)) => {
                plain(StatusCode::ACCEPTED, "accepted".into())
            }
            Ok(Some(Submitted::SourceReused)) => self.key_reused(key),
            Ok(None) => {
                warn!(location = %self.location, "HTTP receive: the submitter gave no outcome");
                retry_soon("the MessageBox cannot take the message now; retry")
            }
            Err(e) => {
                warn!(location = %self.location, error = %e, "HTTP receive could not publish");
                retry_soon("the MessageBox cannot take the message now; retry")
            }
        }
    }

    fn too_large(&self) -> Response {
        plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the limit is {} bytes", self.max_bytes),
        )
    }

    /// 422 to a request whose `Idempotency-Key` was published with another body.
    fn key_reused(&self, key: &str) -> Response {
        info!(location = %self.location, key, "Idempotency-Key reused with another body: refused (422)");
        plain(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "Idempotency-Key '{key}' was used within the dedup window (24h) for a different body; a key must not be reused with a different body: send this body under a new key"
            ),
        )
    }

    /// The response to a two-way request.
    fn two_way_answer(
        &self,
        requested: Result<Requested, crate::SubmitError>,
        key: &str,
        timeout: Duration,
    ) -> Response {
        match requested {
            Ok(Requested::Answered(reply)) => answer(reply),
            Ok(Requested::TimedOut { message_id }) => {
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
            Ok(Requested::Unrouted {
                message_id,
                suspended_id,
            }) => plain(
                StatusCode::BAD_GATEWAY,
                format!(
                    "no send port subscribes to the request (message {message_id}); kept as suspended item {suspended_id} (routing-failure): `mbx suspended resume {suspended_id}` once a port subscribes"
                ),
            ),
            Ok(Requested::Repeated) => plain(
                StatusCode::CONFLICT,
                format!(
                    "Idempotency-Key '{key}' was used within the dedup window (24h) for this request already, which was taken then; its response is not kept to be answered again: send a new key to ask again"
                ),
            ),
            Ok(Requested::SourceReused) => self.key_reused(key),
            Ok(Requested::Failed(reason)) => plain(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("not published (kept as a receive failure): {reason}"),
            ),
            Err(e) => {
                warn!(location = %self.location, error = %e, "HTTP receive could not publish");
                retry_soon("the MessageBox cannot take the message now; retry")
            }
        }
    }
}

/// The HTTP answer a reply makes: its `http.StatusCode` (200 without one), content type
/// and body.
fn answer(reply: Reply) -> Response {
    let status = reply
        .status
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

/// What a request's headers say that the answer needs.
struct Head {
    /// `Content-Length`, when given.
    declared: Option<u64>,
    content_type: String,
    /// The `Idempotency-Key`: the message's source id.
    source_id: Option<String>,
}

/// A request body as it was read: in memory up to 1 MiB, else in a spool file.
struct ReceivedBody {
    body: crate::Body,
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
    body: HttpBody,
    max: u64,
    declared: Option<u64>,
    spool: Arc<Spool>,
    digest: bool,
) -> Result<ReceivedBody, BodyError> {
    use sha2::Digest as _;
    use tokio::io::AsyncWriteExt;
    let mut hasher = digest.then(sha2::Sha256::new);
    let expected = declared.unwrap_or(0).min(BODY_IN_MEMORY_MAX_BYTES);
    let mut memory = BytesMut::with_capacity(usize::try_from(expected).unwrap_or(0));
    let mut file: Option<(SpoolFile, tokio::io::BufWriter<tokio::fs::File>)> = None;
    let mut len = 0u64;
    let mut frames = body.into_data_stream();
    while let Some(data) = frames.next().await {
        let data = data.map_err(|e| BodyError::Broken(e.to_string()))?;
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
            body: crate::Body::Bytes(memory.freeze()),
            spooled: None,
            sha256,
        },
        Some((guard, mut w)) => {
            // written whole (and the file's last write finished) before it is read
            w.flush().await.map_err(BodyError::Spool)?;
            drop(w);
            ReceivedBody {
                body: crate::Body::File {
                    path: guard.path().to_owned(),
                    len,
                },
                spooled: Some(guard),
                sha256,
            }
        }
    })
}
