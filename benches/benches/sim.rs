//! pore-backend-sim benches, with the raw mechanisms measured in the same run.
//!
//! * `sim_pingpong`: blocking ping-pong round trip over a simulated event channel (two domains
//!   as threads) against raw eventfd ping-pong between two threads. Goal: ≤ 1.05× (the doorbell
//!   adds nothing; no syscall while the peer is awake).
//! * `sim_stream`: process-to-process streaming, a producer domain process writing into a v2
//!   straw ring (pore-ring) read by this process (a domain of the same simulated Xen), in
//!   blocking mode with spin-then-sleep (`pore_ring::wait::Waiter`, 50 µs), against a unix
//!   socket between the same two processes. Goals: 64 KiB messages ≥ 1.5× with 32 KiB per
//!   direction and ≥ 3× with 1 MiB; 64 B messages with batched publication ≥ 1.0× a socket
//!   written through a 64 KiB buffered writer.
//!
//! The bench binary is also the producer: it re-runs itself as a domain process
//! (`pore_backend_sim::process`).

use std::io::{BufWriter, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use pore_backend_sim::process::{self, run_child_role};
use pore_backend_sim::{DomainProcess, Hypervisor, SimDomain};
use pore_core::{DomId, EventChannel, Events, GrantRef, Pore, Port, WaitOutcome};
use pore_ring::prelude::*;
use pore_ring::v2::{V2Geometry, V2Ring};
use pore_ring::wait::{notify_if, StdClock, Waiter};
use rustix::event::{eventfd, EventfdFlags};

const LONG: Duration = Duration::from_secs(20);
/// The spin budget before sleeping (`PORE_BENCH_SPIN_US` overrides the default 50 µs).
fn spin() -> Duration {
    let us = std::env::var("PORE_BENCH_SPIN_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    Duration::from_micros(us)
}

// ---------------------------------------------------------------------------------------------
// Ping-pong

fn efd_write(fd: &std::os::fd::OwnedFd) {
    rustix::io::write(fd, &1u64.to_ne_bytes()).expect("eventfd write");
}

fn efd_read(fd: &std::os::fd::OwnedFd) {
    let mut buf = [0u8; 8];
    rustix::io::read(fd, &mut buf).expect("eventfd read");
}

fn eventfd_round_trips(iters: u64) -> Duration {
    let ping = eventfd(0, EventfdFlags::CLOEXEC).unwrap();
    let pong = eventfd(0, EventfdFlags::CLOEXEC).unwrap();
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            start.wait();
            for _ in 0..iters {
                efd_read(&ping);
                efd_write(&pong);
            }
        });
        start.wait();
        let t = Instant::now();
        for _ in 0..iters {
            efd_write(&ping);
            efd_read(&pong);
        }
        t.elapsed()
    })
}

fn sim_round_trips<C: EventChannel + Sync>(a: &C, b: &C, iters: u64) -> Duration {
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            start.wait();
            for _ in 0..iters {
                while b.wait(LONG).unwrap() != WaitOutcome::Event {}
                b.notify().unwrap();
            }
        });
        start.wait();
        let t = Instant::now();
        for _ in 0..iters {
            a.notify().unwrap();
            while a.wait(LONG).unwrap() != WaitOutcome::Event {}
        }
        t.elapsed()
    })
}

