//! FILE receive: poll a folder, claim files by rename, submit, delete after commit.
//!
//! Life of a file `a.xml` on instance `I`:
//!
//! ```text
//!  a.xml ──settled──► rename ──► .a.xml.mbx-claimed-I ──submit: accepted──► deleted
//!    ▲                              │        │      └──submit: duplicate──► .mbx-duplicates/a.xml
//!    └──submit failed, or changed───┘        │                               + a.xml.reason.txt
//!       since it settled                     └──larger than max_message_size──► .mbx-rejected/a.xml
//!    ▲                                                                          + a.xml.reason.txt
//!    └──reclaim (instance I dead, decided by the host)── .a.xml.mbx-claimed-I
//!         (or deleted, if the MessageBox has this very file published) ──┘
//! ```
//!
//! A file is taken only once it is complete: its size and mtime unchanged for `settle`
//! (1 s) — an mtime already that old counts — and unchanged again after it was claimed
//! and read. Writers should still write under another name (or a hidden one) and rename
//! into place: a writer that pauses longer than `settle` can be taken half-written.
//!
//! Renames within one folder are atomic, so two instances polling the same folder never
//! both claim a file: the loser's rename finds nothing. A crash (or a pause past the
//! instance's heartbeat or the location's lease) between commit and delete leaves a
//! claimed file that was published. Its identity — device, inode and ctime, read after
//! the claim's rename — is published with its source id (name + size + mtime), so before
//! putting a claimed file back, reclaim asks the MessageBox whether that very file was
//! published ([`Submitter::published_copies`]): if so it finishes the delete (logged at
//! info). Any other claimed file goes back to the folder; if its source id was published
//! within the dedup window (e.g. its claimant had not committed yet, or an operator
//! dropped a new file with the same name, size and mtime), the MessageBox drops the
//! repeat and the file is moved to `.mbx-duplicates/` with a reason file, never deleted
//! unseen.
//!
//! An ordered location (one holder at a time, under its lease) takes files strictly in
//! name order: before each poll it puts back files still claimed by anyone else (a
//! former holder's), it stops at the first file not yet settled, and it never skips a
//! file it could not take.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use super::config::{
    FileReceiveConfig, FILE_CLAIM_MARKER, FILE_DUPLICATES_DIR, FILE_RECEIVE_SCAN_ENTRIES_MAX,
    FILE_REJECTED_DIR,
};
use crate::context::{system, MessageContext};
use crate::error::{ConfigError, ReceiveError};
use crate::{
    Body, ClaimInfo, ClaimedSource, Health, InboundMessage, ReceiveAdapter, ReceiveLocationSpec,
    ReclaimFilter, ReclaimReport, ShutdownSignal, Submitted, Submitter, BODY_IN_MEMORY_MAX_BYTES,
};

/// The longest instance id accepted as a claim id.
pub const FILE_CLAIM_ID_MAX_BYTES: usize = 64;
/// The longest file name FILE receive claims in place: the claimed name
/// `.<name>.mbx-claimed-<id>` must fit the 255-byte name limit of common file systems.
/// Longer names are moved to `.mbx-rejected/`.
pub const FILE_RECEIVE_NAME_MAX_BYTES: usize =
    255 - 1 - FILE_CLAIM_MARKER.len() - FILE_CLAIM_ID_MAX_BYTES;

/// What one poll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReport {
    /// Files submitted, committed and deleted.
    pub submitted: usize,
    /// Files dropped as duplicates by the MessageBox, moved to `.mbx-duplicates/`.
    pub duplicates: usize,
    /// Files moved to `.mbx-rejected/`.
    pub rejected: usize,
    /// A submit failed: its files were put back and the poll stopped early.
    pub submit_failed: bool,
    /// Matching files left for a later poll: not settled yet (still being written), or
    /// changed after they were claimed.
    pub unsettled: usize,
}

/// The FILE receive adapter for one receive location.
#[derive(Debug, Clone)]
pub struct FileReceiveAdapter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    location_name: String,
    address: String,
    claim_id: String,
    config: FileReceiveConfig,
    ordered: bool,
    /// Files seen but not taken yet: what they looked like and since when.
    sightings: Mutex<HashMap<String, Sighting>>,
}

/// What identifies a version of a file: its size and mtime (nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: u128,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Stamp {
            size: meta.len(),
            mtime_ns: meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos()),
        }
    }
}

