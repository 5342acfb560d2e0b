//! Endpoints (domain, name) and the xenstore paths the strawman uses (D14).

use alloc::format;
use alloc::string::String;
use core::fmt;

use pore_core::DomId;

use crate::parse::{self, ParseError};

/// The longest endpoint name we accept (keeps every path well under xenstore's limits).
pub const MAX_NAME_LEN: usize = 64;

/// An endpoint name: empty (the seed's paths) or `[A-Za-z0-9_]+`, at most [`MAX_NAME_LEN`].
///
/// ```
/// use pore_straw::Name;
/// assert!(Name::new("").unwrap().is_empty());
/// assert!(Name::new("chat_1").is_ok());
/// assert!(Name::new("no/slash").is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, ParseError> {
        if name.len() > MAX_NAME_LEN {
            return Err(ParseError::TooLong);
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(ParseError::BadName);
        }
        Ok(Name(String::from(name)))
    }

    /// The empty name: the seed's `data/straw` and `data/warts`.
    pub fn empty() -> Self {
        Name(String::new())
    }

    /// Whether this is the empty name.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One end of a straw: a domain and a name (D14). One manager runs per endpoint.
///
/// ```
/// use pore_core::DomId;
/// use pore_straw::Endpoint;
///
/// let seed = Endpoint::new(DomId(3), "").unwrap();
/// assert_eq!(seed.straw_top(), "/local/domain/3/data/straw");
/// assert_eq!(seed.ident(), "3");
/// let named = Endpoint::new(DomId(3), "chat").unwrap();
/// assert_eq!(named.warts_top(), "/local/domain/3/data/warts-chat");
/// assert_eq!(named.ident(), "3-chat");
/// assert_eq!(Endpoint::parse_ident("3-chat").unwrap(), named);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// The domain.
    pub domid: DomId,
    /// The name (empty: the seed's paths).
    pub name: Name,
}

impl Endpoint {
    /// An endpoint of `domid` named `name` (validated).
    pub fn new(domid: DomId, name: &str) -> Result<Self, ParseError> {
        if !domid.is_valid_domain() {
            return Err(ParseError::OutOfRange);
        }
        Ok(Endpoint {
            domid,
            name: Name::new(name)?,
        })
    }

    /// The seed's endpoint of `domid` (empty name).
    pub fn seed(domid: DomId) -> Self {
        Endpoint {
            domid,
            name: Name::empty(),
        }
    }

    /// `/local/domain/<domid>`.
    pub fn domain_path(&self) -> String {
        format!("/local/domain/{}", self.domid.0)
    }

    fn suffix(&self) -> String {
        if self.name.is_empty() {
            String::new()
        } else {
            format!("-{}", self.name)
        }
    }

    /// Where peers knock: `/local/domain/<domid>/data/straw[-<name>]` (perms `b<domid>`).
    pub fn straw_top(&self) -> String {
        format!("{}/data/straw{}", self.domain_path(), self.suffix())
    }

    /// Where this endpoint keeps its own side of opened straws:
    /// `/local/domain/<domid>/data/warts[-<name>]` (perms `r<domid>`).
    pub fn warts_top(&self) -> String {
        format!("{}/data/warts{}", self.domain_path(), self.suffix())
    }

    /// How this endpoint names itself in a peer's tree: `<domid>` or `<domid>-<name>`.
    pub fn ident(&self) -> String {
        format!("{}{}", self.domid.0, self.suffix())
    }

    /// Parses an [`Endpoint::ident`] strictly (canonical decimal domid, valid name).
    pub fn parse_ident(s: &str) -> Result<Self, ParseError> {
        let (dom, name) = match s.split_once('-') {
            Some((d, n)) if !n.is_empty() => (d, n),
            Some(_) => return Err(ParseError::BadName),
            None => (s, ""),
        };
        let dom = parse::decimal_u32(dom.as_bytes())?;
        let dom = u16::try_from(dom).map_err(|_| ParseError::OutOfRange)?;
        Endpoint::new(DomId(dom), name)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            write!(f, "dom{}", self.domid.0)
        } else {
            write!(f, "dom{}/{}", self.domid.0, self.name)
        }
    }
}

