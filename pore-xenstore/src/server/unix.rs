//! Unix-socket listeners: each is served by the event loop (`event_loop`), which accepts
//! clients (each dom0, privileged, as in both daemons) and serves them.

use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::event_loop::{Command, Done, ListenEntry};
use super::service::Server;

/// A unix-socket listener of a [`Server`].
pub struct Listener {
    done: Arc<Done>,
    path: PathBuf,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("path", &self.path)
            .finish()
    }
}

impl Listener {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until the listener is closed and its socket file removed (after
    /// [`Server::shutdown`], or when the last handle of the server is dropped).
    pub fn join(self) {
        self.done.wait();
    }
}

/// Device and inode of the file at `p` (not following a symlink).
pub(crate) fn file_id(p: &Path) -> io::Result<(u64, u64)> {
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
        let done = Arc::new(Done::default());
        let entry = ListenEntry {
            listener,
            path: path.clone(),
            ours,
            done: done.clone(),
        };
        if self.inner.command(Command::Listen(entry)).is_err() {
            // The entry was dropped: its socket file is gone again.
            return Err(io::Error::other("the server's event loop is not running"));
        }
        tracing::info!(path = %path.display(), "xenstored listening");
        Ok(Listener { done, path })
    }
}
