//! `PORE_BENCH_XSD_GUESTS=1`: our xenstored's guests on real rings (the simulator's domains,
//! in this process: each has its xenstore page and event channel, served by the embedded
//! server), in two designs of the same build, taking turns:
//!
//! * "loop": every ring served by the event loop, woken by the simulator's readiness eventfd
//!   (D25): a watcher thread turns dom0's futex wake-ups into eventfd writes, one more thread
//!   hop per notification than on Xen;
//! * "loop-fd": served by the event loop, woken by an eventfd that each guest's notification
//!   writes itself, as Xen makes the event device readable with no thread in between;
//! * "threads": every ring served by a thread of its own (the link without readiness).
//!
//! Fairness: a normal guest reads a 1-byte node N times (median and p99 latency) alone,
//! beside a guest flooding reads of 2000 B, 16 pipelined (its own thread, on CPU 1), and beside a
//! guest that fills its request ring and never consumes a reply. The server, the normal guest
//! and the stalled guest share CPU 0. Memory: this process's VmRSS before and after the
//! stalled guest. Idle cost: with 500 guests introduced and idle, this process's CPU time and
//! context switches (wake-ups) per second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::os::fd::{AsFd, BorrowedFd};

use pore_backend_sim::{Hypervisor, SimDomain, SimError, StoreLink, StoreService};
use pore_core::{DomId, EventChannel, Pore, Port, WaitOutcome};
use pore_xenstore::server::{Config as ServerConfig, GuestLink, GuestReadiness, Server};
use pore_xenstore::transport::{RingTransport, Transport};
use pore_xenstore::{Client, Config, Request};

/// How the server is woken for a guest.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Design {
    /// The event loop, on the simulator's readiness eventfd.
    Loop,
    /// The event loop, on an eventfd the guests' notifications write.
    LoopFd,
    /// A thread per guest.
    Threads,
}

impl Design {
    fn name(self) -> &'static str {
        match self {
            Design::Loop => "loop",
            Design::LoopFd => "loop-fd",
            Design::Threads => "threads",
        }
    }
}

/// An eventfd made readable by the guests' notifications ([`Design::LoopFd`]).
struct Ready(std::os::fd::OwnedFd);

impl Ready {
    fn ring(&self) {
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }
}

impl GuestReadiness for Ready {
    fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
    fn acknowledge(&self) {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&self.0, &mut b);
    }
}

/// A guest's store channel that also rings [`Ready`] after each notification.
struct Ringing {
    pore: Arc<Pore<SimDomain>>,
    ready: Arc<Ready>,
}

impl EventChannel for Ringing {
    type Error = SimError;
    fn port(&self) -> Port {
        self.pore.channel().port()
    }
    fn notify(&self) -> Result<(), SimError> {
        self.pore.channel().notify()?;
        self.ready.ring();
        Ok(())
    }
    fn try_wait(&self) -> Result<bool, SimError> {
        self.pore.channel().try_wait()
    }
    fn wait(&self, timeout: Duration) -> Result<WaitOutcome, SimError> {
        self.pore.channel().wait(timeout)
    }
    fn close(self) -> Result<(), SimError> {
        Ok(())
    }
}

/// Introduces each simulated domain to `server` as `design` wants.
struct Service {
    server: Server,
    design: Design,
    ready: Arc<Ready>,
}

impl StoreService for Service {
    fn domain_introduced(&self, link: StoreLink) {
        let StoreLink {
            domid,
            name,
            page,
            channel,
        } = link;
        let readiness: Option<Arc<dyn GuestReadiness>> = match self.design {
            Design::Loop => channel
                .readiness()
                .map(|r| Arc::new(r) as Arc<dyn GuestReadiness>),
            Design::LoopFd => Some(self.ready.clone()),
            Design::Threads => None,
        };
        let mut guest = GuestLink::from_pore(page, channel).expect("a xenstore page");
        if let Some(r) = readiness {
            guest = guest.with_readiness(r);
        }
        self.server
            .introduce_domain(domid, &name, guest)
            .expect("introduce");
    }

    fn domain_released(&self, domid: DomId) {
        self.server.release_domain(domid);
    }
}

/// A simulated host: the hypervisor, the server, and a dom0 client.
struct Host {
    hv: Hypervisor,
    server: Server,
    design: Design,
    ready: Arc<Ready>,
    _dom0: Client,
    _listener: pore_xenstore::server::Listener,
}

