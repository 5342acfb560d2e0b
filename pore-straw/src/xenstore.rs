//! [`StoreClient`] for pore-xenstore's threaded [`Client`] (feature `xenstore`).
//!
//! The client hands out one borrowing [`pore_xenstore::Watch`] per watch; the adapter keeps
//! each in a small thread that forwards its events (with the manager's token) to one queue.
//!
//! ```no_run
//! use std::sync::Arc;
//! use pore_straw::xenstore::XsAdapter;
//! let xs = XsAdapter::new(Arc::new(pore_xenstore::Client::open_default().unwrap()));
//! # let _ = xs;
//! ```

use std::collections::{HashMap, VecDeque};
use std::string::String;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use std::vec::Vec;

use pore_core::DomId;
use pore_xenstore::{Client, Error};

use crate::manager::{StoreClient, WatchEvent};
use crate::ops::{Access, Perm, StoreError, StoreOp, StoreReply};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Forwarder {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

#[derive(Default)]
struct Queue {
    events: Mutex<VecDeque<WatchEvent>>,
    cv: Condvar,
}

/// A [`StoreClient`] over a shared pore-xenstore [`Client`].
pub struct XsAdapter {
    client: Arc<Client>,
    queue: Arc<Queue>,
    watches: Mutex<HashMap<(String, String), Forwarder>>,
    /// Forwarders told to stop and not yet ended (each ends within its 100 ms poll and
    /// removes its watch from xenstored): `unwatch` does not wait for them.
    retiring: Mutex<Vec<JoinHandle<()>>>,
}

impl core::fmt::Debug for XsAdapter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XsAdapter").finish()
    }
}

impl XsAdapter {
    /// Wraps `client`.
    pub fn new(client: Arc<Client>) -> Self {
        XsAdapter {
            client,
            queue: Arc::new(Queue::default()),
            watches: Mutex::new(HashMap::new()),
            retiring: Mutex::new(Vec::new()),
        }
    }

    fn watch(&self, path: &str, token: &str) -> Result<StoreReply, StoreError> {
        let key = (String::from(path), String::from(token));
        if lock(&self.watches).contains_key(&key) {
            return Err(StoreError::Other(None)); // EEXIST, as xenstored answers
        }
        let (ready_tx, ready_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (client, queue, stop2) = (self.client.clone(), self.queue.clone(), stop.clone());
        let (path2, token2) = key.clone();
        let thread = std::thread::Builder::new()
            .name(String::from("straw-xs-watch"))
            .spawn(move || {
                let w = match client.watch(&path2) {
                    Ok(w) => {
                        let _ = ready_tx.send(Ok(()));
                        w
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(map_err(e)));
                        return;
                    }
                };
                while !stop2.load(Ordering::Acquire) {
                    match w.next_event(Duration::from_millis(100)) {
                        Ok(ev) => {
                            lock(&queue.events).push_back(WatchEvent {
                                path: ev.path,
                                token: token2.clone(),
                            });
                            queue.cv.notify_all();
                        }
                        Err(Error::TimedOut) => {}
                        // Told to stop meanwhile: the connection going is the normal end.
                        Err(e) if stop2.load(Ordering::Acquire) => {
                            tracing::debug!(error = %e, "straw: watch ended with its connection");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "straw: watch stopped");
                            return;
                        }
                    }
                }
                let _ = w.unwatch();
            })
            .map_err(StoreError::other)?;
        match ready_rx.recv_timeout(self.client.config().timeout + Duration::from_secs(1)) {
            Ok(Ok(())) => {
                lock(&self.watches).insert(key, Forwarder { stop, thread });
                Ok(StoreReply::Done)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                stop.store(true, Ordering::Release);
                Err(StoreError::TimedOut)
            }
        }
    }

    fn unwatch(&self, path: &str, token: &str) -> Result<StoreReply, StoreError> {
        let f = lock(&self.watches).remove(&(String::from(path), String::from(token)));
        match f {
            Some(f) => {
                // Waiting for the forwarder would cost every straw's end up to its poll
                // (100 ms). An event it still forwards meanwhile is a spurious one, which the
                // manager ignores or re-checks (D6).
                f.stop.store(true, Ordering::Release);
                let mut retiring = lock(&self.retiring);
                retiring.retain(|t| !t.is_finished());
                retiring.push(f.thread);
                Ok(StoreReply::Done)
            }
            None => Err(StoreError::NotFound),
        }
    }
}

