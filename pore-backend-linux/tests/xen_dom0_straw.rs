//! pore-straw on the Linux backend in a real Xen dom0: two managers under different endpoint
//! names (D14) negotiate through the real C xenstored, then move frames over granted and
//! mapped pages and real event channels. Skipped without `/dev/xen` unless
//! `PORE_REQUIRE_XEN=1` (see `xen_dom0.rs`).
//!
//! The managers reach xenstored through `/dev/xen/xenbus`, the path a domU must use (not
//! xenstored's unix socket). Linux 6.1's xenbus device deadlocks its whole xenstore
//! connection when a WATCH or UNWATCH is written on a file while a reply to another request
//! of that same file is still on its way (the writer holds the file's mutex while it waits
//! for the watch reply; the kernel's xenbus thread, delivering the earlier reply, waits for
//! that mutex): pore-xenstore's client keeps one request in flight on that device, and these
//! tests, whose managers watch from one thread while others read and write, prove it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pore_backend_linux::{LinuxXen, Outstanding};
use pore_core::DomId;
use pore_straw::handshake::HandshakeConfig;
use pore_straw::manager::{Manager, ManagerConfig};
use pore_straw::straw::StrawError;
use pore_straw::xenstore::XsAdapter;
use pore_straw::{Endpoint, Layout};
use pore_xenstore::Client;

fn on_xen() -> bool {
    if Path::new("/dev/xen/evtchn").exists() {
        return true;
    }
    if std::env::var("PORE_REQUIRE_XEN").as_deref() == Ok("1") {
        panic!("PORE_REQUIRE_XEN=1 but /dev/xen/evtchn is missing: not a Xen domain?");
    }
    println!("skipped: no /dev/xen");
    false
}

fn client() -> Arc<Client> {
    use pore_xenstore::transport::XenbusTransport;
    let file = pore_backend_linux::open_xenbus().unwrap();
    Arc::new(
        Client::with_transport(
            Box::new(XenbusTransport::from_file(file)),
            pore_xenstore::Config::default(),
        )
        .unwrap(),
    )
}

fn frame(i: usize, len: usize) -> Bytes {
    Bytes::from((0..len).map(|j| (i * 31 + j) as u8).collect::<Vec<_>>())
}

/// Both layouts, frames from 0 B to 1 MiB both ways compared byte for byte, then a clean
/// close: the receiving side sees the end of the stream and nothing stays held.
#[test]
fn straw_between_two_named_endpoints_in_dom0() {
    if !on_xen() {
        return;
    }
    for v2 in [false, true] {
        let cfg = ManagerConfig {
            handshake: HandshakeConfig {
                v2_pages: v2.then_some(4),
                handshake_timeout: Duration::from_secs(20),
                close_timeout: Duration::from_secs(5),
                ..HandshakeConfig::default()
            },
            ..ManagerConfig::default()
        };
        let tag = if v2 { "v2" } else { "ling" };
        let pid = std::process::id();
        let ea = Endpoint::new(DomId::DOM0, &format!("pa{tag}{pid}")).unwrap();
        let eb = Endpoint::new(DomId::DOM0, &format!("pb{tag}{pid}")).unwrap();
        let (a, b) = (LinuxXen::open().unwrap(), LinuxXen::open().unwrap());
        let ma = Manager::start(a.clone(), XsAdapter::new(client()), ea, cfg.clone()).unwrap();
        let mb = Manager::start(b.clone(), XsAdapter::new(client()), eb.clone(), cfg).unwrap();
        let sa = ma.open(&eb).unwrap();
        let sb = mb.accept(Duration::from_secs(20)).unwrap();
        let want = if v2 {
            Layout::V2 { ring_pages: 4 }
        } else {
            Layout::Ling
        };
        assert_eq!((sa.layout(), sb.layout()), (want, want));

        let sizes = [0usize, 1, 100, 5000, 70_000, 1 << 20];
        let (ta, ra) = sa.split();
        let (tb, rb) = sb.split();
        // b sends and receives on threads of their own, so neither direction waits for the
        // other to drain.
        let sender_b = thread::spawn(move || {
            for (i, n) in sizes.iter().enumerate() {
                tb.send(frame(i + 100, *n)).unwrap();
            }
            tb
        });
        let receiver_b = thread::spawn(move || {
            for (i, n) in sizes.iter().enumerate() {
                assert_eq!(rb.recv().unwrap(), frame(i, *n), "{tag} a->b #{i}");
            }
            rb
        });
        let sender_a = thread::spawn(move || {
            for (i, n) in sizes.iter().enumerate() {
                ta.send(frame(i, *n)).unwrap();
            }
            ta
        });
        for (i, n) in sizes.iter().enumerate() {
            assert_eq!(ra.recv().unwrap(), frame(i + 100, *n), "{tag} b->a #{i}");
        }
        let ta = sender_a.join().unwrap();
        let tb = sender_b.join().unwrap();
        let rb = receiver_b.join().unwrap();
        ta.close().unwrap();
        assert_eq!(
            rb.recv_timeout(Duration::from_secs(10)),
            Err(StrawError::Eof)
        );
        drop((ra, tb, rb));
        ma.shutdown();
        mb.shutdown();
        assert_eq!(a.outstanding(), Outstanding::default(), "{tag}");
        assert_eq!(b.outstanding(), Outstanding::default(), "{tag}");
    }
}

