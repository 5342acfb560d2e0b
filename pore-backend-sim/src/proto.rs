//! Requests a domain makes of the hypervisor ("hypercalls") and their wire form.
//!
//! In-process domains hand a [`Request`] to the hypervisor directly; domain processes send it
//! over the broker socket. Both take the same path through [`crate::hv::Hv::handle`], so the two
//! modes share every rule. Message: `[op or status: u32][n: u32][n words][tail bytes]`, little
//! endian; the tail carries a domain name (hello) or an error message (refusals). A connection
//! opens with a hello (a new domain) or a join (one more context of an existing domain, its
//! domid the only word); either reply carries the domid, the context id and the event table.

use std::os::fd::OwnedFd;

use pore_core::ErrorKind;

use crate::error::{code_to_kind, kind_to_code, SimError};

/// Operation codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Op {
    Hello = 1,
    Grant = 2,
    GrantNotify = 3,
    EndAccess = 4,
    Map = 5,
    MapNotify = 6,
    Unmap = 7,
    AllocUnbound = 8,
    Bind = 9,
    Close = 10,
    OpenStore = 11,
    Join = 12,
}

impl Op {
    fn from_u32(v: u32) -> Option<Op> {
        Some(match v {
            1 => Op::Hello,
            2 => Op::Grant,
            3 => Op::GrantNotify,
            4 => Op::EndAccess,
            5 => Op::Map,
            6 => Op::MapNotify,
            7 => Op::Unmap,
            8 => Op::AllocUnbound,
            9 => Op::Bind,
            10 => Op::Close,
            11 => Op::OpenStore,
            12 => Op::Join,
            _ => return None,
        })
    }
}

/// "None" in an optional word argument.
pub(crate) const NONE: u32 = u32::MAX;

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub op: Op,
    pub args: Vec<u32>,
    pub tail: Vec<u8>,
}

impl Request {
    pub(crate) fn new(op: Op, args: &[u32]) -> Self {
        Request {
            op,
            args: args.to_vec(),
            tail: Vec::new(),
        }
    }
}

/// A successful reply: words plus descriptors.
#[derive(Debug, Default)]
pub(crate) struct Reply {
    pub words: Vec<u32>,
    pub fds: Vec<OwnedFd>,
}

impl Reply {
    pub(crate) fn words(words: Vec<u32>) -> Self {
        Reply {
            words,
            fds: Vec::new(),
        }
    }
}

fn put(buf: &mut Vec<u8>, head: u32, words: &[u32], tail: &[u8]) {
    buf.clear();
    buf.extend_from_slice(&head.to_le_bytes());
    buf.extend_from_slice(&(words.len() as u32).to_le_bytes());
    for w in words {
        buf.extend_from_slice(&w.to_le_bytes());
    }
    buf.extend_from_slice(tail);
}

fn take(buf: &[u8]) -> Option<(u32, Vec<u32>, Vec<u8>)> {
    let word = |i: usize| -> Option<u32> {
        let b = buf.get(i * 4..i * 4 + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let head = word(0)?;
    let n = word(1)? as usize;
    let end = n.checked_add(2)?.checked_mul(4)?;
    if end > buf.len() {
        return None;
    }
    let words = (0..n).map(|i| word(i + 2)).collect::<Option<Vec<u32>>>()?;
    Some((head, words, buf[end..].to_vec()))
}

pub(crate) fn encode_request(req: &Request, buf: &mut Vec<u8>) {
    put(buf, req.op as u32, &req.args, &req.tail);
}

pub(crate) fn decode_request(buf: &[u8]) -> Result<Request, SimError> {
    let malformed = || SimError::refused(ErrorKind::Protocol, "malformed simulator request");
    let (op, args, tail) = take(buf).ok_or_else(malformed)?;
    let op = Op::from_u32(op).ok_or_else(malformed)?;
    Ok(Request { op, args, tail })
}

pub(crate) fn encode_reply(reply: &Result<Reply, SimError>, buf: &mut Vec<u8>) {
    match reply {
        Ok(r) => put(buf, 0, &r.words, &[]),
        Err(e) => {
            let kind = pore_core::Error::kind(e);
            put(buf, kind_to_code(kind), &[], e.to_string().as_bytes())
        }
    }
}

pub(crate) fn decode_reply(buf: &[u8], fds: Vec<OwnedFd>) -> Result<Reply, SimError> {
    let (status, words, tail) = take(buf)
        .ok_or_else(|| SimError::refused(ErrorKind::Protocol, "malformed simulator reply"))?;
    if status == 0 {
        Ok(Reply { words, fds })
    } else {
        Err(SimError::refused(
            code_to_kind(status),
            String::from_utf8_lossy(&tail).into_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip() {
        let mut buf = Vec::new();
        let mut req = Request::new(Op::Map, &[3, 8, 9]);
        req.tail = b"name".to_vec();
        encode_request(&req, &mut buf);
        assert_eq!(decode_request(&buf).unwrap(), req);
        assert!(decode_request(&buf[..buf.len() - 5]).is_err());
        assert!(decode_request(&[0xff; 8]).is_err());
        encode_reply(&Ok(Reply::words(vec![1, 2])), &mut buf);
        assert_eq!(decode_reply(&buf, Vec::new()).unwrap().words, vec![1, 2]);
        encode_reply(&Err(SimError::refused(ErrorKind::Busy, "mapped")), &mut buf);
        let e = decode_reply(&buf, Vec::new()).unwrap_err();
        assert_eq!(pore_core::Error::kind(&e), ErrorKind::Busy);
    }
}
