//! FILE receive against a real directory, with a recording submitter.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use mbx_adapters::file::FileReceiveAdapter;
use mbx_adapters::{
    settings_from, system, ReceiveAdapter, ReceiveLocationSpec, Settings, ShutdownSignal,
};
use tokio::sync::oneshot;

use crate::support::{file_url, names, Recorder, TEST_DEADLINE};

const INSTANCE: &str = "3f1c6a2e-0000-4000-8000-000000000001";

/// The adapter on `dir` with `settings`; files are taken as soon as they are seen
/// (`settle=0s`) unless the settings say otherwise.
fn adapter(dir: &Path, mask: &str, settings: Settings) -> FileReceiveAdapter {
    adapter_with(dir, mask, settings, INSTANCE, false)
}

fn adapter_with(
    dir: &Path,
    mask: &str,
    mut settings: Settings,
    instance: &str,
    ordered: bool,
) -> FileReceiveAdapter {
    settings
        .entry("settle".to_owned())
        .or_insert_with(|| "0s".to_owned());
    FileReceiveAdapter::new(ReceiveLocationSpec {
        location_name: "orders-in".to_owned(),
        address: file_url(dir, mask),
        settings,
        instance_id: instance.to_owned(),
        ordered,
        two_way: false,
    })
    .expect("valid location")
}

/// Runs `location` on its own task until the returned sender fires (or is dropped).
fn spawn_run(
    location: FileReceiveAdapter,
    recorder: &Arc<Recorder>,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), mbx_adapters::ReceiveError>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown: ShutdownSignal = Box::pin(async move {
        let _ = stopped.await;
    });
    let recorder = recorder.clone();
    let runner = tokio::spawn(async move { location.run(recorder.as_ref(), shutdown).await });
    (stop, runner)
}

fn write(dir: &Path, name: &str, body: &str) {
    fs::write(dir.join(name), body).unwrap();
}

#[tokio::test]
async fn picks_matching_files_only_and_deletes_them_after_submit() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.xml", "<a/>");
    write(dir.path(), "b.xml", "<b/>");
    write(dir.path(), "c.json", "{}");
    write(dir.path(), ".hidden.xml", "<h/>");
    let recorder = Recorder::new();
    let report = adapter(dir.path(), "*.xml", Settings::new())
        .poll_once(recorder.as_ref())
        .await
        .unwrap();
    assert_eq!(report.submitted, 2);
    let batches = recorder.batches();
    assert_eq!(batches.len(), 1);
    let got: Vec<(String, String, String)> = batches[0]
        .iter()
        .map(|m| {
            (
                m.properties
                    .get(system::SOURCE_FILE_NAME)
                    .unwrap()
                    .to_owned(),
                String::from_utf8(m.body.in_memory().unwrap().to_vec()).unwrap(),
                m.content_type.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("a.xml".into(), "<a/>".into(), "application/xml".into()),
            ("b.xml".into(), "<b/>".into(), "application/xml".into()),
        ]
    );
    let m = &batches[0][0];
    assert_eq!(
        m.properties.get(system::INBOUND_TRANSPORT_TYPE),
        Some("FILE")
    );
    assert_eq!(
        m.properties.get(system::INBOUND_TRANSPORT_LOCATION),
        Some(file_url(dir.path(), "*.xml").as_str())
    );
    assert_eq!(
        names(dir.path()),
        vec![".hidden.xml".to_owned(), "c.json".to_owned()]
    );
}

#[tokio::test]
async fn a_failed_submit_puts_files_back_and_source_ids_stay_stable() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.xml", "<a/>");
    write(dir.path(), "b.xml", "<b/>");
    let recorder = Recorder::new();
    let location = adapter(dir.path(), "*.xml", Settings::new());

    recorder.set_fail(true);
    let report = location.poll_once(recorder.as_ref()).await.unwrap();
    assert!(report.submit_failed);
    assert_eq!(report.submitted, 0);
    assert_eq!(
        names(dir.path()),
        vec!["a.xml".to_owned(), "b.xml".to_owned()],
        "restored, no claimed leftovers"
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("a.xml")).unwrap(),
        "<a/>"
    );

    // The same files read twice (here: after a put-back) carry the same source ids.
    recorder.set_fail(false);
    let first = location.poll_once(recorder.as_ref()).await.unwrap();
    assert_eq!(first.submitted, 2);
    let ids: Vec<String> = recorder.batches()[0]
        .iter()
        .map(|m| m.source_id.clone().unwrap())
        .collect();
    assert!(ids[0].starts_with("a.xml:4:"), "{ids:?}");
    assert_ne!(ids[0], ids[1]);
    assert_eq!(names(dir.path()), Vec::<String>::new());
}

