//! Load for fault tests: a steady FILE writer and the checker of a FILE → FILE run.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{bodies_in, Reaped};

/// Writes `<order><id>N</id></order>` files into a folder at a steady pace on its own
/// thread until stopped; counts what it wrote.
pub struct Writer {
    written: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// `per_tick` files every 50 ms into `inbox`.
    pub fn start(inbox: &Path, per_tick: usize) -> Writer {
        let (written, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (w, s, inbox) = (written.clone(), stop.clone(), inbox.to_path_buf());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                for _ in 0..per_tick {
                    let i = w.load(Ordering::SeqCst);
                    let tmp = inbox.join(format!(".o-{i:06}.tmp"));
                    std::fs::write(&tmp, format!("<order><id>{i}</id></order>")).expect("write");
                    std::fs::rename(&tmp, inbox.join(format!("o-{i:06}.xml"))).expect("rename");
                    w.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Writer {
            written,
            stop,
            thread: Some(thread),
        }
    }

    pub fn written(&self) -> usize {
        self.written.load(Ordering::SeqCst)
    }

    /// Stops writing; returns how many files were written.
    pub fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("writer thread");
        }
        self.written()
    }
}

impl Drop for Writer {
    /// A test that fails stops its writer too (before its folder is removed).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The checker for a FILE → FILE run of `written` orders: lost must be 0; returns the
/// number of duplicate deliveries (a file re-received after a publish whose answer was
/// lost).
pub fn check_files(outbox: &Path, written: usize) -> usize {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for body in bodies_in(outbox, "xml") {
        *seen.entry(body).or_default() += 1;
    }
    let lost: Vec<usize> = (0..written)
        .filter(|i| !seen.contains_key(&format!("<order><id>{i}</id></order>")))
        .collect();
    assert!(
        lost.is_empty(),
        "lost {} of {written}: {lost:?}",
        lost.len()
    );
    assert_eq!(seen.len(), written, "unexpected bodies in the outbox");
    seen.values().map(|n| n - 1).sum()
}

pub fn assert_running(hosts: &mut [Reaped]) {
    for h in hosts {
        assert!(
            h.0.try_wait().expect("try_wait").is_none(),
            "a host exited on a database fault"
        );
    }
}

/// Stops `writer`, waits (up to `deadline`) until every file it wrote is delivered to
/// `outbox` and `inbox` is empty, and runs [`check_files`]: returns (written, duplicates).
pub async fn drain_and_check(
    writer: Writer,
    inbox: &Path,
    outbox: &Path,
    deadline: Duration,
) -> (usize, usize) {
    let written = writer.stop();
    crate::wait_for(
        "every file delivered and the inbox empty",
        deadline,
        || async {
            crate::files_in(outbox, "xml").len() >= written
                && crate::files_in(inbox, "xml").is_empty()
        },
    )
    .await;
    (written, check_files(outbox, written))
}
