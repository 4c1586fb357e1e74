//! The RabbitMQ peer: the local broker at `spec.amqp_url`, through lapin, with
//! the durability settings its documentation asks for when no message may be lost:
//! a durable (classic) queue, persistent messages (delivery mode 2), publisher confirms
//! and manual consumer acknowledgements.
//!
//! Method (the common one, see [`crate::peers`]):
//! - one durable queue `mbx-bench-<uuid>` on the default exchange, deleted at the end;
//! - `spec.producers` producers, each on its own connection and confirm-mode channel:
//!   publish `spec.batch` persistent messages of `spec.body_size` bytes, then await all
//!   their confirms (the broker confirms a persistent message once it is on disk), behind
//!   the closed-loop [`Window`] and the [`Pacer`]; a nack is an error;
//! - `spec.consumers` consumers, each on its own connection and channel with
//!   `basic.qos` prefetch = 2 × batch (per consumer) and `basic.consume` with manual acks.
//!   A consumer acks with `multiple = true` once per `batch` deliveries, or as soon as no
//!   delivery arrived for 1 ms while some are unacked (so a trickle under the paced run
//!   is acked promptly instead of waiting for a full batch). Prefetch 2 × batch lets the
//!   broker deliver the next batch while the previous one is being acked. A message
//!   counts as consumed when it is acked (the completion), like a pgmq delete;
//! - latency: the producer writes its wall-clock time (unix µs) into the first 8 bytes of
//!   the body just BEFORE publishing it (the timestamp must be in the body, and the
//!   confirm arrives after the broker may already have delivered it), so RabbitMQ's
//!   figure includes the publish itself (slightly pessimistic for it); the consumer
//!   measures up to the delivery's arrival (the hand-off). Recorded only after warm-up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use tokio::task::JoinSet;

use super::pgmq::drive;
use crate::database::redact as redact_url;
use crate::measure::{Latencies, Pacer, Progress, Window};
use crate::{BenchError, Measured, RunSpec};

const PEER: &str = "rabbitmq";
/// Ack what is unacked when no delivery arrived for this long.
const IDLE_ACK: Duration = Duration::from_millis(1);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(spec: &RunSpec, progress: &Progress) -> Result<Measured, BenchError> {
    let queue = format!("mbx-bench-{}", uuid::Uuid::new_v4());
    run_on_queue(spec, progress, &queue).await
}

/// [`run`] on a queue of the given name (declared, then deleted).
pub async fn run_on_queue(
    spec: &RunSpec,
    progress: &Progress,
    queue: &str,
) -> Result<Measured, BenchError> {
    let admin = connect(&spec.amqp_url, "admin").await?;
    let channel = admin
        .create_channel()
        .await
        .map_err(|e| BenchError::peer(PEER, format!("opening a channel: {e}")))?;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| BenchError::peer(PEER, format!("declaring durable queue {queue}: {e}")))?;

    let result = measure(spec, progress, queue).await;

    let deleted = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .map_err(|e| BenchError::peer(PEER, format!("deleting queue {queue}: {e}")));
    let _ = admin.close(200, "bench done".into()).await;
    let measured = result?;
    deleted?;
    Ok(measured)
}

pub(crate) async fn connect(url: &str, role: &str) -> Result<Connection, BenchError> {
    let hint = |e: &dyn std::fmt::Display| {
        BenchError::peer(
            PEER,
            format!(
                "cannot connect to RabbitMQ at {} ({role}): {e}; start it with \
                 `rabbitmq-server -detached` (Debian package rabbitmq-server) or pass --amqp-url",
                redact_url(url)
            ),
        )
    };
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(hint(&e)),
        Err(_) => Err(hint(&format!("no answer within {CONNECT_TIMEOUT:?}"))),
    }
}