#[tokio::test]
async fn source_ids_are_name_size_and_mtime() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.xml", "<a/>");
    let mtime = fs::metadata(dir.path().join("a.xml"))
        .unwrap()
        .modified()
        .unwrap();
    let recorder = Recorder::new();
    adapter(dir.path(), "*.xml", Settings::new())
        .poll_once(recorder.as_ref())
        .await
        .unwrap();
    let ns = mtime
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    assert_eq!(
        recorder.batches()[0][0].source_id.as_deref(),
        Some(format!("a.xml:4:{ns}").as_str())
    );
}

#[tokio::test]
async fn files_are_claimed_during_submit_and_a_put_back_never_overwrites_a_newer_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.xml", "old");
    let recorder = Recorder::new();
    recorder.set_fail(true);
    let folder = dir.path().to_owned();
    recorder.set_during_submit(move |_| {
        // While submitting, the file is claimed: its name is free, and nobody else sees it.
        let listing = names(&folder);
        assert_eq!(listing, vec![format!(".a.xml.mbx-claimed-{INSTANCE}")]);
        // A producer drops a new file of the same name meanwhile.
        fs::write(folder.join("a.xml"), "new").unwrap();
    });
    let report = adapter(dir.path(), "*.xml", Settings::new())
        .poll_once(recorder.as_ref())
        .await
        .unwrap();
    assert!(report.submit_failed);
    assert_eq!(fs::read_to_string(dir.path().join("a.xml")).unwrap(), "new");
    assert_eq!(
        names(dir.path()),
        vec![format!(".a.xml.mbx-claimed-{INSTANCE}"), "a.xml".to_owned()],
        "the old file stays claimed, for reclaim"
    );
}

#[tokio::test]
async fn two_instances_on_one_folder_receive_each_file_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..200 {
        write(dir.path(), &format!("{i:03}.xml"), &format!("<m>{i}</m>"));
    }
    let instance = |id: &str| {
        adapter_with(
            dir.path(),
            "*.xml",
            settings_from([("batch_max", "7")]),
            id,
            false,
        )
    };
    let (one, two) = (instance("instance-1"), instance("instance-2"));
    let (r1, r2) = (Recorder::new(), Recorder::new());
    let (a, b) = tokio::join!(one.poll_once(r1.as_ref()), two.poll_once(r2.as_ref()));
    assert_eq!(a.unwrap().submitted + b.unwrap().submitted, 200);
    let mut got: Vec<String> = r1
        .batches()
        .concat()
        .into_iter()
        .chain(r2.batches().concat())
        .map(|m| m.properties.source_file_name().unwrap().to_owned())
        .collect();
    got.sort();
    let want: Vec<String> = (0..200).map(|i| format!("{i:03}.xml")).collect();
    assert_eq!(got, want, "every file once, none twice");
    assert_eq!(names(dir.path()), Vec::<String>::new());
}

#[tokio::test]
async fn names_too_long_to_claim_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let long = format!("{}.xml", "n".repeat(200));
    write(dir.path(), &long, "<a/>");
    let recorder = Recorder::new();
    let report = adapter(dir.path(), "*.xml", Settings::new())
        .poll_once(recorder.as_ref())
        .await
        .unwrap();
    assert_eq!((report.submitted, report.rejected), (0, 1));
    let rejected = names(&dir.path().join(".mbx-rejected"));
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    let reason = rejected
        .iter()
        .find(|n| n.ends_with(".reason.txt"))
        .unwrap();
    let text = fs::read_to_string(dir.path().join(".mbx-rejected").join(reason)).unwrap();
    assert!(text.contains(&long), "{text}");
}

#[tokio::test]
async fn oversized_files_are_rejected_with_a_reason_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "big.xml", "<big>0123456789</big>");
    write(dir.path(), "ok.xml", "<ok/>");
    let recorder = Recorder::new();
    let report = adapter(
        dir.path(),
        "*.xml",
        settings_from([("max_message_size", "10")]),
    )
    .poll_once(recorder.as_ref())
    .await
    .unwrap();
    assert_eq!((report.submitted, report.rejected), (1, 1));
    let submitted: Vec<_> = recorder.batches().concat();
    assert_eq!(submitted.len(), 1);
    assert_eq!(submitted[0].properties.source_file_name(), Some("ok.xml"));
    let rejected = dir.path().join(".mbx-rejected");
    assert_eq!(
        names(&rejected),
        vec!["big.xml".to_owned(), "big.xml.reason.txt".to_owned()]
    );
    assert_eq!(
        fs::read_to_string(rejected.join("big.xml")).unwrap(),
        "<big>0123456789</big>"
    );
    let reason = fs::read_to_string(rejected.join("big.xml.reason.txt")).unwrap();
    assert!(
        reason.contains("21 bytes") && reason.contains("max_message_size"),
        "{reason}"
    );
    assert_eq!(names(dir.path()), vec![".mbx-rejected".to_owned()]);
}

