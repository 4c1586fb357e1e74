//! HTTP send against a real axum server on 127.0.0.1:0.

use mbx_adapters::http::HttpSendAdapter;
use mbx_adapters::{settings_from, system, Outcome, SendAdapter, Settings};

use crate::support::{assert_failed, message, refused_address, send_one, TestServer};

#[tokio::test]
async fn ok_is_delivered_with_idempotency_key_and_content_type() {
    let server = TestServer::start().await;
    let adapter = HttpSendAdapter::new().unwrap();
    let m = message(
        &server.url("/status/200"),
        Settings::new(),
        "<Order>1</Order>",
    );
    let key = format!("{}.out-port", m.message_id);
    assert_eq!(send_one(&adapter, m).await, Outcome::Delivered);
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/status/200");
    assert_eq!(
        seen[0].headers.get("idempotency-key").unwrap(),
        key.as_str()
    );
    assert_eq!(
        seen[0].headers.get("content-type").unwrap(),
        "application/xml"
    );
    assert_eq!(&seen[0].body[..], b"<Order>1</Order>");
}

#[tokio::test]
async fn put_and_context_headers_are_sent_when_configured() {
    let server = TestServer::start().await;
    let adapter = HttpSendAdapter::new().unwrap();
    let settings = settings_from([("method", "PUT"), ("header.X-Region", "Order.Region")]);
    let mut m = message(&server.url("/status/201"), settings, "x");
    m.context.insert("Order.Region", "EU");
    m.context.insert(system::SEQUENCE, "42");
    m.context.insert(system::EPOCH, "3");
    assert_eq!(send_one(&adapter, m).await, Outcome::Delivered);
    let seen = server.seen();
    assert_eq!(seen[0].headers.get("x-region").unwrap(), "EU");
    assert_eq!(seen[0].headers.get("mbx-sequence").unwrap(), "42");
    assert_eq!(seen[0].headers.get("mbx-epoch").unwrap(), "3");
}

#[tokio::test]
async fn status_codes_are_classified() {
    let server = TestServer::start().await;
    let adapter = HttpSendAdapter::new().unwrap();
    for (code, retryable) in [
        (503, true),
        (500, true),
        (408, true),
        (429, true),
        (400, false),
        (404, false),
        (422, false),
    ] {
        let m = message(
            &server.url(&format!("/status/{code}")),
            Settings::new(),
            "x",
        );
        let error = assert_failed(&send_one(&adapter, m).await, retryable);
        assert!(error.contains(&code.to_string()), "{error}");
    }
    let m = message(&server.url("/status/302"), Settings::new(), "x");
    assert_failed(&send_one(&adapter, m).await, false);
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    let adapter = HttpSendAdapter::new().unwrap();
    let m = message(&refused_address().await, Settings::new(), "x");
    let error = assert_failed(&send_one(&adapter, m).await, true);
    assert!(error.contains("connect"), "{error}");
}

#[tokio::test]
async fn a_server_slower_than_the_timeout_is_retryable() {
    let server = TestServer::start().await;
    let adapter = HttpSendAdapter::new().unwrap();
    let m = message(
        &server.url("/hang"),
        settings_from([("timeout", "200ms")]),
        "x",
    );
    let error = assert_failed(&send_one(&adapter, m).await, true);
    assert!(error.contains("no response within 200ms"), "{error}");
    assert_eq!(server.seen().len(), 1, "the request did reach the server");
}

#[tokio::test]
async fn crlf_in_a_header_bound_value_is_refused_and_nothing_is_sent() {
    let server = TestServer::start().await;
    let adapter = HttpSendAdapter::new().unwrap();

    let mut m = message(
        &server.url("/status/200"),
        settings_from([("header.X-Region", "Order.Region")]),
        "x",
    );
    m.context.insert("Order.Region", "EU\r\nX-Injected: 1");
    let error = assert_failed(&send_one(&adapter, m).await, false);
    assert!(error.contains("x-region"), "{error}");

    let mut m = message(&server.url("/status/200"), Settings::new(), "x");
    m.port_name = "port\r\nX-Injected: 1".to_owned();
    assert_failed(&send_one(&adapter, m).await, false);

    let mut m = message(&server.url("/status/200"), Settings::new(), "x");
    m.content_type = "text/plain\nX-Injected: 1".to_owned();
    assert_failed(&send_one(&adapter, m).await, false);

    assert!(server.seen().is_empty(), "the server saw no request");
}

#[tokio::test]
async fn bad_addresses_are_not_retryable() {
    let adapter = HttpSendAdapter::new().unwrap();
    let m = message("http://", Settings::new(), "x");
    assert_failed(&send_one(&adapter, m).await, false);
    let m = message(
        "http://127.0.0.1:1/x",
        settings_from([("method", "GET")]),
        "x",
    );
    assert_failed(&send_one(&adapter, m).await, false);
}

#[tokio::test]
async fn health_connects_without_sending() {
    let server = TestServer::start().await;
    let adapter = HttpSendAdapter::new().unwrap();
    assert!(adapter
        .health(&server.url("/status/200"), &Settings::new())
        .await
        .is_healthy());
    assert!(!adapter
        .health(&refused_address().await, &Settings::new())
        .await
        .is_healthy());
    assert!(server.seen().is_empty());
}
