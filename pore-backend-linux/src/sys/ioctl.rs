//! The Xen device ioctls: numbers, argument layouts and the one place they are issued.
//!
//! Every number is recomputed here from `_IOC(dir, type, nr, size)` and the argument struct's
//! size (Linux `include/uapi/xen/{evtchn,gntalloc,gntdev}.h`); the unit tests assert each
//! against the value the kernel headers give (published crates have had them wrong: Xen's
//! ioctls use `_IOC_NONE` **with** the struct size, which `_IO()`-style helpers drop).
//!
//! The wrappers are safe: each passes a pointer to a buffer of exactly the layout its opcode
//! promises the driver, valid for the whole call.

use std::io;
use std::os::fd::BorrowedFd;

use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};

/// `_IOC_NONE`: the direction all the Xen device ioctls use.
pub(crate) const IOC_NONE: u32 = 0;

/// `_IOC(dir, type, nr, size)` as Linux encodes it on x86 and Arm:
/// `dir << 30 | size << 16 | type << 8 | nr` (size is 14 bits).
pub(crate) const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    assert!(size < (1 << 14), "ioctl argument too large for _IOC");
    (dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

// ---------------------------------------------------------------------------------------
// /dev/xen/evtchn (type 'E')

/// `struct ioctl_evtchn_bind_virq`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct EvtchnBindVirq {
    pub virq: u32,
}

/// `struct ioctl_evtchn_bind_interdomain`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct EvtchnBindInterdomain {
    pub remote_domain: u32,
    pub remote_port: u32,
}

/// `struct ioctl_evtchn_bind_unbound_port`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct EvtchnBindUnboundPort {
    pub remote_domain: u32,
}

/// `struct ioctl_evtchn_unbind` and `struct ioctl_evtchn_notify` (both `{u32 port}`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct EvtchnPort {
    pub port: u32,
}

/// `struct ioctl_evtchn_restrict_domid`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct EvtchnRestrictDomid {
    pub domid: u16,
}

const E: u8 = b'E';
/// `IOCTL_EVTCHN_BIND_VIRQ` (not used by pore; asserted for completeness).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const IOCTL_EVTCHN_BIND_VIRQ: u32 = ioc(IOC_NONE, E, 0, size_of::<EvtchnBindVirq>());
/// `IOCTL_EVTCHN_BIND_INTERDOMAIN`.
pub(crate) const IOCTL_EVTCHN_BIND_INTERDOMAIN: u32 =
    ioc(IOC_NONE, E, 1, size_of::<EvtchnBindInterdomain>());
/// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`.
pub(crate) const IOCTL_EVTCHN_BIND_UNBOUND_PORT: u32 =
    ioc(IOC_NONE, E, 2, size_of::<EvtchnBindUnboundPort>());
/// `IOCTL_EVTCHN_UNBIND`.
pub(crate) const IOCTL_EVTCHN_UNBIND: u32 = ioc(IOC_NONE, E, 3, size_of::<EvtchnPort>());
/// `IOCTL_EVTCHN_NOTIFY`.
pub(crate) const IOCTL_EVTCHN_NOTIFY: u32 = ioc(IOC_NONE, E, 4, size_of::<EvtchnPort>());
/// `IOCTL_EVTCHN_RESET` (no argument).
pub(crate) const IOCTL_EVTCHN_RESET: u32 = ioc(IOC_NONE, E, 5, 0);
/// `IOCTL_EVTCHN_RESTRICT_DOMID` (not used by pore; asserted for completeness).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const IOCTL_EVTCHN_RESTRICT_DOMID: u32 =
    ioc(IOC_NONE, E, 6, size_of::<EvtchnRestrictDomid>());

// ---------------------------------------------------------------------------------------
// /dev/xen/gntalloc (type 'G')

