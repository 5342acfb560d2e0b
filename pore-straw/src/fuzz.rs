//! A deterministic entry point for fuzzing the handshake machine with a hostile peer.
//!
//! A cargo-fuzz target calls [`drive_handshake`] with its input; the bytes choose the role,
//! the replies to every operation (including garbage values a peer could have written), watch
//! events, close requests and the passing of time. The function must never panic, and the
//! machine must always finish within a bounded number of steps once time runs out.

use alloc::vec::Vec;
use core::time::Duration;

use pore_core::{DomId, ErrorKind, GrantRef, Port};

use crate::handshake::{Action, HandshakeConfig, Input, PoreGrant, PoreRequest, StrawMachine};
use crate::ops::{StoreError, StoreOp, StoreReply};
use crate::Endpoint;

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
}

/// Plausible values first, garbage after: the fuzzer reaches deep states quickly.
const VALUES: &[&[u8]] = &[
    b"1",
    b"2",
    b"3",
    b"4",
    b"5",
    b"6",
    b"0",
    b"9",
    b"v2",
    b"ling v2",
    b"raw",
    b"json",
    b"8",
    b"4096",
    b"",
    b"-1",
    b"01",
    b"99999999999",
    b"erlang",
    b"ling  v2",
];

/// Drives one machine with choices taken from `data`; returns the number of steps taken.
///
/// Panics only if the machine breaks its own contract (it keeps running after `Done`, or does
/// not finish once time is far past every deadline): those are the bugs a fuzzer should find.
///
/// ```
/// assert!(pore_straw::fuzz::drive_handshake(b"\x00\x01\x02garbage") > 0);
/// ```
pub fn drive_handshake(data: &[u8]) -> usize {
    let mut input = Bytes(data);
    let cfg = HandshakeConfig {
        v2_pages: if input.byte() & 1 == 0 { Some(4) } else { None },
        ..HandshakeConfig::default()
    };
    let me = Endpoint::seed(DomId(1));
    let peer = Endpoint::seed(DomId(2));
    let mut now = Duration::ZERO;
    let mut m = if input.byte() & 1 == 0 {
        StrawMachine::open(cfg, me, peer, now)
    } else {
        StrawMachine::listen(cfg, me, peer, now)
    };
    let mut steps = 0usize;
    loop {
        steps += 1;
        let exhausted = input.0.is_empty();
        if exhausted {
            // Out of input: let time run far past every deadline, answer every op with an
            // error and require the machine to finish.
            now = now.saturating_add(Duration::from_secs(60));
            assert!(steps < 10_000, "the machine did not finish");
        }
        match m.poll_action(now) {
            Some(Action::Done(_)) => {
                assert!(m.poll_action(now).is_none(), "an action after Done");
                return steps;
            }
            Some(Action::Store(op)) => {
                let reply = match input.byte() % 8 {
                    0 | 1 if matches!(op, StoreOp::Read { .. }) => {
                        let v = input.byte();
                        let value = match VALUES.get(usize::from(v) % (VALUES.len() + 1)) {
                            Some(v) => v.to_vec(),
                            None => {
                                let n = usize::from(input.byte());
                                input.take(n)
                            }
                        };
                        Ok(StoreReply::Value(value))
                    }
                    0..=3 => Ok(StoreReply::Done),
                    4 => Err(StoreError::NotFound),
                    5 => Err(StoreError::PermissionDenied),
                    6 => Err(StoreError::TimedOut),
                    _ => Err(StoreError::Other(None)),
                };
                let reply = if exhausted {
                    Err(StoreError::Other(None))
                } else {
                    reply
                };
                m.handle(Input::Store(reply), now);
            }
            Some(Action::OpenPore(req)) => {
                let ok = input.byte() % 4 != 0 && !exhausted;
                let r = if ok {
                    let n = match req {
                        PoreRequest::Active { .. } => usize::from(input.byte() % 10),
                        PoreRequest::Passive { .. } => 0,
                    };
                    Ok(PoreGrant {
                        refs: (0..n as u32).map(GrantRef).collect(),
                        port: Port(5),
                    })
                } else {
                    Err(ErrorKind::NotFound)
                };
                m.handle(Input::PoreOpened(r), now);
            }
            Some(Action::ClosePore) => m.handle(Input::PoreClosed, now),
            Some(Action::Connected(_) | Action::PeerFinished | Action::PeerClosing) => {}
            None => {
                // Waiting: an event, a close request, or time passes.
                match input.byte() % 6 {
                    0 | 1 => m.handle(Input::Watch, now),
                    2 => m.handle(Input::Close, now),
                    3 => m.handle(Input::PeerLost, now),
                    4 => m.handle(Input::Finish, now),
                    _ => {
                        now =
                            now.saturating_add(Duration::from_millis(u64::from(input.byte()) * 50))
                    }
                }
            }
        }
    }
}
