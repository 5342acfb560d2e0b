//! A xenstored filled like a busy Xen host, against the same daemon empty and against
//! Debian's C xenstored holding the same content, in one run:
//!
//! ```text
//! cargo bench -p pore-benches --bench xenstored_host
//! ```
//!
//! The fill, over dom0's socket, as a toolstack writes it: for each of 1 000 guest domains
//! `/local/domain/<id>/...` (name, vm, memory, cpu, control, device/vbd and device/vif
//! frontends, console, store, data: 45 nodes, the guest owning its writable parts, the rest
//! `n0 r<id>`), its backends under `/local/domain/0/backend/{vbd,vif}/<id>/...`, `/vm/<uuid>`
//! and `/libxl/<id>`, then the domain is INTRODUCEd; nodes under each guest's `data/` pad the
//! store to 100 000 nodes in all. One live connection (read all along) holds 10 000 watches,
//! 10 per domain on the nodes backends and toolstacks watch (device states, hotplug status,
//! control/shutdown, memory/target...) and reads their events.
//!
//! Five daemons run side by side, the bench and every daemon pinned to CPU 0: pore empty,
//! pore full, C empty, C full (the same domains introduced), and C holding the same nodes
//! and watches without the domains ("C nodes only"). Each operation (read, write, directory
//! of 32, create, rm, a read-modify-write transaction) runs on the same nodes under
//! `/local/domain/500/data/b/` in all of them, none of them watched; the daemons take turns,
//! 15 rounds per operation of about 20 ms each, and the table gives per daemon the median
//! of its rounds, and each ratio as the median over rounds of that round's ratio. The
//! resident memory (`VmRSS`, and its anonymous part `RssAnon` of `/proc/<pid>/status`) of
//! each daemon is read after the fill. Then one more connection per daemon registers 1 000
//! watches (distinct tokens) on one node, and a write of that node is timed until the
//! writer has its reply and the watcher all 1 000 events.
//!
//! C xenstored runs without a hypervisor through `scripts/xenstored/launch.sh` (trace and
//! logs off); its INTRODUCE goes through that script's stand-in for Xen, which maps a file
//! as each guest's ring page (4 KiB each, counted in its `VmRSS` but not in `RssAnon`); C's
//! main loop then visits every domain's connection after each wake-up: "C nodes only" shows
//! C without that cost. If its INTRODUCE fails, "C full" holds no domains either, and the table says
//! so. Ours introduces a domain without a ring (no connector). Every socket client is dom0
//! (privileged), so permission checks are C's and ours for dom0. Our daemon is this
//! executable re-run as a server (its `VmRSS` includes the bench's own code).
//!
//! Without `--bench` (`cargo test --benches`) it runs a smoke pass at 1/50 of the size.
//! `PORE_BENCH_DOMAINS` and `PORE_BENCH_NODES` set the number of domains and of nodes;
//! `PORE_BENCH_NO_C=1` leaves C out.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use pore_benches::xsd::{serve, start_debian, start_ours, Daemon, Raw, ERROR};
use pore_xenstore::perms::{Access, Perm};
use pore_xenstore::Request;

const SERVE_ENV: &str = "PORE_BENCH_XSHOST_SERVE";

/// One node the toolstack writes: path, value, and whether the guest owns it (else it is
/// `n0 r<id>`).
struct Spec {
    path: String,
    value: String,
    guest_owned: bool,
}

