//! The errors of the adapter layer. Each adapter's send errors live in its own module
//! (`file::send::FileSendError`, `http::send::HttpSendError`) and say whether they are
//! retryable; these are the ones shared by every adapter.

use std::path::PathBuf;

/// An address or a setting that cannot work: refused at configuration time, or, for a
/// per-message address, reported as a non-retryable failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("address {address:?}: {problem} (example: {example})")]
    BadAddress {
        address: String,
        problem: String,
        example: &'static str,
    },
    #[error("unknown setting {key:?} for the {adapter} adapter (known: {known})")]
    UnknownSetting {
        adapter: &'static str,
        key: String,
        known: String,
    },
    #[error("setting {key}={value:?}: {problem}")]
    BadSetting {
        key: String,
        value: String,
        problem: String,
    },
    /// A secret setting given as anything but a reference: its value is not repeated.
    #[error("setting {problem}")]
    Secret { problem: String },
}

impl ConfigError {
    pub(crate) fn address(
        address: &str,
        problem: impl Into<String>,
        example: &'static str,
    ) -> Self {
        ConfigError::BadAddress {
            address: address.to_owned(),
            problem: problem.into(),
            example,
        }
    }

    pub(crate) fn setting(key: &str, value: &str, problem: impl Into<String>) -> Self {
        ConfigError::BadSetting {
            key: key.to_owned(),
            value: value.to_owned(),
            problem: problem.into(),
        }
    }
}

/// Which side of an adapter an operation concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Receive,
    Send,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Receive => "receive",
            Side::Send => "send",
        })
    }
}

/// Looking an address up in the registry failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("address {address:?} has no scheme (example: file:///data/out/%MessageID%.xml)")]
    NoScheme { address: String },
    #[error("no adapter for {scheme}:// in this build (address {address:?}; adapters: {known})")]
    UnknownScheme {
        scheme: String,
        address: String,
        known: String,
    },
    #[error("the {adapter} adapter has no {side} side here{hint}")]
    Unsupported {
        adapter: &'static str,
        side: Side,
        hint: &'static str,
    },
    #[error("--ordered: the {adapter} adapter cannot receive in order (only file:// and amqp:// locations can; over HTTP the client keeps its order)")]
    Unordered { adapter: &'static str },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot build the {adapter} adapter: {reason}")]
    Build {
        adapter: &'static str,
        reason: String,
    },
}

/// The host could not commit a submitted batch: nothing of it may be acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("submit failed: {reason}")]
pub struct SubmitError {
    pub reason: String,
}

impl SubmitError {
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// A receive adapter's errors.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error("receive task failed: {0}")]
    Task(String),
}

impl ReceiveError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ReceiveError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
