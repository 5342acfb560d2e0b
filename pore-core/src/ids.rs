//! Identifiers of Xen objects and page constants.

use core::fmt;

/// Size of a Xen page in bytes (x86 and Arm guests alike use 4 KiB grant pages).
pub const PAGE_SIZE: usize = 4096;
/// `log2(PAGE_SIZE)`.
pub const PAGE_SHIFT: u32 = 12;

/// A Xen domain id. Domain 0 is the privileged control domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomId(pub u16);

impl DomId {
    /// The control domain.
    pub const DOM0: DomId = DomId(0);
    /// `DOMID_SELF` (0x7ff0): "the calling domain" in hypercalls.
    pub const SELF: DomId = DomId(0x7ff0);
    /// The first id Xen reserves (`DOMID_FIRST_RESERVED`); ids from here up are not domains.
    pub const FIRST_RESERVED: u16 = 0x7ff0;

    /// Whether this id can name a real domain (below `DOMID_FIRST_RESERVED`).
    pub const fn is_valid_domain(self) -> bool {
        self.0 < Self::FIRST_RESERVED
    }
}

impl fmt::Display for DomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An event channel port, local to the domain that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(pub u32);

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A grant reference: names one page a domain granted to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantRef(pub u32);

impl fmt::Display for GrantRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
