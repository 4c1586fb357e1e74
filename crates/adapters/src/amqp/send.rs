//! AMQP send: persistent, `mandatory` publishes on a channel in confirm mode, one channel
//! per broker shared by every port of the host instance.

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

/// A connection and its confirm-mode channel, per broker (and user).
type Channels = HashMap<String, (Connection, Channel)>;

#[derive(Default)]
pub struct AmqpSendAdapter {
    channels: Arc<Mutex<Channels>>,
}

impl AmqpSendAdapter {
    pub fn new() -> Self {
        Self::default()
    }
}

/// The open channel to `config`'s broker, opened (in confirm mode) when there is none or
/// the last one closed.
async fn channel(channels: &Mutex<Channels>, config: &AmqpSendConfig) -> Result<Channel, String> {
    let key = config.endpoint.key();
    let mut open = channels.lock().await;
    if let Some((conn, ch)) = open.get(&key) {
        if conn.status().connected() && ch.status().connected() {
            return Ok(ch.clone());
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
    open.insert(key, (conn, ch.clone()));
    Ok(ch)
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
        .with_message_id(format!("{}.{}", m.message_id, m.port_name).into())
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_headers(headers);
    if !m.content_type.is_empty() && m.content_type.len() <= 255 {
        p = p.with_content_type(m.content_type.clone().into());
    }
    p
}

/// Publishes one message (after its fence allows it); the confirm to await, or the outcome.
async fn publish(
    channels: &Mutex<Channels>,
    m: &OutboundMessage,
) -> Result<(PublisherConfirm, std::time::Duration), Outcome> {
    let config =
        AmqpSendConfig::parse(&m.address, &m.settings).map_err(|e| Outcome::failed(e, false))?;
    let body = m
        .body
        .to_bytes()
        .await
        .map_err(|e| Outcome::failed(e, true))?;
    let ch = channel(channels, &config)
        .await
        .map_err(|e| Outcome::failed(e, true))?;
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

/// What the broker's confirmation means for the message.
fn confirmed(m: &OutboundMessage, c: lapin::Result<Confirmation>) -> Outcome {
    let result = match c {
        Ok(Confirmation::Ack(None)) => Ok("confirmed".to_owned()),
        Ok(Confirmation::Ack(Some(returned))) | Ok(Confirmation::Nack(Some(returned))) => Err((
            format!(
                "the broker could not route the message ({} {}): no queue is bound for it",
                returned.reply_code, returned.reply_text
            ),
            true,
        )),
        Ok(Confirmation::Nack(None)) => {
            Err(("the broker refused the message (nack)".to_owned(), true))
        }
        Ok(Confirmation::NotRequested) => {
            Err(("the channel is not in confirm mode".to_owned(), true))
        }
        Err(e) => Err((format!("no confirmation: {e}"), true)),
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
            // publish the whole batch (the channel keeps its order), then await the confirms
            let mut waiting = Vec::with_capacity(batch.len());
            for m in batch {
                match publish(&channels, &m).await {
                    Ok(confirm) => waiting.push((m, confirm)),
                    Err(outcome) => {
                        if let Outcome::Failed { error, .. } = &outcome {
                            tracing::warn!(delivery_id = %m.delivery_id, port = %m.port_name, %error, "amqp send failed");
                        }
                        report(&outcomes, &m, outcome).await
                    }
                }
            }
            for (m, (confirm, timeout)) in waiting {
                let outcome = match tokio::time::timeout(timeout, confirm).await {
                    Ok(c) => confirmed(&m, c),
                    Err(_) => Outcome::failed(
                        format!(
                            "no publisher confirm within {}",
                            humantime::format_duration(timeout)
                        ),
                        true,
                    ),
                };
                report(&outcomes, &m, outcome).await;
            }
        });
    }

    async fn health(&self, address: &str, settings: &Settings) -> Health {
        let config = match AmqpSendConfig::parse(address, settings) {
            Ok(c) => c,
            Err(e) => return Health::unhealthy(e.to_string()),
        };
        match channel(&self.channels, &config).await {
            Ok(_) => Health::Healthy,
            Err(e) => Health::unhealthy(e),
        }
    }
}
