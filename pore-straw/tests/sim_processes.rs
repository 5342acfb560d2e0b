//! Straws between domains that are separate processes of the simulated Xen (pore-backend-sim),
//! each reaching the embedded xenstored through its own store ring as an unprivileged guest:
//! many straws at once from one domain, handshakes both ways, both formats and mailbox routing,
//! a peer that never answers, and hostile peers writing garbage where the handshake reads.
//!
//! The test process plays the toolstack (the hypervisor, its broker and xenstored, and a dom0
//! xenstore connection to inspect nodes) and hosts the honest domain `A`; every other domain is
//! a child process re-running one of these tests in a role (`child`), talking back through the
//! sim's report lines and listening to the parent's `tell` lines.

#![cfg(all(target_os = "linux", feature = "xenstore"))]

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pore_backend_sim::process::{self, run_child_role};
use pore_backend_sim::{DomainProcess, Hypervisor, Outstanding, SimDomain};
use pore_core::{DomId, GrantRef};
use pore_straw::handshake::{setup_ops, HandshakeConfig, Stage};
use pore_straw::manager::{Manager, ManagerConfig, ManagerError, StoreClient};
use pore_straw::parse::ParseError;
use pore_straw::straw::{open_active, Straw, StrawError, StrawPore};
use pore_straw::xenstore::XsAdapter;
use pore_straw::{Action, Endpoint, Format, HandshakeError, Layout, Role, StrawPaths, XenbusState};
use pore_xenstore::server::Listener;
use pore_xenstore::transport::RingTransport;
use pore_xenstore::{Access, Client, ErrorName, Perm};
use serde_json::json;

type Mgr = Manager<SimDomain, XsAdapter>;

/// Bound of every wait that should end much sooner (a report, an accept, a receive).
const WAIT: Duration = Duration::from_secs(20);

/// Frames of 0 B to well beyond a ring (LING: 4 pages a direction; v2 here: 2 to 8 pages).
const SIZES: [usize; 8] = [0, 1, 4096, 0, 65_537, 300_001, 0, 1_500_000];

// ----- shared by the parent and the children -----

fn config(v2: Option<u32>, format: Format, handshake: Duration) -> ManagerConfig {
    ManagerConfig {
        handshake: HandshakeConfig {
            handshake_timeout: handshake,
            close_timeout: Duration::from_secs(2),
            format,
            v2_pages: v2,
            ..HandshakeConfig::default()
        },
        ..ManagerConfig::default()
    }
}

/// A domain's own xenstore connection: its store ring page and port (unprivileged).
fn guest_client(dom: &SimDomain) -> Result<Arc<Client>, String> {
    let ring = RingTransport::open_store(dom).map_err(|e| format!("store ring: {e}"))?;
    let client = Client::with_transport(Box::new(ring), pore_xenstore::Config::default())
        .map_err(|e| format!("xenstored: {e}"))?;
    Ok(Arc::new(client))
}

/// Frame `i` of `len` bytes from `from` to `to`: a header naming all three (as far as it fits)
/// and a pattern that differs per frame, so a lost, reordered or misrouted frame shows.
fn frame(from: DomId, to: DomId, i: usize, len: usize) -> Bytes {
    let mut v: Vec<u8> = (0..len)
        .map(|j| (j.wrapping_mul(31) ^ i.wrapping_mul(131) ^ (usize::from(from.0) * 7)) as u8)
        .collect();
    let mut head = Vec::new();
    head.extend_from_slice(&from.0.to_be_bytes());
    head.extend_from_slice(&to.0.to_be_bytes());
    head.extend_from_slice(&(i as u32).to_be_bytes());
    let k = head.len().min(len);
    v[..k].copy_from_slice(&head[..k]);
    Bytes::from(v)
}

/// Both directions at once: a thread sends `sizes` frames to the peer then half-closes
/// (`finish`), while this thread checks the peer's frames, one by one, up to its end of stream;
/// then the straw closes gracefully. Returns the bytes received.
fn exchange(straw: Straw<SimDomain>, me: DomId, sizes: &[usize]) -> Result<usize, String> {
    let peer = straw.peer().domid;
    let (tx, rx) = straw.split();
    let out = sizes.to_vec();
    let sender = thread::spawn(move || {
        for (i, n) in out.iter().enumerate() {
            if let Err(e) = tx.send(frame(me, peer, i, *n)) {
                return (tx, Err(format!("send #{i}: {e}")));
            }
        }
        let r = tx.finish().map_err(|e| format!("finish: {e}"));
        (tx, r)
    });
    let (mut got, mut bytes) = (0usize, 0usize);
    let received = loop {
        match rx.recv_timeout(WAIT) {
            Ok(f) => {
                let Some(&n) = sizes.get(got) else {
                    break Err(format!("extra frame #{got} of {} bytes", f.len()));
                };
                if f != frame(peer, me, got, n) {
                    break Err(format!("frame #{got}: {} bytes, not the {n} sent", f.len()));
                }
                got += 1;
                bytes += f.len();
            }
            Err(StrawError::Eof) if got == sizes.len() => break Ok(()),
            Err(e) => break Err(format!("receive after {got} frames: {e}")),
        }
    };
    let (tx, sent) = sender
        .join()
        .map_err(|_| "the sender panicked".to_string())?;
    received?;
    sent?;
    let closed = tx.close().map_err(|e| format!("close: {e}"));
    drop(rx);
    closed.map(|()| bytes)
}

fn sizes_arg(sizes: &[usize]) -> String {
    sizes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

// ----- the children -----

/// Runs a domain process's role (in the child; returns at once in the parent).
fn child(role: &str, args: &[String]) -> i32 {
    let r = match role {
        "listener" => role_listener(args),
        "both-ways" => role_both_ways(args),
        "mute" => role_mute(),
        "saboteur" => role_saboteur(args),
        "hostile-listener" => role_hostile_listener(),
        "hostile-opener" => role_hostile_opener(),
        other => Err(format!("unknown role {other}")),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            process::report(&format!("error {e}"));
            1
        }
    }
}

