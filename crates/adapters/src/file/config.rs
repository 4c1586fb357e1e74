//! FILE adapter addresses and settings, validated into typed configs.
//!
//! Receive: `file:///dir/*.xml` — a folder and a file-name mask (`*` and `?`).
//! Send: `file:///dir/%MessageID%.xml` — a folder and a file-name pattern with macros.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::error::ConfigError;
use crate::macros::{ExpandError, MacroValues, Part, Template, FILE_NAME_MACROS};
use crate::settings::{self, Settings};

/// Files per receive batch, unless `batch_max` says otherwise.
pub const FILE_RECEIVE_BATCH_MAX: u64 = 100;
/// The largest `batch_max` an operator may set.
pub const FILE_RECEIVE_BATCH_MAX_LIMIT: u64 = 10_000;
/// Bytes of file bodies per receive batch, unless `batch_bytes_max` says otherwise. A
/// single file larger than this (but within `max_message_size`) goes in a batch of its own.
pub const FILE_RECEIVE_BATCH_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// The largest `batch_bytes_max` an operator may set.
pub const FILE_RECEIVE_BATCH_BYTES_LIMIT: u64 = 1024 * 1024 * 1024;
/// Files larger than this are rejected, unless `max_message_size` says otherwise (the
/// MessageBox's default `--max-message-size`, 100MB).
pub const FILE_RECEIVE_MESSAGE_SIZE_DEFAULT_BYTES: u64 = 100 * 1000 * 1000;
/// The largest `max_message_size` an operator may set.
pub const FILE_RECEIVE_MESSAGE_SIZE_LIMIT_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// How often an idle folder is polled, unless `poll_interval` says otherwise.
pub const FILE_RECEIVE_POLL_INTERVAL_DEFAULT_MS: u64 = 1_000;
/// At most this many directory entries are examined per poll, so a huge folder costs
/// bounded memory; the rest are picked up by later polls.
pub const FILE_RECEIVE_SCAN_ENTRIES_MAX: usize = 100_000;
/// How long a file's size and mtime must stay unchanged before it is taken, unless
/// `settle` says otherwise (a file still being written is never taken half-written).
pub const FILE_RECEIVE_SETTLE_DEFAULT_MS: u64 = 1_000;
/// Where oversized files are moved, inside the receive folder.
pub const FILE_REJECTED_DIR: &str = ".mbx-rejected";
/// Where files dropped as duplicates (received again within the dedup window) are moved,
/// inside the receive folder.
pub const FILE_DUPLICATES_DIR: &str = ".mbx-duplicates";
/// A claimed file is named `.<original>.mbx-claimed-<claim id>`.
pub const FILE_CLAIM_MARKER: &str = ".mbx-claimed-";
/// The longest file name FILE send writes: the temporary name
/// `.<name>.mbx-tmp-<uuid>` must fit the 255-byte name limit of common file systems.
pub const FILE_SEND_NAME_MAX_BYTES: usize = 200;
/// A file being written by FILE send is named `.<final>.mbx-tmp-<uuid>` until renamed.
pub const FILE_TEMP_MARKER: &str = ".mbx-tmp-";

pub(crate) const RECEIVE_EXAMPLE: &str = "file:///data/in/*.xml";
pub(crate) const SEND_EXAMPLE: &str = "file:///data/out/%MessageID%.xml";

/// The settings FILE receive accepts.
pub const FILE_RECEIVE_SETTINGS: &[&str] = &[
    "max_message_size",
    "batch_max",
    "batch_bytes_max",
    "poll_interval",
    "content_type",
    "settle",
];
/// The settings FILE send accepts.
pub const FILE_SEND_SETTINGS: &[&str] = &["append", "records"];

