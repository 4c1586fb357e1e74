//! How a port's messages leave, decided once per port: when its loop starts, each of its
//! configured addresses (primary, backup) is resolved to a [`SendTransport`] — a send
//! adapter, or forwarding into another group (`mbx://`, this host's forwarder, never an
//! adapter). A dynamic port's address is the message's: it is resolved per delivery,
//! through the same [`PortTransports::route`].

use std::sync::Arc;

use mbx_adapters::{AllowList, Registry, SendAdapter, SendTransport};
use mbx_messagebox::config::SendPort;
use mbx_messagebox::context::system;
use mbx_messagebox::delivery::ClaimedDelivery;

/// Where one delivery goes: its address and how it leaves.
pub(crate) struct Route {
    pub address: String,
    pub transport: SendTransport,
}

/// The transports of one port, resolved when its loop starts.
pub(crate) struct PortTransports {
    registry: Registry,
    /// The port's configured addresses and their transports (or why there is none).
    fixed: Vec<(String, Result<SendTransport, String>)>,
    /// A dynamic port's allow-list, parsed once.
    allow: Option<AllowList>,
}

impl PortTransports {
    pub fn new(registry: &Registry, port: &SendPort) -> Self {
        let fixed = [port.address.as_deref(), port.backup_address.as_deref()]
            .into_iter()
            .flatten()
            .map(|a| {
                let transport = registry.send_transport(a).map_err(|e| e.to_string());
                (a.to_owned(), transport)
            })
            .collect();
        Self {
            registry: registry.clone(),
            fixed,
            allow: port.dynamic.then(|| AllowList::new(&port.allow_address)),
        }
    }

    /// Whether the port's (primary) address forwards into another group: its claims are
    /// larger (one transaction there per batch), and an ordered port hands a whole run of
    /// heads over at once.
    pub fn forwards(&self) -> bool {
        matches!(self.fixed.first(), Some((_, Ok(SendTransport::Forward(_)))))
    }

    /// The send adapter of the port's (primary) address, if an adapter sends it.
    pub fn adapter(&self) -> Option<Arc<dyn SendAdapter>> {
        match self.fixed.first() {
            Some((_, Ok(SendTransport::Adapter(adapter)))) => Some(adapter.clone()),
            _ => None,
        }
    }

    /// Where `d` goes: the port's address in use, or for a dynamic port the message's
    /// `mbx.OutboundTransportLocation` if the port's allow-list allows it (compared parsed,
    /// `mbx_adapters::allow`, and for a `file:` address with its folder resolved on disk).
    /// An error fails the delivery for good.
    pub async fn route(&self, port: &SendPort, d: &ClaimedDelivery) -> Result<Route, String> {
        let address = match &d.address {
            Some(a) => a.clone(),
            None => self.dynamic_address(port, d).await?,
        };
        let transport = match self.fixed.iter().find(|(a, _)| *a == address) {
            Some((_, transport)) => transport.clone()?,
            None => self
                .registry
                .send_transport(&address)
                .map_err(|e| e.to_string())?,
        };
        Ok(Route { address, transport })
    }

    async fn dynamic_address(
        &self,
        port: &SendPort,
        d: &ClaimedDelivery,
    ) -> Result<String, String> {
        let Some(p) = d.context.get(system::OUTBOUND_TRANSPORT_LOCATION) else {
            return Err(format!(
                "dynamic send port '{}': the message has no {}",
                port.name,
                system::OUTBOUND_TRANSPORT_LOCATION
            ));
        };
        let address = p.value.to_plain_string();
        let refused = |why: String| {
            format!(
                "dynamic send port '{}': address '{address}' is not under an allowed prefix: {why}",
                port.name
            )
        };
        let built;
        let allow = match &self.allow {
            Some(a) => a,
            None => {
                built = AllowList::new(&port.allow_address);
                &built
            }
        };
        allow.permits(&address).map_err(refused)?;
        allow.permits_on_disk(&address).await.map_err(refused)?;
        Ok(address)
    }
}
