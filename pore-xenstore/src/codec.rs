//! Sans-IO codec: typed requests and replies, and an incremental message parser.
//!
//! ```
//! use pore_xenstore::codec::{Parser, Progress, Request};
//! use pore_xenstore::Limits;
//!
//! // Encode a request exactly as the daemons expect it.
//! let bytes = Request::Write { path: "/golden/a", value: b"hello" }
//!     .encode(1, 0, Limits::SOCKET.request_payload_max)
//!     .unwrap();
//! assert_eq!(&bytes[..4], &11u32.to_le_bytes()); // WRITE
//! assert_eq!(&bytes[16..], b"/golden/a\0hello");
//!
//! // Parse it back, a few bytes at a time.
//! let mut parser = Parser::new(4096);
//! let (used, progress) = parser.feed(&bytes[..10]);
//! assert_eq!(used, 10);
//! assert!(matches!(progress, Ok(Progress::NeedMore(_))));
//! let (_, progress) = parser.feed(&bytes[10..]);
//! let Ok(Progress::Message(msg)) = progress else { panic!() };
//! assert_eq!(msg.req_id, 1);
//! let req = Request::parse(msg.ty, &msg.payload).unwrap();
//! assert_eq!(req, Request::Write { path: "/golden/a", value: b"hello" });
//! ```

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;
use core::str;

use zerocopy::IntoBytes;

use crate::error::{CodecError, ErrorName};
use crate::perms::Perm;
use crate::wire::{MsgType, WireHeader, HEADER_LEN};

/// A whole message: header fields and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Message type (a [`MsgType`] number, possibly unknown).
    pub ty: u32,
    /// Request id.
    pub req_id: u32,
    /// Transaction id.
    pub tx_id: u32,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

impl Message {
    /// The message type, if known.
    pub fn msg_type(&self) -> Option<MsgType> {
        MsgType::from_u32(self.ty)
    }

    /// Header + payload as wire bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        let len = u32::try_from(self.payload.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(WireHeader::new(self.ty, self.req_id, self.tx_id, len).as_bytes());
        out.extend_from_slice(&self.payload);
        out
    }
}