impl Host {
    fn start(design: Design, tag: &str) -> Host {
        let hv = Hypervisor::new().expect("hypervisor");
        let server = Server::new(ServerConfig::default(), None);
        let ready = Arc::new(Ready(
            rustix::event::eventfd(
                0,
                rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
            )
            .expect("eventfd"),
        ));
        hv.set_store_service(Arc::new(Service {
            server: server.clone(),
            design,
            ready: ready.clone(),
        }));
        let path =
            std::env::temp_dir().join(format!("pore-xsd-guests-{tag}-{}", std::process::id()));
        let listener = server.listen_unix(&path).expect("listen");
        let dom0 = Client::connect_unix(&path).expect("dom0");
        dom0.write("/bench/v1", b"x").unwrap();
        dom0.write("/bench/v2000", &[b'v'; 2000]).unwrap();
        // Owner dom0, everyone may read.
        let r0 = vec!["r0".parse().unwrap()];
        dom0.set_perms("/bench/v1", &r0).unwrap();
        dom0.set_perms("/bench/v2000", &r0).unwrap();
        Host {
            hv,
            server,
            design,
            ready,
            _dom0: dom0,
            _listener: listener,
        }
    }

    /// A guest's transport to its store ring.
    fn transport(&self, dom: &SimDomain) -> Box<dyn Transport> {
        if self.design == Design::LoopFd {
            let pore = Arc::new(Pore::open_store(dom).expect("store page"));
            let ch = Ringing {
                pore: pore.clone(),
                ready: self.ready.clone(),
            };
            Box::new(RingTransport::new(pore, ch))
        } else {
            Box::new(RingTransport::open_store(dom).expect("store page"))
        }
    }

    fn guest(&self, name: &str) -> (SimDomain, Client) {
        let dom = self.hv.create_domain(name).expect("domain");
        let c = Client::with_transport(self.transport(&dom), Config::default()).expect("client");
        (dom, c)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.server.shutdown();
    }
}

/// Read latencies of `c` over `n` reads of `/bench/v1`: (median, 99th percentile) in µs.
fn latencies(c: &Client, n: usize) -> (f64, f64) {
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Instant::now();
        let v = c.read("/bench/v1").expect("read");
        t.push(s.elapsed().as_secs_f64() * 1e6);
        assert_eq!(v.len(), 1);
    }
    t.sort_by(f64::total_cmp);
    (t[n / 2], t[n * 99 / 100])
}

/// This process's VmRSS in bytes.
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// This process's CPU time (user + system) in seconds, its context switches summed over
/// its threads, and its thread count.
fn usage() -> (f64, u64, usize) {
    // Fields 14 and 15 of /proc/self/stat (after the command's closing parenthesis: 12
    // and 13), in clock ticks.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let cpu = (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / ticks;
    let mut switches = 0;
    let mut threads = 0;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            threads += 1;
            let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            for l in s.lines() {
                if let Some(v) = l
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    switches += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    (cpu, switches, threads)
}

/// One fairness round of one design.
struct Fair {
    alone: (f64, f64),
    flooded: (f64, f64),
    stalled: (f64, f64),
    flood_rate: f64,
    stalled_sent: usize,
    rss: (u64, u64),
}

fn fairness_round(design: Design, n: usize) -> Fair {
    let host = Host::start(design, design.name());
    let (_normal_dom, normal) = host.guest("normal");
    latencies(&normal, n / 10);
    let alone = latencies(&normal, n);

    // A flooder on CPU 1: 16 pipelined reads of 2000 B at a time (all fit in its request
    // ring: it writes them all before it reads a reply), without pause.
    let stop = Arc::new(AtomicBool::new(false));
    let flood_dom = host.hv.create_domain("flooder").expect("domain");
    let t = host.transport(&flood_dom);
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            pore_benches::pin(1);
            let (mut rx, mut tx) = t.split().expect("split");
            let req = Request::Read("/bench/v2000").encode(1, 0, 4096).unwrap();
            let reply_len = 16 + 2000;
            let mut buf = vec![0u8; 16 * reply_len];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let deadline = Instant::now() + Duration::from_secs(10);
                for _ in 0..16 {
                    tx.write_message(&req, deadline).expect("flood write");
                }
                let mut got = 0;
                while got < 16 * reply_len {
                    match rx.read(&mut buf[got..], Duration::from_secs(10)) {
                        Ok(Some(k)) if k > 0 => got += k,
                        r => panic!("flooder read: {r:?}"),
                    }
                }
                n += 16;
            }
            drop(flood_dom);
            n
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let flooded = latencies(&normal, n);
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let flood_n = flood.join().unwrap_or(0);

    // A guest that writes reads of 2000 B until its ring takes no more (50 ms without
    // room), and never consumes a reply.
    let rss0 = rss();
    let stalled_dom = host.hv.create_domain("stalled").expect("domain");
    let (_rx, mut tx) = host.transport(&stalled_dom).split().expect("split");
    let req = Request::Read("/bench/v2000").encode(1, 0, 4096).unwrap();
    let mut sent = 0usize;
    while tx
        .write_message(&req, Instant::now() + Duration::from_millis(50))
        .is_ok()
    {
        sent += req.len();
        if sent > 64 << 20 {
            break;
        }
    }
    let stalled = latencies(&normal, n);
    let rss1 = rss();
    drop(tx);
    drop(stalled_dom);
    Fair {
        alone,
        flooded,
        stalled,
        flood_rate: flood_n as f64 / secs,
        stalled_sent: sent,
        rss: (rss0, rss1),
    }
}

