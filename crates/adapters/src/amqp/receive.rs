//! AMQP receive: consume a queue with a prefetch and manual acks; acknowledge a batch only
//! after its publish committed.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Acker;
use mbx_vocabulary::retry::Backoff;

use super::config::AmqpReceiveConfig;
use crate::error::{ConfigError, ReceiveError};
use crate::{
    system, Body, Health, InboundMessage, MessageContext, ReceiveAdapter, ReceiveLocationSpec,
    ShutdownSignal, Submitted, Submitter,
};

pub struct AmqpReceiveAdapter {
    spec: ReceiveLocationSpec,
    config: AmqpReceiveConfig,
}

impl AmqpReceiveAdapter {
    pub fn new(spec: ReceiveLocationSpec) -> Result<Self, ConfigError> {
        let config = AmqpReceiveConfig::parse(&spec.address, &spec.settings)?;
        Ok(Self { spec, config })
    }

    /// The address as it is recorded on each message (no user).
    fn location(&self) -> String {
        format!(
            "{}?queue={}",
            super::broker_of(&self.config.endpoint),
            self.config.queue
        )
    }
}

/// Why a consuming session ended.
enum Ended {
    Shutdown,
    Lost(String),
}

/// A property name part from a header name: letters, digits and `_` only.
fn name_part(header: &str) -> Option<String> {
    let mut s: String = header
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.is_empty() {
        return None;
    }
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    Some(s)
}

fn value_text(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok()?,
        AMQPValue::Timestamp(t) => t.to_string(),
        _ => return None,
    })
}

impl AmqpReceiveAdapter {
    /// The message as the pipeline gets it: the body, and the delivery's fields and
    /// headers promoted as `AMQP.*` (headers as `AMQP.Header.<name>`, other characters
    /// than letters, digits and `_` written `_`).
    fn inbound(&self, d: &Delivery, body: Bytes) -> InboundMessage {
        let p = &d.properties;
        let mut promoted = MessageContext::new()
            .with("AMQP.Exchange", d.exchange.as_str())
            .with("AMQP.RoutingKey", d.routing_key.as_str())
            .with("AMQP.Redelivered", d.redelivered.to_string());
        let fields = [
            ("AMQP.MessageId", p.message_id()),
            ("AMQP.CorrelationId", p.correlation_id()),
            ("AMQP.ReplyTo", p.reply_to()),
            ("AMQP.Type", p.kind()),
            ("AMQP.AppId", p.app_id()),
            ("AMQP.UserId", p.user_id()),
        ];
        for (name, value) in fields {
            if let Some(v) = value {
                promoted.insert(name, v.as_str());
            }
        }
        if let Some(headers) = p.headers() {
            for (k, v) in headers.inner() {
                if let (Some(part), Some(text)) = (name_part(k.as_str()), value_text(v)) {
                    if text.len() <= crate::PROMOTED_VALUE_MAX_BYTES {
                        promoted.insert(format!("AMQP.Header.{part}"), text);
                    }
                }
            }
        }
        InboundMessage {
            body: Body::Bytes(body),
            content_type: p
                .content_type()
                .as_ref()
                .map(|c| c.as_str().to_owned())
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
            properties: MessageContext::new()
                .with(system::INBOUND_TRANSPORT_LOCATION, self.location()),
            promoted,
            // a redelivery after a lost ack carries the producer's message id again
            source_id: p
                .message_id()
                .as_ref()
                .map(|id| format!("amqp:{}", id.as_str())),
            source_identity: None,
            body_sha256: None,
        }
    }

