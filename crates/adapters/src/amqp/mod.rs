//! The AMQP 0-9-1 adapter (RabbitMQ), on lapin.
//!
//! - **receive** ([`receive`]): consumes a queue with a prefetch and manual acks; a batch
//!   is acknowledged (one `multiple` ack) only after its publish committed, requeued on a
//!   failed publish with a backoff; a message over the size limit or failing the pipeline
//!   is recorded as a receive failure and rejected without requeue (to the queue's
//!   dead-letter exchange, if it has one). An `--ordered` location needs a queue declared
//!   with `x-single-active-consumer`, checked before it consumes ([`check_single_active_consumer`]).
//! - **send** ([`send`]): persistent, `mandatory` publishes on a channel in confirm mode;
//!   `Delivered` only on the broker's ack; an unroutable message (returned) or a nack is a
//!   retryable failure.

pub mod config;
pub mod receive;
pub mod send;

pub use config::{AmqpEndpoint, AmqpReceiveConfig, AmqpSendConfig};
pub use receive::AmqpReceiveAdapter;
pub use send::AmqpSendAdapter;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};

/// Why a queue cannot be consumed in order.
#[derive(Debug, thiserror::Error)]
pub enum OrderedQueueError {
    #[error("queue {queue:?} does not exist on {broker}; declare it (durable, x-single-active-consumer=true) before creating an ordered location")]
    Missing { queue: String, broker: String },
    #[error("queue {queue:?} is not declared with x-single-active-consumer=true, so a paused former consumer's messages could come back after later ones; declare the queue with that argument (rabbitmqadmin declare queue name={queue} durable=true arguments='{{\"x-single-active-consumer\":true}}')")]
    NotSingleActive { queue: String },
    #[error("cannot check queue {queue:?} on {broker}: {reason}")]
    Unreachable {
        queue: String,
        broker: String,
        reason: String,
    },
}

/// Connects to `endpoint`, reading its password now; `name` shows in the broker's
/// connection list.
pub async fn connect(endpoint: &AmqpEndpoint, name: &str) -> Result<Connection, String> {
    let uri = endpoint.uri()?;
    let properties = ConnectionProperties::default().with_connection_name(name.to_owned().into());
    let connected = match &endpoint.ca_file {
        None => Connection::connect_uri(uri, properties).await,
        Some(path) => {
            let pem = String::from_utf8(crate::broker::read_ca(path)?)
                .map_err(|_| format!("ca_file {path}: not a PEM file"))?;
            let tls = lapin::tcp::OwnedTLSConfig {
                identity: None,
                cert_chain: Some(pem),
            };
            let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
            Connection::connect_uri_with_config(uri, properties, tls, runtime).await
        }
    };
    connected.map_err(|e| format!("cannot connect to {}: {e}", broker_of(endpoint)))
}

/// The broker as logs show it (never a password).
pub fn broker_of(endpoint: &AmqpEndpoint) -> String {
    format!(
        "{}://{}:{}/{}",
        if endpoint.tls { "amqps" } else { "amqp" },
        endpoint.host,
        endpoint.port,
        endpoint.vhost
    )
}

/// Checks that `queue` exists and is declared with `x-single-active-consumer=true`,
/// changing nothing: it is declared passively, then again with that argument (the broker
/// refuses a declaration that differs from the queue's, naming the first argument that
/// differs; the queue's other arguments, as the broker names them, are declared as they are).
pub async fn check_single_active_consumer(
    endpoint: &AmqpEndpoint,
    queue: &str,
) -> Result<(), OrderedQueueError> {
    let broker = broker_of(endpoint);
    let unreachable = |reason: String| OrderedQueueError::Unreachable {
        queue: queue.to_owned(),
        broker: broker.clone(),
        reason,
    };
    let conn = connect(endpoint, "mbx ordered-queue check")
        .await
        .map_err(unreachable)?;
    let result = async {
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        if let Err(e) = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
        {
            let text = e.to_string();
            return Err(if text.contains("NOT_FOUND") || text.contains("no queue") {
                OrderedQueueError::Missing {
                    queue: queue.to_owned(),
                    broker: broker.clone(),
                }
            } else {
                unreachable(text)
            });
        }
        let mut options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let mut args = FieldTable::default();
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        // each refusal names one differing argument: at most a few rounds
        for _ in 0..12 {
            let channel = conn
                .create_channel()
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let e = match channel
                .queue_declare(queue.into(), options, args.clone())
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            };
            let Some(arg) = between(&e, "inequivalent arg '", "'") else {
                return Err(unreachable(e));
            };
            match arg {
                "x-single-active-consumer" => {
                    return Err(OrderedQueueError::NotSingleActive {
                        queue: queue.to_owned(),
                    })
                }
                "durable" => options.durable = !options.durable,
                "auto_delete" => options.auto_delete = !options.auto_delete,
                other => {
                    let Some(value) = current_value(&e) else {
                        return Err(unreachable(e));
                    };
                    args.insert(other.to_owned().into(), value);
                }
            }
        }
        Err(unreachable(
            "the broker kept refusing the declaration".into(),
        ))
    }
    .await;
    let _ = conn.close(200, "checked".into()).await;
    result
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

/// The value a refusal says the queue has: `… but current is the value 'dlx' of type 'longstr'`.
fn current_value(text: &str) -> Option<AMQPValue> {
    let value = between(text, "current is the value '", "'")?;
    let ty = between(text, "' of type '", "'")?;
    Some(match ty {
        "longstr" => AMQPValue::LongString(value.to_owned().into()),
        "long" | "signedint" | "short" | "byte" | "unsignedbyte" | "unsignedshort"
        | "unsignedint" => AMQPValue::LongLongInt(value.parse().ok()?),
        "bool" => AMQPValue::Boolean(value == "true"),
        _ => return None,
    })
}
