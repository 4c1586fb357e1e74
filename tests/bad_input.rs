//! SPEC §10, send side, through a real `mbx-host`: a dynamic address that escapes its
//! allowed folder and a promoted value with CRLF used as an HTTP header are refused —
//! suspended non-resumable with the reason — and nothing is written or sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use mbx_e2e::{database_url, messagebox, start_host, wait_for, wait_for_alive, FAST_HOST};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::publish::{NewMessage, Publisher};
use mbx_messagebox::suspended::{Kind, Selector, SuspendedItem};
use mbx_messagebox::{Context, MessageBox, Value};
use sqlx::PgPool;

async fn the_one_failed_final_item(mbx: &MessageBox) -> SuspendedItem {
    let sel = Selector {
        kind: Some(Kind::FailedFinal),
        ..Selector::default()
    };
    wait_for(
        "the message to be suspended non-resumable",
        Duration::from_secs(30),
        || async { !mbx.suspended_list(&sel).await.expect("list").is_empty() },
    )
    .await;
    let items = mbx.suspended_list(&sel).await.expect("list");
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(!items[0].resumable, "{items:?}");
    items.into_iter().next().expect("item")
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_dynamic_address_escaping_its_folder_is_refused_and_nothing_is_written(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let root = tempfile::tempdir().expect("tempdir");
    let allowed = root.path().join("partners");
    std::fs::create_dir_all(&allowed).expect("mkdir");
    let mut port = SendPortSpec::new("dyn", "file:///unused")
        .with_filter("exists(T.Id)")
        .with_state(InitialState::Started);
    port.address = None;
    port.allow_address = vec![format!("file://{}/", allowed.display())];
    mbx.send_port_create(&port).await.expect("dynamic port");
    let _host = start_host(&database_url(&pool), FAST_HOST);
    wait_for_alive(&mbx, 1).await;

    let mut ctx = Context::new();
    ctx.promote("T.Id", Value::Integer(1)).expect("promote");
    let escape = format!("file://{}/../escaped.xml", allowed.display());
    ctx.write(
        mbx_messagebox::context::system::OUTBOUND_TRANSPORT_LOCATION,
        Value::String(escape.clone()),
    )
    .expect("address");
    mbx.publish(
        &Publisher::default(),
        vec![NewMessage::new(b"<x/>".to_vec(), "application/xml", ctx)],
    )
    .await
    .expect("publish");

    let item = the_one_failed_final_item(&mbx).await;
    assert!(
        item.reason.contains("not under an allowed prefix"),
        "{}",
        item.reason
    );
    assert!(
        !root.path().join("escaped.xml").exists(),
        "nothing written outside the allowed folder"
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn crlf_in_a_promoted_value_used_as_a_header_is_rejected_and_never_sent(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let requests: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let app = {
        let requests = requests.clone();
        Router::new().route(
            "/in",
            post(move |headers: HeaderMap| {
                let requests = requests.clone();
                async move {
                    requests.lock().expect("lock").push(headers);
                    "ok"
                }
            }),
        )
    };
    let port = mbx_e2e::serve_on_loopback(app).await;
    let mut spec = SendPortSpec::new("partner", &format!("http://127.0.0.1:{port}/in"))
        .with_filter("exists(Order.Ref)")
        .with_state(InitialState::Started);
    spec.settings
        .insert("header.X-Order-Ref".into(), "Order.Ref".into());
    mbx.send_port_create(&spec).await.expect("port");
    let _host = start_host(&database_url(&pool), FAST_HOST);
    wait_for_alive(&mbx, 1).await;

    let publish = |value: &str| {
        let mut ctx = Context::new();
        ctx.promote("Order.Ref", Value::String(value.to_owned()))
            .expect("promote");
        NewMessage::new(b"<order/>".to_vec(), "application/xml", ctx)
    };
    mbx.publish(
        &Publisher::default(),
        vec![publish("A-1\r\nX-Injected: yes")],
    )
    .await
    .expect("publish bad");
    let item = the_one_failed_final_item(&mbx).await;
    assert!(
        item.reason.to_lowercase().contains("x-order-ref") && item.reason.contains("CR/LF"),
        "the reason names the header and the problem: {}",
        item.reason
    );

    // a clean value goes through, and nothing injected ever arrived
    mbx.publish(&Publisher::default(), vec![publish("A-2")])
        .await
        .expect("publish good");
    wait_for(
        "the clean message to arrive",
        Duration::from_secs(30),
        || async { !requests.lock().expect("lock").is_empty() },
    )
    .await;
    let got = requests.lock().expect("lock").clone();
    assert_eq!(got.len(), 1, "only the clean message was sent: {got:?}");
    assert_eq!(
        got[0].get("x-order-ref").map(|v| v.as_bytes()),
        Some(&b"A-2"[..])
    );
    assert!(got.iter().all(|h| h.get("x-injected").is_none()));
}
