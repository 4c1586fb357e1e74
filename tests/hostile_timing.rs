//! Issue 11: data lost or reordered under hostile timing, with the stalls made real — a
//! holder cut off from PostgreSQL by the fault proxy in the middle of its work, system
//! calls delayed by `strace` — against real `mbx-host` processes and real PostgreSQL.

use std::path::Path;
use std::time::Duration;

use mbx_e2e::fault_proxy::{server_addr, FaultProxy, Mode};
use mbx_e2e::sink::start_sink;
use mbx_e2e::{
    database_url, lines_of, messagebox, start_host, wait_for, wait_for_alive, FAST_HOST,
};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::receive::ReceiveLocationSpec;
use sqlx::PgPool;

/// The lease TTL.
const LEASE_TTL: Duration = Duration::from_secs(10);

/// Writes `name` complete: under a hidden name first, then renamed into place.
fn drop_file(inbox: &Path, name: &str, body: &str) {
    let tmp = inbox.join(format!(".{name}.writing"));
    std::fs::write(&tmp, body).expect("write");
    std::fs::rename(&tmp, inbox.join(name)).expect("rename into place");
}

/// The holder of receive location `name`'s live lease: (pid, epoch).
async fn location_holder(pool: &PgPool, name: &str) -> Option<(i32, i64)> {
    sqlx::query_as(
        "SELECT i.pid, l.epoch FROM leases l
           JOIN receive_locations r ON r.id = l.location_id
           JOIN host_instances i ON i.id = l.holder
          WHERE r.name = $1 AND l.expires_at > now()",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .expect("location lease")
}

/// Host A, reaching the MessageBox through a fault proxy, holding the ordered location
/// `feed-in` (enabled here), then host B started beside it: (the proxy, A, A's epoch, B).
async fn a_holds_the_feed_then_b(
    mbx: &mbx_messagebox::MessageBox,
    pool: &PgPool,
    url: &str,
) -> (FaultProxy, mbx_e2e::Reaped, i64, mbx_e2e::Reaped) {
    let proxy = FaultProxy::start(server_addr()).await;
    let a = start_host(&proxy.url_for(url), FAST_HOST);
    wait_for_alive(mbx, 1).await;
    mbx.receive_location_set_enabled("feed-in", true)
        .await
        .expect("enable");
    wait_for(
        "A to hold the location",
        Duration::from_secs(30),
        || async {
            location_holder(pool, "feed-in")
                .await
                .is_some_and(|(pid, _)| pid == a.pid() as i32)
        },
    )
    .await;
    let (_, epoch_a) = location_holder(pool, "feed-in").await.expect("holder");
    let b = start_host(url, FAST_HOST);
    wait_for_alive(mbx, 2).await;
    (proxy, a, epoch_a, b)
}

const FIRST: usize = 20;
const SECOND: usize = 20;

/// Issue 11 item 2: host A holds an ordered FILE location and is cut off from PostgreSQL
/// (blackholed by the fault proxy) after it claimed a batch and while it publishes it;
/// host B takes the lease after the TTL and receives on. When A's connection heals, its
/// held publish reaches PostgreSQL after B's batches — and is fenced: every file is
/// published once, in name order (on main A's batch committed after B's, or came back
/// only once A was declared dead: later files were published before earlier ones).
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_paused_holder_of_an_ordered_location_publishes_nothing_after_the_takeover(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let inbox = dir.path().join("in");
    std::fs::create_dir_all(&inbox).expect("in");
    mbx.receive_port_create("feed", false)
        .await
        .expect("receive port");
    let mut loc = ReceiveLocationSpec::new(
        "feed-in",
        "feed",
        &format!("file://{}/*.txt", inbox.display()),
    );
    loc.ordered = true;
    for (k, v) in [
        ("batch_max", "5"),
        ("poll_interval", "50ms"),
        ("settle", "0s"),
    ] {
        loc.settings.insert(k.into(), v.into());
    }
    mbx.receive_location_create(&loc).await.expect("location");
    let (sink_port, sink) = start_sink().await;
    let mut out = SendPortSpec::new("feed-out", &format!("http://127.0.0.1:{sink_port}/sink"))
        .with_filter("mbx.ReceivePortName == 'feed'")
        .with_state(InitialState::Started);
    out.ordered = true;
    mbx.send_port_create(&out).await.expect("ordered send port");

    let url = database_url(&pool);
    let (proxy, a, epoch_a, _b) = a_holds_the_feed_then_b(&mbx, &pool, &url).await;

    // cut A off, then give it files: it claims a batch and is stuck publishing it
    proxy.set(Mode::Blackhole);
    for n in 0..FIRST {
        drop_file(&inbox, &format!("{n:04}.txt"), &format!("file {n:04}"));
    }
    wait_for("A to claim a batch", Duration::from_secs(10), || async {
        std::fs::read_dir(&inbox)
            .expect("read inbox")
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains(".mbx-claimed-"))
    })
    .await;
    wait_for(
        "B to take the location over",
        LEASE_TTL + Duration::from_secs(20),
        || async {
            location_holder(&pool, "feed-in")
                .await
                .is_some_and(|(pid, epoch)| pid != a.pid() as i32 && epoch > epoch_a)
        },
    )
    .await;
    for n in FIRST..FIRST + SECOND {
        drop_file(&inbox, &format!("{n:04}.txt"), &format!("file {n:04}"));
    }
    wait_for(
        "B to publish and deliver every file",
        Duration::from_secs(60),
        || async { sink.distinct() >= FIRST + SECOND },
    )
    .await;
    // heal: A's held publish reaches PostgreSQL now, after B's batches
    proxy.set(Mode::Pass);
    wait_for(
        "A to reconnect and heartbeat again",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM host_instances WHERE pid = $1 AND state = 'alive'
                    AND heartbeat_at > now() - interval '2 seconds'",
            )
            .bind(a.pid() as i32)
            .fetch_one(&pool)
            .await
            .expect("A's heartbeat")
                > 0
        },
    )
    .await;
    mbx_e2e::wait_for_empty_spool(&mbx, Duration::from_secs(60)).await;
    let published: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM received_sources s JOIN receive_locations r ON r.id = s.receive_location_id
          WHERE r.name = 'feed-in'",
    )
    .fetch_one(&pool)
    .await
    .expect("sources");
    assert_eq!(
        published as usize,
        FIRST + SECOND,
        "each file published once"
    );
    let requests = sink.by_arrival();
    let mut first: Vec<&str> = Vec::new();
    for r in &requests {
        if !first.contains(&r.body.as_str()) {
            first.push(&r.body);
        }
    }
    let expected: Vec<String> = (0..FIRST + SECOND)
        .map(|n| format!("file {n:04}"))
        .collect();
    assert_eq!(first, expected, "published in name order, nothing lost");
    let left: Vec<_> = std::fs::read_dir(&inbox)
        .expect("inbox")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".mbx-"))
        .collect();
    assert!(left.is_empty(), "files left in the folder: {left:?}");
}

