//! `pore xs`: xenstore tools with the habits of xenstore-utils.
//!
//! The store is found as xenstore-utils find it (`$XENSTORED_PATH`, else
//! `$XENSTORED_RUNDIR/socket` or `/var/run/xenstored/socket`, then `/dev/xen/xenbus`),
//! unless `--socket` or `--xenbus` says where. Values are printed sanitised (`\t`, `\n`,
//! `\\`, `\xNN`) and written unsanitised, as the C tools do, unless `-R`.
//! Exit codes: 0 success / found, 1 not found or failed, 2 usage.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use pore_xenstore::transport::{StoreLocation, Transport, UnixTransport, XenbusTransport};
use pore_xenstore::{Client, Config, Error, Perm};

/// Arguments of `pore xs`.
#[derive(Args, Debug)]
pub struct XsArgs {
    /// Talk to the xenstored listening on this unix socket.
    #[arg(long, value_name = "PATH", global = true, conflicts_with = "xenbus")]
    socket: Option<PathBuf>,
    /// Talk through the xenbus device (default /dev/xen/xenbus).
    #[arg(long, value_name = "PATH", global = true, num_args = 0..=1,
          default_missing_value = "/dev/xen/xenbus")]
    xenbus: Option<PathBuf>,
    /// Per-request timeout in seconds.
    #[arg(long, value_name = "SECS", global = true, default_value_t = 5.0)]
    timeout: f64,
    #[command(subcommand)]
    command: XsCommand,
}

