//! What the addresses of the broker adapters (AMQP, MQTT) share:
//! `SCHEME://[user@]host[:port]/PATH[?QUERY]`, `SCHEME` plain or TLS, a user in the address
//! and its password only by reference (`--set password=env:NAME|file:PATH`): a password
//! written into the address is refused, and the refusal does not repeat it.

use std::time::Duration;

use mbx_vocabulary::retry::Backoff;
use mbx_vocabulary::SecretRef;
use reqwest::Url;

use crate::error::ConfigError;
use crate::settings::Settings;
use crate::Health;

/// The schemes and default ports of one adapter, and the example its errors show.
pub(crate) struct Schemes {
    pub plain: &'static str,
    pub tls: &'static str,
    pub plain_port: u16,
    pub tls_port: u16,
    pub example: &'static str,
}

/// A parsed broker address.
pub(crate) struct BrokerAddress {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<SecretRef>,
    /// `ca_file=/path/ca.pem`: a CA (PEM) trusted for this broker's certificate, beside
    /// the usual roots (a private CA); only with the TLS scheme.
    pub ca_file: Option<String>,
    /// The path without its leading `/`, as written (percent-encoded).
    pub raw_path: String,
    pub query: Vec<(String, String)>,
}

pub(crate) fn parse(
    address: &str,
    settings: &Settings,
    schemes: &Schemes,
) -> Result<BrokerAddress, ConfigError> {
    let bad = |p: &str| ConfigError::address(address, p, schemes.example);
    let url = Url::parse(address).map_err(|e| bad(&e.to_string()))?;
    let tls = match url.scheme() {
        s if s == schemes.plain => false,
        s if s == schemes.tls => true,
        _ => {
            return Err(bad(&format!(
                "expected {}:// or {}://",
                schemes.plain, schemes.tls
            )))
        }
    };
    if url.password().is_some() {
        // the refusal repeats the address without the password
        let mut shown = url.clone();
        let _ = shown.set_password(Some("***"));
        return Err(ConfigError::address(
            shown.as_str(),
            "a password is never part of the address: give it as --set password=env:NAME or file:PATH",
            schemes.example,
        ));
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("no broker host"))?
        .trim_matches(['[', ']'])
        .to_owned();
    let port = url.port().unwrap_or(if tls {
        schemes.tls_port
    } else {
        schemes.plain_port
    });
    let user = match url.username() {
        "" => None,
        u => Some(
            percent_decode(u).ok_or_else(|| bad("the user is not valid percent-encoded UTF-8"))?,
        ),
    };
    let password = settings
        .get("password")
        .map(|r| SecretRef::parse("password", r).map_err(|problem| ConfigError::Secret { problem }))
        .transpose()?;
    if user.is_none() && password.is_some() {
        return Err(bad(&format!(
            "--set password needs a user in the address ({}://USER@host/…)",
            schemes.plain
        )));
    }
    let ca_file = ca_file(settings, tls, &format!("{}://", schemes.tls))?;
    let raw_path = url
        .path()
        .strip_prefix('/')
        .unwrap_or(url.path())
        .to_owned();
    let query = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    Ok(BrokerAddress {
        tls,
        host,
        port,
        user,
        password,
        ca_file,
        raw_path,
        query,
    })
}

/// The `ca_file` setting: an absolute path, only where the connection is TLS (`tls_form`
/// names the TLS form for the error).
pub(crate) fn ca_file(
    settings: &Settings,
    tls: bool,
    tls_form: &str,
) -> Result<Option<String>, ConfigError> {
    let Some(path) = settings.get("ca_file") else {
        return Ok(None);
    };
    if !tls {
        return Err(ConfigError::setting(
            "ca_file",
            path,
            format!("a CA applies to a TLS connection only ({tls_form})"),
        ));
    }
    if !path.starts_with('/') {
        return Err(ConfigError::setting(
            "ca_file",
            path,
            "expected an absolute path to a PEM file, e.g. /etc/mbx/ca.pem",
        ));
    }
    Ok(Some(path.clone()))
}

/// The first wait of a broker receive adapter after a failed publish or a lost connection;
/// doubled up to [`RECEIVE_BACKOFF_MAX`], and back to the first after a publish committed.
pub(crate) const RECEIVE_BACKOFF_FIRST: Duration = Duration::from_millis(200);
pub(crate) const RECEIVE_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The retry policy of the AMQP and MQTT receive loops (`mbx_vocabulary::retry`).
pub(crate) fn receive_backoff() -> Backoff {
    Backoff::doubling(RECEIVE_BACKOFF_FIRST, RECEIVE_BACKOFF_MAX)
}

/// Reads the PEM file of `ca_file` when connecting.
pub(crate) fn read_ca(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("ca_file {path}: {e}"))
}

/// Decodes `%XX` escapes; `None` if a `%` starts no escape (two hex digits) or the result
/// is not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    // percent-encoding keeps a `%` that starts no escape as it is: refused here
    let escapes_whole = s.split('%').skip(1).all(|after| {
        after
            .as_bytes()
            .get(..2)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if !escapes_whole {
        return None;
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|d| d.into_owned())
}

/// Whether a server accepts a TCP connection at `host:port` (`label` names it).
pub(crate) async fn reachable(host: &str, port: u16, label: &str) -> Health {
    match tokio::net::TcpStream::connect((host, port)).await {
        Ok(_) => Health::Healthy,
        Err(e) => Health::unhealthy(format!("{label}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_takes_whole_escapes_of_utf8_only() {
        assert_eq!(percent_decode("a%2Fb%2fc").as_deref(), Some("a/b/c"));
        assert_eq!(percent_decode("%C3%A9t%C3%A9").as_deref(), Some("été"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("").as_deref(), Some(""));
        for bad in ["%", "a%2", "%zz", "%+f", "100%", "%FF"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }
}
