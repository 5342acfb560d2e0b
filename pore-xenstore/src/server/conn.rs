//! Per-connection output: messages are written without blocking; what does not fit is
//! queued, watch events up to a bound (then dropped, and logged), replies always.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::store::OutKind;

/// Where a connection's bytes go: a socket or a guest's ring.
pub(crate) trait Sink: Send + Sync {
    /// Writes what fits without blocking; `Ok(0)` if nothing fits now.
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    /// Called once after a batch of writes that wrote something (a ring notifies).
    fn written(&self) {}
}

/// Bytes of queued messages written at once at most.
const BATCH: usize = 64 * 1024;

#[derive(Default)]
struct State {
    queue: VecDeque<(Vec<u8>, usize, OutKind)>,
    events: usize,
    dropped: u64,
    dead: bool,
}

/// The output side of one connection.
pub(crate) struct Outbox {
    sink: Box<dyn Sink>,
    state: Mutex<State>,
    max_events: usize,
    /// Whoever writes the queue later (the event loop) was told it is pending.
    flushing: AtomicBool,
}

impl Outbox {
    pub(crate) fn new(sink: Box<dyn Sink>, max_events: usize) -> Self {
        Outbox {
            sink,
            state: Mutex::new(State::default()),
            max_events,
            flushing: AtomicBool::new(false),
        }
    }

    /// Marks the queue as handed to whoever flushes it; false if it already was.
    pub(crate) fn claim_flush(&self) -> bool {
        !self.flushing.swap(true, Ordering::AcqRel)
    }

    /// Whoever flushes it let it go (its queue drained).
    pub(crate) fn release_flush(&self) {
        self.flushing.store(false, Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes as much of the queue as fits, several queued messages in one write (up to
    /// [`BATCH`] bytes): a write that fires many watches costs one system call, not one
    /// per event. Returns whether bytes remain queued.
    fn flush_locked(&self, st: &mut State) -> bool {
        let mut wrote = false;
        let mut batch = Vec::new();
        while let Some((buf, off, _)) = st.queue.front() {
            let res = if st.queue.len() == 1 || buf.len() - off >= BATCH {
                self.sink.try_write(&buf[*off..])
            } else {
                batch.clear();
                for (b, o, _) in &st.queue {
                    if !batch.is_empty() && batch.len() + (b.len() - o) > BATCH {
                        break;
                    }
                    batch.extend_from_slice(&b[*o..]);
                }
                self.sink.try_write(&batch)
            };
            match res {
                Ok(0) => break,
                Ok(mut n) => {
                    wrote = true;
                    // Consume `n` bytes across the queued messages.
                    while n > 0 {
                        let Some((buf, off, kind)) = st.queue.front_mut() else {
                            break;
                        };
                        let take = n.min(buf.len() - *off);
                        *off += take;
                        n -= take;
                        if *off == buf.len() {
                            if *kind == OutKind::Event {
                                st.events = st.events.saturating_sub(1);
                            }
                            st.queue.pop_front();
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "connection output failed");
                    st.dead = true;
                    st.queue.clear();
                    break;
                }
            }
        }
        if wrote {
            self.sink.written();
        }
        !st.queue.is_empty()
    }

    /// Sends (or queues) messages in order. Returns whether bytes remain queued.
    pub(crate) fn push(&self, msgs: impl IntoIterator<Item = (Vec<u8>, OutKind)>) -> bool {
        let mut st = self.lock();
        if st.dead {
            return false;
        }
        for (bytes, kind) in msgs {
            if kind == OutKind::Event {
                if st.events >= self.max_events {
                    st.dropped += 1;
                    if st.dropped.is_power_of_two() {
                        tracing::warn!(
                            dropped = st.dropped,
                            "connection does not read: watch events dropped"
                        );
                    }
                    continue;
                }
                st.events += 1;
            }
            st.queue.push_back((bytes, 0, kind));
        }
        self.flush_locked(&mut st)
    }

    /// Writes queued bytes; returns whether some remain.
    pub(crate) fn flush(&self) -> bool {
        let mut st = self.lock();
        self.flush_locked(&mut st)
    }

    /// True if bytes are queued.
    pub(crate) fn pending(&self) -> bool {
        !self.lock().queue.is_empty()
    }

    /// True once writing failed.
    pub(crate) fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// Watch events dropped so far.
    #[cfg(test)]
    pub(crate) fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Cap(Arc<Mutex<(Vec<u8>, usize)>>);
    impl Sink for Cap {
        fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
            let mut g = self.0.lock().unwrap();
            let n = buf.len().min(g.1);
            g.0.extend_from_slice(&buf[..n]);
            g.1 -= n;
            Ok(n)
        }
    }

    /// Counts the writes.
    struct Counting(Arc<Mutex<(Vec<u8>, usize)>>);
    impl Sink for Counting {
        fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
            let mut g = self.0.lock().unwrap();
            g.0.extend_from_slice(buf);
            g.1 += 1;
            Ok(buf.len())
        }
    }

    #[test]
    fn queued_messages_go_out_in_one_write() {
        let shared = Arc::new(Mutex::new((Vec::new(), 0)));
        let ob = Outbox::new(Box::new(Counting(shared.clone())), 2000);
        let msgs: Vec<(Vec<u8>, OutKind)> = (0..1000)
            .map(|i| (format!("event-{i};").into_bytes(), OutKind::Event))
            .collect();
        let all: Vec<u8> = msgs.iter().flat_map(|m| m.0.clone()).collect();
        assert!(!ob.push(msgs));
        let g = shared.lock().unwrap();
        assert_eq!(g.0, all);
        assert_eq!(g.1, 1, "one write for 1000 small messages");
    }

    #[test]
    fn queues_then_drops_events_but_not_replies() {
        let shared = Arc::new(Mutex::new((Vec::new(), 5)));
        let ob = Outbox::new(Box::new(Cap(shared.clone())), 2);
        assert!(ob.push([(b"reply1".to_vec(), OutKind::Reply)]));
        for _ in 0..5 {
            ob.push([(b"ev".to_vec(), OutKind::Event)]);
        }
        assert_eq!(ob.dropped(), 3);
        assert!(ob.push([(b"reply2".to_vec(), OutKind::Reply)]));
        shared.lock().unwrap().1 = 1000;
        assert!(!ob.flush());
        assert_eq!(shared.lock().unwrap().0, b"reply1evevreply2");
    }
}
