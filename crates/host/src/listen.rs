//! The listener: LISTEN on the MessageBox's channels, turned into wake-ups.

use std::sync::Arc;

use mbx_messagebox::Wakeup;
use tracing::warn;

use crate::{pause, Shared};

/// LISTEN on the publish and configuration channels; reconnects with a pause when the
/// connection drops.
pub(crate) async fn listen_loop(shared: Arc<Shared>) {
    loop {
        match shared.mbx.listen().await {
            Ok(mut listener) => {
                // a new connection may have missed notifications: look once
                shared.published.notify_waiters();
                shared.config_changed.notify_one();
                shared.forwarded.notify_one();
                shared.waiting.wake.notify_one();
                loop {
                    match listener.recv().await {
                        Ok(Wakeup::ConfigChanged) => shared.config_changed.notify_one(),
                        Ok(Wakeup::Published) => shared.published.notify_waiters(),
                        Ok(Wakeup::Forwarded) => shared.forwarded.notify_one(),
                        Ok(Wakeup::Replied(instance)) => {
                            if instance == shared.instance_id() {
                                shared.waiting.wake.notify_one();
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
        if !pause(&shared, shared.config.poll_interval).await {
            return;
        }
    }
}
