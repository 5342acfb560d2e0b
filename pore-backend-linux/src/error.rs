//! The backend's error type and how errnos classify.

use std::borrow::Cow;
use std::io;
use std::path::{Path, PathBuf};

use pore_core::{CoreError, Error, ErrorKind};

/// The Xen device files and `/proc/xen` entries this crate opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Device {
    /// `/dev/xen/evtchn` (module `xen-evtchn`).
    Evtchn,
    /// `/dev/xen/gntalloc` (module `xen-gntalloc`).
    Gntalloc,
    /// `/dev/xen/gntdev` (module `xen-gntdev`).
    Gntdev,
    /// `/dev/xen/xenbus` (the kernel's xenbus frontend, built in).
    Xenbus,
    /// `/proc/xen/xsd_kva` and `/proc/xen/xsd_port` (xenfs, in the store's domain).
    StorePage,
}

impl Device {
    /// What to check when the device is missing.
    pub const fn missing_hint(self) -> &'static str {
        match self {
            Device::Evtchn => {
                "is this a Xen domain? is the xen-evtchn module loaded (modprobe xen-evtchn)?"
            }
            Device::Gntalloc => {
                "is this a Xen domain? is the xen-gntalloc module loaded (modprobe xen-gntalloc)?"
            }
            Device::Gntdev => {
                "is this a Xen domain? is the xen-gntdev module loaded (modprobe xen-gntdev)?"
            }
            Device::Xenbus => {
                "is this a Xen domain, and is xenstored running (the kernel's xenbus frontend \
                 answers ENOENT until the store is up)?"
            }
            Device::StorePage => {
                "is this the domain that runs xenstored (normally dom0), with xenfs mounted \
                 (modprobe xenfs; mount -t xenfs xenfs /proc/xen)?"
            }
        }
    }
}

/// The hint given when opening a device is refused.
pub const DENIED_HINT: &str =
    "the Xen device files need root (or a udev rule giving your group access to /dev/xen/*)";