#[tokio::test]
async fn batches_are_bounded_by_count_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..5 {
        write(dir.path(), &format!("{i}.txt"), "123456");
    }
    let recorder = Recorder::new();
    adapter(dir.path(), "*.txt", settings_from([("batch_max", "2")]))
        .poll_once(recorder.as_ref())
        .await
        .unwrap();
    let sizes: Vec<usize> = recorder.batches().iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![2, 2, 1]);

    for i in 0..3 {
        write(dir.path(), &format!("{i}.txt"), "123456");
    }
    let recorder = Recorder::new();
    adapter(
        dir.path(),
        "*.txt",
        settings_from([("batch_bytes_max", "10")]),
    )
    .poll_once(recorder.as_ref())
    .await
    .unwrap();
    let sizes: Vec<usize> = recorder.batches().iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![1, 1, 1], "6-byte files, 10 bytes per batch");
}

#[tokio::test]
async fn files_claimed_by_a_dead_instance_are_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), ".a.xml.mbx-claimed-dead-1", "<a/>");
    write(dir.path(), ".b.xml.mbx-claimed-live-1", "<b/>");
    let location = adapter(dir.path(), "*.xml", Settings::new());
    let report = location
        .reclaim(
            &|c: &mbx_adapters::ClaimInfo| c.claim_id != "live-1",
            Recorder::new().as_ref(),
        )
        .await
        .unwrap();
    assert_eq!((report.reclaimed, report.kept), (1, 1));
    assert_eq!(
        names(dir.path()),
        vec![".b.xml.mbx-claimed-live-1".to_owned(), "a.xml".to_owned()]
    );
    let recorder = Recorder::new();
    assert_eq!(
        location
            .poll_once(recorder.as_ref())
            .await
            .unwrap()
            .submitted,
        1
    );
}

#[tokio::test]
async fn run_receives_until_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.xml", "<a/>");
    let location = adapter(
        dir.path(),
        "*.xml",
        settings_from([("poll_interval", "20ms")]),
    );
    let recorder = Recorder::new();
    let (stop, runner) = spawn_run(location, &recorder);
    recorder.wait_for_batches(1).await;
    // A file dropped while the location runs is picked up by a later poll.
    write(dir.path(), "b.xml", "<b/>");
    recorder.wait_for_batches(2).await;
    stop.send(()).unwrap();
    tokio::time::timeout(TEST_DEADLINE, runner)
        .await
        .expect("stopped within the deadline")
        .unwrap()
        .unwrap();
    let got: Vec<_> = recorder
        .batches()
        .concat()
        .iter()
        .map(|m| m.properties.source_file_name().unwrap().to_owned())
        .collect();
    assert_eq!(got, vec!["a.xml".to_owned(), "b.xml".to_owned()]);
    assert_eq!(
        names(dir.path()),
        Vec::<String>::new(),
        "acknowledged before run returned"
    );
}

#[tokio::test]
async fn bad_locations_are_refused() {
    let spec = |address: &str, instance: &str| ReceiveLocationSpec {
        location_name: "x".into(),
        address: address.into(),
        settings: Settings::new(),
        instance_id: instance.into(),
        ordered: false,
        two_way: false,
    };
    assert!(FileReceiveAdapter::new(spec("file:///in/*.xml", "ok-1")).is_ok());
    assert!(FileReceiveAdapter::new(spec("file:///in/*.xml", "bad/id")).is_err());
    assert!(FileReceiveAdapter::new(spec("file://in/*.xml", "ok-1")).is_err());
    let dir = tempfile::tempdir().unwrap();
    assert!(adapter(dir.path(), "*.xml", Settings::new())
        .health()
        .await
        .is_healthy());
    assert!(!adapter(&dir.path().join("gone"), "*.xml", Settings::new())
        .health()
        .await
        .is_healthy());
}

fn sources(recorder: &Recorder) -> Vec<String> {
    recorder
        .batches()
        .concat()
        .iter()
        .map(|m| m.properties.source_file_name().unwrap().to_owned())
        .collect()
}

