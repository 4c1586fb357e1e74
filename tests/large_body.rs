//! Issue 11 item 6: a body above 1 MiB is never held whole. A 200 MiB file
//! goes FILE → MessageBox (stored in 1 MiB chunks, read from the claimed file one chunk at
//! a time) → FILE and HTTP send ports (each reading it back one chunk at a time), through
//! a real `mbx-host`, whose peak RSS stays under 100 MB (on main it rose by 2.2× the body).
//! The 1 GiB run is the same test with `MBX_LARGE_BODY_MIB=1024` (docs/RELIABILITY.md).

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use mbx_e2e::{
    database_url, messagebox, serve_on_loopback, start_host, wait_for, wait_for_alive, FAST_HOST,
};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::receive::ReceiveLocationSpec;
use sqlx::PgPool;

const MIB: usize = 1024 * 1024;
/// Peak RSS allowed to the host while it moves the body.
const RSS_MAX_MB: f64 = 100.0;

fn size_mib() -> usize {
    std::env::var("MBX_LARGE_BODY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Block `i` of the test body: 1 MiB that differs from every other block.
fn block(i: usize) -> Vec<u8> {
    let mut b: Vec<u8> = (0..MIB).map(|j| ((i * 7 + j) % 251) as u8).collect();
    b[..8].copy_from_slice(&(i as u64).to_le_bytes());
    b
}

/// Whether `path` holds exactly the test body of `blocks` MiB, read one block at a time.
fn holds_the_body(path: &std::path::Path, blocks: usize) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; MIB];
    for i in 0..blocks {
        f.read_exact(&mut buf)
            .map_err(|e| format!("block {i}: {e}"))?;
        if buf != block(i) {
            return Err(format!("block {i} differs"));
        }
    }
    match f.read(&mut buf[..1]) {
        Ok(0) => Ok(()),
        _ => Err("longer than the body".to_owned()),
    }
}

/// What the HTTP endpoint received: (Content-Length header, bytes, the body matched).
type Seen = Arc<Mutex<Vec<(Option<u64>, usize, bool)>>>;

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_large_body_is_streamed_through_a_host_in_bounded_memory(pool: PgPool) {
    let blocks = size_mib();
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (inbox, outbox) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir_all(&inbox).expect("in");
    std::fs::create_dir_all(&outbox).expect("out");
    mbx.receive_port_create("big", false).await.expect("port");
    let mut loc = ReceiveLocationSpec::new(
        "big-in",
        "big",
        &format!("file://{}/*.bin", inbox.display()),
    );
    loc.max_message_size = (blocks as u64 + 1) * MIB as u64;
    mbx.receive_location_create(&loc).await.expect("location");
    mbx.receive_location_set_enabled("big-in", true)
        .await
        .expect("enable");
    mbx.send_port_create(
        &SendPortSpec::new(
            "to-file",
            &format!("file://{}/%MessageID%.bin", outbox.display()),
        )
        .with_filter("mbx.ReceivePortName == 'big'")
        .with_state(InitialState::Started),
    )
    .await
    .expect("file port");
    let seen: Seen = Arc::default();
    let app = {
        let seen = seen.clone();
        Router::new()
            .route(
                "/big",
                post(move |headers: HeaderMap, body: axum::body::Bytes| {
                    let seen = seen.clone();
                    async move {
                        let length = headers
                            .get("content-length")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok());
                        let matches = body.len() == blocks * MIB
                            && (0..blocks).all(|i| body[i * MIB..(i + 1) * MIB] == block(i)[..]);
                        seen.lock()
                            .expect("seen")
                            .push((length, body.len(), matches));
                        "ok"
                    }
                }),
            )
            .layer(DefaultBodyLimit::disable())
    };
    let http = serve_on_loopback(app).await;
    mbx.send_port_create(
        &SendPortSpec::new("to-http", &format!("http://127.0.0.1:{http}/big"))
            .with_filter("mbx.ReceivePortName == 'big'")
            .with_state(InitialState::Started),
    )
    .await
    .expect("http port");

    let host = start_host(&database_url(&pool), FAST_HOST);
    wait_for_alive(&mbx, 1).await;
    let rss_before = mbx_e2e::peak_rss_mb(host.pid());
    // written under a hidden name, then renamed into place
    let tmp = inbox.join(".big.bin.writing");
    {
        let mut f = std::fs::File::create(&tmp).expect("create");
        for i in 0..blocks {
            f.write_all(&block(i)).expect("write");
        }
        f.sync_all().expect("fsync");
    }
    std::fs::rename(&tmp, inbox.join("big.bin")).expect("rename");

    let deadline = Duration::from_secs(60 + blocks as u64);
    wait_for("the body delivered to both ports", deadline, || async {
        mbx.stats().await.expect("stats").spool_messages == 0
            && !mbx_e2e::files_in(&outbox, "bin").is_empty()
            && !seen.lock().expect("seen").is_empty()
    })
    .await;
    let peak = mbx_e2e::peak_rss_mb(host.pid());
    let out = mbx_e2e::files_in(&outbox, "bin");
    assert_eq!(out.len(), 1, "one file written: {out:?}");
    holds_the_body(&out[0], blocks).expect("the FILE port wrote the body intact");
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(
        seen,
        vec![(Some((blocks * MIB) as u64), blocks * MIB, true)],
        "the HTTP port sent the body intact, with its Content-Length"
    );
    assert!(
        std::fs::read_dir(&inbox)
            .expect("inbox")
            .filter_map(|e| e.ok())
            .next()
            .is_none(),
        "the received file was deleted after its publish"
    );
    eprintln!("host peak RSS: {rss_before:.1} MB before, {peak:.1} MB after moving {blocks} MiB");
    assert!(
        peak < RSS_MAX_MB,
        "the host's peak RSS was {peak:.1} MB moving a {blocks} MiB body (limit {RSS_MAX_MB} MB)"
    );
    drop(host);
}
