//! `%macro%` templates: the one parser and expander of the FILE send adapter's file-name
//! pattern (`file:///out/%MessageID%.xml`) and the SMTP adapter's `from` and `subject`
//! (`Order %Order.Id% from %SendPortName%`).
//!
//! A template is literal text and macros, each a name between two `%`. Which macros a
//! template takes is its [`MacroSet`] ([`FILE_NAME_MACROS`], [`SMTP_MACROS`]); a `%`
//! without its closing `%` or an unknown name is refused when the template is parsed
//! (configuration), and a value the message lacks when it is expanded (a failure of that
//! message, never retried).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::context::MessageContext;
use crate::{system, OutboundMessage};

/// A macro of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Macro {
    /// `%MessageID%`: the message id.
    MessageId,
    /// `%SendPortName%`: the send port's name.
    SendPortName,
    /// `%SourceFileName%`: `mbx.SourceFileName` of the message.
    SourceFileName,
    /// `%datetime%`: the UTC time of writing, `2026-11-23T101500.123Z` (no `:`, so it can
    /// be part of a file name).
    DateTime,
    /// `%Ns.Name%`: a property of the message's context.
    Property(String),
}

impl Macro {
    /// The text between the `%` signs.
    pub fn name(&self) -> &str {
        match self {
            Macro::MessageId => "MessageID",
            Macro::SendPortName => "SendPortName",
            Macro::SourceFileName => "SourceFileName",
            Macro::DateTime => "datetime",
            Macro::Property(name) => name,
        }
    }

    /// One of the named macros (not a property).
    fn named(name: &str) -> Option<Macro> {
        Some(match name {
            "MessageID" => Macro::MessageId,
            "SendPortName" => Macro::SendPortName,
            "SourceFileName" => Macro::SourceFileName,
            "datetime" => Macro::DateTime,
            _ => return None,
        })
    }
}

/// The macros one kind of template takes.
#[derive(Debug, Clone, Copy)]
pub struct MacroSet {
    /// Named macros taken, as written between the `%` signs.
    names: &'static [&'static str],
    /// Whether `%Ns.Name%` (a property of the context) is taken.
    properties: bool,
}

/// A FILE send file-name pattern: every value is checked to be one path component.
pub const FILE_NAME_MACROS: MacroSet = MacroSet {
    names: &["MessageID", "SendPortName", "SourceFileName", "datetime"],
    properties: false,
};

/// The SMTP adapter's `from` and `subject`.
pub const SMTP_MACROS: MacroSet = MacroSet {
    names: &["MessageID", "SendPortName"],
    properties: true,
};

impl MacroSet {
    /// The macros taken, as an error lists them.
    fn known(&self) -> String {
        let mut known: Vec<String> = self.names.iter().map(|n| format!("%{n}%")).collect();
        if self.properties {
            known.push("%Ns.Name% for a property".to_owned());
        }
        known.join(", ")
    }

    fn macro_named(&self, name: &str) -> Option<Macro> {
        if self.names.contains(&name) {
            return Macro::named(name);
        }
        (self.properties && mbx_vocabulary::validate_property_name(name).is_ok())
            .then(|| Macro::Property(name.to_owned()))
    }
}

/// A part of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    Macro(Macro),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// Why a template is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("a % without its closing %")]
    Unclosed,
    #[error("unknown macro %{name}% (known: {known})")]
    Unknown { name: String, known: String },
}

/// Why a template could not be expanded for a message: it never can be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error("macro %{macro_name}%: the message has no {property}")]
    Missing {
        macro_name: String,
        property: String,
    },
    #[error("macro %{macro_name}%: value {value:?} {problem}")]
    BadValue {
        macro_name: String,
        value: String,
        problem: String,
    },
}

/// What the macros of a template are expanded from.
#[derive(Debug, Clone, Copy)]
pub struct MacroValues<'a> {
    pub message_id: Uuid,
    pub port_name: &'a str,
    pub context: &'a MessageContext,
    /// `%datetime%`.
    pub now: DateTime<Utc>,
}

impl<'a> MacroValues<'a> {
    /// The values of a message being sent, `%datetime%` now.
    pub fn of(m: &'a OutboundMessage) -> Self {
        Self {
            message_id: m.message_id,
            port_name: &m.port_name,
            context: &m.context,
            now: Utc::now(),
        }
    }

    fn value(&self, m: &Macro) -> Result<String, ExpandError> {
        let property = |name: &str| {
            self.context
                .get(name)
                .map(str::to_owned)
                .ok_or_else(|| ExpandError::Missing {
                    macro_name: m.name().to_owned(),
                    property: name.to_owned(),
                })
        };
        match m {
            Macro::MessageId => Ok(self.message_id.to_string()),
            Macro::SendPortName => Ok(self.port_name.to_owned()),
            Macro::SourceFileName => property(system::SOURCE_FILE_NAME),
            Macro::DateTime => Ok(self.now.format("%Y-%m-%dT%H%M%S%.3fZ").to_string()),
            Macro::Property(name) => property(name),
        }
    }
}

