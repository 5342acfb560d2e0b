//! Event channels over `/dev/xen/evtchn`, with a per-device demultiplexer.
//!
//! One open device multiplexes every port bound through it. The driver's protocol
//! (`drivers/xen/evtchn.c`):
//! * a `read` returns the ports that fired, as native-endian `u32`s;
//! * delivery is one-shot: a port that fired is disabled until user space **writes its number
//!   back** (the unmask); forget that and the next event on the port is never delivered;
//! * `poll` reports the fd readable while fired ports are queued.
//!
//! Several threads may wait on different ports of one device at once, so the fd is read by
//! one thread at a time (the *leader*, polling with its own timeout) which records the ports
//! it read in a table and wakes the others (the *followers*, asleep on a condition variable).
//! A wait consumes its port's recorded event and unmasks the port before returning (D6), so an
//! event that arrives after that is queued again by the driver and never lost; one that arrived
//! while the port was masked stays pending in Xen and is delivered at the unmask.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pore_core::{CoreError, ErrorKind, EventChannel, Port, WaitOutcome};
use rustix::io::Errno;

use crate::error::{Device, LinuxError, Result};
use crate::sys::ioctl;

/// Longest single sleep of a follower without a deadline (it re-checks and sleeps again).
const FOREVER_SLICE: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
struct Slot {
    /// The port fired and was read from the device; it stays masked until consumed.
    pending: bool,
}

#[derive(Debug, Default)]
struct Table {
    ports: HashMap<u32, Slot>,
    /// A thread is polling the device (the leader).
    leader: bool,
}

/// One open `/dev/xen/evtchn` and the table of its ports.
#[derive(Debug)]
pub(crate) struct EvtchnDevice {
    fd: OwnedFd,
    table: Mutex<Table>,
    cv: Condvar,
}