/// The `pore xs` subcommands.
#[derive(Subcommand, Debug)]
pub enum XsCommand {
    /// Print the values of nodes (like xenstore-read).
    Read {
        /// Prefix each value with its path.
        #[arg(short = 'p')]
        prefix: bool,
        /// Print raw bytes, not sanitised.
        #[arg(short = 'R')]
        raw: bool,
        /// Paths to read.
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Write values: PATH VALUE [PATH VALUE ...] (like xenstore-write).
    Write {
        /// Take values literally (no `\t`, `\n`, `\xNN` unescaping).
        #[arg(short = 'R')]
        raw: bool,
        /// Pairs of path and value.
        #[arg(required = true, num_args = 2.., value_name = "PATH VALUE")]
        pairs: Vec<String>,
    },
    /// Print a subtree with values (like xenstore-ls).
    Ls {
        /// Show permissions.
        #[arg(short = 'p')]
        perms: bool,
        /// Show full paths.
        #[arg(short = 'f')]
        full: bool,
        /// Root of the tree.
        #[arg(default_value = "/")]
        path: String,
    },
    /// Remove nodes and their subtrees (like xenstore-rm).
    Rm {
        /// Paths to remove.
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Create nodes (like `xenstore-write PATH ""` without touching existing values).
    Mkdir {
        /// Paths to create.
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Set permissions: PATH PERM... with PERM like n0, r5, w7, b9 (like xenstore-chmod).
    Chmod {
        /// Apply to the whole subtree.
        #[arg(short = 'r')]
        recursive: bool,
        /// The node.
        path: String,
        /// Owner first, then per-domain entries.
        #[arg(required = true)]
        perms: Vec<String>,
    },
    /// Print the path of each watch event; the first is the registration (like xenstore-watch).
    Watch {
        /// Exit after this many events.
        #[arg(short = 'n')]
        count: Option<u64>,
        /// The watched path.
        path: String,
    },
    /// Print the children of a node (like xenstore-list).
    List {
        /// Print full paths.
        #[arg(short = 'p')]
        prefix: bool,
        /// The node.
        path: String,
    },
    /// Exit 0 if every path exists, 1 otherwise (like xenstore-exists).
    Exists {
        /// Paths to test.
        #[arg(required = true)]
        paths: Vec<String>,
    },
}

/// Runs `pore xs`.
pub fn run(args: XsArgs) -> ExitCode {
    let client = match open(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pore xs: cannot open the xenstore: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = std::io::stdout();
    let mut out = out.lock();
    let r = match args.command {
        XsCommand::Read { prefix, raw, paths } => read(&client, &mut out, prefix, raw, &paths),
        XsCommand::Write { raw, pairs } => write(&client, raw, &pairs),
        XsCommand::Ls { perms, full, path } => ls(&client, &mut out, &path, perms, full),
        XsCommand::Rm { paths } => each(&paths, "could not remove path", |p| client.rm(p)),
        XsCommand::Mkdir { paths } => each(&paths, "could not create path", |p| client.mkdir(p)),
        XsCommand::Chmod {
            recursive,
            path,
            perms,
        } => chmod(&client, &path, &perms, recursive),
        XsCommand::Watch { count, path } => watch(&client, &mut out, &path, count),
        XsCommand::List { prefix, path } => list(&client, &mut out, &path, prefix),
        XsCommand::Exists { paths } => exists(&client, &paths),
    };
    let _ = out.flush();
    r
}

fn open(args: &XsArgs) -> Result<Client, Error> {
    let transport: Box<dyn Transport> = if let Some(s) = &args.socket {
        Box::new(UnixTransport::connect(s)?)
    } else if let Some(d) = &args.xenbus {
        Box::new(XenbusTransport::open(d)?)
    } else {
        StoreLocation::open_default()?.1
    };
    let timeout = if args.timeout.is_finite() && args.timeout > 0.0 {
        Duration::from_secs_f64(args.timeout)
    } else {
        Duration::from_secs(5)
    };
    Client::with_transport(
        transport,
        Config {
            timeout,
            ..Config::default()
        },
    )
}

fn fail(what: &str, path: &str, e: &Error) -> ExitCode {
    eprintln!("pore xs: {what} {path}: {e}");
    ExitCode::FAILURE
}

/// Escapes a value as xenstore-utils print it.
pub fn sanitise(v: &[u8]) -> String {
    let mut s = String::with_capacity(v.len());
    for &b in v {
        match b {
            b'\t' => s.push_str("\\t"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

/// Undoes [`sanitise`] (and takes `\ooo` octal), as xenstore-write does.
pub fn unsanitise(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 == b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let c = b[i + 1];
        i += 2;
        match c {
            b't' => out.push(b'\t'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b'x' => {
                let hex = s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'x'),
                }
            }
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                let mut n = 1;
                while n < 3 && i < b.len() && (b'0'..=b'7').contains(&b[i]) {
                    v = v * 8 + u32::from(b[i] - b'0');
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    out
}

fn join(parent: &str, child: &str) -> String {
    if parent.ends_with('/') {
        format!("{parent}{child}")
    } else {
        format!("{parent}/{child}")
    }
}

fn read(xs: &Client, out: &mut impl Write, prefix: bool, raw: bool, paths: &[String]) -> ExitCode {
    for p in paths {
        match xs.read(p) {
            Ok(v) => {
                if prefix {
                    let _ = write!(out, "{p}: ");
                }
                if raw {
                    let _ = out.write_all(&v);
                } else {
                    let _ = out.write_all(sanitise(&v).as_bytes());
                }
                let _ = writeln!(out);
            }
            Err(e) => return fail("couldn't read path", p, &e),
        }
    }
    ExitCode::SUCCESS
}

fn write(xs: &Client, raw: bool, pairs: &[String]) -> ExitCode {
    if pairs.len() % 2 != 0 {
        eprintln!("pore xs write: expected PATH VALUE pairs");
        return ExitCode::from(2);
    }
    let items: Vec<(&str, Vec<u8>)> = pairs
        .chunks(2)
        .map(|c| {
            let v = if raw {
                c[1].as_bytes().to_vec()
            } else {
                unsanitise(&c[1])
            };
            (c[0].as_str(), v)
        })
        .collect();
    let r = if items.len() == 1 {
        xs.write(items[0].0, &items[0].1)
    } else {
        xs.transaction(|tx| {
            for (p, v) in &items {
                tx.write(p, v)?;
            }
            Ok(())
        })
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail("could not write path", items[0].0, &e),
    }
}

fn each(paths: &[String], what: &str, f: impl Fn(&str) -> Result<(), Error>) -> ExitCode {
    for p in paths {
        if let Err(e) = f(p) {
            return fail(what, p, &e);
        }
    }
    ExitCode::SUCCESS
}

const LS_WIDTH: usize = 80;
const LS_TAG_COL: usize = 60;

fn perms_str(ps: &[Perm]) -> String {
    ps.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn ls(xs: &Client, out: &mut impl Write, path: &str, perms: bool, full: bool) -> ExitCode {
    match ls_rec(xs, out, path, 0, perms, full) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail("xs_directory", path, &e),
    }
}

fn ls_rec(
    xs: &Client,
    out: &mut impl Write,
    path: &str,
    depth: usize,
    show_perms: bool,
    full: bool,
) -> Result<(), Error> {
    let children = xs.directory(path)?;
    for c in children {
        let p = join(path, &c);
        let mut line = if full {
            format!("{p} = \"")
        } else {
            format!("{}{c} = \"", " ".repeat(depth))
        };
        match xs.read(&p) {
            Ok(v) => {
                let s = sanitise(&v);
                if !full && line.len() + s.len() + 1 > LS_WIDTH {
                    let keep = LS_WIDTH.saturating_sub(line.len() + 4);
                    let mut cut = keep.min(s.len());
                    while !s.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    line.push_str(&s[..cut]);
                    line.push_str("\\...");
                } else {
                    line.push_str(&s);
                }
                line.push('"');
            }
            Err(e) if e.is_not_found() => continue, // removed meanwhile
            Err(e) => {
                line.pop();
                line.push_str(&format!("<{e}>"));
            }
        }
        if show_perms {
            let ps = xs.get_perms(&p).map(|p| perms_str(&p)).unwrap_or_default();
            if full {
                line.push(' ');
            } else if line.len() < LS_TAG_COL {
                line.push(' ');
                let mut w = line.len();
                while w < LS_TAG_COL {
                    line.push(if w & 1 == 1 { '.' } else { ' ' });
                    w += 1;
                }
            }
            line.push_str(&format!("  ({ps})"));
        }
        if writeln!(out, "{line}").is_err() {
            return Ok(()); // stdout closed (e.g. piped into head)
        }
        match ls_rec(xs, out, &p, depth + 1, show_perms, full) {
            Ok(()) => {}
            Err(e) if e.is_not_found() || e.is_access_denied() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn chmod(xs: &Client, path: &str, perms: &[String], recursive: bool) -> ExitCode {
    let parsed: Result<Vec<Perm>, _> = perms.iter().map(|p| p.parse::<Perm>()).collect();
    let Ok(parsed) = parsed else {
        eprintln!("pore xs chmod: bad permission in {perms:?} (want n|r|w|b followed by a domid)");
        return ExitCode::from(2);
    };
    fn apply(xs: &Client, p: &str, perms: &[Perm], recursive: bool) -> Result<(), Error> {
        xs.set_perms(p, perms)?;
        if recursive {
            for c in xs.directory(p)? {
                apply(xs, &join(p, &c), perms, true)?;
            }
        }
        Ok(())
    }
    match apply(xs, path, &parsed, recursive) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail("could not set permissions on", path, &e),
    }
}

fn watch(xs: &Client, out: &mut impl Write, path: &str, count: Option<u64>) -> ExitCode {
    let w = match xs.watch(path) {
        Ok(w) => w,
        Err(e) => return fail("could not watch", path, &e),
    };
    let mut seen = 0u64;
    while count.is_none_or(|n| seen < n) {
        match w.next_event(Duration::from_secs(3600)) {
            Ok(ev) => {
                seen += 1;
                if writeln!(out, "{}", ev.path).is_err() || out.flush().is_err() {
                    return ExitCode::SUCCESS;
                }
            }
            Err(Error::TimedOut) => continue,
            Err(e) => return fail("watch ended on", path, &e),
        }
    }
    ExitCode::SUCCESS
}

fn list(xs: &Client, out: &mut impl Write, path: &str, prefix: bool) -> ExitCode {
    match xs.directory(path) {
        Ok(children) => {
            for c in children {
                let line = if prefix { join(path, &c) } else { c };
                if writeln!(out, "{line}").is_err() {
                    break;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail("could not list path", path, &e),
    }
}

fn exists(xs: &Client, paths: &[String]) -> ExitCode {
    for p in paths {
        match xs.exists(p) {
            Ok(true) => {}
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => return fail("could not check", p, &e),
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitise_round_trips() {
        let v = b"x\ty\\z\n\r\x01\xffq \"";
        let s = sanitise(v);
        assert_eq!(s, "x\\ty\\\\z\\n\\r\\x01\\xffq \"");
        assert_eq!(unsanitise(&s), v);
        // xenstore-write drops the backslash of an unknown escape
        assert_eq!(unsanitise("a\\zb"), b"azb");
        assert_eq!(unsanitise("\\101\\x41"), b"AA");
        assert_eq!(unsanitise("end\\"), b"end\\");
    }

    #[test]
    fn join_paths() {
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
    }
}
