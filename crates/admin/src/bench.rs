//! `mbx bench ARGS`: runs `mbx-bench ARGS`, the benchmark's own binary next to this
//! `mbx` (so `mbx` links none of the benchmark's peers). The process becomes mbx-bench
//! (exec): its stdin, stdout, stderr, signals and exit code are the command's.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::process::ExitCode;

/// The benchmark binary's name, looked for next to `mbx`.
const BENCH_BIN: &str = "mbx-bench";

/// Replaces this process with `mbx-bench ARGS`; returns only when that cannot be done
/// (one line on stderr, exit 1). `database_url` (from `--database-url` or the
/// environment) reaches it as `MBX_DATABASE_URL`, `--output json` as `--json`.
pub fn run(args: &[OsString], database_url: Option<&str>, json: bool) -> ExitCode {
    let path = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name(BENCH_BIN),
        Err(e) => {
            eprintln!("error: mbx bench: cannot locate the mbx binary to find {BENCH_BIN} next to it: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !path.is_file() {
        eprintln!(
            "error: mbx bench runs {BENCH_BIN}, which is not next to mbx ({} does not exist); build it with `cargo build --release --bins`",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    let mut command = std::process::Command::new(&path);
    command.args(args);
    if json {
        command.arg("--json");
    }
    if let Some(url) = database_url {
        command.env("MBX_DATABASE_URL", url);
    }
    let err = command.exec();
    eprintln!("error: mbx bench: cannot run {}: {err}", path.display());
    ExitCode::FAILURE
}
