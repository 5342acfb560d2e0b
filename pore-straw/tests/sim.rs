//! Straws between domains of the simulated Xen (pore-backend-sim), negotiated through
//! pore-xenstore's own xenstored: both layouts (v2 maps the control page first), big frames,
//! and a domain that dies mid-stream.

#![cfg(target_os = "linux")]

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pore_backend_sim::{Hypervisor, PeerClose, SimDomain};
use pore_straw::handshake::HandshakeConfig;
use pore_straw::manager::{Manager, ManagerConfig};
use pore_straw::straw::{Receiver, Sender, Straw, StrawError};
use pore_straw::xenstore::XsAdapter;
use pore_straw::{Endpoint, Layout};
use pore_xenstore::server::{Config as ServerConfig, Listener, Server};
use pore_xenstore::Client;

struct Env {
    server: Server,
    listener: Option<Listener>,
    sock: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Env {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pore-straw-sim-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("xs.sock");
        let _ = std::fs::remove_file(&sock);
        let server = Server::new(ServerConfig::default(), None);
        let listener = Some(server.listen_unix(&sock).unwrap());
        Env {
            server,
            listener,
            sock,
            dir,
        }
    }

    fn xs(&self) -> XsAdapter {
        XsAdapter::new(Arc::new(Client::connect_unix(&self.sock).unwrap()))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.server.shutdown();
        if let Some(l) = self.listener.take() {
            l.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cfg(v2: bool) -> ManagerConfig {
    ManagerConfig {
        handshake: HandshakeConfig {
            v2_pages: v2.then_some(4),
            handshake_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(2),
            ..HandshakeConfig::default()
        },
        ..ManagerConfig::default()
    }
}

fn frame(i: usize, len: usize) -> Bytes {
    Bytes::from((0..len).map(|j| (i * 13 + j) as u8).collect::<Vec<_>>())
}

/// Frames of `sizes` bytes go both ways at once between `sa` and `sb` (`sb`'s halves on
/// threads of their own) and arrive whole and in order; gives back the four halves.
fn frames_both_ways<B: pore_core::Backend + 'static>(
    sa: Straw<B>,
    sb: Straw<B>,
    sizes: &[usize],
) -> (Sender<B>, Receiver<B>, Sender<B>, Receiver<B>) {
    let (ta, ra) = sa.split();
    let (tb, rb) = sb.split();
    let theirs = sizes.to_vec();
    let sender_b = thread::spawn(move || {
        for (i, n) in theirs.iter().enumerate() {
            tb.send(frame(i, *n)).unwrap();
        }
        tb
    });
    let theirs = sizes.to_vec();
    let receiver_b = thread::spawn(move || {
        for (i, n) in theirs.iter().enumerate() {
            assert_eq!(rb.recv().unwrap(), frame(i + 50, *n), "#{i} at b");
        }
        rb
    });
    for (i, n) in sizes.iter().enumerate() {
        ta.send(frame(i + 50, *n)).unwrap();
    }
    for (i, n) in sizes.iter().enumerate() {
        assert_eq!(ra.recv().unwrap(), frame(i, *n), "#{i} at a");
    }
    (ta, ra, sender_b.join().unwrap(), receiver_b.join().unwrap())
}

#[test]
fn both_layouts_big_frames_both_ways() {
    for v2 in [false, true] {
        let env = Env::new(if v2 { "v2" } else { "ling" });
        let hv = Hypervisor::new().unwrap();
        let (a, b): (SimDomain, SimDomain) = (
            hv.create_domain("a").unwrap(),
            hv.create_domain("b").unwrap(),
        );
        let (ea, eb) = (Endpoint::seed(a.id()), Endpoint::seed(b.id()));
        let ma = Manager::start(a, env.xs(), ea.clone(), cfg(v2)).unwrap();
        let mb = Manager::start(b, env.xs(), eb.clone(), cfg(v2)).unwrap();
        let sa = ma.open(&eb).unwrap();
        let sb = mb.accept(Duration::from_secs(5)).unwrap();
        let want = if v2 {
            Layout::V2 { ring_pages: 4 }
        } else {
            Layout::Ling
        };
        assert_eq!((sa.layout(), sb.layout()), (want, want));
        let (ta, ra, tb, rb) = frames_both_ways(sa, sb, &[0, 1, 5000, 70_000, 5 << 20]);
        ta.close().unwrap();
        assert_eq!(
            rb.recv_timeout(Duration::from_secs(3)),
            Err(StrawError::Eof)
        );
        drop((ra, tb, rb));
        ma.shutdown();
        mb.shutdown();
        let o = hv.outstanding();
        assert!(o.is_clean(), "v2={v2}: {o:?}");
    }
}

/// The child domain process: runs a manager, accepts one straw, says "alive", then waits to
/// be killed.
fn child_role(role: &str, args: &[String]) -> i32 {
    match role {
        "listener" => {
            let dom = SimDomain::connect().expect("broker");
            let xs = XsAdapter::new(Arc::new(Client::connect_unix(&args[0]).expect("xenstored")));
            let v2 = args[1] == "v2";
            let me = Endpoint::seed(dom.id());
            let m = Manager::start(dom, xs, me.clone(), cfg(v2)).expect("manager");
            pore_backend_sim::process::report(&format!("{}", me.domid.0));
            let s = m.accept(Duration::from_secs(10)).expect("accept");
            s.sender().send(Bytes::from_static(b"alive")).expect("send");
            thread::sleep(Duration::from_secs(60));
            0
        }
        _ => 2,
    }
}

#[test]
fn a_domain_killed_mid_stream_is_peer_gone_within_a_second() {
    pore_backend_sim::process::run_child_role(child_role);
    for v2 in [false, true] {
        let env = Env::new(if v2 { "kv2" } else { "kling" });
        let hv = Hypervisor::start_unexported().unwrap();
        // A xenstored of its own, which the hypervisor does not tell of deaths: xenstore still
        // says Connected after the kill, only the pore can tell (the simulator reports the
        // dead domain's closed port).
        killed_mid_stream(
            &hv,
            &env.sock,
            env.xs(),
            v2,
            "a_domain_killed_mid_stream_is_peer_gone_within_a_second",
        );
    }
}

/// As on Xen: the dead domain's port closes silently (`PeerClose::Silent`) and the toolstack
/// removes its nodes from xenstore (the hypervisor's own xenstored). A v2 straw learns it from
/// the live byte its unmap-notify cleared, a LING straw from xenstore, both within a second.
#[test]
fn a_domain_killed_mid_stream_is_peer_gone_within_a_second_with_xen_faithful_close() {
    pore_backend_sim::process::run_child_role(child_role);
    for v2 in [false, true] {
        let env = Env::new(if v2 { "ksv2" } else { "ksling" });
        let hv = Hypervisor::start_unexported().unwrap();
        hv.set_peer_close(PeerClose::Silent);
        let sock = env.dir.join("hv-xenstored.sock");
        let listener = hv.xenstored().unwrap().listen_unix(&sock).unwrap();
        let xs = XsAdapter::new(Arc::new(Client::connect_unix(&sock).unwrap()));
        killed_mid_stream(
            &hv,
            &sock,
            xs,
            v2,
            "a_domain_killed_mid_stream_is_peer_gone_within_a_second_with_xen_faithful_close",
        );
        drop(hv);
        listener.join();
    }
}

/// Domain A opens a straw to a child domain process, which SIGKILL ends mid-stream; `test`
/// names the calling test (the child re-runs it in its role).
fn killed_mid_stream(hv: &Hypervisor, sock: &std::path::Path, xs: XsAdapter, v2: bool, test: &str) {
    let how = if hv.peer_close() == PeerClose::Silent {
        "silent close"
    } else {
        "reported close"
    };
    let a = hv.create_domain("a").unwrap();
    let ea = Endpoint::seed(a.id());
    let ma = Manager::start(a, xs, ea.clone(), cfg(v2)).unwrap();
    let mut child = hv
        .domain_command("listener")
        .unwrap()
        .test(test)
        .arg(sock.to_string_lossy().to_string())
        .arg(if v2 { "v2" } else { "ling" })
        .spawn()
        .unwrap();
    let id: u16 = child
        .read_report(Duration::from_secs(10))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let sa = ma.open(&Endpoint::seed(pore_core::DomId(id))).unwrap();
    assert_eq!(sa.receiver().recv().unwrap(), "alive");
    let reader = thread::spawn(move || {
        let r = sa.receiver().recv_timeout(Duration::from_secs(10));
        (r, Instant::now(), sa)
    });
    thread::sleep(Duration::from_millis(100));
    // SIGKILL: no close protocol.
    let killed = Instant::now();
    child.kill().unwrap();
    let (r, at, sa) = reader.join().unwrap();
    // From the kill (the reader may have begun to wait long before it on a loaded machine).
    let took = at.saturating_duration_since(killed);
    eprintln!("{how}, v2={v2}: {r:?} {took:?} after the kill");
    assert_eq!(r, Err(StrawError::PeerGone), "{how}, v2={v2}");
    assert!(took < Duration::from_secs(1), "{how}, v2={v2}: {took:?}");
    drop(sa);
    ma.shutdown();
    // Nothing leaked on our side: our mappings or grants and our port are gone.
    assert!(hv.wait_dead(pore_core::DomId(id), Duration::from_secs(5)));
    let end = Instant::now() + Duration::from_secs(2);
    while !hv.outstanding().is_clean() && Instant::now() < end {
        thread::sleep(Duration::from_millis(10));
    }
    let o = hv.outstanding();
    assert!(o.is_clean(), "{how}, v2={v2}: {o:?}");
}

/// Every frame sent before `close()` arrives: a million small frames (the bar).
#[test]
fn a_million_frames_then_close_lose_nothing() {
    let env = Env::new("million");
    let hv = Hypervisor::new().unwrap();
    let (a, b) = (
        hv.create_domain("a").unwrap(),
        hv.create_domain("b").unwrap(),
    );
    let (ea, eb) = (Endpoint::seed(a.id()), Endpoint::seed(b.id()));
    let ma = Manager::start(a, env.xs(), ea, cfg(true)).unwrap();
    let mb = Manager::start(b, env.xs(), eb.clone(), cfg(true)).unwrap();
    let sa = ma.open(&eb).unwrap();
    let sb = mb.accept(Duration::from_secs(5)).unwrap();
    const N: u32 = 1_000_000;
    let reader = thread::spawn(move || {
        let mut next = 0u32;
        loop {
            match sb.receiver().recv_timeout(Duration::from_secs(10)) {
                Ok(f) => {
                    assert_eq!(f, &next.to_be_bytes()[..]);
                    next += 1;
                }
                Err(StrawError::Eof) => return next,
                Err(e) => panic!("after {next}: {e}"),
            }
        }
    });
    let t0 = Instant::now();
    for i in 0..N {
        sa.sender()
            .send(Bytes::copy_from_slice(&i.to_be_bytes()))
            .unwrap();
    }
    sa.close().unwrap();
    assert_eq!(reader.join().unwrap(), N);
    let _ = std::io::Write::write_fmt(
        &mut std::io::stderr(),
        format_args!("1M frames + close: {:?}\n", t0.elapsed()),
    );
    ma.shutdown();
    mb.shutdown();
}

/// Rough throughput of 64 KiB frames (run with `--ignored --nocapture` in release).
#[test]
#[ignore]
fn throughput_sanity() {
    for pages in [0u32, 16, 64] {
        let v2 = pages > 0;
        let env = Env::new(&format!("t{pages}"));
        let hv = Hypervisor::new().unwrap();
        let (a, b) = (
            hv.create_domain("a").unwrap(),
            hv.create_domain("b").unwrap(),
        );
        let (ea, eb) = (Endpoint::seed(a.id()), Endpoint::seed(b.id()));
        let ma = Manager::start(a, env.xs(), ea, cfg(v2)).unwrap();
        let mut c = cfg(v2);
        c.handshake.v2_pages = v2.then_some(pages);
        let mb = Manager::start(b, env.xs(), eb.clone(), c).unwrap();
        let sa = ma.open(&eb).unwrap();
        let sb = mb.accept(Duration::from_secs(5)).unwrap();
        let frame = Bytes::from(vec![7u8; 64 * 1024]);
        const N: usize = 20_000;
        let reader = thread::spawn(move || {
            for _ in 0..N {
                sb.receiver().recv().unwrap();
            }
            sb
        });
        let t0 = Instant::now();
        for _ in 0..N {
            sa.sender().send(frame.clone()).unwrap();
        }
        let sb = reader.join().unwrap();
        let dt = t0.elapsed();
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!(
                "{}: {:.0} MB/s\n",
                if v2 {
                    format!("v2 {pages} pages")
                } else {
                    "ling".to_string()
                },
                (N * 64 * 1024) as f64 / dt.as_secs_f64() / 1e6
            ),
        );
        drop((sa, sb));
        ma.shutdown();
        mb.shutdown();
    }
    // The same traffic over a unix socketpair, length-prefixed, for comparison.
    use std::io::{Read, Write};
    let (mut w, mut r) = std::os::unix::net::UnixStream::pair().unwrap();
    const N: usize = 20_000;
    let reader = thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut len = [0u8; 4];
        for _ in 0..N {
            r.read_exact(&mut len).unwrap();
            let n = u32::from_be_bytes(len) as usize;
            r.read_exact(&mut buf[..n]).unwrap();
            let _ = Bytes::copy_from_slice(&buf[..n]);
        }
    });
    let payload = vec![7u8; 64 * 1024];
    let t0 = Instant::now();
    for _ in 0..N {
        w.write_all(&(payload.len() as u32).to_be_bytes()).unwrap();
        w.write_all(&payload).unwrap();
    }
    reader.join().unwrap();
    let dt = t0.elapsed();
    let _ = std::io::Write::write_fmt(
        &mut std::io::stderr(),
        format_args!(
            "socketpair: {:.0} MB/s\n",
            (N * 64 * 1024) as f64 / dt.as_secs_f64() / 1e6
        ),
    );
}

