//! JSON envelopes and the mailboxes they are delivered to.

use std::string::{String, ToString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use pore_core::Backend;

use super::shared::*;
use super::*;

/// Where JSON messages addressed to one name arrive ([`Straw::mailbox`]). Bounded by
/// [`StrawConfig::mailbox_depth`] and [`StrawConfig::mailbox_bytes`].
#[derive(Debug)]
pub struct Mailbox {
    rx: mpsc::Receiver<(serde_json::Value, usize)>,
    /// Frame bytes of the messages waiting here.
    queued: Arc<AtomicUsize>,
}

/// The delivering end of a [`Mailbox`].
pub(super) struct MailboxTx {
    pub(super) tx: mpsc::SyncSender<(serde_json::Value, usize)>,
    pub(super) queued: Arc<AtomicUsize>,
}

impl Mailbox {
    fn took(&self, (msg, len): (serde_json::Value, usize)) -> serde_json::Value {
        self.queued.fetch_sub(len, Ordering::AcqRel);
        msg
    }

    /// The next message, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<serde_json::Value, StrawError> {
        match self.rx.recv_timeout(timeout) {
            Ok(m) => Ok(self.took(m)),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(StrawError::TimedOut),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(StrawError::Closed),
        }
    }

    /// The next message if one is there.
    pub fn try_recv(&self) -> Option<serde_json::Value> {
        self.rx.try_recv().ok().map(|m| self.took(m))
    }
}

impl<B: Backend> Receiver<B> {
    /// Registers a mailbox for JSON messages addressed to `addr`. It holds up to
    /// [`StrawConfig::mailbox_depth`] messages and [`StrawConfig::mailbox_bytes`] of their
    /// frames; messages beyond are dropped (counted in [`StrawStats::mailbox_full`] and
    /// reported).
    pub fn mailbox(&self, addr: &str) -> Mailbox {
        let (tx, rx) = mpsc::sync_channel(self.sh.cfg.mailbox_depth);
        let queued = Arc::new(AtomicUsize::new(0));
        lock(&self.sh.mailboxes).insert(
            addr.to_string(),
            MailboxTx {
                tx,
                queued: queued.clone(),
            },
        );
        Mailbox { rx, queued }
    }

    /// Receives frames for up to `timeout` and delivers each JSON envelope to its mailbox (the
    /// seed's `Addressee ! Message`). Unknown addresses, malformed or oversized frames and
    /// messages for a full mailbox are logged and dropped. Returns how many messages were
    /// delivered once at least one frame arrived and no other one is there (or the deadline
    /// passed), or the timeout passed (`Ok(0)`).
    pub fn dispatch(&self, timeout: Duration) -> Result<usize, StrawError> {
        let deadline = Instant::now() + timeout;
        let first = match self.recv_timeout(timeout) {
            Ok(f) => f,
            Err(StrawError::TimedOut) => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut delivered = usize::from(self.deliver(&first));
        loop {
            if Instant::now() >= deadline {
                return Ok(delivered);
            }
            match self.try_recv() {
                Ok(f) => delivered += usize::from(self.deliver(&f)),
                Err(StrawError::WouldBlock) => return Ok(delivered),
                Err(e) if delivered > 0 => {
                    tracing::debug!(error = %e, "straw: dispatch stopped");
                    return Ok(delivered);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Delivers one JSON envelope; `false` if it was dropped (over
    /// [`StrawConfig::max_json_frame`], malformed, no mailbox, or the mailbox full).
    pub fn deliver(&self, frame: &[u8]) -> bool {
        if frame.len() > self.sh.cfg.max_json_frame {
            self.sh.stats.json_too_large.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %self.sh.peer, len = frame.len(), max = self.sh.cfg.max_json_frame, "straw: oversized JSON message dropped unparsed");
            return false;
        }
        match parse_envelope(frame) {
            Ok((addr, msg)) => {
                let boxes = lock(&self.sh.mailboxes);
                let Some(mb) = boxes.get(&addr) else {
                    tracing::warn!(peer = %self.sh.peer, addr, "straw: no mailbox; message dropped");
                    return false;
                };
                let len = frame.len();
                let queued = mb.queued.fetch_add(len, Ordering::AcqRel);
                let full = if queued.saturating_add(len) > self.sh.cfg.mailbox_bytes && queued > 0 {
                    true
                } else {
                    match mb.tx.try_send((msg, len)) {
                        Ok(()) => return true,
                        Err(mpsc::TrySendError::Full(_)) => true,
                        Err(mpsc::TrySendError::Disconnected(_)) => false,
                    }
                };
                mb.queued.fetch_sub(len, Ordering::AcqRel);
                if full {
                    let n = self.sh.stats.mailbox_full.fetch_add(1, Ordering::Relaxed);
                    if n.is_power_of_two() || n == 0 {
                        tracing::warn!(peer = %self.sh.peer, addr, dropped = n + 1, "straw: mailbox full; message dropped");
                    }
                } else {
                    tracing::warn!(peer = %self.sh.peer, addr, "straw: no mailbox; message dropped");
                }
                false
            }
            Err(why) => {
                tracing::warn!(peer = %self.sh.peer, why, len = frame.len(), "straw: malformed JSON message dropped");
                false
            }
        }
    }
}

/// Parses the seed's JSON envelope: an object with a string `addr` and any `msg`.
///
/// ```
/// use pore_straw::straw::parse_envelope;
/// let (addr, msg) = parse_envelope(br#"{"addr":"echo","msg":[1,2]}"#).unwrap();
/// assert_eq!(addr, "echo");
/// assert_eq!(msg, serde_json::json!([1, 2]));
/// assert!(parse_envelope(b"{\"msg\":1}").is_err());
/// ```
pub fn parse_envelope(frame: &[u8]) -> Result<(String, serde_json::Value), &'static str> {
    let v: serde_json::Value = serde_json::from_slice(frame).map_err(|_| "not JSON")?;
    let serde_json::Value::Object(mut obj) = v else {
        return Err("not an object");
    };
    let Some(serde_json::Value::String(addr)) = obj.remove("addr") else {
        return Err("no string addr");
    };
    let msg = obj.remove("msg").ok_or("no msg")?;
    Ok((addr, msg))
}
