//! A message's context: typed properties, promoted (routable) or written (carried along).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::value::{validate_property_name, Value, PROMOTED_VALUE_MAX_BYTES};
use crate::{Error, Result};

/// Names of the system properties that the engine itself sets, from the
/// shared vocabulary (`mbx-vocabulary`, which the adapters use too).
pub use mbx_vocabulary::system;

/// One property of a context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextProperty {
    pub value: Value,
    pub promoted: bool,
}

/// A map `namespace.Name` → typed value, ordered by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Context(BTreeMap<String, ContextProperty>);

impl Context {
    pub fn new() -> Self {
        Self::default()
    }

    /// Promotes a property: filters can see it. Values above 256 bytes cannot be promoted.
    pub fn promote(&mut self, name: &str, value: Value) -> Result<()> {
        validate_property_name(name).map_err(Error::Invalid)?;
        let len = value.to_plain_string().len();
        if len > PROMOTED_VALUE_MAX_BYTES {
            return Err(Error::Invalid(format!(
                "property {name}: a promoted value is at most {PROMOTED_VALUE_MAX_BYTES} bytes, this one has {len}; write it instead of promoting it"
            )));
        }
        self.0.insert(
            name.to_owned(),
            ContextProperty {
                value,
                promoted: true,
            },
        );
        Ok(())
    }

    /// Writes a property: carried along, not routable.
    pub fn write(&mut self, name: &str, value: Value) -> Result<()> {
        validate_property_name(name).map_err(Error::Invalid)?;
        self.0.insert(
            name.to_owned(),
            ContextProperty {
                value,
                promoted: false,
            },
        );
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&ContextProperty> {
        self.0.get(name)
    }

    /// The value of a promoted property (what filters see).
    pub fn promoted(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|p| p.promoted).map(|p| &p.value)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &ContextProperty)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// "Order.Region=US, Order.Amount=12" — the promoted properties, for reasons and logs.
    pub fn promoted_summary(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .filter(|(_, p)| p.promoted)
            .map(|(k, p)| format!("{k}={}", p.value.to_plain_string()))
            .collect();
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
