//! `mbx://LINK/RECEIVE_PORT`: the address of a send port that forwards into another group
//!. The link names the other group's MessageBox (`mbx group link add`); the
//! receive port is the one there that takes the message in.

use crate::validate_name;

/// A parsed forwarding address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupAddress {
    pub link: String,
    pub receive_port: String,
}

const EXAMPLE: &str = "(example: mbx://managers/from-broker)";

/// The scheme of forwarding addresses.
pub const GROUP_SCHEME: &str = "mbx";

impl GroupAddress {
    /// Whether `address` is a forwarding address (scheme `mbx`, any case).
    pub fn is_group_address(address: &str) -> bool {
        address
            .split_once(':')
            .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case(GROUP_SCHEME))
    }

    /// Parses `mbx://LINK/RECEIVE_PORT`; the error says what is wrong and shows the form.
    pub fn parse(address: &str) -> Result<GroupAddress, String> {
        match Self::parse_prefix(address)? {
            (link, Some(receive_port)) => Ok(GroupAddress { link, receive_port }),
            (_, None) => Err(format!(
                "'{address}' names no receive port: mbx://LINK/RECEIVE_PORT {EXAMPLE}"
            )),
        }
    }

    /// Parses a forwarding address or an allowed prefix of a dynamic port: `mbx://LINK/`
    /// (any receive port through that link: `None`) or `mbx://LINK/RECEIVE_PORT`.
    pub fn parse_prefix(address: &str) -> Result<(String, Option<String>), String> {
        let rest = address
            .split_once("://")
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(GROUP_SCHEME))
            .map(|(_, rest)| rest)
            .ok_or_else(|| {
                format!("'{address}' is not an mbx://LINK/RECEIVE_PORT address {EXAMPLE}")
            })?;
        let (link, port) = rest.split_once('/').unwrap_or((rest, ""));
        validate_name("group link", link).map_err(|e| format!("'{address}': {e}"))?;
        if port.is_empty() {
            return Ok((link.to_owned(), None));
        }
        validate_name("receive port", port).map_err(|e| format!("'{address}': {e}"))?;
        Ok((link.to_owned(), Some(port.to_owned())))
    }
}

impl std::fmt::Display for GroupAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{GROUP_SCHEME}://{}/{}", self.link, self.receive_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_addresses_name_a_link_and_a_receive_port() {
        let a = GroupAddress::parse("mbx://managers/from-broker").unwrap();
        assert_eq!(a.link, "managers");
        assert_eq!(a.receive_port, "from-broker");
        assert_eq!(a.to_string(), "mbx://managers/from-broker");
        assert!(GroupAddress::is_group_address("MBX://x/y"));
        assert!(!GroupAddress::is_group_address("file:///x"));
        for bad in [
            "mbx://managers",
            "mbx:///from",
            "mbx://a b/c",
            "mbx://a/b/c",
            "file://a/b",
        ] {
            assert!(GroupAddress::parse(bad).is_err(), "{bad}");
        }
    }
}
