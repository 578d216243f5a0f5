//! The `tracebench` command: parse the flags, run the subcommand, exit with
//! its code (0 ok, 1 too many failed requests or a missed selfcheck target,
//! 2 bad usage or a fatal error, 130 interrupted).

use clap::Parser;

fn main() {
    let cli = tracebench::cli::Cli::parse();
    let runtime = match tracebench::runtime::build(cli.worker_threads(), cli.idle_spin()) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = match runtime.block_on(tracebench::commands::run_command(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}
