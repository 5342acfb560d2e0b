//! pore-xenstore's client against libxenstore (Debian's C client library, loaded with
//! dlopen) on the same daemon and the same operations: read, write, directory, and a
//! transaction (start, write, commit). Run pinned to one CPU so that the daemon, the
//! client and libxenstore share it:
//!
//! ```text
//! taskset -c 0 cargo bench -p pore-benches --bench xenstore_client
//! ```
//!
//! The daemon is C xenstored from `$PORE_XENSTORED_C_SOCKET` if set, else started here
//! with the repository's `scripts/xenstored/launch.sh` with its trace off, and stopped by
//! PID at the end. A `raw-socket` row
//! (pre-encoded request, bare socket, no client at all) gives the daemon's own cost, so
//! what each client adds per operation is its time minus that row. Without a daemon or
//! without libxenstore the bench says so and measures nothing.

use std::ffi::{c_char, c_uint, c_ulong, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{criterion_main, BenchmarkId, Criterion};
use pore_xenstore::Client;

type XsOpen = unsafe extern "C" fn(c_ulong) -> *mut c_void;
type XsClose = unsafe extern "C" fn(*mut c_void);
type XsRead = unsafe extern "C" fn(*mut c_void, u32, *const c_char, *mut c_uint) -> *mut c_void;
type XsWrite = unsafe extern "C" fn(*mut c_void, u32, *const c_char, *const c_void, c_uint) -> bool;
type XsDirectory =
    unsafe extern "C" fn(*mut c_void, u32, *const c_char, *mut c_uint) -> *mut *mut c_char;
type XsTxStart = unsafe extern "C" fn(*mut c_void) -> u32;
type XsTxEnd = unsafe extern "C" fn(*mut c_void, u32, bool) -> bool;

/// libxenstore, loaded at run time so that the bench compiles without it.
struct LibXs {
    h: *mut c_void,
    close: XsClose,
    read: XsRead,
    write: XsWrite,
    directory: XsDirectory,
    tx_start: XsTxStart,
    tx_end: XsTxEnd,
}

impl LibXs {
    /// Loads the library and opens a connection (libxenstore honours XENSTORED_PATH).
    fn open() -> Option<Self> {
        let name = CString::new("libxenstore.so.4").ok()?;
        // SAFETY: dlopen with a valid NUL-terminated name; the handle is never closed, so
        // the function pointers below stay valid for the life of the process.
        let lib = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW) };
        if lib.is_null() {
            return None;
        }
        let sym = |n: &str| -> Option<*mut c_void> {
            let c = CString::new(n).ok()?;
            // SAFETY: lib is a live handle and c a NUL-terminated symbol name.
            let p = unsafe { libc::dlsym(lib, c.as_ptr()) };
            (!p.is_null()).then_some(p)
        };
        // SAFETY: the symbols are libxenstore's, with the C signatures declared in
        // xenstore.h that the types above transcribe (same for the transmutes below).
        let open: XsOpen = unsafe { std::mem::transmute::<*mut c_void, XsOpen>(sym("xs_open")?) };
        // SAFETY: as above.
        let close: XsClose =
            unsafe { std::mem::transmute::<*mut c_void, XsClose>(sym("xs_close")?) };
        // SAFETY: as above.
        let read: XsRead = unsafe { std::mem::transmute::<*mut c_void, XsRead>(sym("xs_read")?) };
        // SAFETY: as above.
        let write: XsWrite =
            unsafe { std::mem::transmute::<*mut c_void, XsWrite>(sym("xs_write")?) };
        // SAFETY: as above.
        let directory: XsDirectory =
            unsafe { std::mem::transmute::<*mut c_void, XsDirectory>(sym("xs_directory")?) };
        // SAFETY: as above.
        let tx_start: XsTxStart =
            unsafe { std::mem::transmute::<*mut c_void, XsTxStart>(sym("xs_transaction_start")?) };
        // SAFETY: as above.
        let tx_end: XsTxEnd =
            unsafe { std::mem::transmute::<*mut c_void, XsTxEnd>(sym("xs_transaction_end")?) };
        // SAFETY: xs_open(0) takes flags and returns a handle or NULL.
        let h = unsafe { open(0) };
        if h.is_null() {
            return None;
        }
        Some(Self {
            h,
            close,
            read,
            write,
            directory,
            tx_start,
            tx_end,
        })
    }

    fn read(&self, tx: u32, path: &CStr) -> usize {
        let mut len: c_uint = 0;
        // SAFETY: live handle, NUL-terminated path, valid out pointer.
        let p = unsafe { (self.read)(self.h, tx, path.as_ptr(), &mut len) };
        assert!(!p.is_null(), "xs_read failed");
        // SAFETY: xs_read returns a malloc'd buffer that the caller frees.
        unsafe { libc::free(p) };
        len as usize
    }

    fn write(&self, tx: u32, path: &CStr, v: &[u8]) {
        let len = c_uint::try_from(v.len()).expect("small value");
        // SAFETY: live handle, NUL-terminated path, v valid for len bytes.
        let ok = unsafe { (self.write)(self.h, tx, path.as_ptr(), v.as_ptr().cast(), len) };
        assert!(ok, "xs_write failed");
    }

    fn directory(&self, path: &CStr) -> usize {
        let mut n: c_uint = 0;
        // SAFETY: live handle, NUL-terminated path, valid out pointer.
        let p = unsafe { (self.directory)(self.h, 0, path.as_ptr(), &mut n) };
        assert!(!p.is_null(), "xs_directory failed");
        // SAFETY: xs_directory returns one malloc'd block (array and strings).
        unsafe { libc::free(p.cast()) };
        n as usize
    }

    fn transaction(&self, path: &CStr) {
        loop {
            // SAFETY: live handle.
            let t = unsafe { (self.tx_start)(self.h) };
            assert!(t != 0, "xs_transaction_start failed");
            self.write(t, path, b"t");
            // SAFETY: live handle, t a transaction it started.
            if unsafe { (self.tx_end)(self.h, t, false) } {
                return;
            }
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EAGAIN)
            );
        }
    }
}