/// A file written in chunks spaced closer than `settle` is taken only once the writer is
/// done, whole (on main it was taken at the first poll, truncated, and the rest of its
/// bytes went into a deleted file).
#[tokio::test]
async fn a_file_still_being_written_is_taken_only_once_complete() {
    let dir = tempfile::tempdir().unwrap();
    let location = adapter(dir.path(), "*.txt", settings_from([("settle", "1s")]));
    let recorder = Recorder::new();
    let path = dir.path().join("slow.txt");
    let chunks: Vec<String> = (0..10).map(|i| format!("chunk {i}\n")).collect();
    let writer = {
        let (path, chunks) = (path.clone(), chunks.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = fs::File::create(&path).unwrap();
            for c in &chunks {
                f.write_all(c.as_bytes()).unwrap();
                f.flush().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
        })
    };
    let started = std::time::Instant::now();
    let mut polls_while_writing = 0;
    while recorder.batches().is_empty() {
        assert!(started.elapsed() < TEST_DEADLINE, "never taken");
        let report = location.poll_once(recorder.as_ref()).await.unwrap();
        if !writer.is_finished() {
            polls_while_writing += 1;
            assert_eq!(
                report.submitted, 0,
                "taken while its writer was still writing"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        polls_while_writing > 5,
        "the writer was slow enough to be seen"
    );
    let body = &recorder.batches()[0][0].body;
    assert_eq!(
        std::str::from_utf8(body.in_memory().unwrap()).unwrap(),
        chunks.concat()
    );
    assert_eq!(names(dir.path()), Vec::<String>::new());
}

/// A file dropped again with the same name, size and mtime (`cp -p`, a move back from an
/// archive) is a duplicate: moved to `.mbx-duplicates/` with a reason file saying how to
/// resubmit it, never deleted unseen (on main it vanished without a trace).
#[tokio::test]
async fn a_duplicate_is_moved_aside_with_a_reason_never_deleted_unseen() {
    let dir = tempfile::tempdir().unwrap();
    let location = adapter(dir.path(), "*.xml", Settings::new());
    let recorder = Recorder::new();
    let mtime = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let drop_file = || {
        write(dir.path(), "a.xml", "<a/>");
        fs::File::options()
            .write(true)
            .open(dir.path().join("a.xml"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    };
    drop_file();
    let first = location.poll_once(recorder.as_ref()).await.unwrap();
    assert_eq!((first.submitted, first.duplicates), (1, 0));
    drop_file();
    let again = location.poll_once(recorder.as_ref()).await.unwrap();
    assert_eq!((again.submitted, again.duplicates), (0, 1));
    assert_eq!(names(dir.path()), vec![".mbx-duplicates".to_owned()]);
    let aside = dir.path().join(".mbx-duplicates");
    assert_eq!(
        names(&aside),
        vec!["a.xml".to_owned(), "a.xml.reason.txt".to_owned()]
    );
    assert_eq!(fs::read_to_string(aside.join("a.xml")).unwrap(), "<a/>");
    let reason = fs::read_to_string(aside.join("a.xml.reason.txt")).unwrap();
    assert!(
        reason.contains("dedup window") && reason.contains("new name"),
        "{reason}"
    );
    // a third time: both kept
    drop_file();
    location.poll_once(recorder.as_ref()).await.unwrap();
    assert_eq!(names(&aside).len(), 4, "{:?}", names(&aside));
}

/// A stop takes effect between batches: once it fires, the poll in progress submits no
/// new batch (on main a poll worked through its whole listing first: 3–5 s of files after
/// `receive-location disable`).
#[tokio::test]
async fn a_stop_takes_effect_between_batches_not_after_the_whole_listing() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..50 {
        write(dir.path(), &format!("{i:02}.xml"), "<m/>");
    }
    let location = adapter(dir.path(), "*.xml", settings_from([("batch_max", "1")]));
    let recorder = Recorder::new();
    // each submit takes 100 ms: the listing of 50 files takes 5 s
    recorder.set_during_submit(|_| std::thread::sleep(std::time::Duration::from_millis(100)));
    let (stop, runner) = spawn_run(location, &recorder);
    recorder.wait_for_batches(2).await;
    let at_stop = recorder.batches().len();
    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(1), runner)
        .await
        .expect("run returned within 1 s of the stop")
        .unwrap()
        .unwrap();
    let taken = recorder.batches().len();
    assert!(
        taken <= at_stop + 1,
        "{taken} batches taken, {at_stop} at the stop: at most the one in hand may follow"
    );
    assert_eq!(
        names(dir.path()).len(),
        50 - taken,
        "files not taken stay in the folder"
    );
}

/// An ordered location puts back a former holder's claimed files before it takes any, so
/// they keep their place in name order (on main they stayed claimed until that instance
/// was declared dead, and the files after them were published first).
#[tokio::test]
async fn an_ordered_location_puts_back_a_former_holders_claims_first() {
    let dir = tempfile::tempdir().unwrap();
    for i in 1..=5 {
        write(dir.path(), &format!("{i}.xml"), &format!("<m>{i}</m>"));
    }
    // a former holder (alive, paused) claimed 2.xml and 3.xml
    for i in [2, 3] {
        fs::rename(
            dir.path().join(format!("{i}.xml")),
            dir.path()
                .join(format!(".{i}.xml.mbx-claimed-former-holder")),
        )
        .unwrap();
    }
    let location = adapter_with(dir.path(), "*.xml", Settings::new(), INSTANCE, true);
    let recorder = Recorder::new();
    let report = location.poll_once(recorder.as_ref()).await.unwrap();
    assert_eq!(report.submitted, 5);
    assert_eq!(
        sources(&recorder),
        ["1.xml", "2.xml", "3.xml", "4.xml", "5.xml"]
    );
    assert_eq!(names(dir.path()), Vec::<String>::new());
}

/// A claimed file its claimant published (and did not delete: it stopped in between) is
/// deleted by a reclaim, not put back to come again as a duplicate; another claimed file
/// goes back. The MessageBox is asked with each file's source id and identity as found.
#[tokio::test]
async fn a_reclaim_deletes_a_claimed_file_already_published_and_puts_back_the_others() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), ".a.xml.mbx-claimed-dead-1", "<a/>");
    write(dir.path(), ".b.xml.mbx-claimed-dead-1", "<b/>");
    let location = adapter(dir.path(), "*.xml", Settings::new());
    let recorder = Recorder::new();
    recorder.set_published_when(|s| s.source_id.starts_with("a.xml:"));
    let report = location
        .reclaim(&|_: &mbx_adapters::ClaimInfo| true, recorder.as_ref())
        .await
        .unwrap();
    assert_eq!((report.finished, report.reclaimed, report.kept), (1, 1, 0));
    assert_eq!(names(dir.path()), vec!["b.xml".to_owned()]);
    let asked = recorder.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 2, "{asked:?}");
    for s in &asked {
        assert!(s.source_id.contains(".xml:4:"), "name:size:mtime: {s:?}");
        assert_eq!(s.identity.split(':').count(), 3, "dev:ino:ctime: {s:?}");
    }
}

