//! AMQP send: persistent, `mandatory` publishes in confirm mode, over one connection per
//! broker shared by every port of the host instance, each batch on a channel of its own.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use lapin::{Confirmation, PublisherConfirm};
use tokio::sync::Mutex;

use super::config::AmqpSendConfig;
use crate::error::ConfigError;
use crate::settings::Settings;
use crate::{report, Health, OutboundMessage, Outcome, OutcomeSender, SendAdapter};

/// Per broker (and user): a connection and its idle confirm-mode channels. A batch takes
/// a channel for itself, so every message the broker returns on it (unroutable) is one of
/// the batch's: lapin hands a returned message to whichever confirm comes next, which
/// after a `multiple` ack can be another message's.
type Channels = HashMap<String, (Connection, Vec<Channel>)>;

#[derive(Default)]
pub struct AmqpSendAdapter {
    channels: Arc<Mutex<Channels>>,
}

impl AmqpSendAdapter {
    pub fn new() -> Self {
        Self::default()
    }
}

/// A channel in confirm mode to `config`'s broker for one batch: an idle one, or a new
/// one (on a new connection when the last one closed).
async fn take_channel(
    channels: &Mutex<Channels>,
    config: &AmqpSendConfig,
) -> Result<Channel, String> {
    let key = config.endpoint.key();
    let mut open = channels.lock().await;
    if let Some((conn, idle)) = open.get_mut(&key) {
        if conn.status().connected() {
            while let Some(ch) = idle.pop() {
                if ch.status().connected() {
                    return Ok(ch);
                }
            }
            let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            return Ok(ch);
        }
    }
    if let Some((conn, _)) = open.remove(&key) {
        let _ = conn.close(200, "reopening".into()).await;
    }
    let conn = super::connect(&config.endpoint, "mbx send").await?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    open.insert(key, (conn, Vec::new()));
    Ok(ch)
}

/// Gives a batch's channel back once every confirm on it has come.
async fn give_back(channels: &Mutex<Channels>, key: &str, ch: Channel) {
    if let Some((_, idle)) = channels.lock().await.get_mut(key) {
        if ch.status().connected() {
            idle.push(ch);
        }
    }
}

/// The message's basic properties: persistent, its content type, `message_id` =
/// `<MessageId>.<SendPortName>` (the same for a resend, so a receiver can drop it), the
/// `mbx-*` headers and the configured ones (a property the message lacks is omitted).
fn properties(m: &OutboundMessage, config: &AmqpSendConfig) -> BasicProperties {
    let mut headers = FieldTable::default();
    let text = |v: &str| AMQPValue::LongString(v.to_owned().into());
    headers.insert("mbx-message-id".into(), text(&m.message_id.to_string()));
    if let Some(s) = m.context.sequence() {
        headers.insert("mbx-sequence".into(), text(s));
    }
    if let Some(e) = m.context.epoch() {
        headers.insert("mbx-epoch".into(), text(e));
    }
    for (name, property) in &config.headers {
        if let Some(v) = m.context.get(property) {
            headers.insert(name.clone().into(), text(v));
        }
    }
    let mut p = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(publish_id(m).into())
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_headers(headers);
    if !m.content_type.is_empty() && m.content_type.len() <= 255 {
        p = p.with_content_type(m.content_type.clone().into());
    }
    p
}

/// This batch's channels, per broker.
type BatchChannels = HashMap<String, Channel>;

/// Publishes one message (after its fence allows it); the confirm to await, or the outcome.
async fn publish(
    channels: &Mutex<Channels>,
    mine: &mut BatchChannels,
    m: &OutboundMessage,
) -> Result<(PublisherConfirm, std::time::Duration), Outcome> {
    let config =
        AmqpSendConfig::parse(&m.address, &m.settings).map_err(|e| Outcome::failed(e, false))?;
    let body = m
        .body
        .to_bytes()
        .await
        .map_err(|e| Outcome::failed(e, true))?;
    let key = config.endpoint.key();
    let ch = match mine.get(&key) {
        Some(ch) => ch.clone(),
        None => {
            let ch = take_channel(channels, &config)
                .await
                .map_err(|e| Outcome::failed(e, true))?;
            mine.insert(key, ch.clone());
            ch
        }
    };
    if let Some(fence) = &m.fence {
        if !fence.allows() {
            return Err(Outcome::failed(
                "this instance no longer holds the ordered port's lease; not sent",
                true,
            ));
        }
    }
    let confirm = ch
        .basic_publish(
            config.target.exchange.clone().into(),
            config.target.routing_key.clone().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &body,
            properties(m, &config),
        )
        .await
        .map_err(|e| {
            Outcome::failed(
                format!("publish to {}: {e}", super::broker_of(&config.endpoint)),
                true,
            )
        })?;
    Ok((confirm, config.timeout))
}

