//! HTTP send addresses and settings.

use std::time::Duration;

use reqwest::header::HeaderName;
use reqwest::Url;

use mbx_vocabulary::SecretRef;

use crate::error::ConfigError;
use crate::settings::{self, Settings};

/// The send timeout (connect + request + response), unless `timeout` says otherwise.
pub const HTTP_SEND_TIMEOUT_DEFAULT_MS: u64 = 30_000;
/// The shortest `timeout` an operator may set.
pub const HTTP_SEND_TIMEOUT_MIN_MS: u64 = 10;
/// The longest `timeout` an operator may set.
pub const HTTP_SEND_TIMEOUT_MAX_MS: u64 = 600_000;
/// Extra headers (`header.<Name>` settings) per port.
pub const HTTP_SEND_HEADERS_MAX: usize = 32;
/// The prefix of settings that map a context property to a request header.
pub const HTTP_HEADER_SETTING_PREFIX: &str = "header.";

const SEND_EXAMPLE: &str = "https://partner.example/orders";
const RECEIVE_EXAMPLE: &str = "http:///orders";

/// Headers the adapter sets itself; `header.<Name>` may not override them.
const RESERVED_HEADERS: &[&str] = &[
    "idempotency-key",
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "mbx-sequence",
    "mbx-epoch",
];

/// The request method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Post,
    Put,
}

impl HttpMethod {
    pub fn as_reqwest(self) -> reqwest::Method {
        match self {
            HttpMethod::Post => reqwest::Method::POST,
            HttpMethod::Put => reqwest::Method::PUT,
        }
    }
}

/// A validated HTTP send address and settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSendConfig {
    /// The URL requested (http or https, with a host).
    pub url: Url,
    /// `method`: `POST` (default) or `PUT`.
    pub method: HttpMethod,
    /// `timeout`: the whole request, from connecting to the end of the response, e.g.
    /// `30s` (default) or `500ms`. On an ordered port it must stay below the lease margin.
    pub timeout: Duration,
    /// `header.<Name>=<property>`: send the message's context property as header `Name`
    /// (omitted when the message does not have the property). Values pass the same
    /// validating constructor as every header: CR, LF and other control characters make
    /// the message fail non-retryably, and nothing is sent.
    pub headers: Vec<(HeaderName, String)>,
    /// `reply_statuses=4xx` (solicit-response ports): a 4xx answer is the response,
    /// published as any other, instead of a non-retryable failure.
    pub reply_4xx: bool,
}

impl HttpSendConfig {
    pub fn parse(address: &str, settings: &Settings) -> Result<Self, ConfigError> {
        for key in settings.keys() {
            if !(key == "method"
                || key == "timeout"
                || key == REPLY_STATUSES
                || key == settings::COPY_PROPERTIES
                || key.starts_with(HTTP_HEADER_SETTING_PREFIX))
            {
                return Err(ConfigError::UnknownSetting {
                    adapter: "HTTP",
                    key: key.clone(),
                    known: HTTP_SEND_SETTINGS.join(", "),
                });
            }
        }
        let url = parse_send_url(address)?;
        let method = match settings
            .get("method")
            .map(|m| m.trim().to_ascii_uppercase())
        {
            None => HttpMethod::Post,
            Some(m) if m == "POST" => HttpMethod::Post,
            Some(m) if m == "PUT" => HttpMethod::Put,
            Some(m) => return Err(ConfigError::setting("method", &m, "expected POST or PUT")),
        };
        let timeout = settings::get_duration(
            settings,
            "timeout",
            Duration::from_millis(HTTP_SEND_TIMEOUT_DEFAULT_MS),
            Duration::from_millis(HTTP_SEND_TIMEOUT_MIN_MS),
            Duration::from_millis(HTTP_SEND_TIMEOUT_MAX_MS),
        )?;
        let reply_4xx =
            match settings.get(REPLY_STATUSES).map(|v| v.trim()) {
                None => false,
                Some("4xx") => true,
                Some(v) => return Err(ConfigError::setting(
                    REPLY_STATUSES,
                    v,
                    "expected 4xx (a 4xx answer is then published as the response, not a failure)",
                )),
            };
        settings::copy_properties(settings)?;
        let mut headers = Vec::new();
        for (key, property) in settings {
            let Some(name) = key.strip_prefix(HTTP_HEADER_SETTING_PREFIX) else {
                continue;
            };
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::setting(key, property, "not a valid header name"))?;
            if RESERVED_HEADERS.contains(&header.as_str()) {
                return Err(ConfigError::setting(
                    key,
                    property,
                    "this header is set by the adapter",
                ));
            }
            if property.is_empty() {
                return Err(ConfigError::setting(
                    key,
                    property,
                    "expected a property name, e.g. Order.Region",
                ));
            }
            headers.push((header, property.clone()));
        }
        if headers.len() > HTTP_SEND_HEADERS_MAX {
            return Err(ConfigError::setting(
                HTTP_HEADER_SETTING_PREFIX,
                &headers.len().to_string(),
                format!("at most {HTTP_SEND_HEADERS_MAX} header settings"),
            ));
        }
        Ok(Self {
            url,
            method,
            timeout,
            headers,
            reply_4xx,
        })
    }
}

