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
//! is this executable re-run as a server. A missing daemon is reported and left out. The client is a bare socket with
//! pre-encoded requests, so the rows are the daemons' own costs. A summary table (the
//! daemons taking turns, so that a change of machine load hits all of them) with our
//! time over the best other daemon's is printed at the end.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use pore_xenstore::server::{Config, Server};
use pore_xenstore::Request;

const SERVE_ENV: &str = "PORE_BENCH_XENSTORED_SERVE";

/// A minimal blocking client: one request, one reply.
struct Raw {
    s: UnixStream,
    buf: Vec<u8>,
    req: Vec<u8>,
}

impl Raw {
    fn connect(p: &Path) -> Self {
        let s = UnixStream::connect(p).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Raw {
            s,
            buf: vec![0; 8192],
            req: Vec::new(),
        }
    }

    /// Sends `r` (tx id `tx`) and returns the reply type and payload.
    fn call(&mut self, r: &Request<'_>, tx: u32) -> (u32, &[u8]) {
        self.req.clear();
        r.encode_into(1, tx, 4096, &mut self.req).unwrap();
        self.s.write_all(&self.req).unwrap();
        let mut have = 0;
        loop {
            let n = self.s.read(&mut self.buf[have..]).unwrap();
            assert!(n > 0, "daemon closed the connection");
            have += n;
            if have >= 16 {
                let len = u32::from_le_bytes(self.buf[12..16].try_into().unwrap()) as usize;
                if have >= 16 + len {
                    let ty = u32::from_le_bytes(self.buf[0..4].try_into().unwrap());
                    return (ty, &self.buf[16..16 + len]);
                }
            }
        }
    }

    fn ok(&mut self, r: &Request<'_>, tx: u32) {
        let (ty, p) = self.call(r, tx);
        assert_ne!(ty, 16, "{r:?}: error {:?}", String::from_utf8_lossy(p));
    }

    fn tx_start(&mut self) -> u32 {
        let (ty, p) = self.call(&Request::TransactionStart, 0);
        assert_eq!(ty, 6);
        std::str::from_utf8(&p[..p.len() - 1])
            .unwrap()
            .parse()
            .unwrap()
    }
}

/// A daemon under test: a socket and how to stop it.
struct Daemon {
    name: &'static str,
    sock: PathBuf,
    stop: Stop,
}

enum Stop {
    Script(PathBuf, String),
    Child(Child),
}