/// `struct ioctl_gntalloc_alloc_gref` with room for one ref (its C `sizeof`, which the
/// opcode encodes whatever `count` is; the kernel writes `count` ids from offset 16).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct GntallocAllocGref {
    pub domid: u16,
    pub flags: u16,
    pub count: u32,
    pub index: u64,
    pub gref_ids: [u32; 1],
}

/// `struct ioctl_gntalloc_dealloc_gref`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct GntallocDeallocGref {
    pub index: u64,
    pub count: u32,
}

/// `struct ioctl_gntalloc_unmap_notify` and `struct ioctl_gntdev_unmap_notify` (same layout).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UnmapNotifyArg {
    pub index: u64,
    pub action: u32,
    pub event_channel_port: u32,
}

/// `GNTALLOC_FLAG_WRITABLE`: the grantee may write (else read-only).
pub(crate) const GNTALLOC_FLAG_WRITABLE: u16 = 1;
/// `UNMAP_NOTIFY_CLEAR_BYTE`: zero the byte at the notify offset.
pub(crate) const UNMAP_NOTIFY_CLEAR_BYTE: u32 = 0x1;
/// `UNMAP_NOTIFY_SEND_EVENT`: signal the notify port.
pub(crate) const UNMAP_NOTIFY_SEND_EVENT: u32 = 0x2;

const G: u8 = b'G';
/// `IOCTL_GNTALLOC_ALLOC_GREF`.
pub(crate) const IOCTL_GNTALLOC_ALLOC_GREF: u32 =
    ioc(IOC_NONE, G, 5, size_of::<GntallocAllocGref>());
/// `IOCTL_GNTALLOC_DEALLOC_GREF`.
pub(crate) const IOCTL_GNTALLOC_DEALLOC_GREF: u32 =
    ioc(IOC_NONE, G, 6, size_of::<GntallocDeallocGref>());
/// `IOCTL_GNTALLOC_SET_UNMAP_NOTIFY`.
pub(crate) const IOCTL_GNTALLOC_SET_UNMAP_NOTIFY: u32 =
    ioc(IOC_NONE, G, 7, size_of::<UnmapNotifyArg>());

// ---------------------------------------------------------------------------------------
// /dev/xen/gntdev (type 'G')

/// `struct ioctl_gntdev_grant_ref`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct GntdevGrantRef {
    pub domid: u32,
    pub gref: u32,
}

/// `struct ioctl_gntdev_map_grant_ref` with room for one ref (its C `sizeof`, which the
/// opcode encodes whatever `count` is; the kernel reads `count` refs from offset 16).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct GntdevMapGrantRef {
    pub count: u32,
    pub pad: u32,
    pub index: u64,
    pub refs: [GntdevGrantRef; 1],
}

/// `struct ioctl_gntdev_unmap_grant_ref`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct GntdevUnmapGrantRef {
    pub index: u64,
    pub count: u32,
    pub pad: u32,
}

/// `IOCTL_GNTDEV_MAP_GRANT_REF`.
pub(crate) const IOCTL_GNTDEV_MAP_GRANT_REF: u32 =
    ioc(IOC_NONE, G, 0, size_of::<GntdevMapGrantRef>());
/// `IOCTL_GNTDEV_UNMAP_GRANT_REF`.
pub(crate) const IOCTL_GNTDEV_UNMAP_GRANT_REF: u32 =
    ioc(IOC_NONE, G, 1, size_of::<GntdevUnmapGrantRef>());
/// `IOCTL_GNTDEV_SET_UNMAP_NOTIFY`.
pub(crate) const IOCTL_GNTDEV_SET_UNMAP_NOTIFY: u32 =
    ioc(IOC_NONE, G, 7, size_of::<UnmapNotifyArg>());

/// Header bytes before the variable arrays of `ALLOC_GREF` and `MAP_GRANT_REF`.
pub(crate) const VAR_HEADER: usize = 16;

// ---------------------------------------------------------------------------------------
// Issuing them

/// An ioctl whose argument is a pointer to a caller-owned buffer and whose return value is
/// the driver's (the evtchn bind ioctls return the new port there).
struct Raw {
    opcode: u32,
    arg: *mut core::ffi::c_void,
}

