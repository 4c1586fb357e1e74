//! The command line of `mbx-bench`: its arguments and their checks (exit 2, one line
//! naming the argument, the problem and a right example).

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use mbx_bench::mbx::Workload;
use mbx_bench::report::{Options, Peer};

/// Bad input (exit code 2).
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

#[derive(Parser, Debug)]
#[command(
    name = "mbx-bench",
    version,
    args_override_self = true,
    about = "Benchmark mbx end to end with its peers in the same run: creates its own databases on the server of --database-url and drops them after. `mbx bench ARGS` runs this binary.",
    after_help = "Examples:\n  mbx bench                       # everything, ~10 minutes\n  mbx bench --workload unordered --duration 10s --peers pgmq,rabbitmq --json\n  mbx bench --runs 3 --backlog 1000000\n  mbx bench --workload ordered,ordered-by --endpoint-latency 5ms --peers '' --scaling '' --backlog 0\n  mbx bench --workload unordered --ports 100 --body-size 65536 --peers '' --scaling '' --backlog 0\n  mbx bench --workload orchestration --peers dbos,ceiling --waiting 100000 --duration 10s\n\nBuild with --release first (`cargo build --release --bins`): mbx bench runs mbx-bench, which\nruns the mbx-host, both next to the mbx binary."
)]
pub struct BenchArgs {
    /// PostgreSQL URL of a server the benchmark may create and drop databases on.
    #[arg(long, env = "MBX_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Workloads: unordered (a), ordered (b), fanout (c), many-ordered (d), ordered-by (one
    /// port ordered by a property, 1,000 keys, 64 buckets), forward (group A → group B on
    /// the same server, counted where B delivers), request-response, amqp (a RabbitMQ
    /// queue → mbx → another queue, beside the rabbitmq peer), orchestration (instances
    /// activated by a message, one HTTP call, one correlated message awaited, a result
    /// emitted; beside the dbos and ceiling peers; not in all), or all.
    #[arg(long, default_value = "all", value_delimiter = ',')]
    pub workload: Vec<String>,
    /// Measured time of each run, after the warm-up.
    #[arg(long, default_value = "20s")]
    pub duration: String,
    /// Warm-up of each run, not counted.
    #[arg(long, default_value = "3s")]
    pub warmup: String,
    /// Host instances of the main runs.
    #[arg(long, default_value_t = 2)]
    pub instances: usize,
    /// Peers: pgmq, rabbitmq, ceiling beside the unordered workload; dbos (a Python DBOS
    /// app in a virtualenv the run creates with pip) and ceiling (its own script) beside the
    /// orchestration workload (empty: none).
    #[arg(long, default_value = "pgmq,rabbitmq,ceiling", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Instance counts of the scaling runs (empty: none).
    #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
    pub scaling: Vec<String>,
    /// Messages of the drain run (0: none).
    #[arg(long, default_value_t = 1_000_000)]
    pub backlog: u64,
    /// Runs of each measurement; the report gives their medians.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Messages per publish, claim and completion, the same for every peer (the hosts are
    /// started with `--claim-batch` set to it).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 2)]
    pub producers: usize,
    /// Send ports of the unordered and many-ordered workloads, each message to one of them
    /// (round-robin); default 1 and 100.
    #[arg(long, value_name = "N")]
    pub ports: Option<usize>,
    /// Ports subscribed to every message in the fanout workload (default 10).
    #[arg(long, value_name = "N")]
    pub subscribers: Option<usize>,
    /// Body size of every message, in bytes.
    #[arg(long, default_value_t = 1024)]
    pub body_size: usize,
    /// The NULL send ports take this long per message (ordered) or batch (unordered), as
    /// an endpoint with a latency does (default: none).
    #[arg(long, value_name = "DUR")]
    pub endpoint_latency: Option<String>,
    /// Orchestration instances left waiting for the waiting-instances run of the
    /// orchestration workload (default 10000; 0: no such run; up to 1000000).
    #[arg(long, value_name = "N")]
    pub waiting: Option<u64>,
    /// Skip the 50%-load latency runs.
    #[arg(long)]
    pub no_half_load: bool,
    /// Skip the tracking=all run.
    #[arg(long)]
    pub no_tracking_all: bool,
    /// RabbitMQ for the rabbitmq peer.
    #[arg(
        long,
        env = "MBX_BENCH_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// The mbx-host binary (default: the one next to mbx-bench, i.e. next to mbx).
    #[arg(long)]
    pub host_bin: Option<std::path::PathBuf>,
    /// One JSON object on stdout instead of the table (same as --output json).
    #[arg(long)]
    pub json: bool,
    /// Output format of the report, as `mbx --output` (`mbx bench` passes it on).
    #[arg(long, value_name = "FORMAT", value_parser = ["table", "json"], default_value = "table")]
    pub output: String,
}

