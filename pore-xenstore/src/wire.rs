//! The fixed part of the wire format: the 16-byte header, message types and limits.
//!
//! Every xenstore message is a [`WireHeader`] (four little-endian `u32`: type, request id,
//! transaction id, payload length) followed by `len` payload bytes
//! (`docs/protocol-facts.md` §5.2).

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of the wire header in bytes.
pub const HEADER_LEN: usize = 16;

/// `XENSTORE_PAYLOAD_MAX`: the largest payload the daemons accept in a request.
pub const PAYLOAD_MAX: usize = 4096;

/// Largest request payload through the Linux `/dev/xen/xenbus` device: its 4096-byte
/// buffer also holds the header (D11).
pub const XENBUS_DEV_PAYLOAD_MAX: usize = PAYLOAD_MAX - HEADER_LEN;

/// Largest reply payload we accept by default (D11: oxenstored sends more than 4096).
pub const REPLY_PAYLOAD_MAX: usize = 64 * 1024;

/// `XENSTORE_ABS_PATH_MAX`.
pub const ABS_PATH_MAX: usize = 3072;

/// `XENSTORE_REL_PATH_MAX`.
pub const REL_PATH_MAX: usize = 2048;

/// The 16-byte message header (`struct xsd_sockmsg`), little-endian on the wire.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct WireHeader {
    /// Message type ([`MsgType`] as a number).
    pub ty: U32,
    /// Request id, echoed by the reply.
    pub req_id: U32,
    /// Transaction id (0 = none), echoed by the reply.
    pub tx_id: U32,
    /// Payload length in bytes.
    pub len: U32,
}

impl WireHeader {
    /// A header from its four fields.
    pub fn new(ty: u32, req_id: u32, tx_id: u32, len: u32) -> Self {
        Self {
            ty: U32::new(ty),
            req_id: U32::new(req_id),
            tx_id: U32::new(tx_id),
            len: U32::new(len),
        }
    }

    /// Reads a header from the first 16 bytes of `bytes`, if there are that many.
    pub fn read(bytes: &[u8]) -> Option<Self> {
        Self::read_from_prefix(bytes).ok().map(|(h, _)| h)
    }

    /// The message type, if known.
    pub fn msg_type(&self) -> Option<MsgType> {
        MsgType::from_u32(self.ty.get())
    }
}

/// Message types (`enum xsd_sockmsg_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
#[allow(missing_docs)] // the names are the protocol's own
pub enum MsgType {
    /// Also known as DEBUG.
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    /// Server to client only.
    WatchEvent = 15,
    /// Server to client only.
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    ResetWatches = 21,
    DirectoryPart = 22,
    GetFeature = 23,
    SetFeature = 24,
    GetQuota = 25,
    SetQuota = 26,
}

impl MsgType {
    /// The type for a wire number (20, RESTRICT, was removed and is unknown here).
    pub fn from_u32(v: u32) -> Option<Self> {
        use MsgType::*;
        Some(match v {
            0 => Control,
            1 => Directory,
            2 => Read,
            3 => GetPerms,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            8 => Introduce,
            9 => Release,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            14 => SetPerms,
            15 => WatchEvent,
            16 => Error,
            17 => IsDomainIntroduced,
            18 => Resume,
            19 => SetTarget,
            21 => ResetWatches,
            22 => DirectoryPart,
            23 => GetFeature,
            24 => SetFeature,
            25 => GetQuota,
            26 => SetQuota,
            _ => return None,
        })
    }

    /// The wire number.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The protocol's name, e.g. `"TRANSACTION_START"`.
    pub fn name(self) -> &'static str {
        use MsgType::*;
        match self {
            Control => "CONTROL",
            Directory => "DIRECTORY",
            Read => "READ",
            GetPerms => "GET_PERMS",
            Watch => "WATCH",
            Unwatch => "UNWATCH",
            TransactionStart => "TRANSACTION_START",
            TransactionEnd => "TRANSACTION_END",
            Introduce => "INTRODUCE",
            Release => "RELEASE",
            GetDomainPath => "GET_DOMAIN_PATH",
            Write => "WRITE",
            Mkdir => "MKDIR",
            Rm => "RM",
            SetPerms => "SET_PERMS",
            WatchEvent => "WATCH_EVENT",
            Error => "ERROR",
            IsDomainIntroduced => "IS_DOMAIN_INTRODUCED",
            Resume => "RESUME",
            SetTarget => "SET_TARGET",
            ResetWatches => "RESET_WATCHES",
            DirectoryPart => "DIRECTORY_PART",
            GetFeature => "GET_FEATURE",
            SetFeature => "SET_FEATURE",
            GetQuota => "GET_QUOTA",
            SetQuota => "SET_QUOTA",
        }
    }
}

impl core::fmt::Display for MsgType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Payload limits for one transport, per direction (D11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request payload we send.
    pub request_payload_max: usize,
    /// Largest reply payload we accept (checked before allocating).
    pub reply_payload_max: usize,
}

impl Limits {
    /// Unix socket and shared ring: 4096-byte requests, replies up to 64 KiB.
    pub const SOCKET: Limits = Limits {
        request_payload_max: PAYLOAD_MAX,
        reply_payload_max: REPLY_PAYLOAD_MAX,
    };
    /// The Linux xenbus device: 4080-byte requests, replies up to 64 KiB.
    pub const XENBUS_DEV: Limits = Limits {
        request_payload_max: XENBUS_DEV_PAYLOAD_MAX,
        reply_payload_max: REPLY_PAYLOAD_MAX,
    };
    /// What a server accepts from its clients: 4096 bytes.
    pub const SERVER: Limits = Limits {
        request_payload_max: PAYLOAD_MAX,
        reply_payload_max: PAYLOAD_MAX,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::SOCKET
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_16_le_bytes() {
        let h = WireHeader::new(11, 1, 0, 15);
        assert_eq!(
            h.as_bytes(),
            &[11, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0, 0]
        );
        assert_eq!(WireHeader::read(h.as_bytes()), Some(h));
        assert_eq!(WireHeader::read(&[0; 15]), None);
        assert_eq!(core::mem::size_of::<WireHeader>(), HEADER_LEN);
    }

    #[test]
    fn types_round_trip() {
        for v in 0..64u32 {
            if let Some(t) = MsgType::from_u32(v) {
                assert_eq!(t.as_u32(), v);
            }
        }
        assert_eq!(MsgType::from_u32(20), None);
        assert_eq!(MsgType::from_u32(22), Some(MsgType::DirectoryPart));
        assert_eq!(MsgType::TransactionStart.name(), "TRANSACTION_START");
    }
}
