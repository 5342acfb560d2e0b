//! What the xenstored benches share: a raw socket client, the daemons under test (ours,
//! Debian's C xenstored and oxenstored) and how to start and stop them.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pore_xenstore::server::{Config, Server};
use pore_xenstore::Request;

/// The type of a watch event.
pub const WATCH_EVENT: u32 = 15;
/// The type of an error reply.
pub const ERROR: u32 = 16;

/// A blocking client with a read buffer, able to pipeline requests and to skip (and
/// count) watch events while it waits for replies.
pub struct Raw {
    s: UnixStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    req: Vec<u8>,
    /// Watch events seen (and skipped) so far.
    pub events: u64,
}

impl Raw {
    /// Connects to the daemon at `p` (reads time out after 30 s).
    pub fn connect(p: &Path) -> Self {
        let s = UnixStream::connect(p).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Raw {
            s,
            buf: vec![0; 1 << 16],
            start: 0,
            end: 0,
            req: Vec::new(),
            events: 0,
        }
    }

    /// Queues `r` (tx id `tx`); [`Raw::flush`] sends what is queued.
    pub fn queue(&mut self, r: &Request<'_>, tx: u32) {
        r.encode_into(1, tx, 4096, &mut self.req).unwrap();
    }

    /// Sends what is queued.
    pub fn flush(&mut self) {
        self.s.write_all(&self.req).unwrap();
        self.req.clear();
    }

    /// The next whole message: type and the range of its payload in `buf`.
    pub fn next_message(&mut self) -> (u32, std::ops::Range<usize>) {
        loop {
            let have = self.end - self.start;
            if have >= 16 {
                let h = &self.buf[self.start..self.start + 16];
                let len = u32::from_le_bytes(h[12..16].try_into().unwrap()) as usize;
                if have >= 16 + len {
                    let ty = u32::from_le_bytes(h[0..4].try_into().unwrap());
                    let p = self.start + 16..self.start + 16 + len;
                    self.start += 16 + len;
                    return (ty, p);
                }
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = self.s.read(&mut self.buf[self.end..]).expect("read");
            assert!(n > 0, "daemon closed the connection");
            self.end += n;
        }
    }

    /// The next reply (watch events before it are counted and skipped).
    pub fn reply(&mut self) -> (u32, &[u8]) {
        loop {
            let (ty, p) = self.next_message();
            if ty == WATCH_EVENT {
                self.events += 1;
                continue;
            }
            return (ty, &self.buf[p]);
        }
    }

    /// Waits for `n` watch events (replies in between are an error).
    pub fn wait_events(&mut self, n: u64) {
        let want = self.events + n;
        while self.events < want {
            let (ty, _) = self.next_message();
            assert_eq!(ty, WATCH_EVENT, "a reply where a watch event was expected");
            self.events += 1;
        }
    }

    /// Sends `r` (tx id `tx`) and returns the reply's type and payload.
    pub fn call(&mut self, r: &Request<'_>, tx: u32) -> (u32, &[u8]) {
        self.queue(r, tx);
        self.flush();
        self.reply()
    }

    /// Sends `r`; panics on an error reply.
    pub fn ok(&mut self, r: &Request<'_>, tx: u32) {
        let (ty, p) = self.call(r, tx);
        assert_ne!(ty, ERROR, "{r:?}: error {:?}", String::from_utf8_lossy(p));
    }

    /// Runs `reqs` pipelined, 64 at a time; panics on an error reply.
    pub fn pipeline<'a>(&mut self, reqs: impl IntoIterator<Item = Request<'a>>) {
        let mut pending = 0;
        for r in reqs {
            self.queue(&r, 0);
            pending += 1;
            if pending == 64 {
                self.drain(pending);
                pending = 0;
            }
        }
        self.drain(pending);
    }

    /// Sends what is queued and takes `n` replies; panics on an error reply.
    pub fn drain(&mut self, n: usize) {
        self.flush();
        for _ in 0..n {
            let (ty, p) = self.reply();
            assert_ne!(ty, ERROR, "fill: error {:?}", String::from_utf8_lossy(p));
        }
    }

    /// Starts a transaction and returns its id.
    pub fn tx_start(&mut self) -> u32 {
        let (ty, p) = self.call(&Request::TransactionStart, 0);
        assert_eq!(ty, 6);
        std::str::from_utf8(&p[..p.len() - 1])
            .unwrap()
            .parse()
            .unwrap()
    }
}

/// A daemon under test.
pub struct Daemon {
    /// Its name in the tables.
    pub name: &'static str,
    /// Its socket.
    pub sock: PathBuf,
    /// Its process.
    pub pid: u32,
    stop: Stop,
}

enum Stop {
    Script(PathBuf),
    Child(Child),
}

