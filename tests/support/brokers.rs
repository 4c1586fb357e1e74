//! Real brokers for the tests: the machine's RabbitMQ and Mosquitto (their URLs from
//! `MBX_TEST_AMQP_URL` and `MBX_TEST_MQTT_URL`, set by .cargo/config.toml or .ci/run) and
//! an SMTP server on loopback (aiosmtpd, from tests/requirements.txt). Shared by the
//! end-to-end tests and, included by path, the adapter crate's tests, so it uses only
//! lapin, rumqttc, tokio, futures-util, tempfile and uuid.

#![allow(dead_code)]

use std::time::Duration;

/// A guard against a hung test, never a stand-in for a condition.
const TEST_DEADLINE: Duration = Duration::from_secs(20);

pub mod amqp {
    use std::sync::Arc;

    use futures_util::StreamExt;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

    use super::TEST_DEADLINE;

    /// The broker the tests use, as the machine's environment gives it.
    pub fn broker_url() -> String {
        std::env::var("MBX_TEST_AMQP_URL").expect(
        "MBX_TEST_AMQP_URL is set by .cargo/config.toml or .ci/run (amqp://guest:guest@127.0.0.1:5672/%2f)",
    )
    }

    /// An mbx address on that broker: the guest user is the AMQP default, so no credentials.
    pub fn address(query: &str) -> String {
        let url = broker_url().replacen("guest:guest@", "", 1);
        format!("{url}?{query}")
    }

    /// A unique name for this test's queues.
    pub fn unique(prefix: &str) -> String {
        format!("mbx-test-{prefix}-{}", uuid::Uuid::new_v4().simple())
    }

    /// The test's own connection to the broker (declaring, publishing input, reading output).
    pub struct Broker {
        pub conn: Connection,
        pub ch: Channel,
        queues: Vec<String>,
    }

    impl Broker {
        pub async fn connect() -> Self {
            Self::connect_to(&broker_url()).await
        }

        /// The test's connection to the broker at `url` (with credentials).
        pub async fn connect_to(url: &str) -> Self {
            let conn = Connection::connect(url, ConnectionProperties::default())
                .await
                .expect("the test broker answers");
            let ch = conn.create_channel().await.unwrap();
            Self {
                conn,
                ch,
                queues: Vec::new(),
            }
        }

        /// Declares a durable queue with `args` (deleted when the test ends).
        pub async fn queue(&mut self, name: &str, args: &[(&str, AMQPValue)]) {
            let mut table = FieldTable::default();
            for (k, v) in args {
                table.insert((*k).into(), v.clone());
            }
            let options = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            self.ch
                .queue_declare(name.into(), options, table)
                .await
                .unwrap();
            self.queues.push(name.to_owned());
        }

        pub async fn publish(&self, queue: &str, body: &[u8], properties: BasicProperties) {
            self.ch
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }

        /// How many messages wait in `queue` (ready, not held by a consumer).
        pub async fn ready(&self, queue: &str) -> u32 {
            let ch = self.conn.create_channel().await.unwrap();
            let q = ch
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            let _ = ch.close(200, "".into()).await;
            q.message_count()
        }

        /// A consumer of `queue` (manual acks) on a channel of its own.
        pub async fn consume(&self, queue: &str) -> (Channel, lapin::Consumer) {
            let ch = self.conn.create_channel().await.unwrap();
            let consumer = ch
                .basic_consume(
                    queue.into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            (ch, consumer)
        }

        /// Declares `queue` dead-lettering (through the default exchange) into `dead`,
        /// declared too.
        pub async fn queue_with_dead_letters(&mut self, queue: &str, dead: &str) {
            self.queue(dead, &[]).await;
            self.queue(
                queue,
                &[
                    ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
                    (
                        "x-dead-letter-routing-key",
                        AMQPValue::LongString(dead.to_owned().into()),
                    ),
                ],
            )
            .await;
        }

        /// Takes `n` messages from `queue` (acknowledging them), in order.
        pub async fn take(&self, queue: &str, n: usize) -> Vec<lapin::message::Delivery> {
            let (ch, mut consumer) = self.consume(queue).await;
            let mut got = Vec::new();
            tokio::time::timeout(TEST_DEADLINE, async {
                while got.len() < n {
                    let d = consumer.next().await.expect("consumer open").unwrap();
                    d.ack(BasicAckOptions::default()).await.unwrap();
                    got.push(d);
                }
            })
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{n} messages in {queue} within the deadline; got {}",
                    got.len()
                )
            });
            let _ = ch.close(200, "".into()).await;
            got
        }

        pub async fn cleanup(self) {
            for q in &self.queues {
                let _ = self
                    .ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = self.conn.close(200, "".into()).await;
        }
    }

    /// What a consumer received: each message's `message_id` (empty without) and body.
    pub type Collected = Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

    /// A consumer on `queue` that records (and acknowledges) every message as it arrives.
    pub async fn collect(broker: &Broker, queue: &str) -> Collected {
        let seen: Collected = Arc::default();
        let (ch, mut consumer) = broker.consume(queue).await;
        let record = seen.clone();
        tokio::spawn(async move {
            let _ch = ch;
            while let Some(Ok(d)) = consumer.next().await {
                let id = d
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|i| i.as_str().to_owned());
                record
                    .lock()
                    .unwrap()
                    .push((id.unwrap_or_default(), d.data.clone()));
                let _ = d.ack(BasicAckOptions::default()).await;
            }
        });
        seen
    }
}

