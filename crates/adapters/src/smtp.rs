//! The SMTP send adapter (`mailto:`), on lettre.
//!
//! `mailto:orders@example.org[,audit@example.org]` with `--set smtp_server=HOST[:PORT]`,
//! `from=…` and optionally `subject=…` (macros `%MessageID%`, `%SendPortName%` and
//! `%Ns.Name%` for a context property), `tls=starttls|implicit|none`, `user=…`,
//! `password=env:NAME|file:PATH`, `timeout=30s`. A `text/*` body is the mail's text; any
//! other is attached (`<MessageID>.<ext>`). The `Message-ID` is
//! `<MessageId.SendPortName@mbx>`, the same for a resend, so a receiver can drop it.
//! A header value with CR, LF or another control character — from a macro, a property or
//! a dynamic address — is a non-retryable failure: nothing is sent.

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, Mailboxes, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use mbx_vocabulary::SecretRef;

use crate::error::ConfigError;
use crate::macros::{MacroValues, Template, SMTP_MACROS};
use crate::settings::{self, Settings};
use crate::{report, Health, OutboundMessage, Outcome, OutcomeSender, SendAdapter};

pub const SEND_EXAMPLE: &str = "mailto:orders@example.org";
pub const SMTP_SEND_SETTINGS: &[&str] = &[
    "smtp_server",
    "from",
    "subject",
    "tls",
    "user",
    "password",
    "timeout",
    "ca_file",
];
const DEFAULT_SUBJECT: &str = "mbx message %MessageID%";

/// How the connection to the server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// STARTTLS, required (default; port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// Cleartext (port 25): a relay on loopback or a trusted network only.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpSendConfig {
    pub to: Vec<String>,
    pub server: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub from: Template,
    pub subject: Template,
    pub user: Option<String>,
    pub password: Option<SecretRef>,
    pub timeout: Duration,
    /// `ca_file`: a private CA (PEM) trusted for the server's certificate.
    pub ca_file: Option<String>,
}

/// Refuses a header value with CR, LF or another control character (header injection).
fn header_safe(what: &str, value: &str) -> Result<(), String> {
    if value.chars().any(|c| c.is_control()) {
        return Err(format!(
            "{what} holds a line break or another control character (header injection); not sent"
        ));
    }
    Ok(())
}

/// Parses a template's macros ([`SMTP_MACROS`]: `%MessageID%`, `%SendPortName%` or a
/// property name) and refuses a line break in its text.
fn parse_template(key: &str, template: &str) -> Result<Template, ConfigError> {
    let parsed = Template::parse(template, SMTP_MACROS)
        .map_err(|e| ConfigError::setting(key, template, e.to_string()))?;
    header_safe(key, template).map_err(|p| ConfigError::setting(key, template, p))?;
    Ok(parsed)
}

/// Fills a template's macros from the message; a property it lacks is an error.
fn expand(template: &Template, m: &OutboundMessage) -> Result<String, String> {
    template
        .expand(&MacroValues::of(m), |_| Ok(()))
        .map_err(|e| e.to_string())
}

impl SmtpSendConfig {
    pub fn parse(address: &str, settings: &Settings) -> Result<Self, ConfigError> {
        settings::check_known("SMTP", settings, SMTP_SEND_SETTINGS)?;
        let to = parse_recipients(address)?;
        let server_raw = settings.get("smtp_server").ok_or_else(|| {
            ConfigError::setting(
                "smtp_server",
                "",
                "required: the mail server, e.g. --set smtp_server=smtp.example.org:587",
            )
        })?;
        let tls = parse_tls(settings)?;
        let (server, port) = parse_server(server_raw, tls)?;
        let from = parse_from(settings)?;
        let subject = settings
            .get("subject")
            .cloned()
            .unwrap_or_else(|| DEFAULT_SUBJECT.to_owned());
        let subject = parse_template("subject", &subject)?;
        let (user, password) = parse_credentials(settings, tls)?;
        let timeout = settings::get_duration(
            settings,
            "timeout",
            Duration::from_secs(30),
            Duration::from_millis(100),
            Duration::from_secs(600),
        )?;
        let ca_file =
            crate::broker::ca_file(settings, tls != SmtpTls::None, "tls=starttls or implicit")?;
        Ok(Self {
            to,
            server,
            port,
            tls,
            from,
            subject,
            user,
            password,
            timeout,
            ca_file,
        })
    }
}

