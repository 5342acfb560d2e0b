//! `pore demo`: two domains of the embedded simulated Xen find each other through the embedded
//! xenstored, open a straw, and exchange messages both ways.
//!
//! The parent process plays the toolstack: it runs the xenstored and the hypervisor broker, then
//! spawns two domain processes from its own executable (a listener and an opener). The children
//! report what they do on their stdout (the sim's report lines); the parent prints it.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use pore_backend_sim::process::{self, DomainProcess};
use pore_backend_sim::PeerClose;
use pore_backend_sim::{Hypervisor, SimDomain};
use pore_core::DomId;
use pore_straw::handshake::{Action, HandshakeConfig};
use pore_straw::manager::{Manager, ManagerConfig};
use pore_straw::straw::StrawError;
use pore_straw::xenstore::XsAdapter;
use pore_straw::Endpoint;
use pore_xenstore::transport::RingTransport;
use pore_xenstore::{Client, Config as ClientConfig};

/// Options of `pore demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Use the LING ring layout (8 pages, the original's) instead of negotiating v2.
    #[arg(long)]
    pub ling: bool,
    /// Bytes to stream from the opener to the listener.
    #[arg(long, default_value_t = 256 << 20)]
    pub bytes: u64,
    /// Size of each streamed message.
    #[arg(long, default_value_t = 64 << 10)]
    pub message_size: usize,
    /// Ping-pong round trips measured for latency.
    #[arg(long, default_value_t = 2000)]
    pub round_trips: u32,
}

const ROLE_LISTENER: &str = "demo-listener";
const ROLE_OPENER: &str = "demo-opener";
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Frame tags of the demo's little protocol.
const TAG_PING: u8 = b'P';
const TAG_DATA: u8 = b'D';
const TAG_END: u8 = b'E';

/// Runs a domain process's role if this process is one; returns otherwise.
pub fn run_child_if_any() {
    process::run_child_role(|role, args| {
        let result = match role {
            ROLE_LISTENER => listener(args),
            ROLE_OPENER => opener(args),
            other => Err(format!("unknown domain role {other}")),
        };
        match result {
            Ok(()) => 0,
            Err(e) => {
                process::report(&format!("error {e}"));
                1
            }
        }
    });
}

fn manager_config(ling: bool) -> ManagerConfig {
    ManagerConfig {
        handshake: HandshakeConfig {
            v2_pages: (!ling).then_some(16),
            ..HandshakeConfig::default()
        },
        ..ManagerConfig::default()
    }
}

type DemoManager = Manager<SimDomain, XsAdapter>;

/// Starts this domain's straw manager on xenstore reached the way a Xen guest reaches it: through
/// its own store ring page and event channel (an unprivileged connection).
fn start_manager(ling: bool) -> Result<(DemoManager, Endpoint), String> {
    let dom = SimDomain::connect().map_err(|e| format!("reaching the hypervisor: {e}"))?;
    let ring = RingTransport::open_store(&dom)
        .map_err(|e| format!("opening the xenstore ring page: {e}"))?;
    let client = Client::with_transport(Box::new(ring), ClientConfig::default())
        .map_err(|e| format!("reaching xenstored over the ring: {e}"))?;
    let me = Endpoint::seed(dom.id());
    let manager = Manager::start(
        dom,
        XsAdapter::new(Arc::new(client)),
        me.clone(),
        manager_config(ling),
    )
    .map_err(|e| format!("starting the straw manager: {e}"))?;
    manager.observe(Some(Arc::new(|_peer: &Endpoint, action: &Action| {
        let step = match action {
            Action::Store(op) => format!("xenstore {op}"),
            Action::OpenPore(req) => format!("open pore {req:?}"),
            Action::ClosePore => "close pore".to_string(),
            Action::Connected(c) => format!("connected {c:?}"),
            Action::Done(r) => format!("done {r:?}"),
            other => format!("{other:?}"),
        };
        process::report(&format!("step {step}"));
    })));
    Ok((manager, me))
}

