//! The disk under the MessageBox fills (seed 004), on a private PostgreSQL cluster whose
//! data folder is on a small tmpfs of its own, through real `mbx-host` processes while
//! files and HTTP POSTs keep arriving:
//! 1. the data folder's filesystem is full, the WAL on another: what was published is
//!    delivered (completions are recorded: the disk-full error is retried, not given up
//!    on), receive is refused cleanly;
//! 2. data and WAL on one filesystem: PostgreSQL stops (PANIC: WAL cannot be written); the
//!    hosts stay up and wait.
//!
//! Beside them a host with tracking `all` (each completion writes tracking events, so it
//! needs new pages) has a batch in flight at an endpoint that answers only once the disk
//! is full: its completion fails for as long as the disk is full and must be recorded
//! once space is back (before, it was given up after five attempts and its claims stayed
//! with the live instance: the spool never drained).
//!
//! In both, files wait in the FILE receive folder, HTTP answers 202 (committed) or 503
//! with Retry-After — never 500, never a hang — and once the space is back (case 2: and
//! PostgreSQL started again, as an operator would) everything resumes by itself: every
//! file written and every POST answered 202 is delivered, none lost.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Router;

use mbx_e2e::load::{assert_running, drain_and_check, Writer};
use mbx_e2e::pg_cluster::{PgCluster, SmallDisk};
use mbx_e2e::{
    bodies_in, files_in, free_port, order_route, start_host, wait_for, wait_for_alive, FileRoute,
    Reaped,
};
use mbx_messagebox::config::{HostSpec, InitialState, SendPortSpec};
use mbx_messagebox::publish::{NewMessage, Publisher};
use mbx_messagebox::receive::ReceiveLocationSpec;
use mbx_messagebox::{Context, MessageBox, TrackingLevel, Value};
use sqlx::PgPool;

/// Files the writer drops every 50 ms (80 a second).
const FILES_PER_TICK: usize = 4;
/// Messages for the tracked port, in flight at its endpoint when the disk fills: their
/// tracking events fill more than a page.
const AUDITED: usize = 100;
/// How long the disk stays full after the tracked port's endpoint answered: longer than
/// the five attempts (2 s) a host gave a failing completion before it gave up.
const FULL_AFTER_ANSWER: Duration = Duration::from_secs(5);

/// The tracked port's endpoint: counts the requests, answers none until the gate opens.
struct Held {
    asked: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
    port: u16,
}

async fn held_endpoint() -> Held {
    let (asked, gate) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(tokio::sync::Semaphore::new(0)),
    );
    let app = {
        let (asked, gate) = (asked.clone(), gate.clone());
        Router::new().route(
            "/audit",
            post(move || {
                let (asked, gate) = (asked.clone(), gate.clone());
                async move {
                    asked.fetch_add(1, Ordering::SeqCst);
                    let _permit = gate.acquire().await.expect("gate");
                    "ok"
                }
            }),
        )
    };
    let port = mbx_e2e::serve_on_loopback(app).await;
    Held { asked, gate, port }
}

/// A FILE → FILE and an HTTP → FILE flow on a cluster, two hosts (the first serving HTTP
/// receive), the writer running.
struct Flow {
    // dropped in this order: the writer and the hosts stop before the cluster
    writer: Option<Writer>,
    hosts: Vec<Reaped>,
    held: Held,
    cluster: PgCluster,
    url: String,
    _dir: tempfile::TempDir,
    route: FileRoute,
    api_out: std::path::PathBuf,
    http: u16,
    admin: u16,
    client: reqwest::Client,
    /// The bodies POSTed, and those answered 202.
    posted: Vec<String>,
    accepted: Vec<String>,
}

/// What an HTTP POST was answered.
#[derive(Debug, PartialEq)]
enum Answer {
    Accepted,
    /// 503 with Retry-After.
    Unavailable,
}