/// A typed request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // fields are named after the protocol's arguments
pub enum Request<'a> {
    /// `CONTROL`: command and arguments, raw.
    Control(&'a [u8]),
    /// `DIRECTORY path`.
    Directory(&'a str),
    /// `DIRECTORY_PART path offset`: a chunk of a large directory.
    DirectoryPart { path: &'a str, offset: u32 },
    /// `READ path`.
    Read(&'a str),
    /// `GET_PERMS path`.
    GetPerms(&'a str),
    /// `WATCH path token`.
    Watch { path: &'a str, token: &'a str },
    /// `UNWATCH path token`.
    Unwatch { path: &'a str, token: &'a str },
    /// `TRANSACTION_START`.
    TransactionStart,
    /// `TRANSACTION_END T|F` (the header's tx id names the transaction).
    TransactionEnd { commit: bool },
    /// `INTRODUCE domid gfn port`.
    Introduce { domid: u32, gfn: u64, port: u32 },
    /// `RELEASE domid`.
    Release(u32),
    /// `GET_DOMAIN_PATH domid`.
    GetDomainPath(u32),
    /// `WRITE path value` (value raw, not NUL-terminated).
    Write { path: &'a str, value: &'a [u8] },
    /// `MKDIR path`.
    Mkdir(&'a str),
    /// `RM path`.
    Rm(&'a str),
    /// `SET_PERMS path perm...`.
    SetPerms {
        path: &'a str,
        perms: Cow<'a, [Perm]>,
    },
    /// `IS_DOMAIN_INTRODUCED domid`.
    IsDomainIntroduced(u32),
    /// `RESUME domid`.
    Resume(u32),
    /// `SET_TARGET domid target`.
    SetTarget { domid: u32, target: u32 },
    /// `RESET_WATCHES`.
    ResetWatches,
}

fn push_str(out: &mut Vec<u8>, s: &str) -> Result<(), CodecError> {
    if s.as_bytes().contains(&0) {
        return Err(CodecError::InvalidArgument("string contains NUL"));
    }
    out.extend_from_slice(s.as_bytes());
    out.push(0);
    Ok(())
}

fn push_num(out: &mut Vec<u8>, v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = v;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.push(0);
}

impl<'a> Request<'a> {
    /// The message type of this request.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Request::Control(_) => MsgType::Control,
            Request::Directory(_) => MsgType::Directory,
            Request::DirectoryPart { .. } => MsgType::DirectoryPart,
            Request::Read(_) => MsgType::Read,
            Request::GetPerms(_) => MsgType::GetPerms,
            Request::Watch { .. } => MsgType::Watch,
            Request::Unwatch { .. } => MsgType::Unwatch,
            Request::TransactionStart => MsgType::TransactionStart,
            Request::TransactionEnd { .. } => MsgType::TransactionEnd,
            Request::Introduce { .. } => MsgType::Introduce,
            Request::Release(_) => MsgType::Release,
            Request::GetDomainPath(_) => MsgType::GetDomainPath,
            Request::Write { .. } => MsgType::Write,
            Request::Mkdir(_) => MsgType::Mkdir,
            Request::Rm(_) => MsgType::Rm,
            Request::SetPerms { .. } => MsgType::SetPerms,
            Request::IsDomainIntroduced(_) => MsgType::IsDomainIntroduced,
            Request::Resume(_) => MsgType::Resume,
            Request::SetTarget { .. } => MsgType::SetTarget,
            Request::ResetWatches => MsgType::ResetWatches,
        }
    }

    /// Appends the payload (no header) to `out`.
    ///
    /// Never produces an empty payload (oxenstored stalls on those) nor a string without
    /// its NUL (undefined behaviour in C xenstored); strings containing NUL are refused.
    pub fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        match self {
            Request::Control(raw) => {
                if raw.is_empty() {
                    return Err(CodecError::InvalidArgument("empty CONTROL payload"));
                }
                out.extend_from_slice(raw)
            }
            Request::Directory(p)
            | Request::Read(p)
            | Request::GetPerms(p)
            | Request::Mkdir(p)
            | Request::Rm(p) => push_str(out, p)?,
            Request::DirectoryPart { path, offset } => {
                push_str(out, path)?;
                push_num(out, u64::from(*offset));
            }
            Request::Watch { path, token } | Request::Unwatch { path, token } => {
                push_str(out, path)?;
                push_str(out, token)?;
            }
            Request::TransactionStart | Request::ResetWatches => out.push(0),
            Request::TransactionEnd { commit } => {
                out.extend_from_slice(if *commit { b"T\0" } else { b"F\0" })
            }
            Request::Introduce { domid, gfn, port } => {
                push_num(out, u64::from(*domid));
                push_num(out, *gfn);
                push_num(out, u64::from(*port));
            }
            Request::Release(d)
            | Request::GetDomainPath(d)
            | Request::IsDomainIntroduced(d)
            | Request::Resume(d) => push_num(out, u64::from(*d)),
            Request::Write { path, value } => {
                push_str(out, path)?;
                out.extend_from_slice(value);
            }
            Request::SetPerms { path, perms } => {
                if perms.is_empty() {
                    return Err(CodecError::InvalidArgument("SET_PERMS needs a permission"));
                }
                push_str(out, path)?;
                for p in perms.iter() {
                    let letter = [p.access.letter() as u8];
                    out.extend_from_slice(&letter);
                    push_num(out, u64::from(p.domid));
                }
            }
            Request::SetTarget { domid, target } => {
                push_num(out, u64::from(*domid));
                push_num(out, u64::from(*target));
            }
        }
        Ok(())
    }

    /// Appends header + payload to `out`, refusing payloads over `max_payload`.
    /// On error `out` is left as it was.
    pub fn encode_into(
        &self,
        req_id: u32,
        tx_id: u32,
        max_payload: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        let res = self.encode_payload(out).and_then(|()| {
            let len = out.len() - start - HEADER_LEN;
            if len > max_payload {
                return Err(CodecError::PayloadTooLarge {
                    len,
                    max: max_payload,
                });
            }
            let len32 = u32::try_from(len).map_err(|_| CodecError::PayloadTooLarge {
                len,
                max: max_payload,
            })?;
            let hdr = WireHeader::new(self.msg_type().as_u32(), req_id, tx_id, len32);
            out[start..start + HEADER_LEN].copy_from_slice(hdr.as_bytes());
            Ok(())
        });
        if res.is_err() {
            out.truncate(start);
        }
        res
    }

    /// Header + payload as a new buffer.
    pub fn encode(
        &self,
        req_id: u32,
        tx_id: u32,
        max_payload: usize,
    ) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::new();
        self.encode_into(req_id, tx_id, max_payload, &mut out)?;
        Ok(out)
    }

    /// Parses a request payload of type `ty` strictly (what a server receives).
    ///
    /// Anything our encoder would not produce is an error: missing NULs, extra strings,
    /// non-decimal numbers, unknown types, types only a server sends.
    pub fn parse(ty: u32, payload: &'a [u8]) -> Result<Request<'a>, CodecError> {
        let t = MsgType::from_u32(ty).ok_or(CodecError::UnknownType(ty))?;
        let one_path = || -> Result<&'a str, CodecError> {
            let v = strings(payload, "request payload")?;
            match v.as_slice() {
                [p] => Ok(*p),
                _ => Err(CodecError::malformed("request arguments")),
            }
        };
        let one_num = || -> Result<u32, CodecError> { parse_dec32(one_path()?) };
        Ok(match t {
            MsgType::Control => {
                if payload.is_empty() {
                    return Err(CodecError::malformed("empty CONTROL payload"));
                }
                Request::Control(payload)
            }
            MsgType::Directory => Request::Directory(one_path()?),
            MsgType::Read => Request::Read(one_path()?),
            MsgType::GetPerms => Request::GetPerms(one_path()?),
            MsgType::Mkdir => Request::Mkdir(one_path()?),
            MsgType::Rm => Request::Rm(one_path()?),
            MsgType::DirectoryPart => {
                let v = strings(payload, "request payload")?;
                match v.as_slice() {
                    [path, off] => Request::DirectoryPart {
                        path,
                        offset: parse_dec32(off)?,
                    },
                    _ => return Err(CodecError::malformed("DIRECTORY_PART arguments")),
                }
            }
            MsgType::Watch | MsgType::Unwatch => {
                let v = strings(payload, "request payload")?;
                let [path, token] = v.as_slice() else {
                    return Err(CodecError::malformed("watch arguments"));
                };
                let (path, token) = (*path, *token);
                if t == MsgType::Watch {
                    Request::Watch { path, token }
                } else {
                    Request::Unwatch { path, token }
                }
            }
            MsgType::TransactionStart | MsgType::ResetWatches => {
                if payload != b"\0" {
                    return Err(CodecError::malformed("payload (expected one empty string)"));
                }
                if t == MsgType::TransactionStart {
                    Request::TransactionStart
                } else {
                    Request::ResetWatches
                }
            }
            MsgType::TransactionEnd => match payload {
                b"T\0" => Request::TransactionEnd { commit: true },
                b"F\0" => Request::TransactionEnd { commit: false },
                _ => return Err(CodecError::malformed("TRANSACTION_END argument")),
            },
            MsgType::Introduce => {
                let v = strings(payload, "request payload")?;
                let [d, g, p] = v.as_slice() else {
                    return Err(CodecError::malformed("INTRODUCE arguments"));
                };
                Request::Introduce {
                    domid: parse_dec32(d)?,
                    gfn: parse_dec64(g)?,
                    port: parse_dec32(p)?,
                }
            }
            MsgType::Release => Request::Release(one_num()?),
            MsgType::GetDomainPath => Request::GetDomainPath(one_num()?),
            MsgType::IsDomainIntroduced => Request::IsDomainIntroduced(one_num()?),
            MsgType::Resume => Request::Resume(one_num()?),
            MsgType::SetTarget => {
                let v = strings(payload, "request payload")?;
                let [d, tg] = v.as_slice() else {
                    return Err(CodecError::malformed("SET_TARGET arguments"));
                };
                Request::SetTarget {
                    domid: parse_dec32(d)?,
                    target: parse_dec32(tg)?,
                }
            }
            MsgType::Write => {
                let nul = payload
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(CodecError::malformed("WRITE without NUL after the path"))?;
                let path = str::from_utf8(&payload[..nul])
                    .map_err(|_| CodecError::malformed("path (not UTF-8)"))?;
                Request::Write {
                    path,
                    value: &payload[nul + 1..],
                }
            }
            MsgType::SetPerms => {
                let v = strings(payload, "request payload")?;
                let Some((path, rest)) = v.split_first() else {
                    return Err(CodecError::malformed("SET_PERMS arguments"));
                };
                if rest.is_empty() {
                    return Err(CodecError::malformed("SET_PERMS without permissions"));
                }
                let perms = rest
                    .iter()
                    .map(|s| s.parse::<Perm>())
                    .collect::<Result<Vec<_>, _>>()?;
                Request::SetPerms {
                    path,
                    perms: Cow::Owned(perms),
                }
            }
            MsgType::WatchEvent
            | MsgType::Error
            | MsgType::GetFeature
            | MsgType::SetFeature
            | MsgType::GetQuota
            | MsgType::SetQuota => return Err(CodecError::UnknownType(ty)),
        })
    }
}

/// Splits a payload of NUL-terminated strings. The payload must end with NUL.
pub fn strings<'a>(payload: &'a [u8], what: &'static str) -> Result<Vec<&'a str>, CodecError> {
    let Some(body) = payload.strip_suffix(&[0]) else {
        return Err(CodecError::malformed(what));
    };
    body.split(|&b| b == 0)
        .map(|s| str::from_utf8(s).map_err(|_| CodecError::malformed(what)))
        .collect()
}

fn parse_dec64(s: &str) -> Result<u64, CodecError> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CodecError::malformed("decimal number"));
    }
    s.parse::<u64>()
        .map_err(|_| CodecError::malformed("decimal number"))
}

