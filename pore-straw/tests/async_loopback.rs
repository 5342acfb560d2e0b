//! The async face over the loopback backend, driven by a tokio runtime.

use std::time::Duration;

use bytes::Bytes;
use pore_core::loopback::Loopback;
use pore_core::DomId;
use pore_straw::asynch;
use pore_straw::straw::{open_active, open_passive, Straw, StrawConfig, StrawError};
use pore_straw::{Endpoint, Format, Layout, Role};

fn frame(i: usize) -> Bytes {
    let len = [0usize, 1, 100, 5000, 70_000, 1 << 20][i % 6];
    Bytes::from((0..len).map(|j| (i + j) as u8).collect::<Vec<_>>())
}

#[test]
fn frames_both_ways_in_order_then_close() {
    let xen = Loopback::new();
    let (a, b) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
    let (pa, g) = open_active(&a, DomId(2), Layout::Ling).unwrap();
    let pb = open_passive(&b, DomId(1), Layout::Ling, &g.refs, g.port).unwrap();
    let cfg = StrawConfig::default();
    let sa = Straw::new(
        pa,
        Endpoint::seed(DomId(2)),
        Role::Listener,
        Format::Raw,
        cfg.clone(),
    );
    let sb = Straw::new(pb, Endpoint::seed(DomId(1)), Role::Opener, Format::Raw, cfg);
    let (ta, mut ra) = asynch::split(sa, 4);
    let (tb, mut rb) = asynch::split(sb, 4);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async move {
        const N: usize = 60;
        let send_a = tokio::spawn(async move {
            for i in 0..N {
                ta.send(frame(i)).await.unwrap();
            }
            ta
        });
        let send_b = tokio::spawn(async move {
            for i in 0..N {
                tb.send(frame(i + 1)).await.unwrap();
            }
            tb
        });
        let recv_b = tokio::spawn(async move {
            for i in 0..N {
                assert_eq!(rb.recv().await.unwrap(), frame(i), "a->b #{i}");
            }
            rb
        });
        for i in 0..N {
            assert_eq!(ra.recv().await.unwrap(), frame(i + 1), "b->a #{i}");
        }
        let ta = send_a.await.unwrap();
        let _tb = send_b.await.unwrap();
        let mut rb = recv_b.await.unwrap();
        ta.close().await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(2), rb.recv())
            .await
            .unwrap();
        assert!(end.is_err(), "{end:?}");
        assert!(rb.recv().await.is_err(), "the end repeats");
    });
    let _ = StrawError::Eof;
}

/// The receiver is a `Stream` and the sender a `Sink`: frames flow through `SinkExt::send_all`
/// and come out of `StreamExt::next` in order; closing the sink ends the stream.
#[test]
fn stream_and_sink_carry_frames_then_end() {
    use futures_util::{SinkExt, StreamExt};

    let xen = Loopback::new();
    let (a, b) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
    let (pa, g) = open_active(&a, DomId(2), Layout::Ling).unwrap();
    let pb = open_passive(&b, DomId(1), Layout::Ling, &g.refs, g.port).unwrap();
    let cfg = StrawConfig::default();
    let sa = Straw::new(
        pa,
        Endpoint::seed(DomId(2)),
        Role::Listener,
        Format::Raw,
        cfg.clone(),
    );
    let sb = Straw::new(pb, Endpoint::seed(DomId(1)), Role::Opener, Format::Raw, cfg);
    let (ta, _ra) = asynch::split(sa, 4);
    let (_tb, rb) = asynch::split(sb, 4);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async move {
        const N: usize = 40;
        let sender = tokio::spawn(async move {
            let mut sink = ta.into_sink();
            let mut frames = futures_util::stream::iter((0..N).map(|i| Ok(frame(i))));
            sink.send_all(&mut frames).await.unwrap();
            sink.close().await.unwrap();
        });
        let got: Vec<_> =
            tokio::time::timeout(Duration::from_secs(20), rb.take(N + 1).collect::<Vec<_>>())
                .await
                .expect("the stream ends");
        assert_eq!(got.len(), N + 1, "N frames then the end of stream");
        for (i, r) in got[..N].iter().enumerate() {
            assert_eq!(r.as_ref().unwrap(), &frame(i), "#{i}");
        }
        // Without a manager the close cannot run the xenstore protocol: the peer sees the
        // stream end as its port closing (PeerGone) after every frame sent before it.
        assert!(
            got[N].is_err(),
            "the stream ends with the close: {:?}",
            got[N]
        );
        sender.await.unwrap();
    });
}