impl Template {
    /// Parses `text`, taking the macros of `set`.
    pub fn parse(text: &str, set: MacroSet) -> Result<Self, TemplateError> {
        // split on `%`: literals at even places, macro names at odd ones
        let pieces: Vec<&str> = text.split('%').collect();
        if pieces.len().is_multiple_of(2) {
            return Err(TemplateError::Unclosed);
        }
        let mut parts = Vec::new();
        for (i, piece) in pieces.into_iter().enumerate() {
            if i % 2 == 0 {
                if !piece.is_empty() {
                    parts.push(Part::Literal(piece.to_owned()));
                }
                continue;
            }
            let m = set
                .macro_named(piece)
                .ok_or_else(|| TemplateError::Unknown {
                    name: piece.to_owned(),
                    known: set.known(),
                })?;
            parts.push(Part::Macro(m));
        }
        Ok(Self {
            source: text.to_owned(),
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// Expands the template; `check` judges each macro's value (its error is the problem,
    /// e.g. `is not one path component: contains '/'`).
    pub fn expand(
        &self,
        values: &MacroValues<'_>,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> Result<String, ExpandError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Macro(m) => {
                    let value = values.value(m)?;
                    check(&value).map_err(|problem| ExpandError::BadValue {
                        macro_name: m.name().to_owned(),
                        value: value.clone(),
                        problem,
                    })?;
                    out.push_str(&value);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(context: &MessageContext) -> MacroValues<'_> {
        MacroValues {
            message_id: Uuid::nil(),
            port_name: "orders-eu",
            context,
            now: DateTime::parse_from_rfc3339("2026-11-23T10:15:00.123Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    fn any(_: &str) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn every_macro_of_a_set_expands() {
        let mut ctx = MessageContext::new();
        ctx.insert(system::SOURCE_FILE_NAME, "in.xml");
        ctx.insert("Order.Id", "42");
        let file = Template::parse(
            "%MessageID%_%SendPortName%_%SourceFileName%_%datetime%.out",
            FILE_NAME_MACROS,
        )
        .unwrap();
        assert_eq!(
            file.expand(&values(&ctx), any).unwrap(),
            "00000000-0000-0000-0000-000000000000_orders-eu_in.xml_2026-11-23T101500.123Z.out"
        );
        let smtp = Template::parse(
            "Order %Order.Id% (%MessageID%, %SendPortName%)",
            SMTP_MACROS,
        )
        .unwrap();
        assert_eq!(
            smtp.expand(&values(&ctx), any).unwrap(),
            "Order 42 (00000000-0000-0000-0000-000000000000, orders-eu)"
        );
        let plain = Template::parse("no macros", SMTP_MACROS).unwrap();
        assert_eq!(plain.parts(), [Part::Literal("no macros".into())]);
        assert_eq!(plain.as_str(), "no macros");
    }

    #[test]
    fn an_unclosed_or_unknown_macro_is_refused_naming_the_known_ones() {
        for text in ["%MessageID.xml", "a%", "%", "%MessageID%%"] {
            assert_eq!(
                Template::parse(text, FILE_NAME_MACROS),
                Err(TemplateError::Unclosed),
                "{text}"
            );
        }
        let e = Template::parse("%Nope%.xml", FILE_NAME_MACROS).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown macro %Nope% (known: %MessageID%, %SendPortName%, %SourceFileName%, %datetime%)"
        );
        // a property is no FILE macro; %datetime% no SMTP one
        assert!(Template::parse("%Order.Id%", FILE_NAME_MACROS).is_err());
        let e = Template::parse("%datetime%", SMTP_MACROS).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown macro %datetime% (known: %MessageID%, %SendPortName%, %Ns.Name% for a property)"
        );
        assert!(Template::parse("%%", SMTP_MACROS).is_err());
        assert!(Template::parse("100%%", SMTP_MACROS).is_err());
    }

    #[test]
    fn a_value_the_message_lacks_or_the_check_refuses_is_an_error_naming_the_macro() {
        let ctx = MessageContext::new();
        let file = Template::parse("%SourceFileName%", FILE_NAME_MACROS).unwrap();
        assert_eq!(
            file.expand(&values(&ctx), any).unwrap_err().to_string(),
            "macro %SourceFileName%: the message has no mbx.SourceFileName"
        );
        let smtp = Template::parse("%Order.Id%", SMTP_MACROS).unwrap();
        assert_eq!(
            smtp.expand(&values(&ctx), any).unwrap_err().to_string(),
            "macro %Order.Id%: the message has no Order.Id"
        );
        let mut ctx = MessageContext::new();
        ctx.insert(system::SOURCE_FILE_NAME, "a/b");
        let e = file
            .expand(&values(&ctx), |v| {
                if v.contains('/') {
                    Err("is not one path component: contains '/'".to_owned())
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "macro %SourceFileName%: value \"a/b\" is not one path component: contains '/'"
        );
    }
}
