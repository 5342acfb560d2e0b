//! `pore xenstored --socket PATH`: pore's xenstored on a unix socket, in the foreground.
//!
//! It answers like Debian's C xenstored (Xen's clients and tools cannot tell the
//! difference); quotas take C's flags and defaults. SIGTERM or SIGINT shut it down
//! cleanly (connections closed, the socket file removed).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use pore_xenstore::server::{Config, Quotas, Server};

use crate::signals::Signals;

/// Options of `pore xenstored` (quota flags as C xenstored's).
#[derive(clap::Args, Debug)]
pub struct XenstoredArgs {
    /// Unix socket to listen on (clients find it through XENSTORED_PATH).
    #[arg(long)]
    pub socket: PathBuf,
    /// Nodes a domain may own (C's -E).
    #[arg(short = 'E', long, default_value_t = 1000)]
    pub entry_nb: usize,
    /// Largest node record of an unprivileged domain, in bytes (C's -S).
    #[arg(short = 'S', long, default_value_t = 2048)]
    pub entry_size: usize,
    /// Watches per domain (C's -W).
    #[arg(short = 'W', long, default_value_t = 128)]
    pub watch_nb: usize,
    /// Open transactions per connection (C's -t).
    #[arg(short = 't', long, default_value_t = 10)]
    pub transaction: usize,
    /// Longest path below a domain's home (C's -M).
    #[arg(short = 'M', long, default_value_t = 2048)]
    pub path_max: usize,
    /// Permissions per node (C's -A).
    #[arg(short = 'A', long, default_value_t = 5)]
    pub perm_nb: usize,
    /// A quota as C's `-Q <what>=<nb>` (repeatable): `transaction-nodes` (distinct
    /// nodes one transaction may access, default 1024), `memory` (bytes a domain's open
    /// transactions may hold, default 2621440), `outstanding` (accepted, not enforced:
    /// requests are handled one at a time per connection).
    #[arg(short = 'Q', long = "quota", value_name = "WHAT=NB", value_parser = parse_quota)]
    pub quota: Vec<(QuotaName, usize)>,
    /// A privileged domain besides dom0 (C's --priv-domid).
    #[arg(long)]
    pub priv_domid: Option<u32>,
    /// Watch events queued for a client that does not read, before they are dropped.
    #[arg(long, default_value_t = 1024)]
    pub max_queued_events: usize,
}

/// A quota set with `-Q` (C's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaName {
    /// `transaction-nodes`: distinct nodes one transaction may access.
    TransactionNodes,
    /// `memory`: bytes a domain's open transactions may hold.
    Memory,
    /// `outstanding`: outstanding requests per domain (not enforced).
    Outstanding,
}

/// Parses C's `<what>=<nb>` quota syntax.
fn parse_quota(s: &str) -> Result<(QuotaName, usize), String> {
    let (what, nb) = s
        .split_once('=')
        .ok_or_else(|| "quotas must be specified via <what>=<nb>".to_string())?;
    let name = match what {
        "transaction-nodes" => QuotaName::TransactionNodes,
        "memory" => QuotaName::Memory,
        "outstanding" => QuotaName::Outstanding,
        _ => return Err(format!("unknown quota \"{what}\"")),
    };
    let nb = nb
        .parse::<usize>()
        .map_err(|e| format!("quota {what}: {e}"))?;
    Ok((name, nb))
}

/// The quotas given by the flags.
fn quotas(args: &XenstoredArgs) -> Quotas {
    let mut q = Quotas {
        nodes_per_domain: args.entry_nb,
        entry_size: args.entry_size,
        watches_per_domain: args.watch_nb,
        transactions: args.transaction,
        path_max: args.path_max,
        perms_per_node: args.perm_nb,
        ..Quotas::default()
    };
    for &(name, nb) in &args.quota {
        match name {
            QuotaName::TransactionNodes => q.transaction_nodes = nb,
            QuotaName::Memory => q.memory_per_domain = nb,
            QuotaName::Outstanding => {
                tracing::warn!(nb, "-Q outstanding is accepted but not enforced");
            }
        }
    }
    q
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(args: XenstoredArgs) -> ExitCode {
    let signals = match Signals::block() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot block SIGTERM/SIGINT");
            return ExitCode::FAILURE;
        }
    };
    let config = Config {
        quotas: quotas(&args),
        priv_domid: args.priv_domid,
        max_queued_events: args.max_queued_events,
    };
    let server = Server::new(config, None);
    let listener = match server.listen_unix(&args.socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(socket = %args.socket.display(), error = %e, "cannot listen");
            server.shutdown();
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(socket = %args.socket.display(), pid = std::process::id(), "pore xenstored running");
    let sig = loop {
        if let Some(sig) = signals.wait(Duration::from_millis(500)) {
            break sig;
        }
    };
    tracing::info!(signal = sig, "shutting down");
    server.shutdown();
    listener.join();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: XenstoredArgs,
    }

    fn parse(v: &[&str]) -> Result<Quotas, clap::Error> {
        let mut all = vec!["pore-xenstored", "--socket", "/tmp/s"];
        all.extend_from_slice(v);
        Cli::try_parse_from(all).map(|c| quotas(&c.args))
    }

    #[test]
    fn quota_flags_as_c() {
        assert_eq!(parse(&[]).unwrap(), Quotas::default());
        let q = parse(&[
            "-Q",
            "transaction-nodes=16",
            "--quota",
            "memory=4096",
            "-E",
            "7",
        ])
        .unwrap();
        assert_eq!(q.transaction_nodes, 16);
        assert_eq!(q.memory_per_domain, 4096);
        assert_eq!(q.nodes_per_domain, 7);
        assert!(parse(&["-Q", "outstanding=20"]).is_ok());
        assert!(parse(&["-Q", "bogus=1"]).is_err());
        assert!(parse(&["-Q", "memory"]).is_err());
        assert!(parse(&["-Q", "memory=x"]).is_err());
    }
}