/// Idle cost of `guests` introduced guests over `secs`: (CPU ms per second, context
/// switches per second, threads).
fn idle_round(design: Design, guests: usize, secs: f64) -> (f64, f64, usize) {
    let host = Host::start(design, design.name());
    let doms: Vec<SimDomain> = (0..guests)
        .map(|i| host.hv.create_domain(&format!("idle-{i}")).expect("domain"))
        .collect();
    // Let every guest's service start, then measure.
    std::thread::sleep(Duration::from_millis(500));
    let (c0, s0, _) = usage();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (c1, s1, threads) = usage();
    let el = t.elapsed().as_secs_f64();
    drop(doms);
    ((c1 - c0) * 1e3 / el, (s1 - s0) as f64 / el, threads)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The guest runs (see the module's documentation).
pub fn run(bench: bool) {
    let (n, rounds) = if bench { (5000, 3) } else { (200, 1) };
    println!(
        "\nguests on rings: a normal guest's read of 1 B, µs (median / p99) over {n} reads; ratios to alone\n{:<8} {:>16} {:>16} {:>7} {:>16} {:>7} {:>10} {:>10} {:>9} {:>11}",
        "design", "alone", "flooder", "ratio", "non-reader", "ratio", "RSS before", "RSS after", "flood/s", "stalled KiB"
    );
    // `PORE_BENCH_XSD_GUESTS=loop`, `=loop-fd` or `=threads`: that design only.
    let only = std::env::var("PORE_BENCH_XSD_GUESTS").unwrap_or_default();
    let designs: Vec<Design> = [Design::Loop, Design::LoopFd, Design::Threads]
        .into_iter()
        .filter(|d| !["loop", "loop-fd", "threads"].contains(&only.as_str()) || d.name() == only)
        .collect();
    let mut ratios: Vec<[Vec<f64>; 3]> = designs.iter().map(|_| Default::default()).collect();
    for _ in 0..rounds {
        for (i, &design) in designs.iter().enumerate() {
            let f = fairness_round(design, n);
            println!(
                "{:<8} {:>16} {:>16} {:>7.2} {:>16} {:>7.2} {:>9.1}M {:>9.1}M {:>9.0} {:>11}",
                design.name(),
                format!("{:.1} / {:.1}", f.alone.0, f.alone.1),
                format!("{:.1} / {:.1}", f.flooded.0, f.flooded.1),
                f.flooded.0 / f.alone.0,
                format!("{:.1} / {:.1}", f.stalled.0, f.stalled.1),
                f.stalled.0 / f.alone.0,
                f.rss.0 as f64 / 1e6,
                f.rss.1 as f64 / 1e6,
                f.flood_rate,
                f.stalled_sent / 1024,
            );
            ratios[i][0].push(f.alone.0);
            ratios[i][1].push(f.flooded.0 / f.alone.0);
            ratios[i][2].push(f.stalled.0 / f.alone.0);
        }
    }
    if rounds > 1 {
        println!("medians over rounds: alone µs, flooder ratio, non-reader ratio");
        for (d, r) in designs.iter().zip(ratios) {
            let [a, b, c] = r;
            println!(
                "{:<8} {:>8.1} {:>7.2} {:>7.2}",
                d.name(),
                median(a),
                median(b),
                median(c)
            );
        }
    }
    let (guests, secs) = if bench { (500, 3.0) } else { (50, 0.5) };
    println!("\nidle: {guests} guests introduced, none active, over {secs} s (this process)");
    println!(
        "{:<8} {:>14} {:>18} {:>8}",
        "design", "CPU ms per s", "switches per s", "threads"
    );
    for _ in 0..rounds.min(2) {
        for &design in &designs {
            let (cpu, sw, th) = idle_round(design, guests, secs);
            println!("{:<8} {:>14.2} {:>18.0} {:>8}", design.name(), cpu, sw, th);
        }
    }
}
