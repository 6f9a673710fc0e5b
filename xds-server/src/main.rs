use clap::Parser;
use std::process::ExitCode;
use xds_server::cli::{self, Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Serve(args) => cli::serve(args).await.map(|_| ExitCode::SUCCESS),
        Command::Bootstrap(args) => cli::bootstrap(args).map(|y| {
            print!("{y}");
            ExitCode::SUCCESS
        }),
        Command::Validate { paths, mesh } => Ok(if cli::validate(paths, &mesh) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::Crds => {
            print!("{}", crds::manifests());
            Ok(ExitCode::SUCCESS)
        }
        Command::Up(args) => xds_server::runner::mesh::up(args).await,
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}