fn parse_dec32(s: &str) -> Result<u32, CodecError> {
    u32::try_from(parse_dec64(s)?).map_err(|_| CodecError::malformed("decimal number"))
}

/// A watch event: the path that changed (as the watch was registered: relative paths stay
/// relative) and the watch's token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WatchEvent {
    /// The modified node (or the watched path itself for the registration event).
    pub path: String,
    /// The token given at registration.
    pub token: String,
}

impl WatchEvent {
    /// Parses a `WATCH_EVENT` payload `path\0token\0`.
    pub fn parse(payload: &[u8]) -> Result<Self, CodecError> {
        let v = strings(payload, "WATCH_EVENT payload")?;
        match v.as_slice() {
            [path, token] => Ok(WatchEvent {
                path: String::from(*path),
                token: String::from(*token),
            }),
            _ => Err(CodecError::malformed("WATCH_EVENT payload")),
        }
    }
}

/// A typed successful reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `OK` (WRITE, MKDIR, RM, SET_PERMS, WATCH, UNWATCH, TRANSACTION_END, INTRODUCE, ...).
    Ok,
    /// The value of a READ (raw bytes).
    Value(Vec<u8>),
    /// The children of a DIRECTORY.
    Children(Vec<String>),
    /// One chunk of a DIRECTORY_PART.
    ChildrenPart {
        /// The node's generation (opaque; changes when the directory changes).
        generation: String,
        /// The children in this chunk.
        children: Vec<String>,
        /// True if this is the last chunk.
        done: bool,
        /// Bytes of child names in this chunk (the next offset is `offset + this`).
        consumed: usize,
    },
    /// The permissions from GET_PERMS.
    Perms(Vec<Perm>),
    /// The id from TRANSACTION_START.
    TransactionId(u32),
    /// The path from GET_DOMAIN_PATH.
    Path(String),
    /// The answer of IS_DOMAIN_INTRODUCED.
    Bool(bool),
    /// The raw answer to CONTROL.
    Raw(Vec<u8>),
}

