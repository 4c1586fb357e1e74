//! FILE send: one file per message (temp name, fsync, rename — no torn files), or append
//! to one file. Never writes outside the configured folder.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use uuid::Uuid;

use super::config::{FileSendConfig, MacroError, NamePattern, FILE_TEMP_MARKER};
use crate::error::ConfigError;
use crate::macros::MacroValues;
use crate::settings::Settings;
use crate::{Body, Fence, Health, OutboundMessage, OutcomeSender, SendAdapter, SendReport};

/// Why one FILE send failed.
#[derive(Debug, thiserror::Error)]
pub enum FileSendError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Macro(#[from] MacroError),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The ordered port's owner lost its lease before it could change the file: nothing
    /// was written (the next owner sends the message).
    #[error("{path}: not written, this instance no longer owns the ordered port")]
    Fenced { path: PathBuf },
}

impl FileSendError {
    /// A bad address or macro value can never succeed; an I/O error (folder missing, not
    /// writable, disk full) may once an operator fixes it.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            FileSendError::Io { .. } | FileSendError::Fenced { .. }
        )
    }

    fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        FileSendError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// The FILE send adapter. Stateless apart from a lock that keeps appends of concurrent
/// batches from interleaving.
#[derive(Debug, Default)]
pub struct FileSendAdapter {
    append_lock: Arc<Mutex<()>>,
    /// When each folder was last swept for stale temp files.
    swept: Arc<Mutex<std::collections::HashMap<PathBuf, std::time::Instant>>>,
}

/// A temp file older than this was left by an instance that died mid-write: removed.
pub const FILE_TEMP_STALE_S: u64 = 600;

/// How often one folder is swept for stale temp files, at most.
pub const FILE_TEMP_SWEEP_INTERVAL_S: u64 = 3600;

/// Removes temp files (`.<name>.mbx-tmp-<uuid>`) older than [`FILE_TEMP_STALE_S`] from
/// `folder`, at most once per [`FILE_TEMP_SWEEP_INTERVAL_S`] per folder; returns how many.
fn sweep_stale_temp_files(
    swept: &Mutex<std::collections::HashMap<PathBuf, std::time::Instant>>,
    folder: &Path,
) -> usize {
    {
        let mut last = swept.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.get(folder).is_none_or(|t| {
            t.elapsed() >= std::time::Duration::from_secs(FILE_TEMP_SWEEP_INTERVAL_S)
        });
        if !due {
            return 0;
        }
        last.insert(folder.to_owned(), std::time::Instant::now());
    }
    let Ok(entries) = fs::read_dir(folder) else {
        return 0;
    };
    let stale = std::time::Duration::from_secs(FILE_TEMP_STALE_S);
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_temp = name
            .to_str()
            .is_some_and(|n| n.starts_with('.') && n.contains(FILE_TEMP_MARKER));
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > stale);
        if is_temp && old && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(folder = %folder.display(), removed, "removed stale temp files of a dead writer");
    }
    removed
}

impl FileSendAdapter {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SendAdapter for FileSendAdapter {
    fn name(&self) -> &'static str {
        "FILE"
    }

    fn validate(&self, address: &str, settings: &Settings) -> Result<(), ConfigError> {
        FileSendConfig::parse(address, settings).map(|_| ())
    }

    fn send(&self, batch: Vec<OutboundMessage>, outcomes: OutcomeSender) {
        let append_lock = Arc::clone(&self.append_lock);
        let swept = Arc::clone(&self.swept);
        // File I/O blocks: the whole batch runs on one blocking thread, in order (which is
        // what an ordered port's append file needs), reporting each message as it is done.
        tokio::task::spawn_blocking(move || {
            for message in &batch {
                let written = write_message(message, &append_lock, &swept);
                let checkpoint = match &written {
                    Ok((path, Some(len))) => Some(append_checkpoint(path, *len)),
                    _ => None,
                };
                let result = written
                    .map(|(path, _)| path.display().to_string())
                    .map_err(|err| {
                        let retryable = err.is_retryable();
                        (err, retryable)
                    });
                let outcome = crate::outcome_of(message, "file", result);
                let report = SendReport {
                    delivery_id: message.delivery_id,
                    message_id: message.message_id,
                    outcome,
                    checkpoint,
                };
                if outcomes.blocking_send(report).is_err() {
                    tracing::debug!(delivery_id = %message.delivery_id, "outcome receiver closed; report dropped");
                }
            }
        });
    }