/// The nodes of guest `d` as a toolstack writes them, parents first.
fn domain_nodes(d: u32) -> Vec<Spec> {
    let uuid = format!("{d:08x}-1111-2222-3333-{d:012x}");
    let home = format!("/local/domain/{d}");
    let be = "/local/domain/0/backend";
    let mut v = Vec::new();
    let mut add = |path: String, value: &str, guest_owned: bool| {
        v.push(Spec {
            path,
            value: value.to_owned(),
            guest_owned,
        })
    };
    add(home.clone(), "", false);
    for (p, val) in [
        ("name", format!("guest-{d}")),
        ("domid", d.to_string()),
        ("vm", format!("/vm/{uuid}")),
        ("memory", String::new()),
        ("memory/static-max", "1048576".into()),
        ("memory/target", "1048576".into()),
        ("memory/videoram", "-1".into()),
        ("cpu", String::new()),
        ("cpu/0", String::new()),
        ("cpu/0/availability", "online".into()),
        ("cpu/1", String::new()),
        ("cpu/1/availability", "online".into()),
        ("store", String::new()),
        ("store/port", "1".into()),
        ("store/ring-ref", "1044476".into()),
        ("console", String::new()),
        ("console/port", "2".into()),
        ("console/ring-ref", "1044479".into()),
        ("console/limit", "1048576".into()),
        ("console/type", "xenconsoled".into()),
        ("console/tty", format!("/dev/pts/{}", d % 64)),
        ("control", String::new()),
        ("control/shutdown", String::new()),
        (
            "control/platform-feature-multiprocessor-suspend",
            "1".into(),
        ),
        ("control/platform-feature-xs_reset_watches", "1".into()),
    ] {
        add(format!("{home}/{p}"), &val, false);
    }
    for (p, val) in [
        ("device", String::new()),
        ("device/vbd", String::new()),
        ("device/vbd/51712", String::new()),
        ("device/vbd/51712/backend", format!("{be}/vbd/{d}/51712")),
        ("device/vbd/51712/backend-id", "0".into()),
        ("device/vbd/51712/state", "4".into()),
        ("device/vbd/51712/virtual-device", "51712".into()),
        ("device/vbd/51712/ring-ref", "8".into()),
        ("device/vbd/51712/event-channel", "3".into()),
        ("device/vif", String::new()),
        ("device/vif/0", String::new()),
        ("device/vif/0/backend", format!("{be}/vif/{d}/0")),
        ("device/vif/0/backend-id", "0".into()),
        ("device/vif/0/state", "4".into()),
        (
            "device/vif/0/mac",
            format!("00:16:3e:00:{:02x}:{:02x}", d >> 8, d & 255),
        ),
        ("device/vif/0/event-channel", "4".into()),
        ("data", String::new()),
        ("drivers", String::new()),
        ("attr", String::new()),
    ] {
        add(format!("{home}/{p}"), &val, true);
    }
    for (dev, n) in [("vbd", "51712"), ("vif", "0")] {
        let dir = format!("{be}/{dev}/{d}");
        add(dir.clone(), "", false);
        add(format!("{dir}/{n}"), "", false);
        for (p, val) in [
            ("frontend", format!("{home}/device/{dev}/{n}")),
            ("frontend-id", d.to_string()),
            ("online", "1".into()),
            ("state", "4".into()),
            ("script", format!("/etc/xen/scripts/{dev}")),
            ("type", "phy".into()),
            ("hotplug-status", "connected".into()),
            ("params", format!("/dev/vg/guest-{d}")),
        ] {
            add(format!("{dir}/{n}/{p}"), &val, false);
        }
    }
    let vm = format!("/vm/{uuid}");
    add(vm.clone(), "", false);
    for (p, val) in [
        ("uuid", uuid.clone()),
        ("name", format!("guest-{d}")),
        ("start_time", "1764892800.00".into()),
        ("image", String::new()),
        ("image/ostype", "linux".into()),
        ("rtc", String::new()),
        ("rtc/timeoffset", "0".into()),
    ] {
        add(format!("{vm}/{p}"), &val, false);
    }
    let lx = format!("/libxl/{d}");
    add(lx.clone(), "", false);
    for (p, val) in [
        ("type", "pvh".to_string()),
        ("dm-version", "qemu_xen".into()),
        ("device", String::new()),
        ("device/vbd", String::new()),
        ("device/vbd/51712", String::new()),
        (
            "device/vbd/51712/frontend",
            format!("{home}/device/vbd/51712"),
        ),
        ("device/vif", String::new()),
        ("device/vif/0", String::new()),
        ("device/vif/0/frontend", format!("{home}/device/vif/0")),
    ] {
        add(format!("{lx}/{p}"), &val, false);
    }
    v
}

