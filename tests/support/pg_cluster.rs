//! A private PostgreSQL cluster for tests that stop, crash or reconfigure the server
//! (issue 6): `initdb` into a temporary folder, a free loopback port, `pg_ctl` to start and
//! stop it. The shared server and the other tests are never disturbed. The server
//! binaries come from `MBX_PG_BIN`, else `pg_config --bindir`, else
//! `/usr/lib/postgresql/<newest>/bin`. Run as root, the cluster belongs to the `postgres`
//! user (PostgreSQL refuses to run as root) and its commands run through `runuser`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::free_port;

/// A running private cluster; stopped (immediately) and removed when dropped.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PgCluster {
    /// `initdb` (trust auth for `postgres`) and start on a free port, listening on
    /// `localhost` only.
    pub fn start() -> PgCluster {
        Self::start_with(|_| {})
    }

    /// [`PgCluster::start`], letting `prepare` change the data folder (configuration
    /// files, certificates) between `initdb` and the first start.
    pub fn start_with(prepare: impl FnOnce(&Path)) -> PgCluster {
        let bin = server_bin();
        let dir = tempfile::Builder::new()
            .prefix("mbx-pg-")
            .tempdir()
            .expect("cluster folder");
        let cluster = PgCluster {
            dir,
            bin,
            port: free_port(),
        };
        if running_as_root() {
            chown_postgres(cluster.dir.path());
        }
        cluster.pg(
            "initdb",
            &[
                "-D",
                &cluster.data().display().to_string(),
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
        );
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
        self.dir.path().join("data")
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
