//! The spool folder of HTTP receive: a request body above 1 MiB is written to a file here
//! as it arrives (never held whole in memory), published from it in 1 MiB chunks like a
//! received FILE, and removed once the publish has ended, whatever its outcome — also
//! when the client leaves mid-body (the handler is dropped) or the body is over the limit.
//!
//! The folder is `$TMPDIR/mbx-http-receive/<uuid>/` (`std::env::temp_dir()`; `TMPDIR`
//! chooses the disk), one per host process, next to `<uuid>.lock`, which the process
//! holds locked while it runs. A process killed mid-body cannot remove its files: the
//! next process to open a spool on the machine removes every folder whose lock it can
//! take (its owner is gone).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

/// The folder under the temporary directory that holds the spools of all host processes.
pub const SPOOL_FOLDER: &str = "mbx-http-receive";

/// Extension of a body being received.
pub const PART_EXTENSION: &str = "part";

/// This process's spool folder, removed when it is dropped.
pub struct Spool {
    dir: PathBuf,
    lock_path: PathBuf,
    /// Held (locked) for the life of the process: the folder is in use.
    _lock: File,
}

impl Spool {
    /// Makes this process's spool folder under `root/mbx-http-receive/`, after removing
    /// those whose process is gone.
    pub fn open(root: &Path) -> io::Result<Spool> {
        let base = root.join(SPOOL_FOLDER);
        std::fs::create_dir_all(&base)?;
        sweep(&base);
        let name = uuid::Uuid::new_v4().simple().to_string();
        let lock_path = base.join(format!("{name}.lock"));
        // locked before the folder exists, so a sweep never takes a folder being made
        let lock = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock_path)?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::Error(e) => e,
            std::fs::TryLockError::WouldBlock => io::Error::other("locked by another process"),
        })?;
        let dir = base.join(&name);
        std::fs::create_dir(&dir)?;
        info!(folder = %dir.display(), "HTTP receive spools bodies above 1 MiB here");
        Ok(Spool {
            dir,
            lock_path,
            _lock: lock,
        })
    }

    /// The folder bodies are written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new, empty spool file for one body, removed when the returned guard is dropped.
    pub async fn create(&self) -> io::Result<(SpoolFile, tokio::fs::File)> {
        let path = self.dir.join(format!(
            "{}.{PART_EXTENSION}",
            uuid::Uuid::new_v4().simple()
        ));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok((SpoolFile { path }, file))
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// Removes the spool folders (and their lock files) of processes that are gone: those
/// whose lock can be taken.
fn sweep(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "lock") {
            continue;
        }
        let Ok(lock) = File::open(&path) else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue; // its process runs
        }
        let dir = path.with_extension("");
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                info!(folder = %dir.display(), "removed the spool of a host process that is gone")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(folder = %dir.display(), error = %e, "cannot remove the spool of a host process that is gone");
                continue;
            }
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// One body's spool file: removed when dropped (after its publish, on an error, or when
/// the request's handler is dropped because its client left).
pub struct SpoolFile {
    path: PathBuf,
}

impl SpoolFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                warn!(file = %self.path.display(), error = %e, "cannot remove a spooled HTTP body");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_spool_file_goes_when_dropped_and_a_spool_when_its_process_is_gone() {
        let root = std::env::temp_dir().join(format!("mbx-spool-test-{}", uuid::Uuid::new_v4()));
        let base = root.join(SPOOL_FOLDER);
        let spool = Spool::open(&root).expect("spool");
        let (guard, _file) = spool.create().await.expect("create");
        let path = guard.path().to_owned();
        assert!(path.exists());
        drop(guard);
        assert!(!path.exists(), "removed when dropped");

        // what a killed process leaves: its folder with a body, its lock file unlocked
        std::fs::create_dir(base.join("gone")).expect("dead folder");
        std::fs::write(base.join("gone").join("x.part"), b"half a body").expect("part");
        std::fs::write(base.join("gone.lock"), b"").expect("dead lock");
        let other = Spool::open(&root).expect("second spool");
        assert!(
            !base.join("gone").exists(),
            "a dead process's spool is swept"
        );
        assert!(!base.join("gone.lock").exists());
        assert!(spool.dir().exists(), "a running process's spool is kept");

        let first = spool.dir().to_owned();
        drop(spool);
        assert!(!first.exists(), "a spool goes with its process");
        drop(other);
        let _ = std::fs::remove_dir_all(&root);
    }
}
