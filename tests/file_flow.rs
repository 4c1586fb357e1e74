//! Two real `mbx-host` processes against one MessageBox: files dropped in a FILE receive
//! folder are routed and written to the send folder exactly once with intact bodies, and
//! bindings created while the hosts run reach them without a restart.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mbx_e2e::{bin, database_url, Reaped};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::receive::ReceiveLocationSpec;
use mbx_messagebox::MessageBox;
use sqlx::PgPool;

const FILES: usize = 1000;

fn start_host(url: &str) -> Reaped {
    Reaped(
        Command::new(bin("mbx-host"))
            .args([
                "--host",
                "default",
                "--poll-interval",
                "200ms",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .env("MBX_DATABASE_URL", url)
            .env("MBX_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mbx-host"),
    )
}

async fn wait_for<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn files_in(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
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

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn files_flow_through_two_hosts_exactly_once(pool: PgPool) {
    let mbx = MessageBox::from_pool(pool.clone());
    mbx.init(None).await.expect("init");
    let dir = tempfile::tempdir().expect("tempdir");
    let (inbox, outbox) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir_all(&inbox).expect("in");
    std::fs::create_dir_all(&outbox).expect("out");

    let url = database_url(&pool);
    let _hosts = [start_host(&url), start_host(&url)];
    wait_for("two live instances", Duration::from_secs(30), || async {
        mbx.instance_list()
            .await
            .expect("instances")
            .iter()
            .filter(|i| i.state == "alive")
            .count()
            == 2
    })
    .await;

    // bindings created while the hosts run
    mbx.receive_port_create("orders", false)
        .await
        .expect("receive port");
    let mut loc = ReceiveLocationSpec::new(
        "orders-in",
        "orders",
        &format!("file://{}/*.xml", inbox.display()),
    );
    loc.pipeline = "xml".into();
    loc.promote.insert("Order.Id".into(), "/order/id".into());
    mbx.receive_location_create(&loc).await.expect("location");
    mbx.receive_location_set_enabled("orders-in", true)
        .await
        .expect("enable");
    mbx.send_port_create(
        &SendPortSpec::new(
            "out",
            &format!("file://{}/%MessageID%.xml", outbox.display()),
        )
        .with_filter("mbx.ReceivePortName == 'orders' and exists(Order.Id)")
        .with_state(InitialState::Started),
    )
    .await
    .expect("send port");

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

    wait_for(
        "every file in the send folder",
        Duration::from_secs(180),
        || async { files_in(&outbox, "xml").len() >= FILES && files_in(&inbox, "xml").is_empty() },
    )
    .await;
    wait_for("an empty backlog", Duration::from_secs(30), || async {
        let s = mbx.stats().await.expect("stats");
        s.spool_messages == 0 && s.suspended_total == 0
    })
    .await;

    let out = files_in(&outbox, "xml");
    assert_eq!(out.len(), FILES, "no duplicates");
    let received: BTreeSet<String> = out
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read out"))
        .collect();
    assert_eq!(
        received.len(),
        FILES,
        "bodies are distinct: no duplicate deliveries"
    );
    assert_eq!(received, sent, "every body arrived intact, none lost");
}