pub mod mqtt {
    use std::sync::{Arc, Mutex};

    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    use tokio::sync::{oneshot, watch};

    use super::TEST_DEADLINE;

    /// The broker, as the environment gives it (`mqtt://127.0.0.1:1883`).
    pub fn broker_url() -> String {
        std::env::var("MBX_TEST_MQTT_URL").expect(
            "MBX_TEST_MQTT_URL is set by .cargo/config.toml or .ci/run (mqtt://127.0.0.1:1883)",
        )
    }

    pub fn host_port() -> (String, u16) {
        let rest = broker_url()
            .trim_start_matches("mqtt://")
            .trim_end_matches('/')
            .to_owned();
        let (host, port) = rest.rsplit_once(':').expect("mqtt://HOST:PORT");
        (host.to_owned(), port.parse().expect("a port"))
    }

    pub fn unique_topic(prefix: &str) -> String {
        format!("mbx-test/{prefix}/{}", uuid::Uuid::new_v4().simple())
    }

    /// What a test subscriber received: (topic, payload, retain).
    pub type Received = Arc<Mutex<Vec<(String, Vec<u8>, bool)>>>;

    /// Subscribes to `filter` (QoS 1) and records what arrives; returns once subscribed.
    pub async fn subscribe(filter: &str) -> (Received, watch::Receiver<usize>) {
        let (host, port) = host_port();
        let mut o = MqttOptions::new(
            format!("test-sub-{}", uuid::Uuid::new_v4().simple()),
            host,
            port,
        );
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(o, 100);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let got: Received = Arc::new(Mutex::new(Vec::new()));
        let (count, counted) = watch::channel(0usize);
        let (subscribed, is_subscribed) = oneshot::channel();
        let record = got.clone();
        tokio::spawn(async move {
            let _client = client;
            let mut subscribed = Some(subscribed);
            while let Ok(event) = eventloop.poll().await {
                match event {
                    Event::Incoming(Packet::SubAck(_)) => {
                        if let Some(s) = subscribed.take() {
                            let _ = s.send(());
                        }
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        let mut g = record.lock().unwrap();
                        g.push((p.topic.clone(), p.payload.to_vec(), p.retain));
                        count.send_replace(g.len());
                    }
                    _ => {}
                }
            }
        });
        tokio::time::timeout(TEST_DEADLINE, is_subscribed)
            .await
            .unwrap()
            .unwrap();
        (got, counted)
    }

    /// Publishes `payloads` to `topic` with QoS 1, each confirmed by its PUBACK.
    pub async fn publish(topic: &str, payloads: &[Vec<u8>]) {
        let (host, port) = host_port();
        let mut o = MqttOptions::new(
            format!("test-pub-{}", uuid::Uuid::new_v4().simple()),
            host,
            port,
        );
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(o, 1000);
        for p in payloads {
            client
                .publish(topic, QoS::AtLeastOnce, false, p.clone())
                .await
                .unwrap();
        }
        let mut acked = 0;
        tokio::time::timeout(TEST_DEADLINE, async {
            while acked < payloads.len() {
                if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.unwrap() {
                    acked += 1;
                }
            }
        })
        .await
        .expect("every publish acknowledged");
        let _ = client.disconnect().await;
    }

    pub fn address(topic_path: &str) -> String {
        format!("{}/{topic_path}", broker_url().trim_end_matches('/'))
    }
}

pub mod smtp {
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};

    use super::TEST_DEADLINE;

    /// An SMTP server on 127.0.0.1 for one test; stopped when dropped.
    pub struct SmtpSink {
        pub port: u16,
        dir: tempfile::TempDir,
        child: Child,
    }

    impl SmtpSink {
        pub async fn start() -> Self {
            Self::start_with(&[]).await
        }

        /// [`SmtpSink::start`] with more aiosmtpd arguments (`--tlscert`/`--tlskey` for
        /// STARTTLS, `--smtpscert`/`--smtpskey` for implicit TLS).
        pub async fn start_with(args: &[&str]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new("python3")
                .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
                .args(args)
                .args(["-c", "aiosmtpd.handlers.Mailbox"])
                .arg(dir.path().join("maildir"))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("python3 -m aiosmtpd (pip install -r tests/requirements.txt)");
            let deadline = std::time::Instant::now() + TEST_DEADLINE;
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "aiosmtpd listens within the deadline"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Self { port, dir, child }
        }

        /// Every mail received so far, as text.
        pub fn mails(&self) -> Vec<String> {
            let new: PathBuf = self.dir.path().join("maildir").join("new");
            let Ok(entries) = std::fs::read_dir(new) else {
                return Vec::new();
            };
            entries
                .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .collect()
        }

        pub fn settings(&self) -> std::collections::BTreeMap<String, String> {
            [
                ("smtp_server".to_owned(), format!("127.0.0.1:{}", self.port)),
                ("tls".to_owned(), "none".to_owned()),
                ("from".to_owned(), "mbx@example.org".to_owned()),
            ]
            .into()
        }
    }

    impl Drop for SmtpSink {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