fn parse_send_url(address: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(address)
        .map_err(|e| ConfigError::address(address, e.to_string(), SEND_EXAMPLE))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(ConfigError::address(
            address,
            "expected http:// or https://",
            SEND_EXAMPLE,
        ));
    }
    if !matches!(url.host_str(), Some(h) if !h.is_empty()) {
        return Err(ConfigError::address(
            address,
            "expected a host",
            SEND_EXAMPLE,
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::address(
            address,
            "credentials in the address are not allowed (they would be stored and shown)",
            SEND_EXAMPLE,
        ));
    }
    Ok(url)
}

/// The setting of a solicit-response port that publishes 4xx answers as responses.
pub const REPLY_STATUSES: &str = "reply_statuses";

/// The settings an HTTP send port accepts (`header.<Name>` for any header name;
/// `reply_statuses` and `copy_properties` on solicit-response ports only).
pub const HTTP_SEND_SETTINGS: &[&str] = &[
    "method",
    "timeout",
    "header.<Name>",
    REPLY_STATUSES,
    settings::COPY_PROPERTIES,
];

/// The settings an HTTP receive location accepts (`timeout` on two-way ports only).
pub const HTTP_RECEIVE_SETTINGS: &[&str] = &["bearer_token", "timeout"];

/// How long a two-way receive holds its client for the response, unless `timeout` says
/// otherwise; then 504.
pub const HTTP_TWO_WAY_TIMEOUT_DEFAULT_MS: u64 = 30_000;
/// The shortest and longest `timeout` of a two-way receive.
pub const HTTP_TWO_WAY_TIMEOUT_MIN_MS: u64 = 100;
pub const HTTP_TWO_WAY_TIMEOUT_MAX_MS: u64 = 600_000;

/// A validated HTTP receive address and settings: `http:///path` (empty authority = this
/// host's listener) or `https:///path` (the listener with TLS, `mbx-host --tls-cert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReceiveConfig {
    /// The path served, e.g. `/orders`.
    pub path: String,
    /// `https:///…`: served only over TLS.
    pub tls: bool,
    /// `bearer_token`: requests must carry `Authorization: Bearer <token>`; a secret, so
    /// only a reference (`env:NAME`, `file:PATH`) is accepted.
    pub bearer_token: Option<SecretRef>,
    /// `timeout` (two-way ports): how long a client is held for its response, e.g. `30s`
    /// (default); then it gets 504 and the request stays traceable.
    pub timeout: Duration,
}