/// The recipients of a `mailto:` address: comma-separated mail addresses, no headers.
fn parse_recipients(address: &str) -> Result<Vec<String>, ConfigError> {
    let bad = |p: String| ConfigError::address(address, p, SEND_EXAMPLE);
    let rest = address
        .strip_prefix("mailto:")
        .ok_or_else(|| bad("expected mailto:ADDRESS".into()))?;
    if rest.contains('?') {
        return Err(bad(
            "headers in a mailto: address are not taken; use --set subject=…".into(),
        ));
    }
    let decoded = crate::broker::percent_decode(rest)
        .ok_or_else(|| bad("not valid percent-encoded UTF-8".into()))?;
    header_safe("the recipient", &decoded).map_err(bad)?;
    let to: Vec<String> = decoded.split(',').map(|s| s.trim().to_owned()).collect();
    for a in &to {
        a.parse::<lettre::Address>()
            .map_err(|e| bad(format!("{a:?} is not a mail address: {e}")))?;
    }
    Ok(to)
}

/// `tls=starttls|implicit|none` (STARTTLS when not set).
fn parse_tls(settings: &Settings) -> Result<SmtpTls, ConfigError> {
    match settings
        .get("tls")
        .map(|t| t.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("starttls") => Ok(SmtpTls::StartTls),
        Some("implicit") => Ok(SmtpTls::Implicit),
        Some("none") => Ok(SmtpTls::None),
        Some(t) => Err(ConfigError::setting(
            "tls",
            t,
            "expected starttls, implicit or none",
        )),
    }
}

/// `smtp_server=HOST[:PORT]`; without a port, the one of `tls`'s protocol.
fn parse_server(server_raw: &str, tls: SmtpTls) -> Result<(String, u16), ConfigError> {
    let default_port = match tls {
        SmtpTls::StartTls => 587,
        SmtpTls::Implicit => 465,
        SmtpTls::None => 25,
    };
    let (server, port) = match server_raw.rsplit_once(':') {
        Some((h, p)) => (
            h.to_owned(),
            p.parse::<u16>().map_err(|_| {
                ConfigError::setting("smtp_server", server_raw, "expected HOST or HOST:PORT")
            })?,
        ),
        None => (server_raw.to_owned(), default_port),
    };
    if server.is_empty()
        || server.contains(|c: char| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(ConfigError::setting(
            "smtp_server",
            server_raw,
            "expected HOST or HOST:PORT",
        ));
    }
    Ok((server, port))
}

/// `from=…`, required: a template, and a mail address when it has no macro.
fn parse_from(settings: &Settings) -> Result<Template, ConfigError> {
    let from = settings
        .get("from")
        .ok_or_else(|| {
            ConfigError::setting(
                "from",
                "",
                "required: the sender, e.g. --set from=mbx@example.org",
            )
        })?
        .clone();
    let from_template = parse_template("from", &from)?;
    if !from.contains('%') {
        from.parse::<Mailbox>()
            .map_err(|e| ConfigError::setting("from", &from, format!("not a mail address: {e}")))?;
    }
    Ok(from_template)
}

