//! `mbx-bench`: the benchmark's own binary. `mbx bench ARGS` runs it (it sits next to
//! `mbx`), so the production `mbx` links none of the benchmark's peers (pgmq, lapin, the
//! echo service).
//!
//! Exit codes: 0 success; 2 bad input (one line naming the argument, the problem and a
//! right example); 1 anything else.

mod args;

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use mbx_bench::measure::Progress;
use mbx_bench::report;

use args::{BenchArgs, Usage};
use clap::Parser as _;

fn main() -> ExitCode {
    // `mbx-bench --json | head` ends quietly, as `mbx` does
    // SAFETY: called first thing in main, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = match BenchArgs::try_parse() {
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
            // one line: clap's first line, without its "For more information" footer
            let line = mbx_messagebox::usage_line(&err.render().to_string());
            eprintln!("{line} (see --help)");
            return ExitCode::from(2);
        }
    };
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        use tracing_subscriber::Layer as _;
        // whatever MBX_LOG says, the wire-level tracing of the clients stays off
        let (chosen, cap, warning) = mbx_messagebox::logs::filters("warn,sqlx=error,lapin=off");
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        tracing_subscriber::registry()
            .with(chosen)
            .with(layer.with_filter(cap))
            .init();
        if let Some(warning) = warning {
            eprintln!("warning: {warning}");
        }
    }
    // the benchmark's publishers and peers need more than one thread
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
    match runtime.block_on(bench(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // one line: the outermost context and its causes
            eprintln!("error: {}", mbx_messagebox::one_line(&*err));
            if err.downcast_ref::<Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn bench(args: &BenchArgs) -> Result<()> {
    let url = args.database_url.as_deref().ok_or_else(|| {
        Usage("--database-url: not set; pass --database-url postgres://USER@HOST:5432/DB or set MBX_DATABASE_URL".into())
    })?;
    let options = args::options(args, url)?;
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
    if args.json || args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report::render_table(&report));
    }
    Ok(())
}