/// The listening domain: accepts one straw, answers pings, counts the stream, acknowledges it.
fn listener(args: &[String]) -> Result<(), String> {
    let ling = args.first().is_some_and(|a| a == "ling");
    let (manager, me) = start_manager(ling)?;
    process::report(&format!("ready {}", me.domid.0));
    let straw = manager
        .accept(STEP_TIMEOUT)
        .map_err(|e| format!("accepting a straw: {e}"))?;
    process::report(&format!(
        "accepted layout={:?} format={:?}",
        straw.layout(),
        straw.format()
    ));
    let (mut bytes, mut frames, mut intact) = (0u64, 0u64, true);
    let mut expected: Option<Bytes> = None;
    loop {
        let frame = straw
            .receiver()
            .recv_timeout(STEP_TIMEOUT)
            .map_err(|e| format!("receiving: {e}"))?;
        match frame.first() {
            Some(&TAG_PING) => straw
                .sender()
                .send(frame)
                .map_err(|e| format!("answering a ping: {e}"))?,
            Some(&TAG_DATA) => {
                bytes += frame.len() as u64;
                frames += 1;
                let want = expected.get_or_insert_with(|| demo_body(frame.len()));
                if want.len() != frame.len() {
                    *want = demo_body(frame.len());
                }
                intact &= *want == frame;
            }
            Some(&TAG_END) => {
                let ack = format!(
                    "ack {bytes} {frames} {}",
                    if intact { "intact" } else { "corrupt" }
                );
                process::report(&format!("received {frames} messages, {bytes} bytes"));
                straw
                    .sender()
                    .send(Bytes::from(ack.into_bytes()))
                    .map_err(|e| format!("acknowledging: {e}"))?;
                break;
            }
            _ => return Err(format!("unexpected frame of {} bytes", frame.len())),
        }
    }
    // The opener closes; we see the end of the stream after everything it sent.
    match straw.receiver().recv_timeout(STEP_TIMEOUT) {
        Err(StrawError::Eof) => {}
        other => return Err(format!("expected the peer's close, got {other:?}")),
    }
    drop(straw);
    manager.shutdown();
    process::report("closed");
    Ok(())
}

/// The body of every streamed message of `size` bytes: a tag, then a pattern the listener checks.
fn demo_body(size: usize) -> Bytes {
    let mut body: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
    body[0] = TAG_DATA;
    Bytes::from(body)
}

/// The opening domain: opens the straw, measures latency and throughput, closes.
fn opener(args: &[String]) -> Result<(), String> {
    let [peer, ling, total, size, trips] = args else {
        return Err("usage: peer ling|v2 total size trips".into());
    };
    let parse = |s: &String| {
        s.parse::<u64>()
            .map_err(|e| format!("bad argument {s}: {e}"))
    };
    let peer = DomId(parse(peer)? as u16);
    let (total, size, trips) = (parse(total)?, parse(size)?.max(2) as usize, parse(trips)?);
    let (manager, _me) = start_manager(ling == "ling")?;
    let straw = manager
        .open(&Endpoint::seed(peer))
        .map_err(|e| format!("opening a straw to dom{}: {e}", peer.0))?;
    process::report(&format!(
        "opened layout={:?} format={:?}",
        straw.layout(),
        straw.format()
    ));

    // Latency: ping-pong round trips of 64-byte messages.
    let mut ping = vec![0u8; 64];
    ping[0] = TAG_PING;
    let ping = Bytes::from(ping);
    let mut rtts = Vec::with_capacity(trips as usize);
    for _ in 0..trips {
        let t = Instant::now();
        straw
            .sender()
            .send(ping.clone())
            .map_err(|e| format!("ping: {e}"))?;
        let pong = straw
            .receiver()
            .recv_timeout(STEP_TIMEOUT)
            .map_err(|e| format!("pong: {e}"))?;
        if pong != ping {
            return Err("a pong differs from its ping".into());
        }
        rtts.push(t.elapsed());
    }
    rtts.sort();
    let pct = |p: usize| rtts.get(rtts.len() * p / 100).copied().unwrap_or_default();
    process::report(&format!(
        "latency {} {} {}",
        pct(50).as_nanos(),
        pct(99).as_nanos(),
        trips
    ));

    // Throughput: stream `total` bytes in `size`-byte messages.
    let body = demo_body(size);
    let frames = total.div_ceil(size as u64);
    let mut sent = 0u64;
    let step = (frames / 50).max(1);
    let t = Instant::now();
    for i in 0..frames {
        straw
            .sender()
            .send(body.clone())
            .map_err(|e| format!("streaming: {e}"))?;
        sent += size as u64;
        if (i + 1) % step == 0 || i + 1 == frames {
            process::report(&format!(
                "progress {sent} {} {}",
                frames * size as u64,
                t.elapsed().as_nanos()
            ));
        }
    }
    straw
        .sender()
        .send(Bytes::from_static(&[TAG_END]))
        .map_err(|e| format!("ending the stream: {e}"))?;
    let ack = straw
        .receiver()
        .recv_timeout(STEP_TIMEOUT)
        .map_err(|e| format!("waiting for the acknowledgement: {e}"))?;
    let elapsed = t.elapsed();
    let want = format!("ack {sent} {frames} intact");
    if ack.as_ref() != want.as_bytes() {
        return Err(format!(
            "the listener acknowledged {:?}, expected {want:?}",
            String::from_utf8_lossy(&ack)
        ));
    }
    process::report(&format!(
        "throughput {sent} {frames} {}",
        elapsed.as_nanos()
    ));
    straw.close().map_err(|e| format!("closing: {e}"))?;
    manager.shutdown();
    process::report("closed");
    Ok(())
}

