//! The HTTP adapter. Send side: POST or PUT to `http(s)://host/path` with an
//! `Idempotency-Key: <MessageId>.<SendPortName>` header, a timeout, and outcome
//! classification (connection errors, timeouts, 5xx, 408, 429 retryable; other 4xx and
//! redirects not). Receive side ([`receive`]): a location's path mounted on the host's
//! shared listener ([`HttpListener`]), its requests answered through the [`crate::Submitter`];
//! [`config::HttpReceiveConfig`] checks its addresses (`http:///orders`) and settings.

pub mod config;
pub mod receive;
pub mod send;
pub mod spool;

pub use config::{HttpMethod, HttpReceiveConfig, HttpSendConfig};
pub use receive::{HttpExchange, HttpListener, HttpMount, HttpReceiveAdapter};
pub use send::{HttpSendAdapter, HttpSendError};
