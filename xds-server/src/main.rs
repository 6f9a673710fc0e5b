use clap::Parser;
use std::process::ExitCode;
use xds_server::cli::{self, Cli, Command};
use xds_server::logging;

#[tokio::main]
async fn main() -> ExitCode {
    let command = Cli::parse().command;
    // `up` decides where its logs go once it knows its work directory.
    if !matches!(command, Command::Up(_)) {
        logging::to_stderr("info");
    }
    let result = match command {
        Command::Serve(args) => cli::serve(args).await.map(|_| ExitCode::SUCCESS),
        Command::Bootstrap(args) => cli::bootstrap_command(args)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Validate { paths, mesh } => Ok(if cli::validate(paths, &mesh) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::Crds => {
            print!("{}", crds::manifests());
            Ok(ExitCode::SUCCESS)
        }
        Command::Up(args) => xds_server::runner::up::up(args).await,
        Command::Iptables(args) => cli::iptables(&args).map(|()| ExitCode::SUCCESS),
        Command::Inject(args) => cli::inject(&args).map(|()| ExitCode::SUCCESS),
        Command::Explain(args) => cli::explain(args).await.map(|text| {
            print!("{text}");
            ExitCode::SUCCESS
        }),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}