impl Flow {
    async fn start(disk: SmallDisk, conf: &'static str) -> Flow {
        let cluster = PgCluster::start_on_small_disk(disk, |data| {
            mbx_e2e::pg_cluster::append(&data.join("postgresql.conf"), conf)
        });
        let url = cluster.url("postgres");
        let (pool, mbx) = cluster.messagebox().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let route = order_route(&mbx, dir.path()).await;
        let api_out = dir.path().join("api-out");
        std::fs::create_dir_all(&api_out).expect("api-out");
        mbx.receive_port_create("api", false).await.expect("port");
        mbx.receive_location_create(&ReceiveLocationSpec::new("api-in", "api", "http:///orders"))
            .await
            .expect("location");
        mbx.receive_location_set_enabled("api-in", true)
            .await
            .expect("enable");
        mbx.send_port_create(
            &SendPortSpec::new(
                "api-out",
                &format!("file://{}/%MessageID%.txt", api_out.display()),
            )
            .with_filter("mbx.ReceivePortName == 'api'")
            .with_state(InitialState::Started),
        )
        .await
        .expect("send port");
        // host `tracked` (tracking all) sends to the held endpoint
        let held = held_endpoint().await;
        mbx.host_create(&HostSpec {
            name: "tracked".into(),
            tracking: Some(TrackingLevel::All),
            ..Default::default()
        })
        .await
        .expect("host");
        let mut audit =
            SendPortSpec::new("audit", &format!("http://127.0.0.1:{}/audit", held.port))
                .with_filter("exists(T.N)")
                .with_state(InitialState::Started);
        audit.host = "tracked".into();
        mbx.send_port_create(&audit).await.expect("audit port");
        let (http, admin) = (free_port(), free_port());
        let first = mbx_e2e::http_host_args(http, admin);
        let first: Vec<&str> = first.iter().map(String::as_str).collect();
        let hosts = vec![
            start_host(&url, &first),
            mbx_e2e::start_host_as(&url, "tracked", mbx_e2e::FAST_HOST),
        ];
        wait_for_alive(&mbx, 2).await;
        let audited = (0..AUDITED)
            .map(|n| {
                let mut ctx = Context::new();
                ctx.promote("T.N", Value::Integer(n as i64))
                    .expect("promote");
                NewMessage::new(format!("audit {n}"), "text/plain", ctx)
            })
            .collect();
        mbx.publish(&Publisher::default(), audited)
            .await
            .expect("publish");
        wait_for(
            "the tracked port's batch at its endpoint",
            Duration::from_secs(30),
            || async { held.asked.load(Ordering::SeqCst) > 0 },
        )
        .await;

        pool.close().await;
        let writer = Writer::start(&route.inbox, FILES_PER_TICK);
        let mut flow = Flow {
            writer: Some(writer),
            hosts,
            held,
            cluster,
            url,
            _dir: dir,
            route,
            api_out,
            http,
            admin,
            client: reqwest::Client::new(),
            posted: Vec::new(),
            accepted: Vec::new(),
        };
        wait_for("an HTTP POST accepted", Duration::from_secs(30), || async {
            flow_post_ok(&flow.client, flow.http).await
        })
        .await;
        wait_for("100 files delivered", Duration::from_secs(60), || async {
            files_in(&flow.route.outbox, "xml").len() >= 100
        })
        .await;
        flow.posted.push("first".into());
        flow.accepted.push("first".into());
        flow
    }

    /// POSTs a new body: 202, or 503 with Retry-After; anything else (a 500, no answer
    /// within 30 s) fails the test.
    async fn post(&mut self, label: &str) -> Answer {
        let body = format!("{label}-{}", self.posted.len());
        self.posted.push(body.clone());
        let r = self
            .client
            .post(format!("http://127.0.0.1:{}/orders", self.http))
            .body(body.clone())
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {body}: no answer: {e}"));
        match r.status().as_u16() {
            202 => {
                self.accepted.push(body);
                Answer::Accepted
            }
            503 => {
                assert!(
                    r.headers().contains_key("retry-after"),
                    "503 without Retry-After"
                );
                Answer::Unavailable
            }
            other => panic!(
                "POST {body}: {other} {}",
                r.text().await.unwrap_or_default()
            ),
        }
    }

