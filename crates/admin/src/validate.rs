//! Configuration checked by the part of mbx that would run it, before anything is
//! written: addresses and settings by the adapters' registry, pipelines and promotions by
//! the pipeline's constructor (`mbx_adapters`). A refusal is a usage error (exit 2) naming
//! the flag; the MessageBox is not touched.

use mbx_adapters::{Registry, RegistryError};
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
        mbx_adapters::Scheme::of_address(prefix).map_err(|e| refused("--allow-address", e))?;
    }
    Ok(())
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
