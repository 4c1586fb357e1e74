//! Helpers for the end-to-end tests: find the real binaries, point them at the test's own
//! database, run them and check exit code and output; start `mbx-host` processes and wait
//! for conditions with a deadline.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mbx_messagebox::MessageBox;
use sqlx::PgPool;

pub mod brokers;
pub mod browser;
pub mod certs;
pub mod fault_proxy;
pub mod load;
pub mod orders;
pub mod pg_cluster;
pub mod rabbit_node;
pub mod sink;

/// Where the workspace's binaries are: next to the test executable's `deps/` folder.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// The server URL tests use (`DATABASE_URL`, as `#[sqlx::test]` does).
pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The URL of the database behind a `#[sqlx::test]` pool.
pub fn database_url(pool: &PgPool) -> String {
    let db = pool
        .connect_options()
        .get_database()
        .expect("test pool names its database")
        .to_owned();
    with_database(&server_url(), &db)
}

/// Replaces the database name of a postgres URL.
pub use mbx_messagebox::url_with_database as with_database;

/// The result of one run of `mbx`.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs the real `mbx` binary against one database.
pub struct Mbx {
    pub url: String,
}

impl Mbx {
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into() }
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, b"")
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Run {
        use std::io::Write;
        let mut child = Command::new(bin("mbx"))
            .args(args)
            .env("MBX_DATABASE_URL", &self.url)
            .env_remove("MBX_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mbx");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("write stdin");
        child.wait_with_output().expect("wait for mbx").into()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, 0, "mbx {args:?} failed: {}{}", r.stdout, r.stderr);
        r.stdout
    }

    /// Runs with `--output json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("mbx {args:?}: not JSON ({e}): {out}"))
    }

    /// Runs, asserts the exit code and that stderr is exactly one line; returns it.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let r = self.run(args);
        assert_eq!(
            r.code, code,
            "mbx {args:?}: expected exit {code}: {}{}",
            r.stdout, r.stderr
        );
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "mbx {args:?}: expected one line on stderr, got: {}",
            r.stderr
        );
        lines[0].to_owned()
    }
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaks no process.
pub struct Reaped(pub std::process::Child);