// SAFETY: every `Raw` built in this module pairs an opcode with a pointer to a live buffer of
// the layout and size that opcode's driver reads and writes (or null for RESET, which takes
// no argument); the output is the plain return value, nothing is read back through the
// pointer by rustix.
unsafe impl Ioctl for Raw {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode as Opcode
    }

    fn as_ptr(&mut self) -> *mut core::ffi::c_void {
        self.arg
    }

    unsafe fn output_from_ptr(
        out: IoctlOutput,
        _extract_output: *mut core::ffi::c_void,
    ) -> rustix::io::Result<IoctlOutput> {
        Ok(out)
    }
}

fn call<T>(fd: BorrowedFd<'_>, opcode: u32, arg: &mut T) -> io::Result<i32> {
    let raw = Raw {
        opcode,
        arg: (arg as *mut T).cast(),
    };
    // SAFETY: callers in this module pass the argument struct `T` that `opcode` was computed
    // from (`ioc(.., size_of::<T>())`), exclusively borrowed for the call; the Xen drivers
    // only copy that many bytes in and out of it.
    Ok(unsafe { rustix::ioctl::ioctl(fd, raw) }?)
}

fn call_buf(fd: BorrowedFd<'_>, opcode: u32, buf: &mut [u8], min: usize) -> io::Result<i32> {
    assert!(buf.len() >= min, "ioctl buffer shorter than its fixed part");
    let raw = Raw {
        opcode,
        arg: buf.as_mut_ptr().cast(),
    };
    // SAFETY: `buf` is exclusively borrowed for the call and at least as long as both the
    // fixed struct the opcode encodes (`min`) and the variable array the header's `count`
    // announces (built by the callers below); the drivers copy no more than that.
    Ok(unsafe { rustix::ioctl::ioctl(fd, raw) }?)
}

fn port_of(ret: i32) -> io::Result<u32> {
    u32::try_from(ret).map_err(|_| io::Error::other("evtchn driver returned a negative port"))
}

/// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`: a fresh port `remote` may bind; returns it.
pub(crate) fn evtchn_bind_unbound_port(fd: BorrowedFd<'_>, remote: u16) -> io::Result<u32> {
    let mut arg = EvtchnBindUnboundPort {
        remote_domain: remote.into(),
    };
    port_of(call(fd, IOCTL_EVTCHN_BIND_UNBOUND_PORT, &mut arg)?)
}

/// `IOCTL_EVTCHN_BIND_INTERDOMAIN`: binds to `remote`'s unbound `port`; returns our port.
pub(crate) fn evtchn_bind_interdomain(
    fd: BorrowedFd<'_>,
    remote: u16,
    remote_port: u32,
) -> io::Result<u32> {
    let mut arg = EvtchnBindInterdomain {
        remote_domain: remote.into(),
        remote_port,
    };
    port_of(call(fd, IOCTL_EVTCHN_BIND_INTERDOMAIN, &mut arg)?)
}

/// `IOCTL_EVTCHN_UNBIND`.
pub(crate) fn evtchn_unbind(fd: BorrowedFd<'_>, port: u32) -> io::Result<()> {
    call(fd, IOCTL_EVTCHN_UNBIND, &mut EvtchnPort { port }).map(drop)
}

/// `IOCTL_EVTCHN_NOTIFY`.
pub(crate) fn evtchn_notify(fd: BorrowedFd<'_>, port: u32) -> io::Result<()> {
    call(fd, IOCTL_EVTCHN_NOTIFY, &mut EvtchnPort { port }).map(drop)
}

/// `IOCTL_EVTCHN_RESET`: clears the pending-port ring after an overflow.
pub(crate) fn evtchn_reset(fd: BorrowedFd<'_>) -> io::Result<()> {
    let raw = Raw {
        opcode: IOCTL_EVTCHN_RESET,
        arg: core::ptr::null_mut(),
    };
    // SAFETY: RESET takes no argument (size 0 in its opcode); the driver ignores the pointer.
    unsafe { rustix::ioctl::ioctl(fd, raw) }?;
    Ok(())
}

