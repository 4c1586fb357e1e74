//! How mbx's binaries log: `MBX_LOG` chooses what is written, inside a cap it cannot lift.
//!
//! `MBX_LOG` is a `tracing` filter (`info`, `warn,mbx_host::delivery=debug`, `trace`); when
//! it is unset or does not parse, the binary's default applies. Whatever it says, the crates
//! that trace what they put on the wire ([`WIRE_TARGETS`]: the AMQP, MQTT, SMTP, HTTP,
//! TLS and PostgreSQL clients) log at most [`WIRE_CAP`]: at `debug` and `trace` they print
//! frames, packets, commands and connection options — an AMQP `StartOk` with its password
//! as a byte list, an MQTT `CONNECT` with its password, an SMTP `AUTH` line in base64. The
//! cap is a second filter after `MBX_LOG`'s (a logged event must pass both), so no
//! directive of `MBX_LOG`, however specific, turns that tracing back on.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{EnvFilter, Targets};

/// The environment variable that chooses what a binary logs.
pub const LOG_VAR: &str = "MBX_LOG";

/// Targets (crate names, matched as prefixes of a log target) whose debug and trace
/// output carries what they send and receive, secrets included.
pub const WIRE_TARGETS: &[&str] = &[
    "lapin",
    "amq_protocol",
    "pinky_swear",
    "rumqttc",
    "lettre",
    "hyper",
    "h2",
    "reqwest",
    "sqlx",
    "rustls",
    "tokio_rustls",
    "tower_http",
    "webpki",
];

/// The most a wire target may log, whatever `MBX_LOG` says.
pub const WIRE_CAP: LevelFilter = LevelFilter::WARN;

/// The filters of a binary's logs: `MBX_LOG` (or `default` when it is unset), to install
/// as the subscriber's filter, and the cap on [`WIRE_TARGETS`], to put on the layer that
/// writes. The third value is a one-line warning when `MBX_LOG` is set but does not parse
/// (the default applies then), for the binary to print.
pub fn filters(default: &str) -> (EnvFilter, Targets, Option<String>) {
    let (chosen, warning) = match std::env::var(LOG_VAR) {
        Ok(value) if !value.trim().is_empty() => match EnvFilter::builder().parse(&value) {
            Ok(f) => (f, None),
            Err(e) => (
                EnvFilter::new(default),
                Some(format!(
                    "{LOG_VAR}={value:?} is not a log filter ({e}); logging with the default \
                     {default:?} (e.g. {LOG_VAR}=info,mbx_host::delivery=debug)"
                )),
            ),
        },
        _ => (EnvFilter::new(default), None),
    };
    (chosen, wire_cap(), warning)
}

/// Everything at any level, but the wire targets at [`WIRE_CAP`].
pub fn wire_cap() -> Targets {
    WIRE_TARGETS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |t, target| t.with_target(*target, WIRE_CAP),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn the_wire_targets_are_capped_and_the_rest_is_not() {
        let cap = wire_cap();
        for target in [
            "lapin::channels",
            "amq_protocol_types::generation",
            "rumqttc::state",
            "lettre::transport::smtp::client",
            "hyper_util::client",
            "sqlx::query",
            "sqlx_postgres::connection",
            "rustls::client::hs",
        ] {
            assert!(!cap.would_enable(target, &Level::DEBUG), "{target}");
            assert!(!cap.would_enable(target, &Level::TRACE), "{target}");
            assert!(cap.would_enable(target, &Level::WARN), "{target}");
        }
        assert!(cap.would_enable("mbx_host::delivery", &Level::TRACE));
        assert!(cap.would_enable("mbx_messagebox::publish", &Level::TRACE));
    }
}
