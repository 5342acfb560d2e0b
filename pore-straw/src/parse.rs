//! Strict, bounded parsers for every value a peer writes into xenstore.
//!
//! The peer is another domain, possibly hostile: every value is checked for length, charset
//! and range before use. Garbage is a [`ParseError`], never a panic.

use alloc::vec::Vec;
use core::fmt;

use pore_core::{GrantRef, Port};

/// The longest value we read from a peer's key and still look at.
pub const MAX_VALUE_LEN: usize = 256;

/// Why a value written by the peer was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Longer than allowed.
    #[error("value too long")]
    TooLong,
    /// Empty where a value was required.
    #[error("empty value")]
    Empty,
    /// Not a canonical decimal number.
    #[error("not a canonical decimal number")]
    NotDecimal,
    /// A number outside the allowed range.
    #[error("number out of range")]
    OutOfRange,
    /// Not one of the XenbusState numbers.
    #[error("not a xenbus state")]
    BadState,
    /// An endpoint name or identifier outside `[A-Za-z0-9_]+`.
    #[error("bad endpoint name")]
    BadName,
    /// A layout or format token with characters outside `[a-z0-9_]`.
    #[error("bad token")]
    BadToken,
    /// A path that is not the one the protocol dictates.
    #[error("unexpected path")]
    BadPath,
}

/// A canonical decimal `u32`: 1 to 10 ASCII digits, no sign, no spaces, no leading zero.
///
/// ```
/// use pore_straw::parse::decimal_u32;
/// assert_eq!(decimal_u32(b"4294967295"), Ok(u32::MAX));
/// assert!(decimal_u32(b"4294967296").is_err());
/// assert!(decimal_u32(b"007").is_err());
/// assert!(decimal_u32(b" 7").is_err());
/// ```
pub fn decimal_u32(v: &[u8]) -> Result<u32, ParseError> {
    if v.is_empty() {
        return Err(ParseError::Empty);
    }
    if v.len() > 10 {
        return Err(ParseError::TooLong);
    }
    if !v.iter().all(u8::is_ascii_digit) || (v.len() > 1 && v[0] == b'0') {
        return Err(ParseError::NotDecimal);
    }
    let mut n: u64 = 0;
    for d in v {
        n = n * 10 + u64::from(d - b'0');
    }
    u32::try_from(n).map_err(|_| ParseError::OutOfRange)
}

/// A grant reference as the peer wrote it (decimal).
pub fn grant_ref(v: &[u8]) -> Result<GrantRef, ParseError> {
    decimal_u32(v).map(GrantRef)
}

/// An event-channel port as the peer wrote it (decimal, never 0: port 0 is reserved).
pub fn port(v: &[u8]) -> Result<Port, ParseError> {
    match decimal_u32(v)? {
        0 => Err(ParseError::OutOfRange),
        p => Ok(Port(p)),
    }
}

/// A page count in `1..=max`, a power of two (D4).
pub fn ring_pages(v: &[u8], max: u32) -> Result<u32, ParseError> {
    let n = decimal_u32(v)?;
    if n == 0 || n > max || !n.is_power_of_two() {
        return Err(ParseError::OutOfRange);
    }
    Ok(n)
}

/// The XenbusState of a straw side (`public/io/xenbus.h`; `docs/protocol-facts.md` §5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum XenbusState {
    /// 0.
    Unknown = 0,
    /// 1: the listener was knocked.
    Initialising = 1,
    /// 2: the opener waits for refs.
    InitWait = 2,
    /// 3: the listener published refs and port.
    Initialised = 3,
    /// 4.
    Connected = 4,
    /// 5: the granting side began to close.
    Closing = 5,
    /// 6.
    Closed = 6,
    /// 7.
    Reconfiguring = 7,
    /// 8.
    Reconfigured = 8,
}

impl XenbusState {
    /// The decimal string written to xenstore.
    pub const fn as_str(self) -> &'static str {
        match self {
            XenbusState::Unknown => "0",
            XenbusState::Initialising => "1",
            XenbusState::InitWait => "2",
            XenbusState::Initialised => "3",
            XenbusState::Connected => "4",
            XenbusState::Closing => "5",
            XenbusState::Closed => "6",
            XenbusState::Reconfiguring => "7",
            XenbusState::Reconfigured => "8",
        }
    }

    /// Parses a state value: exactly one digit `0`..`8`.
    ///
    /// ```
    /// use pore_straw::parse::XenbusState;
    /// assert_eq!(XenbusState::parse(b"4"), Ok(XenbusState::Connected));
    /// assert!(XenbusState::parse(b"04").is_err());
    /// assert!(XenbusState::parse(b"9").is_err());
    /// ```
    pub fn parse(v: &[u8]) -> Result<Self, ParseError> {
        Ok(match v {
            b"0" => XenbusState::Unknown,
            b"1" => XenbusState::Initialising,
            b"2" => XenbusState::InitWait,
            b"3" => XenbusState::Initialised,
            b"4" => XenbusState::Connected,
            b"5" => XenbusState::Closing,
            b"6" => XenbusState::Closed,
            b"7" => XenbusState::Reconfiguring,
            b"8" => XenbusState::Reconfigured,
            _ => return Err(ParseError::BadState),
        })
    }
}

impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}({})", self, self.as_str())
    }
}

/// The message format of a straw (D16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Raw frames: each frame is delivered as it is.
    Raw,
    /// The seed's JSON envelope `{"addr": ..., "msg": ...}`, delivered to mailboxes.
    Json,
}