    /// POSTs until one is answered `wanted` (each answer checked by [`Flow::post`]).
    async fn post_until(&mut self, label: &str, wanted: Answer, deadline: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if self.post(label).await == wanted {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < deadline,
                "no POST answered {wanted:?} within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Opens the tracked port's endpoint: its batch is answered (the completion to record
    /// meets the full disk). Returns when.
    fn answer_the_tracked_port(&self) -> Instant {
        self.held.gate.add_permits(AUDITED * 10);
        Instant::now()
    }

    async fn readyz(&self) -> u16 {
        match self
            .client
            .get(format!("http://127.0.0.1:{}/readyz", self.admin))
            .timeout(Duration::from_secs(15))
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Files wait in the receive folder: at least `n` more than now (the writer adds 80 a
    /// second).
    async fn files_pile_up(&self, n: usize) {
        let now = files_in(&self.route.inbox, "xml").len();
        wait_for(
            "files to wait in the receive folder",
            Duration::from_secs(60),
            || async { files_in(&self.route.inbox, "xml").len() >= now + n },
        )
        .await;
    }

    /// Stops the writer and checks everything arrived: every file (duplicates counted,
    /// at most `max_duplicates`), every POST answered 202 once, nothing but what was
    /// POSTed; the spool empties.
    async fn drain_and_check(mut self, case: &str, max_duplicates: usize) {
        let writer = self.writer.take().expect("the writer runs");
        let (written, duplicates) = drain_and_check(
            writer,
            &self.route.inbox,
            &self.route.outbox,
            Duration::from_secs(120),
        )
        .await;
        assert_running(&mut self.hosts);
        let mut delivered = bodies_in(&self.api_out, "txt");
        delivered.sort();
        let lost: Vec<&String> = self
            .accepted
            .iter()
            .filter(|b| delivered.binary_search(b).is_err())
            .collect();
        assert!(
            lost.is_empty(),
            "{case}: POSTs answered 202, lost: {lost:?}"
        );
        let mut once = delivered.clone();
        once.dedup();
        assert_eq!(
            once.len(),
            delivered.len(),
            "{case}: a POST delivered twice"
        );
        assert!(
            delivered.iter().all(|b| self.posted.contains(b)),
            "{case}: delivered what nobody POSTed"
        );
        eprintln!(
            "{case}: {written} files written, lost 0, {duplicates} duplicates; {} POSTs, {} \
             answered 202 (all delivered), {} delivered",
            self.posted.len(),
            self.accepted.len(),
            delivered.len()
        );
        assert!(
            duplicates <= max_duplicates,
            "{case}: {duplicates} duplicates"
        );
        // the tracked port's completions are recorded too: nothing stays claimed
        let pool = PgPool::connect(&self.url).await.expect("connect");
        let mbx = MessageBox::from_pool(pool);
        mbx_e2e::wait_for_empty_spool(&mbx, Duration::from_secs(60)).await;
        let asked = self.held.asked.load(Ordering::SeqCst);
        assert!(asked >= AUDITED, "{case}: the tracked port sent {asked}");
    }
}

async fn flow_post_ok(client: &reqwest::Client, http: u16) -> bool {
    client
        .post(format!("http://127.0.0.1:{http}/orders"))
        .body("first")
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .is_ok_and(|r| r.status() == 202)
}

/// Deliveries not yet completed (ready, retrying or claimed) of the ports `which` picks.
async fn undelivered(url: &str, which: impl Fn(&str) -> bool) -> Option<i64> {
    let pool = PgPool::connect(url).await.ok()?;
    let stats = MessageBox::from_pool(pool.clone()).stats().await.ok();
    pool.close().await;
    stats.map(|s| {
        s.ports
            .iter()
            .filter(|p| which(&p.name))
            .map(|p| p.backlog + p.retrying + p.in_flight)
            .sum()
    })
}

/// Case 1: the data folder's filesystem is full, the WAL is on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_disk_refuses_receive_cleanly_while_deliveries_go_on() {
    let mut flow = Flow::start(
        SmallDisk {
            data_mb: 64,
            wal_mb: Some(128),
            wal_segment_mb: 4,
        },
        "min_wal_size = 16MB\nmax_wal_size = 32MB\n",
    )
    .await;
    let filled = flow.cluster.fill_data_disk();
    let full_at = Instant::now();
    eprintln!("case 1: data disk filled ({filled} bytes of filler)");
    let answered = flow.answer_the_tracked_port();
    // receive is refused cleanly: a POST may still fit in a page with room (202: it
    // committed), then 503 + Retry-After
    let refused = flow
        .post_until("full", Answer::Unavailable, Duration::from_secs(60))
        .await;
    flow.files_pile_up(200).await;
    // what was published is delivered, completions recorded, while the disk is full
    wait_for(
        "every published message delivered while the disk is full",
        Duration::from_secs(60),
        || async { undelivered(&flow.url, |port| port != "audit").await == Some(0) },
    )
    .await;
    let delivered_full = full_at.elapsed();
    assert_eq!(flow.readyz().await, 200, "the MessageBox answers");
    assert_running(&mut flow.hosts);
    assert!(
        flow.cluster.log().contains("No space left on device"),
        "the disk was full for PostgreSQL"
    );
    flow.post("full").await;
    tokio::time::sleep_until((answered + FULL_AFTER_ANSWER).into()).await;
    // the scenario happened: the tracked port's completion could not be recorded
    let waiting = undelivered(&flow.url, |port| port == "audit").await;
    assert!(
        waiting.is_some_and(|n| n > 0),
        "the tracked port's completion met the full disk: {waiting:?} undelivered"
    );

    flow.cluster.free_data_disk();
    let resumed = flow
        .post_until("freed", Answer::Accepted, Duration::from_secs(60))
        .await;
    let backlog = files_in(&flow.route.inbox, "xml").len();
    let started = Instant::now();
    wait_for(
        "the files that waited taken",
        Duration::from_secs(120),
        || async { files_in(&flow.route.inbox, "xml").len() < 100 },
    )
    .await;
    eprintln!(
        "case 1: first 503 {refused:?} after the fill, backlog delivered {delivered_full:?} \
         after it; full for {:?}; first 202 {resumed:?} after the space was back, {backlog} \
         waiting files taken in {:?}",
        full_at.elapsed(),
        started.elapsed()
    );
    flow.drain_and_check("case 1", 0).await;
}

/// Case 2: data and WAL on one filesystem; PostgreSQL stops when WAL cannot be written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_by_a_full_disk_leaves_the_hosts_waiting_and_loses_nothing() {
    // 1 MiB segments and no checkpoint on WAL volume: the next segment is a new file,
    // which a full disk refuses; restart_after_crash off: the server stays down until the
    // operator starts it (as under a service manager that leaves a crashed server alone)
    let mut flow = Flow::start(
        SmallDisk {
            data_mb: 128,
            wal_mb: None,
            wal_segment_mb: 1,
        },
        "min_wal_size = 2MB\nmax_wal_size = 1GB\ncheckpoint_timeout = 1h\n\
         restart_after_crash = off\n",
    )
    .await;
    let filled = flow.cluster.fill_data_disk();
    let full_at = Instant::now();
    eprintln!("case 2: disk filled ({filled} bytes of filler)");
    let answered = flow.answer_the_tracked_port();
    // WAL keeps being written (the hosts' heartbeats; here faster, by switching segments)
    // until a new segment cannot be made: PANIC
    {
        let pool = PgPool::connect(&flow.url).await.expect("connect");
        for _ in 0..500 {
            let wrote = sqlx::query("UPDATE mbx_group SET name = name")
                .execute(&pool)
                .await
                .and(sqlx::query("SELECT pg_switch_wal()").execute(&pool).await);
            if wrote.is_err() {
                break;
            }
        }
        pool.close().await;
    }
    wait_for(
        "PostgreSQL to stop on the full disk",
        Duration::from_secs(30),
        || async { !flow.cluster.running() },
    )
    .await;
    let log = flow.cluster.log();
    assert!(log.contains("PANIC"), "PostgreSQL panicked:\n{log}");
    eprintln!(
        "case 2: PostgreSQL down {:?} after the fill: {}",
        full_at.elapsed(),
        log.lines()
            .find(|l| l.contains("PANIC"))
            .unwrap_or_default()
    );
    wait_for(
        "/readyz to answer 503 while PostgreSQL is down",
        Duration::from_secs(30),
        || async { flow.readyz().await == 503 },
    )
    .await;
    let not_ready = full_at.elapsed();
    let t = Instant::now();
    flow.post_until("down", Answer::Unavailable, Duration::from_secs(60))
        .await;
    let refused = t.elapsed();
    flow.files_pile_up(200).await;
    assert_eq!(
        flow.post("down").await,
        Answer::Unavailable,
        "still refused"
    );
    eprintln!(
        "case 2: /readyz 503 {not_ready:?} after the fill; a POST answered 503 in {refused:?}"
    );
    assert_running(&mut flow.hosts);
    tokio::time::sleep_until((answered + FULL_AFTER_ANSWER).into()).await;

    // the operator frees space and starts PostgreSQL; the hosts reconnect by themselves
    flow.cluster.free_data_disk();
    flow.cluster.start_again();
    let restarted = Instant::now();
    wait_for(
        "/readyz to answer 200 after the restart",
        Duration::from_secs(60),
        || async { flow.readyz().await == 200 },
    )
    .await;
    let ready = restarted.elapsed();
    let resumed = flow
        .post_until("after", Answer::Accepted, Duration::from_secs(60))
        .await;
    let backlog = files_in(&flow.route.inbox, "xml").len();
    wait_for(
        "the files that waited taken",
        Duration::from_secs(120),
        || async { files_in(&flow.route.inbox, "xml").len() < 100 },
    )
    .await;
    eprintln!(
        "case 2: full for {:?}; ready {ready:?} after the restart, first 202 {resumed:?} \
         after ready, {backlog} waiting files taken {:?} after the restart",
        full_at.elapsed(),
        restarted.elapsed()
    );
    // a FILE batch whose commit reached the WAL but whose answer was lost is received
    // again: at most one batch (100) per host
    flow.drain_and_check("case 2", 2 * 100).await;
}
