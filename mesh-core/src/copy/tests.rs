use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, ReadBuf, duplex};

use super::*;

/// Bytes that show their offset, so a reordered or dropped chunk is caught.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn copies_both_ways_with_half_close_and_counts_bytes() {
    let (mut client, mut proxy_a) = duplex(4096);
    let (mut proxy_b, mut server) = duplex(4096);
    let proxy = tokio::spawn(async move { bidirectional(&mut proxy_a, &mut proxy_b).await });

    let request = pattern(3 * 1024 * 1024);
    let sent = request.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await.unwrap();
        client.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        reply
    });
    // The server sees the whole request, then end of stream (the client's half-close),
    // and can still answer.
    let mut received = Vec::new();
    server.read_to_end(&mut received).await.unwrap();
    assert_eq!(received, request);
    server.write_all(b"done").await.unwrap();
    server.shutdown().await.unwrap();

    assert_eq!(writer.await.unwrap(), b"done");
    let (forward, backward) = proxy.await.unwrap().unwrap();
    assert_eq!((forward, backward), (request.len() as u64, 4));
}

#[tokio::test]
async fn a_read_error_ends_the_copy_with_it() {
    struct Failing;
    impl AsyncRead for Failing {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::Error::from(io::ErrorKind::ConnectionReset)))
        }
    }
    impl tokio::io::AsyncWrite for Failing {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
    let (mut other, _peer) = duplex(64);
    let error = bidirectional(&mut Failing, &mut other).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
}

/// A reader that fills every buffer it is given `full` times, then gives `short` bytes
/// once, then would block.
struct Script {
    full: usize,
    short: usize,
}

impl AsyncRead for Script {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.full > 0 {
            self.full -= 1;
            let n = buf.remaining();
            buf.put_slice(&vec![7; n]);
        } else if self.short > 0 {
            let n = std::mem::take(&mut self.short);
            buf.put_slice(&vec![7; n]);
        } else {
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

#[test]
fn buffers_grow_with_full_reads_and_a_bulk_buffer_shrinks_when_quiet() {
    let mut cx = Context::from_waker(Waker::noop());
    let mut sink = tokio::io::sink();

    // Short reads keep the small buffer.
    let mut direction = Direction::new();
    let mut reader = Script {
        full: 0,
        short: 100,
    };
    let poll = direction.poll_copy(&mut cx, Pin::new(&mut reader), Pin::new(&mut sink));
    assert!(poll.is_pending());
    assert_eq!((direction.buf.len(), direction.copied), (SMALL, 100));

    // GROW_AFTER full reads move to MEDIUM, as many more to LARGE.
    let mut direction = Direction::new();
    let mut reader = Script {
        full: 2 * GROW_AFTER as usize,
        short: 10,
    };
    let _ = direction.poll_copy(&mut cx, Pin::new(&mut reader), Pin::new(&mut sink));
    let expected = GROW_AFTER as usize * (SMALL + MEDIUM) + 10;
    assert_eq!(direction.copied, expected as u64);
    // The short read came into the LARGE buffer; the next read would block, which gave
    // the bulk buffer back.
    assert_eq!(direction.buf.len(), SMALL);

    // A MEDIUM buffer stays when quiet: request/response traffic of that size keeps it.
    let mut direction = Direction::new();
    let mut reader = Script {
        full: GROW_AFTER as usize,
        short: 10,
    };
    let _ = direction.poll_copy(&mut cx, Pin::new(&mut reader), Pin::new(&mut sink));
    assert_eq!(direction.buf.len(), MEDIUM);
}
