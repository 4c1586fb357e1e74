//! A host run in-process (`mbx_host::run`) serves /healthz, /readyz and /metrics, and its
//! metrics count what it delivered.

use std::time::{Duration, Instant};

use mbx_e2e::database_url;
use mbx_host::{run, HostConfig};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::publish::{NewMessage, Publisher};
use mbx_messagebox::{Context, MessageBox, Value};
use sqlx::PgPool;

async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_host_serves_health_readiness_and_metrics(pool: PgPool) {
    let mbx = MessageBox::from_pool(pool.clone());
    mbx.init(None).await.expect("init");
    let out = tempfile::tempdir().expect("tempdir");
    mbx.send_port_create(
        &SendPortSpec::new(
            "out",
            &format!("file://{}/%MessageID%.txt", out.path().display()),
        )
        .with_filter("exists(Order.Id)")
        .with_state(InitialState::Started),
    )
    .await
    .expect("port");

    let admin_port = mbx_e2e::free_port();
    let mut config = HostConfig::new(&database_url(&pool), "default");
    config.admin_listen = Some(([127, 0, 0, 1], admin_port).into());
    config.poll_interval = Duration::from_millis(100);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let host = tokio::spawn(run(config, async move {
        let _ = stop_rx.await;
    }));
    let base = format!("http://127.0.0.1:{admin_port}");
    let start = Instant::now();
    while get(&format!("{base}/healthz")).await.0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "/healthz never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&format!("{base}/readyz")).await.0, 200);

    let mut ctx = Context::new();
    ctx.promote("Order.Id", Value::Integer(7)).expect("promote");
    mbx.publish(
        &Publisher::default(),
        vec![NewMessage::new(&b"hello"[..], "text/plain", ctx)],
    )
    .await
    .expect("publish");
    let start = Instant::now();
    loop {
        let (status, text) = get(&format!("{base}/metrics")).await;
        assert_eq!(status, 200);
        if text
            .lines()
            .any(|l| l.starts_with("mbx_messages_delivered_total{port=\"out\"} 1"))
        {
            assert!(text.contains("mbx_delivery_latency_seconds"), "{text}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "delivery never counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let files: Vec<_> = std::fs::read_dir(out.path()).expect("out").collect();
    assert_eq!(files.len(), 1);

    stop_tx.send(()).expect("stop");
    host.await.expect("join").expect("host stops cleanly");
    let states: Vec<String> = sqlx::query_scalar("SELECT state FROM host_instances")
        .fetch_all(&pool)
        .await
        .expect("instances");
    assert_eq!(states, vec!["stopped".to_owned()]);
}

/// Issue 13: `/metrics` describes every metric (`# HELP`), shows a port's counters at 0
/// from the moment its loop starts (a dashboard's `rate()` has a series before the first
/// delivery) and the backlog of each port, group-wide.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn metrics_are_described_start_at_zero_and_show_each_ports_backlog(pool: PgPool) {
    let mbx = MessageBox::from_pool(pool.clone());
    mbx.init(None).await.expect("init");
    let out = tempfile::tempdir().expect("tempdir");
    let address = format!("file://{}/%MessageID%.txt", out.path().display());
    mbx.send_port_create(
        &SendPortSpec::new("idle", &address)
            .with_filter("exists(Idle.Id)")
            .with_state(InitialState::Started),
    )
    .await
    .expect("idle port");
    mbx.send_port_create(&SendPortSpec::new("held", &address).with_filter("exists(Order.Id)"))
        .await
        .expect("stopped port");
    for i in 0..3 {
        let mut ctx = Context::new();
        ctx.promote("Order.Id", Value::Integer(i)).expect("promote");
        mbx.publish(
            &Publisher::default(),
            vec![NewMessage::new(&b"x"[..], "text/plain", ctx)],
        )
        .await
        .expect("publish");
    }
    let admin_port = mbx_e2e::free_port();
    let mut config = HostConfig::new(&database_url(&pool), "default");
    config.admin_listen = Some(([127, 0, 0, 1], admin_port).into());
    config.poll_interval = Duration::from_millis(100);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let host = tokio::spawn(run(config, async move {
        let _ = stop_rx.await;
    }));
    let url = format!("http://127.0.0.1:{admin_port}/metrics");
    let expected = [
        "# HELP mbx_messages_delivered_total",
        "# HELP mbx_port_backlog",
        "mbx_messages_delivered_total{port=\"idle\"} 0",
        "mbx_delivery_failures_total{port=\"idle\"} 0",
        "mbx_deliveries_reclaimed_total 0",
        "mbx_port_backlog{port=\"held\"} 3",
        "mbx_port_backlog{port=\"idle\"} 0",
    ];
    let start = Instant::now();
    loop {
        let text = get(&url).await.1;
        if expected
            .iter()
            .all(|e| text.lines().any(|l| l.starts_with(e)))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "missing some of {expected:?} in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_tx.send(()).expect("stop");
    host.await.expect("join").expect("host stops cleanly");
}

/// Issue 13: `mbx-host --log-format json` writes one JSON object per line, and no colour
/// codes when its output is not a terminal.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn host_logs_are_json_lines_without_colour_when_asked(pool: PgPool) {
    use std::io::BufRead;
    let mbx = MessageBox::from_pool(pool.clone());
    mbx.init(None).await.expect("init");
    let mut child = std::process::Command::new(mbx_e2e::bin("mbx-host"))
        .args(["--log-format", "json", "--admin-listen", "127.0.0.1:0"])
        .env("MBX_DATABASE_URL", database_url(&pool))
        .env("MBX_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn mbx-host");
    let stdout = child.stdout.take().expect("stdout");
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let last = line.contains("host instance registered");
            lines.push(line);
            if last {
                break;
            }
        }
        lines
    });
    let lines = tokio::time::timeout(Duration::from_secs(30), lines)
        .await
        .expect("the host logs its registration")
        .expect("reader");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains("host instance registered")),
        "{lines:?}"
    );
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        assert!(!line.contains('\u{1b}'), "colour codes in: {line}");
    }
}
