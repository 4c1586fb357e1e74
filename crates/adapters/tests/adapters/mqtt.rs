//! The MQTT adapter against the machine's real Mosquitto (`MBX_TEST_MQTT_URL`; .ci/run
//! starts it when it does not answer). Every test uses topics of its own.

use mbx_adapters::mqtt::receive::client_id;
use mbx_adapters::{system, Outcome, ReceiveLocationSpec, Registry, Settings};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet};

pub use crate::brokers::mqtt::{address, broker_url, host_port, publish, subscribe, unique_topic};
use crate::support::{message, run, send_all, wait_for_messages, Recorder, TEST_DEADLINE};

fn spec(location: &str, address: &str, settings: Settings) -> ReceiveLocationSpec {
    ReceiveLocationSpec {
        location_name: location.to_owned(),
        address: address.to_owned(),
        settings,
        instance_id: "i1".into(),
        ordered: false,
        two_way: false,
    }
}

/// Ends the location's persistent session (a clean connection under its client id).
async fn forget_session(location: &str) {
    let (host, port) = host_port();
    let mut o = MqttOptions::new(client_id(location), host, port);
    o.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(o, 10);
    let _ = tokio::time::timeout(TEST_DEADLINE, async {
        while let Ok(e) = eventloop.poll().await {
            if let Event::Incoming(Packet::ConnAck(_)) = e {
                break;
            }
        }
    })
    .await;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), eventloop.poll()).await;
}

#[tokio::test]
async fn messages_are_acknowledged_after_the_commit_and_kept_by_the_session_until_then() {
    let location = format!("mqtt-in-{}", uuid::Uuid::new_v4().simple());
    let topic = unique_topic("in");
    let registry = Registry::new().unwrap();
    let recorder = Recorder::new();
    // the MessageBox is down: the adapter subscribes, receives, never acknowledges
    recorder.set_fail(true);
    let (stop, task) = run(
        registry
            .receive_adapter(spec(&location, &address(&topic), Settings::new()))
            .unwrap(),
        recorder.clone(),
    );
    // subscribed (its session exists) once a first message is taken
    let payloads: Vec<Vec<u8>> = (0..10).map(|i| format!("m{i}").into_bytes()).collect();
    loop {
        publish(&topic, &payloads[..1]).await;
        if tokio::time::timeout(
            std::time::Duration::from_millis(500),
            recorder.wait_for_batches(1),
        )
        .await
        .is_ok()
        {
            break;
        }
    }
    publish(&topic, &payloads[1..]).await;
    recorder.wait_for_batches(2).await;
    stop.send(()).unwrap();
    task.await.unwrap();
    assert!(recorder.messages().is_empty());

    // the next holder (same client id) gets every unacknowledged message from the session
    recorder.set_fail(false);
    let (stop, task) = run(
        registry
            .receive_adapter(spec(&location, &address(&topic), Settings::new()))
            .unwrap(),
        recorder.clone(),
    );
    tokio::time::timeout(TEST_DEADLINE, async {
        loop {
            let mut bodies: Vec<Vec<u8>> = recorder
                .messages()
                .iter()
                .map(|m| m.body.in_memory().unwrap().to_vec())
                .collect();
            bodies.sort();
            bodies.dedup();
            if bodies.len() == 10 {
                return;
            }
            recorder
                .wait_for_batches(recorder.batches().len() + 1)
                .await;
        }
    })
    .await
    .expect("all ten messages arrive from the session");
    stop.send(()).unwrap();
    task.await.unwrap();
    let m = &recorder.messages()[0];
    assert_eq!(m.promoted.get("MQTT.Topic"), Some(topic.as_str()));
    assert!(m
        .properties
        .get(system::INBOUND_TRANSPORT_LOCATION)
        .unwrap()
        .ends_with(&topic));

    // acknowledged: a third connection of the session gets nothing more
    let before = recorder.messages().len();
    let (stop, task) = run(
        registry
            .receive_adapter(spec(&location, &address(&topic), Settings::new()))
            .unwrap(),
        recorder.clone(),
    );
    publish(&topic, &[b"last".to_vec()]).await;
    wait_for_messages(&recorder, before + 1).await;
    stop.send(()).unwrap();
    task.await.unwrap();
    let after: Vec<Vec<u8>> = recorder.messages()[before..]
        .iter()
        .map(|m| m.body.in_memory().unwrap().to_vec())
        .collect();
    assert_eq!(
        after,
        vec![b"last".to_vec()],
        "nothing acknowledged came again"
    );
    forget_session(&location).await;
}