    async fn restore(&self, checkpoint: &str, fence: &Fence) -> Result<(), String> {
        let (checkpoint, fence) = (checkpoint.to_owned(), fence.clone());
        tokio::task::spawn_blocking(move || restore_append_checkpoint(&checkpoint, &fence))
            .await
            .map_err(|e| format!("restore task failed: {e}"))?
    }

    async fn health(&self, address: &str, settings: &Settings) -> Health {
        let config = match FileSendConfig::parse(address, settings) {
            Ok(c) => c,
            Err(e) => return Health::unhealthy(e.to_string()),
        };
        let folder = config.folder;
        let probe = tokio::task::spawn_blocking(move || probe_writable(&folder)).await;
        match probe {
            Ok(Ok(())) => Health::Healthy,
            Ok(Err(e)) => Health::unhealthy(e.to_string()),
            Err(e) => Health::unhealthy(format!("health probe failed: {e}")),
        }
    }
}

/// Creates and removes a hidden probe file: the folder exists and is writable.
fn probe_writable(folder: &Path) -> Result<(), FileSendError> {
    let probe = folder.join(format!(".mbx-health{FILE_TEMP_MARKER}{}", Uuid::new_v4()));
    File::create(&probe).map_err(|e| FileSendError::io("create probe file", &probe, e))?;
    fs::remove_file(&probe).map_err(|e| FileSendError::io("remove probe file", &probe, e))
}

/// Writes one message; returns the path written.
fn write_message(
    message: &OutboundMessage,
    append_lock: &Mutex<()>,
    swept: &Mutex<std::collections::HashMap<PathBuf, std::time::Instant>>,
) -> Result<(PathBuf, Option<u64>), FileSendError> {
    let config = FileSendConfig::parse(&message.address, &message.settings)?;
    sweep_stale_temp_files(swept, &config.folder);
    let name = config.pattern.render(&MacroValues::of(message))?;
    let path = NamePattern::path_in(&config.folder, &name);
    if config.append {
        // A poisoned lock only means another append panicked; the file itself is fine.
        let _guard = append_lock.lock().unwrap_or_else(|p| p.into_inner());
        let len = if config.records {
            let header = format!(
                "#mbx Sequence={} Epoch={} Length={}\n",
                message.context.sequence().unwrap_or("-"),
                message.context.epoch().unwrap_or("-"),
                message.body.len()
            );
            append(
                &path,
                Some(header.as_bytes()),
                &message.body,
                message.fence.as_ref(),
            )?
        } else {
            append(&path, None, &message.body, message.fence.as_ref())?
        };
        return Ok((path, Some(len)));
    }
    write_new(&config.folder, &name, &path, &message.body)?;
    Ok((path, None))
}

