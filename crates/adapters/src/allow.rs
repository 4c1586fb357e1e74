//! The allow-list of a dynamic send port: which addresses a message's
//! `mbx.OutboundTransportLocation` may name.
//!
//! Prefixes and addresses are compared parsed, never as strings, per scheme:
//!
//! - `file:///data/out/` names a folder (with or without the last `/`): an address is
//!   allowed when the folder it writes into is that folder or one below it, segment by
//!   segment (`/data/out` does not allow `/data/outside`). `.`, `..`, `%`, `\`, a query
//!   or a fragment in a prefix, and `.`/`..` (also percent-encoded) or `%` in an
//!   address's folder are refused. At send time [`AllowList::permits_on_disk`] resolves
//!   the address's folder (and a fixed file name that is a symlink) on disk: a symlink
//!   leading out of the allowed folder is refused.
//! - `http(s)://host[:port]/path`: scheme, host (case-insensitive, IPv6 normalised) and
//!   port (the scheme's default made explicit) equal; the address's path (as sent: `..`
//!   and `%2e%2e` resolved) under the prefix's path on a segment boundary, segments
//!   compared percent-decoded. No user in either; a decoded `/` or `\` inside an address's
//!   segment is refused (servers differ on it). A prefix with a query or fragment is
//!   refused; an address may carry a query.
//! - `amqp(s)://[user@]host[:port]/vhost[?queue=q|exchange=x&routing_key=k]`: scheme, user,
//!   host, port and virtual host equal; each query pair the prefix gives must be the
//!   address's (a prefix without a query allows every exchange and queue of that vhost).
//! - `mqtt(s)://[user@]host[:port]/topic`: scheme, user, host and port equal; the topic
//!   under the prefix's topic on a level boundary (decoded).
//! - `mailto:someone@partner.example` allows that one recipient (domain case-insensitive),
//!   `mailto:@partner.example` every recipient at exactly that domain (not its
//!   subdomains); every recipient of an address must be allowed.
//! - `mbx://LINK/` allows every receive port through that link, `mbx://LINK/PORT` one.
//! - `null:…` allows exactly that address.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use reqwest::Url;

use crate::error::{ConfigError, RegistryError};
use crate::registry::Scheme;
use crate::settings::Settings;

/// A prefix refused at creation: ambiguous, malformed, or of a scheme no dynamic port can
/// compare.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{prefix}' {problem} (example: --allow-address {example})")]
pub struct BadPrefix {
    pub prefix: String,
    pub problem: String,
    pub example: &'static str,
}

const FILE_EXAMPLE: &str = "file:///data/out/";
const WEB_EXAMPLE: &str = "https://partner.example/api/";
const AMQP_EXAMPLE: &str = "amqp://broker.example/%2f?exchange=orders";
const MQTT_EXAMPLE: &str = "mqtt://broker.example/plant/";
const MAIL_EXAMPLE: &str = "mailto:@partner.example";
const GROUP_EXAMPLE: &str = "mbx://managers/";
const NULL_EXAMPLE: &str = "null:discard";

/// Who is connected to: the parts of an address that must be equal.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: Scheme,
    /// Empty without a user.
    user: String,
    /// Lower case; an IPv6 address in its normal (compressed) form.
    host: String,
    /// Explicit: the scheme's default when the address names none.
    port: u16,
}

/// A mail recipient as compared: the local part exactly, the domain in lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Recipient {
    local: String,
    domain: String,
}

/// A prefix or an address, parsed for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// The folder's segments (a prefix: the allowed folder; an address: the folder the
    /// file is written into), and an address's file name.
    File {
        folder: Vec<String>,
        name: Option<String>,
    },
    /// The path's segments, percent-decoded, without trailing empty segments.
    Web {
        origin: Origin,
        path: Vec<Vec<u8>>,
    },
    Amqp {
        origin: Origin,
        vhost: String,
        query: Vec<(String, String)>,
    },
    /// The topic's levels, without trailing empty levels.
    Mqtt {
        origin: Origin,
        topic: Vec<String>,
    },
    /// A prefix: one recipient, or with an empty local part every one at the domain.
    Mail(Vec<Recipient>),
    Group {
        link: String,
        port: Option<String>,
    },
    Null(String),
}

