//! `mbx bench`: argument checking and output; the benchmark itself is `mbx-bench`.

use std::time::Duration;

use anyhow::{Context, Result};
use mbx_bench::mbx::Workload;
use mbx_bench::measure::Progress;
use mbx_bench::report::{self, Options, Peer};

use crate::cli::BenchArgs;
use crate::Usage;

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
        Workload::ALL.to_vec()
    } else {
        list(
            "--workload",
            &args.workload,
            Workload::parse,
            "unordered, ordered, fanout, many-ordered, ordered-by, forward, request-response, amqp, all",
        )?
    };
    if workloads.is_empty() {
        return Err(Usage(
            "--workload: empty; use one of unordered, ordered, fanout, many-ordered, ordered-by, forward, request-response, amqp, all".into(),
        )
        .into());
    }
    let peers = list(
        "--peers",
        &args.peers,
        Peer::parse,
        "pgmq, rabbitmq, ceiling",
    )?;
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
            .context("locating the mbx binary")?
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
    })
}

pub async fn bench(url: &str, args: &BenchArgs, json_out: bool) -> Result<()> {
    let options = options(args, url)?;
    if !options.host_bin.is_file() {
        return Err(Usage(format!(
            "--host-bin: {} does not exist; build it with `cargo build --release --bins` or pass --host-bin PATH",
            options.host_bin.display()
        ))
        .into());
    }
    let progress = Progress::new(false);
    let report = report::run(&options, &progress)
        .await
        .context("mbx bench")?;
    if json_out || args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report::render_table(&report));
    }
    Ok(())
}
