//! Ordered delivery through real `mbx-host` processes: publication order is
//! commit order, exactly one instance owns an ordered port at a time, and when the owner is
//! killed another instance takes over by lease expiry and carries on in order.
//!
//! Each test has a checker: what the endpoint received is compared with what was published
//! (lost, unexpected, duplicates), and the order of first arrivals is checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mbx_e2e::sink::{check_in_order, ordered_http_port, Request};
use mbx_e2e::{
    database_url, eventually, lease_owner, lines_of, messagebox, signal, start_host, wait_for,
    wait_for_alive, FAST_HOST,
};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::publish::{NewMessage, Published, Publisher};
use mbx_messagebox::{Context, MessageBox, Value};
use sqlx::PgPool;

/// `--ordered-commit-batch` (default): a crash re-sends at most that many messages.
const COMMIT_BATCH: usize = 32;
/// The lease TTL.
const LEASE_TTL: Duration = Duration::from_secs(10);

/// Creates the ordered FILE port `name` in `state`, appending every message matching
/// `filter` to `log`.
async fn ordered_append_port(
    mbx: &MessageBox,
    name: &str,
    log: &Path,
    filter: &str,
    state: InitialState,
) {
    let mut spec = SendPortSpec::new(name, &format!("file://{}", log.display()))
        .with_filter(filter)
        .with_state(state);
    spec.ordered = true;
    spec.settings.insert("append".into(), "true".into());
    mbx.send_port_create(&spec)
        .await
        .expect("ordered send port");
}

/// One message with promoted property `property` = `value`.
fn message(property: &str, value: i64, body: String) -> NewMessage {
    let mut ctx = Context::new();
    ctx.promote(property, Value::Integer(value))
        .expect("promote");
    NewMessage::new(body, "text/plain", ctx)
}

/// Publishes `messages` in one call and checks each was routed.
async fn publish_routed(mbx: &MessageBox, messages: Vec<NewMessage>) {
    let n = messages.len();
    let outcomes = mbx
        .publish(&Publisher::default(), messages)
        .await
        .expect("publish");
    assert_eq!(outcomes.len(), n);
    for o in outcomes {
        assert!(
            matches!(o, Published::Routed { deliveries: 1, .. }),
            "routed to the ordered port: {o:?}"
        );
    }
}

async fn lease_epoch(pool: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT l.epoch FROM leases l JOIN send_ports p ON p.id = l.port_id WHERE p.name = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .expect("lease epoch")
}

const PRODUCERS: i64 = 4;
const PER_PRODUCER: i64 = 100;

/// One publish as its producer saw it: when the call started and when it returned
/// (committed).
#[derive(Clone, Copy)]
struct PublishCall {
    started: Instant,
    returned: Instant,
}

