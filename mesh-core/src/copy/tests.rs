use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Buf as _;
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

/// A reader that gives each of `chunks` once, then would block.
struct Chunks(Vec<Vec<u8>>);

impl AsyncRead for Chunks {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.0.is_empty() {
            return Poll::Pending;
        }
        let chunk = self.0.remove(0);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

/// A writer that takes at most `room` bytes, then would block until given more room.
#[derive(Default)]
struct Limited {
    room: usize,
    taken: Vec<u8>,
}

impl tokio::io::AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(self.room);
        if n == 0 {
            return Poll::Pending;
        }
        self.room -= n;
        self.taken.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[test]
fn only_bytes_the_writer_did_not_take_are_kept_and_only_until_it_takes_them() {
    let mut cx = Context::from_waker(Waker::noop());
    let mut direction = Direction::default();
    let first = pattern(5000);
    let mut reader = Chunks(vec![first.clone(), b"second".to_vec()]);
    let mut writer = Limited {
        room: 3000,
        ..Limited::default()
    };

    // The writer takes 3000 of the first 5000 bytes: the other 2000 are kept, no more read.
    let poll = direction.poll_copy(&mut cx, Pin::new(&mut reader), Pin::new(&mut writer));
    assert!(poll.is_pending());
    assert_eq!(direction.kept.len() - direction.written, 2000);
    assert_eq!(reader.0.len(), 1, "nothing more is read while bytes wait");

    // Room for everything: the kept bytes go first, then the next read; nothing is kept.
    writer.room = usize::MAX;
    let poll = direction.poll_copy(&mut cx, Pin::new(&mut reader), Pin::new(&mut writer));
    assert!(poll.is_pending());
    assert_eq!(
        direction.kept.capacity(),
        0,
        "an idle direction holds no buffer"
    );
    let mut expected = first;
    expected.extend_from_slice(b"second");
    assert_eq!(writer.taken, expected);
    assert_eq!(direction.out.copied, expected.len() as u64);
}

#[test]
fn a_read_takes_up_to_the_scratch_size_at_once() {
    let mut cx = Context::from_waker(Waker::noop());
    let mut direction = Direction::default();
    let mut reader = tokio::io::repeat(1).take(3 * SCRATCH as u64);
    let mut writer = Limited {
        room: usize::MAX,
        ..Limited::default()
    };
    let poll = direction.poll_copy(&mut cx, Pin::new(&mut reader), Pin::new(&mut writer));
    assert!(
        matches!(poll, Poll::Ready(Ok(n)) if n == 3 * SCRATCH as u64),
        "{poll:?}"
    );
}

/// A tunnel's stand-in: hands out `received` chunk by chunk from where they are (then would
/// block, or ends when `ended`), and takes owned buffers while it has `room`, keeping each.
#[derive(Default)]
struct Owned {
    received: Vec<Bytes>,
    ended: bool,
    room: usize,
    taken: Vec<Bytes>,
    shut: bool,
}

impl AsyncRead for Owned {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        poll_read_buffered(self, cx, buf)
    }
}

impl AsyncBufRead for Owned {
    fn poll_fill_buf(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        match this.received.first() {
            Some(chunk) => Poll::Ready(Ok(chunk)),
            None if this.ended => Poll::Ready(Ok(&[])),
            None => Poll::Pending,
        }
    }

    fn consume(self: Pin<&mut Self>, n: usize) {
        let this = self.get_mut();
        this.received[0].advance(n);
        if this.received[0].is_empty() {
            this.received.remove(0);
        }
    }
}

impl tokio::io::AsyncWrite for Owned {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        unreachable!("the copy hands this side owned buffers")
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shut = true;
        Poll::Ready(Ok(()))
    }
}

impl WriteOwned for Owned {
    fn poll_write_owned(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        let n = data.len().min(self.room);
        if n == 0 {
            return Poll::Pending;
        }
        self.room -= n;
        let front = data.split_to(n);
        self.taken.push(front);
        Poll::Ready(Ok(n))
    }
}

impl Owned {
    fn taken(&self) -> Vec<u8> {
        self.taken.iter().flat_map(|b| b.iter().copied()).collect()
    }
}