fn child_manager(cfg: ManagerConfig) -> Result<(Mgr, Endpoint, Arc<Client>), String> {
    let dom = SimDomain::connect().map_err(|e| format!("broker: {e}"))?;
    let xs = guest_client(&dom)?;
    let me = Endpoint::seed(dom.id());
    let m = Manager::start(dom, XsAdapter::new(xs.clone()), me.clone(), cfg)
        .map_err(|e| format!("manager: {e}"))?;
    process::report(&format!("ready {}", me.domid.0));
    Ok((m, me, xs))
}

/// `listener LAYOUT FORMAT SIZES`: accepts one straw, exchanges `SIZES` frames both ways, closes.
fn role_listener(args: &[String]) -> Result<(), String> {
    let [layout, format, sizes] = args else {
        return Err(format!("bad arguments {args:?}"));
    };
    let v2 = (layout != "ling")
        .then(|| layout.parse::<u32>())
        .transpose()
        .map_err(|e| e.to_string())?;
    let format = if format == "raw" {
        Format::Raw
    } else {
        Format::Json
    };
    let sizes: Vec<usize> = sizes
        .split(',')
        .map(|s| s.parse().map_err(|e| format!("size {s}: {e}")))
        .collect::<Result<_, _>>()?;
    let (m, me, _xs) = child_manager(config(v2, format, Duration::from_secs(5)))?;
    let straw = m.accept(WAIT).map_err(|e| format!("accept: {e}"))?;
    process::report(&format!(
        "accepted {} {:?} {:?}",
        straw.peer().domid.0,
        straw.layout(),
        straw.format()
    ));
    let bytes = exchange(straw, me.domid, &sizes)?;
    process::report(&format!("received {} {bytes}", sizes.len()));
    m.shutdown();
    process::report("done");
    Ok(())
}