/// A file as first seen with its current stamp.
#[derive(Debug, Clone, Copy)]
struct Sighting {
    stamp: Stamp,
    since: Instant,
}

/// Whether a file with `stamp` has been left alone for `settle`: its mtime is that old by
/// the wall clock, or this process has seen the same stamp for that long (which also
/// covers an mtime in the future, from a writer's skewed clock). Records the sighting.
fn is_settled(
    sightings: &mut HashMap<String, Sighting>,
    name: &str,
    stamp: Stamp,
    settle: Duration,
    now: Instant,
    wall_now_ns: u128,
) -> bool {
    if settle.is_zero() {
        return true;
    }
    let quiet_by_mtime = wall_now_ns.saturating_sub(stamp.mtime_ns) >= settle.as_nanos();
    match sightings.get(name) {
        Some(seen) if seen.stamp == stamp => {
            quiet_by_mtime || now.saturating_duration_since(seen.since) >= settle
        }
        _ => {
            sightings.insert(name.to_owned(), Sighting { stamp, since: now });
            quiet_by_mtime
        }
    }
}

/// A file found by a scan, not yet claimed.
#[derive(Debug)]
struct Candidate {
    name: String,
    stamp: Stamp,
}

/// A file this instance claimed and read.
#[derive(Debug)]
struct Claimed {
    name: String,
    claimed_path: PathBuf,
    source_id: String,
    /// The claimed file's identity ([`file_identity`]), published with its source id.
    identity: Option<String>,
    /// In memory up to 1 MiB; above, the claimed file itself (read by the engine while it
    /// publishes, never held whole).
    body: Body,
}