fn cfg(v2: bool) -> ManagerConfig {
    ManagerConfig {
        handshake: HandshakeConfig {
            v2_pages: v2.then_some(4),
            handshake_timeout: Duration::from_secs(20),
            close_timeout: Duration::from_secs(5),
            ..HandshakeConfig::default()
        },
        ..ManagerConfig::default()
    }
}

/// The child process of [`a_killed_endpoint_process_is_peer_gone_within_a_second`]: a second
/// process of dom0 running endpoint `name`, which accepts from or opens to `peer` and echoes
/// every frame until killed. Does nothing unless run by that test (env `PORE_STRAW_CHILD`).
#[test]
fn child_echo_endpoint() {
    let Ok(args) = std::env::var("PORE_STRAW_CHILD") else {
        return;
    };
    let args: Vec<&str> = args.split(' ').collect();
    let [name, layout, mode, peer] = args[..] else {
        panic!("bad PORE_STRAW_CHILD {args:?}");
    };
    let me = Endpoint::new(DomId::DOM0, name).unwrap();
    let peer = Endpoint::new(DomId::DOM0, peer).unwrap();
    let m = Manager::start(
        LinuxXen::open().unwrap(),
        XsAdapter::new(client()),
        me,
        cfg(layout == "v2"),
    )
    .unwrap();
    println!("READY");
    let straw = if mode == "open" {
        m.open(&peer).unwrap()
    } else {
        m.accept(Duration::from_secs(30)).unwrap()
    };
    while let Ok(f) = straw.receiver().recv_timeout(Duration::from_secs(60)) {
        straw.sender().send(f).unwrap();
    }
}

/// Two processes of dom0: this one runs endpoint x, a child runs endpoint y; frames echo
/// through y until the child is SIGKILLed mid-stream. dom0 lives on and xenstore does not
/// change, so only the data path can tell: y's unmap notification (live byte cleared, event
/// sent) fired by the kernel as the dead process's files close. A v2 straw must end with
/// "peer gone" within a second, whichever side granted the pages.
#[test]
fn a_killed_endpoint_process_is_peer_gone_within_a_second() {
    if !on_xen() {
        return;
    }
    for y_listens in [true, false] {
        let pid = std::process::id();
        let tag = if y_listens { "l" } else { "o" };
        let (x_name, y_name) = (format!("x{tag}{pid}"), format!("y{tag}{pid}"));
        // x is up before y starts, so y may open to it at once.
        let a = LinuxXen::open().unwrap();
        let x = Endpoint::new(DomId::DOM0, &x_name).unwrap();
        let y = Endpoint::new(DomId::DOM0, &y_name).unwrap();
        let m = Manager::start(a.clone(), XsAdapter::new(client()), x, cfg(true)).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "child_echo_endpoint",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                "PORE_STRAW_CHILD",
                format!(
                    "{y_name} v2 {} {x_name}",
                    if y_listens { "accept" } else { "open" }
                ),
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("READY") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child endpoint never became ready");
        }
        let s = if y_listens {
            m.open(&y).unwrap()
        } else {
            m.accept(Duration::from_secs(30)).unwrap()
        };
        assert_eq!(s.layout(), Layout::V2 { ring_pages: 4 });
        let echoed = Arc::new(AtomicUsize::new(0));
        let counter = echoed.clone();
        let streamer = thread::spawn(move || {
            let mut i = 0usize;
            loop {
                counter.store(i, Ordering::Relaxed);
                let f = frame(i, 1000);
                if let Err(e) = s.sender().send(f.clone()) {
                    return (e, Instant::now(), i, s);
                }
                match s.receiver().recv_timeout(Duration::from_secs(10)) {
                    Ok(got) => assert_eq!(got, f, "frame {i}"),
                    Err(e) => return (e, Instant::now(), i, s),
                }
                i += 1;
            }
        });
        // Kill mid-stream: once a few frames have made the round trip (a fixed sleep saw none
        // on a loaded machine under emulation).
        let waiting = Instant::now();
        while echoed.load(Ordering::Relaxed) < 3 && waiting.elapsed() < Duration::from_secs(60) {
            thread::sleep(Duration::from_millis(10));
        }
        let killed = Instant::now();
        child.kill().unwrap();
        let (err, at, frames, s) = streamer.join().unwrap();
        child.wait().unwrap();
        let took = at.saturating_duration_since(killed);
        println!("y listens {y_listens}: {err:?} {took:?} after the kill, {frames} frames echoed");
        assert!(frames > 0, "the kill came mid-stream");
        assert_eq!(err, StrawError::PeerGone);
        assert!(
            took < Duration::from_secs(1),
            "peer gone seen after {took:?}"
        );
        drop(s);
        m.shutdown();
        assert_eq!(a.outstanding(), Outstanding::default());
    }
}
