//! The closed registry of adapters, keyed by URI scheme.
//!
//! Adding an adapter = one module plus one row in [`SCHEMES`] and one arm in each of
//! [`Registry::send_transport`] and [`Registry::receive_adapter`]. Nothing else in the
//! engine knows adapter names. `mbx://` (forwarding into another group) is checked here
//! but has no send adapter: it resolves to [`SendTransport::Forward`].

use std::sync::Arc;

use crate::amqp::{AmqpReceiveAdapter, AmqpReceiveConfig, AmqpSendAdapter};
use crate::error::{RegistryError, Side};
use crate::file::{FileReceiveAdapter, FileReceiveConfig, FileSendAdapter};
use crate::http::HttpSendAdapter;
use crate::http::{HttpListener, HttpReceiveAdapter, HttpReceiveConfig};
use crate::mqtt::{MqttReceiveAdapter, MqttReceiveConfig, MqttSendAdapter};
use crate::null::NullSendAdapter;
use crate::pipeline::{Pipeline, PipelineKind, Promotion};
use crate::settings::Settings;
use crate::smtp::SmtpSendAdapter;
use crate::{ReceiveAdapter, ReceiveLocationSpec, SendAdapter};

/// A URI scheme mbx has an adapter for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Amqp,
    Amqps,
    File,
    Http,
    Https,
    Mailto,
    /// Forwarding into another group: checked here, sent by the host's forwarder (no send
    /// adapter: [`SendTransport::Forward`]).
    Mbx,
    Mqtt,
    Mqtts,
    Null,
}

/// Every scheme, with its spelling in addresses: the one table of adapters.
pub const SCHEMES: &[(&str, Scheme)] = &[
    ("amqp", Scheme::Amqp),
    ("amqps", Scheme::Amqps),
    ("file", Scheme::File),
    ("http", Scheme::Http),
    ("https", Scheme::Https),
    ("mailto", Scheme::Mailto),
    ("mbx", Scheme::Mbx),
    ("mqtt", Scheme::Mqtt),
    ("mqtts", Scheme::Mqtts),
    ("null", Scheme::Null),
];

/// The longest scheme name looked up (anything longer is not a scheme we know).
const SCHEME_MAX_BYTES: usize = 32;

impl Scheme {
    /// The scheme of `address` (`file:///…` → `File`); unknown schemes are an error that
    /// lists the known ones.
    pub fn of_address(address: &str) -> Result<Scheme, RegistryError> {
        let Some((raw, _)) = address.split_once(':') else {
            return Err(RegistryError::NoScheme {
                address: address.to_owned(),
            });
        };
        let valid = !raw.is_empty()
            && raw.len() <= SCHEME_MAX_BYTES
            && raw.starts_with(|c: char| c.is_ascii_alphabetic())
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !valid {
            return Err(RegistryError::NoScheme {
                address: address.to_owned(),
            });
        }
        let lower = raw.to_ascii_lowercase();
        SCHEMES
            .iter()
            .find(|(name, _)| *name == lower)
            .map(|(_, s)| *s)
            .ok_or_else(|| RegistryError::UnknownScheme {
                scheme: raw.to_owned(),
                address: address.to_owned(),
                known: SCHEMES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Amqp => "amqp",
            Scheme::Amqps => "amqps",
            Scheme::File => "file",
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Mailto => "mailto",
            Scheme::Mbx => "mbx",
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
            Scheme::Null => "null",
        }
    }

    /// Whether a receive location of this scheme can take its messages in order
    /// (`--ordered`): only adapters that pull from a source they can read in order (FILE:
    /// name order; AMQP: a queue with a single active consumer). Over HTTP the client
    /// keeps its order.
    pub fn receives_in_order(self) -> bool {
        matches!(self, Scheme::File | Scheme::Amqp | Scheme::Amqps)
    }

    /// The adapter's name as operators see it (`mbx.InboundTransportType`).
    pub fn adapter_name(self) -> &'static str {
        match self {
            Scheme::Amqp | Scheme::Amqps => "AMQP",
            Scheme::File => "FILE",
            Scheme::Http | Scheme::Https => "HTTP",
            Scheme::Mailto => "SMTP",
            Scheme::Mbx => "MBX",
            Scheme::Mqtt | Scheme::Mqtts => "MQTT",
            Scheme::Null => "NULL",
        }
    }

    /// Whether a receive location of this scheme runs on one instance at a time, under
    /// the location's lease, ordered or not (MQTT: one subscription, under a client id
    /// fixed per location, or every instance would publish every message).
    pub fn receives_on_one_instance(self) -> bool {
        matches!(self, Scheme::Mqtt | Scheme::Mqtts)
    }
}

