//! AMQP 0-9-1 addresses and settings.
//!
//! `amqp://[user@]host[:port][/vhost]?queue=q` (receive, or send to the default exchange)
//! or `?exchange=x&routing_key=k` (send); `amqps://` for TLS. A password is never part of
//! the address: `--set password=env:NAME|file:PATH`. Without a user the broker's default
//! `guest`/`guest` is used (RabbitMQ accepts it from loopback only).

use std::time::Duration;

use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use mbx_vocabulary::SecretRef;

use crate::broker;
use crate::error::ConfigError;
use crate::settings::{self, Settings};

pub const RECEIVE_EXAMPLE: &str = "amqp://127.0.0.1:5672/%2f?queue=orders";
pub const SEND_EXAMPLE: &str = "amqp://127.0.0.1:5672/%2f?exchange=orders&routing_key=eu";

/// The settings of a receive location.
pub const AMQP_RECEIVE_SETTINGS: &[&str] = &[
    "password",
    "prefetch",
    "heartbeat",
    "ca_file",
    "max_message_size",
];
/// The settings of a send port (and `header.<Name>=<property>`).
pub const AMQP_SEND_SETTINGS: &[&str] = &[
    "password",
    "timeout",
    "heartbeat",
    "ca_file",
    "header.<Name>",
];

/// The prefix of settings that send a context property as an AMQP header.
pub const AMQP_HEADER_SETTING_PREFIX: &str = "header.";
/// Extra headers per port.
pub const AMQP_SEND_HEADERS_MAX: usize = 32;
/// Unacknowledged messages a consumer holds (also its largest batch), unless `prefetch`.
pub const AMQP_PREFETCH_DEFAULT: u64 = 200;
pub const AMQP_PREFETCH_MAX: u64 = 10_000;
/// How long a batch's publisher confirms may take, unless `timeout` says otherwise.
pub const AMQP_CONFIRM_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Headers the adapter sets itself; `header.<Name>` may not override them.
const RESERVED_HEADERS: &[&str] = &[
    "mbx-message-id",
    "mbx-sequence",
    "mbx-epoch",
    "idempotency-key",
];

/// Where a broker is and who connects to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpEndpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub vhost: String,
    pub user: Option<String>,
    /// The password's reference, resolved only when connecting.
    pub password: Option<SecretRef>,
    /// Heartbeat interval: how soon a dead peer is noticed (both ways).
    pub heartbeat: Duration,
    /// `ca_file`: a private CA trusted for an `amqps://` broker.
    pub ca_file: Option<String>,
}

impl AmqpEndpoint {
    /// The connection URI with the password read now.
    pub fn uri(&self) -> Result<AMQPUri, String> {
        let (username, password) = match (&self.user, &self.password) {
            (None, None) => ("guest".to_owned(), "guest".to_owned()),
            (user, password) => (
                user.clone().unwrap_or_else(|| "guest".to_owned()),
                match password {
                    Some(p) => p.resolve("password")?,
                    None => String::new(),
                },
            ),
        };
        Ok(AMQPUri {
            scheme: if self.tls {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo { username, password },
                host: self.host.clone(),
                port: self.port,
            },
            vhost: self.vhost.clone(),
            query: AMQPQueryString {
                heartbeat: Some(self.heartbeat.as_secs().clamp(1, 600) as u16),
                connection_timeout: Some(10_000),
                ..Default::default()
            },
        })
    }

    /// Identifies the connection (for sharing it between ports): everything but secrets.
    pub fn key(&self) -> String {
        format!(
            "{}://{}@{}:{}/{}#{:?}#{}#{:?}",
            if self.tls { "amqps" } else { "amqp" },
            self.user.as_deref().unwrap_or(""),
            self.host,
            self.port,
            self.vhost,
            self.password.as_ref().map(|p| p.to_string()),
            self.heartbeat.as_secs(),
            self.ca_file
        )
    }
}

/// Where a send port publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpTarget {
    /// `""` is the default exchange (routing key = queue name).
    pub exchange: String,
    pub routing_key: String,
}

/// A validated receive location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpReceiveConfig {
    pub endpoint: AmqpEndpoint,
    pub queue: String,
    /// `prefetch`: unacknowledged messages held at once, and the largest batch.
    pub prefetch: u16,
    /// `max_message_size` (the location's `--max-message-size`): larger is rejected to the
    /// queue's dead-letter exchange.
    pub max_message_size: u64,
}

