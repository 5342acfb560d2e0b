//! Inputs of the straw_json target kept as tests.

/// A mailbox dropped by its user while its address stays registered: the straw keeps its
/// queued bytes, so a later message counts as "mailbox full" (found by the target; the
/// model follows the straw here).
#[test]
fn dropped_mailbox() {
    let data = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/seeds/straw_json/dropped-mailbox"
    ))
    .expect("seed");
    pore_fuzz::straw_json::run(&data);
}
