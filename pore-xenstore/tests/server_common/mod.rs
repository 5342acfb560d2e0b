//! Helpers shared by the server's integration tests: our server on a unix socket, Debian's
//! C xenstored (through the repository's `scripts/xenstored/launch.sh`), and running
//! xenstore-utils against either.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use pore_xenstore::server::{Config, Listener, Server};

/// True when the interop tests must fail rather than skip (CI sets it).
pub fn require_interop() -> bool {
    std::env::var("PORE_REQUIRE_INTEROP").is_ok_and(|v| v == "1")
}

/// Skips (returns `false`) or panics, per `PORE_REQUIRE_INTEROP`, when a real peer is
/// missing.
pub fn have(what: &str, ok: bool) -> bool {
    if !ok {
        if require_interop() {
            panic!("PORE_REQUIRE_INTEROP=1 but {what} is missing");
        }
        eprintln!("SKIPPED: {what} is missing (set PORE_REQUIRE_INTEROP=1 to fail instead)");
    }
    ok
}

/// The repository's launcher of Debian's xenstore daemons (`scripts/xenstored/launch.sh`).
pub fn launcher() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/xenstored/launch.sh")
}

/// A fresh private directory under /tmp (short: socket paths must fit in sun_path).
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = PathBuf::from(format!(
        "/tmp/pxs-{}-{}-{}",
        tag,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Our server, in this process, on a unix socket.
pub struct Ours {
    pub server: Server,
    listener: Option<Listener>,
    pub sock: PathBuf,
    dir: PathBuf,
}

impl Ours {
    pub fn start(config: Config) -> Self {
        let dir = temp_dir("ours");
        let sock = dir.join("sock");
        let server = Server::new(config, None);
        let listener = server.listen_unix(&sock).unwrap();
        Ours {
            server,
            listener: Some(listener),
            sock,
            dir,
        }
    }
}

impl Drop for Ours {
    fn drop(&mut self) {
        self.server.shutdown();
        if let Some(l) = self.listener.take() {
            l.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Debian's C xenstored, started with the launcher; stopped (by PID) on drop.
pub struct CDaemon {
    pid: String,
    pub sock: PathBuf,
    dir: PathBuf,
}

pub fn c_daemon_available() -> bool {
    Path::new("/usr/lib/xen-4.17/bin/xenstored").exists()
        && launcher().exists()
        && Path::new("/usr/bin/gcc").exists()
}

impl CDaemon {
    /// Starts it with extra daemon arguments (e.g. quotas); `None` if it would not start.
    pub fn start(args: &[&str]) -> Option<Self> {
        let dir = temp_dir("c");
        let sock = dir.join("sock");
        let out = Command::new("timeout")
            .arg("30")
            .arg("bash")
            .arg(launcher())
            .arg("start")
            .arg(&sock)
            .arg("c")
            .args(args)
            .env("PORE_XS_QUIET", "1")
            .stderr(Stdio::inherit())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Some(CDaemon { pid, sock, dir })
    }

    /// The stand-in for Xen (guest ring files, event FIFO; `scripts/xenstored/nohv.c`).
    pub fn xen_dir(&self) -> PathBuf {
        PathBuf::from(format!("{}.d/xen", self.sock.display()))
    }
}

impl Drop for CDaemon {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .arg("10")
            .arg("bash")
            .arg(launcher())
            .arg("stop")
            .arg(&self.pid)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Output of a command run against a daemon.
#[derive(Debug, PartialEq, Eq)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `prog args` (bounded to 10 s) with `XENSTORED_PATH=sock`.
pub fn run(sock: &Path, prog: &str, args: &[&str]) -> Run {
    let out = Command::new("timeout")
        .arg("10")
        .arg(prog)
        .args(args)
        .env("XENSTORED_PATH", sock)
        .env_remove("XENSTORED_RUNDIR")
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).replace(&*sock.to_string_lossy(), "SOCK"),
    }
}