/// `user=…` and `password=env:NAME|file:PATH`, both or neither, never over cleartext.
fn parse_credentials(
    settings: &Settings,
    tls: SmtpTls,
) -> Result<(Option<String>, Option<SecretRef>), ConfigError> {
    let user = settings.get("user").cloned();
    let password = settings
        .get("password")
        .map(|r| SecretRef::parse("password", r).map_err(|problem| ConfigError::Secret { problem }))
        .transpose()?;
    if password.is_some() != user.is_some() {
        return Err(ConfigError::setting(
            if user.is_some() { "user" } else { "password" },
            "",
            "user and password go together (--set user=mbx --set password=env:SMTP_PASSWORD)",
        ));
    }
    if user.is_some() && tls == SmtpTls::None {
        return Err(ConfigError::setting(
            "tls",
            "none",
            "credentials are never sent in cleartext; use starttls or implicit",
        ));
    }
    Ok((user, password))
}

/// The mail for `m`, or why it can never be sent.
async fn build(m: &OutboundMessage, c: &SmtpSendConfig) -> Result<Message, (String, bool)> {
    let never = |e: String| (e, false);
    let from = expand(&c.from, m).map_err(never)?;
    header_safe("from", &from).map_err(never)?;
    let subject = expand(&c.subject, m).map_err(never)?;
    header_safe("subject", &subject).map_err(never)?;
    let from: Mailbox = from
        .parse()
        .map_err(|e| never(format!("from {from:?}: {e}")))?;
    let mut to = Mailboxes::new();
    for a in &c.to {
        to.push(a.parse().map_err(|e| never(format!("to {a:?}: {e}")))?);
    }
    let mut builder = Message::builder()
        .from(from)
        .subject(subject)
        .message_id(Some(format!("<{}.{}@mbx>", m.message_id, m.port_name)));
    for mailbox in to {
        builder = builder.to(mailbox);
    }
    let body = m.body.to_bytes().await.map_err(|e| (e, true))?;
    let content_type = ContentType::parse(&m.content_type)
        .unwrap_or_else(|_| ContentType::parse("application/octet-stream").expect("a valid type"));
    let text = m
        .content_type
        .starts_with("text/")
        .then(|| String::from_utf8(body.to_vec()).ok())
        .flatten();
    let built = match text {
        Some(text) => builder.singlepart(SinglePart::builder().header(content_type).body(text)),
        None => {
            let ext = match m.content_type.split(';').next().unwrap_or("") {
                t if t.ends_with("json") => "json",
                t if t.ends_with("xml") => "xml",
                _ => "bin",
            };
            let name = format!("{}.{ext}", m.message_id);
            builder.multipart(
                MultiPart::mixed()
                    .singlepart(SinglePart::plain(format!(
                        "mbx message {}, attached as {name}",
                        m.message_id
                    )))
                    .singlepart(Attachment::new(name).body(body.to_vec(), content_type)),
            )
        }
    };
    built.map_err(|e| never(format!("building the mail: {e}")))
}

fn transport(c: &SmtpSendConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    type Transport = AsyncSmtpTransport<Tokio1Executor>;
    let builder = match (c.tls, &c.ca_file) {
        (SmtpTls::None, _) => Transport::builder_dangerous(c.server.clone()),
        (SmtpTls::StartTls, None) => {
            Transport::starttls_relay(&c.server).map_err(|e| e.to_string())?
        }
        (SmtpTls::Implicit, None) => Transport::relay(&c.server).map_err(|e| e.to_string())?,
        (tls, Some(path)) => {
            let ca = Certificate::from_pem(&crate::broker::read_ca(path)?)
                .map_err(|e| format!("ca_file {path}: {e}"))?;
            let parameters = TlsParameters::builder(c.server.clone())
                .add_root_certificate(ca)
                .build()
                .map_err(|e| e.to_string())?;
            let tls = match tls {
                SmtpTls::Implicit => Tls::Wrapper(parameters),
                _ => Tls::Required(parameters),
            };
            Transport::builder_dangerous(c.server.clone()).tls(tls)
        }
    };
    let mut builder = builder.port(c.port).timeout(Some(c.timeout));
    if let (Some(user), Some(password)) = (&c.user, &c.password) {
        builder = builder.credentials(Credentials::new(
            user.clone(),
            password.resolve("password")?,
        ));
    }
    Ok(builder.build())
}