fn bench_pingpong(c: &mut Criterion) {
    let hv = Hypervisor::new().unwrap();
    let (d1, d2) = (
        hv.create_domain("ping").unwrap(),
        hv.create_domain("pong").unwrap(),
    );
    let a = d1.alloc_unbound(d2.id()).unwrap();
    let b = d2.bind_interdomain(d1.id(), a.port()).unwrap();
    // Load on a shared machine drifts within seconds: alternate the contenders in short
    // windows and compare medians, before criterion's own (sequential) measurements.
    let rounds = 1_000u64;
    let (mut raw, mut sim) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        raw.push(eventfd_round_trips(rounds).as_nanos() as f64 / rounds as f64);
        sim.push(sim_round_trips(&a, &b, rounds).as_nanos() as f64 / rounds as f64);
    }
    raw.sort_by(f64::total_cmp);
    sim.sort_by(f64::total_cmp);
    let (raw_m, sim_m) = (raw[raw.len() / 2], sim[sim.len() / 2]);
    println!(
        "sim_pingpong interleaved (15 x {rounds} round trips): median raw eventfd {:.2} us, \
         sim event channel {:.2} us, ratio {:.3}; best {:.2} vs {:.2} us, ratio {:.3}",
        raw_m / 1000.0,
        sim_m / 1000.0,
        sim_m / raw_m,
        raw[0] / 1000.0,
        sim[0] / 1000.0,
        sim[0] / raw[0]
    );
    let mut g = c.benchmark_group("sim_pingpong");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw_eventfd", |bch| bch.iter_custom(eventfd_round_trips));
    g.bench_function("sim_event_channel", |bch| {
        bch.iter_custom(|iters| sim_round_trips(&a, &b, iters))
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Streaming between processes

/// The producer process: `ring <parent domid> <order>` or `sock <path>`; then commands on
/// stdin: `go <msg size> <count> <batched 0|1>`, `quit`.
fn producer_role(role: &str, args: &[String]) -> i32 {
    if role != "producer" {
        return 2;
    }
    match args.first().map(String::as_str) {
        Some("ring") => ring_producer(args),
        Some("sock") => sock_producer(args),
        _ => 2,
    }
}

fn next_command() -> Option<(usize, u64, bool)> {
    let line = process::listen(Duration::from_secs(600)).ok()?;
    let mut w = line.split_whitespace();
    if w.next()? != "go" {
        return None;
    }
    Some((
        w.next()?.parse().ok()?,
        w.next()?.parse().ok()?,
        w.next()? == "1",
    ))
}

fn ring_producer(args: &[String]) -> i32 {
    let parent = DomId(args[1].parse().unwrap());
    let order: u8 = args[2].parse().unwrap();
    let dom = SimDomain::connect().unwrap();
    let geometry = V2Geometry::new(order, 0).unwrap();
    let pore = Pore::open_active(&dom, parent, geometry.pages()).unwrap();
    let info = pore.info();
    let mut ring = V2Ring::active(pore.memory(), geometry, &info.refs[1..]).unwrap();
    let refs: Vec<String> = info.refs.iter().map(|r| r.0.to_string()).collect();
    process::report(&format!(
        "{} {} {}",
        dom.id().0,
        info.port.0,
        refs.join(",")
    ));
    let waiter = Waiter::new(StdClock::new(), spin());
    let chan = pore.channel();
    let msg = vec![0xa5u8; 1 << 20];
    while let Some((size, count, batched)) = next_command() {
        let tx = ring.writer();
        for _ in 0..count {
            let mut off = 0;
            while off < size {
                let n = if batched {
                    tx.write_deferred(&msg[off..size]).unwrap()
                } else {
                    tx.write(&msg[off..size]).unwrap()
                };
                off += n;
                if n == 0 {
                    tx.commit().unwrap();
                    notify_if(tx.take_notify(), chan).unwrap();
                    waiter.wait_writable(tx, chan, LONG).unwrap();
                } else if !batched || tx.staged() >= tx.capacity() / 4 {
                    // Batched: publish once per quarter ring, so the consumer overlaps with us.
                    tx.commit().unwrap();
                    notify_if(tx.take_notify(), chan).unwrap();
                }
            }
        }
        tx.commit().unwrap();
        notify_if(tx.take_notify(), chan).unwrap();
    }
    0
}

fn sock_producer(args: &[String]) -> i32 {
    let stream = UnixStream::connect(&args[1]).unwrap();
    let msg = vec![0xa5u8; 1 << 20];
    while let Some((size, count, batched)) = next_command() {
        if batched {
            let mut w = BufWriter::with_capacity(64 * 1024, &stream);
            for _ in 0..count {
                w.write_all(&msg[..size]).unwrap();
            }
            w.flush().unwrap();
        } else {
            let mut s = &stream;
            for _ in 0..count {
                s.write_all(&msg[..size]).unwrap();
            }
        }
    }
    0
}

struct RingPeer<'a> {
    child: DomainProcess,
    pore: Pore<SimDomain>,
    _dom: &'a SimDomain,
}

fn spawn_ring_peer<'a>(hv: &Hypervisor, dom: &'a SimDomain, order: u8) -> RingPeer<'a> {
    let mut child = hv
        .domain_command("producer")
        .unwrap()
        .arg("ring")
        .arg(dom.id().0.to_string())
        .arg(order.to_string())
        .spawn()
        .unwrap();
    let line = child.read_report(LONG).unwrap();
    let mut w = line.split_whitespace();
    let peer = DomId(w.next().unwrap().parse().unwrap());
    let port = Port(w.next().unwrap().parse().unwrap());
    let refs: Vec<GrantRef> = w
        .next()
        .unwrap()
        .split(',')
        .map(|r| GrantRef(r.parse().unwrap()))
        .collect();
    let pore = Pore::open_passive(dom, peer, &refs, port).unwrap();
    RingPeer {
        child,
        pore,
        _dom: dom,
    }
}

