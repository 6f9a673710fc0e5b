//! `xds-load`: the benchmark's load and mesh generator (see `load/`).

use clap::Parser;
use std::process::ExitCode;
use xds_server::load::cli::{LoadCli, main as load_main};
use xds_server::logging;

#[tokio::main]
async fn main() -> ExitCode {
    logging::to_stderr("info");
    match load_main(LoadCli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
