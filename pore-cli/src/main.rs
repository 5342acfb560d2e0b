//! `pore`: the command-line face of the pore crates.
//!
//! Citations in this crate's comments and docs: `Dn` is decision *n* of the repository's
//! `docs/decisions.md`; `docs/...` paths are relative to the repository's root.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod backend;
mod demo;
mod signals;
mod sim;
mod straw;
mod xenstored;
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
    /// The main job: two domains of a simulated Xen negotiate a straw through xenstore and
    /// exchange messages; prints the handshake, latency and throughput (`--backend linux`: two
    /// processes of this Xen domain, on real Xen).
    Demo(demo::DemoArgs),
    /// Run a standalone simulated Xen (the broker domain processes connect to).
    Sim(sim::SimArgs),
    /// Run pore's xenstored on a unix socket, in the foreground.
    Xenstored(xenstored::XenstoredArgs),
    /// Open (connect) or accept (listen) one straw and pipe stdin/stdout over it.
    Straw(straw::StrawArgs),
    /// Print the crate versions and exit.
    Version,
    /// Xenstore tools: read, write, ls, rm, mkdir, chmod, watch, list, exists.
    Xs(xs::XsArgs),
}

fn main() -> ExitCode {
    // A domain process spawned by `pore demo` runs its role and exits here.
    demo::run_child_if_any();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match cli.command {
        Command::Version => {
            println!("pore {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Xs(args) => xs::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Straw(args) => straw::run(args),
        Command::Xenstored(args) => xenstored::run(args),
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
