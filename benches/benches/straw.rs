//! Straw throughput between two processes, with a unix socket and a pipe measured in the same
//! run.
//!
//! Every contender is a pair of processes (this executable re-run in a role, through
//! `pore_backend_sim::process`): a sender that writes `count` messages of one size, one send per
//! message, then waits for a one-byte acknowledgement, and a receiver that takes each message
//! whole and acknowledges the last. The sender's clock runs from its first send to the
//! acknowledgement. Senders are pinned to CPU 0 and receivers to CPU 1, every contender alike
//! (`PORE_BENCH_NO_PIN=1` leaves placement to the scheduler: on this 2-vCPU VM the straws'
//! spin then wins or loses by where the two processes land). Contenders:
//!
//! * straws between two domains of the simulated Xen (the parent runs the broker and the embedded
//!   xenstored; each domain reaches xenstore through its own store ring), opened by the straw
//!   managers' handshake, raw format, blocking sends and receives with the default
//!   `StrawConfig` (a 20 µs spin before sleeping): the LING layout (16 KiB per direction), v2
//!   with 8 data pages (32 KiB), with 16 (64 KiB) and with 64 (256 KiB, about the socket's
//!   default send buffer); v2 with 16 and 64 pages without the spin (`spin` zero: every
//!   wait sleeps on the event channel at once); and v2 with 16 pages in polling mode, asked
//!   for by both sides' `HandshakeConfig::polling` (no wake flags, no events: a wait spins
//!   and yields for its first `StrawConfig::poll_sleep`, then naps between spins);
//! * a connected unix stream socket pair with its default buffers (the receiver listens on a
//!   path, the sender connects: the same kernel object as `socketpair(2)`);
//! * a pipe (a FIFO, the same kernel object as `pipe(2)`, 64 KiB by default), with a second
//!   FIFO for the acknowledgement.
//!
//! The socket and pipe senders write each message as a 4-byte length prefix and the payload
//! in one `write`; their receivers read exactly the prefix and then the payload, through a
//! 64 KiB `BufReader` (a straw receiver also takes whole frames out of a ring without a
//! system call per message; `PORE_BENCH_READ_BUF=0` reads both straight from the kernel).
//!
//! Cells are a fixed volume per message size (256 MiB at 64 KiB, 64 MiB at 4 KiB, 16 MiB at
//! 16 B); contenders are interleaved in rounds (3 by default) and the median is printed, with the
//! ratio to the socket and, for straws, the events (notifications) per message each way.
//! Goal: v2 ≥ 1.5× the socket at 64 KiB.
//!
//! `cargo bench -p pore-benches --bench straw`; without `--bench` (`cargo test --benches`) a
//! smoke run of a few messages per cell. `PORE_BENCH_ROUNDS` and `PORE_BENCH_SCALE` (divides
//! the volumes) override the defaults; `PORE_BENCH_STRAW_PAGES=16,64` keeps only those straws
//! (and the socket, which every ratio needs; not the pipe) and `PORE_BENCH_SIZES=65536` only
//! those message sizes, e.g. to run one cell under a profiler.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pore_backend_sim::process::{self, DomainProcess};
use pore_backend_sim::{Hypervisor, SimDomain};
use pore_core::DomId;
use pore_straw::manager::{Manager, ManagerConfig};
use pore_straw::straw::{StrawConfig, StrawError};
use pore_straw::xenstore::XsAdapter;
use pore_straw::{Endpoint, Format, HandshakeConfig, Layout};
use pore_xenstore::transport::RingTransport;
use pore_xenstore::{Client, Config as ClientConfig};

/// How long any one step may take before the bench gives up.
const LONG: Duration = Duration::from_secs(120);
/// Message sizes and the bytes moved per cell at each.
const CELLS: [(usize, u64); 3] = [(16, 16 << 20), (4 << 10, 64 << 20), (64 << 10, 256 << 20)];
/// The straws measured: v2 data pages per direction (0 for the LING layout), the spin
/// before sleeping in µs (`None`: the default `StrawConfig::spin`), and polling mode.
const STRAWS: [(u32, Option<u64>, bool); 7] = [
    (0, None, false),
    (8, None, false),
    (16, None, false),
    (64, None, false),
    (16, Some(0), false),
    (64, Some(0), false),
    (16, None, true),
];

