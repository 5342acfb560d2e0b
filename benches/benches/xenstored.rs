//! pore's xenstored against Debian's C xenstored and oxenstored, over a unix socket, on
//! the same operations, in one run: read 1 B and 2000 B, write 1 B and 2000 B,
//! directory, rm of a node and of a tree, an empty transaction, a read-modify-write
//! transaction, and a conflicting one (read X, X changed by another connection, write
//! Y, commit -> EAGAIN). Every daemon is a separate process; the bench pins itself to
//! CPU 0 before starting them, so client and daemon share one CPU:
//!
//! ```text
//! cargo bench -p pore-benches --bench xenstored
//! ```
//!
//! The C and OCaml daemons are started by the repository's `scripts/xenstored/launch.sh`
//! with `PORE_XS_QUIET=1` (trace and logs off), and are stopped by PID at the end; ours
//! is this executable re-run as a server. A missing daemon is reported and left out.
//! Every operation runs through two clients: a bare socket with pre-encoded requests
//! ("raw": the rows are the daemons' own costs) and Debian's libxenstore (`xs_read`,
//! `xs_write`, ...: the client of Xen's own tools). Summary tables (the daemons taking
//! turns, so that a change of machine load hits all of them), one per client, with our
//! time over the best other daemon's, are printed at the end.
//!
//! Environment:
//! * `PORE_BENCH_XSD_BEFORE=<executable>`: an earlier build of this bench, run as one
//!   more daemon ("before"), so that a change of our server is measured in the same run
//!   (the tables add our time over its time).
//! * `PORE_BENCH_XSD_SUMMARY=1`: the summary tables only (no criterion groups).
//! * `PORE_BENCH_XSD_BATCH=1`: every daemon's threads run under `SCHED_BATCH`, so that a
//!   daemon woken by a client's write does not preempt the client. libxenstore writes a
//!   request's header and payload in two writes: on one CPU, a daemon that preempts the
//!   client at the first wakes up for the header alone, then again for the payload.
//! * `PORE_BENCH_XSD_FAIRNESS=1`: instead of the above, the fairness runs: a normal
//!   client's read latency alone, next to a client flooding pipelined requests (its own
//!   thread, on CPU 1), and next to a client that sends requests and never reads the
//!   replies; with each daemon's resident memory before and after the stalled client.
//! * `PORE_BENCH_XSD_GUESTS=1`: instead of all the above, our server's guests on rings
//!   (the simulator's domains, in this process), served by the event loop and by a thread
//!   each, taking turns: the same fairness runs, and the idle cost of 500 guests (see
//!   `xenstored_guests/mod.rs`).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use pore_benches::libxs::Xs;
use pore_benches::xsd::{serve, start_debian, start_ours, Daemon, Ops, Raw};
use pore_xenstore::Request;

#[path = "xenstored_guests/mod.rs"]
mod guests;

const SERVE_ENV: &str = "PORE_BENCH_XENSTORED_SERVE";

const OPS: &[&str] = &[
    "read 1 B",
    "read 2000 B",
    "write 1 B",
    "write 2000 B",
    "directory (32)",
    "rm node",
    "rm tree (1+10)",
    "empty txn",
    "RMW txn",
    "conflicting txn",
];

