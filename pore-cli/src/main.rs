//! `pore`: the command-line face of the pore crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod xs;

/// Communication between Xen domains: shared pages plus an event channel.
#[derive(Parser)]
#[command(name = "pore", version, about)]
struct Cli {
    /// More logging (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the crate versions and exit.
    Version,
    /// Xenstore tools: read, write, ls, rm, mkdir, chmod, watch, list, exists.
    Xs(xs::XsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match cli.command {
        Command::Version => {
            println!("pore {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Xs(args) => xs::run(args),
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