/// Publishes ordered messages `m<N>` (one line each) for the port `log` of
/// [`append_port`].
async fn publish_lines(mbx: &mbx_messagebox::MessageBox, range: std::ops::Range<usize>) {
    use mbx_messagebox::publish::{NewMessage, Publisher};
    let batch = range
        .map(|n| {
            let mut ctx = mbx_messagebox::Context::new();
            ctx.promote("Seq.N", mbx_messagebox::Value::Integer(n as i64))
                .expect("promote");
            NewMessage::new(format!("m{n:05}\n"), "text/plain", ctx)
        })
        .collect();
    mbx.publish(&Publisher::default(), batch)
        .await
        .expect("publish");
}

fn expected_lines(n: usize) -> Vec<String> {
    (0..n).map(|n| format!("m{n:05}")).collect()
}

/// The started ordered FILE append port `log` writing `path`.
async fn append_port(mbx: &mbx_messagebox::MessageBox, path: &Path) {
    let mut spec = SendPortSpec::new("log", &format!("file://{}", path.display()))
        .with_filter("exists(Seq.N)")
        .with_state(InitialState::Started);
    spec.ordered = true;
    spec.settings.insert("append".into(), "true".into());
    mbx.send_port_create(&spec).await.expect("append port");
}

/// `strace` attached to every thread of a running process, delaying the system calls
/// `inject` names (`strace -e inject=…` syntax) on `paths` only; its log lists each traced
/// call once it returned. Detaches when dropped (the process runs on, undelayed).
struct Stall {
    strace: mbx_e2e::Reaped,
    log: std::path::PathBuf,
}

