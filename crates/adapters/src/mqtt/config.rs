//! MQTT addresses and settings.
//!
//! `mqtt://[user@]host[:port]/topic` (`mqtts://` for TLS). The topic is the path,
//! percent-decoded, so a receive filter writes its wildcards `%2B` (`+`) and `%23` (`#`) —
//! or gives the filter as `--set topic=sensors/+/temp` with the path left empty. A password
//! is never part of the address: `--set password=env:NAME|file:PATH`.

use std::time::Duration;

use mbx_vocabulary::SecretRef;

use crate::broker;
use crate::error::ConfigError;
use crate::settings::{self, Settings};

pub const RECEIVE_EXAMPLE: &str = "mqtt://127.0.0.1:1883/plant/%2B/temperature";
pub const SEND_EXAMPLE: &str = "mqtt://127.0.0.1:1883/plant/orders";

pub const MQTT_RECEIVE_SETTINGS: &[&str] = &[
    "topic",
    "password",
    "keep_alive",
    "batch",
    "ca_file",
    "max_message_size",
];
pub const MQTT_SEND_SETTINGS: &[&str] = &[
    "topic_property",
    "retain",
    "password",
    "keep_alive",
    "timeout",
    "ca_file",
];

/// The largest MQTT packet (the protocol's limit).
pub const MQTT_PACKET_MAX: u64 = 268_435_455;

/// Where a broker is and who connects to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttEndpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<SecretRef>,
    pub keep_alive: Duration,
    /// `ca_file`: a private CA trusted for an `mqtts://` broker.
    pub ca_file: Option<String>,
}

impl MqttEndpoint {
    /// Identifies a connection to share: everything but secrets.
    pub fn key(&self) -> String {
        format!(
            "{}://{}@{}:{}#{:?}#{}#{:?}",
            if self.tls { "mqtts" } else { "mqtt" },
            self.user.as_deref().unwrap_or(""),
            self.host,
            self.port,
            self.password.as_ref().map(|p| p.to_string()),
            self.keep_alive.as_secs(),
            self.ca_file
        )
    }

