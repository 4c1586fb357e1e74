//! The AMQP adapter against the machine's real RabbitMQ (`MBX_TEST_AMQP_URL`; .ci/run
//! starts the broker when it does not answer). Every test uses queues of its own.

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use mbx_adapters::amqp::{check_single_active_consumer, AmqpReceiveConfig, OrderedQueueError};
use mbx_adapters::{
    system, Body, OutboundMessage, Outcome, ReceiveLocationSpec, Registry, Settings,
};

pub use crate::brokers::amqp::{address, collect, unique, Broker};
use crate::support::{message, run, send_all, wait_for_messages, Recorder};

fn receive_spec(address: &str, settings: Settings, ordered: bool) -> ReceiveLocationSpec {
    ReceiveLocationSpec {
        location_name: "amqp-in".into(),
        address: address.to_owned(),
        settings,
        instance_id: "i1".into(),
        ordered,
        two_way: false,
    }
}

fn text_properties(id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(id.into())
        .with_delivery_mode(2)
}

#[tokio::test]
async fn messages_are_acknowledged_only_after_the_publish_commits() {
    let mut broker = Broker::connect().await;
    let q = unique("in");
    broker.queue(&q, &[]).await;
    for i in 0..20 {
        broker
            .publish(
                &q,
                format!("m{i}").as_bytes(),
                text_properties(&format!("id-{i}")),
            )
            .await;
    }
    let registry = Registry::new().unwrap();
    let recorder = Recorder::new();
    // the MessageBox is down: nothing may be acknowledged, everything goes back
    recorder.set_fail(true);
    let adapter = registry
        .receive_adapter(receive_spec(
            &address(&format!("queue={q}")),
            Settings::new(),
            false,
        ))
        .unwrap();
    let (stop, task) = run(adapter, recorder.clone());
    recorder.wait_for_batches(2).await;
    stop.send(()).unwrap();
    task.await.unwrap();
    assert!(recorder.messages().is_empty());
    assert_eq!(
        broker.ready(&q).await,
        20,
        "every message back in the queue"
    );

    // the MessageBox is back: each message once, in order, then the queue is empty
    recorder.set_fail(false);
    let adapter = registry
        .receive_adapter(receive_spec(
            &address(&format!("queue={q}")),
            Settings::new(),
            false,
        ))
        .unwrap();
    let (stop, task) = run(adapter, recorder.clone());
    wait_for_messages(&recorder, 20).await;
    stop.send(()).unwrap();
    task.await.unwrap();
    let bodies: Vec<String> = recorder
        .messages()
        .iter()
        .map(|m| String::from_utf8(m.body.in_memory().unwrap().to_vec()).unwrap())
        .collect();
    assert_eq!(bodies, (0..20).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert_eq!(
        broker.ready(&q).await,
        0,
        "all acknowledged after the commit"
    );
    let first = &recorder.messages()[0];
    assert_eq!(
        first.source_id.as_deref(),
        Some("amqp:id-0"),
        "the producer's message id is the source id"
    );
    broker.cleanup().await;
}

#[tokio::test]
async fn delivery_fields_and_headers_are_promoted() {
    let mut broker = Broker::connect().await;
    let q = unique("props");
    broker.queue(&q, &[]).await;
    let mut headers = FieldTable::default();
    headers.insert("x-order-region".into(), AMQPValue::LongString("eu".into()));
    headers.insert("priority".into(), AMQPValue::LongInt(7));
    let props = text_properties("m-1")
        .with_correlation_id("c-9".into())
        .with_content_type("application/json".into())
        .with_headers(headers);
    broker.publish(&q, b"{}", props).await;
    let recorder = Recorder::new();
    let adapter = Registry::new()
        .unwrap()
        .receive_adapter(receive_spec(
            &address(&format!("queue={q}")),
            Settings::new(),
            false,
        ))
        .unwrap();
    let (stop, task) = run(adapter, recorder.clone());
    wait_for_messages(&recorder, 1).await;
    stop.send(()).unwrap();
    task.await.unwrap();
    let m = &recorder.messages()[0];
    assert_eq!(m.content_type, "application/json");
    assert_eq!(m.promoted.get("AMQP.RoutingKey"), Some(q.as_str()));
    assert_eq!(m.promoted.get("AMQP.Exchange"), Some(""));
    assert_eq!(m.promoted.get("AMQP.MessageId"), Some("m-1"));
    assert_eq!(m.promoted.get("AMQP.CorrelationId"), Some("c-9"));
    assert_eq!(m.promoted.get("AMQP.Header.x_order_region"), Some("eu"));
    assert_eq!(m.promoted.get("AMQP.Header.priority"), Some("7"));
    assert!(m
        .properties
        .get(system::INBOUND_TRANSPORT_LOCATION)
        .unwrap()
        .ends_with(&format!("?queue={q}")));
    broker.cleanup().await;
}

#[tokio::test]
async fn oversize_and_pipeline_failures_are_rejected_to_the_dead_letter_exchange() {
    let mut broker = Broker::connect().await;
    let q = unique("dl-in");
    let dead = unique("dl-dead");
    broker.queue_with_dead_letters(&q, &dead).await;
    broker.publish(&q, b"ok-1", text_properties("a")).await;
    broker
        .publish(&q, &[b'x'; 2000], text_properties("big"))
        .await;
    broker
        .publish(&q, b"malformed", text_properties("bad"))
        .await;
    broker.publish(&q, b"ok-2", text_properties("b")).await;
    let recorder = Recorder::new();
    recorder.set_pipeline_fails(|m| m.body.in_memory().is_some_and(|b| &b[..] == b"malformed"));
    let settings: Settings = [("max_message_size".to_owned(), "1000".to_owned())].into();
    let adapter = Registry::new()
        .unwrap()
        .receive_adapter(receive_spec(
            &address(&format!("queue={q}")),
            settings,
            false,
        ))
        .unwrap();
    let (stop, task) = run(adapter, recorder.clone());
    let dead_letters = broker.take(&dead, 2).await;
    stop.send(()).unwrap();
    task.await.unwrap();
    let mut dead_bodies: Vec<usize> = dead_letters.iter().map(|d| d.data.len()).collect();
    dead_bodies.sort();
    assert_eq!(
        dead_bodies,
        vec![9, 2000],
        "the malformed and the oversize message are dead-lettered"
    );
    let refused = recorder.refused.lock().unwrap().clone();
    assert_eq!(
        refused.len(),
        1,
        "the oversize one is recorded as a receive failure"
    );
    assert!(
        refused[0]
            .1
            .contains("over the location's --max-message-size of 1000 bytes"),
        "{}",
        refused[0].1
    );
    assert_eq!(refused[0].0.body.len(), 0, "its body is not kept");
    assert_eq!(broker.ready(&q).await, 0);
    broker.cleanup().await;
}

#[tokio::test]
async fn an_ordered_queue_must_have_a_single_active_consumer() {
    let mut broker = Broker::connect().await;
    let plain = unique("plain");
    let single = unique("single");
    broker.queue(&plain, &[]).await;
    broker
        .queue(
            &single,
            &[
                ("x-single-active-consumer", AMQPValue::Boolean(true)),
                (
                    "x-dead-letter-exchange",
                    AMQPValue::LongString("dlx".into()),
                ),
                ("x-message-ttl", AMQPValue::LongInt(60_000)),
            ],
        )
        .await;
    let config = |q: &str| {
        AmqpReceiveConfig::parse(&address(&format!("queue={q}")), &Settings::new()).unwrap()
    };
    let e = check_single_active_consumer(&config(&plain).endpoint, &plain)
        .await
        .unwrap_err();
    assert!(
        matches!(e, OrderedQueueError::NotSingleActive { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("x-single-active-consumer"), "{e}");
    check_single_active_consumer(&config(&single).endpoint, &single)
        .await
        .expect("a single-active-consumer queue with other arguments passes");
    let missing = unique("missing");
    let e = check_single_active_consumer(&config(&missing).endpoint, &missing)
        .await
        .unwrap_err();
    assert!(matches!(e, OrderedQueueError::Missing { .. }), "{e}");
    // the check changed nothing: the missing queue was not created
    assert!(broker
        .ch
        .queue_declare(
            missing.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default()
        )
        .await
        .is_err());
    broker.cleanup().await;
}

fn amqp_message(query: &str, body: &str) -> OutboundMessage {
    message(&address(query), Settings::new(), body)
}

#[tokio::test]
async fn sends_are_confirmed_and_an_unroutable_message_fails() {
    let mut broker = Broker::connect().await;
    let q = unique("out");
    broker.queue(&q, &[]).await;
    let adapter = Registry::new()
        .unwrap()
        .send_adapter(&address("queue=x"))
        .unwrap();
    let mut good: Vec<OutboundMessage> = (0..10)
        .map(|i| amqp_message(&format!("queue={q}"), &format!("b{i}")))
        .collect();
    let mut settings = Settings::new();
    settings.insert("header.x-region".into(), "Order.Region".into());
    good[0].settings = settings;
    good[0].context.insert("Order.Region", "eu");
    let unroutable = amqp_message(
        &format!("exchange=amq.direct&routing_key={}", unique("nobody")),
        "lost?",
    );
    let mut batch = good.clone();
    batch.push(unroutable.clone());
    let reports = send_all(adapter.as_ref(), batch).await;
    assert_eq!(reports.len(), 11);
    for r in &reports {
        if r.delivery_id == unroutable.delivery_id {
            match &r.outcome {
                Outcome::Failed { error, retryable } => {
                    assert!(*retryable);
                    assert!(error.contains("could not route"), "{error}");
                }
                other => panic!("unroutable reported {other:?}"),
            }
        } else {
            assert_eq!(r.outcome, Outcome::Delivered);
        }
    }
    let got = broker.take(&q, 10).await;
    let bodies: Vec<&[u8]> = got.iter().map(|d| &d.data[..]).collect();
    assert_eq!(
        bodies,
        (0..10)
            .map(|i| format!("b{i}"))
            .collect::<Vec<_>>()
            .iter()
            .map(|s| s.as_bytes())
            .collect::<Vec<_>>(),
        "in order"
    );
    let p = &got[0].properties;
    assert_eq!(p.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        p.message_id().as_ref().map(|s| s.as_str().to_owned()),
        Some(format!("{}.{}", good[0].message_id, good[0].port_name))
    );
    let headers = p.headers().as_ref().unwrap().inner();
    assert_eq!(
        headers.get("x-region"),
        Some(&AMQPValue::LongString("eu".into()))
    );
    assert!(headers.contains_key("mbx-message-id"));
    broker.cleanup().await;
}

#[tokio::test]
async fn a_broker_that_does_not_answer_is_a_retryable_failure() {
    // nothing listens on port 1 of loopback
    let adapter = Registry::new()
        .unwrap()
        .send_adapter("amqp://127.0.0.1:1/%2f?queue=q")
        .unwrap();
    let mut m = message("amqp://127.0.0.1:1/%2f?queue=q", Settings::new(), "x");
    m.body = Body::Bytes("x".into());
    let reports = send_all(adapter.as_ref(), vec![m]).await;
    assert!(
        matches!(
            &reports[0].outcome,
            Outcome::Failed {
                retryable: true,
                ..
            }
        ),
        "{:?}",
        reports[0].outcome
    );
}
