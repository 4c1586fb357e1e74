//! FILE send against a real directory.

use mbx_adapters::file::FileSendAdapter;
use mbx_adapters::{settings_from, system, Fence, Outcome, SendAdapter, Settings};

use crate::support::{assert_failed, file_url, message, names, send_all, send_one, TEST_DEADLINE};

#[tokio::test]
async fn one_file_per_message_named_by_macro_with_intact_body() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = FileSendAdapter::new();
    let m = message(
        &file_url(dir.path(), "%MessageID%.xml"),
        Settings::new(),
        "<Order>1</Order>",
    );
    let expected = format!("{}.xml", m.message_id);
    assert_eq!(send_one(&adapter, m).await, Outcome::Delivered);
    assert_eq!(
        names(dir.path()),
        vec![expected.clone()],
        "exactly the one file, no temp leftovers"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join(expected)).unwrap(),
        "<Order>1</Order>"
    );
}

#[tokio::test]
async fn source_file_name_and_datetime_macros_expand() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = FileSendAdapter::new();
    let mut m = message(
        &file_url(dir.path(), "%SourceFileName%.%datetime%.out"),
        Settings::new(),
        "x",
    );
    m.context.insert(system::SOURCE_FILE_NAME, "order-7.xml");
    assert_eq!(send_one(&adapter, m).await, Outcome::Delivered);
    let files = names(dir.path());
    assert_eq!(files.len(), 1);
    let name = &files[0];
    assert!(
        name.starts_with("order-7.xml.") && name.ends_with("Z.out"),
        "{name}"
    );
    assert!(!name.contains(':'), "no ':' in %datetime%: {name}");
}

#[tokio::test]
async fn macro_values_that_escape_the_folder_are_refused_and_nothing_is_written() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let adapter = FileSendAdapter::new();
    for bad in ["../x", "a/b", "..", "a\\b", "a\0b", "a\nb"] {
        let mut m = message(
            &file_url(&out, "%SourceFileName%"),
            Settings::new(),
            "escape",
        );
        m.context.insert(system::SOURCE_FILE_NAME, bad);
        let error = assert_failed(&send_one(&adapter, m).await, false);
        assert!(error.contains("SourceFileName"), "{error}");
    }
    assert_eq!(
        names(&out),
        Vec::<String>::new(),
        "nothing written in the folder"
    );
    assert_eq!(
        names(root.path()),
        vec!["out".to_owned()],
        "nothing written outside it"
    );
}

#[tokio::test]
async fn names_too_long_for_a_temp_name_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = message(
        &file_url(dir.path(), "%SourceFileName%"),
        Settings::new(),
        "x",
    );
    m.context.insert(system::SOURCE_FILE_NAME, "n".repeat(201));
    assert_failed(&send_one(&FileSendAdapter::new(), m).await, false);
    assert_eq!(names(dir.path()), Vec::<String>::new());
}

#[tokio::test]
async fn a_missing_source_file_name_cannot_be_sent() {
    let dir = tempfile::tempdir().unwrap();
    let m = message(
        &file_url(dir.path(), "%SourceFileName%"),
        Settings::new(),
        "x",
    );
    assert_failed(&send_one(&FileSendAdapter::new(), m).await, false);
}

#[tokio::test]
async fn a_missing_folder_is_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("not-there");
    let m = message(&file_url(&gone, "%MessageID%.xml"), Settings::new(), "x");
    let error = assert_failed(&send_one(&FileSendAdapter::new(), m).await, true);
    assert!(error.contains("not-there"), "{error}");
}

#[tokio::test]
async fn a_bad_address_or_setting_is_not_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = FileSendAdapter::new();
    let m = message(&file_url(dir.path(), "%Nope%.xml"), Settings::new(), "x");
    assert_failed(&send_one(&adapter, m).await, false);
    let m = message(
        &file_url(dir.path(), "%MessageID%.xml"),
        settings_from([("apend", "true")]),
        "x",
    );
    assert_failed(&send_one(&adapter, m).await, false);
    assert!(adapter
        .validate(&file_url(dir.path(), "%MessageID%.xml"), &Settings::new())
        .is_ok());
}

#[tokio::test]
async fn append_mode_appends_in_order_to_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = FileSendAdapter::new();
    let address = file_url(dir.path(), "orders.log");
    let append = settings_from([("append", "true")]);
    let batch = vec![
        message(&address, append.clone(), "one\n"),
        message(&address, append.clone(), "two\n"),
    ];
    let reports = send_all(&adapter, batch).await;
    assert!(
        reports.iter().all(|r| r.outcome == Outcome::Delivered),
        "{reports:?}"
    );
    let m = message(&address, append, "three\n");
    assert_eq!(send_one(&adapter, m).await, Outcome::Delivered);
    assert_eq!(names(dir.path()), vec!["orders.log".to_owned()]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("orders.log")).unwrap(),
        "one\ntwo\nthree\n"
    );
}

#[tokio::test]
async fn health_probes_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = FileSendAdapter::new();
    assert!(adapter
        .health(&file_url(dir.path(), "%MessageID%"), &Settings::new())
        .await
        .is_healthy());
    assert!(!adapter
        .health(
            &file_url(&dir.path().join("nope"), "%MessageID%"),
            &Settings::new()
        )
        .await
        .is_healthy());
    assert_eq!(
        names(dir.path()),
        Vec::<String>::new(),
        "the probe leaves nothing behind"
    );
}