/// Four concurrent publishers, one message per publish call, to an ordered FILE port run
/// by two hosts. The port is started when half the messages are published: the backlog is
/// sent in order, then the rest as they come. A message whose publish started only after
/// another's publish had returned was committed after it, so it must be appended after it:
/// the file's order is the commit order. In particular each producer's messages arrive in
/// its own order.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn concurrent_publishers_deliver_in_commit_order_through_two_hosts(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("ordered.log");
    // stopped: enlisted, its deliveries wait until it is started
    ordered_append_port(
        &mbx,
        "ordered",
        &log,
        "exists(Seq.Producer)",
        InitialState::Stopped,
    )
    .await;
    let url = database_url(&pool);
    let _hosts = [start_host(&url, FAST_HOST), start_host(&url, FAST_HOST)];
    wait_for_alive(&mbx, 2).await;

    let count = Arc::new(AtomicUsize::new(0));
    let mut producers = Vec::new();
    for producer in 0..PRODUCERS {
        let (mbx, count) = (mbx.clone(), count.clone());
        producers.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            for n in 0..PER_PRODUCER {
                let started = Instant::now();
                publish_routed(
                    &mbx,
                    vec![message(
                        "Seq.Producer",
                        producer,
                        format!("{producer}:{n}\n"),
                    )],
                )
                .await;
                calls.push(PublishCall {
                    started,
                    returned: Instant::now(),
                });
                count.fetch_add(1, Ordering::SeqCst);
            }
            calls
        }));
    }
    let total = (PRODUCERS * PER_PRODUCER) as usize;
    wait_for(
        "half the messages published",
        Duration::from_secs(30),
        || {
            let published = count.load(Ordering::SeqCst);
            async move { published >= total / 2 }
        },
    )
    .await;
    mbx.send_port_start("ordered").await.expect("start port");
    let mut published: BTreeMap<String, PublishCall> = BTreeMap::new();
    for (producer, task) in producers.into_iter().enumerate() {
        for (n, call) in task.await.expect("producer").into_iter().enumerate() {
            published.insert(format!("{producer}:{n}"), call);
        }
    }
    assert_eq!(published.len(), total);

    let complete = eventually(Duration::from_secs(40), || async {
        lines_of(&log).len() >= total
    })
    .await;
    let lines = lines_of(&log);

    // the checker
    let mut received: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &lines {
        *received.entry(l.as_str()).or_default() += 1;
    }
    let lost: Vec<&String> = published
        .keys()
        .filter(|k| !received.contains_key(k.as_str()))
        .collect();
    let unexpected: Vec<&&str> = received
        .keys()
        .filter(|k| !published.contains_key(**k))
        .collect();
    let duplicates: usize = received.values().map(|n| n - 1).sum();
    eprintln!(
        "{} lines: lost {}, unexpected {}, duplicates {duplicates}",
        lines.len(),
        lost.len(),
        unexpected.len()
    );
    assert!(
        complete,
        "timed out: {} of {total} lines after 40 s",
        lines.len()
    );
    assert!(lost.is_empty(), "lost: {:?}", &lost[..lost.len().min(5)]);
    assert!(unexpected.is_empty(), "unexpected lines: {unexpected:?}");
    assert_eq!(duplicates, 0, "duplicates without any crash");

    // each producer's messages in its own publish order
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        let (producer, n) = l.split_once(':').expect("producer:n");
        let n: i64 = n.parse().expect("n");
        if let Some(&before) = last.get(producer) {
            assert!(
                n > before,
                "line {i}: producer {producer}'s message {n} was delivered after its message \
                 {before}, though it was published (and committed) before it"
            );
        }
        last.insert(producer, n);
    }

    // across producers: nothing is delivered before a message that committed before its
    // publish started
    let mut latest_start: Option<(Instant, &str)> = None;
    for (i, l) in lines.iter().enumerate() {
        let call = published[l.as_str()];
        if let Some((started, earlier)) = latest_start {
            assert!(
                started <= call.returned,
                "line {i}: '{l}' committed before the publish of '{earlier}' even started, yet \
                 it was delivered after it: delivery order differs from commit order"
            );
        }
        match latest_start {
            Some((s, _)) if s >= call.started => {}
            _ => latest_start = Some((call.started, l.as_str())),
        }
    }
}

const KILL_MESSAGES: usize = 600;
/// Delivered before the kill, at least.
const KILL_AFTER: usize = 100;