/// One line a child reported, tagged with who said it.
struct Line {
    who: &'static str,
    text: String,
}

fn forward(
    mut child: DomainProcess,
    who: &'static str,
    tx: mpsc::Sender<Line>,
) -> thread::JoinHandle<DomainProcess> {
    thread::spawn(move || {
        loop {
            match child.read_report(STEP_TIMEOUT) {
                Ok(text) => {
                    let done = text == "closed" || text.starts_with("error ");
                    if tx.send(Line { who, text }).is_err() || done {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Line {
                        who,
                        text: format!("error the domain stopped reporting: {e}"),
                    });
                    break;
                }
            }
        }
        child
    })
}

fn rate(bytes: u64, nanos: u128) -> String {
    let per_s = bytes as f64 / (nanos.max(1) as f64 / 1e9);
    if per_s >= 1e9 {
        format!("{:.2} GB/s", per_s / 1e9)
    } else {
        format!("{:.1} MB/s", per_s / 1e6)
    }
}

fn bar(done: u64, total: u64, nanos: u128) -> String {
    let width = 30usize;
    let filled = (done as f64 / total.max(1) as f64 * width as f64) as usize;
    format!(
        "[{}{}] {:>3}% {}",
        "#".repeat(filled.min(width)),
        " ".repeat(width - filled.min(width)),
        done * 100 / total.max(1),
        rate(done, nanos)
    )
}

