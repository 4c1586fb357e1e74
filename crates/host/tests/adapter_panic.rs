//! T12: a send adapter that panics while sending. The message it panicked on becomes a
//! non-resumable suspended item naming the panic; the other messages of its port and of
//! another port are delivered, and the host keeps running. Real adapters have no panic
//! button, so the host runs in-process (`mbx_host::run_with_registry`) with a test adapter
//! serving `null:` addresses: it panics on bodies containing "poison" — in `send` itself
//! for "poison-in-send", on the task it spawned for that message otherwise — and confirms
//! every other message.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mbx_adapters::{
    ConfigError, Health, OutboundMessage, Outcome, OutcomeSender, Registry, Scheme, SendAdapter,
    SendReport, Settings,
};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::publish::{NewMessage, Publisher};
use mbx_messagebox::suspended::{Kind, Selector, SuspendedItem};
use mbx_messagebox::{Context, MessageBox, Value};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// (port, body) of each message the test adapter confirmed, in confirmation order.
type Delivered = Arc<Mutex<Vec<(String, String)>>>;

/// Panics on "poison" bodies (see the module doc); confirms and records the others.
struct PanickyAdapter {
    delivered: Delivered,
    /// The size of each batch handed to `send`.
    batches: Arc<Mutex<Vec<usize>>>,
}

#[async_trait]
impl SendAdapter for PanickyAdapter {
    fn name(&self) -> &'static str {
        "PANICKY"
    }

    fn validate(&self, _address: &str, _settings: &Settings) -> Result<(), ConfigError> {
        Ok(())
    }

    fn send(&self, batch: Vec<OutboundMessage>, outcomes: OutcomeSender) {
        self.batches.lock().expect("batches lock").push(batch.len());
        if let Some(m) = batch.iter().find(|m| body_of(m).contains("poison-in-send")) {
            panic!("poison pill in send, delivery {}", m.delivery_id);
        }
        for message in batch {
            let (delivered, outcomes) = (self.delivered.clone(), outcomes.clone());
            tokio::spawn(async move {
                let body = body_of(&message);
                if body.contains("poison") {
                    panic!("poison pill on a send task: {body}");
                }
                delivered
                    .lock()
                    .expect("delivered lock")
                    .push((message.port_name.clone(), body));
                let report = SendReport {
                    delivery_id: message.delivery_id,
                    message_id: message.message_id,
                    outcome: Outcome::Delivered,
                    checkpoint: None,
                };
                let _ = outcomes.send(report).await;
            });
        }
    }

    async fn health(&self, _address: &str, _settings: &Settings) -> Health {
        Health::Healthy
    }
}

fn body_of(m: &OutboundMessage) -> String {
    String::from_utf8_lossy(m.body.in_memory().expect("a small body")).into_owned()
}

/// A host instance running in-process with the panicking adapter; stopped by `stop`.
struct Host {
    task: JoinHandle<anyhow::Result<()>>,
    stop: watch::Sender<bool>,
    delivered: Delivered,
    batches: Arc<Mutex<Vec<usize>>>,
}