/// kill -9 of the lease owner of an ordered FILE port in the middle of a run: another
/// instance takes the lease when it expires (epoch + 1) and resumes at the first message
/// whose completion was not committed. Nothing is lost or reordered; at most one commit
/// batch is appended twice.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn the_owner_is_killed_and_another_instance_takes_over_in_order(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("ordered.log");
    ordered_append_port(
        &mbx,
        "ordered",
        &log,
        "exists(Seq.N)",
        InitialState::Started,
    )
    .await;
    let url = database_url(&pool);
    let mut hosts = vec![start_host(&url, FAST_HOST), start_host(&url, FAST_HOST)];
    wait_for_alive(&mbx, 2).await;

    for chunk in (0..KILL_MESSAGES).collect::<Vec<_>>().chunks(20) {
        let batch = chunk
            .iter()
            .map(|&n| message("Seq.N", n as i64, format!("{n}\n")))
            .collect();
        publish_routed(&mbx, batch).await;
    }

    // kill the owner once some arrived
    let deadline = Instant::now() + Duration::from_secs(30);
    let (victim_id, victim_pid, epoch_before) = loop {
        let delivered = lines_of(&log).len();
        let owner = if delivered >= KILL_AFTER {
            lease_owner(&pool, "ordered").await
        } else {
            None
        };
        if let Some(owner) = owner {
            break owner;
        }
        assert!(
            delivered < KILL_MESSAGES,
            "all {KILL_MESSAGES} messages were delivered ({delivered} lines) and no instance \
             holds the port's lease: the ordered port has no owner to kill"
        );
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {KILL_AFTER} lines and a lease owner: {delivered} lines"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let victim = hosts
        .iter()
        .position(|h| h.pid() as i32 == victim_pid)
        .unwrap_or_else(|| {
            panic!("the lease holder {victim_id} (pid {victim_pid}) is none of the test's hosts")
        });
    let mut victim = hosts.swap_remove(victim);
    victim.0.kill().expect("SIGKILL");
    let killed_at = Instant::now();
    victim.0.wait().expect("reap");
    let at_kill = lines_of(&log).len();
    eprintln!("killed owner {victim_id} (epoch {epoch_before}) after {at_kill} lines");
    assert!(
        at_kill < KILL_MESSAGES,
        "the kill must happen during the run: all {KILL_MESSAGES} were delivered already"
    );
    // restarted at once, as a process supervisor would
    hosts.push(start_host(&url, FAST_HOST));

    // takeover: within the TTL (+ a poll interval and slack) of the last renewal
    let takeover = eventually(LEASE_TTL + Duration::from_secs(5), || async {
        lines_of(&log).len() > at_kill
    })
    .await;
    let took_over_after = killed_at.elapsed();
    let distinct = |lines: &[String]| lines.iter().collect::<BTreeSet<_>>().len();
    let done = eventually(Duration::from_secs(30), || async {
        distinct(&lines_of(&log)) >= KILL_MESSAGES
    })
    .await;
    let lines = lines_of(&log);

    // the checker
    let sent: BTreeSet<String> = (0..KILL_MESSAGES).map(|n| n.to_string()).collect();
    let mut received: BTreeMap<&str, usize> = BTreeMap::new();
    let mut first_arrivals: Vec<usize> = Vec::new();
    for l in &lines {
        let count = received.entry(l.as_str()).or_default();
        if *count == 0 {
            if let Ok(n) = l.parse() {
                first_arrivals.push(n);
            }
        }
        *count += 1;
    }
    let lost = sent
        .iter()
        .filter(|b| !received.contains_key(b.as_str()))
        .count();
    let unexpected: Vec<&&str> = received.keys().filter(|b| !sent.contains(**b)).collect();
    let duplicates: usize = received.values().map(|n| n - 1).sum();
    let out_of_order = first_arrivals
        .iter()
        .enumerate()
        .find(|&(i, &n)| n != i)
        .map(|(i, &n)| (i, n));
    let epoch_after = lease_epoch(&pool, "ordered").await;
    eprintln!(
        "new lines after {took_over_after:?}; {} lines: lost {lost}, unexpected {}, duplicates \
         {duplicates}, first arrivals out of order at {out_of_order:?}, epoch {epoch_before} → \
         {epoch_after}",
        lines.len(),
        unexpected.len()
    );
    assert!(
        takeover,
        "no line appended within {:?} of killing the owner: no other instance took over",
        LEASE_TTL + Duration::from_secs(5)
    );
    assert_eq!(lost, 0, "lost messages");
    assert!(unexpected.is_empty(), "unexpected lines: {unexpected:?}");
    assert_eq!(
        out_of_order, None,
        "first arrivals are not 0, 1, 2, …: (position, number) of the first out of order"
    );
    // FILE append records the file length with each completion and the new owner
    // truncates to it before writing: the uncommitted tail is re-sent, never doubled
    assert_eq!(
        duplicates, 0,
        "{duplicates} duplicates: FILE append mode must be exactly-once across a takeover"
    );
    assert!(done, "the run completed");
    assert!(
        epoch_after >= 2,
        "the lease moved by expiry to a new owner with epoch + 1: epoch is {epoch_after}"
    );
    let owner = lease_owner(&pool, "ordered").await.map(|o| o.0);
    assert_ne!(
        owner,
        Some(victim_id),
        "the killed instance still holds the lease"
    );
}

