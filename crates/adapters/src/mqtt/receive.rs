//! MQTT receive: one subscription per location (QoS 1, manual acks, persistent session
//! under a client id fixed per location); PUBACK only after the publish committed.

use async_trait::async_trait;
use mbx_vocabulary::retry::Backoff;
use rumqttc::{AsyncClient, Event, Packet, Publish, QoS};
use tokio::sync::mpsc;

use super::config::MqttReceiveConfig;
use crate::broker;
use crate::error::{ConfigError, ReceiveError};
use crate::{
    system, Body, Health, InboundMessage, MessageContext, ReceiveAdapter, ReceiveLocationSpec,
    ShutdownSignal, Submitter,
};

/// How long a stopping location waits for its queued acknowledgements to be sent.
const ACKS_FLUSH_MAX: std::time::Duration = std::time::Duration::from_secs(2);

pub struct MqttReceiveAdapter {
    spec: ReceiveLocationSpec,
    config: MqttReceiveConfig,
}

/// The client id of a location: the same on every instance, so the session (its
/// subscription and unacknowledged messages) moves with the location's lease.
pub fn client_id(location: &str) -> String {
    format!("mbx-{location}")
}

enum Ended {
    Shutdown,
    Lost(String),
}

impl MqttReceiveAdapter {
    pub fn new(spec: ReceiveLocationSpec) -> Result<Self, ConfigError> {
        let config = MqttReceiveConfig::parse(&spec.address, &spec.settings)?;
        Ok(Self { spec, config })
    }

    fn inbound(&self, p: &Publish, body: bytes::Bytes) -> InboundMessage {
        InboundMessage {
            body: Body::Bytes(body),
            content_type: "application/octet-stream".to_owned(),
            properties: MessageContext::new().with(
                system::INBOUND_TRANSPORT_LOCATION,
                format!("{}/{}", self.config.endpoint.broker(), self.config.filter),
            ),
            promoted: MessageContext::new()
                .with("MQTT.Topic", p.topic.clone())
                .with("MQTT.Retain", p.retain.to_string())
                .with("MQTT.Duplicate", p.dup.to_string()),
            // MQTT 3.1.1 carries no message id: a redelivery cannot be told from a new message
            source_id: None,
            source_identity: None,
            body_sha256: None,
        }
    }

    /// One connection: subscribe, then publish what arrives batch by batch.
    async fn session(
        &self,
        submitter: &dyn Submitter,
        shutdown: &mut ShutdownSignal,
        backoff: &mut Backoff,
    ) -> Ended {
        // every packet the protocol allows: a larger message than the location takes is
        // received and refused here (recorded, acknowledged); a packet limit below it would
        // end the connection on it at every reconnect, and the location would stall
        let max_incoming = super::config::MQTT_PACKET_MAX;
        let options = match super::options(
            &self.config.endpoint,
            &client_id(&self.spec.location_name),
            false,
            max_incoming,
        ) {
            Ok(mut o) => {
                o.set_manual_acks(true);
                o
            }
            Err(e) => return Ended::Lost(e),
        };
        let (client, eventloop) = AsyncClient::new(options, 1024);
        let (tx, mut rx) = mpsc::channel::<Result<Publish, String>>(self.config.batch * 2);
        let driver = tokio::spawn(drive(
            eventloop,
            client.clone(),
            self.config.filter.clone(),
            tx,
        ));
        let ended = loop {
            // nothing is taken while the host admits no messages (unacknowledged, the
            // session keeps them)
            tokio::select! {
                _ = &mut *shutdown => break Ended::Shutdown,
                _ = crate::admitted(submitter) => {}
            }
            let first = tokio::select! {
                _ = &mut *shutdown => break Ended::Shutdown,
                p = rx.recv() => p,
            };
            let first = match first {
                Some(Ok(p)) => p,
                Some(Err(e)) => break Ended::Lost(e),
                None => break Ended::Lost("the connection's task ended".into()),
            };
            // the admission may have closed while this waited for a message: it is held,
            // unsubmitted and unacknowledged, until the host admits again
            tokio::select! {
                _ = &mut *shutdown => break Ended::Shutdown,
                _ = crate::admitted(submitter) => {}
            }
            let mut batch = vec![first];
            while batch.len() < self.config.batch {
                match rx.try_recv() {
                    Ok(Ok(p)) => batch.push(p),
                    _ => break,
                }
            }
            if let Err(why) = self
                .handle(submitter, &client, batch, shutdown, backoff)
                .await
            {
                break why;
            }
        };
        close(&client, driver, &ended).await;
        ended
    }

