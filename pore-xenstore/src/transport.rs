//! Transports for the std [`Client`](crate::Client): a unix socket, the Linux
//! `/dev/xen/xenbus` device file, and the xenstore shared ring.
//!
//! A transport splits into a reader and a writer half so that one thread can wait for
//! replies while others send requests. Every wait is bounded: readers take a timeout,
//! writers a deadline.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pore_core::{Backend, EventChannel, Events, Pore, Port, SharedAccess, WaitOutcome};
use pore_ring::prelude::*;
use pore_ring::xenstore::XenstoreRing;

use crate::error::Error;
use crate::wire::Limits;

/// The receiving half of a transport.
pub trait TransportReader: Send {
    /// Reads available bytes into `buf`, waiting at most `timeout`.
    ///
    /// `Ok(None)`: nothing arrived in time; `Ok(Some(0))`: the peer closed the
    /// connection; `Ok(Some(n))`: `n` bytes were read.
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>>;
}

/// The sending half of a transport.
pub trait TransportWriter: Send {
    /// Sends one whole message (header + payload), giving up at `deadline`.
    fn write_message(&mut self, msg: &[u8], deadline: Instant) -> io::Result<()>;
    /// Shuts the connection down (best effort); called when the client is dropped.
    fn shutdown(&mut self) {}
}

/// A connection to a xenstored.
pub trait Transport: Send {
    /// The payload limits of this transport (D11).
    fn limits(&self) -> Limits;
    /// Splits into a reader and a writer.
    fn split(self: Box<Self>) -> io::Result<(Box<dyn TransportReader>, Box<dyn TransportWriter>)>;
    /// True if the client must have at most one request in flight: it then writes a
    /// request only once the reply to every earlier one has been read (libxenstore's
    /// discipline). The default is false: requests are pipelined and matched by id.
    /// [`XenbusTransport`] says true (see there why).
    fn one_request_at_a_time(&self) -> bool {
        false
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "xenstore transport timed out")
}

/// How long one blocking socket read may sleep before the client re-checks its state.
const SOCKET_READ_SLICE: Duration = Duration::from_millis(20);

/// A unix-socket connection (how dom0 tools reach xenstored; always privileged).
#[derive(Debug)]
pub struct UnixTransport {
    stream: UnixStream,
}

impl UnixTransport {
    /// Connects to the socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> io::Result<Self> {
        let stream = UnixStream::connect(path)?;
        Ok(Self { stream })
    }

    /// Wraps an already connected stream (e.g. one end of `UnixStream::pair`).
    pub fn from_stream(stream: UnixStream) -> Self {
        Self { stream }
    }
}

struct UnixReader {
    stream: UnixStream,
}