fn duration(arg: &str, text: &str) -> Result<Duration> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        Usage(format!(
            "{arg}: '{text}' is not a duration ({e}); use a number with ms, s or m (example: {arg} 20s)"
        ))
    })?;
    if d.is_zero() {
        return Err(Usage(format!("{arg}: must be more than 0 (example: {arg} 20s)")).into());
    }
    Ok(d)
}

fn list<T>(
    arg: &str,
    items: &[String],
    parse: impl Fn(&str) -> Option<T>,
    known: &str,
) -> Result<Vec<T>> {
    items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            parse(s).ok_or_else(|| {
                Usage(format!(
                    "{arg}: unknown value '{s}'; use one or more of {known}, comma-separated"
                ))
                .into()
            })
        })
        .collect()
}

/// `--ports` / `--subscribers`: 1..10,000, and only with the workloads they shape (a knob
/// that would change nothing is refused).
fn shape_knob(
    arg: &str,
    value: Option<usize>,
    workloads: &[Workload],
    shaped: &[Workload],
    names: &str,
) -> Result<Option<usize>> {
    let Some(n) = value else {
        return Ok(None);
    };
    if n == 0 || n > 10_000 {
        return Err(Usage(format!(
            "{arg}: {n} is out of range; use 1..10000 (example: {arg} 100)"
        ))
        .into());
    }
    if workloads.iter().any(|w| !shaped.contains(w)) {
        return Err(Usage(format!(
            "{arg}: shapes only the {names} workload; add --workload {}",
            shaped[0].name()
        ))
        .into());
    }
    Ok(Some(n))
}

/// `--body-size`: 1 byte .. 16 MiB.
fn body_size(n: usize) -> Result<usize> {
    if n == 0 || n > 16 << 20 {
        return Err(Usage(format!(
            "--body-size: {n} is out of range; use 1..16777216 bytes (example: --body-size 65536)"
        ))
        .into());
    }
    Ok(n)
}

