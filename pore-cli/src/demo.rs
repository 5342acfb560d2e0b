//! `pore demo`: two endpoints find each other through xenstore, open a straw, and exchange
//! messages both ways.
//!
//! On the simulated Xen (`--backend sim`, the default) the parent process plays the toolstack:
//! it runs the xenstored and the hypervisor broker, then spawns two domain processes from its
//! own executable (a listener and an opener). The children report what they do on their stdout
//! (the sim's report lines); the parent prints it.
//!
//! On real Xen (`--backend linux`) the two children are processes of this domain (dom0 or a
//! domU), each a named endpoint of the straw: they meet through the real xenstored over
//! `/dev/xen/xenbus` and share granted pages and an event channel through `/dev/xen`. Each child
//! checks that it holds no grant, mapping or port once its manager is down; the parent checks
//! that neither endpoint left a node in xenstore.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use pore_backend_linux::LinuxXen;
use pore_backend_sim::process::{self, DomainProcess};
use pore_backend_sim::PeerClose;
use pore_backend_sim::{Hypervisor, SimDomain};
use pore_core::{Backend, DomId};
use pore_straw::handshake::{Action, HandshakeConfig};
use pore_straw::manager::{Manager, ManagerConfig};
use pore_straw::straw::StrawError;
use pore_straw::xenstore::XsAdapter;
use pore_straw::Endpoint;
use pore_xenstore::transport::RingTransport;
use pore_xenstore::{Client, Config as ClientConfig};

use crate::backend;

/// Which Xen `pore demo` runs on.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoBackend {
    /// Two domains of an embedded simulated Xen (needs nothing).
    Sim,
    /// Two processes of this Xen domain, each a named endpoint, through the real xenstored and
    /// /dev/xen (evtchn, gntalloc, gntdev, xenbus); needs root.
    Linux,
}

/// Options of `pore demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Which Xen: the embedded simulated one, or real Xen from this Linux domain (two of its
    /// processes talk, each a named endpoint).
    #[arg(long, value_enum, default_value_t = DemoBackend::Sim)]
    pub backend: DemoBackend,
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
/// On real Xen (a guest of an emulated machine, or a busy one) a handshake may take much more
/// than the simulated Xen's seconds: a LING listener's transaction of 20 requests took 6 s in
/// the lab under load.
const LINUX_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
const LINUX_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Frame tags of the demo's little protocol.
const TAG_PING: u8 = b'P';
const TAG_DATA: u8 = b'D';
const TAG_END: u8 = b'E';

/// Environment variable naming the role of a process spawned by `pore demo --backend linux`.
const LINUX_ROLE_ENV: &str = "PORE_DEMO_ROLE";
/// Environment variable carrying that role's arguments (space-separated).
const LINUX_ARGS_ENV: &str = "PORE_DEMO_ARGS";
const LINUX_LISTENER: &str = "linux-listener";
const LINUX_OPENER: &str = "linux-opener";
/// Prefix of the stdout lines a process of `pore demo --backend linux` sends to its parent.
const LINUX_REPORT_PREFIX: &str = "PORE-DEMO-REPORT ";

/// How a role tells its parent what it does: one line at a time.
type Report = fn(&str);

/// Sends one line to the parent of a `pore demo --backend linux` process.
fn linux_report(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{LINUX_REPORT_PREFIX}{}", line.replace('\n', " "));
    let _ = out.flush();
}

/// Runs a domain process's role if this process is one; returns otherwise.
pub fn run_child_if_any() {
    if let Ok(role) = std::env::var(LINUX_ROLE_ENV) {
        let args: Vec<String> = std::env::var(LINUX_ARGS_ENV)
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let result = match role.as_str() {
            LINUX_LISTENER => linux_listener(&args),
            LINUX_OPENER => linux_opener(&args),
            other => Err(format!("unknown role {other}")),
        };
        let code = match result {
            Ok(()) => 0,
            Err(e) => {
                linux_report(&format!("error {e}"));
                1
            }
        };
        let _ = std::io::stdout().flush();
        std::process::exit(code);
    }
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
    observe_steps(&manager, process::report);
    Ok((manager, me))
}

