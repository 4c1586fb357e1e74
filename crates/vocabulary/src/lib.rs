//! The vocabulary every mbx crate shares, written once: the system property names and
//! which of them an operator may promote, the rules for property and object names, the
//! promoted-value limit, secret references (`env:NAME`, `file:PATH`), the syntax of a
//! size (`100MB`, `1MiB`) and the retry policy of the retry loops.
//!
//! A leaf crate: `mbx-messagebox` and `mbx-adapters` both use it and neither depends on
//! the other, so nothing here may know about PostgreSQL, adapters or the host.

pub mod retry;
pub mod secret;
pub mod size;

mod group_address;
pub use group_address::GroupAddress;

pub use secret::SecretRef;
pub use size::parse_size;

/// Names of the system properties the engine and its adapters set.
pub mod system {
    pub const MESSAGE_ID: &str = "mbx.MessageId";
    pub const MESSAGE_TYPE: &str = "mbx.MessageType";
    pub const CONTENT_TYPE: &str = "mbx.ContentType";
    pub const PUBLISHED_AT: &str = "mbx.PublishedAt";
    pub const RECEIVE_PORT_NAME: &str = "mbx.ReceivePortName";
    pub const RECEIVE_LOCATION_NAME: &str = "mbx.ReceiveLocationName";
    pub const INBOUND_TRANSPORT_TYPE: &str = "mbx.InboundTransportType";
    pub const INBOUND_TRANSPORT_LOCATION: &str = "mbx.InboundTransportLocation";
    pub const OUTBOUND_TRANSPORT_LOCATION: &str = "mbx.OutboundTransportLocation";
    pub const SOURCE_FILE_NAME: &str = "mbx.SourceFileName";
    pub const RETRY_COUNT: &str = "mbx.RetryCount";
    pub const RETRY_INTERVAL: &str = "mbx.RetryInterval";
    pub const SEND_PORT_NAME: &str = "mbx.SendPortName";
    pub const SEQUENCE: &str = "mbx.Sequence";
    pub const EPOCH: &str = "mbx.Epoch";
    /// Request-response: the token a waiting two-way receive answers with the first
    /// message that carries it.
    pub const CORRELATION_TOKEN: &str = "mbx.CorrelationToken";
    /// Set on a request published by a two-way receive location.
    pub const IS_REQUEST_RESPONSE: &str = "mbx.IsRequestResponse";
    /// Set on a response published by a solicit-response send port.
    pub const IS_SOLICIT_RESPONSE: &str = "mbx.IsSolicitResponse";
    /// Written (not promoted) on a request an orchestration instance sends through a
    /// solicit-response send port (`call: NAME@mbx`): the instance's id. A suspension of
    /// that request answers the instance.
    pub const CALLED_BY: &str = "mbx.CalledBy";
    /// The system namespace: set by the engine and adapters only.
    pub const NAMESPACE: &str = "mbx";

    /// The one system property an operator may promote from a body, by explicit choice
    /// (a dynamic send port's address).
    pub const OPERATOR_PROMOTABLE: &[&str] = &[OUTBOUND_TRANSPORT_LOCATION];

    /// The system properties an operator may give by hand (`mbx message publish`): what
    /// may be promoted from a body, and the message type (a JSON message has no root name
    /// to give it one; an orchestration activates on it). Never a payload's.
    pub const OPERATOR_SETTABLE: &[&str] = &[OUTBOUND_TRANSPORT_LOCATION, MESSAGE_TYPE];

    /// Whether `name` is in the engine's namespace (`mbx.…`).
    pub fn is_engine_property(name: &str) -> bool {
        name.split_once('.').is_some_and(|(ns, _)| ns == NAMESPACE)
    }

    /// Whether a forwarded message keeps `name` in the group it is forwarded to: every
    /// property outside the engine's namespace, and of the engine's the message type (it
    /// names what the message is, as a schema would; an orchestration or a filter there
    /// selects by it). What a group's engine sets about transport, delivery and routing
    /// (ports, locations, sequences, tokens) is set anew there.
    pub fn crosses_groups(name: &str) -> bool {
        !is_engine_property(name) || name == MESSAGE_TYPE
    }
}

/// A solicit-response port's answer's status code (HTTP: the endpoint's status; 502 when
/// the request was suspended).
pub const STATUS_CODE: &str = "http.StatusCode";

/// Longest value, in bytes of its text form, that can be promoted.
pub const PROMOTED_VALUE_MAX_BYTES: usize = 256;