#[tokio::test]
async fn wildcard_filters_and_oversize_messages() {
    let location = format!("mqtt-wild-{}", uuid::Uuid::new_v4().simple());
    let base = unique_topic("wild");
    let recorder = Recorder::new();
    let settings: Settings = [("max_message_size".to_owned(), "100".to_owned())].into();
    let (stop, task) = run(
        Registry::new()
            .unwrap()
            .receive_adapter(spec(
                &location,
                &address(&format!("{base}/%2B/temp")),
                settings,
            ))
            .unwrap(),
        recorder.clone(),
    );
    loop {
        publish(&format!("{base}/a/temp"), &[b"21".to_vec()]).await;
        if tokio::time::timeout(
            std::time::Duration::from_millis(500),
            recorder.wait_for_batches(1),
        )
        .await
        .is_ok()
        {
            break;
        }
    }
    publish(&format!("{base}/b/temp"), &[vec![b'x'; 500]]).await;
    tokio::time::timeout(TEST_DEADLINE, async {
        while recorder.refused.lock().unwrap().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the oversize message is recorded");
    stop.send(()).unwrap();
    task.await.unwrap();
    let refused = recorder.refused.lock().unwrap().clone();
    assert!(
        refused[0]
            .1
            .contains("over the location's --max-message-size of 100 bytes"),
        "{}",
        refused[0].1
    );
    assert_eq!(
        refused[0].0.promoted.get("MQTT.Topic"),
        Some(format!("{base}/b/temp").as_str())
    );
    forget_session(&location).await;
}

#[tokio::test]
async fn sends_are_confirmed_by_puback_and_the_topic_can_come_from_a_property() {
    let topic = unique_topic("out");
    let (got, mut counted) = subscribe(&format!("{topic}/#")).await;
    let adapter = Registry::new()
        .unwrap()
        .send_adapter(&address("x"))
        .unwrap();
    let mut batch: Vec<_> = (0..5)
        .map(|i| {
            message(
                &address(&format!("{topic}/fixed")),
                Settings::new(),
                &format!("b{i}"),
            )
        })
        .collect();
    let by_property: Settings = [("topic_property".to_owned(), "Plant.Topic".to_owned())].into();
    let mut routed = message(&broker_url(), by_property.clone(), "routed");
    routed
        .context
        .insert("Plant.Topic", format!("{topic}/line-7"));
    let mut wildcard = message(&broker_url(), by_property.clone(), "never");
    wildcard.context.insert("Plant.Topic", format!("{topic}/+"));
    let missing = message(&broker_url(), by_property, "never");
    batch.extend([routed.clone(), wildcard.clone(), missing.clone()]);
    let reports = send_all(adapter.as_ref(), batch).await;
    for r in &reports {
        if r.delivery_id == wildcard.delivery_id || r.delivery_id == missing.delivery_id {
            assert!(
                matches!(
                    &r.outcome,
                    Outcome::Failed {
                        retryable: false,
                        ..
                    }
                ),
                "{:?}",
                r.outcome
            );
        } else {
            assert_eq!(r.outcome, Outcome::Delivered);
        }
    }
    tokio::time::timeout(TEST_DEADLINE, counted.wait_for(|n| *n >= 6))
        .await
        .unwrap()
        .unwrap();
    let got = got.lock().unwrap().clone();
    let fixed: Vec<&[u8]> = got
        .iter()
        .filter(|(t, _, _)| t.ends_with("/fixed"))
        .map(|(_, p, _)| &p[..])
        .collect();
    assert_eq!(
        fixed,
        vec![&b"b0"[..], b"b1", b"b2", b"b3", b"b4"],
        "in order"
    );
    assert!(got
        .iter()
        .any(|(t, p, _)| t.ends_with("/line-7") && p == b"routed"));
    assert!(!got.iter().any(|(_, p, _)| p == b"never"));
}
