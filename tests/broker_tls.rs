//! TLS to the brokers and the mail server, against real servers holding a certificate for
//! `localhost` from a private CA (made by `openssl`, tests/support/certs.rs): a private
//! RabbitMQ node with an AMQPS listener, a private Mosquitto with a TLS listener, aiosmtpd
//! with STARTTLS and with implicit TLS. With `--set ca_file=…` the adapters verify the
//! server against that CA and deliver; without it the certificate is not trusted and the
//! send fails (retryable), so the verification is real.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use mbx_adapters::{
    Body, InboundMessage, MessageContext, OutboundMessage, Outcome, ReceiveLocationSpec, Registry,
    Settings, SubmitError, Submitted, Submitter,
};
use mbx_e2e::brokers::amqp::Broker;
use mbx_e2e::brokers::smtp::SmtpSink;
use mbx_e2e::rabbit_node::RabbitNode;
use mbx_e2e::{certs, eventually, free_port};
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(30);

/// A folder with `ca.crt` and `server.crt`/`server.key` for `localhost` signed by it.
fn certificates() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    certs::ca(dir.path(), "ca");
    certs::server_cert(dir.path(), "ca");
    dir
}

fn with_ca(certs: &Path, mut settings: Settings) -> Settings {
    settings.insert("ca_file".into(), certs.join("ca.crt").display().to_string());
    settings
}

fn message(address: &str, settings: Settings, body: &str) -> OutboundMessage {
    let message_id = uuid::Uuid::new_v4();
    OutboundMessage {
        delivery_id: 1,
        message_id,
        port_name: "tls-out".into(),
        address: address.to_owned(),
        settings,
        body: Body::Bytes(Bytes::from(body.to_owned())),
        content_type: "text/plain".into(),
        context: MessageContext::new(),
        fence: None,
        solicit_response: false,
    }
}

/// Sends one message through the registered adapter of its scheme; its outcome.
async fn send(m: OutboundMessage) -> Outcome {
    let adapter = Registry::new().unwrap().send_adapter(&m.address).unwrap();
    let (tx, mut rx) = mpsc::channel(1);
    adapter.send(vec![m], tx);
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("an outcome within the deadline")
        .expect("one outcome")
        .outcome
}

fn assert_untrusted(outcome: &Outcome) {
    match outcome {
        Outcome::Failed { error, retryable } => {
            assert!(*retryable, "{error}");
            let e = error.to_ascii_lowercase();
            assert!(
                e.contains("certificate") || e.contains("issuer") || e.contains("tls"),
                "{error}"
            );
        }
        other => panic!("a server the CA is not given for was trusted: {other:?}"),
    }
}

/// Records what a receive adapter submits.
#[derive(Default)]
struct Collect(Mutex<Vec<InboundMessage>>);

#[async_trait]
impl Submitter for Collect {
    async fn submit(&self, batch: Vec<InboundMessage>) -> Result<Vec<Submitted>, SubmitError> {
        let n = batch.len();
        self.0.lock().unwrap().extend(batch);
        Ok(vec![Submitted::Accepted; n])
    }
    async fn refuse(&self, _: InboundMessage, reason: &str) -> Result<(), SubmitError> {
        panic!("nothing is refused here: {reason}")
    }
}