const HTTP_MESSAGES: usize = 200;

/// Three hosts run one ordered HTTP port: the endpoint never sees two requests at once;
/// every request carries `mbx-sequence` (consecutive, increasing) and the one owner's
/// `mbx-epoch`.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_ordered_port_runs_on_one_instance_at_a_time(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let sink = ordered_http_port(&mbx, "ordered").await;
    let url = database_url(&pool);
    let _hosts = [
        start_host(&url, FAST_HOST),
        start_host(&url, FAST_HOST),
        start_host(&url, FAST_HOST),
    ];
    wait_for_alive(&mbx, 3).await;

    for chunk in (0..HTTP_MESSAGES).collect::<Vec<_>>().chunks(20) {
        let batch = chunk
            .iter()
            .map(|&n| message("Seq.N", n as i64, format!("message {n}")))
            .collect();
        publish_routed(&mbx, batch).await;
    }
    wait_for(
        &format!("{HTTP_MESSAGES} distinct requests at the endpoint"),
        Duration::from_secs(30),
        || async {
            let r = sink.requests.lock().expect("sink lock");
            r.iter().map(|r| &r.body).collect::<BTreeSet<_>>().len() >= HTTP_MESSAGES
        },
    )
    .await;
    let mut requests = sink.requests.lock().expect("sink lock").clone();
    requests.sort_by_key(|r| r.arrived);

    // the checker
    let sent: BTreeSet<String> = (0..HTTP_MESSAGES).map(|n| format!("message {n}")).collect();
    let bodies: Vec<&String> = requests.iter().map(|r| &r.body).collect();
    let unexpected: Vec<&&String> = bodies.iter().filter(|b| !sent.contains(**b)).collect();
    assert!(unexpected.is_empty(), "unexpected bodies: {unexpected:?}");
    assert_eq!(
        bodies.len(),
        HTTP_MESSAGES,
        "each message sent exactly once (no crash, no takeover)"
    );
    let max_in_flight = sink.max_in_flight.load(Ordering::SeqCst);
    assert_eq!(
        max_in_flight, 1,
        "{max_in_flight} requests were in progress at once: the ordered port was sent \
         concurrently"
    );
    for pair in requests.windows(2) {
        assert!(
            pair[1].arrived >= pair[0].answered,
            "'{}' arrived before '{}' was answered: two sends overlapped",
            pair[1].body,
            pair[0].body
        );
    }
    // delivery order is publication order: the bodies in order, the sequences consecutive
    let expected: Vec<String> = (0..HTTP_MESSAGES).map(|n| format!("message {n}")).collect();
    let in_order: Vec<String> = requests.iter().map(|r| r.body.clone()).collect();
    assert_eq!(in_order, expected, "arrival order is publication order");
    let sequences: Vec<Option<i64>> = requests.iter().map(|r| r.sequence).collect();
    assert!(
        sequences.iter().all(Option::is_some),
        "every ordered send carries an mbx-sequence header: {:?}",
        &sequences[..sequences.len().min(5)]
    );
    let first = sequences[0].expect("sequence");
    let consecutive: Vec<Option<i64>> = (first..first + HTTP_MESSAGES as i64).map(Some).collect();
    assert_eq!(
        sequences, consecutive,
        "sequences arrive strictly increasing without gaps"
    );
    let epochs: BTreeSet<Option<i64>> = requests.iter().map(|r| r.epoch).collect();
    let epoch = lease_epoch(&pool, "ordered").await;
    assert_eq!(
        epochs,
        BTreeSet::from([Some(epoch)]),
        "every send carries the one owner's epoch (the lease's, {epoch})"
    );
}

const PAUSE_MESSAGES: usize = 300;