/// Named endpoints (D14): two managers per domain sharing one backend handle, several straws
/// at once between them, each on its own paths.
#[test]
fn named_endpoints_share_a_domain() {
    let env = Env::new("named");
    let hv = Hypervisor::new().unwrap();
    let a = Arc::new(hv.create_domain("a").unwrap());
    let b = Arc::new(hv.create_domain("b").unwrap());
    let ep = |d: &SimDomain, n: &str| Endpoint::new(d.id(), n).unwrap();
    let (ax, ay, bx, by) = (ep(&a, "x"), ep(&a, "y"), ep(&b, "x"), ep(&b, "y"));
    let start = |d: &Arc<SimDomain>, e: &Endpoint| {
        Manager::start_shared(d.clone(), env.xs(), e.clone(), cfg(true)).unwrap()
    };
    let (max, may, mbx, mby) = (
        start(&a, &ax),
        start(&a, &ay),
        start(&b, &bx),
        start(&b, &by),
    );
    let pairs = [(&max, &bx, &mbx), (&max, &by, &mby), (&may, &bx, &mbx)];
    let mut straws = Vec::new();
    for (opener, to, listener) in pairs {
        let s = opener.open(to).unwrap();
        let t = listener.accept(Duration::from_secs(5)).unwrap();
        straws.push((s, t));
    }
    for (i, (s, t)) in straws.iter().enumerate() {
        s.sender().send(frame(i, 1000)).unwrap();
        assert_eq!(t.receiver().recv().unwrap(), frame(i, 1000));
        assert_eq!(t.peer(), if i == 2 { &ay } else { &ax });
    }
    drop(straws);
    for m in [max, may, mbx, mby] {
        m.shutdown();
    }
    let end = Instant::now() + Duration::from_secs(2);
    while !hv.outstanding().is_clean() && Instant::now() < end {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(hv.outstanding().is_clean(), "{:?}", hv.outstanding());
}

/// Rough round-trip latency of 16-byte messages and events per message (run with
/// `--ignored --nocapture` in release).
#[test]
#[ignore]
fn latency_sanity() {
    for v2 in [false, true] {
        let env = Env::new(if v2 { "lv2" } else { "lling" });
        let hv = Hypervisor::new().unwrap();
        let (a, b) = (
            hv.create_domain("a").unwrap(),
            hv.create_domain("b").unwrap(),
        );
        let (ea, eb) = (Endpoint::seed(a.id()), Endpoint::seed(b.id()));
        let ma = Manager::start(a, env.xs(), ea, cfg(v2)).unwrap();
        let mb = Manager::start(b, env.xs(), eb.clone(), cfg(v2)).unwrap();
        let sa = ma.open(&eb).unwrap();
        let sb = mb.accept(Duration::from_secs(5)).unwrap();
        const N: usize = 20_000;
        let echo = thread::spawn(move || {
            for _ in 0..N {
                let f = sb.receiver().recv().unwrap();
                sb.sender().send(f).unwrap();
            }
            sb
        });
        let msg = Bytes::from_static(b"0123456789abcdef");
        let t0 = Instant::now();
        for _ in 0..N {
            sa.sender().send(msg.clone()).unwrap();
            assert_eq!(sa.receiver().recv().unwrap(), msg);
        }
        let dt = t0.elapsed();
        let sb = echo.join().unwrap();
        let st = sa.stats();
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!(
                "{}: round trip {:.1} us, {:.2} events sent per message\n",
                if v2 { "v2" } else { "ling" },
                dt.as_secs_f64() * 1e6 / N as f64,
                st.notifies as f64 / (st.frames_sent + st.frames_received) as f64
            ),
        );
        drop((sa, sb));
        ma.shutdown();
        mb.shutdown();
    }
}

