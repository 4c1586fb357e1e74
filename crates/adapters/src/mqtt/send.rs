//! MQTT send: QoS 1 publishes over one connection per broker, each confirmed by its PUBACK.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use async_trait::async_trait;
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use tokio::sync::{oneshot, Mutex};

use super::config::{check_topic_name, MqttSendConfig};
use crate::error::ConfigError;
use crate::settings::Settings;
use crate::{report, Health, OutboundMessage, Outcome, OutcomeSender, SendAdapter};

type Confirm = oneshot::Sender<Result<(), String>>;

/// Publishes waiting for their packet id (in the order they were handed to the client)
/// and for their PUBACK (by packet id).
#[derive(Default)]
struct Pending {
    unnumbered: VecDeque<Confirm>,
    unacked: HashMap<u16, Confirm>,
}

impl Pending {
    fn fail_all(&mut self, why: &str) {
        for c in self
            .unnumbered
            .drain(..)
            .chain(self.unacked.drain().map(|(_, c)| c))
        {
            let _ = c.send(Err(why.to_owned()));
        }
    }
}

/// One connection to a broker and the task that drives it.
struct Publisher {
    client: AsyncClient,
    pending: Arc<StdMutex<Pending>>,
    alive: Arc<AtomicBool>,
    /// Keeps the client's queue and `unnumbered` in the same order.
    order: Mutex<()>,
}

impl Publisher {
    fn start(config: &MqttSendConfig) -> Result<Arc<Self>, String> {
        let id = format!("mbx-send-{}", uuid::Uuid::new_v4().simple());
        let options = super::options(&config.endpoint, &id, true, 64 * 1024)?;
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let pending = Arc::new(StdMutex::new(Pending::default()));
        let alive = Arc::new(AtomicBool::new(true));
        let (p, a, broker) = (pending.clone(), alive.clone(), config.endpoint.broker());
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(c) = p.unnumbered.pop_front() {
                            p.unacked.insert(pkid, c);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(c) = p.unacked.remove(&ack.pkid) {
                            let _ = c.send(Ok(()));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // a new connection is made for the next batch; these are retried
                        a.store(false, Ordering::SeqCst);
                        let why = format!("connection to {broker} lost before the PUBACK: {e}");
                        p.lock().unwrap_or_else(|e| e.into_inner()).fail_all(&why);
                        return;
                    }
                }
            }
        });
        Ok(Arc::new(Self {
            client,
            pending,
            alive,
            order: Mutex::new(()),
        }))
    }

    async fn publish(
        &self,
        topic: String,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<oneshot::Receiver<Result<(), String>>, String> {
        let (tx, rx) = oneshot::channel();
        let _order = self.order.lock().await;
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unnumbered
            .push_back(tx);
        if let Err(e) = self
            .client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
        {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unnumbered
                .pop_back();
            return Err(format!("publish: {e}"));
        }
        Ok(rx)
    }
}

#[derive(Default)]
pub struct MqttSendAdapter {
    publishers: Arc<Mutex<HashMap<String, Arc<Publisher>>>>,
}

impl MqttSendAdapter {
    pub fn new() -> Self {
        Self::default()
    }
}

async fn publisher(
    publishers: &Mutex<HashMap<String, Arc<Publisher>>>,
    config: &MqttSendConfig,
) -> Result<Arc<Publisher>, String> {
    let key = config.endpoint.key();
    let mut open = publishers.lock().await;
    if let Some(p) = open.get(&key) {
        if p.alive.load(Ordering::SeqCst) {
            return Ok(p.clone());
        }
    }
    let p = Publisher::start(config)?;
    open.insert(key, p.clone());
    Ok(p)
}

/// Hands one message to the broker's connection: the PUBACK to await, or the outcome.
async fn publish(
    publishers: &Mutex<HashMap<String, Arc<Publisher>>>,
    m: &OutboundMessage,
) -> Result<(oneshot::Receiver<Result<(), String>>, std::time::Duration), Outcome> {
    let config =
        MqttSendConfig::parse(&m.address, &m.settings).map_err(|e| Outcome::failed(e, false))?;
    let topic = match &config.topic_property {
        None => config.topic.clone(),
        Some(p) => {
            let t = m.context.get(p).ok_or_else(|| {
                Outcome::failed(
                    format!("the message has no {p} to take its topic from"),
                    false,
                )
            })?;
            check_topic_name(t).map_err(|e| Outcome::failed(format!("{p}: {e}"), false))?;
            t.to_owned()
        }
    };
    let body = m
        .body
        .to_bytes()
        .await
        .map_err(|e| Outcome::failed(e, true))?;
    let publisher = publisher(publishers, &config)
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
    let rx = publisher
        .publish(topic, config.retain, body.to_vec())
        .await
        .map_err(|e| Outcome::failed(e, true))?;
    Ok((rx, config.timeout))
}

#[async_trait]
impl SendAdapter for MqttSendAdapter {
    fn name(&self) -> &'static str {
        "MQTT"
    }

    fn validate(&self, address: &str, settings: &Settings) -> Result<(), ConfigError> {
        MqttSendConfig::parse(address, settings).map(|_| ())
    }

    fn send(&self, batch: Vec<OutboundMessage>, outcomes: OutcomeSender) {
        let publishers = Arc::clone(&self.publishers);
        tokio::spawn(async move {
            let mut waiting = Vec::with_capacity(batch.len());
            for m in batch {
                match publish(&publishers, &m).await {
                    Ok(w) => waiting.push((m, w)),
                    Err(outcome) => {
                        let result: Result<String, (String, bool)> = match outcome {
                            Outcome::Failed { error, retryable } => Err((error, retryable)),
                            _ => Ok(String::new()),
                        };
                        let outcome = crate::outcome_of(&m, "mqtt", result);
                        report(&outcomes, &m, outcome).await
                    }
                }
            }
            for (m, (rx, timeout)) in waiting {
                let result = match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(Ok(()))) => Ok("PUBACK".to_owned()),
                    Ok(Ok(Err(e))) => Err((e, true)),
                    Ok(Err(_)) => Err(("the connection ended before the PUBACK".to_owned(), true)),
                    Err(_) => Err((
                        format!("no PUBACK within {}", humantime::format_duration(timeout)),
                        true,
                    )),
                };
                let outcome = crate::outcome_of(&m, "mqtt", result);
                report(&outcomes, &m, outcome).await;
            }
        });
    }

    async fn health(&self, address: &str, settings: &Settings) -> Health {
        let config = match MqttSendConfig::parse(address, settings) {
            Ok(c) => c,
            Err(e) => return Health::unhealthy(e.to_string()),
        };
        let e = &config.endpoint;
        crate::broker::reachable(&e.host, e.port, &e.broker()).await
    }
}