/// An ordered location that cannot ask whether a former holder's claimed files were
/// published touches nothing and takes no file (they would come after it).
#[tokio::test]
async fn an_ordered_location_that_cannot_ask_leaves_a_former_holders_claims_alone() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), ".1.xml.mbx-claimed-former-holder", "<m>1</m>");
    write(dir.path(), "2.xml", "<m>2</m>");
    let location = adapter_with(dir.path(), "*.xml", Settings::new(), INSTANCE, true);
    let recorder = Recorder::new();
    recorder.set_fail(true);
    assert!(location.poll_once(recorder.as_ref()).await.is_err());
    assert_eq!(
        names(dir.path()),
        vec![
            ".1.xml.mbx-claimed-former-holder".to_owned(),
            "2.xml".to_owned()
        ]
    );
    assert!(recorder.batches().is_empty());
}

/// An ordered location never skips a file: it stops at the first one not settled yet,
/// where an unordered one takes the others.
#[tokio::test]
async fn an_ordered_location_stops_at_the_first_file_not_settled() {
    let dir = tempfile::tempdir().unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for i in 1..=3 {
        let p = dir.path().join(format!("{i}.xml"));
        fs::write(&p, "<m/>").unwrap();
        if i != 2 {
            fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
    }
    let settle = || settings_from([("settle", "30s")]);
    let ordered = adapter_with(dir.path(), "*.xml", settle(), INSTANCE, true);
    let recorder = Recorder::new();
    let report = ordered.poll_once(recorder.as_ref()).await.unwrap();
    assert_eq!((report.submitted, report.unsettled), (1, 1));
    assert_eq!(sources(&recorder), ["1.xml"]);
    let unordered = adapter_with(dir.path(), "*.xml", settle(), INSTANCE, false);
    let report = unordered.poll_once(recorder.as_ref()).await.unwrap();
    assert_eq!((report.submitted, report.unsettled), (1, 1));
    assert_eq!(sources(&recorder), ["1.xml", "3.xml"]);
}