/// Frames still waiting for the application when the peer closes are received before the end
/// of the stream. (Once lost: the receiver read up to 256 bytes ahead, the sender's drain saw
/// its ring empty, and the close chart closed the receiver's pore before the application read
/// on. The receiver now reads the ring in place, with no read-ahead.)
#[test]
fn frames_sent_before_the_peer_closes_are_still_received() {
    for v2 in [false, true] {
        let env = Env::new(if v2 { "ra2" } else { "ra1" });
        let hv = Hypervisor::new().unwrap();
        let (a, b) = (
            hv.create_domain("a").unwrap(),
            hv.create_domain("b").unwrap(),
        );
        let (ea, eb) = (Endpoint::seed(a.id()), Endpoint::seed(b.id()));
        let ma = Manager::start(a, env.xs(), ea, cfg(v2)).unwrap();
        let mb = Manager::start(b, env.xs(), eb.clone(), cfg(v2)).unwrap();
        let sa = ma.open(&eb).unwrap();
        let sb = mb.accept(Duration::from_secs(5)).unwrap();
        for i in 0u32..10 {
            sa.sender()
                .send(Bytes::copy_from_slice(&i.to_be_bytes()))
                .unwrap();
        }
        let f = sb.receiver().recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(f, &0u32.to_be_bytes()[..]);
        // The sender closes while nine frames wait in the ring: its close drains them (it
        // returns once we took them) and runs the close chart.
        let closer = std::thread::spawn(move || sa.close());
        let mut got = 1u32;
        loop {
            match sb.receiver().recv_timeout(Duration::from_secs(5)) {
                Ok(f) => {
                    assert_eq!(f, &got.to_be_bytes()[..]);
                    got += 1;
                }
                Err(StrawError::Eof) => break,
                Err(e) => panic!("v2={v2} after {got}: {e}"),
            }
        }
        closer.join().unwrap().unwrap();
        assert_eq!(got, 10, "v2={v2}: frames sent before close were lost");
        ma.shutdown();
        mb.shutdown();
    }
}

