//! The send-side conformance test every registered send adapter passes
//! (docs/adapter-contract.md): each message of a batch gets exactly one outcome, and
//! `Delivered` only once the endpoint has the message.

use std::collections::HashMap;
use std::sync::Arc;

use mbx_adapters::{system, OutboundMessage, Outcome, Registry, Scheme, SendAdapter, Settings};
use tokio::sync::mpsc;

use crate::support::{file_url, message, TestServer, TEST_DEADLINE};

/// The contract, checked for one adapter: `good` messages must be delivered, `bad` ones
/// must fail; `endpoint_has` looks at the real endpoint.
async fn check_send_contract(
    adapter: Arc<dyn SendAdapter>,
    good: Vec<OutboundMessage>,
    bad: Vec<OutboundMessage>,
    endpoint_has: &(dyn Fn(&OutboundMessage) -> bool + Sync),
) {
    let mut expected: HashMap<i64, (OutboundMessage, bool)> = HashMap::new();
    for m in &good {
        expected.insert(m.delivery_id, (m.clone(), true));
    }
    for m in &bad {
        expected.insert(m.delivery_id, (m.clone(), false));
    }
    let mut batch = good;
    batch.extend(bad);
    // Interleave good and bad messages: one failure must not swallow the others' outcomes.
    batch.sort_by_key(|m| m.delivery_id);

    let (tx, mut rx) = mpsc::channel(4); // smaller than the batch: adapters must wait, not drop
    adapter.send(batch, tx);
    let mut outcomes: HashMap<i64, Outcome> = HashMap::new();
    tokio::time::timeout(TEST_DEADLINE, async {
        while let Some(report) = rx.recv().await {
            let (m, should_deliver) = expected
                .get(&report.delivery_id)
                .unwrap_or_else(|| panic!("{}: report for an unknown delivery", adapter.name()));
            assert_eq!(report.message_id, m.message_id);
            if report.outcome.is_delivered() {
                assert!(
                    *should_deliver,
                    "{}: a bad message reported delivered",
                    adapter.name()
                );
                assert!(
                    endpoint_has(m),
                    "{}: delivered before the endpoint had it",
                    adapter.name()
                );
            } else {
                assert!(
                    !*should_deliver,
                    "{}: good message failed: {:?}",
                    adapter.name(),
                    report.outcome
                );
            }
            let previous = outcomes.insert(report.delivery_id, report.outcome);
            assert!(
                previous.is_none(),
                "{}: two outcomes for one message",
                adapter.name()
            );
        }
    })
    .await
    .expect("all outcomes within the test deadline");
    assert_eq!(
        outcomes.len(),
        expected.len(),
        "{}: every message got an outcome",
        adapter.name()
    );
}