impl Drop for LibXs {
    fn drop(&mut self) {
        // SAFETY: the handle from xs_open, closed once.
        unsafe { (self.close)(self.h) };
    }
}

struct Daemon {
    socket: PathBuf,
    stop: Option<(PathBuf, String)>,
    _dir: Option<PathBuf>,
}

impl Daemon {
    fn find_or_start() -> Option<Self> {
        if let Some(s) = std::env::var_os("PORE_XENSTORED_C_SOCKET") {
            return Some(Self {
                socket: s.into(),
                stop: None,
                _dir: None,
            });
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/xenstored/launch.sh");
        if !script.exists() {
            eprintln!(
                "xenstore_client bench: no {} and no PORE_XENSTORED_C_SOCKET",
                script.display()
            );
            return None;
        }
        let dir = std::env::temp_dir().join(format!("pore-xs-bench-{}", std::process::id()));
        let socket = dir.join("c.sock");
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(&socket)
            .arg("c")
            .env("PORE_XS_QUIET", "1")
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "xenstore_client bench: daemon did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Some(Self {
            socket,
            stop: Some((script, pid)),
            _dir: Some(dir),
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some((script, pid)) = &self.stop {
            let _ = Command::new("bash")
                .arg(script)
                .arg("stop")
                .arg(pid)
                .status();
        }
        if let Some(d) = &self._dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn bench(c: &mut Criterion) {
    let Some(daemon) = Daemon::find_or_start() else {
        return;
    };
    std::env::set_var("XENSTORED_PATH", &daemon.socket);
    let ours = Client::connect_unix(&daemon.socket).expect("pore client");
    let Some(lib) = LibXs::open() else {
        eprintln!(
            "xenstore_client bench: libxenstore.so.4 not loadable (libxen-dev / libxenstore4)"
        );
        return;
    };
    let base = "/bench";
    ours.write(&format!("{base}/value"), b"hello world")
        .unwrap();
    for i in 0..32 {
        ours.write(&format!("{base}/dir/child-{i:02}"), b"")
            .unwrap();
    }
    let value = CString::new(format!("{base}/value")).unwrap();
    let wpath = CString::new(format!("{base}/w")).unwrap();
    let dir = CString::new(format!("{base}/dir")).unwrap();
    let tpath = CString::new(format!("{base}/t")).unwrap();

    // The floor: pre-encoded requests over a bare socket, reply read and dropped.
    let mut raw = std::os::unix::net::UnixStream::connect(&daemon.socket).expect("raw socket");
    let raw_read = pore_xenstore::Request::Read("/bench/value")
        .encode(1, 0, 4096)
        .unwrap();
    let raw_write = pore_xenstore::Request::Write {
        path: "/bench/w",
        value: b"0123456789",
    }
    .encode(2, 0, 4096)
    .unwrap();
    let raw_dir = pore_xenstore::Request::Directory("/bench/dir")
        .encode(3, 0, 4096)
        .unwrap();
    let mut raw_buf = vec![0u8; 8192];
    let mut round_trip = |req: &[u8]| {
        use std::io::{Read, Write};
        raw.write_all(req).unwrap();
        let mut have = 0;
        loop {
            have += raw.read(&mut raw_buf[have..]).unwrap();
            if have >= 16 {
                let len = u32::from_le_bytes(raw_buf[12..16].try_into().unwrap()) as usize;
                if have >= 16 + len {
                    return len;
                }
            }
        }
    };

    // Interleaved A/B/C rounds first: on a shared machine the load drifts between
    // criterion's back-to-back groups, so this table (medians of rounds that alternate
    // the contenders) is the fair comparison; criterion's rows follow.
    {
        let rounds = 25;
        let batch = 200;
        let time = |f: &mut dyn FnMut()| {
            let t0 = std::time::Instant::now();
            for _ in 0..batch {
                f();
            }
            t0.elapsed().as_secs_f64() * 1e6 / f64::from(batch)
        };
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        eprintln!(
            "\nxenstore_client: interleaved medians ({rounds} rounds x {batch} ops), µs per op"
        );
        eprintln!(
            "{:<12} {:>10} {:>10} {:>12} {:>12} {:>16}",
            "op", "raw", "pore", "libxenstore", "pore added", "libxenstore added"
        );
        for op in ["read", "write", "directory", "transaction"] {
            let (mut r, mut p, mut l) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..rounds {
                match op {
                    "read" => {
                        r.push(time(&mut || {
                            round_trip(&raw_read);
                        }));
                        p.push(time(&mut || {
                            ours.read("/bench/value").unwrap();
                        }));
                        l.push(time(&mut || {
                            lib.read(0, &value);
                        }));
                    }
                    "write" => {
                        r.push(time(&mut || {
                            round_trip(&raw_write);
                        }));
                        p.push(time(&mut || ours.write("/bench/w", b"0123456789").unwrap()));
                        l.push(time(&mut || lib.write(0, &wpath, b"0123456789")));
                    }
                    "directory" => {
                        r.push(time(&mut || {
                            round_trip(&raw_dir);
                        }));
                        p.push(time(&mut || {
                            ours.directory("/bench/dir").unwrap();
                        }));
                        l.push(time(&mut || {
                            lib.directory(&dir);
                        }));
                    }
                    _ => {
                        p.push(time(&mut || {
                            ours.transaction(|tx| tx.write("/bench/t", b"t")).unwrap()
                        }));
                        l.push(time(&mut || lib.transaction(&tpath)));
                    }
                }
            }
            let (p, l) = (median(p), median(l));
            if r.is_empty() {
                eprintln!(
                    "{op:<12} {:>10} {p:>10.1} {l:>12.1} {:>12} {:>16}",
                    "-", "-", "-"
                );
            } else {
                let r = median(r);
                eprintln!(
                    "{op:<12} {r:>10.1} {p:>10.1} {l:>12.1} {:>12.1} {:>16.1}",
                    p - r,
                    l - r
                );
            }
        }
        eprintln!();
    }

    let mut g = c.benchmark_group("xenstore");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.bench_function(BenchmarkId::new("read", "raw-socket"), |b| {
        b.iter(|| round_trip(&raw_read))
    });
    g.bench_function(BenchmarkId::new("read", "pore"), |b| {
        b.iter(|| ours.read("/bench/value").unwrap())
    });
    g.bench_function(BenchmarkId::new("read", "libxenstore"), |b| {
        b.iter(|| lib.read(0, &value))
    });
    g.bench_function(BenchmarkId::new("write", "raw-socket"), |b| {
        b.iter(|| round_trip(&raw_write))
    });
    g.bench_function(BenchmarkId::new("write", "pore"), |b| {
        b.iter(|| ours.write("/bench/w", b"0123456789").unwrap())
    });
    g.bench_function(BenchmarkId::new("write", "libxenstore"), |b| {
        b.iter(|| lib.write(0, &wpath, b"0123456789"))
    });
    g.bench_function(BenchmarkId::new("directory", "raw-socket"), |b| {
        b.iter(|| round_trip(&raw_dir))
    });
    g.bench_function(BenchmarkId::new("directory", "pore"), |b| {
        b.iter(|| assert_eq!(ours.directory("/bench/dir").unwrap().len(), 32))
    });
    g.bench_function(BenchmarkId::new("directory", "libxenstore"), |b| {
        b.iter(|| assert_eq!(lib.directory(&dir), 32))
    });
    g.bench_function(BenchmarkId::new("transaction", "pore"), |b| {
        b.iter(|| ours.transaction(|tx| tx.write("/bench/t", b"t")).unwrap())
    });
    g.bench_function(BenchmarkId::new("transaction", "libxenstore"), |b| {
        b.iter(|| lib.transaction(&tpath))
    });
    g.finish();
    drop(lib);
    drop(ours);
    drop(daemon);
}

mod group {
    #![allow(missing_docs)] // criterion_group! makes an undocumented pub fn
    use super::bench;
    use criterion::criterion_group;
    criterion_group!(benches, bench);
}
criterion_main!(group::benches);