impl Stall {
    fn attach(pid: u32, paths: &[&Path], trace: &str, inject: &str, log: &Path) -> Stall {
        let mut strace = std::process::Command::new("strace");
        strace.args(["-f", "-qq", "-o"]).arg(log);
        for path in paths {
            strace.arg("-P").arg(path);
        }
        let strace = strace
            .args([
                "-e",
                &format!("trace={trace}"),
                "-e",
                &format!("inject={inject}"),
            ])
            .args(["-p", &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("strace (apt-get install strace)");
        Stall {
            strace: mbx_e2e::Reaped(strace),
            log: log.to_owned(),
        }
    }

    /// Whether every thread of the process is traced now: strace attaches to the threads
    /// one by one, and a call made by a thread not yet attached escapes the stall (seen
    /// under load when only the main thread's TracerPid was looked at).
    fn attached(pid: u32) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        let mut seen = 0;
        for task in tasks.flatten() {
            let traced = std::fs::read_to_string(task.path().join("status"))
                .map(|s| {
                    s.lines()
                        .any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0")
                })
                .unwrap_or(false);
            if !traced {
                return false;
            }
            seen += 1;
        }
        seen > 0
    }

    /// The lines of the log naming `syscall` that ended delayed.
    fn delayed(&self, syscall: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("{syscall}(")) && l.contains("DELAYED"))
            .count()
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        let _ = self.strace.0.kill();
    }
}

/// How long the stalled system call is held: past the lease TTL and the takeover.
const STALL: Duration = Duration::from_secs(20);

/// Sets when the lease of port `log` expires (an SQL expression on the database clock).
async fn set_lease_expiry(pool: &PgPool, at: &str) {
    sqlx::query(&format!(
        "UPDATE leases SET expires_at = {at}
          WHERE port_id = (SELECT id FROM send_ports WHERE name = 'log')"
    ))
    .execute(pool)
    .await
    .expect("set the lease's expiry");
}

/// The owner of port `log` while it is not `not`: its pid.
async fn owner_other_than(pool: &PgPool, not: u32) -> Option<i32> {
    mbx_e2e::lease_owner(pool, "log")
        .await
        .map(|(_, pid, _)| pid)
        .filter(|pid| *pid != not as i32)
}

/// Issue 11 item 1, the restore: A delivers and commits; it dies leaving an uncommitted
/// tail. A2 takes the port over, and its truncate to the committed length stalls in the
/// kernel (strace delays `ftruncate` by 20 s) while it is cut off from PostgreSQL, so its
/// lease moves to B, which appends and commits. When A2's truncate finally runs it must
/// not cut what B committed (on main it did: the file went back to A's length). Exactly
/// once, in order.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_former_owners_late_truncate_never_removes_what_a_later_owner_committed(pool: PgPool) {
    stalled_owner(pool, "ftruncate", "ftruncate:delay_enter=20000000").await;
}

/// Issue 11 item 1, the write: A2 owns the port and, some 30 appends in, its next append
/// stalls in `write` (20 s) while it is cut off from PostgreSQL; B takes over. A2's late write must not land
/// behind B's records (on main it did: a stale, duplicate record in the middle of B's).
/// Exactly once, in order.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_former_owners_late_append_never_lands_behind_a_later_owners_records(pool: PgPool) {
    stalled_owner(pool, "write", "write:delay_enter=20000000").await;
}

