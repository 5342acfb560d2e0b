//! Prints the moves of xenstored fuzz inputs: `cargo run --example show -- FILE...`.

fn main() {
    for f in std::env::args().skip(1) {
        let data = std::fs::read(&f).expect("readable input");
        println!("{f}:");
        for m in pore_fuzz::xenstored::decode(&data) {
            println!("  {m:?}");
        }
    }
}
