//! HTTP send: one request per message, on the adapter's own tasks, bounded in flight.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::StatusCode;
use tokio::sync::Semaphore;

use super::config::HttpSendConfig;
use crate::error::{ConfigError, RegistryError};
use crate::settings::Settings;
use crate::{
    report, Body, Health, OutboundMessage, Outcome, OutcomeSender, Response, SendAdapter,
    RESPONSE_BODY_MAX_BYTES,
};

/// Requests in flight at once per adapter (all ports of a host instance share it); more
/// wait for a permit on their own task, never on the caller's.
pub const HTTP_SEND_IN_FLIGHT_MAX: usize = 64;
/// Connecting gives up after this long, whatever the request timeout.
pub const HTTP_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// How much of an error response's body is kept in the error text.
pub const HTTP_ERROR_BODY_EXCERPT_MAX_BYTES: usize = 512;
/// The health check's TCP connect timeout.
pub const HTTP_HEALTH_CONNECT_TIMEOUT_MS: u64 = 5_000;

/// The header carrying `<MessageId>.<SendPortName>`, so the endpoint can drop repeats.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Ordered sends carry `mbx.Sequence` and `mbx.Epoch` so an endpoint can drop stale ones.
pub const MBX_SEQUENCE_HEADER: &str = "mbx-sequence";
pub const MBX_EPOCH_HEADER: &str = "mbx-epoch";

/// Why one HTTP send failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpSendError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("header {header}: invalid value {value:?} (control characters such as CR/LF are not allowed); nothing was sent")]
    InvalidHeader { header: String, value: String },
    #[error("no response within {}", humantime::format_duration(*.timeout))]
    Timeout { timeout: Duration },
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("request failed: {0}")]
    Transport(String),
    #[error("endpoint answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("endpoint answered {status} (redirect to {location:?}); redirects are not followed")]
    Redirect {
        status: StatusCode,
        location: String,
    },
    #[error(
        "the response body is larger than {max} bytes; the endpoint's answer cannot be published"
    )]
    ResponseTooLarge { max: usize },
    #[error("reading the response body: {0}")]
    ResponseBody(String),
}

impl HttpSendError {
    /// Connection errors, timeouts, 5xx, 408 and 429 may pass on a later attempt; a bad
    /// address or header, other 4xx and redirects will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            HttpSendError::Config(_)
            | HttpSendError::InvalidHeader { .. }
            | HttpSendError::Redirect { .. }
            | HttpSendError::ResponseTooLarge { .. } => false,
            HttpSendError::Timeout { .. }
            | HttpSendError::Connect(_)
            | HttpSendError::Transport(_)
            | HttpSendError::ResponseBody(_) => true,
            HttpSendError::Status { status, .. } => is_retryable_status(*status),
        }
    }
}

/// 5xx, 408 Request Timeout and 429 Too Many Requests.
pub fn is_retryable_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// The HTTP send adapter: one connection-pooling client shared by every port.
#[derive(Debug, Clone)]
pub struct HttpSendAdapter {
    client: reqwest::Client,
    in_flight: Arc<Semaphore>,
}

impl HttpSendAdapter {
    pub fn new() -> Result<Self, RegistryError> {
        let client = reqwest::Client::builder()
            // A redirect could lead outside a dynamic port's allowed addresses.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_millis(HTTP_CONNECT_TIMEOUT_MS))
            .build()
            .map_err(|e| RegistryError::Build {
                adapter: "HTTP",
                reason: error_chain(&e),
            })?;
        Ok(Self {
            client,
            in_flight: Arc::new(Semaphore::new(HTTP_SEND_IN_FLIGHT_MAX)),
        })
    }
}

#[async_trait]
impl SendAdapter for HttpSendAdapter {
    fn name(&self) -> &'static str {
        "HTTP"
    }

    fn validate(&self, address: &str, settings: &Settings) -> Result<(), ConfigError> {
        HttpSendConfig::parse(address, settings).map(|_| ())
    }

    fn send(&self, batch: Vec<OutboundMessage>, outcomes: OutcomeSender) {
        for message in batch {
            let client = self.client.clone();
            let in_flight = Arc::clone(&self.in_flight);
            let outcomes = outcomes.clone();
            tokio::spawn(async move {
                // The semaphore is never closed, so acquiring only fails if it were; then
                // sending without a permit is still correct, merely less bounded.
                let _permit = in_flight.acquire_owned().await.ok();
                let outcome = match send_one(&client, &message).await {
                    Ok((_, Some(response))) => {
                        tracing::debug!(delivery_id = %message.delivery_id, port = %message.port_name,
                                        status = response.status, "response received");
                        Outcome::Responded(Box::new(response))
                    }
                    result => crate::outcome_of(
                        &message,
                        "http",
                        result
                            .map(|(status, _)| format!("HTTP {}", status.as_u16()))
                            .map_err(|err| {
                                let retryable = err.is_retryable();
                                (err, retryable)
                            }),
                    ),
                };
                report(&outcomes, &message, outcome).await;
            });
        }
    }

    async fn health(&self, address: &str, settings: &Settings) -> Health {
        let config = match HttpSendConfig::parse(address, settings) {
            Ok(c) => c,
            Err(e) => return Health::unhealthy(e.to_string()),
        };
        let (Some(host), Some(port)) = (config.url.host_str(), config.url.port_or_known_default())
        else {
            return Health::unhealthy("address has no host or port");
        };
        let connect = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port));
        match tokio::time::timeout(
            Duration::from_millis(HTTP_HEALTH_CONNECT_TIMEOUT_MS),
            connect,
        )
        .await
        {
            Ok(Ok(_)) => Health::Healthy,
            Ok(Err(e)) => Health::unhealthy(format!("cannot connect to {host}:{port}: {e}")),
            Err(_) => Health::unhealthy(format!("connecting to {host}:{port} timed out")),
        }
    }
}