async fn stalled_owner(pool: PgPool, syscall: &str, inject: &str) {
    const FIRST: usize = 100;
    const TOTAL: usize = 300;
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("orders.log");
    append_port(&mbx, &log).await;
    let url = database_url(&pool);
    let restore = syscall == "ftruncate";
    if restore {
        // A delivers and commits the first messages, then dies with an uncommitted tail
        let a = start_host(&url, FAST_HOST);
        publish_lines(&mbx, 0..FIRST).await;
        mbx_e2e::wait_for_empty_spool(&mbx, Duration::from_secs(60)).await;
        drop(a); // SIGKILL: its lease runs out by itself…
                 // …but not before strace holds A2: under load, starting A2 and attaching strace
                 // took longer than what was left of A's lease, A2 restored unwatched, and the
                 // test saw no stalled call. A's lease is held here and let go once A2 is traced.
        set_lease_expiry(&pool, "now() + interval '1 hour'").await;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open the log");
        std::io::Write::write_all(&mut f, b"uncommitted tail of a dead owner\n").expect("tail");
    }
    let proxy = FaultProxy::start(server_addr()).await;
    let a2 = start_host(&proxy.url_for(&url), FAST_HOST);
    mbx_e2e::wait_registered(&pool, a2.pid()).await;
    let strace_log = dir.path().join("strace.log");
    // strace is attached once A2 runs (its runtime's threads all exist: a thread created
    // while strace attaches could escape it). The truncate: before A2 can own the port
    // (A's lease still holds it off). The write: while A2 is appending, so that its next
    // write stalls (strace counts calls per thread, and appends move between threads).
    let stall = if restore {
        let stall = Stall::attach(a2.pid(), &[&log], syscall, inject, &strace_log);
        wait_for("strace to attach", Duration::from_secs(10), || async {
            Stall::attached(a2.pid())
        })
        .await;
        set_lease_expiry(&pool, "now()").await;
        wait_for("A2 to own the port", Duration::from_secs(30), || async {
            owner_other_than(&pool, 0).await == Some(a2.pid() as i32)
        })
        .await;
        stall
    } else {
        wait_for("A2 to own the port", Duration::from_secs(30), || async {
            owner_other_than(&pool, 0).await == Some(a2.pid() as i32)
        })
        .await;
        publish_lines(&mbx, 0..TOTAL).await;
        wait_for("A2's 29th append", Duration::from_secs(30), || async {
            lines_of(&log).len() >= 29
        })
        .await;
        let stall = Stall::attach(a2.pid(), &[&log], syscall, inject, &strace_log);
        wait_for("strace to attach", Duration::from_secs(10), || async {
            Stall::attached(a2.pid())
        })
        .await;
        stall
    };
    // A2 is in (or about to enter) its stalled call: cut it off so its lease runs out
    proxy.set(Mode::Blackhole);
    let b = start_host(&url, FAST_HOST);
    wait_for(
        "B to own the port",
        LEASE_TTL + Duration::from_secs(20),
        || async { owner_other_than(&pool, a2.pid()).await == Some(b.pid() as i32) },
    )
    .await;
    if restore {
        publish_lines(&mbx, FIRST..TOTAL).await;
    }
    let returned = mbx_e2e::eventually(STALL + Duration::from_secs(30), || async {
        stall.delayed(syscall) >= 1
    })
    .await;
    assert!(
        returned,
        "A2's stalled {syscall} never returned; strace log:\n{}",
        std::fs::read_to_string(&stall.log).unwrap_or_default()
    );
    mbx_e2e::wait_for_empty_spool(&mbx, Duration::from_secs(60)).await;
    proxy.set(Mode::Pass);
    drop(stall);
    assert_eq!(
        lines_of(&log),
        expected_lines(TOTAL),
        "every message once, in order, nothing of B's cut or overtaken"
    );
    drop((a2, b));
}

/// The open-file limit the flooded host runs with: HTTP receive keeps at most 128
/// connections open (a quarter of the descriptors, at least 128, stay for the rest).
const FLOODED_FD_LIMIT: u64 = 256;
const FLOOD: usize = 400;