impl Drop for Daemon {
    fn drop(&mut self) {
        match &mut self.stop {
            Stop::Script(script) => {
                let _ = Command::new("bash")
                    .arg(&*script)
                    .arg("stop")
                    .arg(self.pid.to_string())
                    .status();
            }
            Stop::Child(c) => {
                // Closing its stdin stops it; kill it if it does not go.
                drop(c.stdin.take());
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Daemon {
    /// `VmRSS` and `RssAnon` of the daemon, in bytes.
    pub fn rss(&self) -> (u64, u64) {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let field = |name: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024)
        };
        (field("VmRSS:"), field("RssAnon:"))
    }
}

/// Starts Debian's C xenstored (`kind` "c") or oxenstored ("ocaml") through
/// `scripts/xenstored/launch.sh`, quiet, with its socket in `dir`.
pub fn start_debian(name: &'static str, kind: &str, dir: &Path) -> Option<Daemon> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/xenstored/launch.sh");
    let sock = dir.join(format!("{name}.sock"));
    let out = Command::new("bash")
        .arg(&script)
        .arg("start")
        .arg(&sock)
        .arg(kind)
        .env("PORE_XS_QUIET", "1")
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "xenstored bench: {name} did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let pid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(Daemon {
        name,
        sock,
        pid,
        stop: Stop::Script(script),
    })
}

/// Starts `exe` (a bench executable) as a server: it serves on a socket in `dir`, named
/// in the environment variable `env`, until its stdin closes (see [`serve`]).
pub fn start_ours(name: &'static str, exe: &Path, env: &str, dir: &Path) -> Option<Daemon> {
    let sock = dir.join(format!("{name}.sock"));
    let child = Command::new(exe)
        .env(env, &sock)
        .stdin(Stdio::piped())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&sock).is_err() {
        if Instant::now() > deadline {
            eprintln!("xenstored bench: {name} did not start");
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(Daemon {
        name,
        sock,
        pid: child.id(),
        stop: Stop::Child(child),
    })
}

/// The server side of a bench executable: serves on `sock` until its stdin closes.
pub fn serve(sock: &Path) {
    let server = Server::new(Config::default(), None);
    let listener = server.listen_unix(sock).expect("listen");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    server.shutdown();
    listener.join();
}

/// The operations the xenstored bench times, through any client.
pub trait Ops {
    /// Reads `path` into `out`; false on an error reply.
    fn read(&mut self, tx: u32, path: &str, out: &mut Vec<u8>) -> bool;
    /// Writes `value` at `path`; false on an error reply.
    fn write(&mut self, tx: u32, path: &str, value: &[u8]) -> bool;
    /// Lists `path`: the number of children.
    fn directory(&mut self, tx: u32, path: &str) -> Option<usize>;
    /// Removes `path`; false on an error reply.
    fn rm(&mut self, tx: u32, path: &str) -> bool;
    /// Starts a transaction.
    fn tx_start(&mut self) -> u32;
    /// Commits `tx`: false on a conflict (`EAGAIN`).
    fn commit(&mut self, tx: u32) -> bool;
}

impl Ops for Raw {
    fn read(&mut self, tx: u32, path: &str, out: &mut Vec<u8>) -> bool {
        let (ty, p) = self.call(&Request::Read(path), tx);
        out.clear();
        out.extend_from_slice(p);
        ty != ERROR
    }
    fn write(&mut self, tx: u32, path: &str, value: &[u8]) -> bool {
        self.call(&Request::Write { path, value }, tx).0 != ERROR
    }
    fn directory(&mut self, tx: u32, path: &str) -> Option<usize> {
        let (ty, p) = self.call(&Request::Directory(path), tx);
        (ty != ERROR).then(|| p.iter().filter(|&&b| b == 0).count())
    }
    fn rm(&mut self, tx: u32, path: &str) -> bool {
        self.call(&Request::Rm(path), tx).0 != ERROR
    }
    fn tx_start(&mut self) -> u32 {
        Raw::tx_start(self)
    }
    fn commit(&mut self, tx: u32) -> bool {
        let (ty, p) = self.call(&Request::TransactionEnd { commit: true }, tx);
        assert!(
            ty != ERROR || p == b"EAGAIN\0",
            "commit: {:?}",
            String::from_utf8_lossy(p)
        );
        ty != ERROR
    }
}

impl Ops for crate::libxs::Xs {
    fn read(&mut self, tx: u32, path: &str, out: &mut Vec<u8>) -> bool {
        crate::libxs::Xs::read(self, tx, path, out)
    }
    fn write(&mut self, tx: u32, path: &str, value: &[u8]) -> bool {
        crate::libxs::Xs::write(self, tx, path, value)
    }
    fn directory(&mut self, tx: u32, path: &str) -> Option<usize> {
        crate::libxs::Xs::directory(self, tx, path)
    }
    fn rm(&mut self, tx: u32, path: &str) -> bool {
        crate::libxs::Xs::rm(self, tx, path)
    }
    fn tx_start(&mut self) -> u32 {
        crate::libxs::Xs::tx_start(self)
    }
    fn commit(&mut self, tx: u32) -> bool {
        crate::libxs::Xs::tx_end(self, tx, false)
    }
}
