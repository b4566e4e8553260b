use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = danmaku::cli::Cli::parse();
    // Before the runtime starts its threads: see the function.
    danmaku::node::limit_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("danmaku: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("danmaku: {e:#}");
            ExitCode::FAILURE
        }
    }
}
