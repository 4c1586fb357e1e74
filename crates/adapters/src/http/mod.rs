//! The HTTP adapter, send side: POST or PUT to `http(s)://host/path` with an
//! `Idempotency-Key: <MessageId>.<SendPortName>` header, a timeout, and outcome
//! classification (connection errors, timeouts, 5xx, 408, 429 retryable; other 4xx and
//! redirects not).
//!
//! HTTP receive is served by the host's own listener (`--http-listen`), not by an adapter
//! task; [`config::HttpReceiveConfig`] checks its addresses (`http:///orders`) and settings.

pub mod config;
pub mod send;

pub use config::{HttpMethod, HttpReceiveConfig, HttpSendConfig};
pub use send::{HttpSendAdapter, HttpSendError};
