//! `pore straw listen|connect`: one straw, piped to stdin and stdout.
//!
//! Each read from stdin (up to 64 KiB) becomes one raw frame; every frame received is written to
//! stdout. With `--framed`, stdin and stdout carry whole frames instead, each as a 4-byte
//! little-endian length and its bytes (so empty frames and frames of megabytes pass intact).
//! End of stdin starts a graceful close; the command exits 0 once both directions are
//! drained (everything we sent was consumed and the peer closed its side).
//!
//! `--layout ling` forces the seed's 8-page LING layout (a listener then grants LING, an
//! opener offers nothing else); `--layout v2` (the default) offers or chooses our v2 layout
//! with `--ring-pages` data pages per direction. An error of the data path (e.g. "peer gone")
//! is printed as soon as it is seen, before the straw manager shuts down. On real Xen the
//! command fails if grants, mappings or ports are still held once the manager is down.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use pore_core::{Backend, DomId};
use pore_straw::handshake::HandshakeConfig;
use pore_straw::manager::{Manager, ManagerConfig};
use pore_straw::straw::{Receiver, Sender, Straw, StrawConfig, StrawError};
use pore_straw::xenstore::XsAdapter;
use pore_straw::{Endpoint, Format};
use pore_xenstore::Client;

use crate::backend::{self, BackendChoice};

/// Largest frame made of one stdin read.
const CHUNK: usize = 64 << 10;

/// Largest frame accepted from stdin with `--framed` (pore-straw's default `max_frame`).
const MAX_FRAMED: usize = 16 << 20;

/// The ring layouts `pore straw` can ask for.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutChoice {
    /// Our v2 layout, `--ring-pages` data pages per direction; a LING-only peer still
    /// gets LING.
    V2,
    /// The seed's LING layout only (8 pages, bit-exact with the strawman).
    Ling,
}

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
    /// Ring layout to offer (connect) or choose (listen).
    #[arg(long, value_enum, default_value_t = LayoutChoice::V2, global = true)]
    layout: LayoutChoice,
    /// Data pages per direction of the v2 layout (a power of two).
    #[arg(long, default_value_t = 16, global = true)]
    ring_pages: u32,
    /// stdin and stdout carry whole frames, each a 4-byte little-endian length and its bytes.
    #[arg(long, global = true)]
    framed: bool,
    /// The peer echoes every frame and never half-closes (a LING strawman): end once every
    /// frame sent has come back, instead of waiting for the peer's end.
    #[arg(long, global = true)]
    echoed: bool,
    /// Discard what arrives instead of writing it to stdout, and print on stderr how many
    /// frames and bytes came and at what rate (from the first frame to the last): the
    /// receiving end of a throughput measurement.
    #[arg(long, global = true)]
    sink: bool,
    /// Send this many frames of `--frame-size` bytes instead of reading stdin (a load
    /// generator for throughput measurements).
    #[arg(long, global = true, value_name = "COUNT")]
    generate: Option<u64>,
    /// Size of each `--generate`d frame in bytes.
    #[arg(long, global = true, default_value_t = 64)]
    frame_size: usize,
    /// Ask for polling mode (v2 only): no events either way, each side spins and naps while
    /// it waits. Used only if the peer asks too; otherwise the straw runs with events.
    #[arg(long, global = true)]
    polling: bool,
    /// Seconds one blocked send or receive waits before it looks at the straw again. A live
    /// peer is waited for as long as it lives, however slow (a dead one is "peer gone").
    #[arg(long, default_value_t = 30.0, global = true)]
    io_timeout: f64,
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

/// The handshake's `v2_pages` for `--layout` and `--ring-pages`.
fn v2_pages(args: &StrawArgs) -> Result<Option<u32>, String> {
    match args.layout {
        LayoutChoice::V2 if args.ring_pages.is_power_of_two() => Ok(Some(args.ring_pages)),
        LayoutChoice::V2 => Err(format!(
            "bad --ring-pages {}: not a power of two",
            args.ring_pages
        )),
        LayoutChoice::Ling => Ok(None),
    }
}