/// Polling mode negotiated through xenstore (D26): used when both sides ask, not when one
/// does; either way big frames go both ways and the close is the end of the stream. A
/// polling straw sends no event.
#[test]
fn polling_is_negotiated_and_carries_big_frames() {
    for (ask_a, ask_b) in [(true, true), (true, false), (false, true)] {
        let env = Env::new(&format!("poll-{ask_a}-{ask_b}"));
        let hv = Hypervisor::new().unwrap();
        let (a, b): (SimDomain, SimDomain) = (
            hv.create_domain("a").unwrap(),
            hv.create_domain("b").unwrap(),
        );
        let (ea, eb) = (Endpoint::seed(a.id()), Endpoint::seed(b.id()));
        let with = |ask: bool| {
            let mut c = cfg(true);
            c.handshake.polling = ask;
            c
        };
        let ma = Manager::start(a, env.xs(), ea.clone(), with(ask_a)).unwrap();
        let mb = Manager::start(b, env.xs(), eb.clone(), with(ask_b)).unwrap();
        let sa = ma.open(&eb).unwrap();
        let sb = mb.accept(Duration::from_secs(5)).unwrap();
        let both = ask_a && ask_b;
        assert_eq!((sa.is_polling(), sb.is_polling()), (both, both));
        assert_eq!(sa.layout(), Layout::V2 { ring_pages: 4 });
        let (ta, ra, tb, rb) = frames_both_ways(sa, sb, &[0, 1, 5000, 70_000, 1 << 20]);
        if both {
            assert_eq!(ta.stats().notifies, 0, "{:?}", ta.stats());
            assert_eq!(tb.stats().notifies, 0, "{:?}", tb.stats());
        }
        let start = Instant::now();
        ta.close().unwrap();
        assert_eq!(
            rb.recv_timeout(Duration::from_secs(5)),
            Err(StrawError::Eof)
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        drop((ra, tb, rb));
        ma.shutdown();
        mb.shutdown();
        let o = hv.outstanding();
        assert!(o.is_clean(), "{ask_a} {ask_b}: {o:?}");
    }
}