// ---------------------------------------------------------------------------------------------
// The children

fn child_role(role: &str, args: &[String]) -> i32 {
    // Senders on CPU 0, receivers on CPU 1, every contender alike, so that the scheduler's
    // placement does not decide a cell (`PORE_BENCH_NO_PIN=1` leaves it to the scheduler).
    pore_benches::pin(if role.ends_with("-tx") { 0 } else { 1 });
    let result = match role {
        "straw-rx" => straw_rx(args),
        "straw-tx" => straw_tx(args),
        "sock-rx" => sock_rx(args),
        "sock-tx" => sock_tx(args),
        "pipe-rx" => pipe_rx(args),
        "pipe-tx" => pipe_tx(args),
        other => Err(format!("unknown role {other}")),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            process::report(&format!("error {role}: {e}"));
            1
        }
    }
}

/// The parent's next `go <size> <count>`; `None` on `quit` (or a vanished parent).
fn next_command() -> Option<(usize, u64)> {
    let line = process::listen(Duration::from_secs(3600)).ok()?;
    let mut w = line.split_whitespace();
    if w.next()? != "go" {
        return None;
    }
    Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
}

/// A spin argument: µs, or `default`.
fn spin_arg(args: &[String], i: usize) -> Result<Option<u64>, String> {
    match args.get(i).map(String::as_str) {
        Some("default") => Ok(None),
        _ => arg(args, i).map(Some),
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> Result<T, String> {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("argument {i} missing or malformed in {args:?}"))
}

type BenchManager = Manager<SimDomain, XsAdapter>;

/// This domain's straw manager, on xenstore reached through its own store ring.
fn start_manager(
    pages: u32,
    spin_us: Option<u64>,
    polling: bool,
) -> Result<(BenchManager, Endpoint), String> {
    let dom = SimDomain::connect().map_err(|e| format!("reaching the hypervisor: {e}"))?;
    let ring = RingTransport::open_store(&dom).map_err(|e| format!("store ring: {e}"))?;
    let client = Client::with_transport(Box::new(ring), ClientConfig::default())
        .map_err(|e| format!("xenstore client: {e}"))?;
    let me = Endpoint::seed(dom.id());
    let defaults = StrawConfig::default();
    let cfg = ManagerConfig {
        handshake: HandshakeConfig {
            v2_pages: (pages > 0).then_some(pages),
            format: Format::Raw,
            polling,
            ..HandshakeConfig::default()
        },
        straw: StrawConfig {
            io_timeout: LONG,
            spin: spin_us.map_or(defaults.spin, Duration::from_micros),
            ..StrawConfig::default()
        },
        ..ManagerConfig::default()
    };
    let manager = Manager::start(dom, XsAdapter::new(Arc::new(client)), me.clone(), cfg)
        .map_err(|e| format!("starting the straw manager: {e}"))?;
    Ok((manager, me))
}

/// The receiving domain: `straw-rx <pages> <spin> <polling>`. Accepts one straw, then per command receives the
/// messages and acknowledges them; reports `rx <events sent> <sleeps>`.
fn straw_rx(args: &[String]) -> Result<(), String> {
    let (manager, me) = start_manager(arg(args, 0)?, spin_arg(args, 1)?, arg(args, 2)?)?;
    process::report(&format!("ready {}", me.domid.0));
    let straw = manager
        .accept(LONG)
        .map_err(|e| format!("accepting: {e}"))?;
    process::report(&format!(
        "accepted {:?} polling {}",
        straw.layout(),
        straw.is_polling()
    ));
    while let Some((size, count)) = next_command() {
        let (before, cpu) = (straw.stats(), cpu_nanos());
        for i in 0..count {
            let frame = straw
                .receiver()
                .recv_timeout(LONG)
                .map_err(|e| format!("receiving message {i}: {e}"))?;
            if frame.len() != size {
                return Err(format!("message {i} has {} bytes, not {size}", frame.len()));
            }
        }
        straw
            .sender()
            .send(Bytes::from_static(b"A"))
            .map_err(|e| format!("acknowledging: {e}"))?;
        let after = straw.stats();
        process::report(&format!(
            "rx {} {} {}",
            after.notifies - before.notifies,
            after.sleeps - before.sleeps,
            cpu_nanos() - cpu
        ));
    }
    // The sender closes first; we see the end of its stream.
    match straw.receiver().recv_timeout(LONG) {
        Err(StrawError::Eof) => {}
        other => return Err(format!("expected the peer's close, got {other:?}")),
    }
    drop(straw);
    manager.shutdown();
    Ok(())
}

/// The sending domain: `straw-tx <peer domid> <pages> <spin> <polling>`. Opens the straw, then per command
/// sends the messages and waits for the acknowledgement; reports `tx <nanos> <events sent>
/// <sleeps>`.
fn straw_tx(args: &[String]) -> Result<(), String> {
    let peer = DomId(arg(args, 0)?);
    let (manager, _me) = start_manager(arg(args, 1)?, spin_arg(args, 2)?, arg(args, 3)?)?;
    let straw = manager
        .open(&Endpoint::seed(peer))
        .map_err(|e| format!("opening a straw to dom{}: {e}", peer.0))?;
    process::report(&format!(
        "opened {:?} polling {}",
        straw.layout(),
        straw.is_polling()
    ));
    while let Some((size, count)) = next_command() {
        let body = Bytes::from(vec![0xa5u8; size]);
        let (before, cpu) = (straw.stats(), cpu_nanos());
        let t = Instant::now();
        for i in 0..count {
            straw
                .sender()
                .send(body.clone())
                .map_err(|e| format!("sending message {i}: {e}"))?;
        }
        let ack = straw
            .receiver()
            .recv_timeout(LONG)
            .map_err(|e| format!("waiting for the acknowledgement: {e}"))?;
        let nanos = t.elapsed().as_nanos();
        if ack.as_ref() != b"A" {
            return Err(format!("odd acknowledgement {ack:?}"));
        }
        let after = straw.stats();
        process::report(&format!(
            "tx {nanos} {} {} {}",
            after.notifies - before.notifies,
            after.sleeps - before.sleeps,
            cpu_nanos() - cpu
        ));
    }
    straw.close().map_err(|e| format!("closing: {e}"))?;
    manager.shutdown();
    Ok(())
}

/// This process's CPU time (all threads, user and system), in nanoseconds.
fn cpu_nanos() -> u128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
}

