//! [`Instance`]: the handle every loop of a host instance holds — its MessageBox, its
//! configuration, its id (replaced when it re-registers after being declared dead), its
//! host's id, and whether it is stopping. Cheap to clone (one `Arc`).

use std::sync::Arc;
use std::time::Duration;

use mbx_messagebox::MessageBox;
use tokio::sync::watch;
use uuid::Uuid;

use crate::HostConfig;

#[derive(Clone)]
pub(crate) struct Instance {
    inner: Arc<Inner>,
}

struct Inner {
    mbx: MessageBox,
    config: HostConfig,
    id: watch::Sender<Uuid>,
    host_id: i64,
    stopping: watch::Receiver<bool>,
}

impl Instance {
    pub fn new(
        mbx: MessageBox,
        config: HostConfig,
        id: Uuid,
        host_id: i64,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        let (id, _) = watch::channel(id);
        Self {
            inner: Arc::new(Inner {
                mbx,
                config,
                id,
                host_id,
                stopping,
            }),
        }
    }

    pub fn mbx(&self) -> &MessageBox {
        &self.inner.mbx
    }

    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    /// This instance's id now.
    pub fn id(&self) -> Uuid {
        *self.inner.id.borrow()
    }

    /// This instance's id, changing when it re-registers.
    pub fn ids(&self) -> watch::Receiver<Uuid> {
        self.inner.id.subscribe()
    }

    /// The instance registered again (declared dead, it got a new id).
    pub fn reregistered(&self, id: Uuid) {
        // `send` would fail (nobody subscribes) and keep the dead id
        self.inner.id.send_replace(id);
    }

    /// The host's id (publishes are attributed to it, for its publish throttle).
    pub fn host_id(&self) -> i64 {
        self.inner.host_id
    }

    /// Becomes true when the instance stops.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.inner.stopping.clone()
    }

    pub fn is_stopping(&self) -> bool {
        *self.inner.stopping.borrow()
    }

    /// Sleeps `d` unless the instance is stopping; returns false when it is.
    pub async fn pause(&self, d: Duration) -> bool {
        let mut stopping = self.stopping();
        if *stopping.borrow() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => !*stopping.borrow(),
            _ = stopping.changed() => false,
        }
    }
}