    pub fn broker(&self) -> String {
        format!(
            "{}://{}:{}",
            if self.tls { "mqtts" } else { "mqtt" },
            self.host,
            self.port
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttReceiveConfig {
    pub endpoint: MqttEndpoint,
    /// The topic filter subscribed to (QoS 1).
    pub filter: String,
    /// `batch`: the most messages published in one transaction.
    pub batch: usize,
    pub max_message_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSendConfig {
    pub endpoint: MqttEndpoint,
    /// The topic of the address; `topic_property` takes it from the message instead.
    pub topic: String,
    /// `topic_property=Ns.Name`: the topic is that property's value (a message without it,
    /// or with wildcards in it, fails for good).
    pub topic_property: Option<String>,
    /// `retain=true`: the broker keeps the last message of the topic for new subscribers.
    pub retain: bool,
    /// `timeout`: the longest wait for a PUBACK.
    pub timeout: Duration,
}

pub(crate) fn parse_address(
    address: &str,
    settings: &Settings,
    example: &'static str,
) -> Result<(MqttEndpoint, String), ConfigError> {
    let bad = |p: &str| ConfigError::address(address, p, example);
    if address.contains('#') {
        return Err(bad(
            "write the # wildcard as %23 (or give the filter as --set topic=…)",
        ));
    }
    let a = broker::parse(
        address,
        settings,
        &broker::Schemes {
            plain: "mqtt",
            tls: "mqtts",
            plain_port: 1883,
            tls_port: 8883,
            example,
        },
    )?;
    if !a.query.is_empty() {
        return Err(bad("an MQTT address takes no ?query"));
    }
    let topic = broker::percent_decode(&a.raw_path)
        .ok_or_else(|| bad("the topic is not valid percent-encoded UTF-8"))?;
    let keep_alive = settings::get_duration(
        settings,
        "keep_alive",
        Duration::from_secs(10),
        Duration::from_secs(5),
        Duration::from_secs(3600),
    )?;
    Ok((
        MqttEndpoint {
            tls: a.tls,
            host: a.host,
            port: a.port,
            user: a.user,
            password: a.password,
            keep_alive,
            ca_file: a.ca_file,
        },
        topic,
    ))
}

/// A topic name to publish to: not empty, no wildcards, no NUL, at most 65,535 bytes.
pub fn check_topic_name(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic is empty".into());
    }
    if topic.contains(['+', '#']) {
        return Err(format!(
            "topic {topic:?} has a wildcard (+ or #): a message is published to one topic"
        ));
    }
    if topic.contains('\0') || topic.len() > 65_535 {
        return Err(format!(
            "topic {topic:?} holds NUL or is longer than 65,535 bytes"
        ));
    }
    Ok(())
}

/// A topic filter to subscribe to: `+` a whole level, `#` only as the last level.
fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() || filter.contains('\0') || filter.len() > 65_535 {
        return Err("the topic filter is empty, holds NUL or is too long".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let wild = level.contains(['+', '#']);
        let ok = !wild || *level == "+" || (*level == "#" && i == levels.len() - 1);
        if !ok {
            return Err(format!(
                "topic filter {filter:?}: + must be a whole level and # the whole last level"
            ));
        }
    }
    Ok(())
}

impl MqttReceiveConfig {
    pub fn parse(address: &str, settings: &Settings) -> Result<Self, ConfigError> {
        settings::check_known("MQTT", settings, MQTT_RECEIVE_SETTINGS)?;
        let (endpoint, path_topic) = parse_address(address, settings, RECEIVE_EXAMPLE)?;
        let filter = match (path_topic.is_empty(), settings.get("topic")) {
            (false, None) => path_topic,
            (true, Some(t)) => t.clone(),
            (false, Some(_)) => {
                return Err(ConfigError::address(
                    address,
                    "give the topic in the address or as --set topic, not both",
                    RECEIVE_EXAMPLE,
                ))
            }
            (true, None) => {
                return Err(ConfigError::address(
                    address,
                    "no topic to subscribe to",
                    RECEIVE_EXAMPLE,
                ))
            }
        };
        check_filter(&filter).map_err(|p| ConfigError::address(address, p, RECEIVE_EXAMPLE))?;
        let batch = settings::get_count(settings, "batch", 200, 10_000)? as usize;
        let max_message_size =
            settings::get_size_bytes(settings, "max_message_size", 100_000_000, MQTT_PACKET_MAX)?;
        Ok(Self {
            endpoint,
            filter,
            batch,
            max_message_size,
        })
    }
}

impl MqttSendConfig {
    pub fn parse(address: &str, settings: &Settings) -> Result<Self, ConfigError> {
        settings::check_known("MQTT", settings, MQTT_SEND_SETTINGS)?;
        let (endpoint, topic) = parse_address(address, settings, SEND_EXAMPLE)?;
        let topic_property = settings.get("topic_property").cloned();
        if let Some(p) = &topic_property {
            mbx_vocabulary::validate_property_name(p)
                .map_err(|e| ConfigError::setting("topic_property", p, e))?;
            if !topic.is_empty() {
                return Err(ConfigError::address(
                    address,
                    "with --set topic_property the address names no topic (mqtt://host:1883)",
                    SEND_EXAMPLE,
                ));
            }
        } else {
            check_topic_name(&topic).map_err(|p| ConfigError::address(address, p, SEND_EXAMPLE))?;
        }
        let retain = settings::get_bool(settings, "retain", false)?;
        let timeout = settings::get_duration(
            settings,
            "timeout",
            Duration::from_secs(30),
            Duration::from_millis(100),
            Duration::from_secs(600),
        )?;
        Ok(Self {
            endpoint,
            topic,
            topic_property,
            retain,
            timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings_from;

    #[test]
    fn topics_come_from_the_path_or_a_setting() {
        let r = MqttReceiveConfig::parse("mqtt://h/plant/%2B/temp", &Settings::new()).unwrap();
        assert_eq!(r.filter, "plant/+/temp");
        assert_eq!(r.endpoint.port, 1883);
        let r =
            MqttReceiveConfig::parse("mqtts://h:8884", &settings_from([("topic", "a/#")])).unwrap();
        assert_eq!(
            (r.filter.as_str(), r.endpoint.tls, r.endpoint.port),
            ("a/#", true, 8884)
        );
        let s = MqttSendConfig::parse(
            "mqtt://u@h/out/x",
            &settings_from([("password", "env:P"), ("retain", "true")]),
        )
        .unwrap();
        assert_eq!((s.topic.as_str(), s.retain), ("out/x", true));
    }

    #[test]
    fn bad_topics_and_secrets_are_refused() {
        let none = Settings::new();
        assert!(
            MqttReceiveConfig::parse("mqtt://h/a/#", &none).is_err(),
            "# is a fragment"
        );
        assert!(
            MqttReceiveConfig::parse("mqtt://h/a%23/b", &none).is_err(),
            "# not last"
        );
        assert!(
            MqttReceiveConfig::parse("mqtt://h/a/b%2Bc", &none).is_err(),
            "+ not a whole level"
        );
        assert!(
            MqttSendConfig::parse("mqtt://h/a/%2B", &none).is_err(),
            "no wildcard to publish"
        );
        assert!(
            MqttSendConfig::parse("mqtt://h", &none).is_err(),
            "no topic"
        );
        assert!(
            MqttSendConfig::parse("mqtt://h/t", &settings_from([("topic_property", "A.B")]))
                .is_err()
        );
        assert!(
            MqttSendConfig::parse("mqtt://h", &settings_from([("topic_property", "A.B")])).is_ok()
        );
        let e = MqttSendConfig::parse("mqtt://u:pw@h/t", &none)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--set password") && !e.contains(":pw@"), "{e}");
        assert!(
            MqttSendConfig::parse("mqtt://h/t", &settings_from([("password", "plain")])).is_err()
        );
    }
}
