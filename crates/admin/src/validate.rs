//! Configuration checked by the part of mbx that would run it, before anything is
//! written: addresses and settings by the adapters' registry, pipelines and promotions by
//! the pipeline's constructor (`mbx_adapters`). A refusal is a usage error (exit 2) naming
//! the flag; the MessageBox is not touched.

use mbx_adapters::{Registry, RegistryError, Scheme};
use mbx_messagebox::config::SendPortSpec;
use mbx_messagebox::receive::ReceiveLocationSpec;

use crate::Usage;

/// The registry the checks ask (it builds each adapter once; nothing connects).
fn registry() -> Result<Registry, Usage> {
    Registry::new().map_err(|e| Usage(format!("cannot check adapter settings: {e}")))
}

/// The refusal as a usage error naming the flag that carried the problem: a setting's
/// problem is `--set`'s even when found while checking an address.
fn refused(address_flag: &str, e: RegistryError) -> Usage {
    use mbx_adapters::ConfigError;
    let flag = match &e {
        RegistryError::Unordered { .. } => "--ordered",
        RegistryError::Config(ConfigError::BadSetting { key, .. }) if key == "--promote" => {
            "--promote"
        }
        RegistryError::Config(ConfigError::BadSetting { key, .. }) if key == "pipeline" => {
            "--pipeline"
        }
        RegistryError::Config(
            ConfigError::UnknownSetting { .. }
            | ConfigError::BadSetting { .. }
            | ConfigError::Secret { .. },
        ) => "--set",
        _ => address_flag,
    };
    Usage(format!("{flag}: {e}"))
}

/// A send port's addresses and settings, each as its adapter would send with them.
pub fn send_port(spec: &SendPortSpec) -> Result<(), Usage> {
    let registry = registry()?;
    if let Some(address) = &spec.address {
        registry
            .validate_send(address, &spec.settings)
            .map_err(|e| refused("--address", e))?;
    }
    if let Some(backup) = &spec.backup_address {
        // the backup transport runs with the port's settings too
        registry
            .validate_send(backup, &spec.settings)
            .map_err(|e| refused("--backup-address", e))?;
    }
    for prefix in &spec.allow_address {
        // compared parsed at send time: an ambiguous prefix is refused now
        mbx_adapters::allow::check_prefix(prefix)
            .map_err(|e| Usage(format!("--allow-address: {e}")))?;
    }
    solicit_response(spec)
}

/// A solicit-response port sends only through adapters that return an answer, and is not
/// ordered (yet); its settings `reply_statuses` and `copy_properties` mean nothing on a
/// one-way port and are refused there.
fn solicit_response(spec: &SendPortSpec) -> Result<(), Usage> {
    use mbx_adapters::settings::COPY_PROPERTIES;
    const REPLY_STATUSES: &str = mbx_adapters::http::config::REPLY_STATUSES;
    if !spec.solicit_response {
        for key in [REPLY_STATUSES, COPY_PROPERTIES] {
            if spec.settings.contains_key(key) {
                return Err(Usage(format!(
                    "--set {key}: only a --solicit-response port publishes a response; add --solicit-response or drop {key}"
                )));
            }
        }
        return Ok(());
    }
    if spec.ordered {
        return Err(Usage(
            "--solicit-response: not available on an ordered port in this version; drop --ordered or --solicit-response".into(),
        ));
    }
    let answers = |a: &str| a.starts_with("http://") || a.starts_with("https://");
    let addresses = spec
        .address
        .iter()
        .map(|a| ("--address", a))
        .chain(spec.backup_address.iter().map(|a| ("--backup-address", a)))
        .chain(spec.allow_address.iter().map(|a| ("--allow-address", a)));
    for (flag, address) in addresses {
        if !answers(address) {
            return Err(Usage(format!(
                "{flag}: '{address}' cannot answer a solicit-response port: only http:// and https:// return a response in this version"
            )));
        }
    }
    Ok(())
}

/// `timeout` of an HTTP receive location holds a client for its reply: only on a two-way
/// receive port.
pub fn two_way_settings(spec: &ReceiveLocationSpec, two_way: bool) -> Result<(), Usage> {
    if !two_way && spec.settings.contains_key("timeout") {
        return Err(Usage(format!(
            "--set timeout: receive port '{}' is one-way (answered 202 at once); timeout applies to a port created with --two-way",
            spec.port
        )));
    }
    Ok(())
}

/// An `--ordered` AMQP location consumes a queue declared with a single active consumer
/// (otherwise a paused former consumer's messages could return after later ones): asked
/// of the broker now, changing nothing there.
pub async fn ordered_source(spec: &ReceiveLocationSpec) -> Result<(), Usage> {
    if !spec.ordered
        || !matches!(
            Scheme::of_address(&spec.address),
            Ok(Scheme::Amqp | Scheme::Amqps)
        )
    {
        return Ok(());
    }
    let config = mbx_adapters::amqp::AmqpReceiveConfig::parse(&spec.address, &spec.settings)
        .map_err(|e| Usage(format!("--address: {e}")))?;
    mbx_adapters::amqp::check_single_active_consumer(&config.endpoint, &config.queue)
        .await
        .map_err(|e| Usage(format!("--ordered: {e}")))
}

/// A receive location: its address and settings, `--ordered`, pipeline and promotions.
pub fn receive_location(spec: &ReceiveLocationSpec) -> Result<(), Usage> {
    registry()?
        .validate_receive_location(
            &spec.address,
            &spec.settings,
            spec.ordered,
            &spec.pipeline,
            &spec.promote,
        )
        .map_err(|e| refused("--address", e))?;
    Ok(())
}