/// The request buffer of `IOCTL_GNTALLOC_ALLOC_GREF` for `count` pages.
pub(crate) fn alloc_gref_request(domid: u16, flags: u16, count: u32) -> Vec<u8> {
    let len = (VAR_HEADER + 4 * count as usize).max(size_of::<GntallocAllocGref>());
    let mut buf = vec![0u8; len];
    buf[0..2].copy_from_slice(&domid.to_ne_bytes());
    buf[2..4].copy_from_slice(&flags.to_ne_bytes());
    buf[4..8].copy_from_slice(&count.to_ne_bytes());
    buf
}

/// `IOCTL_GNTALLOC_ALLOC_GREF`: `count` zeroed pages granted to `domid`; returns the mmap
/// offset of the first and the grant refs in page order.
pub(crate) fn gntalloc_alloc_gref(
    fd: BorrowedFd<'_>,
    domid: u16,
    writable: bool,
    count: u32,
) -> io::Result<(u64, Vec<u32>)> {
    let flags = if writable { GNTALLOC_FLAG_WRITABLE } else { 0 };
    let mut buf = alloc_gref_request(domid, flags, count);
    call_buf(
        fd,
        IOCTL_GNTALLOC_ALLOC_GREF,
        &mut buf,
        size_of::<GntallocAllocGref>(),
    )?;
    let index = u64::from_ne_bytes(buf[8..16].try_into().expect("8 bytes"));
    let refs = buf[VAR_HEADER..VAR_HEADER + 4 * count as usize]
        .chunks_exact(4)
        .map(|c| u32::from_ne_bytes(c.try_into().expect("4 bytes")))
        .collect();
    Ok((index, refs))
}

/// `IOCTL_GNTALLOC_DEALLOC_GREF`.
pub(crate) fn gntalloc_dealloc_gref(fd: BorrowedFd<'_>, index: u64, count: u32) -> io::Result<()> {
    call(
        fd,
        IOCTL_GNTALLOC_DEALLOC_GREF,
        &mut GntallocDeallocGref { index, count },
    )
    .map(drop)
}

/// `IOCTL_GNTALLOC_SET_UNMAP_NOTIFY` (`index` = mmap offset of the page plus the byte).
pub(crate) fn gntalloc_set_unmap_notify(
    fd: BorrowedFd<'_>,
    index: u64,
    action: u32,
    port: u32,
) -> io::Result<()> {
    let mut arg = UnmapNotifyArg {
        index,
        action,
        event_channel_port: port,
    };
    call(fd, IOCTL_GNTALLOC_SET_UNMAP_NOTIFY, &mut arg).map(drop)
}

/// The request buffer of `IOCTL_GNTDEV_MAP_GRANT_REF` for `refs` = `(domid, ref)` pairs.
pub(crate) fn map_grant_ref_request(refs: &[(u16, u32)]) -> Vec<u8> {
    let len = (VAR_HEADER + 8 * refs.len()).max(size_of::<GntdevMapGrantRef>());
    let mut buf = vec![0u8; len];
    buf[0..4].copy_from_slice(&(refs.len() as u32).to_ne_bytes());
    for (i, (domid, gref)) in refs.iter().enumerate() {
        let at = VAR_HEADER + 8 * i;
        buf[at..at + 4].copy_from_slice(&u32::from(*domid).to_ne_bytes());
        buf[at + 4..at + 8].copy_from_slice(&gref.to_ne_bytes());
    }
    buf
}

