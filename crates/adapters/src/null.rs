//! The NULL send adapter (`null:<anything>`, e.g. `null://discard`): confirms every message
//! at once and keeps nothing — a sink that costs no I/O. It exists for `mbx bench`, which
//! measures the engine (publish → route → claim → hand-off → complete) rather than an
//! endpoint, and for draining a port whose messages are no longer wanted. The hand-off is
//! still measured by the host (`mbx_delivery_latency_seconds`).

use async_trait::async_trait;

use crate::error::ConfigError;
use crate::settings::Settings;
use crate::{report, Health, OutboundMessage, OutcomeSender, SendAdapter};

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

    fn validate(&self, _address: &str, _settings: &Settings) -> Result<(), ConfigError> {
        Ok(())
    }

    fn send(&self, batch: Vec<OutboundMessage>, outcomes: OutcomeSender) {
        tokio::spawn(async move {
            for message in &batch {
                report(&outcomes, message, crate::Outcome::Delivered).await;
            }
        });
    }

    async fn health(&self, _address: &str, _settings: &Settings) -> Health {
        Health::Healthy
    }
}