/// T2: the owner is paused (SIGSTOP) for longer than the lease TTL, another instance takes
/// over with a new epoch, and the paused one is resumed (SIGCONT): it must emit at most
/// the one message it was already sending, with the old epoch, and lose or reorder
/// nothing.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_paused_owner_is_fenced_and_emits_at_most_the_message_it_was_sending(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let sink = ordered_http_port(&mbx, "ordered").await;
    let url = database_url(&pool);
    let _hosts = [start_host(&url, FAST_HOST), start_host(&url, FAST_HOST)];
    wait_for_alive(&mbx, 2).await;
    for chunk in (0..PAUSE_MESSAGES).collect::<Vec<_>>().chunks(20) {
        let batch = chunk
            .iter()
            .map(|&n| message("Seq.N", n as i64, format!("message {n}")))
            .collect();
        publish_routed(&mbx, batch).await;
    }
    wait_for(
        "some requests at the endpoint",
        Duration::from_secs(30),
        || async { sink.requests.lock().expect("sink lock").len() >= 20 },
    )
    .await;
    let (_, pid, old_epoch) = lease_owner(&pool, "ordered").await.expect("a live owner");
    signal(pid, "-STOP");
    let paused = Instant::now();
    // takeover only by expiry: the other instance sends with a newer epoch
    wait_for(
        "a request with a newer epoch",
        LEASE_TTL + Duration::from_secs(15),
        || async { sink.sent_after_epoch(old_epoch) },
    )
    .await;
    assert!(
        paused.elapsed() >= LEASE_TTL - Duration::from_secs(1),
        "takeover before the lease could expire"
    );
    wait_for(
        "every message delivered",
        Duration::from_secs(60),
        || async {
            let r = sink.requests.lock().expect("sink lock");
            r.iter().map(|r| &r.body).collect::<BTreeSet<_>>().len() >= PAUSE_MESSAGES
        },
    )
    .await;
    signal(pid, "-CONT");
    // the resumed process notices it was declared dead and registers again
    wait_for(
        "the resumed instance to run again",
        Duration::from_secs(30),
        || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM host_instances WHERE pid = $1")
                .bind(pid)
                .fetch_one(&pool)
                .await
                .expect("instances");
            n >= 2
        },
    )
    .await;

    let requests = {
        let mut r = sink.requests.lock().expect("sink lock").clone();
        r.sort_by_key(|r| r.arrived);
        r
    };
    let takeover = requests
        .iter()
        .find(|r| r.epoch.is_some_and(|e| e > old_epoch))
        .map(|r| r.arrived)
        .expect("takeover request");
    let stale: Vec<&Request> = requests
        .iter()
        .filter(|r| r.arrived >= takeover && r.epoch == Some(old_epoch))
        .collect();
    assert!(
        stale.len() <= 1,
        "the paused owner emitted {} messages after the takeover",
        stale.len()
    );
    let duplicates = check_in_order(&requests, PAUSE_MESSAGES);
    assert!(duplicates <= COMMIT_BATCH + 1, "{duplicates} duplicates");
    wait_for("an empty spool", Duration::from_secs(30), || async {
        mbx.stats().await.expect("stats").spool_messages == 0
    })
    .await;
}

const RECEIVE_FILES: usize = 200;

/// An ordered FILE receive location runs on one instance at a time and takes
/// files in name order, one batch at a time; through an ordered send port the files come
/// out in the order of their names, each exactly once.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_ordered_receive_location_takes_files_in_name_order_on_one_instance(pool: PgPool) {
    use mbx_messagebox::receive::ReceiveLocationSpec;
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (inbox, log) = (dir.path().join("in"), dir.path().join("out.log"));
    std::fs::create_dir_all(&inbox).expect("in");
    for n in 0..RECEIVE_FILES {
        std::fs::write(inbox.join(format!("{n:04}.txt")), format!("file {n:04}\n")).expect("write");
    }
    mbx.receive_port_create("feed", false)
        .await
        .expect("receive port");
    let mut loc = ReceiveLocationSpec::new(
        "feed-in",
        "feed",
        &format!("file://{}/*.txt", inbox.display()),
    );
    loc.ordered = true;
    loc.settings.insert("batch_max".into(), "7".into());
    mbx.receive_location_create(&loc).await.expect("location");
    ordered_append_port(
        &mbx,
        "feed-out",
        &log,
        "mbx.ReceivePortName == 'feed'",
        InitialState::Started,
    )
    .await;
    let url = database_url(&pool);
    let _hosts = [start_host(&url, FAST_HOST), start_host(&url, FAST_HOST)];
    wait_for_alive(&mbx, 2).await;
    mbx.receive_location_set_enabled("feed-in", true)
        .await
        .expect("enable");

    wait_for(
        "every file in the output",
        Duration::from_secs(60),
        || async { lines_of(&log).len() >= RECEIVE_FILES },
    )
    .await;
    let expected: Vec<String> = (0..RECEIVE_FILES).map(|n| format!("file {n:04}")).collect();
    assert_eq!(lines_of(&log), expected, "name order, exactly once");
    let holders: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM leases l JOIN receive_locations r ON r.id = l.location_id
          WHERE r.name = 'feed-in' AND l.holder IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .expect("lease");
    assert_eq!(holders, 1, "the location ran under its lease");
}

