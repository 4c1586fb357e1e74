//! Typed property values and property names.
//!
//! A context property has one of five types; its type comes from its declaration
//! (`mbx property create Order.Amount --type integer`), and undeclared properties are
//! strings. Comparison is typed: integers and decimals compare numerically with each
//! other, strings byte-wise, timestamps in time, booleans only for equality; values of
//! other type pairs are incomparable (a filter comparing them is false).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub use mbx_vocabulary::{
    validate_property_name, PROMOTED_VALUE_MAX_BYTES, PROPERTY_NAME_MAX_BYTES,
};

/// The declared type of a property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PropertyType {
    String,
    Integer,
    Decimal,
    Boolean,
    Timestamp,
}

impl PropertyType {
    pub const ALL: [PropertyType; 5] = [
        PropertyType::String,
        PropertyType::Integer,
        PropertyType::Decimal,
        PropertyType::Boolean,
        PropertyType::Timestamp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PropertyType::String => "string",
            PropertyType::Integer => "integer",
            PropertyType::Decimal => "decimal",
            PropertyType::Boolean => "boolean",
            PropertyType::Timestamp => "timestamp",
        }
    }

    /// An example literal of this type, for error messages.
    pub fn example(self) -> &'static str {
        match self {
            PropertyType::String => "EU",
            PropertyType::Integer => "42",
            PropertyType::Decimal => "12.50",
            PropertyType::Boolean => "true",
            PropertyType::Timestamp => "2026-11-23T10:00:00Z",
        }
    }
}

impl fmt::Display for PropertyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PropertyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PropertyType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown type '{s}': use string, integer, decimal, boolean or timestamp")
            })
    }
}

/// A typed value. Serialised externally tagged (`{"integer": 42}`) so a context stored as
/// JSON keeps its types.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Value {
    String(String),
    Integer(i64),
    Decimal(Decimal),
    Boolean(bool),
    Timestamp(DateTime<Utc>),
}

impl Value {
    pub fn property_type(&self) -> PropertyType {
        match self {
            Value::String(_) => PropertyType::String,
            Value::Integer(_) => PropertyType::Integer,
            Value::Decimal(_) => PropertyType::Decimal,
            Value::Boolean(_) => PropertyType::Boolean,
            Value::Timestamp(_) => PropertyType::Timestamp,
        }
    }

    /// Parses `text` as a value of type `ty` (how `--promote K=V` types its value).
    pub fn parse_as(ty: PropertyType, text: &str) -> Result<Value, String> {
        let bad = || format!("'{text}' is not a valid {ty} (example: {})", ty.example());
        Ok(match ty {
            PropertyType::String => Value::String(text.to_owned()),
            PropertyType::Integer => Value::Integer(text.trim().parse().map_err(|_| bad())?),
            PropertyType::Decimal => {
                Value::Decimal(Decimal::from_str(text.trim()).map_err(|_| bad())?)
            }
            PropertyType::Boolean => match text.trim().to_ascii_lowercase().as_str() {
                "true" => Value::Boolean(true),
                "false" => Value::Boolean(false),
                _ => return Err(bad()),
            },
            PropertyType::Timestamp => Value::Timestamp(
                DateTime::parse_from_rfc3339(text.trim())
                    .map_err(|_| bad())?
                    .with_timezone(&Utc),
            ),
        })
    }

    /// Typed comparison: `None` when the two values are of incomparable types.
    /// Integers and decimals compare numerically with each other; strings byte-wise;
    /// timestamps in time; booleans are ordered false < true but filters only allow
    /// equality on them.
    pub fn compare(&self, other: &Value) -> Option<Ordering> {
        use Value::*;
        match (self, other) {
            (String(a), String(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            (Integer(a), Integer(b)) => Some(a.cmp(b)),
            (Integer(a), Decimal(b)) => Some(rust_decimal::Decimal::from(*a).cmp(b)),
            (Decimal(a), Integer(b)) => Some(a.cmp(&rust_decimal::Decimal::from(*b))),
            (Decimal(a), Decimal(b)) => Some(a.cmp(b)),
            (Boolean(a), Boolean(b)) => Some(a.cmp(b)),
            (Timestamp(a), Timestamp(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    /// The value as an operator reads it (no quotes, RFC 3339 for timestamps).
    pub fn to_plain_string(&self) -> String {
        match self {
            Value::String(s) => s.clone(),
            Value::Integer(i) => i.to_string(),
            Value::Decimal(d) => d.to_string(),
            Value::Boolean(b) => b.to_string(),
            Value::Timestamp(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_across_integer_and_decimal() {
        let a = Value::Integer(10);
        let b = Value::Decimal(Decimal::from_str("9.5").unwrap());
        assert_eq!(a.compare(&b), Some(Ordering::Greater));
        assert_eq!(b.compare(&a), Some(Ordering::Less));
    }

    #[test]
    fn strings_and_numbers_are_incomparable() {
        assert_eq!(
            Value::String("42".into()).compare(&Value::Integer(42)),
            None
        );
    }

    #[test]
    fn parse_as_types_values_and_names_the_problem() {
        assert_eq!(
            Value::parse_as(PropertyType::Integer, "42"),
            Ok(Value::Integer(42))
        );
        let err = Value::parse_as(PropertyType::Integer, "4x").unwrap_err();
        assert!(err.contains("not a valid integer"), "{err}");
        assert!(Value::parse_as(PropertyType::Timestamp, "2026-11-23T10:00:00Z").is_ok());
        assert!(Value::parse_as(PropertyType::Boolean, "yes").is_err());
    }

    #[test]
    fn values_round_trip_through_json_with_their_type() {
        let v = Value::Decimal(Decimal::from_str("12.50").unwrap());
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, r#"{"decimal":"12.50"}"#);
        assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), v);
    }
}