impl FileReceiveAdapter {
    pub fn new(spec: ReceiveLocationSpec) -> Result<Self, ConfigError> {
        let config = FileReceiveConfig::parse(&spec.address, &spec.settings)?;
        check_claim_id(&spec.instance_id)?;
        Ok(Self {
            inner: Arc::new(Inner {
                location_name: spec.location_name,
                address: spec.address,
                claim_id: spec.instance_id,
                config,
                ordered: spec.ordered,
                sightings: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn config(&self) -> &FileReceiveConfig {
        &self.inner.config
    }

    /// One poll: scans the folder once and submits every settled file it found that
    /// matches the mask, in name order, in batches bounded by count and bytes. Stops early
    /// (files put back) at the first failed submit.
    pub async fn poll_once(&self, submitter: &dyn Submitter) -> Result<PollReport, ReceiveError> {
        self.poll(submitter, &|| false).await
    }

    /// [`Self::poll_once`], looking at `stopped` before each batch: once it says so, no
    /// new file is taken (a batch already claimed is submitted and acknowledged first).
    async fn poll(
        &self,
        submitter: &dyn Submitter,
        stopped: &(dyn Fn() -> bool + Sync),
    ) -> Result<PollReport, ReceiveError> {
        if self.inner.ordered {
            // a former holder's claims come before any file left in the folder: if they
            // cannot be dealt with, nothing is taken
            self.put_back_foreign_claims(submitter).await?;
        }
        let inner = Arc::clone(&self.inner);
        let (mut candidates, unsettled) =
            blocking(move || inner.scan().map(|found| inner.settled(found))).await??;
        let mut report = PollReport {
            unsettled,
            ..PollReport::default()
        };
        while !candidates.is_empty() {
            if stopped() {
                break;
            }
            let inner = Arc::clone(&self.inner);
            let (rest, claimed, rejected, changed) = blocking(move || {
                let (claimed, rejected, changed) = inner.claim_batch(&mut candidates);
                (candidates, claimed, rejected, changed)
            })
            .await?;
            candidates = rest;
            report.rejected += rejected;
            report.unsettled += changed;
            if claimed.is_empty() {
                continue;
            }
            let messages: Vec<InboundMessage> =
                claimed.iter().map(|c| self.inner.inbound(c)).collect();
            let count = messages.len();
            match submitter.submit(messages).await {
                Ok(outcomes) => {
                    let inner = Arc::clone(&self.inner);
                    let duplicates =
                        blocking(move || inner.acknowledge(&claimed, &outcomes)).await?;
                    report.submitted += count - duplicates;
                    report.duplicates += duplicates;
                    tracing::debug!(location = %self.inner.location_name, files = count, duplicates, "file batch submitted");
                }
                Err(err) => {
                    tracing::warn!(
                        location = %self.inner.location_name,
                        files = count,
                        error = %err,
                        "submit failed; files put back to be received again"
                    );
                    let inner = Arc::clone(&self.inner);
                    blocking(move || inner.restore(&claimed)).await?;
                    report.submit_failed = true;
                    return Ok(report);
                }
            }
        }
        Ok(report)
    }

    /// An ordered location's holder puts back every file claimed under another claim id:
    /// only the holder takes files, so those are a former holder's (dead, or paused past
    /// its lease, whose publish is fenced), and they come before any file left in the
    /// folder. One the former holder published (committed, not yet deleted) is deleted
    /// instead.
    async fn put_back_foreign_claims(&self, submitter: &dyn Submitter) -> Result<(), ReceiveError> {
        let own = self.inner.claim_id.clone();
        reclaim_claimed_files(
            &self.inner.location_name,
            &self.inner.config.folder,
            &move |c: &ClaimInfo| c.claim_id != own,
            submitter,
        )
        .await
        .map(|_| ())
    }
}

/// Runs a blocking file-system step off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ReceiveError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ReceiveError::Task(e.to_string()))
}

impl Inner {
    /// Lists matching regular files, in name order.
    fn scan(&self) -> Result<Vec<Candidate>, ReceiveError> {
        let folder = &self.config.folder;
        let entries =
            fs::read_dir(folder).map_err(|e| ReceiveError::io("read folder", folder, e))?;
        let mut found = Vec::new();
        for entry in entries.take(FILE_RECEIVE_SCAN_ENTRIES_MAX) {
            let Ok(entry) = entry else { continue };
            let Ok(name) = entry.file_name().into_string() else {
                continue; // not UTF-8: cannot be named in a context property
            };
            if !self.config.mask.matches(&name) {
                continue;
            }
            match entry.metadata() {
                Ok(m) if m.is_file() => found.push(Candidate {
                    name,
                    stamp: Stamp::of(&m),
                }),
                _ => continue,
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    /// The files of a scan that have settled, in name order, and how many have not; an
    /// ordered location stops at the first one that has not (nothing overtakes it).
    /// Forgets sightings of files no longer there.
    fn settled(&self, found: Vec<Candidate>) -> (VecDeque<Candidate>, usize) {
        let now = Instant::now();
        let wall_now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut sightings = self.sightings.lock().unwrap_or_else(|p| p.into_inner());
        let present: HashSet<&str> = found.iter().map(|c| c.name.as_str()).collect();
        sightings.retain(|name, _| present.contains(name.as_str()));
        drop(present);
        let mut ready = VecDeque::new();
        let mut unsettled = 0;
        for c in found {
            let settled = is_settled(
                &mut sightings,
                &c.name,
                c.stamp,
                self.config.settle,
                now,
                wall_now_ns,
            );
            if !settled {
                unsettled += 1;
            } else if !(self.ordered && unsettled > 0) {
                ready.push_back(c);
            }
        }
        (ready, unsettled)
    }

    /// Claims and reads the next batch from `candidates`; rejects oversized files on the
    /// way. Returns the batch, how many files were rejected and how many had changed since
    /// they settled (put back for a later poll). An ordered location ends the poll at the
    /// first file it could not take (gone, changed, or an error): it never skips one.
    fn claim_batch(&self, candidates: &mut VecDeque<Candidate>) -> (Vec<Claimed>, usize, usize) {
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        let (mut rejected, mut changed) = (0, 0);
        while let Some(next) = candidates.front() {
            let fits = batch.is_empty()
                || (batch.len() < self.config.batch_count_max
                    && bytes + next.stamp.size <= self.config.batch_bytes_max);
            if !fits {
                break;
            }
            let Some(c) = candidates.pop_front() else {
                break;
            };
            let taken = match self.claim_one(&c.name, c.stamp) {
                Ok(Some(ClaimResult::Claimed(claimed))) => {
                    bytes += claimed.body.len();
                    batch.push(claimed);
                    true
                }
                Ok(Some(ClaimResult::Rejected)) => {
                    rejected += 1;
                    true
                }
                Ok(Some(ClaimResult::Changed)) => {
                    changed += 1;
                    false
                }
                Ok(None) => false, // another instance claimed it first
                Err(err) => {
                    tracing::warn!(
                        location = %self.location_name,
                        file = %c.name,
                        error = %err,
                        "cannot claim file; skipped this poll"
                    );
                    false
                }
            };
            if !taken && self.ordered {
                candidates.clear();
                break;
            }
        }
        (batch, rejected, changed)
    }

    fn claimed_path(&self, name: &str) -> PathBuf {
        self.config
            .folder
            .join(format!(".{name}{FILE_CLAIM_MARKER}{}", self.claim_id))
    }

    fn claim_one(&self, name: &str, settled: Stamp) -> Result<Option<ClaimResult>, ReceiveError> {
        if name.len() > FILE_RECEIVE_NAME_MAX_BYTES {
            return Ok(self
                .reject_long_name(name)?
                .then_some(ClaimResult::Rejected));
        }
        let original = self.config.folder.join(name);
        let claimed_path = self.claimed_path(name);
        match fs::rename(&original, &claimed_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ReceiveError::io("claim (rename)", &original, e)),
        }
        // after the rename, which sets the ctime: the identity of this claim of the file
        let (stamp, identity) = match fs::metadata(&claimed_path) {
            Ok(m) => (Stamp::of(&m), file_identity(&m)),
            Err(e) => {
                self.restore_one(name, &claimed_path);
                return Err(ReceiveError::io("stat", &claimed_path, e));
            }
        };
        if stamp != settled {
            // written to since it settled: back to the folder, to settle again
            return Ok(Some(self.changed(name, &claimed_path)));
        }
        if stamp.size > self.config.max_message_size_bytes {
            self.reject(name, &claimed_path, stamp.size)?;
            return Ok(Some(ClaimResult::Rejected));
        }
        if stamp.size > BODY_IN_MEMORY_MAX_BYTES {
            // streamed: the engine reads the claimed file in chunks while it publishes
            // (and refuses it if its length is no longer the settled one)
            return Ok(Some(ClaimResult::Claimed(Claimed {
                name: name.to_owned(),
                source_id: source_id(name, stamp.size, stamp.mtime_ns),
                identity,
                body: Body::File {
                    path: claimed_path.clone(),
                    len: stamp.size,
                },
                claimed_path,
            })));
        }
        let read = fs::File::open(&claimed_path).and_then(|mut f| {
            let mut body = Vec::with_capacity(usize::try_from(stamp.size).unwrap_or(0));
            f.read_to_end(&mut body)?;
            Ok((body, Stamp::of(&f.metadata()?)))
        });
        let body = match read {
            // a writer still holding the file open may have written while it was read
            Ok((_, after)) if after != stamp => return Ok(Some(self.changed(name, &claimed_path))),
            Ok((body, _)) => body,
            Err(e) => {
                self.restore_one(name, &claimed_path);
                return Err(ReceiveError::io("read", &claimed_path, e));
            }
        };
        Ok(Some(ClaimResult::Claimed(Claimed {
            name: name.to_owned(),
            claimed_path,
            source_id: source_id(name, stamp.size, stamp.mtime_ns),
            identity,
            body: Body::Bytes(Bytes::from(body)),
        })))
    }

    /// A claimed file that changed after it settled goes back, and settles again.
    fn changed(&self, name: &str, claimed_path: &Path) -> ClaimResult {
        tracing::info!(location = %self.location_name, file = %name,
                       "file changed after it settled (still being written?); left for a later poll");
        self.restore_one(name, claimed_path);
        ClaimResult::Changed
    }

    /// Moves a claimed file into the folder's `aside` directory (`.mbx-rejected/`,
    /// `.mbx-duplicates/`) under its name (or, if an earlier file of that name is there,
    /// a unique one) and writes its reason file beside it.
    fn move_aside(
        &self,
        aside: &str,
        name: &str,
        claimed_path: &Path,
        reason: &str,
    ) -> Result<(), ReceiveError> {
        let dir = self.config.folder.join(aside);
        fs::create_dir_all(&dir).map_err(|e| ReceiveError::io("create", &dir, e))?;
        let mut target_name = name.to_owned();
        if let Err(e) = rename_no_replace(claimed_path, &dir.join(&target_name)) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(ReceiveError::io("move aside", dir.join(&target_name), e));
            }
            // An earlier file of that name is there too: keep both.
            target_name = format!("{name}.{}", uuid::Uuid::new_v4());
            rename_no_replace(claimed_path, &dir.join(&target_name))
                .map_err(|e| ReceiveError::io("move aside", dir.join(&target_name), e))?;
        }
        self.write_reason(&dir, &target_name, reason)
    }

    /// Moves a claimed, oversized file to `.mbx-rejected/` and writes its reason file; on
    /// failure puts it back, to be tried again by a later poll.
    fn reject(&self, name: &str, claimed_path: &Path, size: u64) -> Result<(), ReceiveError> {
        let reason = format!(
            "{name}: {size} bytes is over the limit of {} bytes (max_message_size) of receive location {} ({}); nothing was published\n",
            self.config.max_message_size_bytes, self.location_name, self.address
        );
        if let Err(e) = self.move_aside(FILE_REJECTED_DIR, name, claimed_path, &reason) {
            if claimed_path.exists() {
                self.restore_one(name, claimed_path);
            }
            return Err(e);
        }
        tracing::warn!(
            location = %self.location_name,
            file = %name,
            size_bytes = size,
            max_bytes = self.config.max_message_size_bytes,
            "file over max_message_size moved to {FILE_REJECTED_DIR}"
        );
        Ok(())
    }

    /// A name too long to carry the claim suffix cannot be claimed in place: it is moved
    /// (atomically, so only one instance wins) straight to `.mbx-rejected/` under a unique
    /// short name, its original name in the reason file. `Ok(false)`: another instance
    /// took it first.
    fn reject_long_name(&self, name: &str) -> Result<bool, ReceiveError> {
        let dir = self.rejected_dir()?;
        let target_name = format!("{}.name-too-long", uuid::Uuid::new_v4());
        let original = self.config.folder.join(name);
        match fs::rename(&original, dir.join(&target_name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(ReceiveError::io("move to rejected", &original, e)),
        }
        let reason = format!(
            "{name}: the name is {} bytes; receive location {} ({}) accepts names of at most {FILE_RECEIVE_NAME_MAX_BYTES} bytes; nothing was published\n",
            name.len(),
            self.location_name,
            self.address
        );
        self.write_reason(&dir, &target_name, &reason)?;
        tracing::warn!(location = %self.location_name, file = %name, "file name too long; moved to {FILE_REJECTED_DIR}");
        Ok(true)
    }

    fn rejected_dir(&self) -> Result<PathBuf, ReceiveError> {
        let dir = self.config.folder.join(FILE_REJECTED_DIR);
        fs::create_dir_all(&dir).map_err(|e| ReceiveError::io("create", &dir, e))?;
        Ok(dir)
    }

    /// A file the MessageBox dropped as a duplicate: moved to `.mbx-duplicates/` with a
    /// reason file saying how to send it again on purpose; if it cannot be moved it stays
    /// claimed (logged), never deleted unseen.
    fn set_aside_duplicate(&self, c: &Claimed) {
        let reason = format!(
            "{}: received again by receive location {} ({}) with the same name, size and mtime as a file published within the dedup window; dropped, not published again. To send it again on purpose, give it a new name or a new mtime (touch it) and put it back in the folder\n",
            c.name, self.location_name, self.address
        );
        match self.move_aside(FILE_DUPLICATES_DIR, &c.name, &c.claimed_path, &reason) {
            Ok(()) => tracing::warn!(
                location = %self.location_name,
                file = %c.name,
                "duplicate file (published within the dedup window) moved to {FILE_DUPLICATES_DIR}"
            ),
            Err(e) => tracing::error!(
                location = %self.location_name,
                file = %c.name,
                error = %e,
                "duplicate file cannot be moved aside; it stays claimed"
            ),
        }
    }

    fn write_reason(
        &self,
        dir: &Path,
        target_name: &str,
        reason: &str,
    ) -> Result<(), ReceiveError> {
        let reason_path = dir.join(format!("{target_name}.reason.txt"));
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&reason_path)
            .and_then(|mut f| f.write_all(reason.as_bytes()).and_then(|()| f.sync_all()))
            .map_err(|e| ReceiveError::io("write reason file", &reason_path, e))
    }

    fn inbound(&self, c: &Claimed) -> InboundMessage {
        let properties = MessageContext::new()
            .with(system::SOURCE_FILE_NAME, c.name.clone())
            .with(system::INBOUND_TRANSPORT_LOCATION, self.address.clone())
            .with(system::INBOUND_TRANSPORT_TYPE, "FILE");
        InboundMessage {
            body: c.body.clone(),
            content_type: self.config.content_type_for(&c.name),
            properties,
            promoted: MessageContext::new(),
            source_id: Some(c.source_id.clone()),
            source_identity: c.identity.clone(),
            body_sha256: None,
        }
    }

    /// After commit: delete the claimed files the MessageBox accepted, move the ones it
    /// dropped as duplicates aside; returns how many were duplicates. A file that cannot be
    /// deleted stays claimed; a reclaim finds it published and deletes it then.
    fn acknowledge(&self, claimed: &[Claimed], outcomes: &[Submitted]) -> usize {
        let mut duplicates = 0;
        for (i, c) in claimed.iter().enumerate() {
            if outcomes.get(i) == Some(&Submitted::Duplicate) {
                duplicates += 1;
                self.set_aside_duplicate(c);
                continue;
            }
            match fs::remove_file(&c.claimed_path) {
                Ok(()) => {}
                // a reclaim came first (this instance was taken for dead, or lost the
                // location's lease): it deleted the file, seeing it published
                Err(e) if e.kind() == io::ErrorKind::NotFound => tracing::warn!(
                    location = %self.location_name,
                    file = %c.claimed_path.display(),
                    "a received file was gone when it was to be deleted after commit (reclaimed by another instance)"
                ),
                Err(e) => tracing::error!(
                    location = %self.location_name,
                    file = %c.claimed_path.display(),
                    error = %e,
                    "cannot delete a received file after commit"
                ),
            }
        }
        if let Err(e) = fs::File::open(&self.config.folder).and_then(|d| d.sync_all()) {
            tracing::warn!(location = %self.location_name, error = %e, "cannot fsync receive folder");
        }
        duplicates
    }

    fn restore(&self, claimed: &[Claimed]) {
        for c in claimed {
            self.restore_one(&c.name, &c.claimed_path);
        }
    }

    /// Puts a claimed file back under its name; never replaces a newer file of that name
    /// (the claimed one then stays for reclaim).
    fn restore_one(&self, name: &str, claimed_path: &Path) {
        let original = self.config.folder.join(name);
        if let Err(e) = rename_no_replace(claimed_path, &original) {
            tracing::warn!(
                location = %self.location_name,
                file = %name,
                error = %e,
                "cannot put a claimed file back; it stays claimed until reclaimed"
            );
        }
    }
}

enum ClaimResult {
    Claimed(Claimed),
    Rejected,
    /// Changed after it settled: put back.
    Changed,
}

/// The source id of a file for idempotent receive: name + size + mtime (nanoseconds).
pub fn source_id(name: &str, size: u64, mtime_ns: u128) -> String {
    format!("{name}:{size}:{mtime_ns}")
}

/// Renames without ever replacing `to`: hard link then unlink (atomic no-replace), or, on
/// file systems without hard links, an existence check then rename.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    match fs::hard_link(from, to) {
        Ok(()) => fs::remove_file(from),
        Err(e)
            if e.kind() == io::ErrorKind::AlreadyExists || e.kind() == io::ErrorKind::NotFound =>
        {
            Err(e)
        }
        Err(_) => {
            if to.exists() {
                Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "target exists",
                ))
            } else {
                fs::rename(from, to)
            }
        }
    }
}