/// What went wrong in the Linux backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinuxError {
    /// A device file does not exist (or its driver is not there).
    #[error("{}: not found — {}", path.display(), device.missing_hint())]
    DeviceMissing {
        /// Which device.
        device: Device,
        /// The path tried.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Opening a device file was refused.
    #[error("{}: permission denied — {DENIED_HINT}", path.display())]
    DeviceDenied {
        /// The path tried.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A system call on a device failed.
    #[error("{op}: {source}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// How this failure classifies (depends on the operation as much as on the errno).
        kind: ErrorKind,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The backend refused a request itself (before asking the kernel).
    #[error("{message}: {kind}")]
    Refused {
        /// How the refusal classifies.
        kind: ErrorKind,
        /// What was refused and why.
        message: Cow<'static, str>,
    },
    /// An error raised by a generic layer (the pore, a ring, a protocol crate).
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl Error for LinuxError {
    fn kind(&self) -> ErrorKind {
        match self {
            LinuxError::DeviceMissing { .. } => ErrorKind::Unsupported,
            LinuxError::DeviceDenied { .. } => ErrorKind::PermissionDenied,
            LinuxError::Os { kind, .. } | LinuxError::Refused { kind, .. } => *kind,
            LinuxError::Core(e) => e.kind(),
        }
    }
}

/// The backend's result type.
pub type Result<T, E = LinuxError> = core::result::Result<T, E>;

impl LinuxError {
    pub(crate) fn refused(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        LinuxError::Refused {
            kind,
            message: message.into(),
        }
    }

    /// A failed system call classified by its errno alone.
    pub(crate) fn os(op: &'static str) -> impl FnOnce(io::Error) -> LinuxError {
        move |source| LinuxError::Os {
            op,
            kind: errno_kind(&source),
            source,
        }
    }

    /// A failed system call whose errno means `kind` in this operation (e.g. `EINVAL` from
    /// binding a port that was not offered to us means "not found").
    pub(crate) fn os_as(
        op: &'static str,
        errno: rustix::io::Errno,
        kind: ErrorKind,
    ) -> impl FnOnce(io::Error) -> LinuxError {
        move |source| {
            let kind = if source.raw_os_error() == Some(errno.raw_os_error()) {
                kind
            } else {
                errno_kind(&source)
            };
            LinuxError::Os { op, kind, source }
        }
    }

    /// An error from opening `path` (the device `device`).
    pub(crate) fn open(device: Device, path: &Path, source: io::Error) -> LinuxError {
        use rustix::io::Errno;
        let path = path.to_path_buf();
        match source.raw_os_error().map(Errno::from_raw_os_error) {
            Some(Errno::NOENT | Errno::NODEV | Errno::NXIO) => LinuxError::DeviceMissing {
                device,
                path,
                source,
            },
            Some(Errno::ACCESS | Errno::PERM) => LinuxError::DeviceDenied { path, source },
            _ => LinuxError::Os {
                op: "opening a Xen device",
                kind: errno_kind(&source),
                source,
            },
        }
    }
}

/// How an errno from a Xen device classifies when the operation gives it no finer meaning.
pub(crate) fn errno_kind(e: &io::Error) -> ErrorKind {
    use rustix::io::Errno;
    let Some(raw) = e.raw_os_error() else {
        return match e.kind() {
            io::ErrorKind::InvalidInput => ErrorKind::InvalidInput,
            io::ErrorKind::TimedOut => ErrorKind::TimedOut,
            _ => ErrorKind::Io,
        };
    };
    match Errno::from_raw_os_error(raw) {
        Errno::NOENT | Errno::SRCH | Errno::NXIO | Errno::NODEV => ErrorKind::NotFound,
        Errno::PERM | Errno::ACCESS => ErrorKind::PermissionDenied,
        Errno::NOSPC | Errno::NOMEM | Errno::MFILE | Errno::NFILE | Errno::DQUOT => {
            ErrorKind::ResourceExhausted
        }
        Errno::AGAIN => ErrorKind::WouldBlock,
        Errno::BUSY => ErrorKind::Busy,
        Errno::INVAL | Errno::FAULT | Errno::TOOBIG => ErrorKind::InvalidInput,
        Errno::NOTTY | Errno::NOSYS | Errno::OPNOTSUPP => ErrorKind::Unsupported,
        Errno::TIMEDOUT => ErrorKind::TimedOut,
        Errno::NOTCONN | Errno::BADF => ErrorKind::Closed,
        _ => ErrorKind::Io,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::io::Errno;

    fn errno(e: Errno) -> io::Error {
        io::Error::from_raw_os_error(e.raw_os_error())
    }

    #[test]
    fn errnos_classify() {
        assert_eq!(errno_kind(&errno(Errno::NOENT)), ErrorKind::NotFound);
        assert_eq!(errno_kind(&errno(Errno::SRCH)), ErrorKind::NotFound);
        assert_eq!(errno_kind(&errno(Errno::PERM)), ErrorKind::PermissionDenied);
        assert_eq!(
            errno_kind(&errno(Errno::NOSPC)),
            ErrorKind::ResourceExhausted
        );
        assert_eq!(errno_kind(&errno(Errno::BUSY)), ErrorKind::Busy);
        assert_eq!(errno_kind(&errno(Errno::INVAL)), ErrorKind::InvalidInput);
        assert_eq!(errno_kind(&errno(Errno::NOTTY)), ErrorKind::Unsupported);
        assert_eq!(errno_kind(&errno(Errno::NOTCONN)), ErrorKind::Closed);
        assert_eq!(errno_kind(&errno(Errno::IO)), ErrorKind::Io);
    }

    #[test]
    fn operation_specific_meaning_wins_for_its_errno_only() {
        let e = LinuxError::os_as("bind", Errno::INVAL, ErrorKind::NotFound)(errno(Errno::INVAL));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = LinuxError::os_as("bind", Errno::INVAL, ErrorKind::NotFound)(errno(Errno::PERM));
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    }

    #[test]
    fn open_errors_name_the_device_and_what_to_check() {
        let e = LinuxError::open(
            Device::Gntalloc,
            Path::new("/dev/xen/gntalloc"),
            errno(Errno::NOENT),
        );
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert_eq!(
            e.to_string(),
            "/dev/xen/gntalloc: not found — is this a Xen domain? is the xen-gntalloc module \
             loaded (modprobe xen-gntalloc)?"
        );
        let e = LinuxError::open(
            Device::Evtchn,
            Path::new("/dev/xen/evtchn"),
            errno(Errno::ACCESS),
        );
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("need root"), "{e}");
        let core = LinuxError::from(CoreError::new(ErrorKind::TimedOut, "waiting"));
        assert!(core.is_retryable());
    }
}
