//! `mbx`: the admin CLI of an mbx group, on top of `mbx-messagebox`.
//!
//! Exit codes: 0 success; 2 bad input (one line naming the argument, the problem and a
//! right example; nothing changed); 1 anything else (refusals, database errors).

mod bench;
mod bindings;
mod cli;
mod commands;
mod orchestration;
mod orchestration_instance;
mod output;
mod update;
mod validate;

use std::process::ExitCode;

/// Bad input found by the CLI itself (exit code 2).
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, which turns `mbx status | head` into a panic on the closed
    // pipe; a CLI should end quietly like other Unix tools.
    // SAFETY: called first thing in main, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let parsed = cli::command()
        .try_get_matches()
        .and_then(|m| <cli::Cli as clap::FromArgMatches>::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = err.print();
                return if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // one line: clap's first line, without its "For more information" footer
            let line = mbx_messagebox::usage_line(&err.render().to_string());
            eprintln!("{line} (see --help)");
            return ExitCode::from(2);
        }
    };
    if let cli::Command::Bench { args } = &cli.command {
        return bench::run(
            args,
            cli.database_url.as_deref(),
            cli.output == cli::Output::Json,
        );
    }
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
    // one request after another
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let bad_input = err.downcast_ref::<Usage>().is_some()
                || err
                    .downcast_ref::<mbx_messagebox::Error>()
                    .is_some_and(|e| e.is_bad_input());
            // one line: the outermost context and its causes
            eprintln!("error: {}", mbx_messagebox::one_line(&*err));
            if bad_input {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