/// The message id a publish carries, by which a returned message is known.
fn publish_id(m: &OutboundMessage) -> String {
    format!("{}.{}", m.message_id, m.port_name)
}

/// What the broker's confirmation means for the message, given every message the broker
/// returned on the batch's channels (`returned`: their ids and why).
fn confirmed(
    m: &OutboundMessage,
    c: &Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>,
    timeout: std::time::Duration,
    returned: &HashMap<String, String>,
) -> Outcome {
    let result = match c {
        _ if returned.contains_key(&publish_id(m)) => Err((
            format!(
                "the broker could not route the message ({}): no queue is bound for it",
                returned[&publish_id(m)]
            ),
            true,
        )),
        Ok(Ok(Confirmation::Ack(_))) => Ok("confirmed".to_owned()),
        Ok(Ok(Confirmation::Nack(_))) => {
            Err(("the broker refused the message (nack)".to_owned(), true))
        }
        Ok(Ok(Confirmation::NotRequested)) => {
            Err(("the channel is not in confirm mode".to_owned(), true))
        }
        Ok(Err(e)) => Err((format!("no confirmation: {e}"), true)),
        Err(_) => Err((
            format!(
                "no publisher confirm within {}",
                humantime::format_duration(timeout)
            ),
            true,
        )),
    };
    crate::outcome_of(m, "amqp", result)
}

#[async_trait]
impl SendAdapter for AmqpSendAdapter {
    fn name(&self) -> &'static str {
        "AMQP"
    }

    fn validate(&self, address: &str, settings: &Settings) -> Result<(), ConfigError> {
        AmqpSendConfig::parse(address, settings).map(|_| ())
    }

    fn send(&self, batch: Vec<OutboundMessage>, outcomes: OutcomeSender) {
        let channels = Arc::clone(&self.channels);
        tokio::spawn(async move {
            // publish the whole batch on channels of its own (each keeps its order), then
            // await the confirms
            let mut mine = BatchChannels::new();
            let mut waiting = Vec::with_capacity(batch.len());
            for m in batch {
                match publish(&channels, &mut mine, &m).await {
                    Ok(confirm) => waiting.push((m, confirm)),
                    Err(outcome) => {
                        let result = match outcome {
                            Outcome::Failed { error, retryable } => Err((error, retryable)),
                            _ => Ok(String::new()),
                        };
                        let outcome = crate::outcome_of(&m, "amqp", result);
                        report(&outcomes, &m, outcome).await
                    }
                }
            }
            let mut confirms = Vec::with_capacity(waiting.len());
            let mut returned = HashMap::new();
            let mut complete = true;
            for (m, (confirm, timeout)) in waiting {
                let c = tokio::time::timeout(timeout, confirm).await;
                match &c {
                    Ok(Ok(Confirmation::Ack(Some(r)) | Confirmation::Nack(Some(r)))) => {
                        if let Some(id) = r.delivery.properties.message_id() {
                            returned.insert(
                                id.as_str().to_owned(),
                                format!("{} {}", r.reply_code, r.reply_text),
                            );
                        }
                    }
                    Ok(Ok(_)) => {}
                    _ => complete = false,
                }
                confirms.push((m, c, timeout));
            }
            for (m, c, timeout) in confirms {
                let outcome = confirmed(&m, &c, timeout, &returned);
                report(&outcomes, &m, outcome).await;
            }
            // a channel whose confirms did not all come may still see returns: not reused
            for (key, ch) in mine {
                if complete {
                    give_back(&channels, &key, ch).await;
                } else {
                    let _ = ch.close(200, "confirms incomplete".into()).await;
                }
            }
        });
    }

    async fn health(&self, address: &str, settings: &Settings) -> Health {
        let config = match AmqpSendConfig::parse(address, settings) {
            Ok(c) => c,
            Err(e) => return Health::unhealthy(e.to_string()),
        };
        match take_channel(&self.channels, &config).await {
            Ok(ch) => {
                give_back(&self.channels, &config.endpoint.key(), ch).await;
                Health::Healthy
            }
            Err(e) => Health::unhealthy(e),
        }
    }
}