/// Runs the demo; exit code 0 when both domains finished cleanly and nothing leaked.
pub fn run(args: DemoArgs) -> ExitCode {
    match demo(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pore demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(args: &DemoArgs) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("pore-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let result = demo_in(args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn demo_in(args: &DemoArgs, dir: &std::path::Path) -> Result<(), String> {
    println!("pore demo: two domains of a simulated Xen talk over a straw");
    println!("  (each domain is a process; it reaches xenstore through its own store ring page)");
    // The broker and the embedded xenstored (the toolstack gives every domain
    // /local/domain/<id> and a store ring to it, D19).
    let hv = Hypervisor::start_at(Some(&dir.join("hypervisor.sock")))
        .map_err(|e| format!("starting the simulated hypervisor: {e}"))?;
    // Event channels close as on Xen: nothing tells a peer; the close chart runs in xenstore.
    hv.set_peer_close(PeerClose::Silent);
    println!(
        "  simulated hypervisor broker on {} (event channels close as on Xen)",
        dir.join("hypervisor.sock").display()
    );
    let server = hv
        .xenstored()
        .ok_or("the simulated hypervisor has no xenstored")?;
    let xs_sock = dir.join("xenstored.sock");
    let listener_thread = server
        .listen_unix(&xs_sock)
        .map_err(|e| format!("serving xenstored to dom0 tools: {e}"))?;
    println!(
        "  xenstored (pore's own, embedded) also serves dom0 tools on {}",
        xs_sock.display()
    );

    let layout = if args.ling { "ling" } else { "v2" };
    let mut listener = hv
        .domain_command(ROLE_LISTENER)
        .map_err(|e| e.to_string())?
        .name("listener")
        .arg(layout)
        .spawn()
        .map_err(|e| format!("spawning the listener domain: {e}"))?;
    let ready = listener
        .read_report(STEP_TIMEOUT)
        .map_err(|e| format!("listener: {e}"))?;
    let listener_id: u16 = ready
        .strip_prefix("ready ")
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("listener said {ready:?}"))?;
    println!(
        "  domain {listener_id} (listener, pid {}) waits for a straw",
        listener.pid()
    );
    let opener = hv
        .domain_command(ROLE_OPENER)
        .map_err(|e| e.to_string())?
        .name("opener")
        .arg(listener_id.to_string())
        .arg(layout)
        .arg(args.bytes.to_string())
        .arg(args.message_size.to_string())
        .arg(args.round_trips.to_string())
        .spawn()
        .map_err(|e| format!("spawning the opener domain: {e}"))?;
    println!(
        "  opener domain started (pid {}); handshake through xenstore:",
        opener.pid()
    );

    let (tx, rx) = mpsc::channel();
    let listener_fwd = forward(listener, "listener", tx.clone());
    let opener_fwd = forward(opener, "opener", tx);
    let tty = std::io::stdout().is_terminal();
    let mut closed = 0;
    let mut last_quarter = 0;
    let mut failure = None;
    while closed < 2 {
        let Ok(Line { who, text }) = rx.recv_timeout(STEP_TIMEOUT * 2) else {
            failure = Some("the domains stopped reporting".to_string());
            break;
        };
        let (word, rest) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        match word {
            "step" => println!("    [{who:>8}] {rest}"),
            "progress" => {
                let v: Vec<u128> = rest.split(' ').filter_map(|s| s.parse().ok()).collect();
                if let [done, total, nanos] = v[..] {
                    let line = bar(done as u64, total as u64, nanos);
                    let quarter = done * 4 / total.max(1);
                    if tty {
                        print!("\r  streaming {line}");
                        let _ = std::io::stdout().flush();
                        if done == total {
                            println!();
                        }
                    } else if quarter > last_quarter || done == total {
                        last_quarter = quarter;
                        println!("  streaming {line}");
                    }
                }
            }
            "latency" => {
                let v: Vec<u128> = rest.split(' ').filter_map(|s| s.parse().ok()).collect();
                if let [p50, p99, n] = v[..] {
                    println!(
                        "  latency: {n} round trips of 64 B, median {:.1} µs, p99 {:.1} µs",
                        p50 as f64 / 1e3,
                        p99 as f64 / 1e3
                    );
                }
            }
            "throughput" => {
                let v: Vec<u128> = rest.split(' ').filter_map(|s| s.parse().ok()).collect();
                if let [bytes, frames, nanos] = v[..] {
                    println!(
                        "  throughput: {frames} messages, {bytes} bytes in {:.3} s = {} ({:.0} messages/s), acknowledged intact",
                        nanos as f64 / 1e9,
                        rate(bytes as u64, nanos),
                        frames as f64 / (nanos as f64 / 1e9)
                    );
                }
            }
            "closed" => {
                closed += 1;
                println!("  [{who}] closed the straw cleanly");
            }
            "error" => {
                failure = Some(format!("{who}: {rest}"));
                break;
            }
            _ => println!("  [{who}] {text}"),
        }
    }
    let mut children = Vec::new();
    for handle in [listener_fwd, opener_fwd] {
        if let Ok(child) = handle.join() {
            children.push(child);
        }
    }
    for child in &mut children {
        match child.wait_timeout(Duration::from_secs(10)) {
            Ok(Some(status)) if status.success() => {}
            Ok(Some(status)) => {
                failure = failure.or(Some(format!("a domain exited with {status}")))
            }
            _ => failure = failure.or(Some("a domain did not exit".to_string())),
        }
    }
    server.shutdown();
    listener_thread.join();
    if let Some(f) = failure {
        return Err(f);
    }
    for (id, _) in hv.domains().into_iter().filter(|(id, _)| id.0 != 0) {
        hv.wait_dead(id, Duration::from_secs(5));
    }
    let left = hv.outstanding();
    if !left.is_clean() {
        return Err(format!("resources left behind: {left:?}"));
    }
    println!("  hypervisor accounting: no grant, mapping or port left behind");
    println!("pore demo: ok");
    Ok(())
}