fn check_claim_id(id: &str) -> Result<(), ConfigError> {
    let ok = !id.is_empty()
        && id.len() <= FILE_CLAIM_ID_MAX_BYTES
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::setting(
            "instance_id",
            id,
            "expected letters, digits and '-' (at most 64), e.g. a UUID",
        ))
    }
}

/// Splits a claimed file name `.<original>.mbx-claimed-<id>` into (original, id).
fn parse_claimed_name(name: &str) -> Option<(&str, &str)> {
    let (original, id) = name.strip_prefix('.')?.rsplit_once(FILE_CLAIM_MARKER)?;
    (!original.is_empty() && !id.is_empty()).then_some((original, id))
}

/// A claimed file a reclaim pass will put back or delete.
struct Reclaimable {
    path: PathBuf,
    original: String,
    claim_id: String,
    /// Its source id and identity as found, before anything was done to it.
    source: Option<ClaimedSource>,
}

/// Deals with the claimed files in `folder` for which `should_reclaim` says yes (e.g.
/// their claim id is not a live instance, or not the ordered location's holder): one
/// `submitter` says was published from that very file (same source id, device, inode and
/// ctime: its claimant stopped between commit and delete) is deleted; the others are put
/// back under their names, never replacing a file of that name. If the MessageBox cannot
/// be asked, nothing is touched (an error).
pub async fn reclaim_claimed_files(
    location: &str,
    folder: &Path,
    should_reclaim: &ReclaimFilter,
    submitter: &dyn Submitter,
) -> Result<ReclaimReport, ReceiveError> {
    // Runs inline: a directory listing is short, and the closure is borrowed.
    let mut report = ReclaimReport::default();
    let found = claimed_files(folder, should_reclaim, &mut report)?;
    if found.is_empty() {
        return Ok(report);
    }
    let asked: Vec<(usize, ClaimedSource)> = found
        .iter()
        .enumerate()
        .filter_map(|(i, f)| f.source.clone().map(|s| (i, s)))
        .collect();
    let mut published = vec![false; found.len()];
    if !asked.is_empty() {
        let sources: Vec<ClaimedSource> = asked.iter().map(|(_, s)| s.clone()).collect();
        let answers = submitter.published_copies(&sources).await?;
        for ((i, _), yes) in asked.iter().zip(answers) {
            published[*i] = yes;
        }
    }
    for (f, published) in found.into_iter().zip(published) {
        if published && finish_delete(location, folder, &f) {
            report.finished += 1;
            continue;
        }
        match rename_no_replace(&f.path, &folder.join(&f.original)) {
            Ok(()) => {
                report.reclaimed += 1;
                tracing::info!(location, folder = %folder.display(), file = %f.original, claim_id = %f.claim_id, "claimed file reclaimed");
            }
            Err(e) => {
                report.kept += 1;
                tracing::warn!(location, folder = %folder.display(), file = %f.original, error = %e, "cannot reclaim claimed file");
            }
        }
    }
    Ok(report)
}