/// A validated FILE receive location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReceiveConfig {
    /// The folder polled (absolute).
    pub folder: PathBuf,
    /// Which file names are received; names starting with `.` never are.
    pub mask: Mask,
    /// `max_message_size`: larger files are moved to `.mbx-rejected/` with a reason file.
    pub max_message_size_bytes: u64,
    /// `batch_max`: at most this many files per submitted batch.
    pub batch_count_max: usize,
    /// `batch_bytes_max`: at most this many body bytes per batch (one bigger file alone).
    pub batch_bytes_max: u64,
    /// `poll_interval`: the wait between polls when the folder had nothing to receive.
    pub poll_interval: Duration,
    /// `content_type`: the content type given to received bodies; by default guessed from
    /// the extension (`.xml`, `.json`, `.txt`), else `application/octet-stream`.
    pub content_type: Option<String>,
    /// `settle`: a file is taken only once its size and mtime have stayed unchanged this
    /// long (`0s`: at once, for writers that write then rename).
    pub settle: Duration,
}

impl FileReceiveConfig {
    pub fn parse(address: &str, settings: &Settings) -> Result<Self, ConfigError> {
        settings::check_known("FILE", settings, FILE_RECEIVE_SETTINGS)?;
        let (folder, last) = split_address(address, RECEIVE_EXAMPLE)?;
        let mask =
            Mask::parse(last).map_err(|p| ConfigError::address(address, p, RECEIVE_EXAMPLE))?;
        let max_message_size_bytes = settings::get_size_bytes(
            settings,
            "max_message_size",
            FILE_RECEIVE_MESSAGE_SIZE_DEFAULT_BYTES,
            FILE_RECEIVE_MESSAGE_SIZE_LIMIT_BYTES,
        )?;
        let batch_count_max = settings::get_count(
            settings,
            "batch_max",
            FILE_RECEIVE_BATCH_MAX,
            FILE_RECEIVE_BATCH_MAX_LIMIT,
        )? as usize;
        let batch_bytes_max = settings::get_size_bytes(
            settings,
            "batch_bytes_max",
            FILE_RECEIVE_BATCH_BYTES_MAX,
            FILE_RECEIVE_BATCH_BYTES_LIMIT,
        )?;
        let poll_interval = settings::get_duration(
            settings,
            "poll_interval",
            Duration::from_millis(FILE_RECEIVE_POLL_INTERVAL_DEFAULT_MS),
            Duration::from_millis(10),
            Duration::from_secs(3600),
        )?;
        let content_type = match settings.get("content_type") {
            None => None,
            Some(ct) if ct.is_empty() || ct.chars().any(char::is_control) => {
                return Err(ConfigError::setting(
                    "content_type",
                    ct,
                    "expected e.g. application/xml",
                ))
            }
            Some(ct) => Some(ct.clone()),
        };
        let settle = settings::get_duration(
            settings,
            "settle",
            Duration::from_millis(FILE_RECEIVE_SETTLE_DEFAULT_MS),
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;
        Ok(Self {
            folder,
            mask,
            max_message_size_bytes,
            batch_count_max,
            batch_bytes_max,
            poll_interval,
            content_type,
            settle,
        })
    }

    /// The content type for a received file named `name`.
    pub fn content_type_for(&self, name: &str) -> String {
        if let Some(ct) = &self.content_type {
            return ct.clone();
        }
        let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("xml") => "application/xml",
            Some("json") => "application/json",
            Some("txt") | Some("csv") => "text/plain",
            _ => "application/octet-stream",
        }
        .to_owned()
    }
}

/// A validated FILE send address and settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSendConfig {
    /// The folder written to (absolute); nothing is ever written outside it.
    pub folder: PathBuf,
    /// The file-name pattern, e.g. `%MessageID%.xml`.
    pub pattern: NamePattern,
    /// `append`: append every message to the one file the pattern names (fsync'd after
    /// each write) instead of writing one file per message.
    pub append: bool,
    /// `records` (append mode): precede each message with a header line
    /// `#mbx Sequence=<n> Epoch=<e> Length=<bytes>` so a reader can drop a stale owner's
    /// record or split messages without separators.
    pub records: bool,
}

