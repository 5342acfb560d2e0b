//! `pore straw listen|connect`: one straw, piped to stdin and stdout.
//!
//! Each read from stdin (up to 64 KiB) becomes one raw frame; every frame received is written to
//! stdout. End of stdin starts a graceful close; the command exits 0 once both directions are
//! drained (everything we sent was consumed and the peer closed its side).

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use pore_core::{Backend, DomId};
use pore_straw::handshake::Config;
use pore_straw::manager::{Manager, ManagerConfig};
use pore_straw::straw::{Straw, StrawIoError};
use pore_straw::xenstore::XsAdapter;
use pore_straw::{Endpoint, Format};
use pore_xenstore::Client;

use crate::backend::{self, BackendChoice};

/// Largest frame made of one stdin read.
const CHUNK: usize = 64 << 10;

/// Options of `pore straw`.
#[derive(Args, Debug)]
pub struct StrawArgs {
    #[command(subcommand)]
    command: StrawCommand,
    /// Which Xen to use: real Xen through /dev/xen, the simulated one (found through
    /// PORE_SIM_SOCKET, see `pore sim`), or auto: real Xen where /dev/xen/evtchn exists, else the
    /// simulated one.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, global = true)]
    backend: BackendChoice,
    /// Endpoint name: the straw lives under `data/straw-<name>`; empty keeps LING's
    /// `data/straw` (and talks to LING domains).
    #[arg(long, default_value = "", global = true)]
    name: String,
    /// Seconds to wait for the handshake.
    #[arg(long, default_value_t = 10.0, global = true)]
    timeout: f64,
    /// Send every received frame back instead of piping stdin/stdout (a test peer for other
    /// implementations of the strawman); ends once the peer half-closes.
    #[arg(long, global = true)]
    echo: bool,
}

#[derive(Subcommand, Debug)]
enum StrawCommand {
    /// Accept one straw, then pipe stdin/stdout over it.
    Listen {
        /// Accept only a straw from this domain.
        #[arg(long)]
        from: Option<u16>,
    },
    /// Open a straw to DOMID, then pipe stdin/stdout over it.
    Connect {
        /// The listening domain.
        domid: u16,
    },
}

/// Runs `pore straw`.
pub fn run(args: StrawArgs) -> ExitCode {
    match straw(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pore straw: {e}");
            ExitCode::FAILURE
        }
    }
}

fn straw(args: &StrawArgs) -> Result<(), String> {
    match args.backend.resolve()? {
        BackendChoice::Linux => {
            let (xen, domid, client) = backend::open_linux()?;
            straw_on(args, xen, domid, client)
        }
        _ => {
            let (dom, domid, client) = backend::open_sim()?;
            straw_on(args, dom, domid, client)
        }
    }
}

/// Runs one straw on any backend, given a xenstore client of the domain `domid`.
fn straw_on<B: Backend + Send + Sync + 'static>(
    args: &StrawArgs,
    dom: B,
    domid: DomId,
    client: Client,
) -> Result<(), String> {
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .map_err(|e| format!("bad --timeout {}: {e}", args.timeout))?;
    let me = Endpoint::new(domid, &args.name).map_err(|e| format!("bad --name: {e:?}"))?;
    let cfg = ManagerConfig {
        handshake: Config {
            handshake_timeout: timeout,
            format: Format::Raw,
            ..Config::default()
        },
        ..ManagerConfig::default()
    };
    let manager = Manager::start(dom, XsAdapter::new(Arc::new(client)), me.clone(), cfg)
        .map_err(|e| format!("starting the straw manager: {e}"))?;
    let straw = match &args.command {
        StrawCommand::Listen { from } => {
            eprintln!(
                "pore straw: listening as domain {} (endpoint {me})",
                me.domid.0
            );
            accept_from(&manager, *from, timeout)?
        }
        StrawCommand::Connect { domid } => {
            let peer = Endpoint::new(DomId(*domid), &args.name)
                .map_err(|e| format!("bad peer domain {domid}: {e:?}"))?;
            manager
                .open(&peer)
                .map_err(|e| format!("opening a straw to {peer}: {e}"))?
        }
    };
    eprintln!(
        "pore straw: connected to {} ({:?}, {:?})",
        straw.peer(),
        straw.layout(),
        straw.format()
    );
    let result = if args.echo { echo(straw) } else { pipe(straw) };
    manager.shutdown();
    result
}

fn accept_from<B: Backend + Send + Sync + 'static>(
    manager: &Manager<B, XsAdapter>,
    from: Option<u16>,
    timeout: Duration,
) -> Result<Straw<B>, String> {
    if let Some(d) = from {
        // Refuse other domains' knocks before any page is granted to them.
        manager.admit(Some(Arc::new(move |peer: &Endpoint| {
            peer.domid == DomId(d)
        })));
    }
    manager
        .accept(timeout)
        .map_err(|e| format!("waiting for a straw: {e}"))
}

/// Sends every frame received back to the peer until the peer half-closes, then half-closes and
/// closes.
fn echo<B: Backend + Send + Sync + 'static>(straw: Straw<B>) -> Result<(), String> {
    let (sender, receiver) = straw.split();
    let mut frames = 0u64;
    loop {
        match receiver.recv() {
            Ok(frame) => {
                frames += 1;
                sender
                    .send(frame)
                    .map_err(|e| format!("echoing frame {frames}: {e}"))?
            }
            Err(StrawIoError::Eof) => break,
            Err(e) => return Err(format!("receiving frame {}: {e}", frames + 1)),
        }
    }
    eprintln!("pore straw: echoed {frames} frames");
    sender
        .finish()
        .map_err(|e| format!("half-closing after the peer's end: {e}"))?;
    match sender.close() {
        Ok(()) | Err(StrawIoError::Eof | StrawIoError::Closed) => Ok(()),
        Err(e) => Err(format!("closing: {e}")),
    }
}

/// Pipes stdin into the straw and the straw into stdout until both directions are drained.
///
/// End of stdin half-closes our direction ([`pore_straw::straw::Sender::finish`]: the peer
/// consumes everything, then its receiver ends); the straw is closed once the peer has
/// half-closed too (our receiver ended).
fn pipe<B: Backend + Send + Sync + 'static>(straw: Straw<B>) -> Result<(), String> {
    let (sender, receiver) = straw.split();
    let writer = thread::spawn(move || -> Result<_, String> {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading stdin: {e}")),
            };
            sender
                .send(Bytes::copy_from_slice(&buf[..n]))
                .map_err(|e| format!("sending: {e}"))?;
        }
        sender
            .finish()
            .map_err(|e| format!("half-closing after end of stdin: {e}"))?;
        Ok(sender)
    });
    let mut stdout = std::io::stdout().lock();
    loop {
        match receiver.recv() {
            Ok(frame) => stdout
                .write_all(&frame)
                .and_then(|_| stdout.flush())
                .map_err(|e| format!("writing stdout: {e}"))?,
            Err(StrawIoError::Eof) => break,
            Err(e) => return Err(format!("receiving: {e}")),
        }
    }
    let sender = writer
        .join()
        .unwrap_or_else(|_| Err("the stdin thread panicked".into()))?;
    // Both directions are drained: close (the peer may already have, which is fine).
    match sender.close() {
        Ok(()) | Err(StrawIoError::Eof | StrawIoError::Closed) => Ok(()),
        Err(e) => Err(format!("closing: {e}")),
    }
}