/// Checks one `--allow-address` prefix, as configuration does before anything is written.
pub fn check_prefix(prefix: &str) -> Result<(), BadPrefix> {
    parse_prefix(prefix).map(|_| ())
}

/// The parsed allow-list of one dynamic port.
#[derive(Debug, Clone)]
pub struct AllowList {
    prefixes: Vec<(String, Target)>,
    /// Prefixes stored before they were checked this strictly: they allow nothing.
    unusable: Vec<BadPrefix>,
}

impl AllowList {
    /// The allow-list of `prefixes`; a prefix that does not parse allows nothing (it is
    /// named in every refusal).
    pub fn new(prefixes: &[String]) -> Self {
        let mut list = AllowList {
            prefixes: Vec::new(),
            unusable: Vec::new(),
        };
        for p in prefixes {
            match parse_prefix(p) {
                Ok(t) => list.prefixes.push((p.clone(), t)),
                Err(e) => list.unusable.push(e),
            }
        }
        list
    }

    /// Whether `address` is allowed by a prefix, compared parsed (no file system access);
    /// the error says why not.
    pub fn permits(&self, address: &str) -> Result<(), String> {
        let target = parse_address(address).map_err(|p| self.refusal(&p))?;
        let allowed = match &target {
            // every recipient by some prefix
            Target::Mail(recipients) => recipients.iter().all(|r| {
                self.prefixes.iter().any(|(_, p)| match p {
                    Target::Mail(allowed) => allowed.iter().all(|a| mail_covers(a, r)),
                    _ => false,
                })
            }),
            _ => self.prefixes.iter().any(|(_, p)| covers(p, &target)),
        };
        if allowed {
            Ok(())
        } else {
            Err(self.refusal("it matches none"))
        }
    }

