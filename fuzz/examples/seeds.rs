//! Writes the xenstored targets' seed inputs: `cargo run --example seeds -- DIR`.

fn main() {
    let dir = std::env::args().nth(1).expect("a directory");
    std::fs::create_dir_all(&dir).expect("directory");
    for (i, sc) in pore_fuzz::xenstored::seeds().iter().enumerate() {
        let path = format!("{dir}/seed-{i}");
        std::fs::write(&path, pore_fuzz::xenstored::encode(sc)).expect("written");
        println!("{path}");
    }
}
