//! `pore sim` + `pore straw listen` + `pore straw connect`: stdin/stdout piped both ways over a
//! straw between two domain processes of a standalone simulated Xen.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const PORE: &str = env!("CARGO_BIN_EXE_pore");

/// Kills the wrapped child when dropped, so a failing test leaves no process behind.
struct Reaper(Child);

impl Drop for Reaper {
    /// SIGTERM first, so that `pore sim` removes its sockets; SIGKILL after 5 s.
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

/// Sends SIGTERM and waits up to 5 s for the exit; then SIGKILL. Returns the exit status.
fn terminate(child: &mut Child) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// `pore sim` ends cleanly on SIGTERM: exit status 0 and both of its sockets removed (they
/// used to pile up in the temporary directory, one pair per test run).
#[test]
fn pore_sim_removes_its_sockets_on_sigterm() {
    let mut sim = Command::new(PORE)
        .args(["sim", "--duration", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("pore sim starts");
    let mut lines = BufReader::new(sim.stdout.take().unwrap()).lines();
    let mut paths = Vec::new();
    for _ in 0..2 {
        let line = lines.next().expect("pore sim prints its sockets").unwrap();
        let (_, v) = line.split_once('=').expect("KEY=value");
        paths.push(std::path::PathBuf::from(v));
    }
    for p in &paths {
        assert!(p.exists(), "{} exists while pore sim runs", p.display());
    }
    let status = terminate(&mut sim).expect("pore sim exits on SIGTERM within 5 s");
    assert!(status.success(), "{status:?}");
    for p in &paths {
        assert!(!p.exists(), "{} is removed", p.display());
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed ^ (i >> 9) as u8)
        })
        .collect()
}

#[test]
fn listen_and_connect_pipe_both_ways_and_exit_zero() {
    pipe_case(&[], false, 300_000, 200_000);
}

#[test]
fn an_empty_stdin_still_receives_everything() {
    pipe_case(&[], false, 150_000, 0);
}

/// With Xen's close semantics the graceful end works the same: it never relied on the
/// simulator reporting a closed port.
#[test]
fn both_ways_on_a_sim_with_xen_faithful_close() {
    pipe_case(&["--peer-close", "silent"], false, 200_000, 100_000);
}

/// `--echo` sends every frame back: the connector receives exactly what it sent, and both exit
/// 0 once the connector's end of stdin has travelled there and back.
#[test]
fn an_echoing_listener_returns_every_byte() {
    pipe_case(&["--peer-close", "silent"], true, 500_000, 0);
}

#[test]
fn a_bad_peer_close_mode_is_refused() {
    let out = Command::new(PORE)
        .args(["sim", "--peer-close", "loud", "--duration", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected `reported` or `silent`"), "{err}");
}

/// `--framed --layout ling`: whole frames (0 B to 1 MiB, each a 4-byte length and its bytes
/// on stdin and stdout) over the seed's LING layout, echoed back byte for byte.
#[test]
fn framed_frames_over_a_forced_ling_layout_come_back_whole() {
    let mut input = Vec::new();
    for (i, len) in [0usize, 1, 100, 0, 5000, 70_000, 1 << 20]
        .into_iter()
        .enumerate()
    {
        input.extend_from_slice(&(len as u32).to_le_bytes());
        input.extend_from_slice(&data(len, i as u8));
    }
    let (_, err) = pipe_io(
        &["--peer-close", "silent"],
        &["--framed", "--layout", "ling"],
        true,
        (input, None),
        Vec::new(),
    );
    assert!(err.contains("Ling"), "the connector said {err:?}");
}

/// `--echoed` (for a peer that echoes and never half-closes, like a LING strawman): the
/// connector ends once every frame it sent has come back, and still exits 0 with every byte.
#[test]
fn an_echoed_connector_ends_when_every_frame_is_back() {
    let mut input = Vec::new();
    for (i, len) in [3usize, 0, 70_000, 1].into_iter().enumerate() {
        input.extend_from_slice(&(len as u32).to_le_bytes());
        input.extend_from_slice(&data(len, i as u8));
    }
    let (_, err) = pipe_io(
        &[],
        &["--framed", "--echoed"],
        true,
        (input, None),
        Vec::new(),
    );
    assert!(err.contains("connected"), "the connector said {err:?}");
}

/// `--generate` sends frames made up in memory instead of stdin, `--sink` counts what arrives
/// instead of writing it out: both sides do both here, and each reports exactly what the other
/// generated.
#[test]
fn generated_frames_are_counted_by_a_sink() {
    let args = ["--generate", "300", "--frame-size", "1000", "--sink"];
    let (listener, connector) = pipe_io(&[], &args, false, (Vec::new(), None), Vec::new());
    for (name, err) in [("listener", &listener), ("connector", &connector)] {
        assert!(
            err.contains("received 300 frames, 300000 bytes"),
            "the {name} said {err:?}"
        );
    }
}

/// `--polling` on both sides: the straw runs in polling mode and neither side sends an
/// event; on one side only, it runs with events.
#[test]
fn polling_is_used_when_both_sides_ask() {
    for (ask, listener_args) in [(true, vec!["--polling"]), (false, vec![])] {
        let args = [
            "--generate",
            "200",
            "--frame-size",
            "5000",
            "--sink",
            "--polling",
        ];
        let listener_args: Vec<&str> = args[..5].iter().copied().chain(listener_args).collect();
        let (listener, connector) = pipe_io_split(
            &[],
            (&listener_args, &args),
            false,
            (Vec::new(), None),
            Vec::new(),
        );
        for (name, err) in [("listener", &listener), ("connector", &connector)] {
            assert!(
                err.contains("received 200 frames, 1000000 bytes"),
                "the {name} said {err:?}"
            );
            assert_eq!(
                err.contains(", polling)"),
                ask,
                "both asked: {ask}; the {name} said {err:?}"
            );
            if ask {
                let counts: Vec<&str> = err.split("events sent ").skip(1).collect();
                assert_eq!(counts.len(), 2, "the {name} said {err:?}");
                assert!(
                    counts.iter().all(|c| c.starts_with("0,")),
                    "the {name} sent events: {err:?}"
                );
            }
        }
    }
}

/// A live peer is waited for however long it is silent: a pause in the connector's input
/// far longer than `--io-timeout` leaves both sides waiting, not failing (they gave up
/// with "timed out" before, which a slow emulated Xen hit with the default 30 s).
#[test]
fn a_silent_live_peer_is_waited_for_past_the_io_timeout() {
    let mut input = Vec::new();
    for (i, len) in [100usize, 70_000, 3].into_iter().enumerate() {
        input.extend_from_slice(&(len as u32).to_le_bytes());
        input.extend_from_slice(&data(len, i as u8));
    }
    let first = 4 + 100;
    pipe_io(
        &["--peer-close", "silent"],
        &["--framed", "--io-timeout", "0.1"],
        true,
        (input, Some((first, Duration::from_millis(1500)))),
        Vec::new(),
    );
}

/// `--layout v2` with a bad `--ring-pages` is refused before anything is opened.
#[test]
fn ring_pages_must_be_a_power_of_two() {
    let out = Command::new(PORE)
        .args(["straw", "--backend", "sim", "--ring-pages", "3", "listen"])
        .env("PORE_SIM_SOCKET", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad --ring-pages 3"), "{err}");
}

/// A normal end is not a warning. Both commands used to print
/// `xenstore connection lost ... the port was closed (its domain died)` and
/// `straw: watch stopped` at WARN on their way out (the domain went before its xenstore
/// connection).
#[test]
fn a_clean_end_prints_no_warning() {
    let (listener, connector) = pipe_case(&[], false, 10_000, 10_000);
    for (name, err) in [("listener", listener), ("connector", connector)] {
        assert!(
            !err.contains("WARN") && !err.contains("ERROR"),
            "{name} said:\n{err}"
        );
    }
}

/// With `echo`, the listener runs `--echo` (its stdin is unused) and the connector must get back
/// what it sent. Returns what the listener and the connector printed on stderr.
fn pipe_case(
    sim_args: &[&str],
    echo: bool,
    connector_sends: usize,
    listener_sends: usize,
) -> (String, String) {
    pipe_io(
        sim_args,
        &[],
        echo,
        (data(connector_sends, 1), None),
        data(listener_sends, 2),
    )
}

/// Runs a listener and a connector (both with `straw_args`) fed with these inputs (the
/// connector's with an optional pause after its first N bytes); returns what the listener and
/// the connector printed on stderr.
fn pipe_io(
    sim_args: &[&str],
    straw_args: &[&str],
    echo: bool,
    to_connector: (Vec<u8>, Option<(usize, Duration)>),
    to_listener: Vec<u8>,
) -> (String, String) {
    pipe_io_split(
        sim_args,
        (straw_args, straw_args),
        echo,
        to_connector,
        to_listener,
    )
}

/// [`pipe_io`] with the listener's and the connector's own straw arguments.
fn pipe_io_split(
    sim_args: &[&str],
    (listener_args, connector_args): (&[&str], &[&str]),
    echo: bool,
    (to_connector, pause): (Vec<u8>, Option<(usize, Duration)>),
    to_listener: Vec<u8>,
) -> (String, String) {
    let mut sim = Reaper(
        Command::new(PORE)
            .args(["sim", "--duration", "60"])
            .args(sim_args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("pore sim starts"),
    );
    let mut lines = BufReader::new(sim.0.stdout.take().unwrap()).lines();
    let mut env = Vec::new();
    for _ in 0..2 {
        let line = lines.next().expect("pore sim prints its sockets").unwrap();
        let (k, v) = line.split_once('=').expect("KEY=value");
        env.push((k.to_string(), v.to_string()));
    }
    assert_eq!(env[0].0, "PORE_SIM_SOCKET");

    let mut listener = Reaper(
        Command::new(PORE)
            .args(["straw", "listen"])
            .args(listener_args)
            .args(echo.then_some("--echo"))
            .envs(env.iter().cloned())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut listener_err = BufReader::new(listener.0.stderr.take().unwrap());
    let mut first = String::new();
    listener_err.read_line(&mut first).unwrap();
    let domid: u16 = first
        .split_whitespace()
        .nth(5)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("listener said {first:?}"));
    let listener_rest = thread::spawn(move || {
        let mut rest = String::new();
        listener_err.read_to_string(&mut rest).unwrap();
        rest
    });

    let mut connector = Reaper(
        Command::new(PORE)
            .args(["straw", "connect", &domid.to_string()])
            .args(connector_args)
            .envs(env.iter().cloned())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let feed = |child: &mut Child, bytes: Vec<u8>, pause: Option<(usize, Duration)>| {
        let mut stdin = child.stdin.take().unwrap();
        thread::spawn(move || {
            let (at, nap) = pause.unwrap_or((0, Duration::ZERO));
            stdin.write_all(&bytes[..at]).unwrap();
            stdin.flush().unwrap();
            thread::sleep(nap);
            stdin.write_all(&bytes[at..]).unwrap()
        })
    };
    let drain = |child: &mut Child| {
        let mut out = child.stdout.take().unwrap();
        thread::spawn(move || {
            let mut v = Vec::new();
            out.read_to_end(&mut v).unwrap();
            v
        })
    };
    let (f1, f2) = (
        feed(&mut listener.0, to_listener.clone(), None),
        feed(&mut connector.0, to_connector.clone(), pause),
    );
    let (d1, d2) = (drain(&mut listener.0), drain(&mut connector.0));
    f1.join().unwrap();
    f2.join().unwrap();
    let (got_by_listener, got_by_connector) = (d1.join().unwrap(), d2.join().unwrap());
    for (name, child) in [
        ("listener", &mut listener.0),
        ("connector", &mut connector.0),
    ] {
        let mut waited = 0;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(waited < 200, "{name} did not exit");
            waited += 1;
            thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{name} exited with {status}");
    }
    if echo {
        assert!(
            got_by_listener.is_empty(),
            "an echoing listener wrote stdout"
        );
    } else {
        assert!(
            got_by_listener == to_connector,
            "listener got {} bytes",
            got_by_listener.len()
        );
    }
    let want_back = if echo { &to_connector } else { &to_listener };
    assert!(
        got_by_connector == *want_back,
        "connector got {} bytes",
        got_by_connector.len()
    );
    let mut err = String::new();
    connector
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (first + &listener_rest.join().unwrap(), err)
}

/// On a machine without Xen (this one; the lab runs the real thing), `--backend linux` names
/// the missing device and `auto` says what it looked for.
#[test]
fn without_xen_the_backends_say_why() {
    if std::path::Path::new("/dev/xen/evtchn").exists() {
        eprintln!("skipped: this machine has /dev/xen/evtchn");
        return;
    }
    let out = Command::new(PORE)
        .args(["straw", "--backend", "linux", "connect", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/dev/xen/evtchn") && err.contains("is this a Xen domain"),
        "{err}"
    );
    let out = Command::new(PORE)
        .args(["straw", "connect", "1"])
        .env_remove("PORE_SIM_SOCKET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no Xen found") && err.contains("PORE_SIM_SOCKET"),
        "{err}"
    );
}
