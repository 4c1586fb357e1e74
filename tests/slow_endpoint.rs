//! T10: an endpoint slower than the adapter's timeout. Each attempt is counted as a
//! failure (retried, then suspended with a timeout error), and another port of the same
//! host keeps delivering meanwhile.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use mbx_e2e::{database_url, messagebox, start_host, wait_for, wait_for_alive, FAST_HOST};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::publish::{NewMessage, Publisher};
use mbx_messagebox::suspended::{Kind, Selector};
use mbx_messagebox::{Context, Value};
use sqlx::PgPool;

const FAST_MESSAGES: usize = 50;

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_slow_endpoint_times_out_as_a_failure_and_other_ports_keep_flowing(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let (slow_hits, fast_hits) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let app = {
        let (slow_hits, fast_hits) = (slow_hits.clone(), fast_hits.clone());
        Router::new()
            .route(
                "/slow",
                post(move || {
                    let hits = slow_hits.clone();
                    async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        "too late"
                    }
                }),
            )
            .route(
                "/fast",
                post(move || {
                    let hits = fast_hits.clone();
                    async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        "ok"
                    }
                }),
            )
    };
    let port = mbx_e2e::serve_on_loopback(app).await;

    let mut slow = SendPortSpec::new("slow", &format!("http://127.0.0.1:{port}/slow"))
        .with_filter("T.Kind == 'slow'")
        .with_state(InitialState::Started);
    slow.settings.insert("timeout".into(), "500ms".into());
    slow.retry_count = 1;
    slow.retry_interval_s = 1;
    mbx.send_port_create(&slow).await.expect("slow port");
    mbx.send_port_create(
        &SendPortSpec::new("fast", &format!("http://127.0.0.1:{port}/fast"))
            .with_filter("T.Kind == 'fast'")
            .with_state(InitialState::Started),
    )
    .await
    .expect("fast port");
    let _host = start_host(&database_url(&pool), FAST_HOST);
    wait_for_alive(&mbx, 1).await;

    let message = |kind: &str| {
        let mut ctx = Context::new();
        ctx.promote("T.Kind", Value::String(kind.to_owned()))
            .expect("promote");
        NewMessage::new(b"<m/>".to_vec(), "application/xml", ctx)
    };
    mbx.publish(&Publisher::default(), vec![message("slow")])
        .await
        .expect("publish slow");
    wait_for(
        "the slow endpoint holds the first attempt",
        Duration::from_secs(30),
        || async { slow_hits.load(Ordering::SeqCst) >= 1 },
    )
    .await;
    // while the slow port waits on its endpoint, the fast port delivers everything
    mbx.publish(
        &Publisher::default(),
        (0..FAST_MESSAGES).map(|_| message("fast")).collect(),
    )
    .await
    .expect("publish fast");
    wait_for(
        "the fast port delivers while the slow one is stuck",
        Duration::from_secs(30),
        || async { fast_hits.load(Ordering::SeqCst) >= FAST_MESSAGES },
    )
    .await;

    let failed = Selector {
        kind: Some(Kind::Failed),
        ..Selector::default()
    };
    wait_for(
        "the slow message is suspended after its retry",
        Duration::from_secs(30),
        || async { !mbx.suspended_list(&failed).await.expect("list").is_empty() },
    )
    .await;
    let items = mbx.suspended_list(&failed).await.expect("list");
    let detail = mbx.suspended_show(items[0].id).await.expect("show");
    assert_eq!(
        detail.attempts.len(),
        2,
        "retry count 1: two attempts, each a failure: {:?}",
        detail.attempts
    );
    assert!(
        detail
            .attempts
            .iter()
            .all(|a| a.error.contains("no response within 500ms")),
        "each attempt failed on the timeout: {:?}",
        detail.attempts
    );
    assert_eq!(slow_hits.load(Ordering::SeqCst), 2);
}