fn one_string(payload: &[u8], what: &'static str) -> Result<String, CodecError> {
    let v = strings(payload, what)?;
    match v.as_slice() {
        [s] => Ok(String::from(*s)),
        _ => Err(CodecError::malformed(what)),
    }
}

/// Decodes the name of an `ERROR` payload (`NAME\0`; unknown names are kept).
pub fn decode_error(payload: &[u8]) -> Result<ErrorName, CodecError> {
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    if body.is_empty() || body.contains(&0) {
        return Err(CodecError::malformed("ERROR payload"));
    }
    let s = str::from_utf8(body).map_err(|_| CodecError::malformed("ERROR payload"))?;
    Ok(ErrorName::from_name(s))
}

impl Reply {
    /// Decodes the reply to a request of type `req`: the daemon's error reply as
    /// `Ok(Err(name))`, a malformed reply as `Err`.
    pub fn decode(req: MsgType, msg: &Message) -> Result<Result<Reply, ErrorName>, CodecError> {
        if msg.ty == MsgType::Error.as_u32() {
            return Ok(Err(decode_error(&msg.payload)?));
        }
        if msg.ty != req.as_u32() {
            return Err(CodecError::UnexpectedType {
                expected: req.as_u32(),
                got: msg.ty,
            });
        }
        Self::decode_payload(req, &msg.payload).map(Ok)
    }