/// The two directories of one straw between an opener and a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrawPaths {
    /// In the listener's tree: `<listener straw_top>/<opener ident>`; created by the opener,
    /// written by the listener (refs, port, its state).
    pub straw_dir: String,
    /// In the opener's tree: `<opener warts_top>/<listener ident>`; the opener's state.
    pub warts_dir: String,
}

impl StrawPaths {
    /// The paths of the straw `opener` → `listener`.
    pub fn new(opener: &Endpoint, listener: &Endpoint) -> Self {
        StrawPaths {
            straw_dir: format!("{}/{}", listener.straw_top(), opener.ident()),
            warts_dir: format!("{}/{}", opener.warts_top(), listener.ident()),
        }
    }

    /// `<straw_dir>/<key>`.
    pub fn straw(&self, key: &str) -> String {
        format!("{}/{}", self.straw_dir, key)
    }

    /// `<warts_dir>/<key>`.
    pub fn warts(&self, key: &str) -> String {
        format!("{}/{}", self.warts_dir, key)
    }
}

/// If `path` (a watch event under `me`'s straw top) is a peer's knock
/// (`<straw_top>/<ident>/warts`), the peer endpoint. Anything else (our own writes, the
/// registration event, garbage) is `None`.
///
/// ```
/// use pore_core::DomId;
/// use pore_straw::{Endpoint, endpoint::parse_knock};
/// let me = Endpoint::seed(DomId(2));
/// assert_eq!(parse_knock(&me, "/local/domain/2/data/straw/7/warts"), Some(Endpoint::seed(DomId(7))));
/// assert_eq!(parse_knock(&me, "/local/domain/2/data/straw/7/state"), None);
/// ```
pub fn parse_knock(me: &Endpoint, path: &str) -> Option<Endpoint> {
    let top = me.straw_top();
    let rest = path.strip_prefix(top.as_str())?.strip_prefix('/')?;
    let ident = rest.strip_suffix("/warts")?;
    if ident.contains('/') {
        return None;
    }
    let peer = Endpoint::parse_ident(ident).ok()?;
    (peer.domid != me.domid || peer.name != me.name).then_some(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_paths_are_the_seeds() {
        let a = Endpoint::seed(DomId(1));
        let b = Endpoint::seed(DomId(2));
        let p = StrawPaths::new(&a, &b);
        assert_eq!(p.straw_dir, "/local/domain/2/data/straw/1");
        assert_eq!(p.warts_dir, "/local/domain/1/data/warts/2");
        assert_eq!(
            p.straw("ring-ref-1"),
            "/local/domain/2/data/straw/1/ring-ref-1"
        );
    }

    #[test]
    fn named_paths() {
        let a = Endpoint::new(DomId(1), "x").unwrap();
        let b = Endpoint::new(DomId(2), "y_2").unwrap();
        let p = StrawPaths::new(&a, &b);
        assert_eq!(p.straw_dir, "/local/domain/2/data/straw-y_2/1-x");
        assert_eq!(p.warts_dir, "/local/domain/1/data/warts-x/2-y_2");
    }

    #[test]
    fn idents_parse_strictly() {
        for bad in [
            "", "-", "1-", "-x", "01", "+1", "1 ", "1-a-b", "1-a/b", "70000", "32752", "1-é",
        ] {
            assert!(Endpoint::parse_ident(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Endpoint::parse_ident("0").unwrap(),
            Endpoint::seed(DomId(0))
        );
    }

    #[test]
    fn knocks() {
        let me = Endpoint::new(DomId(2), "n").unwrap();
        let top = me.straw_top();
        assert_eq!(
            parse_knock(&me, &format!("{top}/5-m/warts")),
            Some(Endpoint::new(DomId(5), "m").unwrap())
        );
        assert_eq!(parse_knock(&me, &top), None);
        assert_eq!(parse_knock(&me, &format!("{top}/5/x/warts")), None);
        assert_eq!(parse_knock(&me, &format!("{top}x/5/warts")), None);
        assert_eq!(parse_knock(&me, &format!("{top}/2-n/warts")), None);
        assert_eq!(
            parse_knock(
                &Endpoint::seed(DomId(2)),
                "/local/domain/2/data/straw-n/5/warts"
            ),
            None
        );
    }
}
