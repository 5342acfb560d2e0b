//! `pore sim`: a standalone simulated Xen (D19).
//!
//! Runs the pore-backend-sim broker as threads of this process and prints the socket path in
//! the form a shell can `export`; domain processes (`SimDomain::connect()`) reach it through
//! `PORE_SIM_SOCKET`. It runs until `--duration` elapses or SIGTERM/SIGINT comes (either way it
//! removes its sockets); with `--watch` it prints domains as they come and go.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use pore_backend_sim::{Hypervisor, PeerClose};

use crate::signals::Signals;

/// Arguments of `pore sim`.
#[derive(Args, Debug)]
pub struct SimArgs {
    /// Listen on this unix socket path (default: a fresh path in the temp directory).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Stop after this many seconds (default: run until killed).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Print a line whenever a domain is created or dies.
    #[arg(long)]
    watch: bool,
    /// Also serve the embedded xenstored to dom0 tools on this unix socket (default: a fresh path
    /// beside the broker's socket). Domains always reach it through their own store rings.
    #[arg(long, value_name = "PATH")]
    xenstored_socket: Option<PathBuf>,
    /// What the remote end of an event channel sees when its peer closes it (or dies):
    /// `reported` (the simulator's affordance: `PeerGone`) or `silent` (as Xen: nothing; the
    /// death shows only in xenstore and through unmap-notify).
    #[arg(long, value_name = "MODE", default_value = "reported", value_parser = parse_peer_close)]
    peer_close: PeerClose,
}

fn parse_peer_close(s: &str) -> Result<PeerClose, String> {
    match s {
        "reported" => Ok(PeerClose::Reported),
        "silent" => Ok(PeerClose::Silent),
        other => Err(format!("{other:?}: expected `reported` or `silent`")),
    }
}

/// Runs `pore sim`.
pub fn run(args: SimArgs) -> ExitCode {
    // Before any thread starts: SIGTERM/SIGINT end the run cleanly (the sockets are removed).
    let signals = match Signals::block() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pore sim: cannot block SIGTERM/SIGINT: {e}");
            return ExitCode::FAILURE;
        }
    };
    let hv = match Hypervisor::start_at(args.socket.as_deref()) {
        Ok(hv) => hv,
        Err(e) => {
            eprintln!("pore sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    hv.set_peer_close(args.peer_close);
    let Some(path) = hv.socket_path() else {
        eprintln!("pore sim: the broker has no socket");
        return ExitCode::FAILURE;
    };
    // The toolstack (D19): every domain gets /local/domain/<id> and a store ring to the
    // embedded xenstored, which dom0 tools reach on a unix socket.
    let Some(server) = hv.xenstored() else {
        eprintln!("pore sim: the simulated hypervisor has no xenstored");
        return ExitCode::FAILURE;
    };
    let xs_path = args
        .xenstored_socket
        .clone()
        .unwrap_or_else(|| path.with_extension("xenstored"));
    let listener = match server.listen_unix(&xs_path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pore sim: xenstored on {}: {e}", xs_path.display());
            return ExitCode::FAILURE;
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "PORE_SIM_SOCKET={}", path.display());
        let _ = writeln!(out, "XENSTORED_PATH={}", xs_path.display());
        let _ = out.flush();
    }
    tracing::info!(socket = %path.display(), "simulated Xen running");
    let deadline = args
        .duration
        .filter(|d| d.is_finite() && *d >= 0.0)
        .map(|d| Instant::now() + Duration::from_secs_f64(d));
    let mut known: BTreeMap<u16, String> = BTreeMap::new();
    loop {
        if args.watch {
            let now: BTreeMap<u16, String> =
                hv.domains().into_iter().map(|(d, n)| (d.0, n)).collect();
            for (d, name) in &now {
                if !known.contains_key(d) {
                    println!("domain {d} ({name}) created");
                }
            }
            for (d, name) in &known {
                if !now.contains_key(d) {
                    println!("domain {d} ({name}) died");
                }
            }
            let _ = std::io::stdout().flush();
            known = now;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if let Some(sig) = signals.wait(Duration::from_millis(100)) {
            tracing::info!(signal = sig, "pore sim: stopping");
            break;
        }
    }
    server.shutdown();
    listener.join();
    let _ = std::fs::remove_file(&xs_path);
    ExitCode::SUCCESS
}