impl Reaped {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `mbx-host` flags for tests that want changes and retries picked up quickly: a 200 ms
/// configuration poll (and wake-up fallback) and an admin listener on a free port.
pub const FAST_HOST: &[&str] = &["--poll-interval", "200ms", "--admin-listen", "127.0.0.1:0"];

/// Starts a real `mbx-host --host default` process with `args` against `url`; it logs
/// warnings to the test's stderr and is killed when the guard is dropped.
pub fn start_host(url: &str, args: &[&str]) -> Reaped {
    start_host_with_env(url, args, &[])
}

/// [`start_host`] for host `host` (created with `mbx host create`) instead of `default`.
pub fn start_host_as(url: &str, host: &str, args: &[&str]) -> Reaped {
    let mut command = host_command_as(Command::new(bin("mbx-host")), url, host, args);
    Reaped(command.spawn().expect("spawn mbx-host"))
}

/// [`start_host`] with extra environment variables (e.g. a secret a setting refers to).
pub fn start_host_with_env(url: &str, args: &[&str], env: &[(&str, &str)]) -> Reaped {
    let mut command = host_command(Command::new(bin("mbx-host")), url, args);
    Reaped(
        command
            .envs(env.iter().copied())
            .spawn()
            .expect("spawn mbx-host"),
    )
}

/// [`start_host`] with the process's open-file limit (soft and hard) set to `limit`.
pub fn start_host_with_fd_limit(url: &str, args: &[&str], limit: u64) -> Reaped {
    let mut shell = Command::new("bash");
    shell.args([
        "-c",
        &format!("ulimit -n {limit} && exec \"$0\" \"$@\""),
        bin("mbx-host").to_str().expect("utf-8 path"),
    ]);
    Reaped(
        host_command(shell, url, args)
            .spawn()
            .expect("spawn mbx-host under ulimit"),
    )
}

/// `command` (which runs `mbx-host` with the arguments it is given) for `--host default`
/// and `args` against `url`, logging as the tests want.
fn host_command(command: Command, url: &str, args: &[&str]) -> Command {
    host_command_as(command, url, "default", args)
}

fn host_command_as(mut command: Command, url: &str, host: &str, args: &[&str]) -> Command {
    command
        .args(["--host", host])
        .args(args)
        .env("MBX_DATABASE_URL", url)
        .env("MBX_LOG", host_log_level())
        .stdout(host_logs())
        .stderr(Stdio::inherit());
    command
}

/// Where hosts log (`tracing` writes to stdout): nowhere, unless `MBX_TEST_HOST_LOGS` is
/// set, then to the test's output (with `--no-capture`), to see what a host did.
fn host_logs() -> Stdio {
    if std::env::var_os("MBX_TEST_HOST_LOGS").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// The hosts' `MBX_LOG`: `warn`, or the filter `MBX_TEST_HOST_LOGS` gives (other than
/// `1`), e.g. `MBX_TEST_HOST_LOGS=info,mbx_host::delivery=debug`.
fn host_log_level() -> String {
    match std::env::var("MBX_TEST_HOST_LOGS") {
        Ok(v) if !v.is_empty() && v != "1" => v,
        _ => "warn".to_owned(),
    }
}

/// Sends signal `sig` (`-STOP`, `-CONT`, …) to process `pid`.
pub fn signal(pid: i32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Polls `cond` every 50 ms until it holds; panics naming `what` once `deadline` passed.
pub async fn wait_for<F, Fut>(what: &str, deadline: Duration, cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(
        eventually(deadline, cond).await,
        "timed out after {deadline:?} waiting for {what}"
    );
}

/// Polls `cond` every 50 ms until it holds (true) or `deadline` passed (false), for tests
/// that explain a timeout with their own diagnosis.
pub async fn eventually<F, Fut>(deadline: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return true;
        }
        if start.elapsed() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The files of `dir` with extension `ext`, leaving out hidden ones (temporary and claimed
/// files start with a dot).
pub fn files_in(dir: &Path, ext: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == ext)
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect()
}

/// The contents of [`files_in`] `dir`.
pub fn bodies_in(dir: &Path, ext: &str) -> Vec<String> {
    files_in(dir, ext)
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read file"))
        .collect()
}

/// The MessageBox of a `#[sqlx::test]` database, initialised as `mbx init` would.
pub async fn messagebox(pool: &PgPool) -> MessageBox {
    let mbx = MessageBox::from_pool(pool.clone());
    mbx.init(None).await.expect("init");
    mbx
}

/// Waits until exactly `n` instances are alive.
pub async fn wait_for_alive(mbx: &MessageBox, n: usize) {
    wait_for(
        &format!("{n} live instances"),
        Duration::from_secs(30),
        || async {
            let list = mbx.instance_list().await.expect("instances");
            list.iter().filter(|i| i.state == "alive").count() == n
        },
    )
    .await;
}

/// Waits until nothing is left to deliver or suspended: spool and suspended items both 0.
pub async fn wait_for_empty_spool(mbx: &MessageBox, deadline: Duration) {
    wait_for("an empty spool", deadline, || async {
        let s = mbx.stats().await.expect("stats");
        s.spool_messages == 0 && s.suspended_total == 0
    })
    .await;
}

/// The folders of a FILE → FILE route made by [`file_route`].
pub struct FileRoute {
    pub inbox: PathBuf,
    pub outbox: PathBuf,
}

/// Binds a FILE → FILE route under `dir`: receive port `orders` with the enabled location
/// `orders-in` reading `dir/in/*.<ext>` through `pipeline`, promoting `Order.Id` from
/// `id_path`; and the started send port `out` writing `dir/out/<out_pattern>` for every
/// message of that port with an `Order.Id`.
pub async fn file_route(
    mbx: &MessageBox,
    dir: &Path,
    ext: &str,
    pipeline: &str,
    id_path: &str,
    out_pattern: &str,
) -> FileRoute {
    use mbx_messagebox::config::{InitialState, SendPortSpec};
    use mbx_messagebox::receive::ReceiveLocationSpec;
    let route = FileRoute {
        inbox: dir.join("in"),
        outbox: dir.join("out"),
    };
    std::fs::create_dir_all(&route.inbox).expect("create in/");
    std::fs::create_dir_all(&route.outbox).expect("create out/");
    mbx.receive_port_create("orders", false)
        .await
        .expect("receive port");
    let address = format!("file://{}/*.{ext}", route.inbox.display());
    let mut loc = ReceiveLocationSpec::new("orders-in", "orders", &address);
    loc.pipeline = pipeline.to_owned();
    loc.promote.insert("Order.Id".into(), id_path.to_owned());
    mbx.receive_location_create(&loc)
        .await
        .expect("receive location");
    mbx.receive_location_set_enabled("orders-in", true)
        .await
        .expect("enable");
    let out = format!("file://{}/{out_pattern}", route.outbox.display());
    mbx.send_port_create(
        &SendPortSpec::new("out", &out)
            .with_filter("mbx.ReceivePortName == 'orders' and exists(Order.Id)")
            .with_state(InitialState::Started),
    )
    .await
    .expect("send port");
    route
}

/// The lease of port `name`: (holder, its pid, epoch) while a live holder has it.
pub async fn lease_owner(pool: &PgPool, name: &str) -> Option<(sqlx::types::Uuid, i32, i64)> {
    sqlx::query_as(
        "SELECT l.holder, i.pid, l.epoch
           FROM leases l
           JOIN send_ports p ON p.id = l.port_id
           JOIN host_instances i ON i.id = l.holder
          WHERE p.name = $1 AND l.expires_at > now()",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .expect("lease owner")
}

/// The orders route most tests use: [`file_route`] for `<order><id>N</id></order>` XML
/// files, `Order.Id` promoted from `/order/id`, written out as `%MessageID%.xml`.
pub async fn order_route(mbx: &MessageBox, dir: &Path) -> FileRoute {
    file_route(mbx, dir, "xml", "xml", "/order/id", "%MessageID%.xml").await
}

/// A free TCP port on loopback for a process to bind next (bound, released).
///
/// Picked at random below Linux's ephemeral range (32768–60999): a port the kernel hands
/// out for `bind(0)` is also what it hands out as the source port of outgoing connections,
/// and the fault tests open many, so such a port may be taken again before the process
/// binds it. Below the range only another test's pick can collide, and that is unlikely.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..1000 {
        // each RandomState is keyed anew: a fresh pseudo-random number per try
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found between 20000 and 32000 on 127.0.0.1")
}

/// Serves `app` on a free loopback port for the rest of the test; returns the port.
pub async fn serve_on_loopback(app: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback endpoint");
    let port = listener.local_addr().expect("endpoint address").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// The complete lines of `path` so far (a line still being written is left out); none if
/// the file does not exist yet.
pub fn lines_of(path: &Path) -> Vec<String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    };
    let complete = match text.rfind('\n') {
        Some(i) => &text[..i],
        None => return Vec::new(),
    };
    complete.split('\n').map(str::to_owned).collect()
}

/// The peak resident memory (VmHWM) of process `pid`, in MB.
pub fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb / 1024.0
}

/// `mbx-host` flags for a host serving HTTP receive on `http` and its admin endpoints on
/// `admin` (loopback), polling every 200 ms.
pub fn http_host_args(http: u16, admin: u16) -> Vec<String> {
    vec![
        "--poll-interval".to_owned(),
        "200ms".to_owned(),
        "--http-listen".to_owned(),
        format!("127.0.0.1:{http}"),
        "--admin-listen".to_owned(),
        format!("127.0.0.1:{admin}"),
    ]
}

/// The latest instance of process `pid`: (id, state).
pub async fn instance_of_pid(pool: &PgPool, pid: u32) -> Option<(sqlx::types::Uuid, String)> {
    sqlx::query_as(
        "SELECT id, state FROM host_instances WHERE pid = $1 ORDER BY started_at DESC LIMIT 1",
    )
    .bind(pid as i32)
    .fetch_optional(pool)
    .await
    .expect("query instances")
}

/// Waits until the process `pid` has a live instance.
pub async fn wait_registered(pool: &PgPool, pid: u32) {
    wait_for(
        "the instance to register",
        Duration::from_secs(30),
        || async { matches!(instance_of_pid(pool, pid).await, Some((_, s)) if s == "alive") },
    )
    .await;
}

/// A second MessageBox (another group) on the test server, next to a `#[sqlx::test]`
/// database: created and migrated as group `name`; dropped (connections and all) with
/// [`OtherGroup::drop_database`] at the end of the test.
pub struct OtherGroup {
    pub url: String,
    pub mbx: MessageBox,
    database: String,
}

impl OtherGroup {
    pub async fn create(beside: &PgPool, name: &str) -> OtherGroup {
        let first = beside
            .connect_options()
            .get_database()
            .expect("test pool names its database")
            .to_owned();
        // identifiers stop at 63 bytes, and the test database's name is long already
        let tail = &first[first.len().saturating_sub(24)..];
        let database = format!("g_{tail}_{name}");
        let url = with_database(&server_url(), &database);
        // a failed earlier run of the same test (the name follows the test) left it
        drop_database(&database).await;
        mbx_messagebox::create_database_if_missing(&url)
            .await
            .expect("create the other group's database");
        let mbx = MessageBox::connect(&url, 4).await.expect("connect");
        mbx.init(Some(name)).await.expect("init the other group");
        OtherGroup { url, mbx, database }
    }

