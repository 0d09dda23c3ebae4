//! One tunnel: an HTTP/2 `CONNECT` stream read and written as a byte stream.
//!
//! It holds the stream's two halves from the `h2` crate and nothing else. hyper's upgraded
//! HTTP/2 stream, used before, hands every write to a task of its own per tunnel through a
//! channel (a task, a channel and a copy per write, and one more wake-up per message); here a
//! write goes straight into the stream's send buffer, within its flow-control capacity, and
//! the connection's task sends it. [`crate::copy::with_tunnel`] moves bytes through it
//! without copying them: it writes received frames out as they are
//! ([`AsyncBufRead`]) and hands buffers it read into to the stream ([`WriteOwned`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf as _, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

use crate::copy::WriteOwned;

/// A tunnel: bytes both ways, half-close included. Dropping it before both sides have ended
/// resets the stream (`CANCEL`).
pub struct Tunnel {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received and not yet read.
    received: Bytes,
    /// This side has ended its half (sent `END_STREAM`).
    ended: bool,
    /// A client's tunnel counts as open on its connection while it lives.
    _open: Option<super::OpenTunnel>,
}

impl Tunnel {
    pub(super) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        open: Option<super::OpenTunnel>,
    ) -> Tunnel {
        Tunnel {
            send,
            recv,
            received: Bytes::new(),
            ended: false,
            _open: open,
        }
    }
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("stream", &self.send.stream_id())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl AsyncBufRead for Tunnel {
    /// The bytes of the DATA frame at hand, as received: no copy.
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        while this.received.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                // The peer ended its half: end of file.
                None => return Poll::Ready(Ok(&[])),
                Some(Ok(data)) => this.received = data,
                Some(Err(error)) => return Poll::Ready(ended_or(error).map(|()| &[][..])),
            }
        }
        Poll::Ready(Ok(&this.received))
    }

    fn consume(self: Pin<&mut Self>, n: usize) {
        let this = self.get_mut();
        this.received.advance(n);
        if this.received.is_empty() {
            // An empty slice would still hold the frame's buffer, read from the connection.
            this.received = Bytes::new();
        }
        // The window reopens as the reader takes the bytes: a slow reader holds the sender
        // back instead of buffering here.
        let _ = this.recv.flow_control().release_capacity(n);
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        crate::copy::poll_read_buffered(self, cx, buf)
    }
}

impl Tunnel {
    /// Waits until the stream may send some of `wanted` bytes: how many it may.
    fn poll_capacity(&mut self, cx: &mut Context<'_>, wanted: usize) -> Poll<io::Result<usize>> {
        let send = &mut self.send;
        send.reserve_capacity(wanted);
        // Only what the peer's windows (and the send buffer's limit) allow is taken, so a
        // writer faster than the peer waits here.
        while send.capacity() == 0 {
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(error)) => return Poll::Ready(Err(io_error(error))),
                // The stream can no longer send: reset by the peer, or the connection gone.
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
        Poll::Ready(Ok(send.capacity().min(wanted)))
    }
}

impl WriteOwned for Tunnel {
    /// Queues the front of `data` for the connection as it is: no copy.
    fn poll_write_owned(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_capacity(cx, data.len()))?;
        let front = if n == data.len() {
            std::mem::take(data)
        } else {
            data.split_to(n)
        };
        self.send.send_data(front, false).map_err(io_error)?;
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_capacity(cx, buf.len()))?;
        self.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What was written is the connection's to send: its task writes it out as soon as it
        // runs, and nothing is held back here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.ended {
            self.ended = true;
            self.send.reserve_capacity(0);
            if let Err(error) = self.send.send_data(Bytes::new(), true) {
                return Poll::Ready(ended_or(error));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// A stream error as the end of the stream when the peer meant it as one (`NO_ERROR`,
/// `CANCEL`), else as an I/O error.
fn ended_or(error: h2::Error) -> io::Result<()> {
    match error.reason() {
        Some(Reason::NO_ERROR | Reason::CANCEL) => Ok(()),
        _ => Err(io_error(error)),
    }
}

fn io_error(error: h2::Error) -> io::Error {
    if error.is_io() {
        error
            .into_io()
            .unwrap_or_else(|| io::ErrorKind::BrokenPipe.into())
    } else if error.reason() == Some(Reason::STREAM_CLOSED) {
        io::Error::new(io::ErrorKind::BrokenPipe, error)
    } else {
        io::Error::other(error)
    }
}