impl TransportReader for UnixReader {
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.stream.read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

struct UnixWriter {
    stream: UnixStream,
}

impl TransportWriter for UnixWriter {
    fn write_message(&mut self, msg: &[u8], deadline: Instant) -> io::Result<()> {
        let mut rest = msg;
        while !rest.is_empty() {
            match self.stream.write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return Err(timed_out());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn shutdown(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

impl Transport for UnixTransport {
    fn limits(&self) -> Limits {
        Limits::SOCKET
    }

    fn split(self: Box<Self>) -> io::Result<(Box<dyn TransportReader>, Box<dyn TransportWriter>)> {
        let reader = self.stream.try_clone()?;
        reader.set_read_timeout(Some(SOCKET_READ_SLICE))?;
        self.stream.set_write_timeout(Some(SOCKET_READ_SLICE))?;
        Ok((
            Box::new(UnixReader { stream: reader }),
            Box::new(UnixWriter {
                stream: self.stream,
            }),
        ))
    }
}

/// The Linux `/dev/xen/xenbus` device (a guest's or dom0's kernel relays to xenstored).
///
/// Requests are written as whole packets of at most 4080 payload bytes (D11).
///
/// **One request in flight.** The client sends a request on this device only once the
/// reply to every earlier request of the same open file has been read
/// ([`Transport::one_request_at_a_time`]), as libxenstore does (its `xs_talkv` holds the
/// handle's request lock from the write to the reply). Pipelining is not safe here: in
/// Linux's `drivers/xen/xenbus/xenbus_dev_frontend.c` (6.1, the asynchronous device of
/// 4.11 and later), `xenbus_file_write` holds the file's `msgbuffer_mutex` while a WATCH
/// or UNWATCH is carried out synchronously (`xenbus_write_watch` →
/// `register_xenbus_watch`/`unregister_xenbus_watch` → `xs_watch`/`xs_unwatch` →
/// `xs_talkv`, which waits for xenstored's answer). Every answer is delivered by the
/// kernel's single xenbus thread (`xenbus_thread` → `process_msg` → the request's
/// callback), and for a request written on this device that callback is
/// `xenbus_dev_queue_reply`, which takes the same `msgbuffer_mutex`. So when the reply to
/// an earlier request of this file reaches the xenbus thread while the (UN)WATCH waits,
/// the xenbus thread blocks on the mutex, the watch's answer is never delivered, and the
/// whole domain's xenstore connection hangs with unkillable tasks (seen in the lab:
/// pore-straw's watch thread unwatching while another thread's READ was answered). The
/// weaker rule "no (UN)WATCH while a reply is outstanding" needs the same bookkeeping (a
/// count of unanswered requests and a reservation so nothing slips in before the
/// (UN)WATCH), and pipelining buys little here: xenstored answers one connection's
/// requests in order and the kernel funnels the whole domain through one ring. A reply
/// that is late (its caller timed out) still counts as outstanding until it is read.
#[derive(Debug)]
pub struct XenbusTransport {
    file: File,
}

/// The default path of the xenbus device.
pub const XENBUS_DEVICE: &str = "/dev/xen/xenbus";

impl XenbusTransport {
    /// Opens the device at `path` (normally [`XENBUS_DEVICE`]).
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Self { file })
    }

    /// Wraps an already open device (or anything that behaves like it: whole packets
    /// per write, pollable for reading).
    pub fn from_file(file: File) -> Self {
        Self { file }
    }
}

fn poll_in(fd: &impl AsFd, timeout: Duration) -> io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let ts = Timespec {
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    loop {
        match poll(&mut fds, Some(&ts)) {
            Ok(n) => return Ok(n > 0),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

struct XenbusReader {
    file: File,
}

impl TransportReader for XenbusReader {
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        if !poll_in(&self.file, timeout)? {
            return Ok(None);
        }
        match self.file.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }
}

struct XenbusWriter {
    file: File,
}

impl TransportWriter for XenbusWriter {
    fn write_message(&mut self, msg: &[u8], _deadline: Instant) -> io::Result<()> {
        // The device takes a whole packet per write.
        let n = self.file.write(msg)?;
        if n != msg.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "xenbus device took a partial packet",
            ));
        }
        Ok(())
    }
}

impl Transport for XenbusTransport {
    fn limits(&self) -> Limits {
        Limits::XENBUS_DEV
    }

    fn one_request_at_a_time(&self) -> bool {
        true
    }

    fn split(self: Box<Self>) -> io::Result<(Box<dyn TransportReader>, Box<dyn TransportWriter>)> {
        let reader = self.file.try_clone()?;
        Ok((
            Box::new(XenbusReader { file: reader }),
            Box::new(XenbusWriter { file: self.file }),
        ))
    }
}

/// The event channel of a pore-core [`Pore`] that the transport shares with the pore's
/// memory: [`EventChannel`] forwarded to [`Pore::channel`].
pub struct PoreChannel<B: Backend>(Arc<Pore<B>>);

impl<B: Backend> EventChannel for PoreChannel<B> {
    type Error = <B as Events>::Error;

    fn port(&self) -> Port {
        self.0.channel().port()
    }

    fn notify(&self) -> Result<(), <B as Events>::Error> {
        self.0.channel().notify()
    }

    fn try_wait(&self) -> Result<bool, <B as Events>::Error> {
        self.0.channel().try_wait()
    }