/// The 10 watches per domain a host's backends and toolstack hold.
fn domain_watches(d: u32) -> Vec<String> {
    let uuid = format!("{d:08x}-1111-2222-3333-{d:012x}");
    let home = format!("/local/domain/{d}");
    let be = "/local/domain/0/backend";
    vec![
        format!("{home}/device/vbd/51712/state"),
        format!("{home}/device/vif/0/state"),
        format!("{be}/vbd/{d}/51712/state"),
        format!("{be}/vif/{d}/0/state"),
        format!("{be}/vbd/{d}/51712/hotplug-status"),
        format!("{be}/vif/{d}/0/hotplug-status"),
        format!("{home}/control/shutdown"),
        format!("{home}/memory/target"),
        format!("{home}/console/tty"),
        format!("/vm/{uuid}/rtc/timeoffset"),
    ]
}

/// What the fill put in a daemon.
#[derive(Clone, Copy, Debug, Default)]
struct Filled {
    nodes: usize,
    watches: usize,
    introduced: bool,
}

/// Every node a daemon holds at start (`/`, `/tool`, `/tool/xenstored`) and the parents
/// the toolstack's nodes need (`/local`, ...), so that the count is exact.
fn count_with_ancestors(seen: &mut HashSet<String>, p: &str) {
    let mut cur = p;
    while seen.insert(cur.to_owned()) {
        match cur.rfind('/') {
            Some(0) => cur = "/",
            Some(i) => cur = &cur[..i],
            None => break,
        }
        if cur == "/" {
            seen.insert("/".into());
            break;
        }
    }
}