/// `IOCTL_GNTDEV_MAP_GRANT_REF`: records `refs` for mapping; returns the mmap offset. The
/// mapping itself happens at `mmap`.
pub(crate) fn gntdev_map_grant_ref(fd: BorrowedFd<'_>, refs: &[(u16, u32)]) -> io::Result<u64> {
    if u32::try_from(refs.len()).is_err() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut buf = map_grant_ref_request(refs);
    call_buf(
        fd,
        IOCTL_GNTDEV_MAP_GRANT_REF,
        &mut buf,
        size_of::<GntdevMapGrantRef>(),
    )?;
    Ok(u64::from_ne_bytes(buf[8..16].try_into().expect("8 bytes")))
}

/// `IOCTL_GNTDEV_UNMAP_GRANT_REF` (after `munmap`).
pub(crate) fn gntdev_unmap_grant_ref(fd: BorrowedFd<'_>, index: u64, count: u32) -> io::Result<()> {
    let mut arg = GntdevUnmapGrantRef {
        index,
        count,
        pad: 0,
    };
    call(fd, IOCTL_GNTDEV_UNMAP_GRANT_REF, &mut arg).map(drop)
}

/// `IOCTL_GNTDEV_SET_UNMAP_NOTIFY` (`index` = mmap offset of the mapping plus the byte).
pub(crate) fn gntdev_set_unmap_notify(
    fd: BorrowedFd<'_>,
    index: u64,
    action: u32,
    port: u32,
) -> io::Result<()> {
    let mut arg = UnmapNotifyArg {
        index,
        action,
        event_channel_port: port,
    };
    call(fd, IOCTL_GNTDEV_SET_UNMAP_NOTIFY, &mut arg).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;
    use rustix::ioctl::{opcode, Direction};

    /// The numbers as the kernel's uapi headers give them on x86_64 (`docs/protocol-facts.md`
    /// §4, checked with gcc against linux-libc-dev 6.1).
    #[test]
    fn numbers_match_the_kernel_headers() {
        assert_eq!(IOCTL_EVTCHN_BIND_VIRQ, 0x0004_4500);
        assert_eq!(IOCTL_EVTCHN_BIND_INTERDOMAIN, 0x0008_4501);
        assert_eq!(IOCTL_EVTCHN_BIND_UNBOUND_PORT, 0x0004_4502);
        assert_eq!(IOCTL_EVTCHN_UNBIND, 0x0004_4503);
        assert_eq!(IOCTL_EVTCHN_NOTIFY, 0x0004_4504);
        assert_eq!(IOCTL_EVTCHN_RESET, 0x0000_4505);
        assert_eq!(IOCTL_EVTCHN_RESTRICT_DOMID, 0x0002_4506);
        assert_eq!(IOCTL_GNTALLOC_ALLOC_GREF, 0x0018_4705);
        assert_eq!(IOCTL_GNTALLOC_DEALLOC_GREF, 0x0010_4706);
        assert_eq!(IOCTL_GNTALLOC_SET_UNMAP_NOTIFY, 0x0010_4707);
        assert_eq!(IOCTL_GNTDEV_MAP_GRANT_REF, 0x0018_4700);
        assert_eq!(IOCTL_GNTDEV_UNMAP_GRANT_REF, 0x0010_4701);
        assert_eq!(IOCTL_GNTDEV_SET_UNMAP_NOTIFY, 0x0010_4707);
    }

    /// An independent encoder (rustix's `_IOC`) agrees, and the size-less `_IO` form — the
    /// mistake published crates made — does not.
    #[test]
    fn numbers_match_rustix_ioc_and_differ_from_io() {
        let ioc = |nr, ty, size| opcode::from_components(Direction::None, ty, nr, size) as u32;
        assert_eq!(IOCTL_EVTCHN_BIND_INTERDOMAIN, ioc(1, b'E', 8));
        assert_eq!(IOCTL_GNTALLOC_ALLOC_GREF, ioc(5, b'G', 24));
        assert_eq!(IOCTL_GNTDEV_MAP_GRANT_REF, ioc(0, b'G', 24));
        assert_ne!(IOCTL_EVTCHN_NOTIFY, opcode::none(b'E', 4) as u32);
        assert_ne!(IOCTL_GNTDEV_MAP_GRANT_REF, opcode::none(b'G', 0) as u32);
    }

    #[test]
    fn struct_layouts_match_the_kernel_headers() {
        assert_eq!(size_of::<EvtchnBindVirq>(), 4);
        assert_eq!(size_of::<EvtchnBindInterdomain>(), 8);
        assert_eq!(offset_of!(EvtchnBindInterdomain, remote_port), 4);
        assert_eq!(size_of::<EvtchnBindUnboundPort>(), 4);
        assert_eq!(size_of::<EvtchnPort>(), 4);
        assert_eq!(size_of::<EvtchnRestrictDomid>(), 2);

        assert_eq!(size_of::<GntallocAllocGref>(), 24);
        assert_eq!(offset_of!(GntallocAllocGref, domid), 0);
        assert_eq!(offset_of!(GntallocAllocGref, flags), 2);
        assert_eq!(offset_of!(GntallocAllocGref, count), 4);
        assert_eq!(offset_of!(GntallocAllocGref, index), 8);
        assert_eq!(offset_of!(GntallocAllocGref, gref_ids), VAR_HEADER);
        assert_eq!(size_of::<GntallocDeallocGref>(), 16);
        assert_eq!(offset_of!(GntallocDeallocGref, count), 8);
        assert_eq!(size_of::<UnmapNotifyArg>(), 16);
        assert_eq!(offset_of!(UnmapNotifyArg, action), 8);
        assert_eq!(offset_of!(UnmapNotifyArg, event_channel_port), 12);

        assert_eq!(size_of::<GntdevGrantRef>(), 8);
        assert_eq!(offset_of!(GntdevGrantRef, gref), 4);
        assert_eq!(size_of::<GntdevMapGrantRef>(), 24);
        assert_eq!(offset_of!(GntdevMapGrantRef, index), 8);
        assert_eq!(offset_of!(GntdevMapGrantRef, refs), VAR_HEADER);
        assert_eq!(size_of::<GntdevUnmapGrantRef>(), 16);
        assert_eq!(offset_of!(GntdevUnmapGrantRef, count), 8);
    }

    #[test]
    fn variable_requests_are_laid_out_like_the_structs() {
        // One page: exactly the C struct's size; the header fields at their offsets.
        let one = alloc_gref_request(7, GNTALLOC_FLAG_WRITABLE, 1);
        assert_eq!(one.len(), 24);
        assert_eq!(&one[0..2], &7u16.to_ne_bytes());
        assert_eq!(&one[2..4], &1u16.to_ne_bytes());
        assert_eq!(&one[4..8], &1u32.to_ne_bytes());
        // Eight pages: room for eight ids after the 16-byte header.
        assert_eq!(alloc_gref_request(0, 0, 8).len(), 16 + 32);

        let refs = map_grant_ref_request(&[(3, 100), (3, 101)]);
        assert_eq!(refs.len(), 16 + 16);
        assert_eq!(&refs[0..4], &2u32.to_ne_bytes());
        assert_eq!(&refs[16..20], &3u32.to_ne_bytes());
        assert_eq!(&refs[20..24], &100u32.to_ne_bytes());
        assert_eq!(&refs[28..32], &101u32.to_ne_bytes());
        assert_eq!(map_grant_ref_request(&[(0, 1)]).len(), 24);
    }

    #[test]
    fn ioctls_on_a_non_xen_file_fail_cleanly() {
        // A plain file is no Xen device: the kernel answers ENOTTY, never anything worse.
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        let e = evtchn_notify(f.as_fd(), 1).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::NOTTY.raw_os_error())
        );
        let e = gntalloc_alloc_gref(f.as_fd(), 0, true, 2).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::NOTTY.raw_os_error())
        );
        let e = gntdev_map_grant_ref(f.as_fd(), &[(0, 1)]).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::NOTTY.raw_os_error())
        );
    }
}
