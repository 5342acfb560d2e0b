//! A xenstore client against any xenstored: Debian's C `xenstored`, `oxenstored`, pore's own
//! (`pore xenstored --socket PATH`), or the store of the Xen domain you run in.
//!
//! ```text
//! cargo run -p pore-xenstore --example xs_client -- /path/to/xenstored/socket
//! XENSTORED_PATH=/path/to/socket cargo run -p pore-xenstore --example xs_client
//! cargo run -p pore-xenstore --example xs_client     # as xenstore-utils find the store
//! ```
//!
//! It writes a few nodes under `/pore-example` (dom0's privileges are needed on a real store),
//! reads and lists them, watches the directory while a transaction changes it, and removes it.

use std::error::Error;
use std::time::Duration;

use pore_xenstore::Client;

fn main() -> Result<(), Box<dyn Error>> {
    // A socket path given as the argument, else the store as xenstore-utils find it
    // (`XENSTORED_PATH`, then the default socket and `/dev/xen/xenbus`).
    let xs = match std::env::args_os().nth(1) {
        Some(path) => Client::connect_unix(path)?,
        None => Client::open_default()?,
    };

    xs.write("/pore-example/greeting", b"hello")?;
    xs.write("/pore-example/count", b"0")?;
    let greeting = xs.read("/pore-example/greeting")?;
    println!("greeting = {:?}", String::from_utf8_lossy(&greeting));
    println!("/pore-example holds {:?}", xs.directory("/pore-example")?);

    // A watch fires once at registration, then for every change under its path.
    let watch = xs.watch("/pore-example")?;
    let first = watch.next_event(Duration::from_secs(5))?;
    println!("watch registered: {}", first.path);

    // Read-modify-write in a transaction (retried on a conflict).
    xs.transaction(|tx| {
        let n: u32 = String::from_utf8_lossy(&tx.read("/pore-example/count")?)
            .parse()
            .unwrap_or(0);
        tx.write("/pore-example/count", (n + 1).to_string().as_bytes())
    })?;
    let event = watch.next_event(Duration::from_secs(5))?;
    println!("watch fired: {} changed", event.path);
    println!(
        "count = {:?}",
        String::from_utf8_lossy(&xs.read("/pore-example/count")?)
    );

    watch.unwatch()?;
    xs.rm("/pore-example")?;
    println!(
        "removed /pore-example: exists = {}",
        xs.exists("/pore-example")?
    );
    Ok(())
}