/// Runs the receive adapter of `address` until `until` holds (or the deadline passed).
async fn receive_until(
    address: &str,
    settings: Settings,
    until: impl Fn(&[InboundMessage]) -> bool,
) -> Vec<InboundMessage> {
    let adapter = Registry::new()
        .unwrap()
        .receive_adapter(ReceiveLocationSpec {
            location_name: format!("tls-in-{}", uuid::Uuid::new_v4().simple()),
            address: address.to_owned(),
            settings,
            instance_id: "i1".into(),
            ordered: false,
            two_way: false,
        })
        .unwrap();
    let collect = Arc::new(Collect::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let c = collect.clone();
    let task = tokio::spawn(async move {
        let shutdown = Box::pin(async move {
            let _ = stopped.await;
        });
        adapter.run(c.as_ref(), shutdown).await.unwrap();
    });
    eventually(DEADLINE, || async { until(&collect.0.lock().unwrap()) }).await;
    let _ = stop.send(());
    task.await.unwrap();
    let got = collect.0.lock().unwrap().clone();
    got
}

fn bodies(ms: &[InboundMessage]) -> Vec<Vec<u8>> {
    ms.iter()
        .map(|m| m.body.in_memory().unwrap().to_vec())
        .collect()
}

#[tokio::test]
async fn amqps_is_verified_against_the_given_ca() {
    let certs = certificates();
    let node = RabbitNode::start_tls(certs.path());
    let mut broker = Broker::connect_to(&node.client_url()).await;
    broker.queue("tls-q", &[]).await;
    let address = format!(
        "amqps://localhost:{}/%2f?queue=tls-q",
        node.tls_port.unwrap()
    );
    let trusted = with_ca(certs.path(), Settings::new());
    assert_eq!(
        send(message(&address, trusted.clone(), "over tls")).await,
        Outcome::Delivered
    );
    assert_untrusted(&send(message(&address, Settings::new(), "never")).await);
    let got = receive_until(&address, trusted, |m| !m.is_empty()).await;
    assert_eq!(bodies(&got), vec![b"over tls".to_vec()]);
    // a CA on a connection without TLS is refused at creation
    let plain = format!("amqp://localhost:{}/%2f?queue=tls-q", node.port);
    let e = Registry::new()
        .unwrap()
        .validate_send(&plain, &with_ca(certs.path(), Settings::new()))
        .unwrap_err();
    assert!(e.to_string().contains("TLS connection only"), "{e}");
}

/// A private Mosquitto with one TLS listener on loopback; stopped when dropped.
struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start_tls(certs: &Path) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nallow_anonymous true\npersistence false\nuser root\n",
                certs.join("ca.crt").display(),
                certs.join("server.crt").display(),
                certs.join("server.key").display()
            ),
        )
        .expect("mosquitto.conf");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (Debian package mosquitto)");
        let deadline = std::time::Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto listens within the deadline"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Mosquitto {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn mqtts_is_verified_against_the_given_ca() {
    let certs = certificates();
    let broker = Mosquitto::start_tls(certs.path());
    let address = format!("mqtts://localhost:{}/tls/orders", broker.port);
    let trusted = with_ca(certs.path(), Settings::new());
    assert_eq!(
        send(message(&address, trusted.clone(), "over tls")).await,
        Outcome::Delivered
    );
    assert_untrusted(&send(message(&address, Settings::new(), "never")).await);
    // received over TLS too: published (over TLS) until the subscription takes one
    let sender = tokio::spawn({
        let (address, trusted) = (address.clone(), trusted.clone());
        async move {
            loop {
                let _ = send(message(&address, trusted.clone(), "again")).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let got = receive_until(&address, trusted, |m| !m.is_empty()).await;
    sender.abort();
    assert!(
        bodies(&got).iter().any(|b| b == b"again"),
        "{:?}",
        bodies(&got)
    );
}

#[tokio::test]
async fn smtp_starttls_and_implicit_tls_are_verified_against_the_given_ca() {
    let certs = certificates();
    let (crt, key) = (
        certs.path().join("server.crt").display().to_string(),
        certs.path().join("server.key").display().to_string(),
    );
    for (tls, args) in [
        (
            "starttls",
            ["--tlscert", crt.as_str(), "--tlskey", key.as_str()],
        ),
        (
            "implicit",
            ["--smtpscert", crt.as_str(), "--smtpskey", key.as_str()],
        ),
    ] {
        let sink = SmtpSink::start_with(&args).await;
        let mut settings: Settings = [
            ("smtp_server".to_owned(), format!("localhost:{}", sink.port)),
            ("tls".to_owned(), tls.to_owned()),
            ("from".to_owned(), "mbx@example.org".to_owned()),
        ]
        .into();
        assert_untrusted(&send(message("mailto:ops@example.org", settings.clone(), "never")).await);
        settings = with_ca(certs.path(), settings);
        assert_eq!(
            send(message("mailto:ops@example.org", settings, "over tls")).await,
            Outcome::Delivered,
            "tls={tls}"
        );
        let mails = sink.mails();
        assert_eq!(mails.len(), 1, "tls={tls}: only the trusted send arrived");
        assert!(mails[0].contains("over tls"), "{}", mails[0]);
    }
}