    /// Drops the database (stop its hosts first; remaining connections are ended).
    pub async fn drop_database(self) {
        self.mbx.pool().close().await;
        drop_database(&self.database).await;
    }
}

async fn drop_database(name: &str) {
    let admin = MessageBox::connect(&server_url(), 1)
        .await
        .expect("connect");
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(admin.pool())
        .await
        .expect("drop the other group's database");
    admin.pool().close().await;
}

/// The one number `sql` selects (a count), on `pool`.
pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

/// The seed's orders: drops orders `numbers` for `manager` into `inbox` (written under a
/// temporary name, then renamed); returns their bodies.
pub fn drop_orders(
    inbox: &Path,
    manager: &str,
    numbers: std::ops::Range<usize>,
) -> std::collections::BTreeSet<String> {
    numbers
        .map(|i| {
            let body = format!(
                r#"{{"orderId":"{manager}-{i}","managerId":"{manager}","lines":[{{"sku":"S{i}","qty":{}}}]}}"#,
                i + 1
            );
            let name = format!("order-{manager}-{i}.json");
            let tmp = inbox.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, &body).expect("write");
            std::fs::rename(&tmp, inbox.join(name)).expect("rename");
            body
        })
        .collect()
}

/// The bodies of the `.json` files in `folder`, as a set.
pub fn received_json(folder: &Path) -> std::collections::BTreeSet<String> {
    bodies_in(folder, "json").into_iter().collect()
}