impl Drop for Daemon {
    fn drop(&mut self) {
        match &mut self.stop {
            Stop::Script(script, pid) => {
                let _ = Command::new("bash")
                    .arg(script)
                    .arg("stop")
                    .arg(&*pid)
                    .status();
            }
            Stop::Child(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn launcher() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/xenstored/launch.sh")
}

fn start_debian(name: &'static str, kind: &str, dir: &Path) -> Option<Daemon> {
    let script = launcher();
    let sock = dir.join(format!("{kind}.sock"));
    let out = Command::new("bash")
        .arg(&script)
        .arg("start")
        .arg(&sock)
        .arg(kind)
        .env("PORE_XS_QUIET", "1")
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "xenstored bench: {name} did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Some(Daemon {
        name,
        sock,
        stop: Stop::Script(script, pid),
    })
}

fn start_ours(dir: &Path) -> Option<Daemon> {
    let sock = dir.join("pore.sock");
    let child = Command::new(std::env::current_exe().ok()?)
        .env(SERVE_ENV, &sock)
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&sock).is_err() {
        if Instant::now() > deadline {
            eprintln!("xenstored bench: our server did not start");
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(Daemon {
        name: "pore",
        sock,
        stop: Stop::Child(child),
    })
}

/// The server side of this executable: serve until killed (or 10 minutes).
fn serve(sock: &Path) {
    let server = Server::new(Config::default(), None);
    let listener = server.listen_unix(sock).expect("listen");
    std::thread::sleep(Duration::from_secs(600));
    server.shutdown();
    listener.join();
}

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
fn run_op(op: &str, c: &mut Raw, other: &mut Raw, iters: u64) -> Duration {
    let big = vec![b'v'; 2000];
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
                c.ok(&Request::Read(p), 0);
            }
            total = t.elapsed();
        }
        "write 1 B" | "write 2000 B" => {
            let v: &[u8] = if op == "write 1 B" { b"x" } else { &big };
            let t = Instant::now();
            for _ in 0..iters {
                c.ok(
                    &Request::Write {
                        path: "/bench/w",
                        value: v,
                    },
                    0,
                );
            }
            total = t.elapsed();
        }
        "directory (32)" => {
            let t = Instant::now();
            for _ in 0..iters {
                c.ok(&Request::Directory("/bench/dir"), 0);
            }
            total = t.elapsed();
        }
        "rm node" => {
            for _ in 0..iters {
                c.ok(
                    &Request::Write {
                        path: "/bench/rm",
                        value: b"x",
                    },
                    0,
                );
                let t = Instant::now();
                c.ok(&Request::Rm("/bench/rm"), 0);
                total += t.elapsed();
            }
        }
        "rm tree (1+10)" => {
            for _ in 0..iters {
                for i in 0..10 {
                    c.ok(
                        &Request::Write {
                            path: &format!("/bench/tree/n{i}"),
                            value: b"x",
                        },
                        0,
                    );
                }
                let t = Instant::now();
                c.ok(&Request::Rm("/bench/tree"), 0);
                total += t.elapsed();
            }
        }
        "empty txn" => {
            let t = Instant::now();
            for _ in 0..iters {
                let id = c.tx_start();
                c.ok(&Request::TransactionEnd { commit: true }, id);
            }
            total = t.elapsed();
        }
        "RMW txn" => {
            let t = Instant::now();
            for _ in 0..iters {
                let id = c.tx_start();
                let (_, v) = c.call(&Request::Read("/bench/count"), id);
                let n: u64 = std::str::from_utf8(v).unwrap_or("0").parse().unwrap_or(0);
                let s = (n + 1).to_string();
                c.ok(
                    &Request::Write {
                        path: "/bench/count",
                        value: s.as_bytes(),
                    },
                    id,
                );
                c.ok(&Request::TransactionEnd { commit: true }, id);
            }
            total = t.elapsed();
        }
        "conflicting txn" => {
            // A new value each time: oxenstored ignores a rewrite with the same value.
            static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            for _ in 0..iters {
                let v = SEQ
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    .to_string();
                let t = Instant::now();
                let id = c.tx_start();
                c.ok(&Request::Read("/bench/x"), id);
                let mid = Instant::now();
                other.ok(
                    &Request::Write {
                        path: "/bench/x",
                        value: v.as_bytes(),
                    },
                    0,
                );
                let resume = Instant::now();
                c.ok(
                    &Request::Write {
                        path: "/bench/y",
                        value: b"y",
                    },
                    id,
                );
                let (ty, p) = c.call(&Request::TransactionEnd { commit: true }, id);
                assert!(ty == 16 && p == b"EAGAIN\0", "conflict not detected");
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

fn pin_to_cpu0() {
    let mut set = rustix::thread::CpuSet::new();
    set.set(0);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        eprintln!("xenstored bench: cannot pin to CPU 0: {e}");
    }
}

fn main() {
    if let Some(sock) = std::env::var_os(SERVE_ENV) {
        serve(Path::new(&sock));
        return;
    }
    pin_to_cpu0();
    let dir = std::env::temp_dir().join(format!("pore-xsd-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let mut daemons = Vec::new();
    daemons.extend(start_ours(&dir));
    daemons.extend(start_debian("C xenstored", "c", &dir));
    daemons.extend(start_debian("oxenstored", "ocaml", &dir));
    let mut crit = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    let mut conns: Vec<(Raw, Raw)> = daemons
        .iter()
        .map(|d| {
            let mut a = Raw::connect(&d.sock);
            let b = Raw::connect(&d.sock);
            prepare(&mut a);
            (a, b)
        })
        .collect();
    // Let every daemon settle after start-up (they share the CPU): a short pass of every
    // operation on each before anything is measured.
    for op in OPS {
        for (a, b) in conns.iter_mut() {
            run_op(op, a, b, 200);
        }
    }
    for op in OPS {
        let mut g = crit.benchmark_group(format!("xenstored/{op}"));
        for (d, (a, b)) in daemons.iter().zip(conns.iter_mut()) {
            g.bench_function(BenchmarkId::from_parameter(d.name), |bn| {
                bn.iter_custom(|iters| run_op(op, a, b, iters))
            });
        }
        g.finish();
    }
    // Summary, robust to a machine whose load changes: the daemons take turns, 15
    // rounds of about 20 ms each per operation; per daemon the median of its rounds,
    // and the median over rounds of our time over the best other daemon's in that round.
    println!(
        "\n{:<18} {:>10} {:>10} {:>10} {:>10}   (µs per operation, medians of 15 interleaved rounds)",
        "operation", "pore", "C", "OCaml", "pore/best"
    );
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    for op in OPS {
        // Iterations per round from a quick probe on the first daemon.
        let probe = {
            let (a, b) = &mut conns[0];
            run_op(op, a, b, 50).as_secs_f64() / 50.0
        };
        let iters = ((0.02 / probe.max(1e-7)) as u64).clamp(20, 5000);
        let mut per: Vec<Vec<f64>> = vec![Vec::new(); daemons.len()];
        let mut ratios = Vec::new();
        for _ in 0..15 {
            let mut round = Vec::new();
            for (i, (a, b)) in conns.iter_mut().enumerate() {
                let t = run_op(op, a, b, iters).as_secs_f64() * 1e6 / iters as f64;
                per[i].push(t);
                round.push(t);
            }
            let ours = daemons.iter().position(|d| d.name == "pore");
            let best = daemons
                .iter()
                .enumerate()
                .filter(|(_, d)| d.name != "pore")
                .map(|(i, _)| round[i])
                .min_by(f64::total_cmp);
            if let (Some(o), Some(b)) = (ours, best) {
                ratios.push(round[o] / b);
            }
        }
        let col = |per: &mut Vec<Vec<f64>>, name: &str| {
            daemons
                .iter()
                .position(|d| d.name == name)
                .and_then(|i| median(&mut per[i]))
                .map_or("-".to_string(), |v| format!("{v:.2}"))
        };
        let ratio = median(&mut ratios).map_or("-".to_string(), |r| format!("{r:.2}"));
        println!(
            "{:<18} {:>10} {:>10} {:>10} {:>10}",
            op,
            col(&mut per, "pore"),
            col(&mut per, "C xenstored"),
            col(&mut per, "oxenstored"),
            ratio
        );
    }
    drop(conns);
    drop(daemons);
    let _ = std::fs::remove_dir_all(&dir);
}
