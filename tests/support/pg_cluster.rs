//! A private PostgreSQL cluster for tests that stop, crash or reconfigure the server
//! (issue 6): `initdb` into a temporary folder, a free loopback port, `pg_ctl` to start and
//! stop it. The shared server and the other tests are never disturbed. The server
//! binaries come from `MBX_PG_BIN`, else `pg_config --bindir`, else
//! `/usr/lib/postgresql/<newest>/bin`. Run as root, the cluster belongs to the `postgres`
//! user (PostgreSQL refuses to run as root) and its commands run through `runuser`.
//!
//! [`PgCluster::start_on_small_disk`] (seed 004, the disk fills) puts the data folder, and
//! the WAL with it or on a filesystem of its own, on small `tmpfs` mounts it makes (root
//! only), unmounted when the cluster is dropped; [`PgCluster::fill_data_disk`] fills the
//! data folder's filesystem to the last byte and [`PgCluster::free_data_disk`] gives the
//! space back.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::free_port;

/// A running private cluster; stopped (immediately) and removed when dropped.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// The data folder.
    data: PathBuf,
    /// tmpfs mounts made for the cluster, unmounted when it is dropped.
    mounts: Vec<PathBuf>,
}

/// Where [`PgCluster::start_on_small_disk`] puts the cluster: the data folder on a tmpfs of
/// `data_mb`, the WAL on a tmpfs of its own of `wal_mb` (`initdb --waldir`) or, `None`, in
/// the data folder on the same filesystem; WAL segments of `wal_segment_mb`.
#[derive(Debug, Clone, Copy)]
pub struct SmallDisk {
    pub data_mb: u64,
    pub wal_mb: Option<u64>,
    pub wal_segment_mb: u64,
}

/// The file [`PgCluster::fill_data_disk`] writes beside the data folder.
const FILLER: &str = "filler";

impl PgCluster {
    /// `initdb` (trust auth for `postgres`) and start on a free port, listening on
    /// `localhost` only.
    pub fn start() -> PgCluster {
        Self::start_with(|_| {})
    }

    /// [`PgCluster::start`], letting `prepare` change the data folder (configuration
    /// files, certificates) between `initdb` and the first start.
    pub fn start_with(prepare: impl FnOnce(&Path)) -> PgCluster {
        Self::start_in(None, prepare)
    }

    /// A cluster on small filesystems of its own (see [`SmallDisk`]), so a test can fill
    /// them; `prepare` as for [`PgCluster::start_with`]. Needs root (it mounts tmpfs).
    pub fn start_on_small_disk(disk: SmallDisk, prepare: impl FnOnce(&Path)) -> PgCluster {
        assert!(
            running_as_root(),
            "a cluster on a small disk mounts tmpfs: run the test as root"
        );
        Self::start_in(Some(disk), prepare)
    }

    fn start_in(disk: Option<SmallDisk>, prepare: impl FnOnce(&Path)) -> PgCluster {
        let bin = server_bin();
        let dir = tempfile::Builder::new()
            .prefix("mbx-pg-")
            .tempdir()
            .expect("cluster folder");
        let mut cluster = PgCluster {
            data: dir.path().join("data"),
            dir,
            bin,
            port: free_port(),
            mounts: Vec::new(),
        };
        let mut initdb_extra = Vec::new();
        if let Some(disk) = disk {
            let data_fs = cluster.mount("datafs", disk.data_mb);
            cluster.data = data_fs.join("data");
            if let Some(wal_mb) = disk.wal_mb {
                let wal_fs = cluster.mount("walfs", wal_mb);
                initdb_extra.push(format!("--waldir={}", wal_fs.join("wal").display()));
            }
            initdb_extra.push(format!("--wal-segsize={}", disk.wal_segment_mb));
        }
        if running_as_root() {
            chown_postgres(cluster.dir.path());
        }
        let data = cluster.data().display().to_string();
        let mut args = vec![
            "-D",
            &data,
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ];
        args.extend(initdb_extra.iter().map(String::as_str));
        cluster.pg("initdb", &args);
        let conf = format!(
            "port = {}\nlisten_addresses = 'localhost'\nunix_socket_directories = '{}'\n\
             max_connections = 100\nfsync = on\n",
            cluster.port,
            cluster.dir.path().display()
        );
        append(&cluster.data().join("postgresql.conf"), &conf);
        prepare(&cluster.data());
        if running_as_root() {
            chown_postgres(cluster.dir.path());
        }
        cluster.start_again();
        cluster
    }