/// A running `mbx console` (on a free loopback port) and the address it printed.
pub struct Console {
    pub url: String,
    pub process: Reaped,
}

/// Starts the real `mbx console` against `db_url` with `args` and `env`; its stderr (its
/// log) goes to `stderr`.
pub fn start_console(db_url: &str, args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Console {
    use std::io::BufRead;
    let mut child = Command::new(bin("mbx"))
        .args(["console", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("MBX_DATABASE_URL", db_url)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn mbx console");
    let stdout = child.stdout.take().expect("console stdout");
    let process = Reaped(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the console's first line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("the console printed no address: {line:?}"))
        .trim_end_matches('/')
        .to_owned();
    Console { url, process }
}

/// A two-way receive port `port` with its HTTP location `<port>-http` on `/<path>`,
/// waiting `timeout` for each reply, enabled.
pub fn two_way(cli: &Mbx, port: &str, path: &str, timeout: &str) {
    cli.ok(&["receive-port", "create", port, "--two-way"]);
    cli.ok(&[
        "receive-location",
        "create",
        &format!("{port}-http"),
        "--port",
        port,
        "--address",
        &format!("http:///{path}"),
        "--set",
        &format!("timeout={timeout}"),
    ]);
    cli.ok(&["receive-location", "enable", &format!("{port}-http")]);
}

/// The started solicit-response port `quote-svc`, calling `http://127.0.0.1:<service>/quote`
/// for what the receive port `quotes` takes in (with [`two_way`]: the demo's quote flow).
pub fn quote_port(cli: &Mbx, service: u16) {
    cli.ok(&[
        "send-port",
        "create",
        "quote-svc",
        "--start",
        "--solicit-response",
        "--address",
        &format!("http://127.0.0.1:{service}/quote"),
        "--filter",
        "mbx.ReceivePortName == \"quotes\"",
    ]);
}
