//! The watchdog: an instance whose delivery loop stalls (an endpoint that never answers,
//! with a send timeout longer than the stall limit) stops heartbeating, is declared dead,
//! and another instance reclaims its work.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use mbx_e2e::{database_url, start_host, wait_for};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::publish::{NewMessage, Publisher};
use mbx_messagebox::{Context, MessageBox, Value};
use sqlx::PgPool;

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_stalled_instance_is_declared_dead_and_its_work_reclaimed(pool: PgPool) {
    let mbx = MessageBox::from_pool(pool.clone());
    mbx.init(None).await.expect("init");
    // an endpoint that accepts the request and never answers
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    let app = Router::new().route(
        "/hang",
        post(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<&'static str>()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });

    let mut spec = SendPortSpec::new("slow", &format!("http://127.0.0.1:{port}/hang"))
        .with_filter("exists(Order.Id)")
        .with_state(InitialState::Started);
    spec.settings.insert("timeout".into(), "10m".into());
    mbx.send_port_create(&spec).await.expect("port");

    let url = database_url(&pool);
    let stalling = start_host(
        &url,
        &["--poll-interval", "200ms", "--watchdog-stall", "2s"],
    );
    let pid = stalling.pid() as i32;
    let mut ctx = Context::new();
    ctx.promote("Order.Id", Value::Integer(1)).expect("promote");
    mbx.publish(
        &Publisher::default(),
        vec![NewMessage::new(&b"x"[..], "text/plain", ctx)],
    )
    .await
    .expect("publish");
    wait_for(
        "the send to hang at the endpoint",
        Duration::from_secs(30),
        || async { requests.load(Ordering::SeqCst) >= 1 },
    )
    .await;

    // no heartbeat after the stall limit: dead once its heartbeat is 10 s old
    let state_of = |pid: i32| {
        let pool = pool.clone();
        async move {
            mbx_messagebox::MessageBox::from_pool(pool)
                .instance_list()
                .await
                .expect("instances")
                .into_iter()
                .find(|i| i.pid == pid)
                .map(|i| i.state)
        }
    };
    wait_for(
        "the stalled instance to be dead",
        Duration::from_secs(40),
        || async { state_of(pid).await == Some(mbx_messagebox::states::InstanceState::Dead) },
    )
    .await;

    let _survivor = start_host(&url, &["--poll-interval", "200ms"]);
    wait_for(
        "the survivor to reclaim the delivery",
        Duration::from_secs(30),
        || async {
            let reclaims: i32 = sqlx::query_scalar("SELECT reclaims FROM deliveries")
                .fetch_one(&pool)
                .await
                .expect("delivery");
            reclaims >= 1
        },
    )
    .await;
    drop(stalling);
}
