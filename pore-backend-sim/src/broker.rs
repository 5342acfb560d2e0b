//! The broker: the simulated hypervisor reached by domain processes over a unix socket (D19).
//!
//! One thread accepts connections; one thread per connection serves its process's requests.
//! The first message of a connection is a hello naming a new domain, or a join naming a live
//! domain the process becomes one more context of; the reply carries the domid, the context id
//! and the event table's memfd. When the connection closes (the process exited, crashed or was
//! killed), its context ends ([`crate::hv::Hv::context_ended`]): a domain's creator takes the
//! domain with it ([`crate::hv::Hv::domain_died`] releases all it held); a joined process
//! releases only its own grants, mappings and ports, firing their unmap notifications
//! ([`crate::hv::Hv::context_died`]), and the domain lives on.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use pore_core::{DomId, ErrorKind};

use crate::error::{Result, SimError};
use crate::hv::{CtxId, Hv, DOMAIN_CTX};
use crate::proto::{self, Op, Reply};
use crate::sys::socket;

/// How often the broker's threads look at their stop flag.
const TICK: Duration = Duration::from_millis(50);

pub(crate) struct Broker {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("path", &self.path).finish()
    }
}

fn fresh_path() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!(
        "pore-sim-{}-{n}-{nanos:x}.sock",
        std::process::id()
    ))
}

impl Broker {
    pub(crate) fn start(hv: Arc<Hv>, path: Option<&Path>) -> Result<Broker> {
        let path = path.map_or_else(fresh_path, Path::to_path_buf);
        let listener =
            socket::listen(&path).map_err(SimError::os("binding the sim broker socket"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let (stop2, threads2) = (stop.clone(), threads.clone());
        let acceptor = std::thread::Builder::new()
            .name("pore-sim-broker".into())
            .spawn(move || accept_loop(hv, listener, stop2, threads2))
            .map_err(SimError::os("starting the sim broker thread"))?;
        tracing::info!(path = %path.display(), "sim broker listening");
        Ok(Broker {
            path,
            stop,
            threads,
            acceptor: Some(acceptor),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(
    hv: Arc<Hv>,
    listener: OwnedFd,
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    while !stop.load(Ordering::Acquire) {
        match socket::accept(listener.as_fd(), TICK) {
            Ok(Some(conn)) => {
                let (hv, stop) = (hv.clone(), stop.clone());
                match std::thread::Builder::new()
                    .name("pore-sim-conn".into())
                    .spawn(move || serve(hv, conn, stop))
                {
                    Ok(t) => {
                        let mut ts = threads.lock().unwrap_or_else(|p| p.into_inner());
                        ts.retain(|t| !t.is_finished());
                        ts.push(t);
                    }
                    Err(e) => tracing::warn!(error = %e, "could not start a connection thread"),
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "sim broker accept failed");
                std::thread::sleep(TICK);
            }
        }
    }
}

/// Waits for the next message; `None` when the connection ended or the broker stops.
fn next_message(conn: &OwnedFd, buf: &mut Vec<u8>, stop: &AtomicBool) -> Option<Vec<OwnedFd>> {
    loop {
        if stop.load(Ordering::Acquire) {
            return None;
        }
        match socket::readable(conn.as_fd(), TICK) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(_) => return None,
        }
        return match socket::recv(conn.as_fd(), buf) {
            Ok(Some(fds)) => Some(fds),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "sim broker connection failed");
                None
            }
        };
    }
}

fn reply(conn: &OwnedFd, buf: &mut Vec<u8>, r: Result<Reply>) -> bool {
    proto::encode_reply(&r, buf);
    let fds = r
        .as_ref()
        .map(|r| socket::borrow_all(&r.fds))
        .unwrap_or_default();
    socket::send(conn.as_fd(), buf, &fds).is_ok()
}

fn serve(hv: Arc<Hv>, conn: OwnedFd, stop: Arc<AtomicBool>) {
    let mut buf = Vec::new();
    // Hello (a new domain names itself) or join (one more process of a live domain); the
    // reply carries the domid, the context id and the event table.
    let Some(fds) = next_message(&conn, &mut buf, &stop) else {
        return;
    };
    let first = no_descriptors(fds).and_then(|()| proto::decode_request(&buf));
    let first = first.and_then(|req| match req.op {
        Op::Hello => {
            let name = String::from_utf8_lossy(&req.tail).into_owned();
            hv.create_domain(&name).map(|dom| (dom, DOMAIN_CTX))
        }
        Op::Join => {
            let dom = match req.args.as_slice() {
                [d] => u16::try_from(*d).map(DomId).ok(),
                _ => None,
            }
            .ok_or_else(|| SimError::refused(ErrorKind::InvalidInput, "a join names one domain"))?;
            hv.join_domain(dom).map(|ctx| (dom, ctx))
        }
        _ => Err(SimError::refused(
            ErrorKind::Protocol,
            "the first message must be a hello or a join",
        )),
    });
    let (dom, ctx) = match first {
        Ok(welcome) => welcome,
        Err(e) => {
            reply(&conn, &mut buf, Err(e));
            return;
        }
    };
    let table = hv
        .table
        .fd()
        .try_clone_to_owned()
        .map_err(SimError::os("sharing the event table"));
    let welcomed = match table {
        Ok(fd) => reply(
            &conn,
            &mut buf,
            Ok(Reply {
                words: vec![u32::from(dom.0), ctx],
                fds: vec![fd],
            }),
        ),
        Err(e) => {
            reply(&conn, &mut buf, Err(e));
            false
        }
    };
    if welcomed {
        serve_domain(&hv, dom, ctx, &conn, &mut buf, &stop);
    }
    // The connection is the process: its end ends the context (and, for the domain's
    // creator, the domain).
    hv.context_ended(dom, ctx);
    socket::shutdown(conn.as_fd());
}

fn serve_domain(
    hv: &Hv,
    dom: DomId,
    ctx: CtxId,
    conn: &OwnedFd,
    buf: &mut Vec<u8>,
    stop: &AtomicBool,
) {
    while let Some(fds) = next_message(conn, buf, stop) {
        let r = no_descriptors(fds)
            .and_then(|()| proto::decode_request(buf))
            .and_then(|req| hv.handle(dom, ctx, &req));
        if !reply(conn, buf, r) {
            return;
        }
    }
}

/// Requests carry no descriptors: the broker never uses one a domain process sends (it could
/// be anything, e.g. a memfd its sender can still shrink). Any that arrive are closed here and
/// the request is refused.
fn no_descriptors(fds: Vec<OwnedFd>) -> Result<()> {
    if fds.is_empty() {
        return Ok(());
    }
    drop(fds);
    Err(SimError::refused(
        ErrorKind::Protocol,
        "a request to the simulated hypervisor carries no descriptors",
    ))
}