    /// Decodes a successful reply payload of a request of type `req`.
    pub fn decode_payload(req: MsgType, p: &[u8]) -> Result<Reply, CodecError> {
        Ok(match req {
            MsgType::Read => Reply::Value(p.to_vec()),
            MsgType::Control => Reply::Raw(p.to_vec()),
            MsgType::Directory => {
                if p.is_empty() {
                    Reply::Children(Vec::new())
                } else {
                    let v = strings(p, "DIRECTORY reply")?;
                    Reply::Children(v.into_iter().map(String::from).collect())
                }
            }
            MsgType::DirectoryPart => {
                let v = strings(p, "DIRECTORY_PART reply")?;
                let Some((generation, rest)) = v.split_first() else {
                    return Err(CodecError::malformed("DIRECTORY_PART reply"));
                };
                // The last chunk ends with an extra NUL, i.e. an empty last string.
                let (names, done) = match rest.split_last() {
                    Some((&"", names)) => (names, true),
                    _ => (rest, false),
                };
                if names.iter().any(|n| n.is_empty()) {
                    return Err(CodecError::malformed("DIRECTORY_PART reply"));
                }
                let consumed = names.iter().map(|n| n.len() + 1).sum();
                Reply::ChildrenPart {
                    generation: String::from(*generation),
                    children: names.iter().map(|s| String::from(*s)).collect(),
                    done,
                    consumed,
                }
            }
            MsgType::GetPerms => {
                let v = strings(p, "GET_PERMS reply")?;
                if v.is_empty() || v == [""] {
                    return Err(CodecError::malformed("GET_PERMS reply"));
                }
                Reply::Perms(
                    v.iter()
                        .map(|s| s.parse::<Perm>())
                        .collect::<Result<_, _>>()?,
                )
            }
            MsgType::TransactionStart => {
                let s = one_string(p, "TRANSACTION_START reply")?;
                Reply::TransactionId(parse_dec32(&s)?)
            }
            MsgType::GetDomainPath => Reply::Path(one_string(p, "GET_DOMAIN_PATH reply")?),
            MsgType::IsDomainIntroduced => match p {
                b"T\0" => Reply::Bool(true),
                b"F\0" => Reply::Bool(false),
                _ => return Err(CodecError::malformed("IS_DOMAIN_INTRODUCED reply")),
            },
            MsgType::Write
            | MsgType::Mkdir
            | MsgType::Rm
            | MsgType::SetPerms
            | MsgType::Watch
            | MsgType::Unwatch
            | MsgType::TransactionEnd
            | MsgType::Introduce
            | MsgType::Release
            | MsgType::Resume
            | MsgType::SetTarget
            | MsgType::ResetWatches => {
                if p != b"OK\0" {
                    return Err(CodecError::malformed("OK reply"));
                }
                Reply::Ok
            }
            MsgType::WatchEvent
            | MsgType::Error
            | MsgType::GetFeature
            | MsgType::SetFeature
            | MsgType::GetQuota
            | MsgType::SetQuota => return Err(CodecError::UnknownType(req.as_u32())),
        })
    }

    /// Encodes this reply's payload (what a server sends).
    pub fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        match self {
            Reply::Ok => out.extend_from_slice(b"OK\0"),
            Reply::Value(v) | Reply::Raw(v) => out.extend_from_slice(v),
            Reply::Children(c) => {
                for n in c {
                    push_str(out, n)?;
                }
            }
            Reply::ChildrenPart {
                generation,
                children,
                done,
                ..
            } => {
                push_str(out, generation)?;
                for n in children {
                    push_str(out, n)?;
                }
                if *done {
                    out.push(0);
                }
            }
            Reply::Perms(ps) => {
                for p in ps {
                    out.push(p.access.letter() as u8);
                    push_num(out, u64::from(p.domid));
                }
            }
            Reply::TransactionId(id) => push_num(out, u64::from(*id)),
            Reply::Path(s) => push_str(out, s)?,
            Reply::Bool(b) => out.extend_from_slice(if *b { b"T\0" } else { b"F\0" }),
        }
        Ok(())
    }
}

/// What [`Parser::feed`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// At least this many more bytes are needed to finish the current message.
    NeedMore(usize),
    /// A whole message.
    Message(Message),
}

/// Incremental parser of a byte stream into messages.
///
/// The payload length is checked against the limit as soon as the header is complete,
/// before anything is allocated for the payload. After an error the parser stays failed:
/// the stream cannot be resynchronised, so the connection must be closed.
#[derive(Debug)]
pub struct Parser {
    max_payload: usize,
    hdr: [u8; HEADER_LEN],
    hdr_len: usize,
    body: Option<(WireHeader, Vec<u8>, usize)>,
    failed: Option<CodecError>,
}

