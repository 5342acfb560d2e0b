//! An async face for tokio (feature `tokio`): a straw's halves bridged to tokio channels.
//!
//! [`split`] moves the halves of a [`Straw`] onto two small threads that do the blocking
//! work; an [`AsyncSender`] and an [`AsyncReceiver`] talk to them through bounded tokio
//! channels, so any runtime (or none: the `blocking_*` calls) can drive them. Frames keep their
//! order; [`AsyncSender::close`] sends everything queued before it, then closes the straw
//! gracefully (D17).
//!
//! ```
//! # #[cfg(feature = "tokio")] {
//! use bytes::Bytes;
//! use pore_core::{loopback::Loopback, DomId};
//! use pore_straw::asynch;
//! use pore_straw::straw::{open_active, open_passive, Straw, StrawConfig, StrawError};
//! use pore_straw::{Endpoint, Format, Layout, Role};
//!
//! let xen = Loopback::new();
//! let (a, b) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
//! let (pa, g) = open_active(&a, DomId(2), Layout::Ling)?;
//! let pb = open_passive(&b, DomId(1), Layout::Ling, &g.refs, g.port)?;
//! let cfg = StrawConfig::default();
//! let sa = Straw::new(pa, Endpoint::seed(DomId(2)), Role::Listener, Format::Raw, cfg.clone());
//! let sb = Straw::new(pb, Endpoint::seed(DomId(1)), Role::Opener, Format::Raw, cfg);
//! let (tx, _rx) = asynch::split(sa, 16);
//! let (_tx2, mut rx2) = asynch::split(sb, 16);
//! tx.blocking_send(Bytes::from_static(b"hi"))?;
//! assert_eq!(rx2.blocking_recv()?, "hi");
//! # }
//! # Ok::<(), pore_straw::straw::StrawError>(())
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use pore_core::Backend;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::PollSender;

use crate::straw::{Straw, StrawError};

enum Cmd {
    Frame(Bytes),
    Finish(oneshot::Sender<Result<(), StrawError>>),
    Close(oneshot::Sender<Result<(), StrawError>>),
}

/// The sending half: frames go to a bridge thread in order.
#[derive(Debug, Clone)]
pub struct AsyncSender {
    tx: mpsc::Sender<Cmd>,
    error: Arc<Mutex<Option<StrawError>>>,
}

impl core::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Cmd::Frame(_) => "Frame",
            Cmd::Finish(_) => "Finish",
            Cmd::Close(_) => "Close",
        })
    }
}

/// The receiving half: frames as they arrive, then the error that ended the stream
/// ([`StrawError::Eof`] after a graceful close).
#[derive(Debug)]
pub struct AsyncReceiver {
    rx: mpsc::Receiver<Result<Bytes, StrawError>>,
    end: Option<StrawError>,
}

/// Splits `straw` into async halves with `depth` frames of buffering each way.
pub fn split<B>(straw: Straw<B>, depth: usize) -> (AsyncSender, AsyncReceiver)
where
    B: Backend + Send + Sync + 'static,
{
    let depth = depth.max(1);
    let (sender, receiver) = straw.split();
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Cmd>(depth);
    let (frame_tx, frame_rx) = mpsc::channel(depth);
    let error = Arc::new(Mutex::new(None));
    let err2 = error.clone();
    let spawned = std::thread::Builder::new()
        .name(std::string::String::from("straw-async-tx"))
        .spawn(move || {
            let fail = |e: StrawError| {
                *err2.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            };
            while let Some(cmd) = cmd_rx.blocking_recv() {
                match cmd {
                    Cmd::Frame(f) => {
                        // Blocks as long as the ring stays full; each wait is bounded.
                        let mut r = sender.send_timeout(f.clone(), Duration::from_secs(1));
                        loop {
                            match r {
                                Ok(()) => break,
                                // Nothing taken: try again.
                                Err(StrawError::TimedOut) => {
                                    r = sender.send_timeout(f.clone(), Duration::from_secs(1))
                                }
                                // Partly sent: finish it.
                                Err(StrawError::Queued) => {
                                    r = sender.flush_timeout(Duration::from_secs(1)).map_err(|e| {
                                        match e {
                                            StrawError::TimedOut => StrawError::Queued,
                                            e => e,
                                        }
                                    })
                                }
                                Err(e) => {
                                    fail(e);
                                    break;
                                }
                            }
                        }
                    }
                    Cmd::Finish(reply) => {
                        let _ = reply.send(sender.finish());
                    }
                    Cmd::Close(reply) => {
                        let _ = reply.send(sender.close());
                        return;
                    }
                }
            }
            // Every async sender dropped: close the straw.
            let _ = sender.close();
        });
    if spawned.is_err() {
        *error.lock().unwrap_or_else(|p| p.into_inner()) = Some(StrawError::Closed);
    }
    let _ = std::thread::Builder::new()
        .name(std::string::String::from("straw-async-rx"))
        .spawn(move || loop {
            match receiver.recv_timeout(Duration::from_millis(500)) {
                Ok(f) => {
                    if frame_tx.blocking_send(Ok(f)).is_err() {
                        return; // the async receiver is gone
                    }
                }
                Err(StrawError::TimedOut) => {
                    if frame_tx.is_closed() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = frame_tx.blocking_send(Err(e));
                    return;
                }
            }
        });
    (
        AsyncSender { tx: cmd_tx, error },
        AsyncReceiver {
            rx: frame_rx,
            end: None,
        },
    )
}

