//! Xen from Linux user space: `/dev/xen/evtchn`, `/dev/xen/gntalloc`, `/dev/xen/gntdev` and
//! `/dev/xen/xenbus` behind the pore-core backend traits (not yet implemented).
