//! A client on Debian's libxenstore (`xs_open(XS_OPEN_SOCKETONLY)`, `xs_read`, ...): the
//! client library of Xen's own tools, so that the xenstored bench measures the daemons
//! through it too. The only unsafe code of the xenstored benches.

use std::ffi::{c_char, c_uint, c_ulong, c_void, CString};
use std::path::Path;

/// `struct xs_handle` (opaque).
#[repr(C)]
struct XsHandle {
    _opaque: [u8; 0],
}

/// `XS_OPEN_SOCKETONLY` of `xenstore.h`: no fallback to `/dev/xen/xenbus`.
const XS_OPEN_SOCKETONLY: c_ulong = 1 << 1;

#[link(name = "xenstore")]
extern "C" {
    fn xs_open(flags: c_ulong) -> *mut XsHandle;
    fn xs_close(h: *mut XsHandle);
    fn xs_read(h: *mut XsHandle, t: u32, path: *const c_char, len: *mut c_uint) -> *mut c_void;
    fn xs_write(
        h: *mut XsHandle,
        t: u32,
        path: *const c_char,
        data: *const c_void,
        len: c_uint,
    ) -> bool;
    fn xs_directory(
        h: *mut XsHandle,
        t: u32,
        path: *const c_char,
        num: *mut c_uint,
    ) -> *mut *mut c_char;
    fn xs_rm(h: *mut XsHandle, t: u32, path: *const c_char) -> bool;
    fn xs_transaction_start(h: *mut XsHandle) -> u32;
    fn xs_transaction_end(h: *mut XsHandle, t: u32, abort: bool) -> bool;
}

/// One libxenstore connection to a daemon's unix socket.
pub struct Xs {
    h: *mut XsHandle,
}

fn cpath(p: &str) -> CString {
    CString::new(p).expect("a path without NUL")
}

impl Xs {
    /// Opens a connection to the daemon at `sock`. libxenstore finds the socket in
    /// `XENSTORED_PATH`, which this sets: call it before other threads read the environment.
    pub fn connect(sock: &Path) -> Option<Self> {
        std::env::set_var("XENSTORED_PATH", sock);
        // SAFETY: xs_open takes flags only; it returns NULL or a handle we own until
        // xs_close (in Drop).
        let h = unsafe { xs_open(XS_OPEN_SOCKETONLY) };
        (!h.is_null()).then_some(Xs { h })
    }

    /// Reads `path` into `out` (cleared first); false on an error reply.
    pub fn read(&mut self, t: u32, path: &str, out: &mut Vec<u8>) -> bool {
        let p = cpath(path);
        let mut len: c_uint = 0;
        // SAFETY: `self.h` is a live handle, `p` a NUL-terminated string and `len` a valid
        // out-parameter, all for the duration of the call.
        let v = unsafe { xs_read(self.h, t, p.as_ptr(), &mut len) };
        out.clear();
        if v.is_null() {
            return false;
        }
        // SAFETY: on success xs_read returns a malloc'd buffer of `len` bytes (plus a NUL),
        // ours to free; it is read once here and freed once.
        unsafe {
            out.extend_from_slice(std::slice::from_raw_parts(v.cast::<u8>(), len as usize));
            libc::free(v);
        }
        true
    }

    /// Writes `value` at `path`.
    pub fn write(&mut self, t: u32, path: &str, value: &[u8]) -> bool {
        let p = cpath(path);
        // SAFETY: live handle, NUL-terminated path, `value` valid for `value.len()` bytes.
        unsafe {
            xs_write(
                self.h,
                t,
                p.as_ptr(),
                value.as_ptr().cast(),
                value.len() as c_uint,
            )
        }
    }

    /// Lists `path`: the number of children, None on an error reply.
    pub fn directory(&mut self, t: u32, path: &str) -> Option<usize> {
        let p = cpath(path);
        let mut num: c_uint = 0;
        // SAFETY: live handle, NUL-terminated path, valid out-parameter.
        let v = unsafe { xs_directory(self.h, t, p.as_ptr(), &mut num) };
        if v.is_null() {
            return None;
        }
        // SAFETY: on success xs_directory returns one malloc'd block (the array and its
        // strings), ours to free once.
        unsafe { libc::free(v.cast()) };
        Some(num as usize)
    }

    /// Removes `path`.
    pub fn rm(&mut self, t: u32, path: &str) -> bool {
        let p = cpath(path);
        // SAFETY: live handle, NUL-terminated path.
        unsafe { xs_rm(self.h, t, p.as_ptr()) }
    }

    /// Starts a transaction (0 on failure).
    pub fn tx_start(&mut self) -> u32 {
        // SAFETY: live handle.
        unsafe { xs_transaction_start(self.h) }
    }

    /// Ends transaction `t`, committing it unless `abort`; false on failure (`EAGAIN`:
    /// a conflict).
    pub fn tx_end(&mut self, t: u32, abort: bool) -> bool {
        // SAFETY: live handle; `t` is a transaction of this handle.
        unsafe { xs_transaction_end(self.h, t, abort) }
    }
}

impl Drop for Xs {
    fn drop(&mut self) {
        // SAFETY: the handle came from xs_open and is closed once, here.
        unsafe { xs_close(self.h) }
    }
}