    /// The data folder.
    pub fn data(&self) -> PathBuf {
        self.data.clone()
    }

    /// Mounts a tmpfs of `mb` MiB at `<cluster folder>/<name>`; unmounted on drop.
    fn mount(&mut self, name: &str, mb: u64) -> PathBuf {
        let at = self.dir.path().join(name);
        std::fs::create_dir_all(&at).expect("mount point");
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mb}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&at)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount -t tmpfs {}", at.display());
        self.mounts.push(at.clone());
        at
    }

    /// The filesystem the data folder is on (a [`SmallDisk`] cluster's tmpfs).
    fn data_fs(&self) -> PathBuf {
        self.data
            .parent()
            .expect("the data folder has a parent")
            .to_path_buf()
    }

    /// Fills the data folder's filesystem to the last byte with a file beside the data
    /// folder (written as root: the reserve a filesystem may keep for root is taken too);
    /// returns the bytes written.
    pub fn fill_data_disk(&self) -> u64 {
        use std::io::Write;
        let path = self.data_fs().join(FILLER);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        // in 1 MiB writes, then byte by byte for the last partial page
        for size in [1usize << 20, 4096, 1] {
            loop {
                match f.write(&chunk[..size]) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                    Err(e) => panic!("fill {}: {e}", path.display()),
                }
            }
        }
        written
    }

    /// Removes the file [`PgCluster::fill_data_disk`] wrote: the space is back.
    pub fn free_data_disk(&self) {
        let path = self.data_fs().join(FILLER);
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }

    /// Whether the server's postmaster runs (`pg_ctl status`).
    pub fn running(&self) -> bool {
        self.command("pg_ctl")
            .args(["-D", &self.data().display().to_string(), "status"])
            .current_dir(self.dir.path())
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// The cluster's port on loopback.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A pool on the cluster's `postgres` database and the MessageBox initialised there.
    pub async fn messagebox(&self) -> (sqlx::PgPool, mbx_messagebox::MessageBox) {
        let pool = sqlx::PgPool::connect(&self.url("postgres"))
            .await
            .expect("connect the private cluster");
        let mbx = crate::messagebox(&pool).await;
        (pool, mbx)
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub fn start_again(&self) {
        let log = self.dir.path().join("postgres.log").display().to_string();
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Stops the server with `pg_ctl -m <mode>` (`fast`: sessions terminated, clean
    /// shutdown; `immediate`: a crash, recovered from the WAL at the next start).
    pub fn stop(&self, mode: &str) {
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                mode,
                "-w",
                "-t",
                "60",
                "stop",
            ],
        );
    }

    /// A server program run as the cluster's owner (through `runuser` as root).
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        }
    }

    /// Runs a server program as the cluster's owner; panics with its output on failure.
    fn pg(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let data = self.data().display().to_string();
            let _ = self
                .command("pg_ctl")
                .args(["-D", data.as_str(), "-m", "immediate", "-w", "stop"])
                .output();
        }
        for at in self.mounts.iter().rev() {
            // lazily if still busy: the mount goes once nothing uses it
            let unmounted = Command::new("umount")
                .arg(at)
                .status()
                .is_ok_and(|s| s.success());
            if !unmounted {
                let _ = Command::new("umount").arg("-l").arg(at).status();
            }
        }
    }
}

/// Appends `text` to the file at `path` (a cluster's `postgresql.conf`).
pub fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn chown_postgres(dir: &Path) {
    let ok = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "chown -R postgres {}", dir.display());
}

/// The folder holding `initdb` and `pg_ctl`.
fn server_bin() -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(dir) = std::env::var("MBX_PG_BIN") {
        candidates.push(dir.into());
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        candidates.push(String::from_utf8_lossy(&out.stdout).trim().into());
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    candidates.extend(versions.into_iter().rev());
    candidates
        .into_iter()
        .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
        .expect(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: install PostgreSQL or set \
             MBX_PG_BIN to their folder",
        )
}