#[tokio::test]
async fn stale_temp_files_of_a_dead_writer_are_swept_and_fresh_ones_kept() {
    use mbx_adapters::file::send::FILE_TEMP_STALE_S;
    use std::time::{Duration, SystemTime};
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join(".old.xml.mbx-tmp-0000");
    let fresh = dir.path().join(".new.xml.mbx-tmp-1111");
    for p in [&stale, &fresh] {
        std::fs::write(p, "partial").unwrap();
    }
    let long_ago = SystemTime::now() - Duration::from_secs(FILE_TEMP_STALE_S + 60);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    let adapter = FileSendAdapter::new();
    let m = message(
        &file_url(dir.path(), "%MessageID%.xml"),
        Settings::new(),
        "<a/>",
    );
    assert_eq!(send_one(&adapter, m).await, Outcome::Delivered);
    assert!(
        !stale.exists(),
        "a temp file older than the limit is removed"
    );
    assert!(
        fresh.exists(),
        "a temp file another writer may still be writing is kept"
    );
}

#[tokio::test]
async fn an_append_checkpoint_restores_the_file_to_its_committed_length() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = FileSendAdapter::new();
    let url = file_url(dir.path(), "log.txt");
    let append = settings_from([("append", "true")]);
    let owner = fence_allowing();
    let reports = send_all(
        &adapter,
        ["one\n", "two\n", "three\n"]
            .iter()
            .map(|b| message(&url, append.clone(), b))
            .collect(),
    )
    .await;
    let checkpoints: Vec<String> = reports
        .iter()
        .map(|r| r.checkpoint.clone().expect("append reports a checkpoint"))
        .collect();
    // a crash after "three" was written but only "two" was committed
    adapter.restore(&checkpoints[1], &owner).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("log.txt")).unwrap(),
        "one\ntwo\n"
    );
    // restoring to a later point than the file's length changes nothing
    adapter.restore(&checkpoints[2], &owner).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("log.txt")).unwrap(),
        "one\ntwo\n"
    );
    assert!(adapter.restore("garbage", &owner).await.is_err());
}

/// Appends and restores are fenced under the file's lock (issue 11 item 1): a former
/// owner whose fence no longer allows it changes nothing, and one that finds the file
/// locked (a later owner in the middle of a change) waits, then gives up once its own
/// fence ends — never truncating or appending behind the lock's holder.
#[tokio::test]
async fn appends_and_restores_are_fenced_under_the_files_lock() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let adapter = FileSendAdapter::new();
    let url = file_url(dir.path(), "log.txt");
    let append = settings_from([("append", "true")]);
    let reports = send_all(
        &adapter,
        ["one\n", "two\n"]
            .iter()
            .map(|b| message(&url, append.clone(), b))
            .collect(),
    )
    .await;
    let first = reports[0].checkpoint.clone().expect("checkpoint");
    let path = dir.path().join("log.txt");
    let read = || std::fs::read_to_string(&path).unwrap();

    // a former owner: its fence says no; it neither truncates nor appends
    let former = Fence::new(|| false);
    let err = adapter.restore(&first, &former).await.unwrap_err();
    assert!(err.contains("no longer owns"), "{err}");
    let mut late = message(&url, append.clone(), "stale\n");
    late.fence = Some(former);
    let report = send_all(&adapter, vec![late]).await.remove(0);
    assert!(
        matches!(&report.outcome, Outcome::Failed { retryable: true, error } if error.contains("no longer owns")),
        "{report:?}"
    );
    assert_eq!(read(), "one\ntwo\n", "nothing changed");

    // another owner holds the file's lock: this one waits while its fence allows it, and
    // gives up, changing nothing, once the fence ends
    let holder = std::fs::File::open(&path).unwrap();
    holder.lock().unwrap();
    let owns = Arc::new(AtomicBool::new(true));
    let fence = {
        let owns = owns.clone();
        Fence::new(move || owns.load(Ordering::SeqCst))
    };
    let waiting = {
        let (first, fence) = (first.clone(), fence.clone());
        tokio::spawn(async move { FileSendAdapter::new().restore(&first, &fence).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "it waits for the lock");
    owns.store(false, Ordering::SeqCst);
    let err = tokio::time::timeout(TEST_DEADLINE, waiting)
        .await
        .expect("gave up once its fence ended")
        .unwrap()
        .unwrap_err();
    assert!(err.contains("no longer owns"), "{err}");
    assert_eq!(read(), "one\ntwo\n");

    // the lock released, an owner whose fence allows it restores
    drop(holder);
    adapter.restore(&first, &fence_allowing()).await.unwrap();
    assert_eq!(read(), "one\n");
}

fn fence_allowing() -> Fence {
    Fence::new(|| true)
}

#[tokio::test]
async fn append_records_carry_sequence_epoch_and_length() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = FileSendAdapter::new();
    let url = file_url(dir.path(), "ordered.log");
    let settings = settings_from([("append", "true"), ("records", "true")]);
    let mut m = message(&url, settings, "hello");
    m.context.insert(system::SEQUENCE, "7");
    m.context.insert(system::EPOCH, "2");
    assert_eq!(send_one(&adapter, m).await, Outcome::Delivered);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ordered.log")).unwrap(),
        "#mbx Sequence=7 Epoch=2 Length=5\nhello"
    );
    let not_append = message(
        &file_url(dir.path(), "x.log"),
        settings_from([("records", "true")]),
        "x",
    );
    assert!(matches!(
        send_one(&adapter, not_append).await,
        Outcome::Failed {
            retryable: false,
            ..
        }
    ));
}