/// The claimed files in `folder` that `should_reclaim` picks; the others are counted as
/// kept in `report`.
fn claimed_files(
    folder: &Path,
    should_reclaim: &ReclaimFilter,
    report: &mut ReclaimReport,
) -> Result<Vec<Reclaimable>, ReceiveError> {
    let entries = fs::read_dir(folder).map_err(|e| ReceiveError::io("read folder", folder, e))?;
    let now = SystemTime::now();
    let mut found = Vec::new();
    for entry in entries.take(FILE_RECEIVE_SCAN_ENTRIES_MAX) {
        let Ok(entry) = entry else { continue };
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some((original, claim_id)) = parse_claimed_name(&name) else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        let info = ClaimInfo {
            original_name: original.to_owned(),
            claim_id: claim_id.to_owned(),
            age: now
                .duration_since(claimed_at(&meta))
                .unwrap_or(Duration::ZERO),
        };
        if !should_reclaim(&info) {
            report.kept += 1;
            continue;
        }
        let stamp = Stamp::of(&meta);
        found.push(Reclaimable {
            path: entry.path(),
            original: original.to_owned(),
            claim_id: claim_id.to_owned(),
            source: file_identity(&meta).map(|identity| ClaimedSource {
                source_id: source_id(original, stamp.size, stamp.mtime_ns),
                identity,
            }),
        });
    }
    Ok(found)
}