/// What `--help` says about the addresses and `--set` keys of one side, from the
/// adapters' own tables (one line per scheme: its address form and settings).
pub fn adapters_help(side: Side) -> String {
    use crate::amqp::config as amqp;
    use crate::file::config::{
        FILE_RECEIVE_SETTINGS, FILE_SEND_SETTINGS, RECEIVE_EXAMPLE, SEND_EXAMPLE,
    };
    use crate::http::config::{HTTP_RECEIVE_SETTINGS, HTTP_SEND_SETTINGS};
    let mut lines = Vec::new();
    for (name, scheme) in SCHEMES {
        let (form, settings): (String, &[&str]) = match (scheme, side) {
            (Scheme::Amqp | Scheme::Amqps, Side::Send) => (
                amqp::SEND_EXAMPLE.replacen("amqp", name, 1),
                amqp::AMQP_SEND_SETTINGS,
            ),
            (Scheme::Amqp | Scheme::Amqps, Side::Receive) => (
                amqp::RECEIVE_EXAMPLE.replacen("amqp", name, 1),
                amqp::AMQP_RECEIVE_SETTINGS,
            ),
            (Scheme::File, Side::Send) => (SEND_EXAMPLE.to_owned(), FILE_SEND_SETTINGS),
            (Scheme::File, Side::Receive) => (RECEIVE_EXAMPLE.to_owned(), FILE_RECEIVE_SETTINGS),
            (Scheme::Http | Scheme::Https, Side::Send) => (
                format!("{name}://partner.example/orders"),
                HTTP_SEND_SETTINGS,
            ),
            (Scheme::Http | Scheme::Https, Side::Receive) => {
                (format!("{name}:///orders"), HTTP_RECEIVE_SETTINGS)
            }
            (Scheme::Mqtt | Scheme::Mqtts, Side::Send) => (
                crate::mqtt::config::SEND_EXAMPLE.replacen("mqtt", name, 1),
                crate::mqtt::config::MQTT_SEND_SETTINGS,
            ),
            (Scheme::Mqtt | Scheme::Mqtts, Side::Receive) => (
                crate::mqtt::config::RECEIVE_EXAMPLE.replacen("mqtt", name, 1),
                crate::mqtt::config::MQTT_RECEIVE_SETTINGS,
            ),
            (Scheme::Mailto, Side::Send) => (
                crate::smtp::SEND_EXAMPLE.to_owned(),
                crate::smtp::SMTP_SEND_SETTINGS,
            ),
            (Scheme::Null, Side::Send) => {
                ("null:discard".to_owned(), crate::null::NULL_SEND_SETTINGS)
            }
            (Scheme::Mbx, Side::Send) => (crate::mbx::SEND_EXAMPLE.to_owned(), &[]),
            (Scheme::Null | Scheme::Mbx | Scheme::Mailto, Side::Receive) => continue,
        };
        // a location's max_message_size is its --max-message-size
        let settings: Vec<&str> = settings
            .iter()
            .copied()
            .filter(|k| *k != "max_message_size")
            .collect();
        let settings = if settings.is_empty() {
            "no settings".to_owned()
        } else {
            format!("--set {}", settings.join(", "))
        };
        lines.push(format!(
            "  {name:<6} {form}  ({}; {settings})",
            scheme.adapter_name()
        ));
    }
    lines.join("\n")
}

/// How the messages to one address leave: through a send adapter, or forwarded into
/// another group by the host (`mbx://`, which no adapter sends).
#[derive(Clone)]
pub enum SendTransport {
    Adapter(Arc<dyn SendAdapter>),
    Forward(mbx_vocabulary::GroupAddress),
}

impl std::fmt::Debug for SendTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendTransport::Adapter(a) => f.debug_tuple("Adapter").field(&a.name()).finish(),
            SendTransport::Forward(to) => f.debug_tuple("Forward").field(to).finish(),
        }
    }
}

/// One instance of each send adapter, shared by every port of a host instance, and the
/// constructor of receive adapters.
#[derive(Clone)]
pub struct Registry {
    amqp_send: Arc<dyn SendAdapter>,
    file_send: Arc<dyn SendAdapter>,
    http_send: Arc<dyn SendAdapter>,
    null_send: Arc<dyn SendAdapter>,
    mqtt_send: Arc<dyn SendAdapter>,
    smtp_send: Arc<dyn SendAdapter>,
    /// Where HTTP receive locations mount their paths: the host's shared listener
    /// (none: HTTP receive locations cannot run).
    http_listener: Option<Arc<dyn HttpListener>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("file_send", &self.file_send.name())
            .field("http_send", &self.http_send.name())
            .field("null_send", &self.null_send.name())
            .finish()
    }
}

