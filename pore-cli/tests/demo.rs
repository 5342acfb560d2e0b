//! `pore demo` runs end to end on the embedded simulated Xen, in both ring layouts.

use std::process::Command;

fn demo(extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pore"))
        .args(["demo", "--bytes", "4194304", "--round-trips", "100"])
        .args(extra)
        .output()
        .expect("pore demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pore demo failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn demo_negotiates_v2_and_streams_intact() {
    let out = demo(&[]);
    assert!(out.contains("accepted layout=V2"), "{out}");
    assert!(out.contains("64 messages, 4194304 bytes"), "{out}");
    assert!(out.contains("acknowledged intact"), "{out}");
    assert!(
        out.contains("no grant, mapping or port left behind"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("pore demo: ok"), "{out}");
}

#[test]
fn demo_speaks_the_ling_layout() {
    let out = demo(&["--ling"]);
    assert!(out.contains("accepted layout=Ling"), "{out}");
    assert!(
        out.contains("ring-ref-8"),
        "the LING handshake writes ring-ref-1..8: {out}"
    );
    assert!(out.trim_end().ends_with("pore demo: ok"), "{out}");
}
