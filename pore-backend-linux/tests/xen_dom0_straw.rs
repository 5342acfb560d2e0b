//! pore-straw on the Linux backend in a real Xen dom0: two managers under different endpoint
//! names (D14) negotiate through the real C xenstored, then move frames over granted and
//! mapped pages and real event channels. Skipped without `/dev/xen` unless
//! `PORE_REQUIRE_XEN=1` (see `xen_dom0.rs`).
//!
//! The managers reach xenstored through its unix socket when it has one, else through
//! `/dev/xen/xenbus`. Beware the latter: Linux 6.1's xenbus device deadlocks its whole
//! xenstore connection when a WATCH or UNWATCH is written on a file while a reply to another
//! request of that same file is still on its way (the writer holds the file's mutex while it
//! waits for the watch reply; the kernel's xenbus thread, delivering the earlier reply, waits
//! for that mutex). A multi-threaded client must not pipeline requests around (un)watches on
//! that device.

use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use pore_backend_linux::{LinuxXen, Outstanding};
use pore_core::DomId;
use pore_straw::handshake::Config;
use pore_straw::manager::{Manager, ManagerConfig};
use pore_straw::straw::StrawIoError;
use pore_straw::xenstore::XsAdapter;
use pore_straw::{Endpoint, Layout};
use pore_xenstore::Client;

const XENSTORED_SOCKET: &str = "/var/run/xenstored/socket";

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
    if Path::new(XENSTORED_SOCKET).exists() {
        return Arc::new(Client::connect_unix(XENSTORED_SOCKET).unwrap());
    }
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
    println!(
        "xenstore through {}",
        if Path::new(XENSTORED_SOCKET).exists() {
            XENSTORED_SOCKET
        } else {
            "/dev/xen/xenbus"
        }
    );
    for v2 in [false, true] {
        let cfg = ManagerConfig {
            handshake: Config {
                v2_pages: v2.then_some(4),
                handshake_timeout: Duration::from_secs(20),
                close_timeout: Duration::from_secs(5),
                ..Config::default()
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
            Err(StrawIoError::Eof)
        );
        drop((ra, tb, rb));
        ma.shutdown();
        mb.shutdown();
        assert_eq!(a.outstanding(), Outstanding::default(), "{tag}");
        assert_eq!(b.outstanding(), Outstanding::default(), "{tag}");
    }
}
