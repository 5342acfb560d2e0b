//! Prints the moves of xenstored (or straw_json, straw_manager) fuzz inputs:
//! `cargo run --example show -- FILE...`.

fn main() {
    for f in std::env::args().skip(1) {
        let data = std::fs::read(&f).expect("readable input");
        println!("{f}:");
        if f.contains("straw_manager") {
            for m in pore_fuzz::straw_manager::decode(&data) {
                println!("  {m:?}");
            }
            continue;
        }
        if f.contains("straw_json") {
            print!("{}", pore_fuzz::straw_json::decode(&data));
            continue;
        }
        for m in pore_fuzz::xenstored::decode(&data) {
            println!("  {m:?}");
        }
    }
}
