//! SIGTERM and SIGINT as a clean shutdown for the long-running commands (`pore xenstored`,
//! `pore sim`): the only `unsafe` of the command, in one place.

use std::time::Duration;

/// SIGTERM and SIGINT, blocked in every thread and waited for by the main one.
pub struct Signals(libc::sigset_t);

impl Signals {
    /// Blocks the signals; call before any thread starts (threads inherit the mask).
    pub fn block() -> std::io::Result<Self> {
        // SAFETY: sigset_t is plain data for which all-zero is a valid value; it is
        // initialised by sigemptyset before use. The calls only read and write `set`
        // and this thread's signal mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if r != 0 {
                return Err(std::io::Error::from_raw_os_error(r));
            }
            Ok(Signals(set))
        }
    }

    /// Waits up to `timeout` for one of the signals; its number if one came.
    pub fn wait(&self, timeout: Duration) -> Option<i32> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as _,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `self.0` and `ts` are valid for the duration of the call; a null
        // siginfo pointer is allowed.
        let r = unsafe { libc::sigtimedwait(&self.0, std::ptr::null_mut(), &ts) };
        (r > 0).then_some(r)
    }
}
