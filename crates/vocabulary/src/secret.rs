//! Secret references: a secret is configured as `env:NAME` or `file:PATH`,
//! never as its value. The reference is what is stored and shown; only the process that
//! uses the secret resolves it, at the moment it needs it.

use std::fmt;

/// Where a secret is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable of the process that uses it.
    Env(String),
    /// A file (its contents, trailing whitespace trimmed), e.g. a mounted secret.
    File(String),
}

impl SecretRef {
    /// Parses a reference; `setting` names what is configured, for the error. A literal
    /// (anything but `env:NAME` or `file:PATH`) is refused: it would be stored and
    /// printed.
    pub fn parse(setting: &str, reference: &str) -> Result<SecretRef, String> {
        let refuse = || {
            format!(
                "{setting}: give a reference, env:NAME or file:PATH, never the secret itself (example: {setting}=env:ORDERS_TOKEN)"
            )
        };
        if let Some(name) = reference.strip_prefix("env:") {
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "{setting}: '{name}' is not an environment variable name (example: {setting}=env:ORDERS_TOKEN)"
                ));
            }
            Ok(SecretRef::Env(name.to_owned()))
        } else if let Some(path) = reference.strip_prefix("file:") {
            if !path.starts_with('/') {
                return Err(format!(
                    "{setting}: file:{path} is not an absolute path (example: {setting}=file:/run/secrets/orders-token)"
                ));
            }
            Ok(SecretRef::File(path.to_owned()))
        } else {
            Err(refuse())
        }
    }

    /// Reads the secret's value now.
    pub fn resolve(&self, setting: &str) -> Result<String, String> {
        match self {
            SecretRef::Env(name) => std::env::var(name)
                .map_err(|_| format!("{setting}: environment variable {name} is not set")),
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end().to_owned())
                .map_err(|e| format!("{setting}: cannot read {path}: {e}")),
        }
    }
}

impl fmt::Display for SecretRef {
    /// The reference as written (never the value).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_references_are_accepted() {
        assert_eq!(
            SecretRef::parse("bearer_token", "env:TOKEN_1").unwrap(),
            SecretRef::Env("TOKEN_1".into())
        );
        assert_eq!(
            SecretRef::parse("bearer_token", "file:/run/s")
                .unwrap()
                .to_string(),
            "file:/run/s"
        );
        let err = SecretRef::parse("bearer_token", "hunter2").unwrap_err();
        assert!(err.contains("never the secret itself"), "{err}");
        assert!(!err.contains("hunter2"), "the literal is not echoed: {err}");
        assert!(SecretRef::parse("t", "env:").is_err());
        assert!(SecretRef::parse("t", "env:A-B").is_err());
        assert!(SecretRef::parse("t", "file:relative").is_err());
    }
}
