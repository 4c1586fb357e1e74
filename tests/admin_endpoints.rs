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