fn straw(args: &StrawArgs) -> Result<(), String> {
    v2_pages(args)?;
    match args.backend.resolve()? {
        BackendChoice::Linux => {
            let (xen, domid, client) = backend::open_linux()?;
            let result = straw_on(args, xen.clone(), domid, client);
            let held = xen.outstanding();
            match result {
                Ok(()) if !held.is_clean() => {
                    Err(format!("still held after the manager shut down: {held:?}"))
                }
                Ok(()) => Ok(()),
                Err(e) => {
                    if !held.is_clean() {
                        eprintln!("pore straw: still held after the manager shut down: {held:?}");
                    }
                    Err(e)
                }
            }
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
    let io_timeout = Duration::try_from_secs_f64(args.io_timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("bad --io-timeout {}", args.io_timeout))?;
    let me = Endpoint::new(domid, &args.name).map_err(|e| format!("bad --name: {e:?}"))?;
    let v2_pages = v2_pages(args)?;
    let cfg = ManagerConfig {
        handshake: HandshakeConfig {
            handshake_timeout: timeout,
            format: Format::Raw,
            v2_pages,
            polling: args.polling,
            ..HandshakeConfig::default()
        },
        straw: StrawConfig {
            io_timeout,
            ..StrawConfig::default()
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
        "pore straw: connected to {} ({:?}, {:?}{})",
        straw.peer(),
        straw.layout(),
        straw.format(),
        if straw.is_polling() { ", polling" } else { "" }
    );
    let result = if args.echo {
        echo(straw)
    } else {
        let io = PipeIo {
            framed: args.framed,
            echoed: args.echoed,
            sink: args.sink,
            generate: args.generate.map(|count| (count, args.frame_size)),
        };
        if io.generate.is_some_and(|(_, size)| size > MAX_FRAMED) {
            return Err(format!(
                "--frame-size {}: more than {MAX_FRAMED}",
                args.frame_size
            ));
        }
        pipe(straw, io)
    };
    if let Err(e) = &result {
        // Now, not after the shutdown below (bounded by the close timeout): a script timing
        // how fast a dead peer is noticed reads this line.
        eprintln!("pore straw: {e}");
    }
    manager.shutdown();
    result.map_err(|_| "the straw failed".to_string())
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

/// The next frame, waiting as long as the peer lives (each wait is bounded by the straw's
/// `io_timeout`, after which the straw is looked at again: a lost peer ends the wait).
fn recv_patiently<B: Backend + Send + Sync + 'static>(
    receiver: &Receiver<B>,
) -> Result<Bytes, StrawError> {
    loop {
        match receiver.recv() {
            Err(StrawError::TimedOut) => continue,
            r => return r,
        }
    }
}

/// Sends `frame`, waiting for room as long as the peer lives. A frame the ring took in part
/// ([`StrawError::Queued`]) is finished by the next send or by the half-close.
fn send_patiently<B: Backend + Send + Sync + 'static>(
    sender: &Sender<B>,
    frame: Bytes,
) -> Result<(), StrawError> {
    loop {
        match sender.send(frame.clone()) {
            Ok(()) | Err(StrawError::Queued) => return Ok(()),
            // Nothing of it was taken: offer it again.
            Err(StrawError::TimedOut) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Half-closes once the peer has consumed everything we sent, however long that takes while
/// it lives.
fn finish_patiently<B: Backend + Send + Sync + 'static>(
    sender: &Sender<B>,
) -> Result<(), StrawError> {
    loop {
        match sender.finish() {
            Err(StrawError::TimedOut) => continue,
            r => return r,
        }
    }
}

/// Sends every frame received back to the peer until the peer half-closes, then half-closes and
/// closes. A peer that closes without half-closing first (a LING strawman knows no half-close)
/// ends the echo as well.
fn echo<B: Backend + Send + Sync + 'static>(straw: Straw<B>) -> Result<(), String> {
    let (sender, receiver) = straw.split();
    let mut frames = 0u64;
    loop {
        match recv_patiently(&receiver) {
            Ok(frame) => {
                frames += 1;
                send_patiently(&sender, frame)
                    .map_err(|e| format!("echoing frame {frames}: {e}"))?
            }
            Err(StrawError::Eof) => break,
            Err(e) => return Err(format!("receiving frame {}: {e}", frames + 1)),
        }
    }
    eprintln!("pore straw: echoed {frames} frames");
    match finish_patiently(&sender) {
        // The peer closed the whole straw, not just its direction.
        Ok(()) | Err(StrawError::Eof | StrawError::Closed) => {}
        Err(e) => return Err(format!("half-closing after the peer's end: {e}")),
    }
    match sender.close() {
        Ok(()) | Err(StrawError::Eof | StrawError::Closed) => Ok(()),
        Err(e) => Err(format!("closing: {e}")),
    }
}

/// The next frame of a `--framed` input: `None` at a clean end (between two frames).
fn read_framed(input: &mut impl Read) -> Result<Option<Bytes>, String> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match input.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err("stdin ended inside a frame's length".into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading stdin: {e}")),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAMED {
        return Err(format!(
            "a frame of {len} bytes on stdin: more than {MAX_FRAMED}"
        ));
    }
    let mut frame = vec![0u8; len];
    input
        .read_exact(&mut frame)
        .map_err(|e| format!("reading a frame of {len} bytes from stdin: {e}"))?;
    Ok(Some(Bytes::from(frame)))
}

/// Where [`pipe`] takes frames from and puts them.
#[derive(Clone, Copy, Debug)]
struct PipeIo {
    /// stdin and stdout carry length-prefixed frames.
    framed: bool,
    /// The peer echoes and never half-closes: end once every frame came back.
    echoed: bool,
    /// Count what arrives instead of writing it out.
    sink: bool,
    /// Send (count, size) generated frames instead of stdin.
    generate: Option<(u64, usize)>,
}

/// Pipes stdin into the straw and the straw into stdout until both directions are drained.
///
/// End of stdin half-closes our direction ([`pore_straw::straw::Sender::finish`]: the peer
/// consumes everything, then its receiver ends); the straw is closed once the peer has
/// half-closed too (our receiver ended), or, with `echoed`, once as many frames came back as
/// were sent.
fn pipe<B: Backend + Send + Sync + 'static>(straw: Straw<B>, io: PipeIo) -> Result<(), String> {
    let PipeIo {
        framed,
        echoed,
        sink,
        generate,
    } = io;
    let (sender, receiver) = straw.split();
    // Frames sent so far, and whether stdin has ended (`echoed` ends on both).
    let sent = Arc::new(AtomicU64::new(0));
    let stdin_done = Arc::new(AtomicBool::new(false));
    let (sent_w, done_w) = (sent.clone(), stdin_done.clone());
    let all_back = |received: u64| {
        echoed && stdin_done.load(Ordering::Acquire) && received == sent.load(Ordering::Acquire)
    };
    let writer = thread::spawn(move || -> Result<_, String> {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; CHUNK];
        let mut frames = 0u64;
        let generated = generate.map(|(count, size)| (count, Bytes::from(vec![0xa5; size])));
        loop {
            let frame = if let Some((count, frame)) = &generated {
                if frames == *count {
                    break;
                }
                frame.clone()
            } else if framed {
                match read_framed(&mut stdin)? {
                    Some(f) => f,
                    None => break,
                }
            } else {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => Bytes::copy_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(format!("reading stdin: {e}")),
                }
            };
            frames += 1;
            send_patiently(&sender, frame).map_err(|e| format!("sending frame {frames}: {e}"))?;
            sent_w.store(frames, Ordering::Release);
        }
        done_w.store(true, Ordering::Release);
        finish_patiently(&sender).map_err(|e| format!("half-closing after end of stdin: {e}"))?;
        if generated.is_some() {
            let stats = sender.stats();
            eprintln!(
                "pore straw: sent {frames} frames, {} bytes; events sent {}, sleeps {}",
                stats.bytes_sent, stats.notifies, stats.sleeps
            );
        }
        Ok(sender)
    });
    let mut stdout = std::io::stdout().lock();
    let mut frames = 0u64;
    // A sink reads the clock at its first frame and at the end of the stream only (in a Xen PV
    // guest without a stable TSC every clock read is a system call).
    let (mut bytes, mut first) = (0u64, None);
    while !all_back(frames) {
        // With `echoed`, a short wait: stdin may end just after the last frame came back.
        let next = if echoed {
            receiver.recv_timeout(Duration::from_millis(100))
        } else {
            receiver.recv()
        };
        match next {
            // Looked at again: stdin may have ended with every frame back.
            Err(StrawError::TimedOut) => continue,
            Ok(frame) if sink => {
                frames += 1;
                bytes += frame.len() as u64;
                if first.is_none() {
                    first = Some(Instant::now());
                }
            }
            Ok(frame) => {
                frames += 1;
                let len = u32::try_from(frame.len()).map_err(|_| "a frame over 4 GiB")?;
                let head = if framed { &len.to_le_bytes()[..] } else { &[] };
                stdout
                    .write_all(head)
                    .and_then(|_| stdout.write_all(&frame))
                    .and_then(|_| stdout.flush())
                    .map_err(|e| format!("writing stdout: {e}"))?
            }
            Err(StrawError::Eof) => break,
            Err(e) => return Err(format!("receiving frame {}: {e}", frames + 1)),
        }
    }
    if sink {
        let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
        let rate = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
        let stats = receiver.stats();
        eprintln!(
            "pore straw: received {frames} frames, {bytes} bytes; first frame to end of stream {secs:.3} s: \
             {:.1} MB/s, {:.0} frames/s; events sent {}, sleeps {}",
            rate(bytes as f64) / 1e6,
            rate(frames as f64),
            stats.notifies,
            stats.sleeps
        );
    }
    let sender = writer
        .join()
        .unwrap_or_else(|_| Err("the stdin thread panicked".into()))?;
    // Both directions are drained: close (the peer may already have, which is fine).
    match sender.close() {
        Ok(()) | Err(StrawError::Eof | StrawError::Closed) => Ok(()),
        Err(e) => Err(format!("closing: {e}")),
    }
}