    /// Publishes a batch, retrying (with a backoff) until it commits, then acknowledges
    /// it. MQTT cannot give a message back: an unacknowledged one comes again only on the
    /// next connection, so a failed publish is tried again here.
    async fn handle(
        &self,
        submitter: &dyn Submitter,
        client: &AsyncClient,
        batch: Vec<Publish>,
        shutdown: &mut ShutdownSignal,
        backoff: &mut Backoff,
    ) -> Result<(), Ended> {
        let mut messages = Vec::with_capacity(batch.len());
        for p in &batch {
            if p.payload.len() as u64 > self.config.max_message_size {
                let reason = format!(
                    "message of {} bytes on {} is over the location's --max-message-size of {} bytes",
                    p.payload.len(),
                    p.topic,
                    self.config.max_message_size
                );
                messages.push((Some(reason), self.inbound(p, bytes::Bytes::new())));
            } else {
                messages.push((None, self.inbound(p, p.payload.clone())));
            }
        }
        // an oversize message recorded once is not recorded again on a retry
        let mut recorded = vec![false; messages.len()];
        loop {
            let mut result = Ok(());
            for (i, (refused, m)) in messages.iter().enumerate() {
                if let (Some(reason), false) = (refused, recorded[i]) {
                    match submitter.refuse(m.clone(), reason).await {
                        Ok(()) => recorded[i] = true,
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
            }
            if result.is_ok() {
                let accepted: Vec<InboundMessage> = messages
                    .iter()
                    .filter(|(refused, _)| refused.is_none())
                    .map(|(_, m)| m.clone())
                    .collect();
                if !accepted.is_empty() {
                    result = submitter.submit(accepted).await.map(|_| ());
                }
            }
            let Err(e) = result else { break };
            let wait = backoff.next_wait();
            tracing::warn!(location = %self.spec.location_name, error = %e, wait_ms = wait.as_millis() as u64,
                           "not published; trying the batch again");
            tokio::select! {
                _ = &mut *shutdown => return Err(Ended::Shutdown),
                _ = tokio::time::sleep(wait) => {}
            }
        }
        backoff.reset();
        for p in &batch {
            client
                .ack(p)
                .await
                .map_err(|e| Ended::Lost(format!("acknowledging: {e}")))?;
        }
        Ok(())
    }
}

/// Ends a connection. A stop sends the acknowledgements already queued (of committed
/// messages) before it disconnects: the event loop takes requests in order, the
/// disconnect last. Unacknowledged messages stay in the session for the next connection
/// (or holder).
async fn close(client: &AsyncClient, mut driver: tokio::task::JoinHandle<()>, ended: &Ended) {
    if matches!(ended, Ended::Shutdown) && client.disconnect().await.is_ok() {
        let _ = tokio::time::timeout(ACKS_FLUSH_MAX, &mut driver).await;
    }
    driver.abort();
}

/// Polls the connection's event loop all the time (keep-alive, acks), subscribing on each
/// connection and passing every message received — or why the connection ended — to the
/// session on `tx`.
async fn drive(
    mut eventloop: rumqttc::EventLoop,
    subscriber: AsyncClient,
    filter: String,
    tx: mpsc::Sender<Result<Publish, String>>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // the session keeps the subscription; asking again is harmless
                if let Err(e) = subscriber.subscribe(filter.clone(), QoS::AtLeastOnce).await {
                    let _ = tx.send(Err(format!("subscribe: {e}"))).await;
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send(Ok(p)).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    let _ = tx
                        .send(Err(format!(
                            "the broker refused the subscription to {filter}"
                        )))
                        .await;
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(Err(e.to_string())).await;
                return;
            }
        }
    }
}

#[async_trait]
impl ReceiveAdapter for MqttReceiveAdapter {
    fn name(&self) -> &'static str {
        "MQTT"
    }

    async fn run(
        &self,
        submitter: &dyn Submitter,
        mut shutdown: ShutdownSignal,
    ) -> Result<(), ReceiveError> {
        let mut backoff = broker::receive_backoff();
        loop {
            match self.session(submitter, &mut shutdown, &mut backoff).await {
                Ended::Shutdown => return Ok(()),
                Ended::Lost(why) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(location = %self.spec.location_name, error = %why,
                                   wait_ms = wait.as_millis() as u64, "mqtt receive interrupted; reconnecting");
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    async fn health(&self) -> Health {
        let e = &self.config.endpoint;
        crate::broker::reachable(&e.host, e.port, &e.broker()).await
    }
}