const T1_MESSAGES: usize = 2000;
const T1_KILLS: usize = 5;

/// T1: three hosts, one ordered FILE append port, 2,000 messages; the lease owner is killed
/// with SIGKILL five times during the run and restarted each time. Nothing is lost, first
/// arrivals are strictly increasing, FILE append makes it exactly-once, and every takeover
/// comes within the lease TTL plus slack.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn five_kills_of_the_owner_lose_nothing_and_keep_the_order(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("t1.log");
    ordered_append_port(&mbx, "t1", &log, "exists(Seq.N)", InitialState::Started).await;
    let url = database_url(&pool);
    let mut hosts = vec![
        start_host(&url, FAST_HOST),
        start_host(&url, FAST_HOST),
        start_host(&url, FAST_HOST),
    ];
    wait_for_alive(&mbx, 3).await;
    for chunk in (0..T1_MESSAGES).collect::<Vec<_>>().chunks(50) {
        let batch = chunk
            .iter()
            .map(|&n| message("Seq.N", n as i64, format!("{n}\n")))
            .collect();
        publish_routed(&mbx, batch).await;
    }
    let step = T1_MESSAGES / (T1_KILLS + 1);
    for kill in 0..T1_KILLS {
        let target = step * (kill + 1);
        wait_for(
            &format!("{target} lines before kill {}", kill + 1),
            Duration::from_secs(60),
            || async { lines_of(&log).len() >= target && lease_owner(&pool, "t1").await.is_some() },
        )
        .await;
        let (_, pid, epoch) = lease_owner(&pool, "t1").await.expect("owner");
        let i = hosts
            .iter()
            .position(|h| h.pid() as i32 == pid)
            .expect("the owner is one of the test's hosts");
        let mut victim = hosts.swap_remove(i);
        victim.0.kill().expect("SIGKILL");
        victim.0.wait().expect("reap");
        let killed_at = Instant::now();
        let at_kill = lines_of(&log).len();
        assert!(
            at_kill < T1_MESSAGES,
            "kill {} came after the run ended",
            kill + 1
        );
        hosts.push(start_host(&url, FAST_HOST));
        // the takeover: a newer epoch owns the port and lines grow again
        wait_for(
            &format!("the takeover after kill {}", kill + 1),
            LEASE_TTL + Duration::from_secs(10),
            || async {
                lines_of(&log).len() > at_kill
                    && lease_owner(&pool, "t1")
                        .await
                        .is_some_and(|(_, _, e)| e > epoch)
            },
        )
        .await;
        eprintln!(
            "kill {}: owner epoch {epoch} at {at_kill} lines; taken over after {:?}",
            kill + 1,
            killed_at.elapsed()
        );
    }
    wait_for("every message", Duration::from_secs(60), || async {
        lines_of(&log).iter().collect::<BTreeSet<_>>().len() >= T1_MESSAGES
    })
    .await;
    let lines = lines_of(&log);
    let mut first = Vec::new();
    let mut seen = BTreeSet::new();
    for l in &lines {
        if seen.insert(l.clone()) {
            first.push(l.clone());
        }
    }
    let expected: Vec<String> = (0..T1_MESSAGES).map(|n| n.to_string()).collect();
    assert_eq!(
        first, expected,
        "lost = 0, unexpected = 0, first arrivals strictly increasing"
    );
    assert_eq!(
        lines.len(),
        T1_MESSAGES,
        "FILE append is exactly-once: no duplicates across {T1_KILLS} takeovers"
    );
}

