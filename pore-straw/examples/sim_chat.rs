//! Two domains of the simulated Xen open a straw and exchange messages.
//!
//! Everything runs in this process: a simulated hypervisor (pore-backend-sim), pore's own
//! xenstored as the toolstack's store service, and two domains (`alice` and `bob`). Each domain
//! reaches xenstore through its own store ring page and event channel, as a Xen guest does, runs
//! a straw manager, and the two negotiate a straw through xenstore (the strawman handshake).
//! Alice then sends a few messages, Bob answers each, and Alice closes the straw.
//!
//! ```text
//! cargo run -p pore-straw --features xenstore --example sim_chat
//! ```

use std::error::Error;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use pore_backend_sim::{Hypervisor, SimDomain};
use pore_straw::manager::{Manager, ManagerConfig};
use pore_straw::straw::StrawError;
use pore_straw::xenstore::XsAdapter;
use pore_straw::Endpoint;
use pore_xenstore::server::{Config as ServerConfig, Server};
use pore_xenstore::transport::RingTransport;
use pore_xenstore::{Client, Config as ClientConfig};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Starts a domain's straw manager on xenstore reached through the domain's store ring.
fn manager(domain: SimDomain) -> Result<(Manager<SimDomain, XsAdapter>, Endpoint), Box<dyn Error>> {
    let ring = RingTransport::open_store(&domain)?;
    let xs = Client::with_transport(Box::new(ring), ClientConfig::default())?;
    let me = Endpoint::seed(domain.id());
    let manager = Manager::start(
        domain,
        XsAdapter::new(Arc::new(xs)),
        me.clone(),
        ManagerConfig::default(),
    )?;
    Ok((manager, me))
}

fn main() -> Result<(), Box<dyn Error>> {
    // The hypervisor, with pore's xenstored as its store service: every domain created from now
    // on gets /local/domain/<id> and a store ring to it.
    let hv = Hypervisor::new()?;
    let xenstored = Server::new(ServerConfig::default(), None);
    hv.set_store_service(Arc::new(xenstored.clone()));

    let (alice, alice_ep) = manager(hv.create_domain("alice")?)?;
    let (bob, bob_ep) = manager(hv.create_domain("bob")?)?;
    println!("alice is {alice_ep}, bob is {bob_ep}");

    // Bob accepts whoever opens a straw to him and answers every message.
    let bob_side = thread::spawn(move || -> Result<usize, String> {
        let straw = bob.accept(TIMEOUT).map_err(|e| e.to_string())?;
        let mut answered = 0;
        loop {
            match straw.receiver().recv_timeout(TIMEOUT) {
                Ok(msg) => {
                    let reply = format!("bob got {:?}", String::from_utf8_lossy(&msg));
                    straw
                        .sender()
                        .send(Bytes::from(reply))
                        .map_err(|e| e.to_string())?;
                    answered += 1;
                }
                // Alice closed the straw: every message she sent has been read.
                Err(StrawError::Eof) => return Ok(answered),
                Err(e) => return Err(e.to_string()),
            }
        }
    });

    let straw = alice.open(&bob_ep)?;
    println!("straw open, layout {:?}", straw.layout());
    for text in ["hello", "how are you?", "bye"] {
        straw.sender().send(Bytes::from_static(text.as_bytes()))?;
        let reply = straw.receiver().recv_timeout(TIMEOUT)?;
        println!("alice sent {text:?}, {}", String::from_utf8_lossy(&reply));
    }
    straw.close()?;
    let answered = bob_side.join().map_err(|_| "bob panicked")??;
    println!("bob answered {answered} messages; straw closed");
    xenstored.shutdown();
    Ok(())
}