/// Temp name in the same folder, write (a large body one chunk at a time), fsync, rename
/// into place, fsync the folder.
fn write_new(folder: &Path, name: &str, path: &Path, body: &Body) -> Result<(), FileSendError> {
    let tmp = folder.join(format!(".{name}{FILE_TEMP_MARKER}{}", Uuid::new_v4()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| FileSendError::io("create", &tmp, e))?;
        body.write_blocking(&mut f)
            .map_err(|e| FileSendError::io("write", &tmp, e))?;
        f.sync_all()
            .map_err(|e| FileSendError::io("fsync", &tmp, e))?;
        drop(f);
        // Replaces an existing file of the same name: a re-sent message (same
        // %MessageID%) overwrites its own earlier copy instead of failing forever.
        fs::rename(&tmp, path).map_err(|e| FileSendError::io("rename into place", path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(folder)
}

/// How often an owner that finds an append file locked tries again.
const APPEND_LOCK_RETRY_MS: u64 = 20;

/// Takes the exclusive lock of an append file (`flock`, released when `f` is closed),
/// then checks `fence`: the lock serialises every owner's change of the file, so a
/// change made under the lock with the fence allowing it cannot land after a later
/// owner's restore or append. A former owner paused while it holds the lock holds the
/// next one off until it is done (or dies); the lock is held for one append or one
/// truncate only. Waits while the lock is taken and the fence allows; without a fence
/// (an unordered port) it waits for the lock only.
fn lock_for_change(f: &File, path: &Path, fence: Option<&Fence>) -> Result<(), FileSendError> {
    loop {
        match f.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                if fence.is_some_and(|fence| !fence.allows()) {
                    return Err(FileSendError::Fenced {
                        path: path.to_owned(),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(APPEND_LOCK_RETRY_MS));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(FileSendError::io("lock", path, e));
            }
        }
    }
    if fence.is_some_and(|fence| !fence.allows()) {
        return Err(FileSendError::Fenced {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Appends the record `header` (if any) and the body to `path` (created if missing) under
/// the file's lock, fenced, and fsyncs it; returns the file's length afterwards (the
/// append checkpoint). A crash part-way leaves a torn record past the committed length,
/// which the next owner's restore removes.
fn append(
    path: &Path,
    header: Option<&[u8]>,
    body: &Body,
    fence: Option<&Fence>,
) -> Result<u64, FileSendError> {
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| FileSendError::io("open for append", path, e))?;
    lock_for_change(&f, path, fence)?;
    if let Some(header) = header {
        f.write_all(header)
            .map_err(|e| FileSendError::io("append to", path, e))?;
    }
    body.write_blocking(&mut f)
        .map_err(|e| FileSendError::io("append to", path, e))?;
    f.sync_data()
        .map_err(|e| FileSendError::io("fsync", path, e))?;
    f.metadata()
        .map(|m| m.len())
        .map_err(|e| FileSendError::io("stat", path, e))
}

/// `<length>:<path>`: the committed length of an append file.
fn append_checkpoint(path: &Path, len: u64) -> String {
    format!("{len}:{}", path.display())
}

/// Truncates an append file to its committed length (see `SendAdapter::restore`), under
/// the file's lock and only while `fence` allows it; a file already shorter, or missing,
/// is left as it is.
pub fn restore_append_checkpoint(checkpoint: &str, fence: &Fence) -> Result<(), String> {
    let (len, path) = checkpoint
        .split_once(':')
        .and_then(|(l, p)| Some((l.parse::<u64>().ok()?, Path::new(p))))
        .ok_or_else(|| format!("not a FILE append checkpoint: {checkpoint:?}"))?;
    let f = match OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("opening {}: {e}", path.display())),
    };
    lock_for_change(&f, path, Some(fence)).map_err(|e| e.to_string())?;
    let current = f
        .metadata()
        .map_err(|e| format!("stat {}: {e}", path.display()))?
        .len();
    if current > len {
        f.set_len(len)
            .map_err(|e| format!("truncating {}: {e}", path.display()))?;
        f.sync_all()
            .map_err(|e| format!("fsync {}: {e}", path.display()))?;
        tracing::info!(path = %path.display(), from = current, to = len,
                       "append file truncated to its committed length after a takeover");
    }
    Ok(())
}

/// Makes a rename durable: fsync the directory that holds it.
pub(crate) fn sync_dir(folder: &Path) -> Result<(), FileSendError> {
    File::open(folder)
        .and_then(|d| d.sync_all())
        .map_err(|e| FileSendError::io("fsync folder", folder, e))
}
