//! Node permissions: `n<domid>`, `r<domid>`, `w<domid>`, `b<domid>`.
//!
//! The first entry of a list names the owner (who has every right) and gives, with its
//! letter, the rights of every domain not listed; later entries are per-domain.

use core::fmt;
use core::str::FromStr;

use crate::error::CodecError;

/// Rights a permission entry grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// `n`: none.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

impl Access {
    /// The wire letter.
    pub fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }
}

/// One permission entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain it names.
    pub domid: u32,
    /// Its rights.
    pub access: Access,
}

impl Perm {
    /// A permission entry.
    pub const fn new(access: Access, domid: u32) -> Self {
        Self { domid, access }
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.access.letter(), self.domid)
    }
}

impl FromStr for Perm {
    type Err = CodecError;

    /// Parses `<letter><decimal domid>`, e.g. `"b5"`.
    ///
    /// ```
    /// use pore_xenstore::{Access, Perm};
    /// assert_eq!("r7".parse::<Perm>().unwrap(), Perm::new(Access::Read, 7));
    /// assert!("x0".parse::<Perm>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = CodecError::malformed("permission");
        let mut chars = s.chars();
        let access = match chars.next() {
            Some('n') => Access::None,
            Some('r') => Access::Read,
            Some('w') => Access::Write,
            Some('b') => Access::Both,
            _ => return Err(bad),
        };
        let digits = chars.as_str();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad);
        }
        let domid = digits.parse::<u32>().map_err(|_| bad)?;
        Ok(Perm { domid, access })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn parse_and_print() {
        for s in ["n0", "r5", "w7", "b65535"] {
            assert_eq!(s.parse::<Perm>().unwrap().to_string(), s);
        }
        for s in ["", "n", "x0", "r-1", "r0x10", "r 1", "b99999999999"] {
            assert!(s.parse::<Perm>().is_err(), "{s:?}");
        }
    }
}
