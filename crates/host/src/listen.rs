//! The listener: LISTEN on the MessageBox's channels, turned into wake-ups.

use std::sync::Arc;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use mbx_messagebox::Wakeup;
use tracing::warn;

use crate::instance::Instance;

/// The wake-ups the listener hands out: a publish (every delivery loop looks), a
/// configuration change (the supervisor), messages forwarded in (the inbox), replies for
/// this instance (the reply task). Cheap to clone (one `Arc`).
#[derive(Clone, Default)]
pub(crate) struct Wakeups {
    inner: Arc<WakeupsInner>,
}

#[derive(Default)]
struct WakeupsInner {
    published: Notify,
    config_changed: Notify,
    forwarded: Notify,
    replied: Notify,
}

impl Wakeups {
    /// Something was published (or may wait to be delivered): every waiter looks.
    pub fn notify_published(&self) {
        self.inner.published.notify_waiters();
    }

    pub fn published(&self) -> Notified<'_> {
        self.inner.published.notified()
    }

    pub fn notify_config_changed(&self) {
        self.inner.config_changed.notify_one();
    }

    pub fn config_changed(&self) -> Notified<'_> {
        self.inner.config_changed.notified()
    }

    pub fn notify_forwarded(&self) {
        self.inner.forwarded.notify_one();
    }

    pub fn forwarded(&self) -> Notified<'_> {
        self.inner.forwarded.notified()
    }

    /// Replies may be waiting for this instance's clients.
    pub fn notify_replied(&self) {
        self.inner.replied.notify_one();
    }

    pub fn replied(&self) -> Notified<'_> {
        self.inner.replied.notified()
    }
}

/// LISTEN on the publish and configuration channels; reconnects with a pause when the
/// connection drops.
pub(crate) async fn listen_loop(instance: Instance, wake: Wakeups) {
    loop {
        match instance.mbx().listen().await {
            Ok(mut listener) => {
                // a new connection may have missed notifications: look once
                wake.notify_published();
                wake.notify_config_changed();
                wake.notify_forwarded();
                wake.notify_replied();
                loop {
                    match listener.recv().await {
                        Ok(Wakeup::ConfigChanged) => wake.notify_config_changed(),
                        Ok(Wakeup::Published) => wake.notify_published(),
                        Ok(Wakeup::Forwarded) => wake.notify_forwarded(),
                        Ok(Wakeup::Replied(to)) => {
                            if to == instance.id() {
                                wake.notify_replied();
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, "publish listener lost its connection");
                            break;
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e, "publish listener cannot listen; polling only"),
        }
        if !instance.pause(instance.config().poll_interval).await {
            return;
        }
    }
}
