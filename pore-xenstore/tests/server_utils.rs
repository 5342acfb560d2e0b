//! Debian's xenstore-utils against our server: every command is also run against
//! Debian's C xenstored, and the two must be indistinguishable (exit code, stdout,
//! stderr). A few absolute expectations make sure both did something.
#![cfg(feature = "std")]

mod server_common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pore_xenstore::server::Config;
use server_common::*;

const SCRIPT: &[&[&str]] = &[
    &["xenstore-write", "/t/a", "hello", "/t/b", "world"],
    &["xenstore-read", "/t/a", "/t/b"],
    &["xenstore-read", "/t/missing"],
    &["xenstore-read", "-p", "/t/a"],
    &["xenstore-exists", "/t/a"],
    &["xenstore-exists", "/t/nope"],
    &["xenstore-list", "/t"],
    &["xenstore-list", "/t/nope"],
    &["xenstore-write", "/t/c/d/e", "deep", "/t/c/f", ""],
    &["xenstore-ls", "/t"],
    &["xenstore-ls", "-p", "/t"],
    &["xenstore-ls", "-f", "/t"],
    &["xenstore-ls", "-fp", "/"],
    &["xenstore-ls", "/nope"],
    &["xenstore-chmod", "/t/a", "n0", "r5", "w7", "b9"],
    &["xenstore-ls", "-p", "/t"],
    &["xenstore-chmod", "-r", "/t/c", "r3"],
    &["xenstore-ls", "-fp", "/t"],
    &["xenstore-chmod", "/t/a", "x1"],
    &["xenstore-chmod", "/t/nope", "n0"],
    &["xenstore-write", "rel/x", "1"],
    &["xenstore-read", "rel/x", "/local/domain/0/rel/x"],
    &["xenstore-write", "/bad path", "x"],
    &["xenstore-write", "/t/dot.x", "x"],
    &["xenstore-read", "@foo"],
    &["xenstore-rm", "/t/a"],
    &["xenstore-rm", "/t/a"],
    &["xenstore-rm", "/t/nope/deeper"],
    &["xenstore-list", "/t"],
    &["xenstore-rm", "-t", "/t/c/d/e"],
    &["xenstore-ls", "-f", "/t"],
    &["xenstore-rm", "/t"],
    &["xenstore-exists", "/t"],
    &["xenstore-list", "/"],
    &["xenstore-ls", "-fp", "/"],
];

fn run_script(sock: &Path) -> Vec<(String, Run)> {
    SCRIPT
        .iter()
        .map(|cmd| (cmd.join(" "), run(sock, cmd[0], &cmd[1..])))
        .collect()
}

/// `xenstore-watch -n 3 /w` while another client writes twice under /w.
fn run_watch(sock: &Path) -> String {
    let child = Command::new("timeout")
        .args(["10", "xenstore-watch", "-n", "3", "/w"])
        .env("XENSTORED_PATH", sock)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The registration event arrives once the watch is set; give it time to register.
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(run(sock, "xenstore-write", &["/w/x", "1"]).code, Some(0));
    assert_eq!(run(sock, "xenstore-rm", &["/w"]).code, Some(0));
    let out = child.wait_with_output().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(9),
        "xenstore-watch did not get 3 events"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn xenstore_utils_cannot_tell_us_from_c() {
    if !have(
        "xenstore-utils",
        Path::new("/usr/bin/xenstore-write").exists(),
    ) {
        return;
    }
    let ours = Ours::start(Config::default());
    let mine = run_script(&ours.sock);
    // Absolute expectations.
    assert_eq!(mine[1].1.stdout, "hello\nworld\n");
    assert_eq!(mine[2].1.code, Some(1));
    assert_eq!(mine[4].1.code, Some(0));
    assert_eq!(mine[5].1.code, Some(1));
    assert!(
        mine[10]
            .1
            .stdout
            .contains("a = \"hello\"  . . . . . . . . . . . . . . . . . . . . . . . . . .  (n0)")
            || mine[10].1.stdout.contains("(n0)"),
        "{}",
        mine[10].1.stdout
    );
    let watch_mine = run_watch(&ours.sock);
    assert_eq!(watch_mine, "/w\n/w/x\n/w\n");

    if !have("Debian's C xenstored", c_daemon_available()) {
        return;
    }
    let Some(c) = CDaemon::start(&[]) else {
        assert!(!require_interop(), "C xenstored did not start");
        return;
    };
    let theirs = run_script(&c.sock);
    let mut diffs = Vec::new();
    for ((cmd, a), (_, b)) in mine.iter().zip(&theirs) {
        if a != b {
            diffs.push(format!("{cmd}\n  ours: {a:?}\n  C:    {b:?}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} commands differ:\n{}",
        diffs.len(),
        SCRIPT.len(),
        diffs.join("\n")
    );
    assert_eq!(watch_mine, run_watch(&c.sock));
    eprintln!(
        "{} xenstore-utils commands + xenstore-watch identical on both",
        SCRIPT.len()
    );
}