async fn open_channel(conn: &Connection) -> Result<Channel, BenchError> {
    conn.create_channel()
        .await
        .map_err(|e| BenchError::peer(PEER, format!("opening a channel: {e}")))
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn measure(spec: &RunSpec, progress: &Progress, queue: &str) -> Result<Measured, BenchError> {
    measure_between(spec, progress, queue, queue).await
}

/// The method above with producers publishing to `publish_to` and consumers consuming
/// `consume_from` (the same queue for RabbitMQ alone; two queues with mbx relaying
/// between them for `--workload amqp`).
pub(crate) async fn measure_between(
    spec: &RunSpec,
    progress: &Progress,
    publish_to: &str,
    consume_from: &str,
) -> Result<Measured, BenchError> {
    let batch = spec.batch.max(1);
    let prefetch = (2 * batch).min(u16::MAX as usize) as u16;
    let body_size = spec.body_size.max(8);
    let window = Window::new(spec.window);
    let measuring = Arc::new(AtomicBool::new(false));

    // Connect everything before the clock starts.
    let producers = connect_producers(spec).await?;
    let consumers = connect_consumers(spec, prefetch, consume_from).await?;

    let start = Instant::now();
    let load = Load {
        window: window.clone(),
        batch,
        end: start + spec.warmup + spec.duration,
    };
    let mut tasks: JoinSet<Result<Latencies, BenchError>> = JoinSet::new();
    for (conn, channel) in producers {
        let rate = spec.rate.map(|r| r / spec.producers.max(1) as f64);
        let producer = produce(
            conn,
            channel,
            publish_to.to_owned(),
            load.clone(),
            rate,
            body_size,
        );
        tasks.spawn(producer);
    }
    for (conn, channel, consumer) in consumers {
        let queue = consume_from.to_owned();
        let consumer = consume(
            conn,
            channel,
            consumer,
            queue,
            load.clone(),
            measuring.clone(),
        );
        tasks.spawn(consumer);
    }

    let (throughput, latencies) =
        drive(PEER, spec, progress, start, &window, &measuring, tasks).await?;
    Ok(Measured {
        throughput: Some(throughput),
        latency: latencies.summary(),
        peak_rss_mb: None,
        notes: vec![format!(
            "RabbitMQ durable classic queue, persistent messages, publisher confirms awaited per \
             batch of {batch}; prefetch {prefetch}, manual ack multiple per {batch} or after 1 ms \
             idle; latency from the producer's clock just before publish"
        )],
        details: None,
    })
}

/// What the producers and consumers of one run share.
#[derive(Clone)]
struct Load {
    window: Arc<Window>,
    /// Messages published before their confirms are awaited; deliveries acked at once.
    batch: usize,
    /// When the run stops.
    end: Instant,
}

/// One connection and confirm-mode channel per producer.
async fn connect_producers(spec: &RunSpec) -> Result<Vec<(Connection, Channel)>, BenchError> {
    let mut producers = Vec::new();
    for _ in 0..spec.producers {
        let conn = connect(&spec.amqp_url, "producer").await?;
        let channel = open_channel(&conn).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| BenchError::peer(PEER, format!("enabling publisher confirms: {e}")))?;
        producers.push((conn, channel));
    }
    Ok(producers)
}

/// One connection and channel per consumer, with its prefetch, consuming `queue`.
async fn connect_consumers(
    spec: &RunSpec,
    prefetch: u16,
    queue: &str,
) -> Result<Vec<(Connection, Channel, Consumer)>, BenchError> {
    let mut consumers = Vec::new();
    for _ in 0..spec.consumers {
        let conn = connect(&spec.amqp_url, "consumer").await?;
        let channel = open_channel(&conn).await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| BenchError::peer(PEER, format!("setting prefetch {prefetch}: {e}")))?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| BenchError::peer(PEER, format!("consuming from {queue}: {e}")))?;
        consumers.push((conn, channel, consumer));
    }
    Ok(consumers)
}