/// Many ordered ports run concurrently, each independent, spread over the instances.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn ordered_ports_spread_over_the_instances(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    for p in 0..6 {
        let log = dir.path().join(format!("p{p}.log"));
        ordered_append_port(
            &mbx,
            &format!("p{p}"),
            &log,
            &format!("Seq.Port == {p}"),
            InitialState::Started,
        )
        .await;
    }
    let url = database_url(&pool);
    let _first = start_host(&url, FAST_HOST);
    wait_for_alive(&mbx, 1).await;
    let _second = start_host(&url, FAST_HOST);
    wait_for_alive(&mbx, 2).await;
    wait_for(
        "three ports on each instance",
        Duration::from_secs(40),
        || async {
            let per_holder: Vec<i64> = sqlx::query_scalar(
                "SELECT count(*) FROM leases WHERE port_id IS NOT NULL AND expires_at > now()
              GROUP BY holder ORDER BY 1",
            )
            .fetch_all(&pool)
            .await
            .expect("leases");
            per_holder == vec![3, 3]
        },
    )
    .await;
    // each port delivers its own messages, in order
    for p in 0..6i64 {
        let batch = (0..20)
            .map(|n| {
                let mut ctx = Context::new();
                ctx.promote("Seq.Port", Value::Integer(p)).expect("promote");
                NewMessage::new(format!("{n}\n"), "text/plain", ctx)
            })
            .collect();
        publish_routed(&mbx, batch).await;
    }
    for p in 0..6 {
        let log = dir.path().join(format!("p{p}.log"));
        wait_for(
            &format!("port p{p} delivered"),
            Duration::from_secs(30),
            || async { lines_of(&log).len() >= 20 },
        )
        .await;
        let expected: Vec<String> = (0..20).map(|n| n.to_string()).collect();
        assert_eq!(lines_of(&log), expected, "port p{p}");
    }
}

const T3_ROUNDS: usize = 50;
const T3_PER_ROUND: usize = 4;

/// T3: three hosts started at once, 50 rounds: each round exactly one instance owns the
/// ordered port (one epoch on every send of the round) and no two sends overlap. The hosts
/// run in-process (`mbx_host::run`) so a round costs milliseconds; each stops gracefully,
/// releasing its lease for the next round.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn three_hosts_started_at_once_have_exactly_one_owner_each_round(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let sink = ordered_http_port(&mbx, "t3").await;
    let url = database_url(&pool);
    let mut next = 0usize;
    for round in 0..T3_ROUNDS {
        let batch = (next..next + T3_PER_ROUND)
            .map(|n| message("Seq.N", n as i64, format!("message {n}")))
            .collect();
        publish_routed(&mbx, batch).await;
        next += T3_PER_ROUND;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let hosts: Vec<_> = (0..3)
            .map(|_| {
                let mut config = mbx_host::HostConfig::new(&url, "default");
                config.poll_interval = Duration::from_millis(50);
                let mut stop = stop_rx.clone();
                tokio::spawn(mbx_host::run(config, async move {
                    let _ = stop.wait_for(|s| *s).await;
                }))
            })
            .collect();
        wait_for(
            &format!("round {round} delivered"),
            Duration::from_secs(30),
            || async { sink.requests.lock().expect("sink lock").len() >= next },
        )
        .await;
        stop_tx.send(true).expect("stop");
        for h in hosts {
            h.await.expect("join").expect("host stops cleanly");
        }
        let requests = sink.requests.lock().expect("sink lock").clone();
        let round_epochs: BTreeSet<Option<i64>> = requests[next - T3_PER_ROUND..]
            .iter()
            .map(|r| r.epoch)
            .collect();
        assert_eq!(
            round_epochs.len(),
            1,
            "round {round}: sends under several epochs {round_epochs:?}"
        );
        assert_eq!(
            requests.len(),
            next,
            "round {round}: each message sent once"
        );
    }
    assert_eq!(
        sink.max_in_flight.load(Ordering::SeqCst),
        1,
        "two sends overlapped"
    );
    // at least one acquisition per round (a host that is stopping may still take the lease
    // its stopping owner released, after the round's messages were delivered)
    assert!(lease_epoch(&pool, "t3").await >= T3_ROUNDS as i64);
}
