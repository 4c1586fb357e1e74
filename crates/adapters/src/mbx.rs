//! `mbx://LINK/RECEIVE_PORT`: forwarding into another group's MessageBox. The address is
//! checked here like any other, but no send adapter serves it: the sending is the
//! engine's — it takes PostgreSQL, which this crate does not know — so the registry
//! resolves these addresses to [`SendTransport::Forward`](crate::SendTransport) and
//! `mbx-host` hands them to its forwarder (`crates/host/src/forward.rs`).

use mbx_vocabulary::GroupAddress;

use crate::error::ConfigError;
use crate::settings::Settings;

/// An example forwarding address, for help and errors.
pub const SEND_EXAMPLE: &str = "mbx://managers/from-broker";

/// The group `address` forwards to; a forwarding port takes no settings.
pub fn parse(address: &str, settings: &Settings) -> Result<GroupAddress, ConfigError> {
    let to = GroupAddress::parse(address).map_err(|problem| ConfigError::BadAddress {
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
    Ok(to)
}
