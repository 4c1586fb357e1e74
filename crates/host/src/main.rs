//! `mbx-host`: run one host instance of an mbx group. See `mbx_host::run`.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use mbx_host::{run, HostConfig};
use mbx_messagebox::instances::MAX_DELIVERIES_DEFAULT;
use tracing::{error, warn};

#[derive(Parser, Debug)]
#[command(
    name = "mbx-host",
    version,
    about = "Run one host instance of an mbx group: its receive locations and send ports.",
    after_help = "Example:\n  MBX_DATABASE_URL=postgres://postgres@127.0.0.1:5432/mbx mbx-host --host default --admin-listen 127.0.0.1:9090"
)]
struct Args {
    /// PostgreSQL URL of the MessageBox.
    #[arg(long, env = "MBX_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The host this instance runs.
    #[arg(long, default_value = "default")]
    host: String,
    /// Address for /healthz, /readyz and /metrics (port 0 picks a free one).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Address this instance serves its host's HTTP receive locations on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_listen: SocketAddr,
    /// Address this instance serves its host's HTTPS receive locations (https:///path) on,
    /// over TLS with --tls-cert and --tls-key.
    #[arg(long, default_value = "0.0.0.0:8443")]
    https_listen: SocketAddr,
    /// PEM certificate chain for HTTPS receive (with --tls-key). Without it, https:///
    /// locations are refused on this instance (never served in clear).
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key for HTTPS receive (with --tls-cert).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<std::path::PathBuf>,
    /// A message whose claim was reclaimed more than this many times is suspended as poison.
    #[arg(long, default_value_t = MAX_DELIVERIES_DEFAULT)]
    max_deliveries: i32,
    /// Most deliveries a send port's loop claims at a time (1 to 10000; the in-flight
    /// throttle may claim fewer).
    #[arg(long, default_value_t = mbx_messagebox::delivery::CLAIM_BATCH_DEFAULT,
          value_parser = clap::value_parser!(i64).range(1..=10_000))]
    claim_batch: i64,
    /// Configuration poll interval and wake-up fallback (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    poll_interval: std::time::Duration,
    /// A delivery loop without progress this long stops the heartbeat (another instance
    /// then takes over its work).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    watchdog_stall: std::time::Duration,
    /// Log format: text (one line per event) or json (one object per line, for log
    /// shippers). Colour only when the output is a terminal.
    #[arg(long, env = "MBX_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Stopped and dead instances that hold nothing are forgotten this long after their
    /// last heartbeat (e.g. 7d, 12h; `mbx instance prune` does it at once).
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    forget_instances_after: std::time::Duration,
    /// How long start-up waits for an unreachable MessageBox (refused or reset
    /// connections, a restarting server) before it gives up (e.g. 60s, 5m).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    startup_timeout: std::time::Duration,
}

/// The format of the host's logs (`--log-format`, `MBX_LOG_FORMAT`).
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

/// Exit codes: 0 after a graceful stop; 2 bad arguments (one line naming the argument);
/// 1 anything else (one line: what failed, where, and what to do).
fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) {
                let _ = err.print();
                return ExitCode::SUCCESS;
            }
            // one line: clap's first, without its usage and "For more information" footer
            let line = mbx_messagebox::usage_line(&err.render().to_string());
            eprintln!("{line} (see mbx-host --help)");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(host(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // the whole chain on one line ("context: cause: cause")
            let line = mbx_messagebox::one_line(&*e);
            error!(error = %line, "mbx-host stopped");
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}

async fn host(args: Args) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    // lapin logs every channel the broker closes as an error, also the expected ones (a
    // queue checked by declaring it); the AMQP adapter logs what matters. Whatever MBX_LOG
    // says, the wire-level tracing of the clients stays off (mbx_messagebox::logs).
    let (chosen, cap, warning) = mbx_messagebox::logs::filters("info,lapin=off");
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let layer = match args.log_format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(chosen)
        .with(layer.with_filter(cap))
        .init();
    if let Some(warning) = warning {
        warn!("{warning}");
    }
    let mut config = HostConfig::new(&args.database_url, &args.host);
    config.admin_listen = args.admin_listen;
    config.http_listen = args.http_listen;
    config.https_listen = args.https_listen;
    config.tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(mbx_host::TlsFiles { cert, key }),
        _ => None,
    };
    config.max_deliveries = args.max_deliveries;
    config.claim_batch = args.claim_batch;
    config.poll_interval = args.poll_interval;
    config.watchdog_stall = args.watchdog_stall;
    config.startup_timeout = args.startup_timeout;
    config.instance_retention = args.forget_instances_after;
    let shutdown = async {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                error!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    run(config, shutdown).await
}
