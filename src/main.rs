//! The `tracebench` command: parse the flags, run the subcommand, exit with
//! its code (0 ok, 1 too many failed requests or a missed selfcheck target,
//! 2 bad usage or a fatal error, 130 interrupted).

use clap::Parser;

fn main() {
    let cli = tracebench::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.worker_threads())
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = match runtime.block_on(tracebench::commands::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}