/// A producer until the end: a batch of persistent messages, then all their confirms.
async fn produce(
    conn: Connection,
    channel: Channel,
    queue: String,
    load: Load,
    rate: Option<f64>,
    body_size: usize,
) -> Result<Latencies, BenchError> {
    let Load { window, batch, end } = load;
    let mut body = vec![b'x'; body_size];
    let mut pacer = Pacer::new(rate);
    let properties = BasicProperties::default().with_delivery_mode(2);
    let mut confirms = Vec::with_capacity(batch);
    while Instant::now() < end {
        window.admit(end).await;
        pacer.wait(batch as u64).await;
        if Instant::now() >= end {
            break;
        }
        for _ in 0..batch {
            body[..8].copy_from_slice(&unix_micros().to_le_bytes());
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties.clone(),
                )
                .await
                .map_err(|e| BenchError::peer(PEER, format!("publishing to {queue}: {e}")))?;
            confirms.push(confirm);
        }
        for confirm in confirms.drain(..) {
            let confirmation = confirm.await.map_err(|e| {
                BenchError::peer(PEER, format!("awaiting a publisher confirm: {e}"))
            })?;
            if !confirmation.is_ack() {
                return Err(BenchError::peer(
                    PEER,
                    format!("the broker nacked a message published to {queue}"),
                ));
            }
        }
        window.add_produced(batch as u64);
    }
    let _ = channel.close(200, "bench done".into()).await;
    let _ = conn.close(200, "bench done".into()).await;
    Ok(Latencies::new())
}

/// A consumer until the end: acks a batch at once, or what it holds after 1 ms idle.
async fn consume(
    conn: Connection,
    channel: Channel,
    mut consumer: Consumer,
    queue: String,
    load: Load,
    measuring: Arc<AtomicBool>,
) -> Result<Latencies, BenchError> {
    let Load { window, batch, end } = load;
    let mut latencies = Latencies::new();
    let mut unacked = Unacked {
        channel: channel.clone(),
        window,
        pending: 0,
        last_tag: 0,
    };
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let wait = if unacked.pending > 0 {
            IDLE_ACK
        } else {
            (end - now).min(Duration::from_millis(100))
        };
        match tokio::time::timeout(wait, consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                if measuring.load(Ordering::Relaxed) {
                    record_latency(&mut latencies, &delivery.data);
                }
                unacked.pending += 1;
                unacked.last_tag = delivery.delivery_tag;
                if unacked.pending >= batch as u64 {
                    unacked.ack().await?;
                }
            }
            Ok(Some(Err(e))) => {
                return Err(BenchError::peer(
                    PEER,
                    format!("consuming from {queue}: {e}"),
                ))
            }
            Ok(None) => {
                return Err(BenchError::peer(
                    PEER,
                    format!("the broker cancelled the consumer on {queue}"),
                ))
            }
            Err(_) => unacked.ack().await?,
        }
    }
    unacked.ack().await?;
    let _ = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
    let _ = channel.close(200, "bench done".into()).await;
    let _ = conn.close(200, "bench done".into()).await;
    Ok(latencies)
}

/// A consumer's deliveries not yet acked, acked together (`multiple`) and then counted.
struct Unacked {
    channel: Channel,
    window: Arc<Window>,
    pending: u64,
    last_tag: u64,
}

impl Unacked {
    async fn ack(&mut self) -> Result<(), BenchError> {
        if self.pending > 0 {
            self.channel
                .basic_ack(self.last_tag, BasicAckOptions { multiple: true })
                .await
                .map_err(|e| BenchError::peer(PEER, format!("acking deliveries: {e}")))?;
            self.window.add_consumed(self.pending);
            self.pending = 0;
        }
        Ok(())
    }
}

/// The latency of a delivery whose first 8 bytes hold the producer's clock (unix µs).
fn record_latency(latencies: &mut Latencies, data: &[u8]) {
    if data.len() >= 8 {
        let mut sent = [0u8; 8];
        sent.copy_from_slice(&data[..8]);
        let us = unix_micros() as f64 - u64::from_le_bytes(sent) as f64;
        latencies.record_ms(us / 1e3);
    }
}