/// Runs `iters` of operation `op` on `c` (with `other` for conflicts); returns the time.
fn run_op<C: Ops>(op: &str, c: &mut C, other: &mut C, iters: u64) -> Duration {
    let big = vec![b'v'; 2000];
    let mut v = Vec::with_capacity(4096);
    let mut total = Duration::ZERO;
    match op {
        "read 1 B" | "read 2000 B" => {
            let p = if op == "read 1 B" {
                "/bench/v1"
            } else {
                "/bench/v2000"
            };
            let t = Instant::now();
            for _ in 0..iters {
                assert!(c.read(0, p, &mut v));
            }
            total = t.elapsed();
        }
        "write 1 B" | "write 2000 B" => {
            let val: &[u8] = if op == "write 1 B" { b"x" } else { &big };
            let t = Instant::now();
            for _ in 0..iters {
                assert!(c.write(0, "/bench/w", val));
            }
            total = t.elapsed();
        }
        "directory (32)" => {
            let t = Instant::now();
            for _ in 0..iters {
                assert_eq!(c.directory(0, "/bench/dir"), Some(32));
            }
            total = t.elapsed();
        }
        "rm node" => {
            for _ in 0..iters {
                assert!(c.write(0, "/bench/rm", b"x"));
                let t = Instant::now();
                assert!(c.rm(0, "/bench/rm"));
                total += t.elapsed();
            }
        }
        "rm tree (1+10)" => {
            let paths: Vec<String> = (0..10).map(|i| format!("/bench/tree/n{i}")).collect();
            for _ in 0..iters {
                for p in &paths {
                    assert!(c.write(0, p, b"x"));
                }
                let t = Instant::now();
                assert!(c.rm(0, "/bench/tree"));
                total += t.elapsed();
            }
        }
        "empty txn" => {
            let t = Instant::now();
            for _ in 0..iters {
                let id = c.tx_start();
                assert!(c.commit(id));
            }
            total = t.elapsed();
        }
        "RMW txn" => {
            let t = Instant::now();
            for _ in 0..iters {
                let id = c.tx_start();
                assert!(c.read(id, "/bench/count", &mut v));
                let n: u64 = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.trim_end_matches('\0').parse().ok())
                    .unwrap_or(0);
                let s = (n + 1).to_string();
                assert!(c.write(id, "/bench/count", s.as_bytes()));
                assert!(c.commit(id));
            }
            total = t.elapsed();
        }
        "conflicting txn" => {
            // A new value each time: oxenstored ignores a rewrite with the same value.
            static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            for _ in 0..iters {
                let val = SEQ
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    .to_string();
                let t = Instant::now();
                let id = c.tx_start();
                assert!(c.read(id, "/bench/x", &mut v));
                let mid = Instant::now();
                assert!(other.write(0, "/bench/x", val.as_bytes()));
                let resume = Instant::now();
                assert!(c.write(id, "/bench/y", b"y"));
                assert!(!c.commit(id), "conflict not detected");
                total += mid - t + resume.elapsed();
            }
        }
        _ => unreachable!(),
    }
    total
}

fn prepare(c: &mut Raw) {
    c.ok(
        &Request::Write {
            path: "/bench/v1",
            value: b"1",
        },
        0,
    );
    c.ok(
        &Request::Write {
            path: "/bench/v2000",
            value: &[b'v'; 2000],
        },
        0,
    );
    c.ok(
        &Request::Write {
            path: "/bench/count",
            value: b"0",
        },
        0,
    );
    c.ok(
        &Request::Write {
            path: "/bench/x",
            value: b"0",
        },
        0,
    );
    for i in 0..32 {
        c.ok(
            &Request::Write {
                path: &format!("/bench/dir/child-{i:02}"),
                value: b"",
            },
            0,
        );
    }
}

fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// The summary for one client: the daemons take turns, 15 rounds of about 20 ms each per
/// operation; per daemon the median of its rounds, and the median over rounds of our time
/// over the best other daemon's (and over the earlier build's) in that round.
fn summary<C: Ops>(client: &str, daemons: &[Daemon], conns: &mut [(C, C)], rounds: usize) {
    let has_before = daemons.iter().any(|d| d.name == "before");
    println!(
        "\n{client}: µs per operation, medians of {rounds} interleaved rounds\n{:<18} {:>8} {:>8} {:>8} {:>8} {:>10}{}",
        "operation",
        "pore",
        "before",
        "C",
        "OCaml",
        "pore/best",
        if has_before { "  pore/before" } else { "" }
    );
    let idx = |name: &str| daemons.iter().position(|d| d.name == name);
    for op in OPS {
        // Iterations per round from a quick probe on the first daemon.
        let probe = {
            let (a, b) = &mut conns[0];
            run_op(op, a, b, 50).as_secs_f64() / 50.0
        };
        let iters = if rounds == 1 {
            20
        } else {
            ((0.02 / probe.max(1e-7)) as u64).clamp(20, 5000)
        };
        let mut per: Vec<Vec<f64>> = vec![Vec::new(); daemons.len()];
        let mut ratios = Vec::new();
        let mut vs_before = Vec::new();
        for _ in 0..rounds {
            let mut round = Vec::new();
            for (i, (a, b)) in conns.iter_mut().enumerate() {
                let t = run_op(op, a, b, iters).as_secs_f64() * 1e6 / iters as f64;
                per[i].push(t);
                round.push(t);
            }
            let best = daemons
                .iter()
                .enumerate()
                .filter(|(_, d)| d.name != "pore" && d.name != "before")
                .map(|(i, _)| round[i])
                .min_by(f64::total_cmp);
            if let (Some(o), Some(b)) = (idx("pore"), best) {
                ratios.push(round[o] / b);
            }
            if let (Some(o), Some(b)) = (idx("pore"), idx("before")) {
                vs_before.push(round[o] / round[b]);
            }
        }
        let col = |per: &mut Vec<Vec<f64>>, name: &str| {
            idx(name)
                .and_then(|i| median(&mut per[i]))
                .map_or("-".to_string(), |v| format!("{v:.2}"))
        };
        let ratio = median(&mut ratios).map_or("-".to_string(), |r| format!("{r:.2}"));
        let before = median(&mut vs_before).map_or(String::new(), |r| format!("  {r:>11.2}"));
        println!(
            "{:<18} {:>8} {:>8} {:>8} {:>8} {:>10}{}",
            op,
            col(&mut per, "pore"),
            col(&mut per, "before"),
            col(&mut per, "C xenstored"),
            col(&mut per, "oxenstored"),
            ratio,
            before
        );
    }
}

/// Read latencies of `c` over `n` reads of `/bench/v1`: (median, 99th percentile) in µs.
fn latencies(c: &mut Raw, n: usize) -> (f64, f64) {
    let mut v = Vec::new();
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Instant::now();
        assert!(Ops::read(c, 0, "/bench/v1", &mut v));
        t.push(s.elapsed().as_secs_f64() * 1e6);
    }
    t.sort_by(f64::total_cmp);
    (t[n / 2], t[n * 99 / 100])
}