    fn wait(&self, timeout: Duration) -> Result<WaitOutcome, <B as Events>::Error> {
        self.0.channel().wait(timeout)
    }

    /// Drops this handle; the port closes with the pore's last handle.
    fn close(self) -> Result<(), <B as Events>::Error> {
        Ok(())
    }
}

/// A guest's xenstore ring page (`pore_ring::xenstore`, the Xen ABI) over any pore-core
/// [`SharedAccess`] and the store's [`EventChannel`]: this is what a guest uses, with its
/// store page as a pre-existing pore (D7, [`RingTransport::from_pore`]).
///
/// When events never come the transport still makes progress: it re-checks the ring
/// at least every `poll_interval` (1 ms by default, starting at 20 µs after activity).
/// A 4096-byte request does not fit the 1024-byte ring and is streamed through it.
pub struct RingTransport<A, C> {
    mem: A,
    channel: Arc<C>,
    poll_interval: Duration,
}

impl<A, C> RingTransport<A, C>
where
    A: SharedAccess + Clone + Send + 'static,
    C: EventChannel + 'static,
{
    /// A transport over the store page `mem`, signalling on `channel`.
    pub fn new(mem: A, channel: C) -> Self {
        Self {
            mem,
            channel: Arc::new(channel),
            poll_interval: Duration::from_millis(1),
        }
    }

    /// Sets the longest wait between two looks at the ring.
    pub fn with_poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d.max(Duration::from_micros(1));
        self
    }
}

impl<B: Backend + 'static> RingTransport<Arc<Pore<B>>, PoreChannel<B>> {
    /// A transport over a pore holding a xenstore page: normally the domain's own store
    /// page and port from [`Pore::open_store`], but any pore whose first page follows the
    /// xenstore layout works (the tests use a loopback pore).
    pub fn from_pore(pore: Pore<B>) -> Self {
        let pore = Arc::new(pore);
        Self::new(pore.clone(), PoreChannel(pore))
    }

    /// Opens this domain's store page and port through `backend` ([`Pore::open_store`]).
    pub fn open_store(backend: &B) -> io::Result<Self> {
        let pore = Pore::open_store(backend)
            .map_err(|e| io::Error::from(Error::backend("opening the store page", e)))?;
        Ok(Self::from_pore(pore))
    }
}

/// The page's `error` and `connection` fields (read through the ring, as the peer writes
/// them): a server-reported error or a reconnection in progress stop the transport.
fn check_page<A: SharedAccess>(ring: &XenstoreRing<A>) -> Result<(), Error> {
    match ring.error() {
        0 => {}
        e => return Err(Error::RingFault(e)),
    }
    if ring.connection() != 0 {
        return Err(Error::Reconnecting);
    }
    Ok(())
}

/// A client view of the page used in one direction only: the reader's view only consumes
/// replies, the writer's only produces requests (each keeps its own index, as
/// `XenstoreRing::split` would, and can still read the page's `error` and `connection`).
struct RingHalf<A: SharedAccess, C> {
    ring: XenstoreRing<A>,
    channel: Arc<C>,
    poll_interval: Duration,
}

impl<A: SharedAccess, C: EventChannel> RingHalf<A, C> {
    fn notify(&self) -> Result<(), Error> {
        self.channel
            .notify()
            .map_err(|e| Error::backend("notifying xenstored", e))
    }
}

impl<A, C> TransportReader for RingHalf<A, C>
where
    A: SharedAccess + Send,
    C: EventChannel,
{
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let deadline = Instant::now() + timeout;
        let mut nap = Duration::from_micros(20);
        loop {
            check_page(&self.ring)?;
            let n = self.ring.reader().read(buf).map_err(Error::Ring)?;
            if n > 0 {
                // Room was made: let the server push more output.
                if self.ring.reader().take_notify() {
                    self.notify()?;
                }
                return Ok(Some(n));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            if let Err(e) = self.channel.wait(nap.min(deadline - now)) {
                // The peer may have written its last words before going away.
                let n = self.ring.reader().read(buf).map_err(Error::Ring)?;
                return if n > 0 {
                    Ok(Some(n))
                } else {
                    Err(Error::backend("waiting for xenstored", e).into())
                };
            }
            nap = (nap * 2).min(self.poll_interval);
        }
    }
}