/// Fills the daemon behind `a` (watches on `w`) with `domains` guests and `nodes` nodes.
fn fill(a: &mut Raw, w: &mut Raw, domains: u32, nodes: usize, introduce: bool) -> Filled {
    let mut seen: HashSet<String> = ["/", "/tool", "/tool/xenstored"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut introduced = introduce;
    for d in 1..=domains {
        let specs = domain_nodes(d);
        for s in &specs {
            count_with_ancestors(&mut seen, &s.path);
        }
        let perms: Vec<[Perm; 2]> = specs
            .iter()
            .map(|s| {
                if s.guest_owned {
                    [Perm::new(Access::None, d), Perm::new(Access::None, d)]
                } else {
                    [Perm::new(Access::None, 0), Perm::new(Access::Read, d)]
                }
            })
            .collect();
        a.pipeline(specs.iter().zip(&perms).flat_map(|(s, p)| {
            let n = if s.guest_owned { 1 } else { 2 };
            [
                Request::Write {
                    path: &s.path,
                    value: s.value.as_bytes(),
                },
                Request::SetPerms {
                    path: &s.path,
                    perms: std::borrow::Cow::Borrowed(&p[..n]),
                },
            ]
        }));
        if introduced {
            let (ty, e) = a.call(
                &Request::Introduce {
                    domid: d,
                    gfn: 0x10_0000 + u64::from(d),
                    port: 7,
                },
                0,
            );
            if ty == ERROR {
                eprintln!(
                    "xenstored_host bench: INTRODUCE {d} failed ({}): no more domains introduced",
                    String::from_utf8_lossy(e)
                );
                introduced = false;
            }
        }
    }
    // Pad with nodes under each guest's data/, round robin.
    let mut pad = Vec::new();
    let mut k = 0;
    while seen.len() + pad.len() < nodes {
        let d = 1 + (k % domains as usize);
        let p = format!("/local/domain/{d}/data/item-{}", k / domains as usize);
        if !seen.contains(&p) {
            pad.push(p);
        }
        k += 1;
    }
    a.pipeline(pad.iter().map(|p| Request::Write {
        path: p,
        value: b"some-data-value",
    }));
    seen.extend(pad);
    let watches: Vec<(String, String)> = (1..=domains)
        .flat_map(|d| {
            domain_watches(d)
                .into_iter()
                .enumerate()
                .map(move |(i, p)| (p, format!("w{d}-{i}")))
        })
        .collect();
    let before = w.events;
    w.pipeline(
        watches
            .iter()
            .map(|(p, t)| Request::Watch { path: p, token: t }),
    );
    // Each WATCH fires once at registration.
    let got = w.events - before;
    w.wait_events(watches.len() as u64 - got);
    Filled {
        nodes: seen.len(),
        watches: watches.len(),
        introduced,
    }
}

const B: &str = "/local/domain/500/data/b";

/// The measured nodes, the same in every daemon.
fn prepare(c: &mut Raw) {
    let mut reqs = vec![
        (format!("{B}/v"), b"value".to_vec()),
        (format!("{B}/count"), b"0".to_vec()),
        (format!("{B}/w"), b"0".to_vec()),
    ];
    for i in 0..32 {
        reqs.push((format!("{B}/dir/child-{i:02}"), Vec::new()));
    }
    c.pipeline(
        reqs.iter()
            .map(|(p, v)| Request::Write { path: p, value: v }),
    );
}

const OPS: &[&str] = &["read", "write", "directory (32)", "create", "rm", "RMW txn"];

/// Runs `iters` of `op` on `c`; returns the time spent in the measured requests.
fn run_op(op: &str, c: &mut Raw, iters: u64) -> Duration {
    let v = format!("{B}/v");
    let wp = format!("{B}/w");
    let dir = format!("{B}/dir");
    let rm = format!("{B}/rm");
    let count = format!("{B}/count");
    let mut total = Duration::ZERO;
    match op {
        "read" => {
            let t = Instant::now();
            for _ in 0..iters {
                c.ok(&Request::Read(&v), 0);
            }
            total = t.elapsed();
        }
        "write" => {
            let t = Instant::now();
            for _ in 0..iters {
                c.ok(
                    &Request::Write {
                        path: &wp,
                        value: b"x",
                    },
                    0,
                );
            }
            total = t.elapsed();
        }
        "directory (32)" => {
            let t = Instant::now();
            for _ in 0..iters {
                c.ok(&Request::Directory(&dir), 0);
            }
            total = t.elapsed();
        }
        "create" | "rm" => {
            for _ in 0..iters {
                let t = Instant::now();
                c.ok(
                    &Request::Write {
                        path: &rm,
                        value: b"x",
                    },
                    0,
                );
                let mid = Instant::now();
                c.ok(&Request::Rm(&rm), 0);
                total += if op == "create" {
                    mid - t
                } else {
                    mid.elapsed()
                };
            }
        }
        "RMW txn" => {
            let t = Instant::now();
            for _ in 0..iters {
                let id = c.tx_start();
                let (_, v) = c.call(&Request::Read(&count), id);
                let n: u64 = std::str::from_utf8(v).unwrap_or("0").parse().unwrap_or(0);
                let s = (n + 1).to_string();
                c.ok(
                    &Request::Write {
                        path: &count,
                        value: s.as_bytes(),
                    },
                    id,
                );
                c.ok(&Request::TransactionEnd { commit: true }, id);
            }
            total = t.elapsed();
        }
        _ => unreachable!(),
    }
    total
}

/// One write of a node 1 000 watches (of connection `f`) are on, until the writer has
/// its reply and `f` every event.
fn fanout(a: &mut Raw, f: &mut Raw, n: u64) -> Duration {
    let t = Instant::now();
    a.ok(
        &Request::Write {
            path: "/fan/target",
            value: b"x",
        },
        0,
    );
    f.wait_events(n);
    t.elapsed()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Slot {
    d: Daemon,
    a: Raw,
    /// Holds the watches (open until the end).
    _w: Raw,
    filled: Filled,
}

fn main() {
    if let Some(sock) = std::env::var_os(SERVE_ENV) {
        serve(Path::new(&sock));
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us without it: smoke only.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let domains = env_or("PORE_BENCH_DOMAINS", if smoke { 20 } else { 1000 }).max(1) as u32;
    let nodes = env_or("PORE_BENCH_NODES", if smoke { 2000 } else { 100_000 }) as usize;
    let fan = if smoke { 50 } else { 1000 };
    let rounds = if smoke { 1 } else { 15 };
    pore_benches::pin(0);
    let dir = std::env::temp_dir().join(format!("pore-xshost-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let mut slots: Vec<Slot> = Vec::new();
    let no_c = std::env::var_os("PORE_BENCH_NO_C").is_some();
    let exe = std::env::current_exe().expect("this executable");
    let starts: [(&'static str, bool, bool, bool); 5] = [
        ("pore empty", true, false, false),
        ("pore full", true, true, true),
        ("C empty", false, false, false),
        ("C full", false, true, true),
        ("C nodes only", false, true, false),
    ];
    for (name, ours, full, introduce) in starts {
        if no_c && !ours {
            continue;
        }
        let d = if ours {
            start_ours(name, &exe, SERVE_ENV, &dir)
        } else {
            start_debian(name, "c", &dir)
        };
        let Some(d) = d else { continue };
        let mut a = Raw::connect(&d.sock);
        let mut w = Raw::connect(&d.sock);
        let t = Instant::now();
        let filled = if full {
            fill(&mut a, &mut w, domains, nodes, introduce)
        } else {
            Filled {
                nodes: 3,
                ..Filled::default()
            }
        };
        prepare(&mut a);
        if full {
            eprintln!(
                "{name}: filled with {} nodes, {} watches, {} domains{} in {:.1} s",
                filled.nodes,
                filled.watches,
                domains,
                if filled.introduced {
                    " introduced"
                } else {
                    " NOT introduced"
                },
                t.elapsed().as_secs_f64()
            );
        }
        slots.push(Slot {
            d,
            a,
            _w: w,
            filled,
        });
    }
    let names: Vec<&'static str> = slots.iter().map(|s| s.d.name).collect();
    let idx = |name: &str| names.iter().position(|n| *n == name);
    // Memory after the fill (and the measured nodes).
    let rss: Vec<(u64, u64)> = slots.iter().map(|s| s.d.rss()).collect();
    // Warm-up: a short pass of every operation on each daemon.
    for op in OPS {
        for s in slots.iter_mut() {
            run_op(op, &mut s.a, if smoke { 5 } else { 200 });
        }
    }
    let pairs: [(&str, &str, &str); 5] = [
        ("pore full/empty", "pore full", "pore empty"),
        ("C full/empty", "C full", "C empty"),
        ("C nodes only/empty", "C nodes only", "C empty"),
        ("pore/C (full)", "pore full", "C full"),
        ("pore/C nodes only", "pore full", "C nodes only"),
    ];
    println!(
        "\n## xenstored on a host's worth of content: {domains} domains, {nodes} nodes, {} watches{}\n",
        domains * 10,
        if smoke { " (smoke run: not a measurement)" } else { "" }
    );
    print!("| operation (µs) |");
    for s in &slots {
        print!(" {} |", s.d.name);
    }
    for (label, _, _) in &pairs {
        print!(" {label} |");
    }
    println!();
    println!("|---|{}", "---:|".repeat(slots.len() + pairs.len()));
    for op in OPS {
        // Iterations per round for each daemon: about 20 ms each.
        let iters: Vec<u64> = slots
            .iter_mut()
            .map(|s| {
                let probe = run_op(op, &mut s.a, 10).as_secs_f64() / 10.0;
                if smoke {
                    3
                } else {
                    ((0.02 / probe.max(1e-7)) as u64).clamp(10, 5000)
                }
            })
            .collect();
        let mut per: Vec<Vec<f64>> = vec![Vec::new(); slots.len()];
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); pairs.len()];
        for _ in 0..rounds {
            for (i, s) in slots.iter_mut().enumerate() {
                let n = iters[i];
                let t = run_op(op, &mut s.a, n).as_secs_f64() * 1e6 / n as f64;
                per[i].push(t);
            }
            for (k, (_, x, y)) in pairs.iter().enumerate() {
                if let (Some(x), Some(y)) = (idx(x), idx(y)) {
                    let (x, y) = (per[x].last().copied(), per[y].last().copied());
                    if let (Some(x), Some(y)) = (x, y) {
                        ratios[k].push(x / y);
                    }
                }
            }
        }
        print!("| {op} |");
        for p in per.iter_mut() {
            print!(" {:.2} |", median(p));
        }
        for r in ratios.iter_mut() {
            if r.is_empty() {
                print!(" - |");
            } else {
                print!(" {:.2} |", median(r));
            }
        }
        println!();
    }
    // Memory.
    println!("\n| daemon | nodes | watches | domains | VmRSS (MB) | RssAnon (MB) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (s, (rss, anon)) in slots.iter().zip(&rss) {
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.1} |",
            s.d.name,
            s.filled.nodes,
            s.filled.watches,
            if s.filled.introduced { domains } else { 0 },
            *rss as f64 / 1e6,
            *anon as f64 / 1e6
        );
    }
    if let (Some(p), Some(c), Some(pe), Some(ce)) = (
        idx("pore full"),
        idx("C full"),
        idx("pore empty"),
        idx("C empty"),
    ) {
        let grow = |f: usize, e: usize, k: usize| {
            let (a, b) = (rss[f], rss[e]);
            let v = if k == 0 { (a.0, b.0) } else { (a.1, b.1) };
            v.0.saturating_sub(v.1) as f64
        };
        println!(
            "\npore/C full: VmRSS {:.2}, RssAnon {:.2}; growth over empty per node: pore {:.0} B, C {:.0} B (VmRSS), pore {:.0} B, C {:.0} B (RssAnon)",
            rss[p].0 as f64 / rss[c].0 as f64,
            rss[p].1 as f64 / rss[c].1 as f64,
            grow(p, pe, 0) / slots[p].filled.nodes as f64,
            grow(c, ce, 0) / slots[c].filled.nodes as f64,
            grow(p, pe, 1) / slots[p].filled.nodes as f64,
            grow(c, ce, 1) / slots[c].filled.nodes as f64,
        );
        if !slots[c].filled.introduced {
            println!("C holds the same nodes and watches but no introduced domains (its INTRODUCE failed).");
        }
    }
    if let (Some(p), Some(c)) = (idx("pore full"), idx("C nodes only")) {
        println!(
            "pore/C nodes only: VmRSS {:.2}, RssAnon {:.2} (C without the domains: nodes and watches only)",
            rss[p].0 as f64 / rss[c].0 as f64,
            rss[p].1 as f64 / rss[c].1 as f64,
        );
    }
    // A write that fires `fan` watches, in the full daemons (and the empty ones).
    let mut fans: Vec<(usize, Raw)> = Vec::new();
    for (i, s) in slots.iter_mut().enumerate() {
        let mut f = Raw::connect(&s.d.sock);
        s.a.ok(
            &Request::Write {
                path: "/fan/target",
                value: b"0",
            },
            0,
        );
        let tokens: Vec<String> = (0..fan).map(|k| format!("fan-{k}")).collect();
        f.pipeline(tokens.iter().map(|t| Request::Watch {
            path: "/fan/target",
            token: t,
        }));
        let got = f.events;
        f.wait_events(fan - got);
        f.events = 0;
        fans.push((i, f));
    }
    for (i, f) in fans.iter_mut() {
        fanout(&mut slots[*i].a, f, fan);
    }
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); slots.len()];
    let mut ratio = Vec::new();
    let mut ratio_empty = Vec::new();
    let mut ratio_nodes = Vec::new();
    for _ in 0..rounds.max(3) * 2 {
        for (i, f) in fans.iter_mut() {
            let it = if smoke { 1 } else { 5 };
            let mut t = Duration::ZERO;
            for _ in 0..it {
                t += fanout(&mut slots[*i].a, f, fan);
            }
            per[*i].push(t.as_secs_f64() * 1e6 / f64::from(it));
        }
        if let (Some(p), Some(c)) = (idx("pore full"), idx("C full")) {
            ratio.push(per[p].last().unwrap() / per[c].last().unwrap());
        }
        if let (Some(p), Some(c)) = (idx("pore empty"), idx("C empty")) {
            ratio_empty.push(per[p].last().unwrap() / per[c].last().unwrap());
        }
        if let (Some(p), Some(c)) = (idx("pore full"), idx("C nodes only")) {
            ratio_nodes.push(per[p].last().unwrap() / per[c].last().unwrap());
        }
    }
    println!("\n| a write firing {fan} watches (µs) |");
    println!("|---|---:|");
    for (s, p) in slots.iter().zip(per.iter_mut()) {
        println!("| {} | {:.1} |", s.d.name, median(p));
    }
    if !ratio.is_empty() {
        println!("| pore/C (full) | {:.2} |", median(&mut ratio));
    }
    if !ratio_empty.is_empty() {
        println!("| pore/C (empty) | {:.2} |", median(&mut ratio_empty));
    }
    if !ratio_nodes.is_empty() {
        println!(
            "| pore full/C nodes only | {:.2} |",
            median(&mut ratio_nodes)
        );
    }
    drop(fans);
    drop(slots);
    let _ = std::fs::remove_dir_all(&dir);
}
