//! kill -9 of one of two real `mbx-host` processes during a 1,000-file FILE → FILE run
//! loses nothing: a checker counts lost, unexpected and duplicate bodies.
//!
//! The victim is killed while it holds claimed files (`.<name>.mbx-claimed-<instance>`)
//! and claimed deliveries. The survivor keeps running and a replacement is started at
//! once, as a process supervisor would — while the victim still looks alive. Once the dead
//! timeout (10 s, on the real clock: the replacement's start must not be able to tell the
//! victim is dead) has passed, the running instances must put back everything it held.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use mbx_e2e::{
    bodies_in, database_url, eventually, file_route, files_in, messagebox, start_host,
    wait_for_alive, FileRoute, FAST_HOST,
};
use sqlx::PgPool;
use uuid::Uuid;

const FILES: usize = 1000;
/// Delivered before the kill, at least.
const KILL_AFTER: usize = 100;
/// A redelivery repeats at most one claim batch.
const CLAIM_BATCH: usize = 100;
/// The dead timeout (10 s) + a reclaim period + time to finish the run.
const RECOVERY: Duration = Duration::from_secs(40);

/// Files in `dir` claimed by `instance` and not (yet) put back.
fn claimed_by(dir: &Path, instance: Uuid) -> Vec<String> {
    let suffix = format!(".mbx-claimed-{}", instance.simple());
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(&suffix))
        .collect()
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn kill_9_of_one_host_during_a_run_loses_nothing(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // a name per attempt, so that a re-sent message shows as a duplicate
    let FileRoute { inbox, outbox } = file_route(
        &mbx,
        dir.path(),
        "xml",
        "xml",
        "/order/id",
        "%MessageID%_%datetime%.xml",
    )
    .await;

    let url = database_url(&pool);
    let mut victim = start_host(&url, FAST_HOST);
    let _survivor = start_host(&url, FAST_HOST);
    wait_for_alive(&mbx, 2).await;
    let victim_id: Uuid = sqlx::query_scalar("SELECT id FROM host_instances WHERE pid = $1")
        .bind(victim.pid() as i32)
        .fetch_one(&pool)
        .await
        .expect("victim instance");

    let mut sent = BTreeSet::new();
    for i in 0..FILES {
        let body = format!(
            "<order><id>{i}</id><pad>{}</pad></order>",
            "x".repeat(i % 97)
        );
        let tmp = inbox.join(format!(".order-{i}.tmp"));
        std::fs::write(&tmp, &body).expect("write");
        std::fs::rename(&tmp, inbox.join(format!("order-{i}.xml"))).expect("rename");
        sent.insert(body);
    }
    // kill once some arrived, at a moment the victim holds claimed files (if the folder
    // is not drained by then), so that their reclaim is part of the test
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the first deliveries"
        );
        if files_in(&outbox, "xml").len() >= KILL_AFTER
            && (!claimed_by(&inbox, victim_id).is_empty() || files_in(&inbox, "xml").is_empty())
        {
            victim.0.kill().expect("SIGKILL");
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    victim.0.wait().expect("reap");
    let delivered_at_kill = files_in(&outbox, "xml").len();
    assert!(
        delivered_at_kill < FILES,
        "the kill must happen during the run: all {FILES} were delivered already"
    );
    let files_held = claimed_by(&inbox, victim_id).len();
    let deliveries_held: i64 =
        sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE claimed_by = $1")
            .bind(victim_id)
            .fetch_one(&pool)
            .await
            .expect("count claims");
    eprintln!(
        "killed {victim_id} after {delivered_at_kill} deliveries, holding {files_held} claimed files and {deliveries_held} claimed deliveries"
    );

    // restarted at once, as a process supervisor would; the killed instance is declared
    // dead only after the real dead timeout, by whichever instance notices first
    let _replacement = start_host(&url, FAST_HOST);
    let started = Instant::now();
    // done: every file received (none left, claimed or not; the victim's files that it
    // had published before the kill come back as duplicates, moved to .mbx-duplicates/),
    // then nothing left to deliver
    let done = eventually(RECOVERY, || async {
        std::fs::read_dir(&inbox)
            .expect("read inbox")
            .filter_map(|e| e.ok())
            .all(|e| e.file_name() == ".mbx-duplicates")
            && mbx.stats().await.expect("stats").spool_messages == 0
    })
    .await;
    eprintln!("recovered: {done} after {:?}", started.elapsed());

    // the checker
    let mut received: BTreeMap<String, usize> = BTreeMap::new();
    for body in bodies_in(&outbox, "xml") {
        *received.entry(body).or_default() += 1;
    }
    let lost = sent.iter().filter(|b| !received.contains_key(*b)).count();
    let unexpected = received.keys().filter(|b| !sent.contains(*b)).count();
    let duplicates: usize = received.values().map(|n| n - 1).sum();
    let stuck = claimed_by(&inbox, victim_id);
    let stats = mbx.stats().await.expect("stats");
    let litter =
        std::fs::read_dir(&outbox).expect("read outbox").count() - files_in(&outbox, "xml").len();
    eprintln!(
        "lost {lost}, unexpected {unexpected}, duplicates {duplicates}, spool {}, suspended {}, \
         temporary files left in the send folder {litter}",
        stats.spool_messages, stats.suspended_total
    );
    assert!(
        stuck.is_empty(),
        "{} files stay claimed by the killed instance {victim_id}: no live instance put them \
         back within {RECOVERY:?}, so they are never received; e.g. {:?}",
        stuck.len(),
        &stuck[..stuck.len().min(3)]
    );
    // what was set aside as a duplicate had been published (and so delivered) before
    let aside = inbox.join(".mbx-duplicates");
    if aside.exists() {
        for body in bodies_in(&aside, "xml") {
            assert!(
                received.contains_key(&body),
                "a file set aside as a duplicate was never delivered: {body}"
            );
        }
    }
    assert_eq!(lost, 0, "lost bodies");
    assert_eq!(unexpected, 0, "unexpected bodies");
    assert!(
        duplicates <= CLAIM_BATCH,
        "{duplicates} duplicates: more than one claim batch"
    );
    assert_eq!(
        (stats.spool_messages, stats.suspended_total),
        (0, 0),
        "nothing left in the spool or suspended"
    );
    assert!(done, "the run completed");
    let victim_state = mbx
        .instance_list()
        .await
        .expect("instances")
        .into_iter()
        .find(|i| i.id == victim_id)
        .map(|i| i.state);
    assert_eq!(
        victim_state,
        Some(mbx_messagebox::states::InstanceState::Dead)
    );
}