/// The fairness runs (see the module's documentation).
fn fairness(daemons: &[Daemon]) {
    const N: usize = 5000;
    println!(
        "\nfairness: a normal client's read of 1 B, µs (median / p99) over {N} reads; ratios to alone\n{:<12} {:>16} {:>16} {:>8} {:>16} {:>8} {:>10} {:>10}",
        "daemon", "alone", "flooder", "ratio", "non-reader", "ratio", "RSS before", "RSS stalled"
    );
    for d in daemons {
        let mut c = Raw::connect(&d.sock);
        prepare(&mut c);
        latencies(&mut c, 500);
        let alone = latencies(&mut c, N);
        // A flooder on CPU 1: 64 pipelined reads of 2000 B at a time, without pause.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flood = {
            let sock = d.sock.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                pore_benches::pin(1);
                let mut f = Raw::connect(&sock);
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    f.pipeline((0..64).map(|_| Request::Read("/bench/v2000")));
                    n += 64;
                }
                n
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        let flooded = latencies(&mut c, N);
        let secs = t.elapsed().as_secs_f64();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let flood_n = flood.join().unwrap_or(0);
        // A client that sends reads of 2000 B until its socket takes no more, and never
        // reads a reply.
        let rss0 = d.rss().0;
        let stalled = UnixStream::connect(&d.sock).expect("connect");
        stalled.set_nonblocking(true).unwrap();
        let req = Request::Read("/bench/v2000").encode(1, 0, 4096).unwrap();
        let mut sent = 0usize;
        let mut idle = 0;
        // Until the daemon stops taking requests (100 ms without progress).
        while idle < 100 {
            match (&stalled).write(&req) {
                Ok(n) => sent += n,
                Err(_) => {
                    idle += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        let stalled_lat = latencies(&mut c, N);
        let rss1 = d.rss().0;
        println!(
            "{:<12} {:>16} {:>16} {:>8.2} {:>16} {:>8.2} {:>9.1}M {:>9.1}M",
            d.name,
            format!("{:.1} / {:.1}", alone.0, alone.1),
            format!("{:.1} / {:.1}", flooded.0, flooded.1),
            flooded.0 / alone.0,
            format!("{:.1} / {:.1}", stalled_lat.0, stalled_lat.1),
            stalled_lat.0 / alone.0,
            rss0 as f64 / 1e6,
            rss1 as f64 / 1e6,
        );
        println!(
            "{:<12} (flooder: {:.0} requests/s; stalled client sent {} KiB of requests before the daemon stopped taking them)",
            "",
            flood_n as f64 / secs,
            sent / 1024
        );
        drop(stalled);
    }
}

fn main() {
    if let Some(sock) = std::env::var_os(SERVE_ENV) {
        serve(Path::new(&sock));
        return;
    }
    let _ = pore_benches::cpus();
    pore_benches::pin(0);
    if std::env::var_os("PORE_BENCH_XSD_GUESTS").is_some() {
        guests::run(std::env::args().any(|a| a == "--bench"));
        return;
    }
    let dir = std::env::temp_dir().join(format!("pore-xsd-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let exe = std::env::current_exe().expect("this executable");
    let mut daemons = Vec::new();
    daemons.extend(start_ours("pore", &exe, SERVE_ENV, &dir));
    if let Some(before) = std::env::var_os("PORE_BENCH_XSD_BEFORE") {
        daemons.extend(start_ours("before", Path::new(&before), SERVE_ENV, &dir));
    }
    daemons.extend(start_debian("C xenstored", "c", &dir));
    daemons.extend(start_debian("oxenstored", "ocaml", &dir));
    if std::env::var_os("PORE_BENCH_XSD_BATCH").is_some() {
        for d in &daemons {
            let n = pore_benches::sched::batch(d.pid);
            eprintln!("xenstored bench: {}: {n} threads under SCHED_BATCH", d.name);
        }
    }
    if std::env::var_os("PORE_BENCH_XSD_FAIRNESS").is_some() {
        fairness(&daemons);
        drop(daemons);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let mut raw: Vec<(Raw, Raw)> = daemons
        .iter()
        .map(|d| {
            let mut a = Raw::connect(&d.sock);
            let b = Raw::connect(&d.sock);
            prepare(&mut a);
            (a, b)
        })
        .collect();
    let mut xs: Vec<(Xs, Xs)> = daemons
        .iter()
        .map(|d| {
            let open = || Xs::connect(&d.sock).expect("libxenstore cannot connect");
            (open(), open())
        })
        .collect();
    // Let every daemon settle after start-up (they share the CPU): a short pass of every
    // operation on each before anything is measured.
    let settle = if std::env::args().any(|a| a == "--bench") {
        200
    } else {
        5
    };
    for op in OPS {
        for (a, b) in raw.iter_mut() {
            run_op(op, a, b, settle);
        }
        for (a, b) in xs.iter_mut() {
            run_op(op, a, b, settle);
        }
    }
    if std::env::var_os("PORE_BENCH_XSD_SUMMARY").is_none() {
        let mut crit = Criterion::default()
            .configure_from_args()
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .sample_size(30);
        for op in OPS {
            let mut g = crit.benchmark_group(format!("xenstored/{op}"));
            for (d, (a, b)) in daemons.iter().zip(raw.iter_mut()) {
                g.bench_function(BenchmarkId::new("raw", d.name), |bn| {
                    bn.iter_custom(|iters| run_op(op, a, b, iters))
                });
            }
            for (d, (a, b)) in daemons.iter().zip(xs.iter_mut()) {
                g.bench_function(BenchmarkId::new("libxenstore", d.name), |bn| {
                    bn.iter_custom(|iters| run_op(op, a, b, iters))
                });
            }
            g.finish();
        }
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us without it: one
    // short round only.
    let rounds = if std::env::args().any(|a| a == "--bench") {
        15
    } else {
        1
    };
    summary("raw socket client", &daemons, &mut raw, rounds);
    summary("libxenstore client", &daemons, &mut xs, rounds);
    drop(raw);
    drop(xs);
    drop(daemons);
    let _ = std::fs::remove_dir_all(&dir);
}