/// Issue 11 item 7: 400 idle connections to a host whose open-file limit is 256 neither
/// take every descriptor (its PostgreSQL connections keep working: `/readyz` 200) nor keep
/// a well-behaved client out (at the cap the connection idle longest is closed for it),
/// and an idle connection is closed by the header-read timeout. On main the flood took
/// every descriptor: well-behaved clients timed out and nothing was logged.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_flood_of_idle_connections_keeps_neither_descriptors_nor_clients(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    mbx.receive_port_create("api", false).await.expect("port");
    mbx.receive_location_create(&ReceiveLocationSpec::new("api-in", "api", "http:///orders"))
        .await
        .expect("location");
    mbx.receive_location_set_enabled("api-in", true)
        .await
        .expect("enable");
    mbx.send_port_create(
        &SendPortSpec::new("drain", "null:drain")
            .with_filter("mbx.ReceivePortName == 'api'")
            .with_state(InitialState::Started),
    )
    .await
    .expect("send port");
    let (http, admin) = (mbx_e2e::free_port(), mbx_e2e::free_port());
    let args = mbx_e2e::http_host_args(http, admin);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _host = mbx_e2e::start_host_with_fd_limit(&database_url(&pool), &args, FLOODED_FD_LIMIT);
    wait_for_alive(&mbx, 1).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let post = |n: usize| {
        let client = client.clone();
        async move {
            client
                .post(format!("http://127.0.0.1:{http}/orders"))
                .body(format!("order {n}"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    wait_for("the HTTP listener", Duration::from_secs(30), || async {
        post(0).await == 202
    })
    .await;

    let mut idle = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        match tokio::net::TcpStream::connect(("127.0.0.1", http)).await {
            Ok(s) => idle.push(s),
            Err(e) => panic!("the kernel refused a flood connection: {e}"),
        }
    }
    // a well-behaved client gets in during the flood (each try on a new connection)
    let served =
        mbx_e2e::eventually(Duration::from_secs(15), || async { post(1).await == 202 }).await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        served,
        "no 202 for a well-behaved client within 15 s of the flood"
    );
    let ready = reqwest::get(format!("http://127.0.0.1:{admin}/readyz"))
        .await
        .expect("readyz")
        .status()
        .as_u16();
    assert_eq!(ready, 200, "the host still reaches PostgreSQL");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
    };
    assert!(value("mbx_http_connections ") <= 128.0, "at most the cap");
    assert!(value("mbx_http_connections_evicted_total") >= 1.0);
    // one more idle connection, the newest (so never the one evicted): admitted in place
    // of an idle one, kept open, and closed by the header-read timeout (10 s), not at once
    let mut probe = tokio::net::TcpStream::connect(("127.0.0.1", http))
        .await
        .expect("connect the probe");
    let opened = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::AsyncReadExt::read(&mut probe, &mut buf),
    )
    .await
    .expect("closed by the server within the header-read timeout");
    let open_for = opened.elapsed();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the server closed it: {read:?}"
    );
    assert!(
        open_for >= Duration::from_secs(5),
        "closed after {open_for:?}: refused, not kept until its header-read timeout"
    );
    drop(idle);
    mbx_e2e::wait_for_empty_spool(&mbx, Duration::from_secs(30)).await;
}

/// An ordered FILE location `feed-in` reading `inbox/*.txt` (`batch_max` files a batch,
/// polled every 50 ms, nothing to settle; not enabled yet) and a started HTTP port sending
/// what it receives to a new sink.
async fn ordered_feed(
    mbx: &mbx_messagebox::MessageBox,
    inbox: &Path,
    batch_max: usize,
) -> std::sync::Arc<mbx_e2e::sink::Sink> {
    std::fs::create_dir_all(inbox).expect("in");
    mbx.receive_port_create("feed", false)
        .await
        .expect("receive port");
    let mut loc = ReceiveLocationSpec::new(
        "feed-in",
        "feed",
        &format!("file://{}/*.txt", inbox.display()),
    );
    loc.ordered = true;
    for (k, v) in [
        ("batch_max", batch_max.to_string()),
        ("poll_interval", "50ms".to_owned()),
        ("settle", "0s".to_owned()),
    ] {
        loc.settings.insert(k.into(), v);
    }
    mbx.receive_location_create(&loc).await.expect("location");
    let (sink_port, sink) = start_sink().await;
    let out = SendPortSpec::new("feed-out", &format!("http://127.0.0.1:{sink_port}/sink"))
        .with_filter("mbx.ReceivePortName == 'feed'")
        .with_state(InitialState::Started);
    mbx.send_port_create(&out).await.expect("send port");
    sink
}