/// Deletes a claimed file its claimant published but did not delete, if it is still that
/// very file; `false`: it is not (changed or gone back to the folder), to be put back.
fn finish_delete(location: &str, folder: &Path, f: &Reclaimable) -> bool {
    let still = fs::symlink_metadata(&f.path)
        .ok()
        .and_then(|m| file_identity(&m))
        .zip(f.source.as_ref())
        .is_some_and(|(now, was)| now == was.identity);
    if !still {
        return false;
    }
    match fs::remove_file(&f.path) {
        Ok(()) => tracing::info!(
            location,
            folder = %folder.display(),
            file = %f.original,
            claim_id = %f.claim_id,
            "claimed file already published by its claimant (stopped before deleting it); delete finished"
        ),
        // its claimant woke up and deleted it
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::error!(
            location,
            file = %f.path.display(),
            error = %e,
            "cannot delete a claimed file already published; it stays claimed"
        ),
    }
    true
}

/// A file's identity: device, inode and ctime (`dev:ino:secs.nanos`). Read after the
/// claim's rename (which sets the ctime), it names this claim of this file: a new file
/// dropped with the same name, size and mtime — even on a reused inode — has another;
/// so does a file put back and claimed again. `None` where the platform has no inodes.
fn file_identity(meta: &fs::Metadata) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some(format!(
            "{}:{}:{}.{:09}",
            meta.dev(),
            meta.ino(),
            meta.ctime(),
            meta.ctime_nsec()
        ))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// When a file was claimed: its status-change time (a rename sets it) on Unix.