// multi-threaded: a broker's consumer collects what arrived while a check waits for it
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_registered_send_adapter_honours_the_contract() {
    let registry = Registry::new().unwrap();
    for (scheme, adapter) in registry.send_adapters() {
        // Exhaustive on purpose: a new scheme does not compile until it has a fixture here.
        match scheme {
            Scheme::Amqp | Scheme::Amqps => {
                let mut broker = crate::amqp::Broker::connect().await;
                let q = crate::amqp::unique("conformance");
                broker.queue(&q, &[]).await;
                let good: Vec<_> = (0..6)
                    .map(|i| {
                        message(
                            &crate::amqp::address(&format!("queue={q}")),
                            Settings::new(),
                            &format!("<m>{i}</m>"),
                        )
                    })
                    .collect();
                // unroutable (mandatory): no queue is bound to this key
                let bad: Vec<_> = (0..2)
                    .map(|_| {
                        let nobody = crate::amqp::unique("nobody");
                        message(
                            &crate::amqp::address(&format!(
                                "exchange=amq.direct&routing_key={nobody}"
                            )),
                            Settings::new(),
                            "bad",
                        )
                    })
                    .collect();
                let arrived = crate::amqp::collect(&broker, &q).await;
                let has = move |m: &OutboundMessage| {
                    let id = format!("{}.{}", m.message_id, m.port_name);
                    // the broker confirmed: its consumer sees the message soon after
                    let deadline = std::time::Instant::now() + TEST_DEADLINE;
                    while std::time::Instant::now() < deadline {
                        if arrived.lock().unwrap().iter().any(|(i, _)| *i == id) {
                            return true;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    false
                };
                check_send_contract(adapter, good, bad, &has).await;
                broker.cleanup().await;
            }
            Scheme::Mqtt | Scheme::Mqtts => {
                let topic = crate::mqtt::unique_topic("conformance");
                let (got, _) = crate::mqtt::subscribe(&topic).await;
                let good: Vec<_> = (0..6)
                    .map(|i| {
                        message(
                            &crate::mqtt::address(&topic),
                            Settings::new(),
                            &format!("<m>{i}</m>"),
                        )
                    })
                    .collect();
                // the topic comes from a property the message lacks: never sendable
                let bad: Vec<_> = (0..2)
                    .map(|_| {
                        let by: Settings =
                            [("topic_property".to_owned(), "Plant.Topic".to_owned())].into();
                        message(&crate::mqtt::broker_url(), by, "bad")
                    })
                    .collect();
                let has = move |m: &OutboundMessage| {
                    let body = m.body.in_memory().unwrap().to_vec();
                    // PUBACK given: the subscriber sees the message soon after
                    let deadline = std::time::Instant::now() + TEST_DEADLINE;
                    while std::time::Instant::now() < deadline {
                        if got.lock().unwrap().iter().any(|(_, p, _)| *p == body) {
                            return true;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    false
                };
                check_send_contract(adapter, good, bad, &has).await;
            }
            Scheme::Mailto => {
                let sink = crate::smtp::SmtpSink::start().await;
                let good: Vec<_> = (0..4)
                    .map(|i| {
                        message(
                            "mailto:ops@example.org",
                            sink.settings(),
                            &format!("<m>{i}</m>"),
                        )
                    })
                    .collect();
                // header injection through a property used in the subject: never sent
                let bad: Vec<_> = (0..2)
                    .map(|_| {
                        let mut s = sink.settings();
                        s.insert("subject".into(), "%Order.Id%".into());
                        let mut m = message("mailto:ops@example.org", s, "bad");
                        m.context.insert("Order.Id", "1\r\nBcc: evil@example.org");
                        m
                    })
                    .collect();
                let has = |m: &OutboundMessage| {
                    let id = format!("Message-ID: <{}.{}@mbx>", m.message_id, m.port_name);
                    sink.mails().iter().any(|mail| mail.contains(&id))
                };
                check_send_contract(adapter, good, bad, &has).await;
            }
            Scheme::File => {
                let dir = tempfile::tempdir().unwrap();
                let address = file_url(dir.path(), "%MessageID%.xml");
                let good: Vec<_> = (0..6)
                    .map(|i| message(&address, Settings::new(), &format!("<m>{i}</m>")))
                    .collect();
                let bad: Vec<_> = (0..2)
                    .map(|_| {
                        let mut m = message(
                            &file_url(dir.path(), "%SourceFileName%"),
                            Settings::new(),
                            "bad",
                        );
                        m.context.insert(system::SOURCE_FILE_NAME, "../escape");
                        m
                    })
                    .collect();
                let folder = dir.path().to_owned();
                let has = move |m: &OutboundMessage| {
                    std::fs::read(folder.join(format!("{}.xml", m.message_id)))
                        .ok()
                        .as_deref()
                        == m.body.in_memory().map(|b| &b[..])
                };
                check_send_contract(adapter, good, bad, &has).await;
            }
            Scheme::Http | Scheme::Https => {
                let server = TestServer::start().await;
                let good: Vec<_> = (0..6)
                    .map(|i| {
                        message(
                            &server.url("/status/200"),
                            Settings::new(),
                            &format!("<m>{i}</m>"),
                        )
                    })
                    .collect();
                let mut bad: Vec<_> = (0..2)
                    .map(|_| message(&server.url("/status/400"), Settings::new(), "bad"))
                    .collect();
                bad.push(message(&server.url("/status/503"), Settings::new(), "bad"));
                let has = |m: &OutboundMessage| {
                    let key = format!("{}.{}", m.message_id, m.port_name);
                    server.keys().get(&key).copied().unwrap_or(0) >= 1
                };
                check_send_contract(adapter, good, bad, &has).await;
            }
            Scheme::Null => {
                // a sink: every message is confirmed, none can fail
                let good: Vec<_> = (0..6)
                    .map(|i| message("null://discard", Settings::new(), &format!("<m>{i}</m>")))
                    .collect();
                check_send_contract(adapter, good, Vec::new(), &|_| true).await;
            }
            Scheme::Mbx => {
                panic!("mbx:// has no send adapter: the registry resolves it to SendTransport::Forward")
            }
        }
    }
}

#[tokio::test]
async fn a_null_port_with_a_delay_takes_that_long_and_refuses_a_bad_one() {
    let registry = Registry::new().unwrap();
    let adapter = registry.send_adapter("null://slow").unwrap();
    let settings: Settings = [("delay".to_owned(), "150ms".to_owned())].into();
    adapter.validate("null://slow", &settings).unwrap();
    for (key, value) in [("delay", "soon"), ("delay", "2h"), ("latency", "5ms")] {
        let bad: Settings = [(key.to_owned(), value.to_owned())].into();
        let err = adapter
            .validate("null://slow", &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{key}={value}: {err}");
    }
    let (tx, mut rx) = mpsc::channel(8);
    let started = std::time::Instant::now();
    adapter.send(
        (0..3)
            .map(|i| message("null://slow", settings.clone(), &format!("<m>{i}</m>")))
            .collect(),
        tx,
    );
    for _ in 0..3 {
        let outcome = rx.recv().await.expect("an outcome");
        assert!(matches!(outcome.outcome, mbx_adapters::Outcome::Delivered));
    }
    // an unordered batch is confirmed after one delay (lower bound only: a busy machine
    // may take longer)
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));
}

#[tokio::test]
async fn send_returns_before_the_endpoint_answers() {
    // The endpoint never answers and the timeout is 30s: `send` returning at all shows the
    // I/O runs on the adapter's own tasks.
    let server = TestServer::start().await;
    let registry = Registry::new().unwrap();
    let adapter = registry.send_adapter(&server.url("/hang")).unwrap();
    let (tx, mut rx) = mpsc::channel(1);
    adapter.send(
        vec![message(&server.url("/hang"), Settings::new(), "x")],
        tx,
    );
    assert!(rx.try_recv().is_err(), "no outcome yet");
}

#[test]
fn the_registry_is_keyed_by_scheme() {
    let registry = Registry::new().unwrap();
    assert_eq!(
        registry
            .send_adapter("file:///out/%MessageID%.xml")
            .unwrap()
            .name(),
        "FILE"
    );
    assert_eq!(
        registry
            .send_adapter("https://partner.example/in")
            .unwrap()
            .name(),
        "HTTP"
    );
    assert_eq!(
        registry.send_adapter("null://discard").unwrap().name(),
        "NULL"
    );
    assert!(registry
        .validate_receive("null://x", &Settings::new())
        .is_err());
    // forwarding: the address is checked, and it resolves to the host's forwarder, never
    // to an adapter
    match registry
        .send_transport("mbx://managers/from-broker")
        .unwrap()
    {
        mbx_adapters::SendTransport::Forward(to) => {
            assert_eq!(
                (to.link.as_str(), to.receive_port.as_str()),
                ("managers", "from-broker")
            )
        }
        other => panic!("mbx:// resolved to {other:?}"),
    }
    assert!(registry.send_adapter("mbx://managers/from-broker").is_err());
    assert!(registry
        .validate_send("mbx://managers/from-broker", &Settings::new())
        .is_ok());
    assert!(registry
        .validate_send("mbx://managers", &Settings::new())
        .is_err());
    assert!(registry
        .validate_send(
            "mbx://managers/from-broker",
            &[("timeout".to_owned(), "1s".to_owned())].into()
        )
        .is_err());
    assert!(registry
        .validate_receive("mbx://managers/from-broker", &Settings::new())
        .is_err());
    let err = registry.send_adapter("gopher://x/y").err().unwrap();
    assert!(
        err.to_string()
            .contains("no adapter for gopher:// in this build"),
        "{err}"
    );
    assert!(registry
        .validate_send("file:///out/%Nope%.xml", &Settings::new())
        .is_err());
    assert_eq!(
        registry
            .validate_receive("http:///orders", &Settings::new())
            .unwrap(),
        Scheme::Http
    );
    assert!(registry
        .validate_receive("file:///in/*.xml", &Settings::new())
        .is_ok());
    let http_receive = registry.receive_adapter(mbx_adapters::ReceiveLocationSpec {
        location_name: "x".into(),
        address: "http:///orders".into(),
        settings: Settings::new(),
        instance_id: "i-1".into(),
        ordered: false,
        two_way: false,
    });
    assert!(http_receive.is_err());
}