/// Reports every step of the manager's handshakes as a `step ...` line.
fn observe_steps<B: Backend + Send + Sync + 'static>(
    manager: &Manager<B, XsAdapter>,
    report: Report,
) {
    manager.observe(Some(Arc::new(move |_peer: &Endpoint, action: &Action| {
        let step = match action {
            Action::Store(op) => format!("xenstore {op}"),
            Action::OpenPore(req) => format!("open pore {req:?}"),
            Action::ClosePore => "close pore".to_string(),
            Action::Connected(c) => format!("connected {c:?}"),
            Action::Done(r) => format!("done {r:?}"),
            other => format!("{other:?}"),
        };
        report(&format!("step {step}"));
    })));
}

/// The listening domain: accepts one straw, answers pings, counts the stream, acknowledges it.
fn listener(args: &[String]) -> Result<(), String> {
    let ling = args.first().is_some_and(|a| a == "ling");
    let (manager, me) = start_manager(ling)?;
    process::report(&format!("ready {}", me.domid.0));
    serve(&manager, STEP_TIMEOUT, process::report)?;
    manager.shutdown();
    process::report("closed");
    Ok(())
}

/// Accepts one straw, answers pings, counts the stream, acknowledges it, waits for the peer's
/// close.
fn serve<B: Backend + Send + Sync + 'static>(
    manager: &Manager<B, XsAdapter>,
    accept_timeout: Duration,
    report: Report,
) -> Result<(), String> {
    let straw = manager
        .accept(accept_timeout)
        .map_err(|e| format!("accepting a straw: {e}"))?;
    report(&format!(
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
                report(&format!("received {frames} messages, {bytes} bytes"));
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
    let (total, size, trips) = (parse(total)?, parse(size)?, parse(trips)?);
    let (manager, _me) = start_manager(ling == "ling")?;
    measure(
        &manager,
        &Endpoint::seed(peer),
        (total, size, trips),
        process::report,
    )?;
    manager.shutdown();
    process::report("closed");
    Ok(())
}

/// Opens a straw to `peer`, measures latency with `trips` round trips and throughput with
/// `total` bytes in messages of `size` bytes, then closes the straw.
fn measure<B: Backend + Send + Sync + 'static>(
    manager: &Manager<B, XsAdapter>,
    peer: &Endpoint,
    (total, size, trips): (u64, u64, u64),
    report: Report,
) -> Result<(), String> {
    let size = size.max(2) as usize;
    let straw = manager
        .open(peer)
        .map_err(|e| format!("opening a straw to {peer}: {e}"))?;
    report(&format!(
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
    report(&format!(
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
            report(&format!(
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
    report(&format!(
        "throughput {sent} {frames} {}",
        elapsed.as_nanos()
    ));
    straw.close().map_err(|e| format!("closing: {e}"))
}

/// A straw manager of this Linux domain under the endpoint `name`, reporting its steps.
fn start_linux_manager(
    name: &str,
    ling: bool,
) -> Result<(Manager<LinuxXen, XsAdapter>, LinuxXen, DomId), String> {
    let (xen, domid, client) = backend::open_linux()?;
    let me = Endpoint::new(domid, name).map_err(|e| format!("bad endpoint name {name}: {e:?}"))?;
    let mut cfg = manager_config(ling);
    cfg.handshake.handshake_timeout = LINUX_HANDSHAKE_TIMEOUT;
    cfg.handshake.close_timeout = LINUX_CLOSE_TIMEOUT;
    let manager = Manager::start(xen.clone(), XsAdapter::new(Arc::new(client)), me, cfg)
        .map_err(|e| format!("starting the straw manager: {e}"))?;
    observe_steps(&manager, linux_report);
    Ok((manager, xen, domid))
}

/// After the manager shut down: nothing of `xen` may still be held.
fn check_released(xen: &LinuxXen) -> Result<(), String> {
    let held = xen.outstanding();
    if !held.is_clean() {
        return Err(format!(
            "still held after the manager shut down: {} grants, {} mappings, {} ports",
            held.grants, held.mappings, held.ports
        ));
    }
    linux_report("released every grant, mapping and event-channel port");
    Ok(())
}

/// The listening process of `pore demo --backend linux`: args `name ling|v2`.
fn linux_listener(args: &[String]) -> Result<(), String> {
    let [name, layout] = args else {
        return Err("usage: name ling|v2".into());
    };
    let (manager, xen, domid) = start_linux_manager(name, layout == "ling")?;
    linux_report(&format!("ready {}", domid.0));
    let served = serve(&manager, LINUX_HANDSHAKE_TIMEOUT * 2, linux_report);
    manager.shutdown();
    served?;
    check_released(&xen)?;
    linux_report("closed");
    Ok(())
}

/// The opening process of `pore demo --backend linux`: args
/// `name peer-name ling|v2 total size trips`.
fn linux_opener(args: &[String]) -> Result<(), String> {
    let [name, peer, layout, total, size, trips] = args else {
        return Err("usage: name peer-name ling|v2 total size trips".into());
    };
    let parse = |s: &String| {
        s.parse::<u64>()
            .map_err(|e| format!("bad argument {s}: {e}"))
    };
    let numbers = (parse(total)?, parse(size)?, parse(trips)?);
    let (manager, xen, domid) = start_linux_manager(name, layout == "ling")?;
    let peer =
        Endpoint::new(domid, peer).map_err(|e| format!("bad endpoint name {peer}: {e:?}"))?;
    let measured = measure(&manager, &peer, numbers, linux_report);
    manager.shutdown();
    measured?;
    check_released(&xen)?;
    linux_report("closed");
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
        pump(
            || child.read_report(STEP_TIMEOUT).map_err(|e| e.to_string()),
            who,
            &tx,
        );
        child
    })
}

/// Passes the lines `next` returns to `tx` until the last one (`closed` or an error).
fn pump(
    mut next: impl FnMut() -> Result<String, String>,
    who: &'static str,
    tx: &mpsc::Sender<Line>,
) {
    loop {
        match next() {
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
    if args.backend == DemoBackend::Linux {
        return demo_linux(args);
    }
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
    let mut failure = show_reports(&rx);
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

/// A process of `pore demo --backend linux` and the thread passing its report lines on.
struct LinuxChild {
    child: Child,
    pump: Option<thread::JoinHandle<()>>,
}

impl LinuxChild {
    /// Spawns this executable in `role` with `args`; its report lines go to `tx` as `who`'s.
    fn spawn(
        role: &str,
        args: &[&str],
        who: &'static str,
        tx: mpsc::Sender<Line>,
    ) -> Result<LinuxChild, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("finding our own executable: {e}"))?;
        let mut child = Command::new(exe)
            .env(LINUX_ROLE_ENV, role)
            .env(LINUX_ARGS_ENV, args.join(" "))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning the {who} process: {e}"))?;
        let stdout = child.stdout.take().ok_or("the child has no stdout")?;
        let pump = thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            pump(|| next_report(&mut lines), who, &tx);
        });
        Ok(LinuxChild {
            child,
            pump: Some(pump),
        })
    }

    /// Waits up to `timeout` for the process to exit (killing it after that); whether it
    /// exited with status 0 by itself.
    fn finish(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => break None,
            }
        };
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(pump) = self.pump.take() {
            let _ = pump.join();
        }
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(format!("pid {} exited with {s}", self.child.id())),
            None => Err(format!("pid {} did not exit; killed", self.child.id())),
        }
    }
}

impl Drop for LinuxChild {
    fn drop(&mut self) {
        if self.pump.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The next report line of a child (other lines of its stdout are passed through).
fn next_report(lines: &mut std::io::Lines<BufReader<ChildStdout>>) -> Result<String, String> {
    loop {
        match lines.next() {
            Some(Ok(line)) => match line.strip_prefix(LINUX_REPORT_PREFIX) {
                Some(report) => return Ok(report.to_string()),
                None => println!("{line}"),
            },
            Some(Err(e)) => return Err(format!("reading its stdout: {e}")),
            None => return Err("it exited".into()),
        }
    }
}

/// `pore demo --backend linux`: two processes of this domain, two named endpoints.
fn demo_linux(args: &DemoArgs) -> Result<(), String> {
    if !LinuxXen::is_available() {
        return Err(
            "--backend linux: /dev/xen/evtchn is missing (is this a Xen domain? is the \
                    xen-evtchn module loaded?)"
                .into(),
        );
    }
    // Our domain id, and a look at xenstore after the children are done.
    let (_xen, domid, client) = backend::open_linux()?;
    let pid = std::process::id();
    let (lname, oname) = (format!("demol{pid}"), format!("demoo{pid}"));
    let layout = if args.ling { "ling" } else { "v2" };
    println!(
        "pore demo: two processes of domain {} talk over a straw on real Xen",
        domid.0
    );
    println!(
        "  (each process is a named endpoint; they meet through the real xenstored over \
         /dev/xen/xenbus, then share granted pages and an event channel)"
    );
    let (tx, rx) = mpsc::channel();
    let mut listener =
        LinuxChild::spawn(LINUX_LISTENER, &[&lname, layout], "listener", tx.clone())?;
    let ready = match rx.recv_timeout(STEP_TIMEOUT) {
        Ok(Line { text, .. }) => text,
        Err(_) => return Err("the listener process said nothing in time".into()),
    };
    if ready.strip_prefix("ready ").map(str::trim) != Some(&domid.0.to_string()) {
        return Err(format!("the listener process said {ready:?}"));
    }
    println!(
        "  listener: endpoint dom{}/{lname} (pid {}) waits for a straw",
        domid.0,
        listener.child.id()
    );
    let (total, size, trips) = (
        args.bytes.to_string(),
        args.message_size.to_string(),
        args.round_trips.to_string(),
    );
    let mut opener = LinuxChild::spawn(
        LINUX_OPENER,
        &[&oname, &lname, layout, &total, &size, &trips],
        "opener",
        tx,
    )?;
    println!(
        "  opener: endpoint dom{}/{oname} (pid {}); handshake through xenstore:",
        domid.0,
        opener.child.id()
    );
    let mut failure = show_reports(&rx);
    for child in [&mut listener, &mut opener] {
        if let Err(e) = child.finish(Duration::from_secs(10)) {
            failure = failure.or(Some(e));
        }
    }
    if let Some(f) = failure {
        return Err(f);
    }
    let mut left = Vec::new();
    for name in [&lname, &oname] {
        let end = Endpoint::new(domid, name).map_err(|e| format!("bad name {name}: {e:?}"))?;
        for path in [end.straw_top(), end.warts_top()] {
            match client.exists(&path) {
                Ok(false) => {}
                Ok(true) => left.push(path),
                Err(e) => return Err(format!("looking for {path} in xenstore: {e}")),
            }
        }
    }
    if !left.is_empty() {
        return Err(format!("xenstore nodes left behind: {}", left.join(" ")));
    }
    println!("  xenstore: neither endpoint left a node; both processes exited 0");
    println!("pore demo: ok");
    Ok(())
}

/// Prints what the two children report until both closed; the failure, if any.
fn show_reports(rx: &mpsc::Receiver<Line>) -> Option<String> {
    let tty = std::io::stdout().is_terminal();
    let mut closed = 0;
    let mut last_quarter = 0;
    let mut failure = None;
    while closed < 2 {
        let Ok(Line { who, text }) = rx.recv_timeout(STEP_TIMEOUT * 4) else {
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
    failure
}
