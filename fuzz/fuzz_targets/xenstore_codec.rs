//! The xenstore codec on a hostile byte stream (a guest talking to our server, or a daemon
//! talking to our client): the incremental parser, then every typed decoder on each message.
//! Errors are fine; a panic, an allocation past the payload limit or a hang is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pore_xenstore::codec::{parse_frame, Parser, Progress, Reply, Request, WatchEvent};
use pore_xenstore::MsgType;

/// The largest payload a socket peer may send us (docs/decisions.md D11).
const MAX_PAYLOAD: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let _ = parse_frame(data, MAX_PAYLOAD);
    let mut parser = Parser::new(MAX_PAYLOAD);
    let mut off = 0;
    while off < data.len() {
        // The peer's chunking is part of the input too.
        let step = usize::from(data[off]) % 64 + 1;
        let end = (off + step).min(data.len());
        let (used, progress) = parser.feed(&data[off..end]);
        assert!(used <= end - off);
        let got_message = matches!(progress, Ok(Progress::Message(_)));
        match progress {
            Ok(Progress::Message(msg)) => {
                assert!(msg.payload.len() <= MAX_PAYLOAD);
                let _ = Request::parse(msg.ty, &msg.payload);
                let _ = WatchEvent::parse(&msg.payload);
                for ty in 0..=26 {
                    if let Some(t) = MsgType::from_u32(ty) {
                        let _ = Reply::decode(t, &msg);
                    }
                }
            }
            Ok(Progress::NeedMore(_)) => {}
            Err(_) => return, // the stream cannot be resynchronised: the connection closes
        }
        if used == 0 && !got_message {
            off = end;
        } else {
            off += used;
        }
    }
});