/// A message as the socket and pipe senders write it: 4-byte length, payload.
fn prefixed(size: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(4 + size);
    m.extend_from_slice(&(size as u32).to_be_bytes());
    m.resize(4 + size, 0xa5);
    m
}

/// The socket and pipe receivers' read buffer: 64 KiB, or `PORE_BENCH_READ_BUF` bytes (0: every
/// prefix and payload is read straight from the kernel, two `read`s per message at least).
fn read_buffer() -> usize {
    env_or("PORE_BENCH_READ_BUF", 64 << 10) as usize
}

/// Reads `count` length-prefixed messages of `size` bytes, each exactly.
fn read_messages(r: &mut impl Read, size: usize, count: u64) -> Result<(), String> {
    let mut buf = vec![0u8; size];
    for i in 0..count {
        let mut len = [0u8; 4];
        r.read_exact(&mut len)
            .map_err(|e| format!("reading the length of message {i}: {e}"))?;
        let len = u32::from_be_bytes(len) as usize;
        if len != size {
            return Err(format!("message {i} has {len} bytes, not {size}"));
        }
        r.read_exact(&mut buf)
            .map_err(|e| format!("reading message {i}: {e}"))?;
    }
    Ok(())
}

/// Sends `count` messages, one `write` each, then waits for the one-byte acknowledgement;
/// returns the nanoseconds it took.
fn write_messages(
    w: &mut impl Write,
    ack: &mut impl Read,
    size: usize,
    count: u64,
) -> Result<u128, String> {
    let msg = prefixed(size);
    let t = Instant::now();
    for i in 0..count {
        w.write_all(&msg)
            .map_err(|e| format!("writing message {i}: {e}"))?;
    }
    let mut a = [0u8; 1];
    ack.read_exact(&mut a)
        .map_err(|e| format!("waiting for the acknowledgement: {e}"))?;
    Ok(t.elapsed().as_nanos())
}