async fn send_one(m: &OutboundMessage) -> Result<String, (String, bool)> {
    let c = SmtpSendConfig::parse(&m.address, &m.settings).map_err(|e| (e.to_string(), false))?;
    let mail = build(m, &c).await?;
    let transport = transport(&c).map_err(|e| (e, true))?;
    match transport.send(mail).await {
        Ok(r) => Ok(format!("SMTP {}", r.code())),
        // 5xx: the server will never take it; 4xx, timeouts and connections: again later
        Err(e) => Err((format!("{}:{}: {e}", c.server, c.port), !e.is_permanent())),
    }
}

#[derive(Debug, Default)]
pub struct SmtpSendAdapter;

impl SmtpSendAdapter {
    pub fn new() -> Self {
        Self
    }
}

#[async_trait]
impl SendAdapter for SmtpSendAdapter {
    fn name(&self) -> &'static str {
        "SMTP"
    }

    fn validate(&self, address: &str, settings: &Settings) -> Result<(), ConfigError> {
        SmtpSendConfig::parse(address, settings).map(|_| ())
    }

    fn send(&self, batch: Vec<OutboundMessage>, outcomes: OutcomeSender) {
        tokio::spawn(async move {
            for m in batch {
                if let Some(fence) = &m.fence {
                    if !fence.allows() {
                        let outcome = Outcome::failed(
                            "this instance no longer holds the ordered port's lease; not sent",
                            true,
                        );
                        report(&outcomes, &m, outcome).await;
                        continue;
                    }
                }
                let outcome = crate::outcome_of(&m, "smtp", send_one(&m).await);
                report(&outcomes, &m, outcome).await;
            }
        });
    }

    async fn health(&self, address: &str, settings: &Settings) -> Health {
        let c = match SmtpSendConfig::parse(address, settings) {
            Ok(c) => c,
            Err(e) => return Health::unhealthy(e.to_string()),
        };
        crate::broker::reachable(&c.server, c.port, &format!("{}:{}", c.server, c.port)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings_from;

    #[test]
    fn settings_are_checked_at_creation() {
        let ok = settings_from([
            ("smtp_server", "127.0.0.1:2525"),
            ("from", "mbx@example.org"),
            ("tls", "none"),
        ]);
        let c = SmtpSendConfig::parse("mailto:a@example.org,b@example.org", &ok).unwrap();
        assert_eq!(c.to.len(), 2);
        assert_eq!((c.port, c.tls), (2525, SmtpTls::None));
        let e = |a: &str, s: &[(&str, &str)]| {
            SmtpSendConfig::parse(a, &settings_from(s.iter().copied()))
                .unwrap_err()
                .to_string()
        };
        assert!(e("mailto:a@example.org", &[("from", "x@example.org")]).contains("smtp_server"));
        assert!(e(
            "mailto:nobody",
            &[("smtp_server", "h"), ("from", "x@example.org")]
        )
        .contains("not a mail address"));
        assert!(e(
            "mailto:a@example.org%0D%0ABcc:evil@example.org",
            &[("smtp_server", "h"), ("from", "x@example.org")]
        )
        .contains("header injection"));
        assert!(e(
            "mailto:a@example.org",
            &[
                ("smtp_server", "h"),
                ("from", "x@example.org"),
                ("subject", "%Nope%")
            ]
        )
        .contains("unknown macro"));
        assert!(e(
            "mailto:a@example.org",
            &[
                ("smtp_server", "h"),
                ("from", "x@example.org"),
                ("password", "secret")
            ]
        )
        .contains("env:NAME"));
        assert!(e(
            "mailto:a@example.org",
            &[
                ("smtp_server", "h"),
                ("from", "x@example.org"),
                ("user", "u"),
                ("password", "env:P"),
                ("tls", "none")
            ]
        )
        .contains("cleartext"));
    }
}