fn ring_stream(peer: &mut RingPeer<'_>, size: usize, count: u64, batched: bool) -> Duration {
    let total = size as u64 * count;
    let mut ring = V2Ring::passive(peer.pore.memory()).unwrap();
    let rx = ring.reader();
    let chan = peer.pore.channel();
    let waiter = Waiter::new(StdClock::new(), spin());
    let mut buf = vec![0u8; 64 * 1024];
    let t = Instant::now();
    peer.child
        .tell(&format!("go {size} {count} {}", u8::from(batched)))
        .unwrap();
    let mut got = 0u64;
    while got < total {
        let n = rx.read(&mut buf).unwrap();
        got += n as u64;
        if n > 0 {
            notify_if(rx.take_notify(), chan).unwrap();
        } else {
            waiter.wait_readable(rx, chan, LONG).unwrap();
        }
    }
    t.elapsed()
}

struct SockPeer {
    child: DomainProcess,
    stream: UnixStream,
}

fn spawn_sock_peer(hv: &Hypervisor) -> SockPeer {
    let path = std::env::temp_dir().join(format!("pore-bench-sock-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let child = hv
        .domain_command("producer")
        .unwrap()
        .arg("sock")
        .arg(path.display().to_string())
        .spawn()
        .unwrap();
    let (stream, _) = listener.accept().unwrap();
    let _ = std::fs::remove_file(&path);
    SockPeer { child, stream }
}

fn sock_stream(peer: &mut SockPeer, size: usize, count: u64, batched: bool) -> Duration {
    let total = size as u64 * count;
    let mut buf = vec![0u8; 64 * 1024];
    let t = Instant::now();
    peer.child
        .tell(&format!("go {size} {count} {}", u8::from(batched)))
        .unwrap();
    let mut got = 0u64;
    while got < total {
        let n = peer.stream.read(&mut buf).unwrap();
        assert!(n > 0, "the producer closed the socket");
        got += n as u64;
    }
    t.elapsed()
}

fn bench_stream(c: &mut Criterion) {
    let hv = Hypervisor::start_unexported().unwrap();
    let me = hv.create_domain("consumer").unwrap();
    let mut sock = spawn_sock_peer(&hv);
    let cases: [(&str, usize, u8, bool); 3] = [
        ("64KiB_msgs_32KiB_ring", 64 * 1024, 3, false),
        ("64KiB_msgs_1MiB_ring", 64 * 1024, 8, false),
        ("64B_msgs_batched_32KiB_ring", 64, 3, true),
    ];
    let mut g = c.benchmark_group("sim_stream");
    for (name, size, order, batched) in cases {
        g.throughput(Throughput::Bytes(size as u64));
        let mut ring = spawn_ring_peer(&hv, &me, order);
        g.bench_function(BenchmarkId::new("v2_ring", name), |b| {
            b.iter_custom(|iters| ring_stream(&mut ring, size, iters, batched))
        });
        g.bench_function(BenchmarkId::new("unix_socket", name), |b| {
            b.iter_custom(|iters| sock_stream(&mut sock, size, iters, batched))
        });
        let _ = ring.child.tell("quit");
        let _ = ring.pore.close();
    }
    g.finish();
    let _ = sock.child.tell("quit");
}

fn main() {
    run_child_role(producer_role);
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(10)
        .configure_from_args();
    bench_pingpong(&mut c);
    bench_stream(&mut c);
    c.final_summary();
}