/// A validated send port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpSendConfig {
    pub endpoint: AmqpEndpoint,
    pub target: AmqpTarget,
    /// `timeout`: the longest wait for a batch's publisher confirms.
    pub timeout: Duration,
    /// `header.<Name>=<property>`: the message's property sent as header `Name`.
    pub headers: Vec<(String, String)>,
}

fn bad(address: &str, problem: impl Into<String>, example: &'static str) -> ConfigError {
    ConfigError::address(address, problem, example)
}

/// Parses the broker part of an address and the query pairs.
pub(crate) fn parse_address(
    address: &str,
    settings: &Settings,
    example: &'static str,
) -> Result<(AmqpEndpoint, Vec<(String, String)>), ConfigError> {
    let a = broker::parse(
        address,
        settings,
        &broker::Schemes {
            plain: "amqp",
            tls: "amqps",
            plain_port: 5672,
            tls_port: 5671,
            example,
        },
    )?;
    let vhost = if a.raw_path.is_empty() {
        "/".to_owned()
    } else {
        if a.raw_path.contains('/') {
            return Err(bad(
                address,
                "the path is one virtual host; write / as %2f",
                example,
            ));
        }
        broker::percent_decode(&a.raw_path).ok_or_else(|| {
            bad(
                address,
                "the virtual host is not valid percent-encoded UTF-8",
                example,
            )
        })?
    };
    let heartbeat = settings::get_duration(
        settings,
        "heartbeat",
        Duration::from_secs(10),
        Duration::from_secs(1),
        Duration::from_secs(600),
    )?;
    Ok((
        AmqpEndpoint {
            tls: a.tls,
            host: a.host,
            port: a.port,
            vhost,
            user: a.user,
            password: a.password,
            heartbeat,
            ca_file: a.ca_file,
        },
        a.query,
    ))
}

/// An AMQP short string: at most 255 bytes.
fn short(
    address: &str,
    what: &str,
    value: &str,
    example: &'static str,
) -> Result<String, ConfigError> {
    if value.len() > 255 {
        return Err(bad(
            address,
            format!("{what} is longer than 255 bytes"),
            example,
        ));
    }
    Ok(value.to_owned())
}

impl AmqpReceiveConfig {
    pub fn parse(address: &str, settings: &Settings) -> Result<Self, ConfigError> {
        settings::check_known("AMQP", settings, AMQP_RECEIVE_SETTINGS)?;
        let (endpoint, pairs) = parse_address(address, settings, RECEIVE_EXAMPLE)?;
        let mut queue = None;
        for (k, v) in pairs {
            match k.as_str() {
                "queue" if !v.is_empty() => {
                    queue = Some(short(address, "the queue name", &v, RECEIVE_EXAMPLE)?)
                }
                _ => {
                    return Err(bad(
                        address,
                        format!("a receive location takes only ?queue=NAME, not {k:?}"),
                        RECEIVE_EXAMPLE,
                    ))
                }
            }
        }
        let queue =
            queue.ok_or_else(|| bad(address, "no ?queue=NAME to consume", RECEIVE_EXAMPLE))?;
        let prefetch = settings::get_count(
            settings,
            "prefetch",
            AMQP_PREFETCH_DEFAULT,
            AMQP_PREFETCH_MAX,
        )? as u16;
        let max_message_size = settings::get_size_bytes(
            settings,
            "max_message_size",
            100_000_000,
            u64::from(u32::MAX),
        )?;
        Ok(Self {
            endpoint,
            queue,
            prefetch,
            max_message_size,
        })
    }
}

