//! Two-way receive's waiting clients: each client waits on a one-shot channel
//! keyed by its request's correlation token; the reply task takes the replies routed to
//! this instance when `mbx_reply` names it (and once after the listener reconnects: a
//! notification may have been missed) and hands each to its client. A reply whose client
//! left is suspended with the reason by the MessageBox and counted
//! (`mbx_late_replies_total`). A client that leaves — timed out, disconnected — takes its
//! instance subscription with it, so a later reply is a routing failure saying so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mbx_messagebox::replies::Reply;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::instance::Instance;
use crate::listen::Wakeups;

/// The clients this instance holds, by correlation token.
#[derive(Default)]
pub(crate) struct Waiting {
    clients: Mutex<HashMap<String, oneshot::Sender<Reply>>>,
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Reply>>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a client before its request is published (a reply may come at once).
    pub fn register(
        self: &Arc<Self>,
        token: String,
        instance: &Instance,
        wake: &Wakeups,
    ) -> Client {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(token.clone(), tx);
        Client {
            token,
            reply: Some(rx),
            waiting: self.clone(),
            instance: instance.clone(),
            wake: wake.clone(),
        }
    }

    fn waits(&self, token: &str) -> bool {
        self.lock().contains_key(token)
    }

    fn take(&self, token: &str) -> Option<oneshot::Sender<Reply>> {
        self.lock().remove(token)
    }
}

/// A client held for its reply. Dropped (answered, timed out, or the connection gone), it
/// stops waiting: its subscription is cancelled, so a reply that comes later is suspended
/// as late, never handed to anyone else.
pub(crate) struct Client {
    pub token: String,
    reply: Option<oneshot::Receiver<Reply>>,
    waiting: Arc<Waiting>,
    instance: Instance,
    wake: Wakeups,
}

impl Client {
    /// The reply, or `None` when `timeout` passed first.
    pub async fn reply(&mut self, timeout: std::time::Duration) -> Option<Reply> {
        let rx = self.reply.as_mut()?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => {
                self.reply = None;
                Some(reply)
            }
            _ => None,
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if self.waiting.take(&self.token).is_none() && self.reply.is_none() {
            // answered: the reply took the subscription
            return;
        }
        let (instance, wake) = (self.instance.clone(), self.wake.clone());
        let token = std::mem::take(&mut self.token);
        // a reply handed over just as the client left is suspended as late, not lost
        let unread = self.reply.as_mut().and_then(|rx| rx.try_recv().ok());
        tokio::spawn(async move {
            if let Some(reply) = unread {
                match instance.mbx().reply_suspend_late(reply.message_id).await {
                    Ok(n) => count_late(n),
                    Err(e) => {
                        warn!(message_id = %reply.message_id, error = %e, "cannot suspend a late reply")
                    }
                }
                return;
            }
            match instance.mbx().reply_cancel(&token).await {
                Ok(true) => debug!(%token, "client left; its instance subscription is cancelled"),
                // a reply took it meanwhile: the reply task suspends it as late
                Ok(false) => wake.notify_replied(),
                // the subscription stays until this instance is declared dead
                Err(e) => warn!(%token, error = %e, "cannot cancel a left client's subscription"),
            }
        });
    }
}

/// Takes the replies routed to this instance whenever it is woken, for as long as the
/// instance runs.
pub(crate) async fn reply_loop(instance: Instance, waiting: Arc<Waiting>, wake: Wakeups) {
    let mut stopping = instance.stopping();
    loop {
        let woken = wake.replied();
        tokio::pin!(woken);
        woken.as_mut().enable();
        take_replies(&instance, &waiting).await;
        tokio::select! {
            _ = &mut woken => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

async fn take_replies(instance: &Instance, waiting: &Waiting) {
    let id = instance.id();
    let taken = instance
        .mbx()
        .replies_take(id, |token| waiting.waits(token))
        .await;
    let (replies, late) = match taken {
        Ok(t) => t,
        Err(e) => {
            // the replies stay in the MessageBox; the next wake-up takes them
            warn!(error = %e, "cannot take the replies of waiting clients");
            return;
        }
    };
    count_late(late);
    for reply in replies {
        let message_id = reply.message_id;
        let delivered = match waiting.take(&reply.correlation_token) {
            Some(client) => client.send(reply).is_ok(),
            None => false,
        };
        if !delivered {
            // the client left between the take and now
            match instance.mbx().reply_suspend_late(message_id).await {
                Ok(n) => count_late(n),
                Err(e) => warn!(%message_id, error = %e, "cannot suspend a late reply"),
            }
        }
    }
}

fn count_late(n: u64) {
    if n > 0 {
        warn!(
            replies = n,
            "replies arrived after their clients left; suspended as routing failures"
        );
        metrics::counter!("mbx_late_replies_total").increment(n);
    }
}