impl Parser {
    /// A parser accepting payloads up to `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        Self {
            max_payload,
            hdr: [0; HEADER_LEN],
            hdr_len: 0,
            body: None,
            failed: None,
        }
    }

    /// True if no partial message is buffered.
    pub fn is_idle(&self) -> bool {
        self.hdr_len == 0 && self.body.is_none()
    }

    /// Consumes bytes from `input` up to the end of at most one message.
    ///
    /// Returns how many bytes were used and what was found; call again with the rest.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Result<Progress, CodecError>) {
        if let Some(e) = &self.failed {
            return (0, Err(e.clone()));
        }
        let mut used = 0;
        if self.body.is_none() {
            let take = (HEADER_LEN - self.hdr_len).min(input.len());
            self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&input[..take]);
            self.hdr_len += take;
            used += take;
            if self.hdr_len < HEADER_LEN {
                return (used, Ok(Progress::NeedMore(HEADER_LEN - self.hdr_len)));
            }
            let Some(h) = WireHeader::read(&self.hdr) else {
                // unreachable: hdr is exactly HEADER_LEN bytes
                return (used, Err(CodecError::malformed("header")));
            };
            let len = h.len.get() as usize;
            if len > self.max_payload {
                let e = CodecError::PayloadTooLarge {
                    len,
                    max: self.max_payload,
                };
                self.failed = Some(e.clone());
                return (used, Err(e));
            }
            self.hdr_len = 0;
            self.body = Some((h, Vec::with_capacity(len), len));
        }
        let Some((h, buf, len)) = self.body.as_mut() else {
            return (used, Err(CodecError::malformed("parser state")));
        };
        let take = (*len - buf.len()).min(input.len() - used);
        buf.extend_from_slice(&input[used..used + take]);
        used += take;
        if buf.len() < *len {
            return (used, Ok(Progress::NeedMore(*len - buf.len())));
        }
        let h = *h;
        let payload = self.body.take().map(|(_, b, _)| b).unwrap_or_default();
        (
            used,
            Ok(Progress::Message(Message {
                ty: h.ty.get(),
                req_id: h.req_id.get(),
                tx_id: h.tx_id.get(),
                payload,
            })),
        )
    }
}

/// A frame found by [`parse_frame`]: header, payload, and the bytes it spans.
pub type Frame<'a> = (WireHeader, &'a [u8], usize);