pub fn options(args: &BenchArgs, url: &str) -> Result<Options> {
    let workloads = if args.workload.iter().any(|w| w.trim() == "all") {
        Workload::ALL.into_iter().filter(|w| w.in_all()).collect()
    } else {
        list(
            "--workload",
            &args.workload,
            Workload::parse,
            "unordered, ordered, fanout, many-ordered, ordered-by, forward, request-response, amqp, orchestration, all",
        )?
    };
    if workloads.is_empty() {
        return Err(Usage(
            "--workload: empty; use one of unordered, ordered, fanout, many-ordered, ordered-by, forward, request-response, amqp, orchestration, all".into(),
        )
        .into());
    }
    let peers = list(
        "--peers",
        &args.peers,
        Peer::parse,
        "pgmq, rabbitmq, ceiling, dbos",
    )?;
    let waiting = waiting(args.waiting, &workloads)?;
    let scaling = list(
        "--scaling",
        &args.scaling,
        |s| s.parse::<usize>().ok().filter(|n| (1..=64).contains(n)),
        "instance counts 1..64 (example: --scaling 1,2,4)",
    )?;
    for (arg, v, max) in [
        ("--instances", args.instances, 64),
        ("--runs", args.runs, 100),
        ("--batch", args.batch, 10_000),
        ("--producers", args.producers, 64),
    ] {
        if v == 0 || v > max {
            return Err(Usage(format!(
                "{arg}: {v} is out of range; use 1..{max} (example: {arg} 2)"
            ))
            .into());
        }
    }
    let host_bin = match &args.host_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating the mbx-bench binary")?
            .with_file_name("mbx-host"),
    };
    let ports = shape_knob(
        "--ports",
        args.ports,
        &workloads,
        &[Workload::Unordered, Workload::ManyOrdered],
        "unordered or many-ordered",
    )?;
    let subscribers = shape_knob(
        "--subscribers",
        args.subscribers,
        &workloads,
        &[Workload::Fanout],
        "fanout",
    )?;
    Ok(Options {
        server_url: url.to_owned(),
        amqp_url: args.amqp_url.clone(),
        workloads,
        peers,
        duration: duration("--duration", &args.duration)?,
        warmup: duration("--warmup", &args.warmup)?,
        instances: args.instances,
        scaling,
        backlog: args.backlog,
        batch: args.batch,
        body_size: body_size(args.body_size)?,
        producers: args.producers,
        window: 200 * args.batch as u64,
        ports,
        subscribers,
        endpoint_latency: match &args.endpoint_latency {
            Some(d) => {
                let d = duration("--endpoint-latency", d)?;
                if d > std::time::Duration::from_secs(60) {
                    return Err(Usage(
                        "--endpoint-latency: at most 60s (example: --endpoint-latency 5ms)".into(),
                    )
                    .into());
                }
                Some(d)
            }
            None => None,
        },
        runs: args.runs,
        host_bin,
        half_load: !args.no_half_load,
        tracking_all: !args.no_tracking_all,
        waiting,
    })
}

/// `--waiting`: 0..=1,000,000, only with the orchestration workload (default 10,000).
fn waiting(value: Option<u64>, workloads: &[Workload]) -> Result<u64> {
    let Some(n) = value else {
        return Ok(10_000);
    };
    if n > 1_000_000 {
        return Err(Usage(format!(
            "--waiting: {n} is out of range; use 0..1000000 (example: --waiting 100000)"
        ))
        .into());
    }
    if !workloads.contains(&Workload::Orchestration) {
        return Err(Usage(
            "--waiting: shapes only the orchestration workload; add --workload orchestration"
                .into(),
        )
        .into());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options_of(args: &[&str]) -> Result<Options> {
        let args =
            BenchArgs::try_parse_from(std::iter::once("mbx-bench").chain(args.iter().copied()))?;
        options(&args, "postgres://postgres@127.0.0.1:5432/postgres")
    }

    fn usage_of(args: &[&str]) -> String {
        match options_of(args) {
            Ok(o) => panic!("accepted {args:?}: {o:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_orchestration_workload_is_asked_for_by_name_with_its_peers() {
        let o = options_of(&["--workload", "orchestration", "--peers", "dbos,ceiling"]).unwrap();
        assert_eq!(o.workloads, vec![Workload::Orchestration]);
        assert_eq!(o.peers, vec![Peer::Dbos, Peer::Ceiling]);
        assert_eq!(o.waiting, 10_000, "the default number of waiting instances");
        let o = options_of(&["--workload", "orchestration", "--waiting", "1000000"]).unwrap();
        assert_eq!(o.waiting, 1_000_000);
        let o = options_of(&["--workload", "orchestration", "--waiting", "0"]).unwrap();
        assert_eq!(o.waiting, 0);
        // `all` is every workload but the orchestration one
        let o = options_of(&["--workload", "all"]).unwrap();
        assert!(!o.workloads.contains(&Workload::Orchestration));
        assert_eq!(o.workloads.len(), Workload::ALL.len() - 1);
    }

    #[test]
    fn waiting_is_refused_out_of_range_or_without_the_orchestration_workload() {
        let line = usage_of(&["--workload", "orchestration", "--waiting", "1000001"]);
        assert!(
            line.starts_with("--waiting: 1000001 is out of range"),
            "{line}"
        );
        let line = usage_of(&["--workload", "unordered", "--waiting", "10"]);
        assert!(line.contains("add --workload orchestration"), "{line}");
        let line = usage_of(&["--peers", "temporal"]);
        assert!(line.contains("pgmq, rabbitmq, ceiling, dbos"), "{line}");
    }
}
