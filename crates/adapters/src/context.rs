//! The context as an adapter sees it: property name → value as text.
//!
//! Typing values is the MessageBox's job (`mbx_messagebox::Context`); adapters read and
//! write plain strings, under the same system property names.

use std::collections::BTreeMap;

use uuid::Uuid;

/// Names of the system properties, from the shared vocabulary.
pub use mbx_vocabulary::system;

/// A small owned map `namespace.Name` → value as text, ordered by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageContext(BTreeMap<String, String>);

impl MessageContext {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a property, replacing any previous value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.insert(name.into(), value.into());
    }

    /// Builder form of [`insert`](Self::insert).
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(name, value);
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `mbx.MessageId`, if present and a UUID.
    pub fn message_id(&self) -> Option<Uuid> {
        self.get(system::MESSAGE_ID)
            .and_then(|v| Uuid::parse_str(v).ok())
    }

    /// `mbx.SourceFileName`.
    pub fn source_file_name(&self) -> Option<&str> {
        self.get(system::SOURCE_FILE_NAME)
    }

    /// `mbx.SendPortName`.
    pub fn send_port_name(&self) -> Option<&str> {
        self.get(system::SEND_PORT_NAME)
    }

    /// `mbx.Sequence` (ordered ports).
    pub fn sequence(&self) -> Option<&str> {
        self.get(system::SEQUENCE)
    }

    /// `mbx.Epoch` (ordered ports).
    pub fn epoch(&self) -> Option<&str> {
        self.get(system::EPOCH)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for MessageContext {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}