    /// Connects, consumes and handles batches until the connection is lost or `shutdown`
    /// fires (only while waiting for messages: a batch being published is finished).
    async fn session(
        &self,
        submitter: &dyn Submitter,
        shutdown: &mut ShutdownSignal,
        backoff: &mut Backoff,
    ) -> Ended {
        let name = format!(
            "mbx receive {} on {}",
            self.spec.location_name, self.spec.instance_id
        );
        let conn = match super::connect(&self.config.endpoint, &name).await {
            Ok(c) => c,
            Err(e) => return Ended::Lost(e),
        };
        let ended = async {
            if self.spec.ordered {
                if let Err(e) =
                    super::check_single_active_consumer(&self.config.endpoint, &self.config.queue)
                        .await
                {
                    // the queue changed under the location (declared again without
                    // x-single-active-consumer): its order is not the queue's any more
                    let why = format!("ordered location cannot consume: {e}");
                    if !matches!(e, super::OrderedQueueError::Unreachable { .. }) {
                        submitter.problem(Some(&why)).await;
                    }
                    return Err(why);
                }
            }
            let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
            ch.basic_qos(self.config.prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            let mut consumer = ch
                .basic_consume(
                    self.config.queue.clone().into(),
                    format!("mbx-{}-{}", self.spec.location_name, self.spec.instance_id).into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| format!("cannot consume queue {:?}: {e}", self.config.queue))?;
            tracing::info!(location = %self.spec.location_name, queue = %self.config.queue, "consuming");
            submitter.problem(None).await;
            loop {
                // nothing is taken while the host admits no messages (the broker keeps
                // them, unacknowledged)
                tokio::select! {
                    _ = &mut *shutdown => return Ok(Ended::Shutdown),
                    _ = crate::admitted(submitter) => {}
                }
                let first = tokio::select! {
                    _ = &mut *shutdown => return Ok(Ended::Shutdown),
                    d = consumer.next() => d,
                };
                let first = match first {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the broker ended the consumer".to_owned()),
                };
                // the admission may have closed while this waited for a delivery: it is
                // held, unsubmitted and unacknowledged, until the host admits again
                tokio::select! {
                    _ = &mut *shutdown => return Ok(Ended::Shutdown),
                    _ = crate::admitted(submitter) => {}
                }
                // a batch is what has arrived already, up to the prefetch
                let mut batch = vec![first];
                while batch.len() < usize::from(self.config.prefetch) {
                    match consumer.next().now_or_never() {
                        Some(Some(Ok(d))) => batch.push(d),
                        _ => break,
                    }
                }
                self.handle(submitter, batch, backoff).await?;
            }
        }
        .await;
        let _ = conn.close(200, "bye".into()).await;
        match ended {
            Ok(e) => e,
            Err(why) => Ended::Lost(why),
        }
    }

    /// Publishes one batch and settles it: acked once committed, rejected (no requeue)
    /// when kept as a receive failure, requeued (after a backoff) when the publish failed.
    async fn handle(
        &self,
        submitter: &dyn Submitter,
        batch: Vec<Delivery>,
        backoff: &mut Backoff,
    ) -> Result<(), String> {
        let settle = |e: lapin::Error| format!("settling on the broker: {e}");
        // settling the batch's last message with `multiple` settles every one before it
        let Some(last) = batch.last().map(|d| d.acker.clone()) else {
            return Ok(());
        };
        let mut taken = Vec::with_capacity(batch.len());
        let mut messages = Vec::with_capacity(batch.len());
        for mut d in batch {
            let body = Bytes::from(std::mem::take(&mut d.data));
            if body.len() as u64 > self.config.max_message_size {
                let reason = format!(
                    "message of {} bytes is over the location's --max-message-size of {} bytes; rejected to the queue's dead-letter exchange",
                    body.len(),
                    self.config.max_message_size
                );
                // recorded (without its body) before it leaves the queue
                let refused = self.inbound(&d, Bytes::new());
                if let Err(e) = submitter.refuse(refused, &reason).await {
                    return self.requeue(&last, &e.to_string(), backoff).await;
                }
                d.acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await
                    .map_err(settle)?;
                continue;
            }
            messages.push(self.inbound(&d, body));
            taken.push(d);
        }
        if taken.is_empty() {
            return Ok(());
        }
        let outcomes = match submitter.submit(messages).await {
            Ok(o) => o,
            Err(e) => return self.requeue(&last, &e.to_string(), backoff).await,
        };
        backoff.reset();
        let mut last_acked = None;
        for (d, outcome) in taken.iter().zip(outcomes) {
            if outcome == Submitted::ReceiveFailure {
                d.acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await
                    .map_err(settle)?;
            } else {
                last_acked = Some(d);
            }
        }
        if let Some(d) = last_acked {
            d.acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .map_err(settle)?;
        }
        Ok(())
    }

    /// Gives the batch's unsettled messages (up to `last`) back to the queue, after a backoff
    /// (a broken MessageBox is not asked again at once).
    async fn requeue(&self, last: &Acker, why: &str, backoff: &mut Backoff) -> Result<(), String> {
        let wait = backoff.next_wait();
        tracing::warn!(location = %self.spec.location_name, error = %why, wait_ms = wait.as_millis() as u64,
                       "not published; the messages go back to the queue");
        tokio::time::sleep(wait).await;
        last.nack(BasicNackOptions {
            multiple: true,
            requeue: true,
        })
        .await
        .map_err(|e| format!("requeueing: {e}"))?;
        Ok(())
    }
}

#[async_trait]
impl ReceiveAdapter for AmqpReceiveAdapter {
    fn name(&self) -> &'static str {
        "AMQP"
    }

    async fn run(
        &self,
        submitter: &dyn Submitter,
        mut shutdown: ShutdownSignal,
    ) -> Result<(), ReceiveError> {
        let mut backoff = crate::broker::receive_backoff();
        loop {
            match self.session(submitter, &mut shutdown, &mut backoff).await {
                Ended::Shutdown => return Ok(()),
                Ended::Lost(why) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(location = %self.spec.location_name, error = %why,
                                   wait_ms = wait.as_millis() as u64, "amqp receive interrupted; reconnecting");
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    async fn health(&self) -> Health {
        match super::connect(&self.config.endpoint, "mbx health").await {
            Ok(c) => {
                let _ = c.close(200, "bye".into()).await;
                Health::Healthy
            }
            Err(e) => Health::unhealthy(e),
        }
    }
}