impl HttpReceiveConfig {
    pub fn parse(address: &str, settings: &Settings) -> Result<Self, ConfigError> {
        settings::check_known("HTTP", settings, HTTP_RECEIVE_SETTINGS)?;
        let (tls, path) = if let Some(p) = address.strip_prefix("http://") {
            (false, p)
        } else if let Some(p) = address.strip_prefix("https://") {
            (true, p)
        } else {
            return Err(ConfigError::address(
                address,
                "expected http:///path",
                RECEIVE_EXAMPLE,
            ));
        };
        if !path.starts_with('/') {
            return Err(ConfigError::address(
                address,
                "expected an empty authority (three slashes): the host's own listener serves it",
                RECEIVE_EXAMPLE,
            ));
        }
        if path.len() < 2
            || path.contains(['?', '#'])
            || path.chars().any(|c| c.is_control() || c == ' ')
        {
            return Err(ConfigError::address(
                address,
                "expected a plain path such as /orders",
                RECEIVE_EXAMPLE,
            ));
        }
        let bearer_token = settings
            .get("bearer_token")
            .map(|r| SecretRef::parse("bearer_token", r))
            .transpose()
            .map_err(|problem| ConfigError::Secret { problem })?;
        let timeout = settings::get_duration(
            settings,
            "timeout",
            Duration::from_millis(HTTP_TWO_WAY_TIMEOUT_DEFAULT_MS),
            Duration::from_millis(HTTP_TWO_WAY_TIMEOUT_MIN_MS),
            Duration::from_millis(HTTP_TWO_WAY_TIMEOUT_MAX_MS),
        )?;
        Ok(Self {
            path: path.to_owned(),
            tls,
            bearer_token,
            timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings_from;

    #[test]
    fn send_addresses_and_settings_are_checked() {
        let c = HttpSendConfig::parse("http://127.0.0.1:8080/in", &Settings::new()).unwrap();
        assert_eq!(c.method, HttpMethod::Post);
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert!(HttpSendConfig::parse("ftp://x/y", &Settings::new()).is_err());
        assert!(HttpSendConfig::parse("http://user:pw@x/y", &Settings::new()).is_err());
        let s = settings_from([
            ("method", "put"),
            ("timeout", "250ms"),
            ("header.X-Region", "Order.Region"),
        ]);
        let c = HttpSendConfig::parse("https://x/y", &s).unwrap();
        assert_eq!(c.method, HttpMethod::Put);
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.headers.len(), 1);
        let s = settings_from([("header.Idempotency-Key", "Order.Id")]);
        assert!(HttpSendConfig::parse("https://x/y", &s).is_err());
        let s = settings_from([("verb", "GET")]);
        assert!(HttpSendConfig::parse("https://x/y", &s).is_err());
        let s = settings_from([
            ("reply_statuses", "4xx"),
            ("copy_properties", "Order.Id, A.B"),
        ]);
        assert!(HttpSendConfig::parse("https://x/y", &s).unwrap().reply_4xx);
        let s = settings_from([("reply_statuses", "5xx")]);
        assert!(HttpSendConfig::parse("https://x/y", &s).is_err());
        let s = settings_from([("copy_properties", "Order")]);
        assert!(HttpSendConfig::parse("https://x/y", &s).is_err());
    }

    #[test]
    fn receive_addresses_name_a_path_on_the_host_listener() {
        let parse = |a: &str| HttpReceiveConfig::parse(a, &Settings::new());
        let c = parse("http:///orders").unwrap();
        assert_eq!((c.path.as_str(), c.tls), ("/orders", false));
        assert!(parse("https:///secure").unwrap().tls);
        assert!(parse("http://example.com/orders").is_err());
        assert!(parse("http:///").is_err());
        assert!(parse("http:///a?b").is_err());
    }

    #[test]
    fn a_bearer_token_is_a_reference_never_the_secret() {
        let with = |v: &str| {
            HttpReceiveConfig::parse("http:///orders", &settings_from([("bearer_token", v)]))
        };
        assert_eq!(
            with("env:ORDERS_TOKEN").unwrap().bearer_token,
            Some(SecretRef::Env("ORDERS_TOKEN".into()))
        );
        let err = with("hunter2").unwrap_err().to_string();
        assert!(
            err.contains("bearer_token") && !err.contains("hunter2"),
            "{err}"
        );
        assert!(HttpReceiveConfig::parse("http:///o", &settings_from([("bogus", "1")])).is_err());
    }
}
