//! The MQTT 3.1.1 adapter, on rumqttc.
//!
//! - **receive** ([`receive`]): subscribes with QoS 1 and manual acks under a client id
//!   fixed per location and a persistent session (`clean_session = false`). The host runs
//!   an MQTT location on one instance at a time, under the location's lease (one
//!   subscription per instance would publish every message once per instance); after a
//!   failover the next holder connects with the same client id, the broker ends the former
//!   holder's connection and hands the session's unacknowledged messages to the new one.
//!   A message is acknowledged (PUBACK) only after its publish committed.
//! - **send** ([`send`]): QoS 1 publishes; `Delivered` on the broker's PUBACK.

pub mod config;
pub mod receive;
pub mod send;

pub use config::{MqttEndpoint, MqttReceiveConfig, MqttSendConfig};
pub use receive::MqttReceiveAdapter;
pub use send::MqttSendAdapter;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};

/// The connection options for `endpoint` (the password read now). `max_incoming` bounds
/// the packets the broker may send: a larger one ends the connection (rumqttc refuses it).
pub(crate) fn options(
    endpoint: &MqttEndpoint,
    client_id: &str,
    clean_session: bool,
    max_incoming: u64,
) -> Result<MqttOptions, String> {
    let mut o = MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port);
    o.set_keep_alive(endpoint.keep_alive);
    o.set_clean_session(clean_session);
    let max = config::MQTT_PACKET_MAX as usize;
    o.set_max_packet_size((max_incoming as usize).min(max), max);
    o.set_inflight(100);
    if let Some(user) = &endpoint.user {
        let password = match &endpoint.password {
            Some(p) => p.resolve("password")?,
            None => String::new(),
        };
        o.set_credentials(user.clone(), password);
    }
    if endpoint.tls {
        o.set_transport(match &endpoint.ca_file {
            None => Transport::tls_with_default_config(),
            Some(path) => Transport::tls_with_config(TlsConfiguration::Simple {
                ca: crate::broker::read_ca(path)?,
                alpn: None,
                client_auth: None,
            }),
        });
    }
    Ok(o)
}