impl Host {
    fn start(pool: &PgPool) -> Host {
        let db = pool
            .connect_options()
            .get_database()
            .expect("test pool names its database")
            .to_owned();
        let server = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let mut config =
            mbx_host::HostConfig::new(&mbx_messagebox::url_with_database(&server, &db), "default");
        config.poll_interval = Duration::from_millis(50);
        let delivered = Delivered::default();
        let batches = Arc::new(Mutex::new(Vec::new()));
        let adapter = PanickyAdapter {
            delivered: delivered.clone(),
            batches: batches.clone(),
        };
        let registry = Registry::new()
            .expect("registry")
            .with_send_adapter(Scheme::Null, Arc::new(adapter));
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(mbx_host::run_with_registry(config, registry, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        Host {
            task,
            stop,
            delivered,
            batches,
        }
    }

    /// The bodies confirmed for `port`, in confirmation order.
    fn delivered_to(&self, port: &str) -> Vec<String> {
        self.delivered
            .lock()
            .expect("delivered lock")
            .iter()
            .filter(|(p, _)| p == port)
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// Asserts the host task is still running, then stops it and checks it stopped cleanly.
    async fn stop_running_host(self) {
        if self.task.is_finished() {
            panic!("the host task ended: {:?}", self.task.await);
        }
        self.stop.send(true).expect("stop");
        self.task
            .await
            .expect("the host task did not panic")
            .expect("the host stops cleanly");
    }
}

/// Polls `cond` every 50 ms until it holds; panics naming `what` after [`DEADLINE`].
async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn messagebox(pool: &PgPool) -> MessageBox {
    let mbx = MessageBox::from_pool(pool.clone());
    mbx.init(None).await.expect("init");
    mbx
}

/// A started port `name` on `null://name` (the test adapter) for messages with `property`.
async fn port(mbx: &MessageBox, name: &str, property: &str, ordered: bool) {
    let mut spec = SendPortSpec::new(name, &format!("null://{name}"))
        .with_filter(&format!("exists({property})"))
        .with_state(InitialState::Started);
    spec.ordered = ordered;
    mbx.send_port_create(&spec).await.expect("send port");
}

/// Publishes each body with `property` promoted to its position (1, 2, …), in one call.
async fn publish(mbx: &MessageBox, property: &str, bodies: &[&str]) {
    let messages = bodies
        .iter()
        .zip(1..)
        .map(|(body, n)| {
            let mut ctx = Context::new();
            ctx.promote(property, Value::Integer(n)).expect("promote");
            NewMessage::new(body.as_bytes().to_vec(), "text/plain", ctx)
        })
        .collect();
    mbx.publish(&Publisher::default(), messages)
        .await
        .expect("publish");
}

async fn failed_final(mbx: &MessageBox) -> Vec<SuspendedItem> {
    let sel = Selector {
        kind: Some(Kind::FailedFinal),
        ..Selector::default()
    };
    mbx.suspended_list(&sel).await.expect("suspended list")
}

async fn suspended_total(mbx: &MessageBox) -> usize {
    mbx.suspended_list(&Selector::default())
        .await
        .expect("suspended list")
        .len()
}

async fn deliveries_left(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM deliveries")
        .fetch_one(pool)
        .await
        .expect("count deliveries")
}

/// The one failed-final item whose reason contains `text`.
async fn the_poison_item(mbx: &MessageBox, text: &str) -> SuspendedItem {
    wait_for(&format!("a failed-final item naming '{text}'"), || async {
        failed_final(mbx)
            .await
            .iter()
            .any(|i| i.reason.contains(text))
    })
    .await;
    let mut items: Vec<_> = failed_final(mbx)
        .await
        .into_iter()
        .filter(|i| i.reason.contains(text))
        .collect();
    assert_eq!(items.len(), 1, "{items:?}");
    items.pop().expect("one item")
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_adapter_panic_suspends_its_message_as_poison_and_the_host_keeps_running(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    port(&mbx, "a", "A.N", false).await;
    port(&mbx, "b", "B.N", false).await;
    // published before the host starts, so the poison message shares its batch
    publish(&mbx, "A.N", &["a-1", "a-poison", "a-2"]).await;
    publish(&mbx, "B.N", &["b-1", "b-2"]).await;
    let host = Host::start(&pool);

    // a panic on the adapter's task: the message has no outcome and becomes poison
    let item = the_poison_item(&mbx, "panicked").await;
    assert_eq!(item.port.as_deref(), Some("a"));
    assert!(!item.resumable, "{item:?}");
    wait_for("the other messages of both ports", || async {
        host.delivered_to("a").len() == 2 && host.delivered_to("b").len() == 2
    })
    .await;
    let mut a = host.delivered_to("a");
    a.sort();
    assert_eq!(a, ["a-1", "a-2"]);
    let mut b = host.delivered_to("b");
    b.sort();
    assert_eq!(b, ["b-1", "b-2"]);

    // a panic in `send` itself: the reason carries the panic's message
    publish(&mbx, "A.N", &["a-poison-in-send"]).await;
    let item = the_poison_item(&mbx, "send adapter panicked: poison pill in send").await;
    assert_eq!(item.port.as_deref(), Some("a"));
    assert!(!item.resumable, "{item:?}");

    // the host still runs: messages published after both panics are delivered
    publish(&mbx, "A.N", &["a-3"]).await;
    publish(&mbx, "B.N", &["b-3"]).await;
    wait_for("messages published after the panics", || async {
        host.delivered_to("a").contains(&"a-3".to_owned())
            && host.delivered_to("b").contains(&"b-3".to_owned())
    })
    .await;
    wait_for("no delivery left claimed or pending", || async {
        deliveries_left(&pool).await == 0
    })
    .await;
    assert_eq!(
        suspended_total(&mbx).await,
        2,
        "only the two poison messages"
    );

    // poison is not resumable
    let sel = Selector {
        kind: Some(Kind::FailedFinal),
        ..Selector::default()
    };
    let report = mbx.suspended_resume(&sel).await.expect("resume");
    assert_eq!((report.resumed, report.not_resumable), (0, 2), "{report:?}");
    host.stop_running_host().await;
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_adapter_panic_on_an_ordered_port_suspends_the_message_and_the_order_goes_on(
    pool: PgPool,
) {
    let mbx = messagebox(&pool).await;
    port(&mbx, "c", "C.N", true).await;
    publish(&mbx, "C.N", &["c-1", "c-2", "c-poison", "c-4", "c-5"]).await;
    let host = Host::start(&pool);

    // an ordered port's non-retryable failure: the head is suspended failed-final and the
    // port goes on with the next message in sequence
    let item = the_poison_item(&mbx, "panicked").await;
    assert_eq!(item.port.as_deref(), Some("c"));
    assert!(!item.resumable, "{item:?}");
    wait_for("the rest of the sequence", || async {
        host.delivered_to("c").len() == 4
    })
    .await;
    assert_eq!(host.delivered_to("c"), ["c-1", "c-2", "c-4", "c-5"]);
    wait_for("no delivery left claimed or pending", || async {
        deliveries_left(&pool).await == 0
    })
    .await;
    assert_eq!(suspended_total(&mbx).await, 1, "only the poison message");
    host.stop_running_host().await;
}

/// A panic in `send` leaves the whole batch without outcomes, though only one message
/// caused it: each is sent again on its own, the innocent ones are delivered and only the
/// one that panics alone is poison.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_panic_in_send_poisons_only_the_message_that_panics_alone(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    port(&mbx, "d", "D.N", false).await;
    // published before the host starts: one claim, one batch, one `send` call
    publish(&mbx, "D.N", &["d-1", "d-poison-in-send", "d-2"]).await;
    let host = Host::start(&pool);

    let item = the_poison_item(&mbx, "send adapter panicked: poison pill in send").await;
    assert_eq!(item.port.as_deref(), Some("d"));
    assert!(!item.resumable, "{item:?}");
    wait_for("the innocent messages of the batch", || async {
        host.delivered_to("d").len() == 2
    })
    .await;
    let mut d = host.delivered_to("d");
    d.sort();
    assert_eq!(d, ["d-1", "d-2"]);
    // the panic was on a batch of three, then each was sent alone
    let batches = host.batches.lock().expect("batches lock").clone();
    assert_eq!(batches, [3, 1, 1, 1], "the batch, then each message alone");
    wait_for("no delivery left claimed or pending", || async {
        deliveries_left(&pool).await == 0
    })
    .await;
    assert_eq!(suspended_total(&mbx).await, 1, "only the poison message");
    host.stop_running_host().await;
}