impl<A, C> TransportWriter for RingHalf<A, C>
where
    A: SharedAccess + Send,
    C: EventChannel,
{
    fn write_message(&mut self, msg: &[u8], deadline: Instant) -> io::Result<()> {
        let mut rest = msg;
        let mut nap = Duration::from_micros(20);
        while !rest.is_empty() {
            check_page(&self.ring)?;
            let n = self.ring.writer().write(rest).map_err(Error::Ring)?;
            if n > 0 {
                rest = &rest[n..];
                if self.ring.writer().take_notify() {
                    self.notify()?;
                }
                nap = Duration::from_micros(20);
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(timed_out());
            }
            std::thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(self.poll_interval);
        }
        Ok(())
    }
}

impl<A, C> Transport for RingTransport<A, C>
where
    A: SharedAccess + Clone + Send + 'static,
    C: EventChannel + 'static,
{
    fn limits(&self) -> Limits {
        Limits::SOCKET
    }

    fn split(self: Box<Self>) -> io::Result<(Box<dyn TransportReader>, Box<dyn TransportWriter>)> {
        // Each half is a whole client view of the page, used for one direction only: the
        // indices of the other direction are never touched through it.
        let half = |mem: A| -> Result<RingHalf<A, C>, Error> {
            let ring = XenstoreRing::client(mem)?;
            check_page(&ring)?;
            Ok(RingHalf {
                ring,
                channel: self.channel.clone(),
                poll_interval: self.poll_interval,
            })
        };
        let reader = half(self.mem.clone())?;
        let writer = half(self.mem.clone())?;
        Ok((Box::new(reader), Box::new(writer)))
    }
}

/// Where a xenstore is, as libxenstore (and so xenstore-utils) finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// A unix socket.
    Socket(PathBuf),
    /// A xenbus device file.
    Device(PathBuf),
}

impl StoreLocation {
    /// The candidates in libxenstore's order: `$XENSTORED_PATH`, else
    /// `$XENSTORED_RUNDIR/socket` (default `/var/run/xenstored/socket`); then
    /// `$XENSTORED_PATH` or `/dev/xen/xenbus` as a device.
    pub fn candidates() -> Vec<PathBuf> {
        let env_path = std::env::var_os("XENSTORED_PATH").map(PathBuf::from);
        let socket = env_path.clone().unwrap_or_else(|| {
            let rundir = std::env::var_os("XENSTORED_RUNDIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/run/xenstored"));
            rundir.join("socket")
        });
        let dev = env_path.unwrap_or_else(|| PathBuf::from(XENBUS_DEVICE));
        if socket == dev {
            vec![socket]
        } else {
            vec![socket, dev]
        }
    }

    /// Classifies `path`: a socket if it is one, else a device.
    pub fn of_path(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        match std::fs::metadata(&path) {
            Ok(m) if m.file_type().is_socket() => StoreLocation::Socket(path),
            _ => StoreLocation::Device(path),
        }
    }

    /// Opens a transport to this location.
    pub fn open(&self) -> io::Result<Box<dyn Transport>> {
        Ok(match self {
            StoreLocation::Socket(p) => Box::new(UnixTransport::connect(p)?),
            StoreLocation::Device(p) => Box::new(XenbusTransport::open(p)?),
        })
    }

    /// Opens the first candidate that works.
    pub fn open_default() -> io::Result<(StoreLocation, Box<dyn Transport>)> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no xenstore found");
        for p in Self::candidates() {
            let loc = Self::of_path(p);
            match loc.open() {
                Ok(t) => return Ok((loc, t)),
                Err(e) => {
                    tracing::debug!(?loc, error = %e, "xenstore candidate failed");
                    last = e;
                }
            }
        }
        Err(last)
    }
}