#[tokio::test]
async fn copies_with_a_tunnel_both_ways_with_half_close_and_counts_bytes() {
    let request = pattern(5 * SCRATCH + 77);
    let mut tunnel = Owned {
        received: vec![
            Bytes::from(pattern(3000)),
            Bytes::from(pattern(SCRATCH * 3)),
        ],
        ended: true,
        room: usize::MAX,
        ..Owned::default()
    };
    let (mut other, mut peer) = duplex(64 * 1024);
    let sent = request.clone();
    let peer_side = tokio::spawn(async move {
        peer.write_all(&sent).await.unwrap();
        peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        got
    });
    let (out, back) = with_tunnel(&mut tunnel, &mut other).await.unwrap();
    drop(other);
    let mut expected_out = pattern(3000);
    expected_out.extend(pattern(SCRATCH * 3));
    assert_eq!(peer_side.await.unwrap(), expected_out, "received, in order");
    assert_eq!(tunnel.taken(), request, "sent, in order");
    assert!(tunnel.shut, "the other side's end is passed on");
    assert_eq!(
        (out, back),
        (expected_out.len() as u64, request.len() as u64)
    );
}

#[test]
fn a_bulk_reader_hands_its_buffers_over_and_a_quiet_one_holds_none() {
    let mut cx = Context::from_waker(Waker::noop());
    let mut pump = IntoOwned::default();
    // Two full reads and a small one, then nothing for now.
    let mut reader = Chunks(vec![pattern(SCRATCH), pattern(SCRATCH), pattern(10)]);
    let mut tunnel = Owned {
        room: SCRATCH + 100,
        ..Owned::default()
    };

    // The tunnel takes the first read and part of the second: the rest waits, nothing more
    // is read meanwhile.
    let poll = pump.poll_copy(&mut cx, Pin::new(&mut reader), Pin::new(&mut tunnel));
    assert!(poll.is_pending());
    assert_eq!(pump.pending.len(), SCRATCH - 100);
    assert_eq!(reader.0.len(), 1);
    assert!(
        pump.bulk,
        "a full read makes the next one go into a buffer of its own"
    );

    tunnel.room = usize::MAX;
    let poll = pump.poll_copy(&mut cx, Pin::new(&mut reader), Pin::new(&mut tunnel));
    assert!(poll.is_pending());
    let mut expected = pattern(SCRATCH);
    expected.extend(pattern(SCRATCH));
    expected.extend(pattern(10));
    assert_eq!(tunnel.taken(), expected);
    assert_eq!(pump.out.copied, expected.len() as u64);
    // The small read came after a bulk one, so it was read into a buffer of its own and
    // handed over as it was: the tunnel holds the whole buffer.
    let last = tunnel.taken.pop().unwrap();
    assert_eq!(last.len(), 10);
    assert_eq!(last.try_into_mut().unwrap().capacity(), SCRATCH);
    // Quiet: no buffer is held, and the next read starts small again.
    assert!(pump.pending.is_empty());
    assert!(!pump.bulk);
}

#[test]
fn received_buffers_are_written_from_where_they_are_and_kept_by_nobody_else() {
    let mut cx = Context::from_waker(Waker::noop());
    let mut pump = FromBuffers::default();
    let mut tunnel = Owned {
        received: vec![Bytes::from(pattern(5000)), Bytes::from_static(b"second")],
        ..Owned::default()
    };
    let mut writer = Limited {
        room: 3000,
        ..Limited::default()
    };
    let poll = pump.poll_copy(&mut cx, Pin::new(&mut tunnel), Pin::new(&mut writer));
    assert!(poll.is_pending());
    assert_eq!(
        tunnel.received[0].len(),
        2000,
        "the rest stays with the tunnel"
    );

    writer.room = usize::MAX;
    let poll = pump.poll_copy(&mut cx, Pin::new(&mut tunnel), Pin::new(&mut writer));
    assert!(poll.is_pending());
    let mut expected = pattern(5000);
    expected.extend_from_slice(b"second");
    assert_eq!(writer.taken, expected);
    assert_eq!(pump.out.copied, expected.len() as u64);

    tunnel.ended = true;
    let poll = pump.poll_copy(&mut cx, Pin::new(&mut tunnel), Pin::new(&mut writer));
    assert!(
        matches!(poll, Poll::Ready(Ok(n)) if n == expected.len() as u64),
        "{poll:?}"
    );
}
