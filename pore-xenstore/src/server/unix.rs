//! Unix-socket connections: a listener thread accepting clients (each dom0, privileged,
//! as in both daemons) and a thread per client.

use std::io::{self, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::SendFlags;

use super::conn::Sink;
use super::service::{Inner, Server, POLL_INTERVAL};

struct SocketSink(UnixStream);

impl Sink for SocketSink {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match rustix::net::send(&self.0, buf, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
                Ok(n) => return Ok(n),
                Err(rustix::io::Errno::AGAIN) => return Ok(0),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn timespec(d: std::time::Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs() as _,
        tv_nsec: d.subsec_nanos() as _,
    }
}

/// Waits (bounded) until `fd` is ready for `flags`.
fn wait_ready(fd: &impl std::os::fd::AsFd, flags: PollFlags) {
    let mut fds = [PollFd::new(fd, flags)];
    let _ = poll(&mut fds, Some(&timespec(POLL_INTERVAL)));
}

/// A unix-socket listener of a [`Server`].
#[derive(Debug)]
pub struct Listener {
    handle: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl Listener {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until the listener thread ended (after [`Server::shutdown`]).
    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn serve(inner: Arc<Inner>, stream: UnixStream) {
    let sink = match stream.try_clone() {
        Ok(s) => SocketSink(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot clone client socket");
            return;
        }
    };
    let _ = stream.set_read_timeout(Some(POLL_INTERVAL));
    let (conn, outbox) = inner.add_conn(pore_core::DomId::DOM0, Box::new(sink));
    tracing::debug!(conn = conn.0, "client connected");
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    let mut out = Vec::new();
    let mut reader = &stream;
    while !inner.stop.load(Ordering::Relaxed) {
        if outbox.pending() {
            // Our client does not read its replies: stop reading its requests until it does.
            wait_ready(&stream, PollFlags::OUT);
            outbox.flush();
            if outbox.is_dead() {
                break;
            }
            continue;
        }
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::debug!(error = %e, "client read failed");
                break;
            }
        }
        match inner.process(conn, &buf[..filled], &mut out) {
            Ok(used) => {
                buf.copy_within(used..filled, 0);
                filled -= used;
            }
            Err(()) => break,
        }
        if outbox.is_dead() {
            break;
        }
    }
    tracing::debug!(conn = conn.0, "client gone");
    inner.remove_conn(conn);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Device and inode of the file at `p` (not following a symlink).
fn file_id(p: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p)?;
    Ok((m.dev(), m.ino()))
}

impl Server {
    /// Listens on a unix socket at `path` (a stale socket file there is replaced). When
    /// the server stops, the socket file is removed if it is still the one created here.
    pub fn listen_unix(&self, path: impl AsRef<Path>) -> io::Result<Listener> {
        let path = path.as_ref().to_path_buf();
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                std::fs::remove_file(&path)?;
            }
        }
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        // The socket file we created: on the way out we remove the path only if it is
        // still this file (a server started on the same path since has its own).
        let ours = file_id(&path)?;
        let inner = self.inner.clone();
        let p2 = path.clone();
        let handle = std::thread::Builder::new()
            .name("xsd-accept".into())
            .spawn(move || {
                while !inner.stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            if let Err(e) = s.set_nonblocking(false) {
                                tracing::warn!(error = %e, "client socket");
                                continue;
                            }
                            let i2 = inner.clone();
                            match std::thread::Builder::new()
                                .name("xsd-conn".into())
                                .spawn(move || serve(i2, s))
                            {
                                Ok(h) => inner.add_thread(h),
                                Err(e) => {
                                    tracing::error!(error = %e, "cannot spawn a connection thread")
                                }
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            wait_ready(&listener, PollFlags::IN)
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                    }
                }
                match file_id(&p2) {
                    Ok(id) if id == ours => {
                        let _ = std::fs::remove_file(&p2);
                    }
                    _ => tracing::debug!(
                        path = %p2.display(),
                        "socket path taken over by another: left in place"
                    ),
                }
                tracing::debug!("listener stopped");
            })?;
        tracing::info!(path = %path.display(), "xenstored listening");
        Ok(Listener {
            handle: Some(handle),
            path,
        })
    }
}