/// Validates everything header-bound first, so an invalid value sends nothing.
fn build_headers(
    message: &OutboundMessage,
    config: &HttpSendConfig,
) -> Result<HeaderMap, HttpSendError> {
    let mut headers = HeaderMap::new();
    let mut put = |name: HeaderName, value: &str| -> Result<(), HttpSendError> {
        let v = HeaderValue::from_str(value).map_err(|_| HttpSendError::InvalidHeader {
            header: name.to_string(),
            value: value.to_owned(),
        })?;
        headers.insert(name, v);
        Ok(())
    };
    put(
        HeaderName::from_static(IDEMPOTENCY_KEY),
        &format!("{}.{}", message.message_id, message.port_name),
    )?;
    put(CONTENT_TYPE, &message.content_type)?;
    if let Some(seq) = message.context.sequence() {
        put(HeaderName::from_static(MBX_SEQUENCE_HEADER), seq)?;
    }
    if let Some(epoch) = message.context.epoch() {
        put(HeaderName::from_static(MBX_EPOCH_HEADER), epoch)?;
    }
    for (name, property) in &config.headers {
        if let Some(value) = message.context.get(property) {
            put(name.clone(), value)?;
        }
    }
    Ok(headers)
}

/// The request body: in memory, or a large body streamed one stored chunk at a time
/// (with its length, so the endpoint sees a `Content-Length`).
fn request_body(body: &Body) -> reqwest::Body {
    match body {
        Body::Bytes(b) => reqwest::Body::from(b.clone()),
        Body::Chunks(source) => {
            let source = source.clone();
            let chunks = futures_util::stream::try_unfold(0u64, move |index| {
                let source = source.clone();
                async move {
                    match source.chunk(index).await {
                        Ok(Some(chunk)) => Ok(Some((chunk, index + 1))),
                        Ok(None) => Ok(None),
                        Err(e) => Err(std::io::Error::other(e)),
                    }
                }
            });
            reqwest::Body::wrap_stream(chunks)
        }
        Body::File { path, .. } => {
            // not what the engine hands a send adapter, but a valid body all the same
            let path = path.clone();
            let pieces = futures_util::stream::try_unfold(None, move |file| {
                let path = path.clone();
                async move {
                    use tokio::io::AsyncReadExt;
                    let mut file = match file {
                        Some(f) => f,
                        None => tokio::fs::File::open(&path).await?,
                    };
                    let mut buf = vec![0u8; 64 * 1024];
                    let n = file.read(&mut buf).await?;
                    if n == 0 {
                        return Ok(None);
                    }
                    buf.truncate(n);
                    Ok::<_, std::io::Error>(Some((bytes::Bytes::from(buf), Some(file))))
                }
            });
            reqwest::Body::wrap_stream(pieces)
        }
    }
}

/// Sends one message: the status, and on a solicit-response port the endpoint's answer
/// (a 2xx, or a 4xx with `reply_statuses=4xx`).
async fn send_one(
    client: &reqwest::Client,
    message: &OutboundMessage,
) -> Result<(StatusCode, Option<Response>), HttpSendError> {
    let config = HttpSendConfig::parse(&message.address, &message.settings)?;
    let headers = build_headers(message, &config)?;
    let response = client
        .request(config.method.as_reqwest(), config.url.clone())
        .headers(headers)
        .timeout(config.timeout)
        .body(request_body(&message.body))
        .header(reqwest::header::CONTENT_LENGTH, message.body.len())
        .send()
        .await
        .map_err(|e| classify_transport(&e, config.timeout))?;
    let status = response.status();
    let answers = status.is_success()
        || (config.reply_4xx && status.is_client_error() && !is_retryable_status(status));
    if message.solicit_response && answers {
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        let body = response_body(response).await?;
        return Ok((
            status,
            Some(Response {
                status: status.as_u16(),
                content_type,
                body,
            }),
        ));
    }
    if status.is_success() {
        return Ok((status, None));
    }
    if status.is_redirection() {
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        return Err(HttpSendError::Redirect { status, location });
    }
    let body = body_excerpt(response).await;
    Err(HttpSendError::Status { status, body })
}

/// A solicit-response answer's body, at most [`RESPONSE_BODY_MAX_BYTES`].
async fn response_body(mut response: reqwest::Response) -> Result<bytes::Bytes, HttpSendError> {
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| HttpSendError::ResponseBody(error_chain(&e)))?
    {
        if body.len() + chunk.len() > RESPONSE_BODY_MAX_BYTES {
            return Err(HttpSendError::ResponseTooLarge {
                max: RESPONSE_BODY_MAX_BYTES,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn classify_transport(e: &reqwest::Error, timeout: Duration) -> HttpSendError {
    if e.is_timeout() {
        HttpSendError::Timeout { timeout }
    } else if e.is_connect() {
        HttpSendError::Connect(error_chain(e))
    } else {
        HttpSendError::Transport(error_chain(e))
    }
}

/// The first bytes of an error response's body, for the error text (lossy UTF-8).
async fn body_excerpt(mut response: reqwest::Response) -> String {
    let mut excerpt = Vec::new();
    while excerpt.len() < HTTP_ERROR_BODY_EXCERPT_MAX_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    excerpt.truncate(HTTP_ERROR_BODY_EXCERPT_MAX_BYTES);
    let text = String::from_utf8_lossy(&excerpt);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".to_owned()
    } else {
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    }
}

/// An error and its sources, `a: b: c` (reqwest's own text hides the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