fn claimed_at(meta: &fs::Metadata) -> SystemTime {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let secs = u64::try_from(meta.ctime()).unwrap_or(0);
        let nanos = u32::try_from(meta.ctime_nsec()).unwrap_or(0);
        UNIX_EPOCH + Duration::new(secs, nanos)
    }
    #[cfg(not(unix))]
    {
        meta.modified().unwrap_or(UNIX_EPOCH)
    }
}

#[async_trait]
impl ReceiveAdapter for FileReceiveAdapter {
    fn name(&self) -> &'static str {
        "FILE"
    }

    async fn run(
        &self,
        submitter: &dyn Submitter,
        shutdown: ShutdownSignal,
    ) -> Result<(), ReceiveError> {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let watcher = tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        tracing::info!(
            location = %self.inner.location_name,
            folder = %self.inner.config.folder.display(),
            mask = %self.inner.config.mask.as_str(),
            "file receive started"
        );
        let mut last_error: Option<String> = None;
        let poll_interval = self.inner.config.poll_interval;
        // files not settled yet are looked at again sooner than an idle folder
        let settle_check = poll_interval
            .min(self.inner.config.settle / 4)
            .max(Duration::from_millis(10));
        while !*stop_rx.borrow() {
            // A poll is never cancelled half-way: a submitted batch is always acknowledged
            // or put back; the stop is looked at before each batch, so a disabled or
            // stopped location takes no new file once the batch in hand is done.
            // no file is taken while the host admits no messages
            tokio::select! {
                _ = crate::admitted(submitter) => {}
                _ = stop_rx.wait_for(|s| *s) => break,
            }
            let stopped = || *stop_rx.borrow();
            let wait = match self.poll(submitter, &stopped).await {
                Ok(report) => {
                    last_error = None;
                    if report.submit_failed {
                        Some(poll_interval)
                    } else if report.submitted + report.duplicates + report.rejected > 0 {
                        None
                    } else if report.unsettled > 0 {
                        Some(settle_check)
                    } else {
                        Some(poll_interval)
                    }
                }
                Err(err) => {
                    let text = err.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        tracing::warn!(location = %self.inner.location_name, error = %text, "file receive poll failed; retrying");
                        last_error = Some(text);
                    }
                    Some(poll_interval)
                }
            };
            if let Some(wait) = wait {
                tokio::select! {
                    _ = stop_rx.changed() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        watcher.abort();
        tracing::info!(location = %self.inner.location_name, "file receive stopped");
        Ok(())
    }

    async fn reclaim(
        &self,
        should_reclaim: &ReclaimFilter,
        submitter: &dyn Submitter,
    ) -> Result<ReclaimReport, ReceiveError> {
        reclaim_claimed_files(
            &self.inner.location_name,
            &self.inner.config.folder,
            should_reclaim,
            submitter,
        )
        .await
    }

    async fn health(&self) -> Health {
        let folder = self.inner.config.folder.clone();
        match blocking(move || fs::read_dir(&folder).map(|_| ()).map_err(|e| (folder, e))).await {
            Ok(Ok(())) => Health::Healthy,
            Ok(Err((folder, e))) => {
                Health::unhealthy(format!("read folder {}: {e}", folder.display()))
            }
            Err(e) => Health::unhealthy(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_names_round_trip() {
        assert_eq!(
            parse_claimed_name(".a.xml.mbx-claimed-abc-1"),
            Some(("a.xml", "abc-1"))
        );
        assert_eq!(parse_claimed_name("a.xml"), None);
        assert_eq!(parse_claimed_name(".mbx-claimed-x"), None);
    }

    #[test]
    fn claim_ids_are_checked() {
        assert!(check_claim_id("0b7c-11").is_ok());
        assert!(check_claim_id("").is_err());
        assert!(check_claim_id("a/b").is_err());
        assert!(check_claim_id("a.b").is_err());
    }
}
