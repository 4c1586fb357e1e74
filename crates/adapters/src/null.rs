//! The NULL send adapter (`null:<anything>`, e.g. `null://discard`): confirms every message
//! and keeps nothing — a sink that costs no I/O. It exists for `mbx bench`, which
//! measures the engine (publish → route → claim → hand-off → complete) rather than an
//! endpoint, and for draining a port whose messages are no longer wanted. The hand-off is
//! still measured by the host (`mbx_delivery_latency_seconds`).
//!
//! `--set delay=5ms` makes it an endpoint that takes time, as real ones do: each message
//! is confirmed `delay` after it was handed over. An unordered batch is taken at once (an
//! endpoint with no limit on concurrent requests); on an ordered port one message after
//! the other, each taking `delay` (as an endpoint answering in order).

use std::time::Duration;

use async_trait::async_trait;

use crate::error::ConfigError;
use crate::settings::{self, Settings};
use crate::{report, Health, OutboundMessage, OutcomeSender, SendAdapter};

/// The NULL adapter's settings.
pub const NULL_SEND_SETTINGS: &[&str] = &["delay"];
/// The longest `delay`.
const DELAY_MAX: Duration = Duration::from_secs(60);

fn delay(settings: &Settings) -> Result<Duration, ConfigError> {
    settings::get_duration(settings, "delay", Duration::ZERO, Duration::ZERO, DELAY_MAX)
}

#[derive(Debug, Default)]
pub struct NullSendAdapter;

impl NullSendAdapter {
    pub fn new() -> Self {
        Self
    }
}

#[async_trait]
impl SendAdapter for NullSendAdapter {
    fn name(&self) -> &'static str {
        "NULL"
    }

    fn validate(&self, _address: &str, settings: &Settings) -> Result<(), ConfigError> {
        settings::check_known("NULL", settings, NULL_SEND_SETTINGS)?;
        delay(settings)?;
        Ok(())
    }

    fn send(&self, batch: Vec<OutboundMessage>, outcomes: OutcomeSender) {
        tokio::spawn(async move {
            // checked at creation; a port's settings are the same for its whole batch
            let wait = batch
                .first()
                .and_then(|m| delay(&m.settings).ok())
                .unwrap_or_default();
            let in_order = batch.first().is_some_and(|m| m.fence.is_some());
            if !wait.is_zero() && !in_order {
                tokio::time::sleep(wait).await;
            }
            for message in &batch {
                if !wait.is_zero() && in_order {
                    tokio::time::sleep(wait).await;
                }
                report(&outcomes, message, crate::Outcome::Delivered).await;
            }
        });
    }

    async fn health(&self, _address: &str, _settings: &Settings) -> Health {
        Health::Healthy
    }
}