/// `both-ways`: told `open A`, opens a JSON straw to `A`, sends it envelopes (and garbage),
/// waits for `A`'s reply in a mailbox and closes; then accepts a straw from `A` and exchanges
/// raw frames over it.
fn role_both_ways(_args: &[String]) -> Result<(), String> {
    let (m, me, _xs) = child_manager(config(Some(4), Format::Json, Duration::from_secs(5)))?;
    let line = process::listen(WAIT).map_err(|e| e.to_string())?;
    let a: u16 = line
        .strip_prefix("open ")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("bad line {line}"))?;
    let s = m
        .open(&Endpoint::seed(DomId(a)))
        .map_err(|e| format!("open: {e}"))?;
    process::report(&format!(
        "opened {:?} {:?} {:?}",
        s.role(),
        s.layout(),
        s.format()
    ));
    let reply = s.mailbox("reply");
    let tx = s.sender();
    let big = "x".repeat(100_000);
    let sent = [
        tx.send_to("alpha", &json!({"n": 1})),
        tx.send_to("beta", &json!("b1")),
        tx.send_to("nobody", &json!(3)),
        tx.send(Bytes::from_static(b"not json at all")),
        tx.send(Bytes::from_static(b"[1,2]")),
        tx.send(Bytes::from_static(br#"{"addr":7,"msg":1}"#)),
        tx.send_to("alpha", &json!({"n": 2, "big": big})),
    ];
    if let Some(e) = sent.into_iter().find_map(Result::err) {
        return Err(format!("send: {e}"));
    }
    let end = Instant::now() + WAIT;
    let answer = loop {
        if let Some(v) = reply.try_recv() {
            break v;
        }
        if Instant::now() >= end {
            return Err("no reply".into());
        }
        s.receiver()
            .dispatch(Duration::from_millis(100))
            .map_err(|e| format!("dispatch: {e}"))?;
    };
    process::report(&format!("reply {answer}"));
    s.close().map_err(|e| format!("close: {e}"))?;
    process::report("closed");
    let t = m.accept(WAIT).map_err(|e| format!("accept: {e}"))?;
    process::report(&format!(
        "accepted {:?} {:?} {:?}",
        t.role(),
        t.layout(),
        t.format()
    ));
    let bytes = exchange(t, me.domid, &SIZES)?;
    process::report(&format!("received {} {bytes}", SIZES.len()));
    m.shutdown();
    process::report("done");
    Ok(())
}

/// `mute`: sets up its endpoint directories as a manager would, then never reacts to a knock.
fn role_mute() -> Result<(), String> {
    let dom = SimDomain::connect().map_err(|e| format!("broker: {e}"))?;
    let xs = XsAdapter::new(guest_client(&dom)?);
    let me = Endpoint::seed(dom.id());
    for op in setup_ops(&me) {
        xs.perform(&op).map_err(|e| format!("{op}: {e}"))?;
    }
    process::report(&format!("ready {}", me.domid.0));
    let _ = process::listen(WAIT);
    Ok(())
}

/// `saboteur MODE`: accepts a straw, sends "alive", and once told `break` breaks its own
/// directory of the connected straw: `garbage` or `reconfiguring` in its `state`, or `rmdir`
/// the directory.
fn role_saboteur(args: &[String]) -> Result<(), String> {
    let (m, me, xs) = child_manager(config(Some(4), Format::Raw, Duration::from_secs(5)))?;
    let s = m.accept(WAIT).map_err(|e| format!("accept: {e}"))?;
    s.sender()
        .send(Bytes::from_static(b"alive"))
        .map_err(|e| format!("send: {e}"))?;
    // Break it only once the opener has its straw and our "alive". Nothing in xenstore says
    // so: the opener writes nothing after it read our Connected (our own `state` already said
    // 4 when `accept` returned), so a break any earlier fails its `open` (garbage, or a gone
    // directory, where it waits for our Connected) or drops "alive" with the lost straw.
    let line = process::listen(WAIT).map_err(|e| e.to_string())?;
    if line != "break" {
        return Err(format!("bad line {line}"));
    }
    let state = StrawPaths::new(s.peer(), &me).straw("state");
    let dir = StrawPaths::new(s.peer(), &me).straw_dir;
    match args.first().map(String::as_str) {
        Some("garbage") => xs.write(&state, b"banana"),
        Some("reconfiguring") => xs.write(&state, b"7"),
        Some("rmdir") => xs.rm(&dir),
        other => return Err(format!("bad mode {other:?}")),
    }
    .map_err(|e| format!("sabotage: {e}"))?;
    process::report("sabotaged");
    let r = s.receiver().recv_timeout(WAIT);
    process::report(&format!("ended {r:?}"));
    drop(s);
    m.shutdown();
    process::report("done");
    Ok(())
}

fn perms(owner: DomId, reader: DomId, access: Access) -> [Perm; 2] {
    [
        Perm::new(Access::None, u32::from(owner.0)),
        Perm::new(access, u32::from(reader.0)),
    ]
}

fn wait_value(xs: &Client, path: &str, want: Option<&[u8]>) -> Result<(), String> {
    let end = Instant::now() + WAIT;
    loop {
        match xs.read(path) {
            Ok(v) if want.is_none_or(|w| w == v) => return Ok(()),
            _ if Instant::now() >= end => return Err(format!("{path} never came")),
            _ => thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// The parent tells a hostile child `case NAME DOMID`, or `exit`.
fn next_case() -> Result<Option<(String, Endpoint)>, String> {
    let line = process::listen(WAIT).map_err(|e| e.to_string())?;
    let words: Vec<&str> = line.split(' ').collect();
    match words[..] {
        ["exit"] => Ok(None),
        ["case", name, dom] => {
            let dom: u16 = dom.parse().map_err(|e| format!("{line}: {e}"))?;
            Ok(Some((name.to_string(), Endpoint::seed(DomId(dom)))))
        }
        _ => Err(format!("bad line {line}")),
    }
}

/// A hostile role's domain: its store client and directories (made by hand, as the seed's
/// `setup_ops`, with no manager to follow the rules), reported ready to the parent.
fn hostile_domain() -> Result<(SimDomain, Arc<Client>, Endpoint, XsAdapter), String> {
    let dom = SimDomain::connect().map_err(|e| format!("broker: {e}"))?;
    let xs = guest_client(&dom)?;
    let me = Endpoint::seed(dom.id());
    let adapter = XsAdapter::new(xs.clone());
    for op in setup_ops(&me) {
        adapter.perform(&op).map_err(|e| format!("{op}: {e}"))?;
    }
    process::report(&format!("ready {}", me.domid.0));
    Ok((dom, xs, me, adapter))
}

/// `hostile-listener`: a domain with straw directories that, when knocked, publishes garbage
/// (or real pages with lies about them) in the straw directory the opener reads.
fn role_hostile_listener() -> Result<(), String> {
    let (dom, xs, me, _adapter) = hostile_domain()?;
    let mut held: Option<StrawPore<SimDomain>> = None;
    while let Some((case, opener)) = next_case()? {
        // The previous case's real pages go now.
        drop(held.take());
        let paths = StrawPaths::new(&opener, &me);
        wait_value(&xs, &paths.straw("warts"), None)?;
        // The opener's own directory is narrowed to the pair: we may read, never write (D18).
        xs.read(&paths.warts("state"))
            .map_err(|e| format!("reading the opener's state: {e}"))?;
        if xs.write(&paths.warts("state"), b"4").is_ok() {
            return Err("wrote into the opener's warts directory".into());
        }
        let keys = hostile_listener_keys(&case, &dom, opener.domid, &mut held)?;
        if case == "vanish" {
            xs.rm(&paths.straw_dir).map_err(|e| format!("rm: {e}"))?;
        } else {
            let p = perms(me.domid, opener.domid, Access::Read);
            xs.transaction(|t| {
                // `state` comes last, as an honest listener publishes it.
                for (k, v) in &keys {
                    let path = paths.straw(k);
                    t.write(&path, v)?;
                    t.set_perms(&path, &p)?;
                }
                Ok(())
            })
            .map_err(|e| format!("publishing: {e}"))?;
        }
        process::report(&format!("applied {case}"));
    }
    Ok(())
}

/// Eight plausible LING refs, a port and a format, for the cases that break one of them.
fn ling_keys() -> Vec<(String, Vec<u8>)> {
    let mut keys: Vec<(String, Vec<u8>)> = (1..=8)
        .map(|i| (format!("ring-ref-{i}"), format!("{}", 10 + i).into_bytes()))
        .collect();
    keys.push(("event-channel".into(), b"5".to_vec()));
    keys.push(("format".into(), b"raw".to_vec()));
    keys
}

fn set(keys: &mut Vec<(String, Vec<u8>)>, key: &str, value: impl Into<Vec<u8>>) {
    keys.retain(|(k, _)| k != key);
    keys.push((key.to_string(), value.into()));
}

fn hostile_listener_keys(
    case: &str,
    dom: &SimDomain,
    opener: DomId,
    held: &mut Option<StrawPore<SimDomain>>,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut k = ling_keys();
    let v2 = |pages: &str| -> Vec<(String, Vec<u8>)> {
        vec![
            ("straw-layout".into(), b"v2".to_vec()),
            ("ring-pages".into(), pages.as_bytes().to_vec()),
            ("ring-ref".into(), b"11".to_vec()),
            ("event-channel".into(), b"5".to_vec()),
            ("format".into(), b"raw".to_vec()),
        ]
    };
    match case {
        "ref-not-decimal" => set(&mut k, "ring-ref-1", "banana"),
        "ref-leading-zero" => set(&mut k, "ring-ref-2", "012"),
        "ref-huge" => set(&mut k, "ring-ref-3", "7".repeat(1000)),
        "ref-missing" => k.retain(|(key, _)| key != "ring-ref-5"),
        "refs-too-many" => {
            for i in 9..=20 {
                set(&mut k, &format!("ring-ref-{i}"), format!("{}", 10 + i));
            }
        }
        "port-zero" => set(&mut k, "event-channel", "0"),
        "port-out-of-range" => set(&mut k, "event-channel", "4294967296"),
        "port-negative" => set(&mut k, "event-channel", "-1"),
        "format-bogus" => set(&mut k, "format", "JSON"),
        "format-huge" => set(&mut k, "format", "a".repeat(1000)),
        "format-binary" => set(&mut k, "format", &b"r\xffw"[..]),
        "layout-bogus" => set(&mut k, "straw-layout", "v3"),
        "layout-huge" => set(&mut k, "straw-layout", "v".repeat(1000)),
        "pages-not-pow2" => k = v2("3"),
        "pages-too-many" => k = v2("1024"),
        "pages-zero" => k = v2("0"),
        "ctrl-ref-garbage" => {
            k = v2("4");
            set(&mut k, "ring-ref", "0x11");
        }
        "state-garbage" | "state-empty" | "state-nine" | "state-binary" | "state-early"
        | "state-closing" => k.clear(),
        // Real pages and a real port, with lies about them.
        "real-refs-bad-port" | "ling-pages-as-v2" | "v2-pages-lie" => {
            let layout = match case {
                "v2-pages-lie" => Layout::V2 { ring_pages: 2 },
                _ => Layout::Ling,
            };
            let (pore, grant) = open_active(dom, opener, layout).map_err(|e| e.to_string())?;
            let refs: Vec<GrantRef> = pore.all_refs();
            *held = Some(pore);
            k.clear();
            match case {
                "real-refs-bad-port" => {
                    for (i, r) in refs.iter().enumerate() {
                        set(&mut k, &format!("ring-ref-{}", i + 1), r.0.to_string());
                    }
                    set(&mut k, "event-channel", (grant.port.0 + 1000).to_string());
                }
                _ => {
                    // LING pages presented as v2 (the control page is a LING ring page), or a
                    // real v2 ring of 2 pages presented as 4.
                    k = v2("4");
                    set(&mut k, "ring-ref", refs[0].0.to_string());
                    set(&mut k, "event-channel", grant.port.0.to_string());
                }
            }
        }
        "vanish" => k.clear(),
        other => return Err(format!("unknown case {other}")),
    }
    let state: &[u8] = match case {
        "state-garbage" => b"banana",
        "state-empty" => b"",
        "state-nine" => b"9",
        "state-binary" => b"\x03",
        "state-early" => b"4",
        "state-closing" => b"5",
        _ => b"3",
    };
    k.push(("state".into(), state.to_vec()));
    Ok(k)
}

/// `hostile-opener`: knocks on the parent's domain with a warts directory full of garbage (or
/// a valid one, and then misbehaves).
fn role_hostile_opener() -> Result<(), String> {
    let (_dom, xs, me, _adapter) = hostile_domain()?;
    while let Some((case, target)) = next_case()? {
        let paths = StrawPaths::new(&me, &target);
        let _ = xs.rm(&paths.warts_dir);
        let _ = xs.rm(&paths.straw_dir);
        let mut warts = paths.warts_dir.clone().into_bytes();
        let mut state = b"2".to_vec();
        let mut format = b"raw".to_vec();
        let mut layouts = b"ling v2".to_vec();
        let mut later: Option<&[u8]> = None;
        match case.as_str() {
            "warts-elsewhere" => warts = b"/local/domain/0/data".to_vec(),
            "warts-huge" => warts = vec![b'w'; 1500],
            "state-garbage" => state = b"banana".to_vec(),
            "state-huge" => state = vec![b'2'; 1500],
            "state-reconfiguring" => state = b"7".to_vec(),
            "state-closed" => state = b"6".to_vec(),
            "format-bogus" => format = b"Raw!".to_vec(),
            "format-huge" => format = vec![b'a'; 1000],
            "layouts-bogus" => layouts = b"LING V2".to_vec(),
            "layouts-double-space" => layouts = b"ling  v2".to_vec(),
            "layouts-huge" => layouts = b"ling v2 ".repeat(20),
            "garbage-after-publish" => later = Some(b"banana"),
            "state-back-after-publish" => later = Some(b"1"),
            "never-maps" => {}
            other => return Err(format!("unknown case {other}")),
        }
        xs.mkdir(&paths.straw_dir)
            .and_then(|()| {
                xs.set_perms(
                    &paths.straw_dir,
                    &perms(me.domid, target.domid, Access::Both),
                )
            })
            .map_err(|e| format!("knock directory: {e}"))?;
        let p = perms(me.domid, target.domid, Access::Read);
        xs.transaction(|t| {
            t.mkdir(&paths.warts_dir)?;
            t.set_perms(&paths.warts_dir, &p)?;
            t.write(&paths.warts("straw"), paths.straw_dir.as_bytes())?;
            t.write(&paths.warts("state"), &state)?;
            t.write(&paths.warts("format"), &format)?;
            t.write(&paths.warts("straw-layouts"), &layouts)?;
            t.write(&paths.straw("warts"), &warts)
        })
        .map_err(|e| format!("knocking: {e}"))?;
        if matches!(
            case.as_str(),
            "garbage-after-publish" | "state-back-after-publish" | "never-maps"
        ) {
            // Wait for the listener's pages and port, then never map them.
            wait_value(&xs, &paths.straw("state"), Some(b"3"))?;
        }
        if let Some(v) = later {
            xs.write(&paths.warts("state"), v)
                .map_err(|e| format!("write: {e}"))?;
        }
        process::report(&format!("applied {case}"));
    }
    Ok(())
}

// ----- the parent -----

/// The toolstack: the hypervisor with its broker and xenstored, and a dom0 connection to it.
struct World {
    dom0: Client,
    _listener: Listener,
    sock: PathBuf,
    hv: Hypervisor,
}

impl World {
    fn new(tag: &str) -> World {
        let hv = Hypervisor::start_unexported().unwrap();
        let sock =
            std::env::temp_dir().join(format!("pore-straw-simp-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&sock);
        let listener = hv.xenstored().unwrap().listen_unix(&sock).unwrap();
        let dom0 = Client::connect_unix(&sock).unwrap();
        World {
            dom0,
            _listener: listener,
            sock,
            hv,
        }
    }

    /// Domain `A` of this process, with its manager on its own store ring.
    fn manager(&self, cfg: ManagerConfig) -> (Mgr, Endpoint) {
        let dom = self.hv.create_domain("a").unwrap();
        let xs = guest_client(&dom).unwrap();
        let me = Endpoint::seed(dom.id());
        let m = Manager::start(dom, XsAdapter::new(xs), me.clone(), cfg).unwrap();
        (m, me)
    }

    /// Spawns a domain process in `role` (re-running `test`) and waits for its `ready`.
    fn spawn(&self, test: &str, role: &str, args: &[String]) -> (DomainProcess, Endpoint) {
        let mut cmd = self.hv.domain_command(role).unwrap().test(test);
        for a in args {
            cmd = cmd.arg(a.clone());
        }
        let mut child = cmd.spawn().unwrap();
        let line = child.read_report(WAIT).unwrap();
        let id: u16 = line
            .strip_prefix("ready ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{role}: {line}"));
        (child, Endpoint::seed(DomId(id)))
    }

    /// Whether `path` is gone (as dom0 sees it).
    fn gone(&self, path: &str) -> bool {
        matches!(
            self.dom0.read(path),
            Err(pore_xenstore::Error::Xs(ErrorName::ENOENT))
        )
    }

    /// What the hypervisor holds once it settled (up to 3 s).
    fn settled(&self) -> Outstanding {
        let end = Instant::now() + Duration::from_secs(3);
        while !self.hv.outstanding().is_clean() && Instant::now() < end {
            thread::sleep(Duration::from_millis(10));
        }
        self.hv.outstanding()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.sock);
    }
}

fn expect_report(child: &mut DomainProcess, want: &str) {
    let line = child.read_report(WAIT).unwrap();
    assert_eq!(line, want);
}

fn expect_exit_ok(child: &mut DomainProcess) {
    let status = child.wait_timeout(WAIT).unwrap().expect("the child exits");
    assert!(status.success(), "{status:?}");
}

/// Waits until `m` forgot every straw with `peer` (its thread removes the entry just after it
/// reported the result).
fn wait_forgotten(m: &Mgr, peer: &Endpoint) {
    let end = Instant::now() + Duration::from_secs(3);
    while m.peers().contains(peer) {
        assert!(Instant::now() < end, "{peer} never forgotten");
        thread::sleep(Duration::from_millis(2));
    }
}

fn signal(child: &DomainProcess, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.pid().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

/// One domain (this process) opens straws to five domain processes at once; every pair
/// exchanges frames of 0 B to 1.5 MB both ways, negotiating its own layout and format, and
/// closes gracefully; nothing is left in the hypervisor or in xenstore.
#[test]
fn many_straws_at_once_from_one_domain() {
    run_child_role(child);
    let t0 = Instant::now();
    let w = World::new("many");
    let (ma, a) = w.manager(config(Some(4), Format::Raw, Duration::from_secs(5)));
    // (the peer's layout and format, what the straw gets)
    let peers = [
        ("ling", "raw", Layout::Ling, Format::Raw),
        ("4", "json", Layout::V2 { ring_pages: 4 }, Format::Json),
        ("ling", "json", Layout::Ling, Format::Json),
        ("8", "raw", Layout::V2 { ring_pages: 8 }, Format::Raw),
        ("2", "json", Layout::V2 { ring_pages: 2 }, Format::Json),
    ];
    let mut children: Vec<_> = peers
        .iter()
        .map(|(l, f, ..)| {
            let args = [l.to_string(), f.to_string(), sizes_arg(&SIZES)];
            w.spawn("many_straws_at_once_from_one_domain", "listener", &args)
        })
        .collect();
    let total: usize = SIZES.iter().sum();
    let a_id = a.domid;
    let barrier = Barrier::new(peers.len());
    let results: Vec<Result<usize, String>> = thread::scope(|s| {
        let threads: Vec<_> = children
            .iter()
            .zip(&peers)
            .map(|((_, ep), (.., layout, format))| {
                let (ma, barrier) = (&ma, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let straw = ma.open(ep).map_err(|e| format!("open {ep}: {e}"))?;
                    assert_eq!(straw.peer(), ep);
                    assert_eq!(straw.role(), Role::Opener);
                    assert_eq!((straw.layout(), straw.format()), (*layout, *format), "{ep}");
                    exchange(straw, a_id, &SIZES)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for ((child, ep), ((.., layout, format), r)) in
        children.iter_mut().zip(peers.iter().zip(results))
    {
        assert_eq!(r, Ok(total), "{ep}");
        expect_report(
            child,
            &format!("accepted {} {layout:?} {format:?}", a.domid.0),
        );
        expect_report(child, &format!("received {} {total}", SIZES.len()));
        expect_report(child, "done");
        expect_exit_ok(child);
    }
    for (_, ep) in &children {
        wait_forgotten(&ma, ep);
    }
    // Every straw's directories are gone: ours, and the ones we made in the peers' trees.
    let warts = a.warts_top();
    assert_eq!(w.dom0.directory(&warts).unwrap(), Vec::<String>::new());
    for (_, ep) in &children {
        assert!(w.gone(&StrawPaths::new(&a, ep).straw_dir), "{ep}");
    }
    ma.shutdown();
    assert!(w.gone(&warts));
    let o = w.settled();
    assert!(o.is_clean(), "{o:?}");
    eprintln!("many straws at once: {:?}", t0.elapsed());
}

/// Drives a `both-ways` child `b`: it opens a JSON straw to us and routes envelopes to our
/// mailboxes (unknown addresses and garbage dropped, the straw lives on); we answer into its
/// mailbox; it closes. Then we open a straw the other way and exchange frames of every size.
fn both_ways(w: &World, ma: &Mgr, a: &Endpoint, b: &mut DomainProcess, eb: &Endpoint) {
    b.tell(&format!("open {}", a.domid.0)).unwrap();
    let s = ma.accept(WAIT).unwrap();
    assert_eq!((s.peer(), s.role()), (eb, Role::Listener));
    assert_eq!(
        (s.layout(), s.format()),
        (Layout::V2 { ring_pages: 4 }, Format::Json)
    );
    expect_report(
        b,
        &format!(
            "opened Opener {:?} {:?}",
            Layout::V2 { ring_pages: 4 },
            Format::Json
        ),
    );
    let (alpha, beta) = (s.mailbox("alpha"), s.mailbox("beta"));
    let mut alphas = Vec::new();
    let mut delivered = 0;
    let end = Instant::now() + WAIT;
    while alphas.len() < 2 {
        assert!(Instant::now() < end, "alpha got {alphas:?}");
        delivered += s.receiver().dispatch(Duration::from_millis(100)).unwrap();
        alphas.extend(std::iter::from_fn(|| alpha.try_recv()));
    }
    let big = "x".repeat(100_000);
    assert_eq!(alphas, [json!({"n": 1}), json!({"n": 2, "big": big})]);
    assert_eq!(beta.try_recv(), Some(json!("b1")));
    assert_eq!(beta.try_recv(), None);
    // Seven frames came; the unknown address and the three malformed ones were dropped.
    assert_eq!((delivered, s.stats().frames_received), (3, 7));
    s.sender().send_to("reply", &json!({"ok": true})).unwrap();
    expect_report(b, r#"reply {"ok":true}"#);
    expect_report(b, "closed");
    assert_eq!(s.receiver().recv_timeout(WAIT), Err(StrawError::Eof));
    drop(s);
    wait_forgotten(ma, eb);
    assert!(w.gone(&StrawPaths::new(eb, a).straw_dir));
    // The other way round.
    let t = ma.open(eb).unwrap();
    assert_eq!((t.peer(), t.role()), (eb, Role::Opener));
    expect_report(
        b,
        &format!(
            "accepted Listener {:?} {:?}",
            Layout::V2 { ring_pages: 4 },
            Format::Json
        ),
    );
    let total: usize = SIZES.iter().sum();
    assert_eq!(exchange(t, a.domid, &SIZES), Ok(total));
    expect_report(b, &format!("received {} {total}", SIZES.len()));
    expect_report(b, "done");
    expect_exit_ok(b);
}

/// A domain process opens a JSON straw to us and routes envelopes to our mailboxes (unknown
/// addresses and garbage dropped, the straw lives on); we answer into its mailbox; it closes.
/// Then we open a straw the other way and exchange raw frames of every size.
#[test]
fn handshake_both_ways_json_mailboxes_across_processes() {
    run_child_role(child);
    let t0 = Instant::now();
    let w = World::new("both");
    let (ma, a) = w.manager(config(Some(4), Format::Json, Duration::from_secs(5)));
    let (mut b, eb) = w.spawn(
        "handshake_both_ways_json_mailboxes_across_processes",
        "both-ways",
        &[],
    );
    both_ways(&w, &ma, &a, &mut b, &eb);
    ma.shutdown();
    let o = w.settled();
    assert!(o.is_clean(), "{o:?}");
    eprintln!("both ways: {:?}", t0.elapsed());
}

/// Opening to a domain that never answers (a mute one that only has its directories, and a
/// real manager whose process is stopped) fails with a handshake timeout within the configured
/// bound, without stalling an open to a live peer meanwhile; our nodes for the failed attempts
/// are removed, and once the stopped peer runs again a new open to it succeeds.
#[test]
fn a_peer_that_never_answers_times_out() {
    run_child_role(child);
    const TEST: &str = "a_peer_that_never_answers_times_out";
    let t0 = Instant::now();
    let hs = Duration::from_millis(1500);
    let w = World::new("mute");
    let (ma, a) = w.manager(config(Some(4), Format::Raw, hs));
    let small = sizes_arg(&[0, 100, 70_000]);
    let listener_args = ["4".to_string(), "raw".to_string(), small.clone()];
    let (mut mute, em) = w.spawn(TEST, "mute", &[]);
    let (mut stopped, es) = w.spawn(TEST, "listener", &listener_args);
    let (mut live, el) = w.spawn(TEST, "listener", &listener_args);
    signal(&stopped, "STOP");
    let (ma, a_id) = (Arc::new(ma), a.domid);
    // The hung opens begin after this, so neither can time out before `spawned + hs`.
    let spawned = Instant::now();
    let hung: Vec<_> = [em.clone(), es.clone()]
        .into_iter()
        .map(|ep| {
            let ma = ma.clone();
            thread::spawn(move || {
                let t = Instant::now();
                (ma.open(&ep).map(|_| ()), t.elapsed())
            })
        })
        .collect();
    // Both hung handshakes are under way (a fixed sleep does not say so on a loaded machine).
    let end = Instant::now() + WAIT;
    while !(ma.peers().contains(&em) && ma.peers().contains(&es)) {
        assert!(Instant::now() < end, "the hung opens never started");
        thread::sleep(Duration::from_millis(1));
    }
    // A live peer is not held up by the two hung handshakes: its open, begun while both are
    // under way, ends before either of them can.
    let t = Instant::now();
    let s = ma.open(&el).unwrap();
    let (took, since_spawned) = (t.elapsed(), spawned.elapsed());
    eprintln!("never answers: the live open took {took:?}");
    assert!(since_spawned < hs, "stalled: {took:?} ({since_spawned:?})");
    assert_eq!(exchange(s, a_id, &[0, 100, 70_000]), Ok(70_100));
    for h in hung {
        let (r, took) = h.join().unwrap();
        eprintln!("never answers: the hung open ended after {took:?}");
        assert_eq!(
            r,
            Err(ManagerError::Handshake(HandshakeError::TimedOut(
                Stage::Handshake
            )))
        );
        assert!(took >= hs && took < hs + Duration::from_secs(1), "{took:?}");
    }
    for ep in [&em, &es] {
        wait_forgotten(&ma, ep);
        let p = StrawPaths::new(&a, ep);
        assert!(w.gone(&p.warts_dir), "{}", p.warts_dir);
        assert!(w.gone(&p.straw_dir), "{}", p.straw_dir);
    }
    // The stopped peer runs again: it finds the stale knock gone and accepts a new one.
    signal(&stopped, "CONT");
    let s = ma.open(&es).unwrap();
    assert_eq!(exchange(s, a_id, &[0, 100, 70_000]), Ok(70_100));
    for (child, layout) in [(&mut live, 4), (&mut stopped, 4)] {
        expect_report(
            child,
            &format!(
                "accepted {} {:?} {:?}",
                a_id.0,
                Layout::V2 { ring_pages: layout },
                Format::Raw
            ),
        );
        expect_report(child, "received 3 70100");
        expect_report(child, "done");
        expect_exit_ok(child);
    }
    mute.tell("exit").unwrap();
    expect_exit_ok(&mut mute);
    wait_forgotten(&ma, &el);
    wait_forgotten(&ma, &es);
    assert!(ma.peers().is_empty(), "{:?}", ma.peers());
    Arc::into_inner(ma).unwrap().shutdown();
    let o = w.settled();
    assert!(o.is_clean(), "{o:?}");
    eprintln!("never answers: {:?}", t0.elapsed());
}

fn protocol(key: &'static str, error: ParseError) -> ManagerError {
    ManagerError::Handshake(HandshakeError::Protocol { key, error })
}

/// A listener that publishes garbage (or real pages with lies about them) makes our `open`
/// fail with the matching error, quickly; nothing of ours stays in xenstore or the hypervisor,
/// and the manager then opens a straw to an honest domain.
#[test]
fn a_hostile_listener_is_an_error_not_a_crash() {
    run_child_role(child);
    const TEST: &str = "a_hostile_listener_is_an_error_not_a_crash";
    let t0 = Instant::now();
    let hs = Duration::from_secs(3);
    let w = World::new("hl");
    let (ma, a) = w.manager(config(Some(4), Format::Raw, hs));
    let (mut h, eh) = w.spawn(TEST, "hostile-listener", &[]);
    use ParseError::*;
    let pore = |r: &Result<(), ManagerError>| {
        // With the backend's error itself (the handshake saw only its kind).
        matches!(r, Err(ManagerError::Pore(_)))
    };
    type Check = Box<dyn Fn(&Result<(), ManagerError>) -> bool>;
    let is = |e: ManagerError| -> Check { Box::new(move |r| r.as_ref().err() == Some(&e)) };
    let cases: Vec<(&str, Check)> = vec![
        ("ref-not-decimal", is(protocol("ring-ref", NotDecimal))),
        ("ref-leading-zero", is(protocol("ring-ref", NotDecimal))),
        ("ref-huge", is(protocol("ring-ref", TooLong))),
        ("ref-missing", is(protocol("ring-ref", Empty))),
        ("refs-too-many", Box::new(pore)),
        ("port-zero", is(protocol("event-channel", OutOfRange))),
        (
            "port-out-of-range",
            is(protocol("event-channel", OutOfRange)),
        ),
        ("port-negative", is(protocol("event-channel", NotDecimal))),
        ("format-bogus", is(protocol("format", BadToken))),
        ("format-huge", is(protocol("format", TooLong))),
        ("format-binary", is(protocol("format", BadToken))),
        ("layout-bogus", is(protocol("straw-layout", BadToken))),
        ("layout-huge", is(protocol("straw-layout", TooLong))),
        ("pages-not-pow2", is(protocol("ring-pages", OutOfRange))),
        ("pages-too-many", is(protocol("ring-pages", OutOfRange))),
        ("pages-zero", is(protocol("ring-pages", OutOfRange))),
        ("ctrl-ref-garbage", is(protocol("ring-ref", NotDecimal))),
        ("state-garbage", is(protocol("state", BadState))),
        ("state-empty", is(protocol("state", BadState))),
        ("state-nine", is(protocol("state", BadState))),
        ("state-binary", is(protocol("state", BadState))),
        (
            "state-early",
            is(ManagerError::Handshake(HandshakeError::UnexpectedState(
                XenbusState::Connected,
            ))),
        ),
        (
            "state-closing",
            is(ManagerError::Handshake(HandshakeError::PeerClosed)),
        ),
        ("real-refs-bad-port", Box::new(pore)),
        ("ling-pages-as-v2", Box::new(pore)),
        ("v2-pages-lie", Box::new(pore)),
        (
            "vanish",
            is(ManagerError::Handshake(HandshakeError::PeerGone)),
        ),
    ];
    let paths = StrawPaths::new(&a, &eh);
    for (case, check) in &cases {
        h.tell(&format!("case {case} {}", a.domid.0)).unwrap();
        let t = Instant::now();
        let r = ma.open(&eh).map(|_| ());
        let took = t.elapsed();
        assert!(check(&r), "{case}: {r:?}");
        // A parse error, not the timeout.
        assert!(took < hs, "{case}: {took:?}");
        expect_report(&mut h, &format!("applied {case}"));
        wait_forgotten(&ma, &eh);
        assert!(w.gone(&paths.warts_dir), "{case}: {}", paths.warts_dir);
        assert!(w.gone(&paths.straw_dir), "{case}: {}", paths.straw_dir);
        // Nothing of ours is mapped or bound (the liar's own grants live on in its process).
        let o = w.hv.outstanding_of(a.domid);
        assert!(o.is_clean(), "{case}: {o:?}");
    }
    h.tell("exit").unwrap();
    expect_exit_ok(&mut h);
    // The manager still works for an honest peer.
    let (mut g, eg) = w.spawn(
        TEST,
        "listener",
        &["ling".into(), "raw".into(), sizes_arg(&[5, 70_000])],
    );
    let s = ma.open(&eg).unwrap();
    assert_eq!(exchange(s, a.domid, &[5, 70_000]), Ok(70_005));
    expect_report(
        &mut g,
        &format!(
            "accepted {} {:?} {:?}",
            a.domid.0,
            Layout::Ling,
            Format::Raw
        ),
    );
    expect_report(&mut g, "received 2 70005");
    expect_report(&mut g, "done");
    expect_exit_ok(&mut g);
    ma.shutdown();
    let o = w.settled();
    assert!(o.is_clean(), "{o:?}");
    eprintln!(
        "hostile listener, {} cases: {:?}",
        cases.len(),
        t0.elapsed()
    );
}

/// A hostile opener's garbage makes our listener side end with the matching error (seen by the
/// observer): no straw is ever handed out, the pages granted to a peer that never maps them
/// are revoked, and an honest domain then opens a straw to us.
#[test]
fn a_hostile_opener_is_an_error_not_a_crash() {
    run_child_role(child);
    const TEST: &str = "a_hostile_opener_is_an_error_not_a_crash";
    let t0 = Instant::now();
    let hs = Duration::from_millis(1500);
    let w = World::new("ho");
    let (ma, a) = w.manager(config(Some(4), Format::Raw, hs));
    let (tx, ends) = mpsc::channel();
    let tx = Mutex::new(tx);
    ma.observe(Some(Arc::new(move |peer: &Endpoint, action: &Action| {
        if let Action::Done(r) = action {
            let _ = tx.lock().unwrap().send((peer.clone(), r.clone()));
        }
    })));
    let (mut h, eh) = w.spawn(TEST, "hostile-opener", &[]);
    let next_end = |peer: &Endpoint| loop {
        let (p, r) = ends.recv_timeout(WAIT).expect("the listener side ends");
        if &p == peer && r != Err(HandshakeError::Vanished) {
            break r;
        }
    };
    use ParseError::*;
    let bad = |key, error| Err(HandshakeError::Protocol { key, error });
    let cases = [
        ("warts-elsewhere", bad("warts", BadPath)),
        ("warts-huge", bad("warts", BadPath)),
        ("state-garbage", bad("state", BadState)),
        ("state-huge", bad("state", BadState)),
        (
            "state-reconfiguring",
            Err(HandshakeError::UnexpectedState(XenbusState::Reconfiguring)),
        ),
        ("state-closed", Err(HandshakeError::PeerClosed)),
        ("format-bogus", bad("format", BadToken)),
        ("format-huge", bad("format", TooLong)),
        ("layouts-bogus", bad("straw-layouts", BadToken)),
        ("layouts-double-space", bad("straw-layouts", Empty)),
        ("layouts-huge", bad("straw-layouts", TooLong)),
        ("garbage-after-publish", bad("state", BadState)),
        (
            "state-back-after-publish",
            Err(HandshakeError::UnexpectedState(XenbusState::Initialising)),
        ),
        (
            "never-maps",
            Err(HandshakeError::TimedOut(Stage::Handshake)),
        ),
    ];
    let sd = StrawPaths::new(&eh, &a).straw_dir;
    for (case, want) in &cases {
        h.tell(&format!("case {case} {}", a.domid.0)).unwrap();
        expect_report(&mut h, &format!("applied {case}"));
        let t = Instant::now();
        if *case == "never-maps" {
            // Our pages and port are out there, unmapped, until the handshake times out.
            let o = w.hv.outstanding_of(a.domid);
            assert!(o.grants > 0 && o.ports == 1, "{o:?}");
        }
        let r = next_end(&eh);
        let took = t.elapsed();
        assert_eq!(&r, want, "{case}");
        assert!(took < hs + Duration::from_secs(1), "{case}: {took:?}");
        wait_forgotten(&ma, &eh);
        assert!(w.gone(&sd), "{case}: {sd}");
        let o = w.hv.outstanding_of(a.domid);
        assert!(o.is_clean(), "{case}: {o:?}");
    }
    assert_eq!(
        ma.accept(Duration::from_millis(50)).err(),
        Some(ManagerError::TimedOut)
    );
    h.tell("exit").unwrap();
    expect_exit_ok(&mut h);
    // An honest domain still gets through, both ways.
    let (mut b, eb) = w.spawn(TEST, "both-ways", &[]);
    both_ways(&w, &ma, &a, &mut b, &eb);
    ma.shutdown();
    let o = w.settled();
    assert!(o.is_clean(), "{o:?}");
    eprintln!("hostile opener, {} cases: {:?}", cases.len(), t0.elapsed());
}

/// A peer that writes garbage or an unexpected state into its `state` while connected, or
/// removes its directory, ends the straw: our receiver sees the peer gone within a second, the
/// manager forgets it, and nothing leaks.
#[test]
fn a_connected_peer_breaking_its_directory_ends_the_straw() {
    run_child_role(child);
    let w = World::new("sab");
    let (ma, a) = w.manager(config(Some(4), Format::Raw, Duration::from_secs(5)));
    for mode in ["garbage", "reconfiguring", "rmdir"] {
        let (mut b, eb) = w.spawn(
            "a_connected_peer_breaking_its_directory_ends_the_straw",
            "saboteur",
            &[mode.to_string()],
        );
        let s = ma.open(&eb).unwrap();
        assert_eq!(s.receiver().recv_timeout(WAIT).unwrap(), "alive");
        // Connected on both sides, "alive" taken: now the peer may break its directory.
        b.tell("break").unwrap();
        expect_report(&mut b, "sabotaged");
        let t = Instant::now();
        let r = s.receiver().recv_timeout(WAIT);
        let took = t.elapsed();
        assert_eq!(r, Err(StrawError::PeerGone), "{mode}");
        assert!(took < Duration::from_secs(1), "{mode}: {took:?}");
        eprintln!("{mode}: peer gone {took:?} after the sabotage");
        drop(s);
        wait_forgotten(&ma, &eb);
        assert!(w.gone(&StrawPaths::new(&a, &eb).warts_dir), "{mode}");
        // The saboteur's side ends too: by our close, or by our unmapping first.
        let ended = b.read_report(WAIT).unwrap();
        assert!(
            ended == "ended Err(Eof)" || ended == "ended Err(PeerGone)",
            "{mode}: {ended}"
        );
        expect_report(&mut b, "done");
        expect_exit_ok(&mut b);
    }
    ma.shutdown();
    let o = w.settled();
    assert!(o.is_clean(), "{o:?}");
}