impl FileSendConfig {
    pub fn parse(address: &str, settings: &Settings) -> Result<Self, ConfigError> {
        settings::check_known("FILE", settings, FILE_SEND_SETTINGS)?;
        let (folder, last) = split_address(address, SEND_EXAMPLE)?;
        let pattern =
            NamePattern::parse(last).map_err(|p| ConfigError::address(address, p, SEND_EXAMPLE))?;
        let append = settings::get_bool(settings, "append", false)?;
        let records = settings::get_bool(settings, "records", false)?;
        if records && !append {
            return Err(ConfigError::setting(
                "records",
                "true",
                "records are headers of an append file; add --set append=true".to_owned(),
            ));
        }
        Ok(Self {
            folder,
            pattern,
            append,
            records,
        })
    }
}

/// Splits `file:///dir/last` into an absolute folder and the last component.
fn split_address<'a>(
    address: &'a str,
    example: &'static str,
) -> Result<(PathBuf, &'a str), ConfigError> {
    let rest = address
        .strip_prefix("file://")
        .ok_or_else(|| ConfigError::address(address, "expected a file:// address", example))?;
    if !rest.starts_with('/') {
        return Err(ConfigError::address(
            address,
            "expected an absolute path with an empty authority (three slashes)",
            example,
        ));
    }
    if rest.chars().any(|c| c == '\0' || c.is_control()) {
        return Err(ConfigError::address(
            address,
            "control characters are not allowed",
            example,
        ));
    }
    let (dir, last) = rest.rsplit_once('/').unwrap_or(("", rest));
    if last.is_empty() {
        return Err(ConfigError::address(
            address,
            "expected a file name or mask after the folder",
            example,
        ));
    }
    let folder = if dir.is_empty() {
        PathBuf::from("/")
    } else {
        PathBuf::from(dir)
    };
    if folder
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(ConfigError::address(
            address,
            "'.' and '..' are not allowed in the folder",
            example,
        ));
    }
    Ok((folder, last))
}

// ------------------------------------------------------------------------------------------
// Masks

/// A file-name mask: `*` matches any run of characters, `?` exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask(String);