/// How many sources location `feed-in` published.
async fn feed_published(pool: &PgPool) -> usize {
    mbx_e2e::count(
        pool,
        "SELECT count(*) FROM received_sources s JOIN receive_locations r ON r.id = s.receive_location_id
          WHERE r.name = 'feed-in'",
    )
    .await as usize
}

/// What `folder/.mbx-duplicates/` holds (nothing if it does not exist).
fn set_aside(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder.join(".mbx-duplicates"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The files left in `folder`, claimed ones included (not the `.mbx-*` folders).
fn left_in(folder: &Path) -> Vec<String> {
    std::fs::read_dir(folder)
        .expect("folder")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".mbx-"))
        .collect()
}

/// Issue 26 item 5: host A holds an ordered FILE location; it commits a batch and stalls
/// in the `unlink` of its claimed files (strace delays each by 40 s) while it is cut off
/// from PostgreSQL, so B takes the location over after the lease TTL and finds A's
/// claimed files — already published. B finishes their delete (tracked `reclaimed` on
/// each message) instead of putting them back: every file published once and delivered,
/// nothing set aside, nothing left. On main they went back to the folder, were dropped as
/// duplicates and moved to `.mbx-duplicates/` with a reason file advising a resend.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_file_a_former_holder_published_is_deleted_not_set_aside_as_a_duplicate(pool: PgPool) {
    const FILES: usize = 10;
    const BATCH: usize = 5;
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let inbox = dir.path().join("in");
    let sink = ordered_feed(&mbx, &inbox, BATCH).await;
    let url = database_url(&pool);
    let (proxy, a, epoch_a, _b) = a_holds_the_feed_then_b(&mbx, &pool, &url).await;

    // A's deletes of its claimed files stall in the kernel, 40 s each
    let (a_id, _) = mbx_e2e::instance_of_pid(&pool, a.pid())
        .await
        .expect("A's instance");
    let claimed: Vec<std::path::PathBuf> = (0..FILES)
        .map(|n| inbox.join(format!(".{n:04}.txt.mbx-claimed-{}", a_id.simple())))
        .collect();
    let paths: Vec<&Path> = claimed.iter().map(|p| p.as_path()).collect();
    let strace_log = dir.path().join("strace.log");
    let _stall = Stall::attach(
        a.pid(),
        &paths,
        "unlink,unlinkat",
        "unlink,unlinkat:delay_enter=40000000",
        &strace_log,
    );
    wait_for(
        "strace to trace every thread of A",
        Duration::from_secs(30),
        || async { Stall::attached(a.pid()) },
    )
    .await;
    for n in 0..FILES {
        drop_file(&inbox, &format!("{n:04}.txt"), &format!("file {n:04}"));
    }
    // A committed its first batch and is stuck deleting it: cut it off there
    wait_for(
        "A to publish its first batch and stall deleting it",
        Duration::from_secs(30),
        || async { feed_published(&pool).await >= BATCH && claimed[0].exists() },
    )
    .await;
    proxy.set(Mode::Blackhole);
    assert_eq!(
        feed_published(&pool).await,
        BATCH,
        "A published one batch before the cut"
    );
    wait_for(
        "B to take the location over",
        LEASE_TTL + Duration::from_secs(20),
        || async {
            location_holder(&pool, "feed-in")
                .await
                .is_some_and(|(pid, epoch)| pid != a.pid() as i32 && epoch > epoch_a)
        },
    )
    .await;
    wait_for(
        "every file published and the folder empty",
        Duration::from_secs(30),
        || async { feed_published(&pool).await >= FILES && left_in(&inbox).is_empty() },
    )
    .await;
    assert_eq!(
        set_aside(&inbox),
        Vec::<String>::new(),
        "A's published files set aside as duplicates"
    );
    assert_eq!(
        feed_published(&pool).await,
        FILES,
        "each file published once"
    );
    // B finished the delete of each file of A's batch, tracked on its message
    let finished = mbx_e2e::count(
        &pool,
        "SELECT count(DISTINCT message_id) FROM tracking_events
          WHERE event = 'reclaimed' AND detail LIKE '%found still claimed by feed-in%'",
    )
    .await as usize;
    assert_eq!(finished, BATCH, "A's published batch deleted by B");
    wait_for("every file delivered", Duration::from_secs(60), || async {
        sink.distinct() >= FILES
    })
    .await;
    let mut bodies: Vec<String> = sink.by_arrival().into_iter().map(|r| r.body).collect();
    bodies.sort();
    bodies.dedup();
    let expected: Vec<String> = (0..FILES).map(|n| format!("file {n:04}")).collect();
    assert_eq!(bodies, expected, "every file delivered, nothing else");
}