impl Registry {
    pub fn new() -> Result<Self, RegistryError> {
        Ok(Self {
            amqp_send: Arc::new(AmqpSendAdapter::new()),
            file_send: Arc::new(FileSendAdapter::new()),
            http_send: Arc::new(HttpSendAdapter::new()?),
            null_send: Arc::new(NullSendAdapter::new()),
            mqtt_send: Arc::new(MqttSendAdapter::new()),
            smtp_send: Arc::new(SmtpSendAdapter::new()),
            http_listener: None,
        })
    }

    /// Serves HTTP receive locations on `listener` (the host's `--http-listen` and
    /// `--https-listen`, shared by its locations).
    pub fn with_http_listener(mut self, listener: Arc<dyn HttpListener>) -> Self {
        self.http_listener = Some(listener);
        self
    }

    /// Serves the sends of `scheme` (`http` and `https` share one adapter) with `adapter`
    /// instead of the built-in one. It exists so tests can inject faults (an adapter that
    /// panics) into a real host; `mbx-host` itself only ever uses [`Registry::new`].
    /// `Scheme::Mbx` has no send adapter (the host forwards): the registry is returned
    /// unchanged.
    pub fn with_send_adapter(mut self, scheme: Scheme, adapter: Arc<dyn SendAdapter>) -> Self {
        match scheme {
            Scheme::Amqp | Scheme::Amqps => self.amqp_send = adapter,
            Scheme::File => self.file_send = adapter,
            Scheme::Http | Scheme::Https => self.http_send = adapter,
            Scheme::Null => self.null_send = adapter,
            Scheme::Mbx => {}
            Scheme::Mqtt | Scheme::Mqtts => self.mqtt_send = adapter,
            Scheme::Mailto => self.smtp_send = adapter,
        }
        self
    }

    /// How messages to `address` leave: its scheme's send adapter, or for `mbx://` the
    /// group they are forwarded to (the address checked).
    pub fn send_transport(&self, address: &str) -> Result<SendTransport, RegistryError> {
        Ok(SendTransport::Adapter(match Scheme::of_address(address)? {
            Scheme::Amqp | Scheme::Amqps => self.amqp_send.clone(),
            Scheme::File => self.file_send.clone(),
            Scheme::Http | Scheme::Https => self.http_send.clone(),
            Scheme::Null => self.null_send.clone(),
            Scheme::Mbx => {
                let to = crate::mbx::parse(address, &Settings::new())?;
                return Ok(SendTransport::Forward(to));
            }
            Scheme::Mqtt | Scheme::Mqtts => self.mqtt_send.clone(),
            Scheme::Mailto => self.smtp_send.clone(),
        }))
    }

    /// The send adapter for `address`'s scheme; `mbx://` has none (the host forwards).
    pub fn send_adapter(&self, address: &str) -> Result<Arc<dyn SendAdapter>, RegistryError> {
        match self.send_transport(address)? {
            SendTransport::Adapter(adapter) => Ok(adapter),
            SendTransport::Forward(_) => Err(RegistryError::Unsupported {
                adapter: "MBX",
                side: Side::Send,
                hint: ": mbx:// addresses are forwarded into the other group by mbx-host",
            }),
        }
    }

    /// Every send adapter, once, with a scheme it serves (for the conformance test and
    /// health listings).
    pub fn send_adapters(&self) -> Vec<(Scheme, Arc<dyn SendAdapter>)> {
        vec![
            (Scheme::Amqp, self.amqp_send.clone()),
            (Scheme::File, self.file_send.clone()),
            (Scheme::Http, self.http_send.clone()),
            (Scheme::Null, self.null_send.clone()),
            (Scheme::Mqtt, self.mqtt_send.clone()),
            (Scheme::Mailto, self.smtp_send.clone()),
        ]
    }

    /// One scheme per receive adapter (for the receive-side conformance test).
    pub fn receive_schemes(&self) -> Vec<Scheme> {
        vec![Scheme::Amqp, Scheme::File, Scheme::Http, Scheme::Mqtt]
    }