    /// For a `file:` address allowed by [`AllowList::permits`]: resolves its folder on disk
    /// (symlinks followed; a folder not there yet by its nearest existing parent) and
    /// refuses it unless it is still inside an allowed folder resolved the same way; a
    /// fixed file name that is a symlink must resolve inside too. Other schemes pass.
    pub async fn permits_on_disk(&self, address: &str) -> Result<(), String> {
        let Ok(Target::File { folder, name }) = parse_address(address) else {
            return Ok(());
        };
        let allowed: Vec<PathBuf> = self
            .prefixes
            .iter()
            .filter_map(|(_, p)| match p {
                Target::File { folder: f, .. } if folder.starts_with(f) => Some(to_path(f)),
                _ => None,
            })
            .collect();
        let folder = to_path(&folder);
        // a fixed name (no macro) can be checked now; a macro's value is one component
        let fixed = name.filter(|n| !n.contains('%')).map(|n| folder.join(n));
        let resolved = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let mut allowed_real = Vec::new();
            for a in &allowed {
                allowed_real.push(resolve(a)?);
            }
            let folder_real = resolve(&folder)?;
            let file_real = match fixed {
                Some(f) if std::fs::symlink_metadata(&f).is_ok_and(|m| m.is_symlink()) => {
                    // a dangling link would be created where it points: refused below
                    Some(std::fs::canonicalize(&f).ok())
                }
                _ => None,
            };
            Ok((allowed_real, folder_real, file_real))
        })
        .await
        .map_err(|e| format!("resolving the address's folder failed: {e}"))?
        .map_err(|e| self.refusal(&format!("its folder cannot be resolved: {e}")))?;
        let (allowed_real, folder_real, file_real) = resolved;
        let inside = |p: &Path| allowed_real.iter().any(|a| p.starts_with(a));
        if !inside(&folder_real) {
            return Err(self.refusal(&format!(
                "its folder resolves to {} (a symlink leads out of the allowed folder)",
                folder_real.display()
            )));
        }
        match file_real {
            Some(Some(f)) if inside(&f) => Ok(()),
            Some(Some(f)) => Err(self.refusal(&format!(
                "its file is a symlink to {} outside the allowed folder",
                f.display()
            ))),
            Some(None) => Err(self.refusal("its file is a symlink that leads nowhere")),
            None => Ok(()),
        }
    }

    /// Why an address is refused, with the list (and the prefixes that allow nothing).
    fn refusal(&self, problem: &str) -> String {
        let mut s = format!(
            "{problem}; allowed: {}",
            self.prefixes
                .iter()
                .map(|(p, _)| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !self.unusable.is_empty() {
            s.push_str(&format!(
                "; ignored, not comparable: {}",
                self.unusable
                    .iter()
                    .map(|u| u.prefix.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        s
    }
}

/// A folder's segments as an absolute path.
fn to_path(segments: &[String]) -> PathBuf {
    let mut p = PathBuf::from("/");
    p.extend(segments);
    p
}

/// `path` with symlinks resolved: its nearest existing ancestor canonicalized and the
/// rest (which does not exist, so holds no symlink) appended.
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(&existing) {
            Ok(mut real) => {
                real.extend(rest.iter().rev());
                return Ok(real);
            }
            // a dangling symlink is there, leading nowhere: not resolvable
            Err(e)
                if e.kind() == ErrorKind::NotFound
                    && std::fs::symlink_metadata(&existing).is_err() =>
            {
                let Some(last) = existing.file_name().map(|n| n.to_owned()) else {
                    return Err(e);
                };
                rest.push(last);
                if !existing.pop() {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether prefix `p` allows address `a` (both parsed).
fn covers(p: &Target, a: &Target) -> bool {
    match (p, a) {
        (Target::File { folder: pf, .. }, Target::File { folder: af, .. }) => af.starts_with(pf),
        (
            Target::Web {
                origin: po,
                path: pp,
            },
            Target::Web {
                origin: ao,
                path: ap,
            },
        ) => po == ao && ap.starts_with(pp),
        (
            Target::Amqp {
                origin: po,
                vhost: pv,
                query: pq,
            },
            Target::Amqp {
                origin: ao,
                vhost: av,
                query: aq,
            },
        ) => {
            po == ao
                && pv == av
                && pq.iter().all(|(k, v)| {
                    let given: Vec<&String> = aq
                        .iter()
                        .filter(|(ak, _)| ak == k)
                        .map(|(_, v)| v)
                        .collect();
                    !given.is_empty() && given.iter().all(|g| *g == v)
                })
        }
        (
            Target::Mqtt {
                origin: po,
                topic: pt,
            },
            Target::Mqtt {
                origin: ao,
                topic: at,
            },
        ) => po == ao && at.starts_with(pt),
        (Target::Group { link: pl, port: pp }, Target::Group { link: al, port: ap }) => {
            pl == al && (pp.is_none() || pp == ap)
        }
        (Target::Null(p), Target::Null(a)) => p == a,
        _ => false,
    }
}

fn mail_covers(allowed: &Recipient, r: &Recipient) -> bool {
    allowed.domain == r.domain && (allowed.local.is_empty() || allowed.local == r.local)
}

// ------------------------------------------------------------------------------------------
// Parsing

fn parse_prefix(prefix: &str) -> Result<Target, BadPrefix> {
    let shown = redacted(prefix);
    let scheme = Scheme::of_address(prefix).map_err(|e| BadPrefix {
        prefix: shown.clone(),
        problem: match e {
            RegistryError::UnknownScheme { scheme, known, .. } => {
                format!("has scheme '{scheme}' that no adapter sends to (known: {known})")
            }
            _ => "has no scheme".to_owned(),
        },
        example: WEB_EXAMPLE,
    })?;
    let example = prefix_example(scheme);
    let bad = |problem: String| BadPrefix {
        prefix: shown.clone(),
        problem,
        example,
    };
    if prefix.chars().any(char::is_control) {
        return Err(bad("holds a control character".into()));
    }
    match scheme {
        Scheme::File => file_prefix(prefix),
        Scheme::Http | Scheme::Https => web_prefix(prefix),
        Scheme::Amqp | Scheme::Amqps => amqp_prefix(prefix, example),
        Scheme::Mqtt | Scheme::Mqtts => {
            mqtt(prefix, example).map_err(|p| format!("is refused: {p}"))
        }
        Scheme::Mailto => mail_prefix(prefix),
        Scheme::Mbx => mbx_vocabulary::GroupAddress::parse_prefix(prefix)
            .map(|(link, port)| Target::Group { link, port }),
        Scheme::Null => Ok(Target::Null(prefix.to_owned())),
    }
    .map_err(bad)
}

/// The example a refused prefix of `scheme` is shown with.
fn prefix_example(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::File => FILE_EXAMPLE,
        Scheme::Http | Scheme::Https => WEB_EXAMPLE,
        Scheme::Amqp | Scheme::Amqps => AMQP_EXAMPLE,
        Scheme::Mqtt | Scheme::Mqtts => MQTT_EXAMPLE,
        Scheme::Mailto => MAIL_EXAMPLE,
        Scheme::Mbx => GROUP_EXAMPLE,
        Scheme::Null => NULL_EXAMPLE,
    }
}

/// A FILE prefix: a folder, compared as written (no query, escape, `.` or `..`).
fn file_prefix(prefix: &str) -> Result<Target, String> {
    let path = file_path(prefix)?;
    for c in ['?', '#', '%', '\\'] {
        if path.contains(c) {
            return Err(format!(
                "holds '{c}': a folder prefix is compared as written, without a query, fragment, escape or backslash"
            ));
        }
    }
    let folder = segments(path);
    if folder.iter().any(|s| s == "." || s == "..") {
        return Err("holds a '.' or '..' segment: name the folder itself".into());
    }
    Ok(Target::File { folder, name: None })
}

/// An HTTP(S) prefix: a host and a path, without `.`/`..` segments, query or fragment.
fn web_prefix(prefix: &str) -> Result<Target, String> {
    // a URL parser takes `https:///api/` as the host `api`
    let authority = prefix.split_once("://").map_or("", |(_, r)| r);
    if authority.is_empty() || authority.starts_with(['/', '\\']) {
        return Err("has no host".into());
    }
    if raw_has_dot_segment(prefix) {
        return Err("holds a '.' or '..' segment: name the path itself".into());
    }
    let url = Url::parse(prefix).map_err(|e| format!("is not a URL: {e}"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err("has a query or fragment: a prefix is a host and a path".into());
    }
    web(&url)
}

/// An AMQP prefix: no fragment; its query may give queue, exchange or routing_key.
fn amqp_prefix(prefix: &str, example: &'static str) -> Result<Target, String> {
    if prefix.contains('#') {
        return Err("has a fragment".into());
    }
    let target = amqp(prefix, example).map_err(|p| format!("is refused: {p}"))?;
    if let Target::Amqp { query, .. } = &target {
        if let Some((k, _)) = query
            .iter()
            .find(|(k, _)| !matches!(k.as_str(), "queue" | "exchange" | "routing_key"))
        {
            return Err(format!(
                "has the query key '{k}': a prefix may give queue, exchange or routing_key"
            ));
        }
    }
    Ok(target)
}

/// A `mailto:` prefix: one recipient, or a whole domain (`@domain`).
fn mail_prefix(prefix: &str) -> Result<Target, String> {
    let recipients = mail(prefix, true)?;
    if recipients.len() != 1 {
        return Err("names several recipients: give one per --allow-address".into());
    }
    Ok(Target::Mail(recipients))
}

/// `address` with a password in it replaced by `***` (a refusal never repeats a secret).
fn redacted(address: &str) -> String {
    match Url::parse(address) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => address.to_owned(),
    }
}

/// Parses an address of a message; the error says why it cannot be compared.
fn parse_address(address: &str) -> Result<Target, String> {
    let scheme = Scheme::of_address(address).map_err(|e| e.to_string())?;
    if address.chars().any(char::is_control) {
        return Err("the address holds a control character".into());
    }
    match scheme {
        Scheme::File => {
            let path = file_path(address)?;
            if path.contains('\\') {
                return Err("the address holds a backslash".into());
            }
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
            let folder = segments(dir);
            for s in &folder {
                if s == "." || s == ".." || s.contains('%') {
                    return Err(format!(
                        "its folder holds the segment '{s}' ('.', '..' and escapes are refused)"
                    ));
                }
            }
            let decoded = lenient_decode(name);
            if name.is_empty() || decoded == b"." || decoded == b".." {
                return Err(format!("its file name '{name}' is not a file name"));
            }
            Ok(Target::File {
                folder,
                name: Some(name.to_owned()),
            })
        }
        Scheme::Http | Scheme::Https => {
            let url = Url::parse(address).map_err(|e| format!("it is not a URL: {e}"))?;
            let target = web(&url)?;
            if let Target::Web { path, .. } = &target {
                if path
                    .iter()
                    .any(|s| s.contains(&b'/') || s.contains(&b'\\') || s == b"." || s == b"..")
                {
                    return Err(
                        "its path holds an encoded '/', '\\' or dot segment (ambiguous)".into(),
                    );
                }
            }
            Ok(target)
        }
        Scheme::Amqp | Scheme::Amqps => amqp(address, AMQP_EXAMPLE),
        Scheme::Mqtt | Scheme::Mqtts => mqtt(address, MQTT_EXAMPLE),
        Scheme::Mailto => mail(address, false).map(Target::Mail),
        Scheme::Mbx => {
            let a = mbx_vocabulary::GroupAddress::parse(address)?;
            Ok(Target::Group {
                link: a.link,
                port: Some(a.receive_port),
            })
        }
        Scheme::Null => Ok(Target::Null(address.to_owned())),
    }
}

/// The path of `file:///path` (an empty authority, as the FILE adapter takes it).
fn file_path(address: &str) -> Result<&str, String> {
    address
        .split_at_checked("file://".len())
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("file://"))
        .map(|(_, path)| path)
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| "needs an absolute path with an empty authority (file:///…)".to_owned())
}

/// The non-empty segments of a `/`-separated path.
fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether the path of a URL as written has a `.` or `..` segment, also percent-encoded
/// (a URL parser resolves them silently, so a prefix with one means something else than
/// it says).
fn raw_has_dot_segment(address: &str) -> bool {
    let Some((_, rest)) = address.split_once("://") else {
        return false;
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let Some(start) = rest.find(['/', '\\']) else {
        return false;
    };
    rest[start..].split(['/', '\\']).any(|s| {
        let d = lenient_decode(s).to_ascii_lowercase();
        d == b"." || d == b".."
    })
}

/// Decodes `%XX` escapes; a `%` that starts none stays as it is.
fn lenient_decode(s: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(s).collect()
}

/// An HTTP(S) URL's origin and decoded path segments (no user allowed: the HTTP adapter
/// refuses credentials in an address).
fn web(url: &Url) -> Result<Target, String> {
    let scheme = if url.scheme() == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "has a user or password before the host: not allowed in an HTTP address".into(),
        );
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("has no host")?
        .to_ascii_lowercase();
    let port = url.port_or_known_default().ok_or("has no port")?;
    let mut path: Vec<Vec<u8>> = url
        .path_segments()
        .map(|s| s.map(lenient_decode).collect())
        .unwrap_or_default();
    while path.last().is_some_and(Vec::is_empty) {
        path.pop();
    }
    Ok(Target::Web {
        origin: Origin {
            scheme,
            user: String::new(),
            host,
            port,
        },
        path,
    })
}

/// The problem of a broker address refused by its adapter's parser.
fn problem(e: ConfigError) -> String {
    match e {
        ConfigError::BadAddress { problem, .. } => problem,
        other => other.to_string(),
    }
}

fn amqp(address: &str, example: &'static str) -> Result<Target, String> {
    let (endpoint, query) =
        crate::amqp::config::parse_address(address, &Settings::new(), example).map_err(problem)?;
    Ok(Target::Amqp {
        origin: Origin {
            scheme: if endpoint.tls {
                Scheme::Amqps
            } else {
                Scheme::Amqp
            },
            user: endpoint.user.unwrap_or_default(),
            host: endpoint.host.to_ascii_lowercase(),
            port: endpoint.port,
        },
        vhost: endpoint.vhost,
        query,
    })
}

fn mqtt(address: &str, example: &'static str) -> Result<Target, String> {
    let (endpoint, topic) =
        crate::mqtt::config::parse_address(address, &Settings::new(), example).map_err(problem)?;
    let mut topic: Vec<String> = topic.split('/').map(str::to_owned).collect();
    while topic.last().is_some_and(String::is_empty) {
        topic.pop();
    }
    Ok(Target::Mqtt {
        origin: Origin {
            scheme: if endpoint.tls {
                Scheme::Mqtts
            } else {
                Scheme::Mqtt
            },
            user: endpoint.user.unwrap_or_default(),
            host: endpoint.host.to_ascii_lowercase(),
            port: endpoint.port,
        },
        topic,
    })
}

/// The recipients of a `mailto:` address, decoded and split as the SMTP adapter does; a
/// prefix may name a whole domain as `@domain`.
fn mail(address: &str, prefix: bool) -> Result<Vec<Recipient>, String> {
    let rest = address
        .split_at_checked("mailto:".len())
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("mailto:"))
        .map(|(_, rest)| rest)
        .ok_or("is not mailto:ADDRESS")?;
    if rest.contains('?') {
        return Err("has headers (?…): a mailto: address names recipients only".into());
    }
    let decoded =
        crate::broker::percent_decode(rest).ok_or("is not valid percent-encoded UTF-8")?;
    if decoded.chars().any(char::is_control) {
        return Err("holds a control character".into());
    }
    decoded
        .split(',')
        .map(str::trim)
        .map(|r| {
            if prefix {
                if let Some(domain) = r.strip_prefix('@') {
                    if domain.is_empty() || domain.contains(['@', ' ']) {
                        return Err(format!("{r:?} is not @domain"));
                    }
                    return Ok(Recipient {
                        local: String::new(),
                        domain: domain.to_ascii_lowercase(),
                    });
                }
            }
            let a: lettre::Address = r
                .parse()
                .map_err(|e| format!("{r:?} is not a mail address: {e}"))?;
            Ok(Recipient {
                local: a.user().to_owned(),
                domain: a.domain().to_ascii_lowercase(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(prefixes: &[&str]) -> AllowList {
        for p in prefixes {
            check_prefix(p).unwrap_or_else(|e| panic!("prefix {p}: {e}"));
        }
        AllowList::new(&prefixes.iter().map(|p| p.to_string()).collect::<Vec<_>>())
    }

    fn allowed(prefix: &str, address: &str) -> bool {
        list(&[prefix]).permits(address).is_ok()
    }

    #[test]
    fn a_host_that_only_starts_like_the_allowed_one_is_refused() {
        let p = "https://partner.example";
        assert!(allowed(p, "https://partner.example/orders"));
        assert!(allowed(p, "https://PARTNER.example/orders"));
        assert!(!allowed(p, "https://partner.example.evil.net/"));
        assert!(!allowed(p, "https://partner.example.evil.net/orders"));
        assert!(!allowed(p, "https://partner.examplex/"));
        assert!(
            !allowed(p, "http://partner.example/orders"),
            "scheme differs"
        );
    }

    #[test]
    fn userinfo_is_refused_unless_the_prefix_has_it() {
        assert!(!allowed(
            "https://partner.example",
            "https://partner.example@evil.net/"
        ));
        assert!(!allowed(
            "https://partner.example/",
            "https://u@partner.example/"
        ));
        // brokers: the user is part of who is connected to
        let p = "amqp://mbx@broker.example/%2f";
        assert!(allowed(p, "amqp://mbx@broker.example/%2f?queue=q"));
        assert!(!allowed(p, "amqp://broker.example/%2f?queue=q"));
        assert!(!allowed(p, "amqp://other@broker.example/%2f?queue=q"));
        assert!(!allowed(
            "amqp://broker.example/%2f",
            "amqp://mbx@broker.example/%2f?queue=q"
        ));
        assert!(!allowed(
            "amqp://broker.example/%2f",
            "amqp://broker.example@evil.net/%2f?queue=q"
        ));
    }

    #[test]
    fn a_file_prefix_is_a_folder_not_a_string_prefix() {
        for p in ["file:///data/out", "file:///data/out/"] {
            assert!(allowed(p, "file:///data/out/x.xml"), "{p}");
            assert!(allowed(p, "file:///data/out/sub/%MessageID%.xml"), "{p}");
            assert!(!allowed(p, "file:///data/outside/x.xml"), "{p}");
            assert!(
                !allowed(p, "file:///data/out"),
                "{p}: a file named out beside it"
            );
            assert!(!allowed(p, "file:///data/x.xml"), "{p}");
            assert!(!allowed(p, "file:///data/out/../x.xml"), "{p}");
            assert!(!allowed(p, "file:///data/out/./x.xml"), "{p}");
            assert!(!allowed(p, "file:///data/out/.."), "{p}");
            assert!(!allowed(p, "file://host/data/out/x.xml"), "{p}");
        }
    }

    #[test]
    fn percent_encoded_dot_segments_do_not_escape() {
        let f = "file:///data/out";
        assert!(!allowed(f, "file:///data/out/%2e%2e/etc/x"));
        assert!(!allowed(f, "file:///data/out/%2E%2E/etc/x"));
        assert!(!allowed(f, "file:///data/out/%2e%2e"));
        let w = "https://partner.example/api/";
        assert!(allowed(w, "https://partner.example/api/orders"));
        assert!(allowed(w, "https://partner.example/api"));
        assert!(
            allowed(w, "https://partner.example/%61pi/orders"),
            "escapes decoded"
        );
        assert!(!allowed(w, "https://partner.example/api/%2e%2e/admin"));
        assert!(!allowed(w, "https://partner.example/api/.%2E/admin"));
        assert!(!allowed(w, "https://partner.example/api/../admin"));
        assert!(!allowed(w, "https://partner.example/api%2f..%2fadmin"));
        assert!(!allowed(
            w,
            "https://partner.example/api/x%2f..%2f..%2fadmin"
        ));
        assert!(!allowed(w, "https://partner.example/apix/orders"));
        assert!(!allowed(w, "https://partner.example/admin"));
    }

    #[test]
    fn ipv6_hosts_compare_normalised() {
        let p = "http://[::1]:8080/";
        assert!(allowed(p, "http://[::1]:8080/orders"));
        assert!(allowed(p, "http://[0:0::1]:8080/orders"));
        assert!(allowed(
            p,
            "http://[0000:0000:0000:0000:0000:0000:0000:0001]:8080/x"
        ));
        assert!(!allowed(p, "http://[::1]/orders"), "port 80");
        assert!(!allowed(p, "http://[::2]:8080/orders"));
        assert!(allowed("http://[0:0::1]:8080", "http://[::1]:8080/orders"));
        assert!(allowed(
            "amqp://[0:0::1]/%2f",
            "amqp://[::1]:5672/%2f?queue=orders"
        ));
    }

    #[test]
    fn the_default_port_is_explicit_and_another_port_is_refused() {
        let p = "https://partner.example/";
        assert!(allowed(p, "https://partner.example:443/orders"));
        assert!(!allowed(p, "https://partner.example:8443/orders"));
        assert!(allowed(
            "https://partner.example:443/",
            "https://partner.example/o"
        ));
        assert!(!allowed(
            "http://partner.example/",
            "http://partner.example:8080/o"
        ));
        let a = "amqp://broker.example/%2f";
        assert!(allowed(a, "amqp://broker.example:5672/%2f?queue=q"));
        assert!(!allowed(a, "amqp://broker.example:5673/%2f?queue=q"));
        assert!(!allowed(a, "amqps://broker.example/%2f?queue=q"));
        assert!(allowed(
            "mqtts://broker.example:8883/plant",
            "mqtts://broker.example/plant/a"
        ));
    }

    #[test]
    fn amqp_compares_the_vhost_exactly_and_the_prefixs_query_pairs() {
        let any = "amqp://Broker.example/%2f";
        assert!(allowed(any, "amqp://broker.example/%2f?queue=orders"));
        assert!(allowed(
            any,
            "amqp://broker.example/%2f?exchange=x&routing_key=k"
        ));
        assert!(
            allowed(any, "amqp://broker.example?queue=orders"),
            "vhost / by default"
        );
        assert!(!allowed(any, "amqp://broker.example/prod?queue=orders"));
        let ex = "amqp://broker.example/%2f?exchange=orders";
        assert!(allowed(
            ex,
            "amqp://broker.example/%2f?exchange=orders&routing_key=eu"
        ));
        assert!(!allowed(
            ex,
            "amqp://broker.example/%2f?exchange=ordersx&routing_key=eu"
        ));
        assert!(!allowed(ex, "amqp://broker.example/%2f?queue=orders"));
        assert!(!allowed(
            ex,
            "amqp://broker.example/%2f?exchange=orders&exchange=other"
        ));
    }

    #[test]
    fn mqtt_topics_compare_by_level() {
        let p = "mqtt://broker.example/plant/";
        assert!(allowed(p, "mqtt://broker.example/plant/a/temperature"));
        assert!(!allowed(p, "mqtt://broker.example/plantx/a"));
        assert!(!allowed(p, "mqtt://broker.example/other"));
    }

    #[test]
    fn mailto_compares_whole_recipients_or_an_exact_domain() {
        let one = "mailto:orders@partner.example";
        assert!(allowed(one, "mailto:orders@PARTNER.example"));
        assert!(!allowed(one, "mailto:other@partner.example"));
        assert!(!allowed(one, "mailto:orders@partner.example.evil.net"));
        assert!(!allowed(one, "mailto:orders@partner.example,x@evil.net"));
        assert!(!allowed(one, "mailto:orders@partner.example%2cx@evil.net"));
        let domain = "mailto:@partner.example";
        assert!(allowed(
            domain,
            "mailto:a@partner.example,b@partner.example"
        ));
        assert!(!allowed(domain, "mailto:a@sub.partner.example"));
        assert!(!allowed(domain, "mailto:a@evilpartner.example"));
        assert!(!allowed(domain, "mailto:a@partner.example?cc=x@evil.net"));
        // recipients may each be allowed by a different prefix
        let l = list(&["mailto:a@one.example", "mailto:@two.example"]);
        assert!(l.permits("mailto:a@one.example,z@two.example").is_ok());
        assert!(l.permits("mailto:b@one.example,z@two.example").is_err());
    }

    #[test]
    fn group_and_null_addresses_compare_exactly() {
        assert!(allowed("mbx://managers/", "mbx://managers/from-broker"));
        assert!(!allowed("mbx://managers/", "mbx://managersx/from-broker"));
        assert!(allowed("mbx://managers/in", "mbx://managers/in"));
        assert!(!allowed("mbx://managers/in", "mbx://managers/inx"));
        assert!(allowed("null:discard", "null:discard"));
        assert!(!allowed("null:discard", "null:discard2"));
        assert!(!allowed("null:discard", "file:///discard"));
    }

    #[test]
    fn ambiguous_or_malformed_prefixes_are_refused_with_an_example() {
        for (bad, says) in [
            ("https://partner.example/?x=1", "query"),
            ("https://partner.example/#top", "fragment"),
            ("https:///api/", "host"),
            ("https://u@partner.example/", "user"),
            ("https://partner.example/api/../admin", "'..'"),
            ("https://partner.example/api/%2e%2e/admin", "'..'"),
            ("file://data/out/", "absolute"),
            ("file:data/out", "absolute"),
            ("file:///data/../out/", "'..'"),
            ("file:///data/out?x", "'?'"),
            ("file:///data/%2e%2e/", "'%'"),
            ("gopher://partner.example/", "scheme"),
            ("partner.example", "scheme"),
            ("amqp://u:secret@broker.example/%2f", "password"),
            ("mailto:a@one.example,b@two.example", "one per"),
            ("mailto:@", "@domain"),
            ("mbx:///in", "group link"),
            ("amqp://broker.example/%2f?queue=q&durable=1", "query key"),
        ] {
            let e = check_prefix(bad).expect_err(bad);
            let line = e.to_string();
            assert!(line.contains(says), "{bad}: {line}");
            assert!(line.contains("(example: --allow-address "), "{bad}: {line}");
            assert!(!line.contains('\n'), "{line}");
            assert!(!line.contains("secret"), "{line}");
        }
    }

    #[test]
    fn a_stored_prefix_that_no_longer_parses_allows_nothing_and_is_named() {
        let l = AllowList::new(&["https://partner.example/?x=1".to_owned()]);
        let e = l
            .permits("https://partner.example/?x=1")
            .expect_err("refused");
        assert!(
            e.contains("ignored, not comparable: https://partner.example/?x=1"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_symlink_out_of_the_allowed_folder_is_refused_on_disk() {
        let root = tempfile::tempdir().unwrap();
        let allowed_dir = root.path().join("out");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(allowed_dir.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, allowed_dir.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.join("f.txt"), allowed_dir.join("f.txt")).unwrap();
        let l = list(&[&format!("file://{}/", allowed_dir.display())]);
        let at = |rest: &str| format!("file://{}/{rest}", allowed_dir.display());
        for ok in ["x.xml", "sub/%MessageID%.xml", "missing/x.xml"] {
            l.permits(&at(ok)).expect(ok);
            l.permits_on_disk(&at(ok)).await.expect(ok);
        }
        for bad in ["link/x.xml", "link/deeper/x.xml", "f.txt"] {
            l.permits(&at(bad)).expect("lexically inside");
            let e = l.permits_on_disk(&at(bad)).await.expect_err(bad);
            assert!(e.contains("symlink"), "{bad}: {e}");
        }
    }
}