/// Longest property name, in bytes.
pub const PROPERTY_NAME_MAX_BYTES: usize = 128;

/// Longest object name (host, port, group, location), in bytes.
pub const NAME_MAX_BYTES: usize = 128;

/// Checks a property name: `namespace.Name`, each dot-separated part an identifier
/// (a letter or `_`, then letters, digits, `_`), at most [`PROPERTY_NAME_MAX_BYTES`].
pub fn validate_property_name(name: &str) -> Result<(), String> {
    let example = "(example: Order.Region)";
    if name.len() > PROPERTY_NAME_MAX_BYTES {
        return Err(format!(
            "property name '{name}' is longer than {PROPERTY_NAME_MAX_BYTES} bytes"
        ));
    }
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() < 2 {
        return Err(format!(
            "property name '{name}' needs a namespace: namespace.Name {example}"
        ));
    }
    for part in parts {
        let mut chars = part.chars();
        let ok = match chars.next() {
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            }
            _ => false,
        };
        if !ok {
            return Err(format!(
                "property name '{name}' is not valid: each dot-separated part must start with a letter or '_' and hold only letters, digits and '_' {example}"
            ));
        }
    }
    Ok(())
}

/// Checks the target of a promotion from a body: a valid property name outside the
/// engine's namespace, except [`system::OPERATOR_PROMOTABLE`]. A payload must not set
/// `mbx.ReceivePortName` and be routed as if it came from another port.
pub fn validate_promotion_target(name: &str) -> Result<(), String> {
    validate_property_name(name)?;
    if system::is_engine_property(name) && !system::OPERATOR_PROMOTABLE.contains(&name) {
        return Err(format!(
            "{name} is set by the engine and cannot be promoted from a body (of the mbx namespace only {} can); promote into your own namespace, e.g. Order.Region",
            system::OPERATOR_PROMOTABLE.join(", ")
        ));
    }
    Ok(())
}

/// Checks an object name (host, port, group, location): 1 to [`NAME_MAX_BYTES`] letters,
/// digits, `_ . -`, starting with a letter, digit or `_`. `kind` names the object in the
/// error ("send port").
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX_BYTES
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{kind} name '{name}' is not valid: use 1-{NAME_MAX_BYTES} letters, digits, '_', '.' or '-' (example: orders-eu)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_names_need_a_namespace_and_identifier_parts() {
        assert!(validate_property_name("Order.Region").is_ok());
        assert!(validate_property_name("a._b.c1").is_ok());
        assert!(validate_property_name("Region").is_err());
        assert!(validate_property_name("Order.1x").is_err());
        assert!(validate_property_name("Order.").is_err());
        assert!(validate_property_name("Order..Region").is_err());
        assert!(validate_property_name("mbx.MessageType").is_ok());
        let long = format!("A.{}", "b".repeat(PROPERTY_NAME_MAX_BYTES));
        assert!(validate_property_name(&long).is_err());
    }

    #[test]
    fn a_forwarded_message_keeps_its_type_and_properties_not_its_transport() {
        assert!(system::crosses_groups("Order.Id"));
        assert!(system::crosses_groups(system::MESSAGE_TYPE));
        for engine in [
            system::RECEIVE_PORT_NAME,
            system::CORRELATION_TOKEN,
            system::SEQUENCE,
            system::MESSAGE_ID,
        ] {
            assert!(!system::crosses_groups(engine), "{engine}");
        }
    }

    #[test]
    fn only_the_outbound_location_of_the_engine_namespace_is_promotable() {
        assert!(validate_promotion_target("Order.Region").is_ok());
        assert!(validate_promotion_target(system::OUTBOUND_TRANSPORT_LOCATION).is_ok());
        let err = validate_promotion_target(system::RECEIVE_PORT_NAME).unwrap_err();
        assert!(err.contains("set by the engine"), "{err}");
        // a namespace that merely starts with "mbx" is not the engine's
        assert!(validate_promotion_target("mbxapp.Region").is_ok());
    }

    #[test]
    fn object_names_are_checked() {
        assert!(validate_name("send port", "orders-eu.v2").is_ok());
        assert!(validate_name("send port", "").is_err());
        assert!(validate_name("send port", "-x").is_err());
        assert!(validate_name("send port", "a b").is_err());
        assert!(validate_name("send port", &"a".repeat(NAME_MAX_BYTES + 1)).is_err());
    }
}