    /// Checks a send address and port settings at configuration time.
    pub fn validate_send(
        &self,
        address: &str,
        settings: &Settings,
    ) -> Result<Scheme, RegistryError> {
        let scheme = Scheme::of_address(address)?;
        match self.send_transport(address)? {
            SendTransport::Adapter(adapter) => adapter.validate(address, settings)?,
            SendTransport::Forward(_) => {
                crate::mbx::parse(address, settings)?;
            }
        }
        Ok(scheme)
    }

    /// Checks a receive address and location settings at configuration time.
    pub fn validate_receive(
        &self,
        address: &str,
        settings: &Settings,
    ) -> Result<Scheme, RegistryError> {
        let scheme = Scheme::of_address(address)?;
        match scheme {
            Scheme::Amqp | Scheme::Amqps => {
                AmqpReceiveConfig::parse(address, settings)?;
            }
            Scheme::File => {
                FileReceiveConfig::parse(address, settings)?;
            }
            Scheme::Http | Scheme::Https => {
                HttpReceiveConfig::parse(address, settings)?;
            }
            Scheme::Mqtt | Scheme::Mqtts => {
                MqttReceiveConfig::parse(address, settings)?;
            }
            Scheme::Null | Scheme::Mailto => return Err(send_only(scheme)),
            Scheme::Mbx => return Err(forward_receive_unsupported()),
        }
        Ok(scheme)
    }

    /// Checks everything a receive location is created with, as the host would run it:
    /// the address and settings by the adapter, `--ordered` against what the adapter can
    /// do, and the pipeline with its promotions by the pipeline's own constructor.
    pub fn validate_receive_location(
        &self,
        address: &str,
        settings: &Settings,
        ordered: bool,
        pipeline: &str,
        promote: &std::collections::BTreeMap<String, String>,
    ) -> Result<Scheme, RegistryError> {
        let scheme = self.validate_receive(address, settings)?;
        if ordered && !scheme.receives_in_order() {
            return Err(RegistryError::Unordered {
                adapter: scheme.adapter_name(),
            });
        }
        let kind: PipelineKind = pipeline.parse()?;
        let promotions = promote
            .iter()
            .map(|(property, path)| Promotion {
                property: property.clone(),
                path: path.clone(),
            })
            .collect();
        Pipeline::new(kind, promotions)?;
        Ok(scheme)
    }

    /// Builds the receive adapter of one receive location.
    pub fn receive_adapter(
        &self,
        spec: ReceiveLocationSpec,
    ) -> Result<Box<dyn ReceiveAdapter>, RegistryError> {
        match Scheme::of_address(&spec.address)? {
            Scheme::Amqp | Scheme::Amqps => Ok(Box::new(AmqpReceiveAdapter::new(spec)?)),
            Scheme::File => Ok(Box::new(FileReceiveAdapter::new(spec)?)),
            Scheme::Mqtt | Scheme::Mqtts => Ok(Box::new(MqttReceiveAdapter::new(spec)?)),
            Scheme::Http | Scheme::Https => match &self.http_listener {
                Some(listener) => Ok(Box::new(HttpReceiveAdapter::new(spec, listener.clone())?)),
                None => Err(RegistryError::Unsupported {
                    adapter: "HTTP",
                    side: Side::Receive,
                    hint: ": HTTP receive locations are served on a host's listener (--http-listen), which this registry has none of",
                }),
            },
            s @ (Scheme::Null | Scheme::Mailto) => Err(send_only(s)),
            Scheme::Mbx => Err(forward_receive_unsupported()),
        }
    }
}

/// NULL and SMTP only send.
fn send_only(scheme: Scheme) -> RegistryError {
    RegistryError::Unsupported {
        adapter: scheme.adapter_name(),
        side: Side::Receive,
        hint: match scheme {
            Scheme::Mailto => ": SMTP only sends mail",
            _ => ": NULL is a send-only sink",
        },
    }
}

/// Forwarded messages arrive on a receive port by themselves: no location takes them.
fn forward_receive_unsupported() -> RegistryError {
    RegistryError::Unsupported {
        adapter: "MBX",
        side: Side::Receive,
        hint: ": messages forwarded from another group arrive on the receive port named in its send port's mbx://LINK/RECEIVE_PORT, with no location",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_are_looked_up_case_insensitively() {
        assert_eq!(Scheme::of_address("file:///x/*.xml").unwrap(), Scheme::File);
        assert_eq!(Scheme::of_address("HTTPS://x/y").unwrap(), Scheme::Https);
        assert!(matches!(
            Scheme::of_address("gopher://x"),
            Err(RegistryError::UnknownScheme { .. })
        ));
        assert!(matches!(
            Scheme::of_address("/tmp/x"),
            Err(RegistryError::NoScheme { .. })
        ));
    }
}