/// Writes a file `body` with mtime `mtime` under a hidden name, then renames it to `name`
/// (a file's own name, or a claimed one).
fn drop_file_at(inbox: &Path, name: &str, body: &str, mtime: std::time::SystemTime) {
    let tmp = inbox.join(".drop.writing");
    std::fs::write(&tmp, body).expect("write");
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .and_then(|f| f.set_modified(mtime))
        .expect("set mtime");
    std::fs::rename(&tmp, inbox.join(name)).expect("rename into place");
}

/// Issue 26 item 5, the other side: a file was published and delivered; a new file with
/// the same name, size and mtime is dropped again — in the folder, and then as a claimed
/// file a former holder left (claimed, not published). Neither is the file that was
/// published (another inode or ctime), so each is still dropped as a duplicate and moved
/// to `.mbx-duplicates/` with its reason file, never deleted unseen.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_new_file_like_one_published_is_still_set_aside_as_a_duplicate(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let inbox = dir.path().join("in");
    let sink = ordered_feed(&mbx, &inbox, 5).await;
    let _host = start_host(&database_url(&pool), FAST_HOST);
    wait_for_alive(&mbx, 1).await;
    mbx.receive_location_set_enabled("feed-in", true)
        .await
        .expect("enable");
    let mtime = std::time::SystemTime::now() - Duration::from_secs(60);
    drop_file_at(&inbox, "a.txt", "order a", mtime);
    wait_for("a.txt delivered", Duration::from_secs(30), || async {
        sink.distinct() >= 1 && left_in(&inbox).is_empty()
    })
    .await;

    // dropped again by an operator
    drop_file_at(&inbox, "a.txt", "order a", mtime);
    wait_for("the repeat set aside", Duration::from_secs(30), || async {
        set_aside(&inbox).len() == 2 && left_in(&inbox).is_empty()
    })
    .await;
    // dropped again, and claimed by a former holder that stopped before publishing it
    drop_file_at(
        &inbox,
        ".a.txt.mbx-claimed-0123456789abcdef0123456789abcdef",
        "order a",
        mtime,
    );
    wait_for(
        "the claimed repeat put back and set aside",
        Duration::from_secs(30),
        || async { set_aside(&inbox).len() == 4 && left_in(&inbox).is_empty() },
    )
    .await;
    let aside = set_aside(&inbox);
    let reasons: Vec<&String> = aside
        .iter()
        .filter(|n| n.ends_with(".reason.txt"))
        .collect();
    assert_eq!(reasons.len(), 2, "{aside:?}");
    for r in reasons {
        let text =
            std::fs::read_to_string(inbox.join(".mbx-duplicates").join(r)).expect("reason file");
        assert!(
            text.starts_with("a.txt: received again") && text.contains("same name, size and mtime"),
            "{text}"
        );
    }
    assert_eq!(feed_published(&pool).await, 1, "published once");
    assert_eq!(
        mbx_e2e::count(
            &pool,
            "SELECT count(*) FROM tracking_events WHERE event = 'duplicate-dropped'"
        )
        .await,
        2,
        "each repeat tracked on the message published"
    );
}