impl Mask {
    pub fn parse(mask: &str) -> Result<Self, String> {
        if mask.contains(['/', '\\']) {
            return Err("the mask must be one file-name component".into());
        }
        if mask.starts_with('.') {
            return Err(
                "names starting with '.' are reserved for claimed and temporary files".into(),
            );
        }
        Ok(Self(mask.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` matches; names starting with `.` never do.
    pub fn matches(&self, name: &str) -> bool {
        !name.starts_with('.') && glob_match(self.0.as_bytes(), name.as_bytes())
    }
}

/// Iterative `*`/`?` matching with one backtrack point (linear in practice).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            // `?` matches one byte; fine for the ASCII masks operators write.
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

// ------------------------------------------------------------------------------------------
// Name patterns (the macros are `crate::macros`')

/// A file-name pattern: literal text and macros ([`FILE_NAME_MACROS`]: `%MessageID%`,
/// `%SendPortName%`, `%SourceFileName%`, `%datetime%`); expands to exactly one path
/// component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern(Template);

/// Why a pattern could not be expanded for a message: it cannot be sent in principle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacroError {
    #[error(transparent)]
    Expand(#[from] ExpandError),
    #[error("file name {name:?} is not usable: {problem}")]
    BadName { name: String, problem: &'static str },
}

impl NamePattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let template = Template::parse(pattern, FILE_NAME_MACROS)
            .map_err(|e| format!("pattern {pattern:?}: {e}"))?;
        for part in template.parts() {
            if let Part::Literal(l) = part {
                check_component(l).map_err(|p| format!("pattern {pattern:?}: {p}"))?;
            }
        }
        Ok(Self(template))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Expands the pattern for one message. Every macro value must be one path component.
    pub fn render(&self, values: &MacroValues<'_>) -> Result<String, MacroError> {
        let name = self.0.expand(values, |v| {
            check_component(v).map_err(|p| format!("is not one path component: {p}"))
        })?;
        if name.len() > FILE_SEND_NAME_MAX_BYTES {
            return Err(MacroError::BadName {
                name,
                problem: "longer than FILE_SEND_NAME_MAX_BYTES (200)",
            });
        }
        if name.is_empty() || name == "." || name.starts_with('.') {
            return Err(MacroError::BadName {
                name,
                problem: "empty or starting with '.' (reserved for claimed and temporary files)",
            });
        }
        Ok(name)
    }

    /// The path of `name` inside `folder`; `name` is a single checked component, so the
    /// result is always directly inside `folder`.
    pub fn path_in(folder: &Path, name: &str) -> PathBuf {
        folder.join(name)
    }
}

/// A macro value or literal must be usable as (part of) one path component.
pub(crate) fn check_component(v: &str) -> Result<(), &'static str> {
    if v.contains('/') {
        Err("contains '/'")
    } else if v.contains('\\') {
        Err("contains '\\'")
    } else if v.contains("..") {
        Err("contains '..'")
    } else if v.contains('\0') {
        Err("contains NUL")
    } else if v.chars().any(char::is_control) {
        Err("contains a control character")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_match_star_and_question_mark() {
        let m = Mask::parse("*.xml").unwrap();
        assert!(m.matches("a.xml"));
        assert!(!m.matches(".xml"));
        assert!(!m.matches("a.json"));
        assert!(!m.matches(".a.xml.mbx-claimed-x"));
        let m = Mask::parse("in-??.*").unwrap();
        assert!(m.matches("in-01.txt"));
        assert!(!m.matches("in-1.txt"));
        assert!(Mask::parse("*").unwrap().matches("anything"));
        assert!(Mask::parse("a/*.xml").is_err());
    }

    #[test]
    fn addresses_split_into_folder_and_last_component() {
        let c = FileReceiveConfig::parse("file:///data/in/*.xml", &Settings::new()).unwrap();
        assert_eq!(c.folder, PathBuf::from("/data/in"));
        assert_eq!(c.mask.as_str(), "*.xml");
        assert!(FileReceiveConfig::parse("file://host/data/*.xml", &Settings::new()).is_err());
        assert!(FileReceiveConfig::parse("file:///data/../etc/*.xml", &Settings::new()).is_err());
        assert!(FileReceiveConfig::parse("file:///data/in/", &Settings::new()).is_err());
        let s = crate::settings_from([("nope", "1")]);
        assert!(matches!(
            FileReceiveConfig::parse("file:///d/*.xml", &s),
            Err(ConfigError::UnknownSetting { .. })
        ));
    }

    #[test]
    fn patterns_parse_macros_and_refuse_unknown_ones() {
        assert!(NamePattern::parse("%MessageID%.xml").is_ok());
        assert!(NamePattern::parse("%SourceFileName%_%datetime%.out").is_ok());
        assert!(NamePattern::parse("%Nope%.xml").is_err());
        assert!(NamePattern::parse("%MessageID.xml").is_err());
        assert!(NamePattern::parse("a/%MessageID%.xml").is_err());
        let context = crate::MessageContext::new();
        let values = MacroValues {
            message_id: uuid::Uuid::nil(),
            port_name: "out",
            context: &context,
            now: chrono::DateTime::parse_from_rfc3339("2026-11-23T10:15:00.123Z")
                .unwrap()
                .with_timezone(&chrono::Utc),
        };
        let p = NamePattern::parse("%SendPortName%-%datetime%.txt").unwrap();
        assert_eq!(p.render(&values).unwrap(), "out-2026-11-23T101500.123Z.txt");
        let p = NamePattern::parse(".%MessageID%").unwrap();
        assert!(matches!(p.render(&values), Err(MacroError::BadName { .. })));
    }
}
