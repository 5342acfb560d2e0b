//! A domain's context and how it reaches the hypervisor: directly (a domain in this process)
//! or through the broker's socket (a domain process). Every handle of a domain holds one.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pore_core::{DomId, ErrorKind};

use crate::error::{Result, SimError};
use crate::hv::{CtxId, Hv, DOMAIN_CTX};
use crate::proto::{self, Op, Reply, Request};
use crate::readiness::Readiness;
use crate::sys::socket;
use crate::table::Table;

/// How long a domain process waits for the broker to answer one request.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// How a domain reaches the hypervisor.
enum Transport {
    /// A thread of the hypervisor's own process.
    Local(Arc<Hv>),
    /// A process talking to the broker.
    Remote { sock: OwnedFd, buf: Mutex<Vec<u8>> },
}

/// What every handle made from one [`crate::SimDomain`] shares: one resource context of a domain.
pub(crate) struct DomCtx {
    pub(crate) id: DomId,
    /// Which context of the domain this is ([`DOMAIN_CTX`] for its creator and dom0 handles).
    pub(crate) context: CtxId,
    transport: Transport,
    pub(crate) table: Arc<Table>,
    dead: AtomicBool,
    pub(crate) readiness: OnceLock<Readiness>,
}

impl std::fmt::Debug for DomCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomCtx")
            .field("id", &self.id)
            .field("context", &self.context)
            .finish()
    }
}

impl DomCtx {
    /// The creator context of a domain of this process (or a dom0 handle).
    pub(crate) fn local(id: DomId, hv: Arc<Hv>) -> Arc<DomCtx> {
        Self::local_context(id, DOMAIN_CTX, hv)
    }

    /// Context `context` of domain `id`, in this process.
    pub(crate) fn local_context(id: DomId, context: CtxId, hv: Arc<Hv>) -> Arc<DomCtx> {
        let table = hv.table.clone();
        Arc::new(DomCtx {
            id,
            context,
            transport: Transport::Local(hv),
            table,
            dead: AtomicBool::new(false),
            readiness: OnceLock::new(),
        })
    }

    /// A context of this process reached through the broker at `path`, which `first` (a
    /// hello or a join) asks for.
    pub(crate) fn remote(path: &Path, first: &Request) -> Result<Arc<DomCtx>> {
        let sock = socket::connect(path).map_err(SimError::os("connecting to the sim broker"))?;
        let mut buf = Vec::new();
        let reply = exchange(sock.as_fd(), &mut buf, first)?;
        let (&[id, context], Some(table_fd)) =
            (reply.words.as_slice(), reply.fds.into_iter().next())
        else {
            return Err(SimError::refused(
                ErrorKind::Protocol,
                "the broker's welcome lacks a domid, a context or the event table",
            ));
        };
        let id = u16::try_from(id).map_err(|_| {
            SimError::refused(ErrorKind::Protocol, "the broker sent a domid out of range")
        })?;
        let table = Table::from_fd(table_fd).map_err(SimError::os("mapping the event table"))?;
        tracing::debug!(domid = id, context, "connected to the sim broker");
        Ok(Arc::new(DomCtx {
            id: DomId(id),
            context,
            transport: Transport::Remote {
                sock,
                buf: Mutex::new(buf),
            },
            table: table.into_shared(),
            dead: AtomicBool::new(false),
            readiness: OnceLock::new(),
        }))
    }

    pub(crate) fn call(&self, op: Op, args: &[u32]) -> Result<Reply> {
        if self.dead.load(Ordering::Acquire) {
            return Err(SimError::refused(ErrorKind::Closed, "the domain is dead"));
        }
        let req = Request::new(op, args);
        match &self.transport {
            Transport::Local(hv) => hv.handle(self.id, self.context, &req),
            Transport::Remote { sock, buf } => {
                let mut buf = buf.lock().unwrap_or_else(|p| p.into_inner());
                exchange(sock.as_fd(), &mut buf, &req)
            }
        }
    }

    /// The readiness eventfd of this context, its watcher started on first use.
    pub(crate) fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        if self.readiness.get().is_none() {
            match Readiness::start(&self.table, self.id) {
                Ok(r) => {
                    if let Err(r) = self.readiness.set(r) {
                        // Another thread won the race: stop ours.
                        r.stop.store(true, Ordering::Release);
                        self.table.wake(self.id);
                        if let Some(t) = r.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
                            let _ = t.join();
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "starting the readiness watcher failed");
                    return None;
                }
            }
        }
        self.readiness.get().map(|r| r.efd.as_fd())
    }

    /// Drains the readiness eventfd, if it was started.
    pub(crate) fn ack_readiness(&self) {
        if let Some(r) = self.readiness.get() {
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(&*r.efd, &mut buf);
        }
    }

    pub(crate) fn die(&self) {
        if self.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        match &self.transport {
            Transport::Local(hv) => hv.context_ended(self.id, self.context),
            Transport::Remote { sock, .. } => socket::shutdown(sock.as_fd()),
        }
    }
}

impl Drop for DomCtx {
    fn drop(&mut self) {
        if let Some(r) = self.readiness.get() {
            r.stop.store(true, Ordering::Release);
            self.table.wake(self.id);
        }
        if let Some(r) = self.readiness.take() {
            if let Some(t) = r.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = t.join();
            }
        }
    }
}

/// One request/response exchange with the broker.
fn exchange(sock: BorrowedFd<'_>, buf: &mut Vec<u8>, req: &Request) -> Result<Reply> {
    proto::encode_request(req, buf);
    socket::send(sock, buf, &[]).map_err(SimError::os("sending to the sim broker"))?;
    if !socket::readable(sock, BROKER_TIMEOUT)
        .map_err(SimError::os("waiting for the sim broker"))?
    {
        return Err(SimError::refused(
            ErrorKind::TimedOut,
            "the sim broker did not answer",
        ));
    }
    match socket::recv(sock, buf).map_err(SimError::os("receiving from the sim broker"))? {
        Some(fds) => proto::decode_reply(buf, fds),
        None => Err(SimError::refused(
            ErrorKind::Closed,
            "the sim broker closed the connection",
        )),
    }
}
