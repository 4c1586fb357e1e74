//! `mbx://LINK/RECEIVE_PORT`: forwarding into another group's MessageBox. The
//! address is checked here like any other; the sending is the engine's — it takes
//! PostgreSQL, which this crate does not know — so `mbx-host` serves this scheme with its
//! forwarder (`crates/host/src/forward.rs`) and never hands these messages to this
//! adapter. If one arrives here anyway it fails non-retryable, saying so.

use async_trait::async_trait;
use mbx_vocabulary::GroupAddress;

use crate::error::ConfigError;
use crate::settings::Settings;
use crate::{report, Health, OutboundMessage, OutcomeSender, SendAdapter};

/// An example forwarding address, for help and errors.
pub const SEND_EXAMPLE: &str = "mbx://managers/from-broker";

/// The registry's entry for `mbx://`: validates addresses; sends are the host's.
#[derive(Debug, Default)]
pub struct GroupForwardAdapter;

#[async_trait]
impl SendAdapter for GroupForwardAdapter {
    fn name(&self) -> &'static str {
        "MBX"
    }

    fn validate(&self, address: &str, settings: &Settings) -> Result<(), ConfigError> {
        GroupAddress::parse(address).map_err(|problem| ConfigError::BadAddress {
            address: address.to_owned(),
            problem,
            example: SEND_EXAMPLE,
        })?;
        if let Some(key) = settings.keys().next() {
            return Err(ConfigError::UnknownSetting {
                adapter: "MBX",
                key: key.clone(),
                known: "none".into(),
            });
        }
        Ok(())
    }

    fn send(&self, batch: Vec<OutboundMessage>, outcomes: OutcomeSender) {
        tokio::spawn(async move {
            for message in &batch {
                let outcome = crate::Outcome::failed(
                    "mbx:// addresses are forwarded by mbx-host itself; this process has no forwarder",
                    false,
                );
                report(&outcomes, message, outcome).await;
            }
        });
    }

    async fn health(&self, _address: &str, _settings: &Settings) -> Health {
        Health::Healthy
    }
}
