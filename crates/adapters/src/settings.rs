//! Adapter settings (`--set KEY=VALUE`): a map of strings, validated by each adapter's
//! `config.rs` into a typed config before anything runs.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::ConfigError;

/// Adapter settings as configured: key → value.
pub type Settings = BTreeMap<String, String>;

/// Refuses any key not in `known` (the `deny_unknown_fields` of settings maps).
pub(crate) fn check_known(
    adapter: &'static str,
    settings: &Settings,
    known: &[&str],
) -> Result<(), ConfigError> {
    for key in settings.keys() {
        if !known.contains(&key.as_str()) {
            return Err(ConfigError::UnknownSetting {
                adapter,
                key: key.clone(),
                known: known.join(", "),
            });
        }
    }
    Ok(())
}

/// `true`/`false` (also `yes`/`no`, `1`/`0`).
pub(crate) fn get_bool(settings: &Settings, key: &str, default: bool) -> Result<bool, ConfigError> {
    match settings.get(key).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) => match v.as_str() {
            "true" | "yes" | "1" => Ok(true),
            "false" | "no" | "0" => Ok(false),
            _ => Err(ConfigError::setting(key, &v, "expected true or false")),
        },
    }
}

/// A positive integer within `1..=max`.
pub(crate) fn get_count(
    settings: &Settings,
    key: &str,
    default: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let Some(raw) = settings.get(key) else {
        return Ok(default);
    };
    let n: u64 = raw
        .trim()
        .parse()
        .map_err(|_| ConfigError::setting(key, raw, "expected a positive integer, e.g. 100"))?;
    if n == 0 || n > max {
        return Err(ConfigError::setting(
            key,
            raw,
            format!("must be between 1 and {max}"),
        ));
    }
    Ok(n)
}

/// A size: plain bytes or with a unit (`KB`, `MB`, `GB` = powers of 1000; `KiB`, `MiB`,
/// `GiB` = powers of 1024), within `1..=max_bytes`; the syntax of `--max-message-size`
/// ([`mbx_vocabulary::parse_size`]).
pub(crate) fn get_size_bytes(
    settings: &Settings,
    key: &str,
    default_bytes: u64,
    max_bytes: u64,
) -> Result<u64, ConfigError> {
    let Some(raw) = settings.get(key) else {
        return Ok(default_bytes);
    };
    let bytes = mbx_vocabulary::parse_size(raw)
        .map_err(|_| ConfigError::setting(key, raw, "expected a size, e.g. 100MB or 1048576"))?;
    if bytes == 0 || bytes > max_bytes {
        return Err(ConfigError::setting(
            key,
            raw,
            format!("must be between 1 and {max_bytes} bytes"),
        ));
    }
    Ok(bytes)
}

/// A duration like `30s`, `500ms`, `5m`, within `min..=max`.
pub(crate) fn get_duration(
    settings: &Settings,
    key: &str,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let Some(raw) = settings.get(key) else {
        return Ok(default);
    };
    let d = humantime::parse_duration(raw.trim())
        .map_err(|e| ConfigError::setting(key, raw, format!("{e}; expected e.g. 30s or 500ms")))?;
    if d < min || d > max {
        return Err(ConfigError::setting(
            key,
            raw,
            format!(
                "must be between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

/// The setting of a solicit-response port naming the request's properties its response
/// carries too (`copy_properties=Order.Id,Order.Region`; none by default).
pub const COPY_PROPERTIES: &str = "copy_properties";

/// The property names of `copy_properties`, each checked as a property name.
pub fn copy_properties(settings: &Settings) -> Result<Vec<String>, ConfigError> {
    let Some(raw) = settings.get(COPY_PROPERTIES) else {
        return Ok(Vec::new());
    };
    raw.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            mbx_vocabulary::validate_property_name(p)
                .map(|()| p.to_owned())
                .map_err(|e| ConfigError::setting(COPY_PROPERTIES, raw, e))
        })
        .collect()
}