impl AmqpSendConfig {
    pub fn parse(address: &str, settings: &Settings) -> Result<Self, ConfigError> {
        for key in settings.keys() {
            let known = matches!(
                key.as_str(),
                "password" | "timeout" | "heartbeat" | "ca_file"
            ) || key.starts_with(AMQP_HEADER_SETTING_PREFIX);
            if !known {
                return Err(ConfigError::UnknownSetting {
                    adapter: "AMQP",
                    key: key.clone(),
                    known: AMQP_SEND_SETTINGS.join(", "),
                });
            }
        }
        let (endpoint, pairs) = parse_address(address, settings, SEND_EXAMPLE)?;
        let (mut queue, mut exchange, mut routing_key) = (None, None, None);
        for (k, v) in pairs {
            let v = short(address, &k, &v, SEND_EXAMPLE)?;
            match k.as_str() {
                "queue" => queue = Some(v),
                "exchange" => exchange = Some(v),
                "routing_key" => routing_key = Some(v),
                _ => {
                    return Err(bad(
                        address,
                        format!(
                        "unknown query parameter {k:?} (known: queue, or exchange and routing_key)"
                    ),
                        SEND_EXAMPLE,
                    ))
                }
            }
        }
        let target = match (queue, exchange, routing_key) {
            (Some(q), None, None) if !q.is_empty() => AmqpTarget {
                exchange: String::new(),
                routing_key: q,
            },
            (None, Some(x), rk) => AmqpTarget {
                exchange: x,
                routing_key: rk.unwrap_or_default(),
            },
            _ => {
                return Err(bad(
                    address,
                    "give either ?queue=NAME or ?exchange=NAME[&routing_key=KEY]",
                    SEND_EXAMPLE,
                ))
            }
        };
        let timeout = settings::get_duration(
            settings,
            "timeout",
            AMQP_CONFIRM_TIMEOUT_DEFAULT,
            Duration::from_millis(100),
            Duration::from_secs(600),
        )?;
        let mut headers = Vec::new();
        for (key, property) in settings {
            let Some(name) = key.strip_prefix(AMQP_HEADER_SETTING_PREFIX) else {
                continue;
            };
            let valid_name = !name.is_empty()
                && name.len() <= 128
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid_name {
                return Err(ConfigError::setting(
                    key,
                    property,
                    "a header name is 1 to 128 letters, digits, '-', '_' or '.'",
                ));
            }
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(ConfigError::setting(
                    key,
                    property,
                    "this header is set by the adapter",
                ));
            }
            mbx_vocabulary::validate_property_name(property)
                .map_err(|e| ConfigError::setting(key, property, e))?;
            headers.push((name.to_owned(), property.clone()));
        }
        if headers.len() > AMQP_SEND_HEADERS_MAX {
            return Err(ConfigError::setting(
                AMQP_HEADER_SETTING_PREFIX,
                &headers.len().to_string(),
                format!("at most {AMQP_SEND_HEADERS_MAX} header settings"),
            ));
        }
        Ok(Self {
            endpoint,
            target,
            timeout,
            headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings_from;

    #[test]
    fn addresses_parse_into_a_broker_and_a_target() {
        let c = AmqpSendConfig::parse(
            "amqp://orders@mq.example:5673/prod?exchange=orders&routing_key=eu",
            &settings_from([("password", "env:MQ_PASSWORD")]),
        )
        .unwrap();
        assert_eq!(c.endpoint.host, "mq.example");
        assert_eq!(c.endpoint.port, 5673);
        assert_eq!(c.endpoint.vhost, "prod");
        assert_eq!(c.endpoint.user.as_deref(), Some("orders"));
        assert_eq!(c.target.exchange, "orders");
        assert_eq!(c.target.routing_key, "eu");
        let q =
            AmqpReceiveConfig::parse("amqps://mq.example/%2f?queue=in", &Settings::new()).unwrap();
        assert_eq!(
            (q.endpoint.vhost.as_str(), q.endpoint.port, q.endpoint.tls),
            ("/", 5671, true)
        );
        assert_eq!(q.queue, "in");
    }

    #[test]
    fn bad_addresses_and_settings_are_refused_with_the_fix() {
        let none = Settings::new();
        let e = AmqpSendConfig::parse("amqp://u:secret@h/v?queue=q", &none).unwrap_err();
        assert!(e.to_string().contains("--set password=env:NAME"), "{e}");
        assert!(
            !e.to_string().contains("secret@"),
            "the password is not repeated: {e}"
        );
        assert!(AmqpReceiveConfig::parse("amqp://h/v", &none).is_err());
        assert!(AmqpReceiveConfig::parse("amqp://h/v?exchange=x", &none).is_err());
        assert!(AmqpSendConfig::parse("amqp://h/v?queue=q&exchange=x", &none).is_err());
        assert!(AmqpSendConfig::parse(
            "amqp://h/v?queue=q",
            &settings_from([("password", "hunter2")])
        )
        .is_err());
        assert!(AmqpSendConfig::parse(
            "amqp://h/v?queue=q",
            &settings_from([("header.x y", "A.B")])
        )
        .is_err());
        assert!(AmqpSendConfig::parse(
            "amqp://h/v?queue=q",
            &settings_from([("header.mbx-epoch", "A.B")])
        )
        .is_err());
        assert!(AmqpSendConfig::parse(
            "amqp://h/v?queue=q",
            &settings_from([("header.region", "nodot")])
        )
        .is_err());
        assert!(AmqpSendConfig::parse("amqp://h/a/b?queue=q", &none).is_err());
        assert!(AmqpReceiveConfig::parse(
            "amqp://h/v?queue=q",
            &settings_from([("prefetch", "0")])
        )
        .is_err());
    }
}
