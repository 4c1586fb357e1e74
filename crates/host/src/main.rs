//! `mbx-host`: one host instance of an mbx group (SPEC §4).
//!
//! Today it migrates the MessageBox, registers, heartbeats on the database clock, declares
//! dead instances and reclaims their claims (poison after `--max-deliveries`), runs
//! maintenance, and deregisters on SIGTERM/SIGINT. Receive locations and delivery loops
//! arrive with the adapters.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use mbx_messagebox::instances::{DEAD_AFTER_S, MAX_DELIVERIES_DEFAULT};
use mbx_messagebox::maintenance::{MAINTENANCE_BATCH_MAX, TRACKING_RETENTION_DEFAULT_S};
use mbx_messagebox::MessageBox;
use tracing::{error, info, warn};

/// Heartbeat period (SPEC §4: every 2 s; dead after 10 s).
const HEARTBEAT_INTERVAL_MS: u64 = 2_000;

/// Maintenance period.
const MAINTENANCE_INTERVAL_S: u64 = 60;

/// Connections one instance opens at most.
const POOL_MAX_CONNECTIONS: u32 = 8;

#[derive(Parser, Debug)]
#[command(
    name = "mbx-host",
    version,
    about = "Run one host instance of an mbx group.",
    after_help = "Example:\n  MBX_DATABASE_URL=postgres://postgres@127.0.0.1:5432/mbx mbx-host --host default"
)]
struct Args {
    /// PostgreSQL URL of the MessageBox.
    #[arg(long, env = "MBX_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The host this instance runs.
    #[arg(long, default_value = "default")]
    host: String,
    /// A message whose claim was reclaimed more than this many times is suspended as poison.
    #[arg(long, default_value_t = MAX_DELIVERIES_DEFAULT)]
    max_deliveries: i32,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MBX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mbx = MessageBox::connect(&args.database_url, POOL_MAX_CONNECTIONS)
        .await
        .context("cannot connect to the MessageBox; check MBX_DATABASE_URL")?;
    mbx.init(None).await.context("migrating the MessageBox")?;
    let machine = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".to_owned());
    let id = mbx
        .instance_register(
            &args.host,
            &machine,
            std::process::id() as i32,
            env!("CARGO_PKG_VERSION"),
        )
        .await
        .with_context(|| format!("registering an instance of host '{}'", args.host))?;
    info!(instance = %id, host = %args.host, "host instance registered");

    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::pin!(shutdown);
    let mut heartbeat = tokio::time::interval(Duration::from_millis(HEARTBEAT_INTERVAL_MS));
    let mut maintenance = tokio::time::interval(Duration::from_secs(MAINTENANCE_INTERVAL_S));
    let mut id = id;
    loop {
        tokio::select! {
            res = &mut shutdown => {
                if let Err(e) = res {
                    error!(error = %e, "signal handling failed; stopping");
                }
                break;
            }
            _ = heartbeat.tick() => {
                match mbx.instance_heartbeat(id).await {
                    Ok(true) => {}
                    Ok(false) => {
                        warn!(instance = %id, "declared dead by another instance; re-registering");
                        match mbx.instance_register(&args.host, &machine, std::process::id() as i32, env!("CARGO_PKG_VERSION")).await {
                            Ok(new_id) => id = new_id,
                            Err(e) => error!(error = %e, "re-registration failed"),
                        }
                    }
                    Err(e) => error!(error = %e, "heartbeat failed"),
                }
                match mbx.instances_reclaim_dead(DEAD_AFTER_S, args.max_deliveries).await {
                    Ok(r) if r.deliveries_reclaimed + r.poison_suspended + r.instances_declared_dead > 0 => {
                        info!(dead = r.instances_declared_dead, reclaimed = r.deliveries_reclaimed,
                              poison = r.poison_suspended, "reclaimed dead instances' work");
                    }
                    Ok(_) => {}
                    Err(e) => error!(error = %e, "reclaim failed"),
                }
            }
            _ = maintenance.tick() => {
                if let Err(e) = mbx.maintenance_run(TRACKING_RETENTION_DEFAULT_S, MAINTENANCE_BATCH_MAX).await {
                    error!(error = %e, "maintenance failed");
                }
            }
        }
    }
    let released = mbx.instance_deregister(id).await.context("deregistering")?;
    info!(instance = %id, released, "host instance stopped");
    Ok(())
}