impl EvtchnDevice {
    /// Opens the device at `path`, non-blocking (waits poll it).
    pub(crate) fn open(path: &Path) -> Result<Arc<EvtchnDevice>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path)
            .map_err(|e| LinuxError::open(Device::Evtchn, path, e))?;
        Ok(Arc::new(EvtchnDevice {
            fd: file.into(),
            table: Mutex::new(Table::default()),
            cv: Condvar::new(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every update of the table is a single insert, remove or flag change: a panic while
        // holding the lock cannot leave it inconsistent.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Open ports of this device.
    pub(crate) fn ports(&self) -> usize {
        self.lock().ports.len()
    }

    /// Binds a port with `bind` while holding the table, so that no drain can read an event
    /// of the new port before it is in the table.
    fn bind(&self, bind: impl FnOnce(BorrowedFd<'_>) -> Result<u32>) -> Result<u32> {
        let mut t = self.lock();
        let port = bind(self.fd())?;
        t.ports.insert(port, Slot::default());
        Ok(port)
    }

    pub(crate) fn bind_unbound(&self, remote: u16) -> Result<u32> {
        self.bind(|fd| {
            ioctl::evtchn_bind_unbound_port(fd, remote)
                .map_err(LinuxError::os("allocating an unbound event channel"))
        })
    }

    pub(crate) fn bind_interdomain(&self, remote: u16, remote_port: u32) -> Result<u32> {
        // Xen answers EINVAL for a port that does not exist, is not unbound, or was offered to
        // another domain: from here all three mean "no such port for us".
        self.bind(|fd| {
            ioctl::evtchn_bind_interdomain(fd, remote, remote_port).map_err(LinuxError::os_as(
                "binding an interdomain event channel (does the port exist, unbound, offered \
                 to this domain?)",
                Errno::INVAL,
                ErrorKind::NotFound,
            ))
        })
    }

    pub(crate) fn unbind(&self, port: u32) -> Result<()> {
        let mut t = self.lock();
        let r = ioctl::evtchn_unbind(self.fd(), port).map_err(LinuxError::os_as(
            "unbinding an event channel",
            Errno::NOTCONN,
            ErrorKind::Closed,
        ));
        t.ports.remove(&port);
        r
    }

    pub(crate) fn notify(&self, port: u32) -> Result<()> {
        ioctl::evtchn_notify(self.fd(), port).map_err(LinuxError::os_as(
            "notifying an event channel",
            Errno::NOTCONN,
            ErrorKind::Closed,
        ))
    }

    /// Writes `port` back to the device: re-enables its delivery.
    fn unmask(&self, port: u32) -> Result<()> {
        loop {
            match rustix::io::write(&self.fd, &port.to_ne_bytes()) {
                Ok(4) => return Ok(()),
                Ok(_) => {
                    return Err(LinuxError::refused(
                        ErrorKind::Io,
                        "the evtchn device took part of a port number",
                    ))
                }
                Err(Errno::INTR) => continue,
                Err(e) => return Err(LinuxError::os("unmasking an event channel")(e.into())),
            }
        }
    }

    /// Reads every queued port without blocking and records it; `true` if any was read.
    fn drain(&self, t: &mut Table) -> Result<bool> {
        let mut buf = [0u8; 4096];
        let mut any = false;
        loop {
            match rustix::io::read(&self.fd, &mut buf) {
                Ok(0) => return Ok(any),
                Ok(n) => {
                    for chunk in buf[..n - n % 4].chunks_exact(4) {
                        let port = u32::from_ne_bytes(chunk.try_into().expect("4 bytes"));
                        // A port unbound since it fired has no slot: nothing to wake.
                        if let Some(slot) = t.ports.get_mut(&port) {
                            slot.pending = true;
                            any = true;
                        }
                    }
                }
                Err(Errno::AGAIN) => return Ok(any),
                Err(Errno::INTR) => continue,
                Err(Errno::FBIG) => {
                    // The driver's ring overflowed (it should not: it grows with the bound
                    // ports). Reset it and treat every port as fired: waiters re-check their
                    // rings, and the unmask at consumption re-enables each port.
                    tracing::warn!("evtchn ring overflow: resetting, every port counts as fired");
                    ioctl::evtchn_reset(self.fd())
                        .map_err(LinuxError::os("resetting the evtchn ring"))?;
                    for slot in t.ports.values_mut() {
                        slot.pending = true;
                    }
                    any = true;
                }
                Err(e) => return Err(LinuxError::os("reading the evtchn device")(e.into())),
            }
        }
    }

    /// Consumes the recorded events of `ports` into `fired` (indexes into `ports`).
    fn take(t: &mut Table, ports: &[u32], fired: &mut Vec<usize>) -> Result<()> {
        for (i, port) in ports.iter().enumerate() {
            let slot = t.ports.get_mut(port).ok_or(CoreError::new(
                ErrorKind::Closed,
                "waiting on an unbound event channel",
            ))?;
            if slot.pending {
                slot.pending = false;
                fired.push(i);
            }
        }
        Ok(())
    }

    /// Waits until one of `ports` fired or `timeout` elapsed; `fired` receives the indexes of
    /// those that fired (empty on timeout). Fired ports are unmasked before returning.
    pub(crate) fn wait_any(
        &self,
        ports: &[u32],
        timeout: Duration,
        fired: &mut Vec<usize>,
    ) -> Result<()> {
        fired.clear();
        // A poll (zero timeout) reads no clock; a wait reads it once for its first round (where
        // the vDSO cannot read the time, as in a Xen PV guest without a stable TSC, each read is
        // a system call: a xenstored's loop polls every guest's port on a wake-up).
        let poll = timeout.is_zero();
        let deadline = if poll {
            None
        } else {
            Instant::now().checked_add(timeout)
        };
        let mut first = true;
        let mut drained = false;
        let mut t = self.lock();
        loop {
            Self::take(&mut t, ports, fired)?;
            if !fired.is_empty() {
                break;
            }
            let left = match deadline {
                _ if poll => Some(Duration::ZERO),
                Some(_) if std::mem::take(&mut first) => Some(timeout),
                Some(d) => Some(d.saturating_duration_since(Instant::now())),
                None => None,
            };
            if left == Some(Duration::ZERO) {
                // Out of time: one last non-blocking look at the device, unless a leader is
                // polling it (reading under its feet could leave it asleep with its own event
                // in the table; it records whatever arrives).
                if !drained && !t.leader {
                    drained = true;
                    if self.drain(&mut t)? {
                        self.cv.notify_all();
                    }
                    continue;
                }
                break;
            }
            if t.leader {
                t = self
                    .cv
                    .wait_timeout(t, left.unwrap_or(FOREVER_SLICE))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            t.leader = true;
            drop(t);
            let readable = poll_in(self.fd(), left);
            t = self.lock();
            t.leader = false;
            let got = match readable {
                Ok(true) => {
                    drained = true;
                    self.drain(&mut t)
                }
                Ok(false) => Ok(false),
                Err(e) => Err(e),
            };
            // Always wake the followers: one of them becomes the leader if we leave.
            self.cv.notify_all();
            got?;
        }
        drop(t);
        // Unmask every fired port even if one write fails: a port left masked loses its next
        // event. The first failure is reported.
        let mut first_err = None;
        for &i in fired.iter() {
            if let Err(e) = self.unmask(ports[i]) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Waits up to `timeout` (`None`: no limit) for `fd` to become readable.
fn poll_in(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let ts = timeout.map(|t| Timespec {
        tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    match poll(&mut fds, ts.as_ref()) {
        Ok(n) => Ok(n > 0),
        // A signal: a spurious wake-up, the caller loops.
        Err(Errno::INTR) => Ok(false),
        Err(e) => Err(LinuxError::os("polling the evtchn device")(e.into())),
    }
}

/// One bound port of a [`crate::LinuxXen`]'s event device.
///
/// Dropping it unbinds the port quietly; [`EventChannel::close`] reports failures. Xen tells
/// the remote end nothing when a port closes (its port becomes unbound, its notifications are
/// dropped): a peer's death is learned from xenstore or from an unmap notification (D8).
#[derive(Debug)]
pub struct LinuxChannel {
    dev: Arc<EvtchnDevice>,
    port: u32,
    bound: bool,
}

impl LinuxChannel {
    pub(crate) fn new(dev: Arc<EvtchnDevice>, port: u32) -> Self {
        LinuxChannel {
            dev,
            port,
            bound: true,
        }
    }

    pub(crate) fn device(&self) -> &Arc<EvtchnDevice> {
        &self.dev
    }

    /// The event device's file descriptor: readable when a port of that device (this one or
    /// another) may have fired. See [`crate::LinuxXen`] on readiness.
    pub fn readiness_fd(&self) -> BorrowedFd<'_> {
        self.dev.fd()
    }

    fn unbind(&mut self) -> Result<()> {
        if !self.bound {
            return Err(CoreError::new(ErrorKind::Closed, "closing a port twice").into());
        }
        self.bound = false;
        self.dev.unbind(self.port)
    }
}

impl EventChannel for LinuxChannel {
    type Error = LinuxError;

    fn port(&self) -> Port {
        Port(self.port)
    }

    fn notify(&self) -> Result<()> {
        self.dev.notify(self.port)
    }

    fn try_wait(&self) -> Result<bool> {
        let mut fired = Vec::with_capacity(1);
        self.dev
            .wait_any(&[self.port], Duration::ZERO, &mut fired)?;
        Ok(!fired.is_empty())
    }

    fn wait(&self, timeout: Duration) -> Result<WaitOutcome> {
        let mut fired = Vec::with_capacity(1);
        self.dev.wait_any(&[self.port], timeout, &mut fired)?;
        Ok(if fired.is_empty() {
            WaitOutcome::Timeout
        } else {
            WaitOutcome::Event
        })
    }

    fn close(mut self) -> Result<()> {
        self.unbind()
    }
}

impl Drop for LinuxChannel {
    fn drop(&mut self) {
        if self.bound {
            if let Err(e) = self.unbind() {
                tracing::debug!(port = self.port, error = %e, "unbinding a dropped channel");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The demultiplexer against a fake driver: a seqpacket socket whose far end behaves like
    //! `drivers/xen/evtchn.c` (a fired port is queued once and masked; it fires again only
    //! after user space writes it back).

    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread::JoinHandle;

    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};

    #[derive(Default)]
    struct DriverState {
        masked: HashSet<u32>,
        /// Fired while masked: Xen keeps it pending and delivers it at the unmask.
        held: HashSet<u32>,
        unmasks: Vec<u32>,
    }

    struct FakeDriver {
        fd: Arc<OwnedFd>,
        state: Arc<Mutex<DriverState>>,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    fn send(fd: &OwnedFd, port: u32) {
        rustix::io::write(fd, &port.to_ne_bytes()).expect("fake driver write");
    }

    impl FakeDriver {
        fn new() -> (FakeDriver, Arc<EvtchnDevice>) {
            let (ours, theirs) = socketpair(
                AddressFamily::UNIX,
                SocketType::SEQPACKET,
                SocketFlags::CLOEXEC,
                None,
            )
            .unwrap();
            rustix::io::ioctl_fionbio(&ours, true).unwrap();
            let dev = Arc::new(EvtchnDevice {
                fd: ours,
                table: Mutex::new(Table::default()),
                cv: Condvar::new(),
            });
            let fd = Arc::new(theirs);
            let state = Arc::new(Mutex::new(DriverState::default()));
            let stop = Arc::new(AtomicBool::new(false));
            let thread = {
                let (fd, state, stop) = (fd.clone(), state.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4];
                    while !stop.load(Ordering::Relaxed) {
                        if !poll_in(fd.as_fd(), Some(Duration::from_millis(10))).unwrap() {
                            continue;
                        }
                        let Ok(4) = rustix::io::read(&*fd, &mut buf) else {
                            continue;
                        };
                        let port = u32::from_ne_bytes(buf);
                        let mut st = state.lock().unwrap();
                        st.unmasks.push(port);
                        st.masked.remove(&port);
                        if st.held.remove(&port) {
                            st.masked.insert(port);
                            send(&fd, port);
                        }
                    }
                })
            };
            (
                FakeDriver {
                    fd,
                    state,
                    stop,
                    thread: Some(thread),
                },
                dev,
            )
        }

        /// The peer notifies `port`.
        fn fire(&self, port: u32) {
            let mut st = self.state.lock().unwrap();
            if st.masked.contains(&port) {
                st.held.insert(port);
            } else {
                st.masked.insert(port);
                send(&self.fd, port);
            }
        }

        fn unmasks(&self) -> Vec<u32> {
            self.state.lock().unwrap().unmasks.clone()
        }
    }

    impl Drop for FakeDriver {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                t.join().unwrap();
            }
        }
    }

    fn channel(dev: &Arc<EvtchnDevice>, port: u32) -> LinuxChannel {
        dev.lock().ports.insert(port, Slot::default());
        LinuxChannel::new(dev.clone(), port)
    }

    const LONG: Duration = Duration::from_secs(10);

    #[test]
    fn wait_times_out_without_an_event() {
        let (_driver, dev) = FakeDriver::new();
        let ch = channel(&dev, 3);
        let start = Instant::now();
        assert_eq!(
            ch.wait(Duration::from_millis(50)).unwrap(),
            WaitOutcome::Timeout
        );
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert!(!ch.try_wait().unwrap());
    }

    #[test]
    fn a_consumed_event_unmasks_its_port_so_the_next_one_arrives() {
        let (driver, dev) = FakeDriver::new();
        let ch = channel(&dev, 7);
        for round in 0..3 {
            driver.fire(7);
            assert_eq!(ch.wait(LONG).unwrap(), WaitOutcome::Event, "round {round}");
        }
        // Each consumed event was written back (unmasked) once.
        let deadline = Instant::now() + LONG;
        while driver.unmasks().len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(driver.unmasks(), vec![7, 7, 7]);
        // Events coalesce while unconsumed: two fires, one event, then nothing.
        driver.fire(7);
        driver.fire(7);
        assert_eq!(ch.wait(LONG).unwrap(), WaitOutcome::Event);
        // The second fire was held by "Xen" while masked and comes at the unmask.
        assert_eq!(ch.wait(LONG).unwrap(), WaitOutcome::Event);
        assert_eq!(
            ch.wait(Duration::from_millis(30)).unwrap(),
            WaitOutcome::Timeout
        );
    }

    #[test]
    fn try_wait_reads_the_device_itself() {
        let (driver, dev) = FakeDriver::new();
        let ch = channel(&dev, 9);
        driver.fire(9);
        let deadline = Instant::now() + LONG;
        let mut got = false;
        while !got && Instant::now() < deadline {
            got = ch.try_wait().unwrap();
        }
        assert!(got);
        assert!(!ch.try_wait().unwrap());
    }

    #[test]
    fn waiters_on_different_ports_of_one_device_each_get_theirs() {
        for _ in 0..5 {
            let (driver, dev) = FakeDriver::new();
            let chans: Vec<Arc<LinuxChannel>> =
                (10..14).map(|p| Arc::new(channel(&dev, p))).collect();
            let waiters: Vec<_> = chans
                .iter()
                .cloned()
                .map(|ch| {
                    std::thread::spawn(move || {
                        let start = Instant::now();
                        (ch.port(), ch.wait(LONG).unwrap(), start.elapsed())
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(20));
            // Fire in an order unrelated to who polls the device.
            for p in [12, 10, 13, 11] {
                driver.fire(p);
            }
            for w in waiters {
                let (port, outcome, took) = w.join().unwrap();
                assert_eq!(outcome, WaitOutcome::Event, "port {port}");
                // Woken by the event, not by running out of time (a follower the leader
                // forgot to wake would only look at the device again at its deadline).
                assert!(took < LONG / 2, "port {port} took {took:?}");
            }
        }
    }

    #[test]
    fn select_reports_which_fired_among_many() {
        let (driver, dev) = FakeDriver::new();
        let chans: Vec<LinuxChannel> = (100..164).map(|p| channel(&dev, p)).collect();
        let ports: Vec<u32> = chans.iter().map(|c| c.port).collect();
        let mut fired = Vec::new();
        dev.wait_any(&ports, Duration::from_millis(20), &mut fired)
            .unwrap();
        assert!(fired.is_empty());
        for p in [101, 140, 163] {
            driver.fire(p);
        }
        let mut seen = HashSet::new();
        let deadline = Instant::now() + LONG;
        while seen.len() < 3 && Instant::now() < deadline {
            dev.wait_any(&ports, LONG, &mut fired).unwrap();
            seen.extend(fired.iter().map(|&i| ports[i]));
        }
        assert_eq!(seen, HashSet::from([101, 140, 163]));
        dev.wait_any(&ports, Duration::from_millis(20), &mut fired)
            .unwrap();
        assert!(fired.is_empty(), "{fired:?}");
    }

    #[test]
    fn a_port_that_fires_for_nobody_waiting_is_kept_for_later() {
        let (driver, dev) = FakeDriver::new();
        let a = Arc::new(channel(&dev, 1));
        let b = channel(&dev, 2);
        // A waits (and polls the device); B's event arrives meanwhile and must be kept.
        let waiter = {
            let a = a.clone();
            std::thread::spawn(move || a.wait(Duration::from_millis(300)).unwrap())
        };
        std::thread::sleep(Duration::from_millis(20));
        driver.fire(2);
        assert_eq!(waiter.join().unwrap(), WaitOutcome::Timeout);
        assert_eq!(b.wait(Duration::ZERO).unwrap(), WaitOutcome::Event);
    }

    #[test]
    fn waiting_on_an_unbound_port_is_closed() {
        let (_driver, dev) = FakeDriver::new();
        let mut fired = Vec::new();
        let e = dev.wait_any(&[77], LONG, &mut fired).unwrap_err();
        assert_eq!(pore_core::Error::kind(&e), ErrorKind::Closed);
    }
}