/// `sock-rx <path>`: listens, accepts the sender, then serves commands.
fn sock_rx(args: &[String]) -> Result<(), String> {
    let path: PathBuf = arg::<String>(args, 0)?.into();
    let listener = UnixListener::bind(&path).map_err(|e| format!("binding: {e}"))?;
    process::report("ready");
    let (stream, _) = listener.accept().map_err(|e| format!("accepting: {e}"))?;
    let _ = std::fs::remove_file(&path);
    let mut reader = BufReader::with_capacity(read_buffer(), &stream);
    while let Some((size, count)) = next_command() {
        let cpu = cpu_nanos();
        read_messages(&mut reader, size, count)?;
        (&stream)
            .write_all(b"A")
            .map_err(|e| format!("acknowledging: {e}"))?;
        process::report(&format!("rx 0 0 {}", cpu_nanos() - cpu));
    }
    Ok(())
}

/// `sock-tx <path>`: connects, reports the socket's buffer sizes, then serves commands.
fn sock_tx(args: &[String]) -> Result<(), String> {
    let path: String = arg(args, 0)?;
    let stream = UnixStream::connect(&path).map_err(|e| format!("connecting: {e}"))?;
    let snd = rustix::net::sockopt::socket_send_buffer_size(&stream).unwrap_or(0);
    let rcv = rustix::net::sockopt::socket_recv_buffer_size(&stream).unwrap_or(0);
    process::report(&format!("connected sndbuf {snd} rcvbuf {rcv}"));
    while let Some((size, count)) = next_command() {
        let cpu = cpu_nanos();
        let nanos = write_messages(&mut &stream, &mut &stream, size, count)?;
        process::report(&format!("tx {nanos} 0 0 {}", cpu_nanos() - cpu));
    }
    Ok(())
}

/// `pipe-rx <data fifo> <ack fifo>`.
fn pipe_rx(args: &[String]) -> Result<(), String> {
    let data = File::open(arg::<String>(args, 0)?).map_err(|e| format!("data fifo: {e}"))?;
    let mut ack = OpenOptions::new()
        .write(true)
        .open(arg::<String>(args, 1)?)
        .map_err(|e| format!("ack fifo: {e}"))?;
    let mut reader = BufReader::with_capacity(read_buffer(), data);
    while let Some((size, count)) = next_command() {
        let cpu = cpu_nanos();
        read_messages(&mut reader, size, count)?;
        ack.write_all(b"A")
            .map_err(|e| format!("acknowledging: {e}"))?;
        process::report(&format!("rx 0 0 {}", cpu_nanos() - cpu));
    }
    Ok(())
}