impl Drop for XsAdapter {
    fn drop(&mut self) {
        let mut threads: Vec<JoinHandle<()>> = lock(&self.retiring).drain(..).collect();
        for (_, f) in lock(&self.watches).drain() {
            f.stop.store(true, Ordering::Release);
            threads.push(f.thread);
        }
        for t in threads {
            let _ = t.join();
        }
    }
}

/// The strawman's classification of a client error, which `Other` keeps as its source.
fn map_err(e: Error) -> StoreError {
    if e.is_not_found() {
        StoreError::NotFound
    } else if e.is_access_denied() {
        StoreError::PermissionDenied
    } else if matches!(e, Error::TimedOut) {
        StoreError::TimedOut
    } else {
        StoreError::other(e)
    }
}

fn perms(p: &[Perm]) -> Vec<pore_xenstore::Perm> {
    p.iter()
        .map(|p| pore_xenstore::Perm {
            domid: u32::from(p.domid.0),
            access: match p.access {
                Access::None => pore_xenstore::Access::None,
                Access::Read => pore_xenstore::Access::Read,
                Access::Write => pore_xenstore::Access::Write,
                Access::Both => pore_xenstore::Access::Both,
            },
        })
        .collect()
}

fn from_perms(p: &[pore_xenstore::Perm]) -> Vec<Perm> {
    p.iter()
        .map(|p| Perm {
            // A domid beyond u16 names no domain we know: it matches none.
            domid: DomId(u16::try_from(p.domid).unwrap_or(u16::MAX)),
            access: match p.access {
                pore_xenstore::Access::None => Access::None,
                pore_xenstore::Access::Read => Access::Read,
                pore_xenstore::Access::Write => Access::Write,
                pore_xenstore::Access::Both => Access::Both,
            },
        })
        .collect()
}

fn best_effort(r: Result<(), Error>, best_effort: bool) -> Result<(), Error> {
    match r {
        Err(e) if best_effort && e.is_access_denied() => Ok(()),
        r => r,
    }
}

impl StoreClient for XsAdapter {
    fn perform(&self, op: &StoreOp) -> Result<StoreReply, StoreError> {
        let c = &self.client;
        let r = match op {
            StoreOp::Read { path } => return c.read(path).map(StoreReply::Value).map_err(map_err),
            StoreOp::Write { path, value } => c.write(path, value.as_bytes()),
            StoreOp::Mkdir { path } => c.mkdir(path),
            StoreOp::Rm { path } => c.rm(path),
            StoreOp::Directory { path } => {
                return c.directory(path).map(StoreReply::Children).map_err(map_err)
            }
            StoreOp::GetPerms { path } => {
                return c
                    .get_perms(path)
                    .map(|p| StoreReply::Perms(from_perms(&p)))
                    .map_err(map_err)
            }
            StoreOp::SetPerms {
                path,
                perms: p,
                best_effort: b,
            } => best_effort(c.set_perms(path, &perms(p)), *b),
            StoreOp::Watch { path, token } => return self.watch(path, token),
            StoreOp::Unwatch { path, token } => return self.unwatch(path, token),
            StoreOp::Transaction(ops) => c.transaction(|tx| {
                for op in ops {
                    match op {
                        StoreOp::Write { path, value } => tx.write(path, value.as_bytes())?,
                        StoreOp::Mkdir { path } => tx.mkdir(path)?,
                        StoreOp::Rm { path } => tx.rm(path)?,
                        StoreOp::SetPerms {
                            path,
                            perms: p,
                            best_effort: b,
                        } => best_effort(tx.set_perms(path, &perms(p)), *b)?,
                        _ => {
                            return Err(Error::Codec(pore_xenstore::CodecError::InvalidArgument(
                                "only writes, mkdirs, rms and set-perms in a transaction",
                            )))
                        }
                    }
                }
                Ok(())
            }),
        };
        r.map(|()| StoreReply::Done).map_err(map_err)
    }

    fn next_event(&self, timeout: Duration) -> Option<WatchEvent> {
        let end = Instant::now() + timeout;
        let mut q = lock(&self.queue.events);
        loop {
            if let Some(e) = q.pop_front() {
                return Some(e);
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            q = self
                .queue
                .cv
                .wait_timeout(q, end - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