impl AsyncSender {
    fn error(&self) -> Option<StrawError> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Queues one frame (waiting while `depth` frames are queued). An error of an earlier
    /// frame is reported here.
    pub async fn send(&self, frame: Bytes) -> Result<(), StrawError> {
        if let Some(e) = self.error() {
            return Err(e);
        }
        self.tx
            .send(Cmd::Frame(frame))
            .await
            .map_err(|_| self.error().unwrap_or(StrawError::Closed))
    }

    /// As [`AsyncSender::send`], outside of async code.
    pub fn blocking_send(&self, frame: Bytes) -> Result<(), StrawError> {
        if let Some(e) = self.error() {
            return Err(e);
        }
        self.tx
            .blocking_send(Cmd::Frame(frame))
            .map_err(|_| self.error().unwrap_or(StrawError::Closed))
    }

    /// Half-closes after everything queued was sent and consumed (see
    /// [`crate::straw::Sender::finish`]).
    pub async fn finish(&self) -> Result<(), StrawError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Finish(tx))
            .await
            .map_err(|_| StrawError::Closed)?;
        rx.await.unwrap_or(Err(StrawError::Closed))
    }

    /// Sends everything queued, then closes the straw gracefully (see
    /// [`crate::straw::Straw::close`]).
    pub async fn close(self) -> Result<(), StrawError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Close(tx))
            .await
            .map_err(|_| StrawError::Closed)?;
        let r = rx.await.unwrap_or(Err(StrawError::Closed));
        match self.error() {
            Some(e) => Err(e),
            None => r,
        }
    }
}

impl AsyncReceiver {
    /// The next frame, or the error that ended the stream (then repeated).
    pub async fn recv(&mut self) -> Result<Bytes, StrawError> {
        if let Some(e) = &self.end {
            return Err(e.clone());
        }
        let r = self.rx.recv().await.unwrap_or(Err(StrawError::Closed));
        if let Err(e) = &r {
            self.end = Some(e.clone());
        }
        r
    }

    /// As [`AsyncReceiver::recv`], outside of async code.
    pub fn blocking_recv(&mut self) -> Result<Bytes, StrawError> {
        if let Some(e) = &self.end {
            return Err(e.clone());
        }
        let r = self.rx.blocking_recv().unwrap_or(Err(StrawError::Closed));
        if let Err(e) = &r {
            self.end = Some(e.clone());
        }
        r
    }

    /// Polls for the next frame (for a hand-written `Stream`): `Ready(None)` once the stream
    /// ended (after its error was returned once).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, StrawError>>> {
        if self.end.is_some() {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Err(e))) => {
                self.end = Some(e.clone());
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.end = Some(StrawError::Closed);
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

impl futures_core::Stream for AsyncReceiver {
    type Item = Result<Bytes, StrawError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}

impl AsyncSender {
    /// This sender as a [`Sink`](futures_sink::Sink) of frames: `poll_ready` waits for room in
    /// the bridge's queue, `poll_flush` for nothing more (frames are handed over in order), and
    /// `poll_close` closes the straw gracefully once everything queued was sent (D17).
    pub fn into_sink(self) -> FrameSink {
        FrameSink {
            tx: PollSender::new(self.tx.clone()),
            sender: self,
            closing: None,
        }
    }
}

/// A [`Sink`](futures_sink::Sink) of frames over a straw (see [`AsyncSender::into_sink`]).
#[derive(Debug)]
pub struct FrameSink {
    tx: PollSender<Cmd>,
    sender: AsyncSender,
    closing: Option<oneshot::Receiver<Result<(), StrawError>>>,
}

impl FrameSink {
    fn failed(&self) -> StrawError {
        self.sender.error().unwrap_or(StrawError::Closed)
    }
}

impl futures_sink::Sink<Bytes> for FrameSink {
    type Error = StrawError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), StrawError>> {
        let this = self.get_mut();
        if let Some(e) = this.sender.error() {
            return Poll::Ready(Err(e));
        }
        match this.tx.poll_reserve(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(_)) => Poll::Ready(Err(this.failed())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn start_send(self: Pin<&mut Self>, frame: Bytes) -> Result<(), StrawError> {
        let this = self.get_mut();
        this.tx
            .send_item(Cmd::Frame(frame))
            .map_err(|_| this.failed())
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), StrawError>> {
        let this = self.get_mut();
        Poll::Ready(match this.sender.error() {
            Some(e) => Err(e),
            None => Ok(()),
        })
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), StrawError>> {
        let this = self.get_mut();
        if this.closing.is_none() {
            match this.tx.poll_reserve(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Err(this.failed())),
                Poll::Pending => return Poll::Pending,
            }
            let (reply, done) = oneshot::channel();
            if this.tx.send_item(Cmd::Close(reply)).is_err() {
                return Poll::Ready(Err(this.failed()));
            }
            this.closing = Some(done);
        }
        let Some(done) = this.closing.as_mut() else {
            return Poll::Ready(Err(StrawError::Closed));
        };
        match Pin::new(done).poll(cx) {
            Poll::Ready(r) => {
                let r = r.unwrap_or(Err(StrawError::Closed));
                Poll::Ready(match this.sender.error() {
                    Some(e) => Err(e),
                    None => r,
                })
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