impl Format {
    /// The value written to `format`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Json => "json",
        }
    }

    /// Resolves the format of a straw from both sides' `format` keys: equal → that format,
    /// anything else (the seed's `erlang`, an unknown token, an absent key) → JSON (D16).
    pub fn negotiate(mine: Format, peers: Option<PeerFormat>) -> Format {
        match peers {
            Some(PeerFormat::Known(f)) if f == mine => mine,
            _ => Format::Json,
        }
    }
}

/// What the peer wrote in its `format` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerFormat {
    /// `raw` or `json`.
    Known(Format),
    /// A well-formed token we do not speak (`erlang`, ...).
    Other,
}

/// Parses a peer's `format`: a token of at most 32 characters `[a-z0-9_]`.
///
/// ```
/// use pore_straw::parse::{format, Format, PeerFormat};
/// assert_eq!(format(b"raw"), Ok(PeerFormat::Known(Format::Raw)));
/// assert_eq!(format(b"erlang"), Ok(PeerFormat::Other));
/// assert!(format(b"\xff").is_err());
/// ```
pub fn format(v: &[u8]) -> Result<PeerFormat, ParseError> {
    token(v, 32)?;
    Ok(match v {
        b"raw" => PeerFormat::Known(Format::Raw),
        b"json" => PeerFormat::Known(Format::Json),
        _ => PeerFormat::Other,
    })
}

fn token(v: &[u8], max: usize) -> Result<(), ParseError> {
    if v.is_empty() {
        return Err(ParseError::Empty);
    }
    if v.len() > max {
        return Err(ParseError::TooLong);
    }
    if !v
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
    {
        return Err(ParseError::BadToken);
    }
    Ok(())
}

/// Parses a `straw-polling` key (D26): `true` for exactly `1`. Any other well-formed token
/// (`0`, or one a later version may define) is `false`, so that an unknown answer falls back
/// to wake flags; a malformed value is an error.
///
/// ```
/// use pore_straw::parse::polling;
/// assert_eq!(polling(b"1"), Ok(true));
/// assert_eq!(polling(b"0"), Ok(false));
/// assert!(polling(b"").is_err());
/// assert!(polling(b"1 ").is_err());
/// ```
pub fn polling(v: &[u8]) -> Result<bool, ParseError> {
    token(v, 32)?;
    Ok(v == b"1")
}

/// Parses the opener's `straw-layouts` (D15): at most 64 bytes, tokens `[a-z0-9_]+` separated
/// by single spaces. Returns whether `v2` is among them (unknown tokens are ignored).
///
/// ```
/// use pore_straw::parse::layouts_offer_v2;
/// assert_eq!(layouts_offer_v2(b"ling v2"), Ok(true));
/// assert_eq!(layouts_offer_v2(b"ling"), Ok(false));
/// assert!(layouts_offer_v2(b"ling  v2").is_err());
/// ```
pub fn layouts_offer_v2(v: &[u8]) -> Result<bool, ParseError> {
    if v.len() > 64 {
        return Err(ParseError::TooLong);
    }
    let mut v2 = false;
    let tokens: Vec<&[u8]> = v.split(|b| *b == b' ').collect();
    for t in tokens {
        token(t, 32)?;
        v2 |= t == b"v2";
    }
    Ok(v2)
}

/// Parses the listener's `straw-layout` (D15): exactly `v2` (absent means LING).
pub fn layout_is_v2(v: &[u8]) -> Result<(), ParseError> {
    token(v, 32)?;
    if v == b"v2" {
        Ok(())
    } else {
        Err(ParseError::BadToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decimals() {
        assert_eq!(decimal_u32(b"0"), Ok(0));
        assert_eq!(decimal_u32(b"8"), Ok(8));
        assert_eq!(decimal_u32(b""), Err(ParseError::Empty));
        assert_eq!(decimal_u32(b"-1"), Err(ParseError::NotDecimal));
        assert_eq!(decimal_u32(b"99999999999"), Err(ParseError::TooLong));
        assert_eq!(decimal_u32(b"9999999999"), Err(ParseError::OutOfRange));
        assert_eq!(port(b"0"), Err(ParseError::OutOfRange));
        assert_eq!(ring_pages(b"3", 64), Err(ParseError::OutOfRange));
        assert_eq!(ring_pages(b"128", 64), Err(ParseError::OutOfRange));
        assert_eq!(ring_pages(b"64", 64), Ok(64));
    }

    #[test]
    fn formats_negotiate_like_the_seed() {
        use Format::*;
        assert_eq!(Format::negotiate(Raw, Some(PeerFormat::Known(Raw))), Raw);
        assert_eq!(Format::negotiate(Raw, Some(PeerFormat::Known(Json))), Json);
        assert_eq!(Format::negotiate(Raw, Some(PeerFormat::Other)), Json);
        assert_eq!(Format::negotiate(Raw, None), Json);
        assert_eq!(Format::negotiate(Json, None), Json);
    }

    proptest! {
        #[test]
        fn decimal_roundtrip(n: u32) {
            prop_assert_eq!(decimal_u32(alloc::format!("{n}").as_bytes()), Ok(n));
        }

        #[test]
        fn garbage_never_panics(v in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decimal_u32(&v);
            let _ = XenbusState::parse(&v);
            let _ = format(&v);
            let _ = layouts_offer_v2(&v);
            let _ = layout_is_v2(&v);
            let _ = ring_pages(&v, 1024);
            if let Ok(n) = decimal_u32(&v) {
                let s = alloc::format!("{n}");
                prop_assert_eq!(s.as_bytes(), &v[..]);
            }
        }
    }
}