/// Parses one whole message at the start of `buf` without copying the payload.
///
/// `Ok(None)` if `buf` does not yet hold a whole message; the length limit is checked
/// from the header alone.
pub fn parse_frame(buf: &[u8], max_payload: usize) -> Result<Option<Frame<'_>>, CodecError> {
    let Some(h) = WireHeader::read(buf) else {
        return Ok(None);
    };
    let len = h.len.get() as usize;
    if len > max_payload {
        return Err(CodecError::PayloadTooLarge {
            len,
            max: max_payload,
        });
    }
    let end = HEADER_LEN + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((h, &buf[HEADER_LEN..end], end)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perms::Access;
    use alloc::vec;

    fn rt(req: Request<'_>) {
        let bytes = req.encode(7, 3, 4096).unwrap();
        let h = WireHeader::read(&bytes).unwrap();
        assert_eq!(h.req_id.get(), 7);
        assert_eq!(h.tx_id.get(), 3);
        assert_eq!(h.len.get() as usize, bytes.len() - HEADER_LEN);
        assert!(bytes.len() > HEADER_LEN, "never an empty payload");
        let back = Request::parse(h.ty.get(), &bytes[HEADER_LEN..]).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn requests_round_trip() {
        rt(Request::Read("/a"));
        rt(Request::Write {
            path: "/a",
            value: b"\0\xff",
        });
        rt(Request::Write {
            path: "/a",
            value: b"",
        });
        rt(Request::Directory("/"));
        rt(Request::DirectoryPart {
            path: "/x",
            offset: 4090,
        });
        rt(Request::Watch {
            path: "@releaseDomain",
            token: "t",
        });
        rt(Request::Unwatch {
            path: "a",
            token: "t",
        });
        rt(Request::TransactionStart);
        rt(Request::TransactionEnd { commit: true });
        rt(Request::TransactionEnd { commit: false });
        rt(Request::Introduce {
            domid: 5,
            gfn: u64::MAX,
            port: 0,
        });
        rt(Request::Release(0));
        rt(Request::GetDomainPath(u32::MAX));
        rt(Request::Mkdir("a/b"));
        rt(Request::Rm("/a"));
        rt(Request::SetPerms {
            path: "/a",
            perms: Cow::Owned(vec![Perm::new(Access::None, 0), Perm::new(Access::Both, 5)]),
        });
        rt(Request::IsDomainIntroduced(3));
        rt(Request::Resume(3));
        rt(Request::SetTarget {
            domid: 3,
            target: 4,
        });
        rt(Request::ResetWatches);
        rt(Request::Control(b"help\0"));
    }

    #[test]
    fn encoder_refuses_what_daemons_choke_on() {
        assert!(Request::Read("a\0b").encode(1, 0, 4096).is_err());
        assert!(Request::Control(b"").encode(1, 0, 4096).is_err());
        let big = vec![b'v'; 4096];
        let err = Request::Write {
            path: "/a",
            value: &big,
        }
        .encode(1, 0, 4096)
        .unwrap_err();
        assert!(matches!(
            err,
            CodecError::PayloadTooLarge {
                len: 4099,
                max: 4096
            }
        ));
        let mut out = vec![1, 2];
        assert!(Request::Write {
            path: "/a",
            value: &big
        }
        .encode_into(1, 0, 4096, &mut out)
        .is_err());
        assert_eq!(out, [1, 2], "left untouched on error");
    }

    #[test]
    fn parse_rejects_malformed_requests() {
        assert!(Request::parse(2, b"/a").is_err()); // no NUL
        assert!(Request::parse(2, b"").is_err());
        assert!(Request::parse(2, b"/a\0/b\0").is_err());
        assert!(Request::parse(4, b"/a\0").is_err()); // watch without token
        assert!(Request::parse(99, b"/x\0").is_err());
        assert!(Request::parse(15, b"/x\0t\0").is_err());
        assert!(Request::parse(16, b"EINVAL\0").is_err());
        assert!(Request::parse(11, b"").is_err());
        assert!(Request::parse(6, b"").is_err());
        assert!(Request::parse(7, b"X\0").is_err());
        assert!(Request::parse(10, b"abc\0").is_err());
        assert!(Request::parse(14, b"/a\0x0\0").is_err());
        assert!(Request::parse(14, b"/a\0").is_err());
    }

    fn msg(ty: MsgType, payload: &[u8]) -> Message {
        Message {
            ty: ty.as_u32(),
            req_id: 1,
            tx_id: 0,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn replies_decode() {
        let d = |t, p: &[u8]| Reply::decode(t, &msg(t, p)).unwrap().unwrap();
        assert_eq!(d(MsgType::Write, b"OK\0"), Reply::Ok);
        assert_eq!(d(MsgType::Read, b"hello"), Reply::Value(b"hello".to_vec()));
        assert_eq!(d(MsgType::Directory, b""), Reply::Children(vec![]));
        assert_eq!(
            d(MsgType::Directory, b"a\0b\0"),
            Reply::Children(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            d(MsgType::DirectoryPart, b"21\0a\0empty\0\0"),
            Reply::ChildrenPart {
                generation: "21".into(),
                children: vec!["a".into(), "empty".into()],
                done: true,
                consumed: 8
            }
        );
        assert_eq!(
            d(MsgType::DirectoryPart, b"21\0a\0"),
            Reply::ChildrenPart {
                generation: "21".into(),
                children: vec!["a".into()],
                done: false,
                consumed: 2
            }
        );
        assert_eq!(
            d(MsgType::DirectoryPart, b"21\0\0"),
            Reply::ChildrenPart {
                generation: "21".into(),
                children: vec![],
                done: true,
                consumed: 0
            }
        );
        assert_eq!(
            d(MsgType::GetPerms, b"n0\0r5\0"),
            Reply::Perms(vec![Perm::new(Access::None, 0), Perm::new(Access::Read, 5)])
        );
        assert_eq!(
            d(MsgType::TransactionStart, b"12\0"),
            Reply::TransactionId(12)
        );
        assert_eq!(d(MsgType::IsDomainIntroduced, b"F\0"), Reply::Bool(false));
        assert_eq!(
            d(MsgType::GetDomainPath, b"/local/domain/5\0"),
            Reply::Path("/local/domain/5".into())
        );
        let e = Reply::decode(MsgType::Read, &msg(MsgType::Error, b"EQUOTA\0")).unwrap();
        assert_eq!(e, Err(ErrorName::EQUOTA));
        let e = Reply::decode(MsgType::Read, &msg(MsgType::Error, b"ENEW\0")).unwrap();
        assert_eq!(e, Err(ErrorName::Other("ENEW".into())));
    }

    #[test]
    fn malformed_replies_are_errors() {
        let bad = |t, p: &[u8]| Reply::decode(t, &msg(t, p)).is_err();
        assert!(bad(MsgType::Write, b"OK"));
        assert!(bad(MsgType::Directory, b"a\0b"));
        assert!(bad(MsgType::GetPerms, b"q0\0"));
        assert!(bad(MsgType::GetPerms, b""));
        assert!(bad(MsgType::TransactionStart, b"x\0"));
        assert!(bad(MsgType::TransactionStart, b"99999999999\0"));
        assert!(bad(MsgType::IsDomainIntroduced, b"Y\0"));
        assert!(bad(MsgType::DirectoryPart, b""));
        assert!(Reply::decode(MsgType::Read, &msg(MsgType::Write, b"OK\0")).is_err());
        assert!(Reply::decode(MsgType::Read, &msg(MsgType::Error, b"")).is_err());
        assert!(WatchEvent::parse(b"/a\0").is_err());
        assert_eq!(
            WatchEvent::parse(b"/a\0tok\0").unwrap(),
            WatchEvent {
                path: "/a".into(),
                token: "tok".into()
            }
        );
    }

    #[test]
    fn parser_checks_length_before_allocating() {
        let mut p = Parser::new(4096);
        let h = WireHeader::new(2, 1, 0, 4097);
        let (used, r) = p.feed(h.as_bytes());
        assert_eq!(used, 16);
        assert_eq!(
            r,
            Err(CodecError::PayloadTooLarge {
                len: 4097,
                max: 4096
            })
        );
        // stays failed
        assert!(p.feed(b"x").1.is_err());
        let h = WireHeader::new(2, 1, 0, u32::MAX);
        assert!(parse_frame(h.as_bytes(), 65536).is_err());
    }

    #[test]
    fn parser_handles_back_to_back_messages() {
        let mut stream = Request::Read("/a").encode(1, 0, 4096).unwrap();
        stream.extend(Request::TransactionStart.encode(2, 0, 4096).unwrap());
        let mut p = Parser::new(4096);
        let mut rest = &stream[..];
        let mut got = vec![];
        while !rest.is_empty() {
            let (n, r) = p.feed(rest);
            rest = &rest[n..];
            if let Progress::Message(m) = r.unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].req_id, 2);
        assert!(p.is_idle());
        let (h, payload, end) = parse_frame(&stream, 4096).unwrap().unwrap();
        assert_eq!(h.req_id.get(), 1);
        assert_eq!(payload, b"/a\0");
        assert_eq!(end, 19);
        assert_eq!(parse_frame(&stream[..18], 4096).unwrap(), None);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parser_never_panics_and_respects_limit(data in proptest::collection::vec(any::<u8>(), 0..300), split in 0usize..300, max in 0usize..200) {
            let mut p = Parser::new(max);
            let split = split.min(data.len());
            let mut rest: &[u8] = &data[..split];
            for chunk in [&data[..split], &data[split..]] {
                rest = chunk;
                loop {
                    let (n, r) = p.feed(rest);
                    rest = &rest[n..];
                    match r {
                        Ok(Progress::Message(m)) => prop_assert!(m.payload.len() <= max),
                        Ok(Progress::NeedMore(_)) => { prop_assert!(rest.is_empty()); break; }
                        Err(_) => break,
                    }
                    if rest.is_empty() { break; }
                }
            }
            let _ = rest;
        }

        #[test]
        fn reply_decode_never_panics(ty in 0u32..30, payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Some(t) = MsgType::from_u32(ty) {
                let m = Message { ty, req_id: 1, tx_id: 0, payload: payload.clone() };
                let _ = Reply::decode(t, &m);
            }
            let _ = Request::parse(ty, &payload);
            let _ = WatchEvent::parse(&payload);
        }

        #[test]
        fn write_round_trips(path in "[a-z/]{1,40}", value in proptest::collection::vec(any::<u8>(), 0..100)) {
            let r = Request::Write { path: &path, value: &value };
            let b = r.encode(1, 0, 4096).unwrap();
            prop_assert_eq!(Request::parse(11, &b[16..]).unwrap(), r);
        }
    }
}