/// `pipe-tx <data fifo> <ack fifo>`: opens both (in the receiver's order), reports the pipe's
/// size, then serves commands.
fn pipe_tx(args: &[String]) -> Result<(), String> {
    let mut data = OpenOptions::new()
        .write(true)
        .open(arg::<String>(args, 0)?)
        .map_err(|e| format!("data fifo: {e}"))?;
    let mut ack = File::open(arg::<String>(args, 1)?).map_err(|e| format!("ack fifo: {e}"))?;
    let size = rustix::pipe::fcntl_getpipe_size(&data).unwrap_or(0);
    process::report(&format!("connected pipe {size}"));
    while let Some((size, count)) = next_command() {
        let cpu = cpu_nanos();
        let nanos = write_messages(&mut data, &mut ack, size, count)?;
        process::report(&format!("tx {nanos} 0 0 {}", cpu_nanos() - cpu));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The parent

/// One contender: its two processes.
struct Pair {
    name: String,
    /// Bytes of buffering per direction, as printed.
    buffer: String,
    straw: bool,
    tx: DomainProcess,
    rx: DomainProcess,
}

/// What one cell measured.
#[derive(Debug, Clone, Copy)]
struct Sample {
    nanos: u128,
    tx_events: u64,
    rx_events: u64,
    tx_sleeps: u64,
    rx_sleeps: u64,
    /// CPU nanoseconds of the busier process.
    cpu: u128,
}

fn report_of(p: &mut DomainProcess, who: &str) -> Result<String, String> {
    let line = p
        .read_report(LONG)
        .map_err(|e| format!("{who}: no report: {e}"))?;
    if line.starts_with("error ") {
        return Err(format!("{who}: {line}"));
    }
    Ok(line)
}

fn numbers(line: &str, word: &str) -> Result<Vec<u128>, String> {
    let rest = line
        .strip_prefix(word)
        .ok_or_else(|| format!("expected {word:?}, got {line:?}"))?;
    rest.split_whitespace()
        .map(|s| s.parse().map_err(|_| format!("malformed report {line:?}")))
        .collect()
}

impl Pair {
    fn run(&mut self, size: usize, count: u64) -> Result<Sample, String> {
        let go = format!("go {size} {count}");
        self.rx.tell(&go).map_err(|e| e.to_string())?;
        self.tx.tell(&go).map_err(|e| e.to_string())?;
        let tx = numbers(&report_of(&mut self.tx, &self.name)?, "tx ")?;
        let rx = numbers(&report_of(&mut self.rx, &self.name)?, "rx ")?;
        let (&[nanos, tx_events, tx_sleeps, tx_cpu], &[rx_events, rx_sleeps, rx_cpu]) =
            (&tx[..], &rx[..])
        else {
            return Err(format!("{}: malformed reports {tx:?} {rx:?}", self.name));
        };
        Ok(Sample {
            nanos,
            tx_events: tx_events as u64,
            rx_events: rx_events as u64,
            tx_sleeps: tx_sleeps as u64,
            rx_sleeps: rx_sleeps as u64,
            cpu: tx_cpu.max(rx_cpu),
        })
    }

    fn quit(mut self) -> Result<(), String> {
        let _ = self.tx.tell("quit");
        let _ = self.rx.tell("quit");
        for (what, p) in [("sender", &mut self.tx), ("receiver", &mut self.rx)] {
            match p.wait_timeout(Duration::from_secs(20)) {
                Ok(Some(s)) if s.success() => {}
                other => {
                    // A failing child reports why before it exits.
                    let said = p
                        .read_report(Duration::from_millis(100))
                        .unwrap_or_default();
                    return Err(format!(
                        "{}: the {what} ended with {other:?}: {said}",
                        self.name
                    ));
                }
            }
        }
        Ok(())
    }
}

fn straw_pair(
    hv: &Hypervisor,
    pages: u32,
    spin_us: Option<u64>,
    polling: bool,
) -> Result<Pair, String> {
    let e = |e: pore_backend_sim::SimError| e.to_string();
    let spin = spin_us.map_or("default".to_string(), |us| us.to_string());
    let mut rx = hv
        .domain_command("straw-rx")
        .map_err(e)?
        .arg(pages.to_string())
        .arg(spin.clone())
        .arg(polling.to_string())
        .spawn()
        .map_err(e)?;
    let ready = report_of(&mut rx, "straw receiver")?;
    let id: u16 = ready
        .strip_prefix("ready ")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("straw receiver said {ready:?}"))?;
    let mut tx = hv
        .domain_command("straw-tx")
        .map_err(e)?
        .arg(id.to_string())
        .arg(pages.to_string())
        .arg(spin)
        .arg(polling.to_string())
        .spawn()
        .map_err(e)?;
    let opened = report_of(&mut tx, "straw sender")?;
    let accepted = report_of(&mut rx, "straw receiver")?;
    let want = match pages {
        0 => Layout::Ling,
        n => Layout::V2 { ring_pages: n },
    };
    if opened != format!("opened {want:?} polling {polling}")
        || accepted != format!("accepted {want:?} polling {polling}")
    {
        return Err(format!(
            "wanted {want:?}, polling {polling}, got {opened:?} / {accepted:?}"
        ));
    }
    let (mut name, buffer) = match pages {
        0 => ("straw LING".to_string(), "16 KiB".to_string()),
        n => (format!("straw v2, {n} pages"), format!("{} KiB", n * 4)),
    };
    match spin_us {
        Some(0) => name.push_str(", no spin"),
        Some(us) => name.push_str(&format!(", {us} µs spin")),
        None => {}
    }
    if polling {
        name.push_str(", polling");
    }
    Ok(Pair {
        name,
        buffer,
        straw: true,
        tx,
        rx,
    })
}

fn sock_pair(hv: &Hypervisor, dir: &Path) -> Result<Pair, String> {
    let e = |e: pore_backend_sim::SimError| e.to_string();
    let path = dir.join("sock").display().to_string();
    let mut rx = hv
        .domain_command("sock-rx")
        .map_err(e)?
        .arg(path.clone())
        .spawn()
        .map_err(e)?;
    report_of(&mut rx, "socket receiver")?;
    let mut tx = hv
        .domain_command("sock-tx")
        .map_err(e)?
        .arg(path)
        .spawn()
        .map_err(e)?;
    let bufs = numbers(
        &report_of(&mut tx, "socket sender")?
            .replace("sndbuf ", "")
            .replace("rcvbuf ", ""),
        "connected ",
    )?;
    Ok(Pair {
        name: "unix socket pair".into(),
        buffer: format!(
            "SO_SNDBUF {} KiB",
            bufs.first().copied().unwrap_or(0) / 1024
        ),
        straw: false,
        tx,
        rx,
    })
}

fn pipe_pair(hv: &Hypervisor, dir: &Path) -> Result<Pair, String> {
    let e = |e: pore_backend_sim::SimError| e.to_string();
    let (data, ack) = (dir.join("data.fifo"), dir.join("ack.fifo"));
    let mode = rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR;
    for p in [&data, &ack] {
        rustix::fs::mkfifoat(rustix::fs::CWD, p, mode)
            .map_err(|err| format!("mkfifo {}: {err}", p.display()))?;
    }
    let (data, ack) = (data.display().to_string(), ack.display().to_string());
    let rx = hv
        .domain_command("pipe-rx")
        .map_err(e)?
        .arg(data.clone())
        .arg(ack.clone())
        .spawn()
        .map_err(e)?;
    let mut tx = hv
        .domain_command("pipe-tx")
        .map_err(e)?
        .arg(data)
        .arg(ack)
        .spawn()
        .map_err(e)?;
    let size = numbers(&report_of(&mut tx, "pipe sender")?, "connected pipe ")?;
    Ok(Pair {
        name: "pipe".into(),
        buffer: format!("{} KiB", size.first().copied().unwrap_or(0) / 1024),
        straw: false,
        tx,
        rx,
    })
}

/// A comma-separated list of numbers from the environment.
fn env_list(name: &str) -> Option<Vec<u64>> {
    let v = std::env::var(name).ok()?;
    Some(v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn size_name(size: usize) -> String {
    if size >= 1024 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

fn bench(smoke: bool, dir: &Path) -> Result<(), String> {
    let rounds = env_or("PORE_BENCH_ROUNDS", if smoke { 1 } else { 3 }).max(1) as usize;
    let scale = env_or("PORE_BENCH_SCALE", if smoke { 1024 } else { 1 }).max(1);
    let hv = Hypervisor::start_unexported().map_err(|e| format!("simulated Xen: {e}"))?;
    // `PORE_BENCH_STRAW_PAGES=0,64` and `PORE_BENCH_SIZES=65536` narrow the run (e.g. for a
    // profiler); the unix socket pair always runs, as the baseline of every ratio.
    let straw_pages = env_list("PORE_BENCH_STRAW_PAGES");
    let sizes = env_list("PORE_BENCH_SIZES");
    let cells: Vec<(usize, u64)> = CELLS
        .iter()
        .copied()
        .filter(|(size, _)| sizes.as_ref().is_none_or(|s| s.contains(&(*size as u64))))
        .collect();
    let mut pairs = Vec::new();
    for (pages, spin, polling) in STRAWS {
        if straw_pages
            .as_ref()
            .is_none_or(|p| p.contains(&u64::from(pages)))
        {
            pairs.push(straw_pair(&hv, pages, spin, polling)?);
        }
    }
    pairs.push(sock_pair(&hv, dir)?);
    if std::env::var_os("PORE_BENCH_STRAW_PAGES").is_none() {
        pairs.push(pipe_pair(&hv, dir)?);
    }
    let sock = pairs
        .iter()
        .position(|p| p.name.starts_with("unix"))
        .unwrap_or(0);
    // (pair, cell) -> samples
    let mut samples: HashMap<(usize, usize), Vec<Sample>> = HashMap::new();
    let counts: Vec<u64> = cells
        .iter()
        .map(|&(size, bytes)| (bytes / scale / size as u64).max(4))
        .collect();
    let started = Instant::now();
    for _ in 0..rounds {
        for (c, &(size, _)) in cells.iter().enumerate() {
            for (i, pair) in pairs.iter_mut().enumerate() {
                let s = pair.run(size, counts[c])?;
                samples.entry((i, c)).or_default().push(s);
            }
        }
    }
    let took = started.elapsed();
    let median = |f: fn(&Sample) -> u128| -> HashMap<(usize, usize), f64> {
        samples
            .iter()
            .map(|(k, v)| {
                let mut secs: Vec<f64> = v.iter().map(|s| f(s) as f64 / 1e9).collect();
                secs.sort_by(f64::total_cmp);
                (*k, secs[secs.len() / 2])
            })
            .collect()
    };
    let medians = median(|s| s.nanos);
    let cpu_medians = median(|s| s.cpu);

    println!("# pore straw: streaming between two processes\n");
    println!(
        "{} CPUs, {}; median of {rounds} rounds, contenders interleaved; {:.1} s of streaming. Volume per cell: {}. Cells: messages/s · GB/s of payload (wall clock, first send to the acknowledgement) · ratio to the unix socket pair.\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if std::env::var_os("PORE_BENCH_NO_PIN").is_some() {
            "processes not pinned"
        } else {
            "senders pinned to CPU 0, receivers to CPU 1"
        },
        took.as_secs_f64(),
        cells
            .iter()
            .zip(&counts)
            .map(|(&(size, _), &n)| format!(
                "{n} × {} ({} MiB)",
                size_name(size),
                (n * size as u64) >> 20
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let head: Vec<String> = cells.iter().map(|&(s, _)| size_name(s)).collect();
    println!(
        "| contender | buffer per direction | {} |\n|---|---|{}",
        head.join(" | "),
        "---|".repeat(cells.len())
    );
    for (i, pair) in pairs.iter().enumerate() {
        let cells: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(c, &(size, _))| {
                let secs = medians[&(i, c)];
                let base = medians[&(sock, c)];
                let msgs = counts[c] as f64 / secs;
                format!(
                    "{} msg/s · {:.2} GB/s · {:.2}×",
                    si(msgs),
                    msgs * size as f64 / 1e9,
                    base / secs
                )
            })
            .collect();
        println!(
            "| {} | {} | {} |",
            pair.name,
            pair.buffer,
            cells.join(" | ")
        );
    }
    println!("\nPer CPU-second of the busier process (its CPU time, all threads, user and system, over the cell; preemption by other load does not count): GB/s of payload · ratio to the unix socket pair, medians.\n");
    println!(
        "| contender | {} |\n|---|{}",
        head.join(" | "),
        "---|".repeat(cells.len())
    );
    for (i, pair) in pairs.iter().enumerate() {
        let cells: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(c, &(size, _))| {
                let secs = cpu_medians[&(i, c)];
                format!(
                    "{:.2} GB/s · {:.2}×",
                    (counts[c] * size as u64) as f64 / secs / 1e9,
                    cpu_medians[&(sock, c)] / secs
                )
            })
            .collect();
        println!("| {} | {} |", pair.name, cells.join(" | "));
    }
    println!("\nEvents per message (straws; sum over all rounds / messages): sender → receiver (\"data\") + receiver → sender (\"room\"), and sleeps per message of each side.\n");
    println!(
        "| straw | {} |\n|---|{}",
        head.join(" | "),
        "---|".repeat(cells.len())
    );
    for (i, pair) in pairs.iter().enumerate().filter(|(_, p)| p.straw) {
        let cells: Vec<String> = (0..cells.len())
            .map(|c| {
                let v = &samples[&(i, c)];
                let n = (counts[c] * v.len() as u64) as f64;
                let sum = |f: fn(&Sample) -> u64| v.iter().map(f).sum::<u64>() as f64 / n;
                format!(
                    "{:.3} + {:.3} ev/msg (sleeps {:.3} / {:.3})",
                    sum(|s| s.tx_events),
                    sum(|s| s.rx_events),
                    sum(|s| s.tx_sleeps),
                    sum(|s| s.rx_sleeps)
                )
            })
            .collect();
        println!("| {} | {} |", pair.name, cells.join(" | "));
    }
    println!(
        "\nEvery round (GB/s of payload, in the order run):\n\n| contender | {} |\n|---|{}",
        head.join(" | "),
        "---|".repeat(cells.len())
    );
    for (i, pair) in pairs.iter().enumerate() {
        let cells: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(c, &(size, _))| {
                samples[&(i, c)]
                    .iter()
                    .map(|s| format!("{:.2}", (counts[c] * size as u64) as f64 / s.nanos as f64))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .collect();
        println!("| {} | {} |", pair.name, cells.join(" | "));
    }
    println!();
    let big = cells.iter().position(|&(size, _)| size == 64 << 10);
    for pages in [16, 64] {
        let name = format!("straw v2, {pages} pages");
        if let (Some(v2), Some(big)) = (pairs.iter().position(|p| p.name == name), big) {
            let ratio = medians[&(sock, big)] / medians[&(v2, big)];
            println!(
                "Goal: v2 ≥ 1.5× the unix socket pair at 64 KiB; {name}: {ratio:.2}× — {}{}",
                if ratio >= 1.5 { "met" } else { "NOT met" },
                if smoke {
                    " (smoke run: not a measurement)"
                } else {
                    ""
                }
            );
        }
    }
    for pair in pairs {
        pair.quit()?;
    }
    for (id, _) in hv.domains().into_iter().filter(|(id, _)| id.0 != 0) {
        hv.wait_dead(id, Duration::from_secs(5));
    }
    let left = hv.outstanding();
    if !left.is_clean() {
        return Err(format!("resources left behind: {left:?}"));
    }
    Ok(())
}

/// `1.23 M`, `456 k`.
fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn main() {
    process::run_child_role(child_role);
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us without it: smoke only.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let dir = std::env::temp_dir().join(format!("pore-straw-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("creating {}: {e}", dir.display());
        std::process::exit(1);
    }
    let result = bench(smoke, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        eprintln!("straw bench: {e}");
        std::process::exit(1);
    }
}
