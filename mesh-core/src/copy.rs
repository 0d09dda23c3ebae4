//! Copying a proxied connection both ways, holding memory only for bytes in flight.
//!
//! `tokio::io::copy_bidirectional` holds two 8 KiB buffers for the life of every
//! connection: 16 KiB per connection whether it carries a request a minute or a bulk
//! transfer, and too small to move bulk data in few system calls. Here every read goes into
//! one [`SCRATCH`]-sized buffer per thread and is written on at once from there; only what
//! the writer does not take (it is full: backpressure) is kept, in a buffer of the
//! connection's own, until the writer takes it (the buffer is given back when the reader
//! goes quiet). An idle connection holds no buffer, and a bulk transfer moves up to
//! [`SCRATCH`] bytes per system call. A direction whose reader ended shuts its writer down
//! (half-close), and the copy ends when both directions have.
//!
//! [`with_tunnel`] does the same for a side that holds what it received in buffers of its
//! own and takes buffers it is given (an HBONE tunnel: [`AsyncBufRead`] and [`WriteOwned`]),
//! so the proxy itself copies no byte of a bulk transfer: received frames are written out
//! from where they are, and a bulk reader's bytes are read into buffers that are then handed
//! to the tunnel whole. On one iperf3 stream through two node agents, this took the sending
//! agent's CPU per GB down 5-6 % (README, "Copying and threads").

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

/// The most one read takes. Through a tunnel, reads of 256 KiB cost the sending agent 10 %
/// less per GB than reads of 128 KiB; 512 KiB did no better (README, "Copying and threads").
pub const SCRATCH: usize = 256 * 1024;

/// The read buffer of a copy nested in another's poll (see [`with_scratch`]).
const NESTED: usize = 16 * 1024;

/// A read at least this large marks a bulk transfer: [`with_tunnel`] reads the next one into
/// a buffer of its own, to hand over whole, instead of copying it out of [`SCRATCH`].
const BULK: usize = SCRATCH / 2;

/// A writer that can take the bytes it is given, instead of copying them.
pub trait WriteOwned: AsyncWrite {
    /// Takes bytes from the front of `data` (what it takes is gone from `data`), waiting
    /// until it can take some: how many it took.
    fn poll_write_owned(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>>;
}

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Runs `f` on this thread's [`SCRATCH`] buffer; a copy nested in another's poll (a reader
/// or writer that copies through this module itself) gets a smaller buffer of its own.
fn with_scratch<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    SCRATCH_BUF.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        Err(_) => f(&mut vec![0; NESTED]),
    })
}

/// Copies `a` to `b` and `b` to `a` until both have ended (each end shuts the other side's
/// writer down) or either fails. Returns the bytes copied `a` → `b` and `b` → `a`.
pub async fn bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    both_ways(a, b, Direction::default(), Direction::default()).await
}

/// [`bidirectional`] between a tunnel and `other`, copying nothing in the proxy that a
/// socket does not need: the tunnel's received bytes are written to `other` from its own
/// buffers, and `other`'s are handed to the tunnel. Returns the bytes copied `tunnel` →
/// `other` and `other` → `tunnel`.
pub async fn with_tunnel<T, O>(tunnel: &mut T, other: &mut O) -> io::Result<(u64, u64)>
where
    T: AsyncBufRead + WriteOwned + Unpin + ?Sized,
    O: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    both_ways(tunnel, other, FromBuffers::default(), IntoOwned::default()).await
}

async fn both_ways<A, B, F, G>(
    a: &mut A,
    b: &mut B,
    forward: F,
    backward: G,
) -> io::Result<(u64, u64)>
where
    A: AsyncWrite + Unpin + ?Sized,
    B: AsyncWrite + Unpin + ?Sized,
    F: Pump<A, B>,
    G: Pump<B, A>,
{
    let mut a_to_b = Transfer::Running(forward);
    let mut b_to_a = Transfer::Running(backward);
    poll_fn(|cx| {
        let forward = a_to_b.poll(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let backward = b_to_a.poll(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        Poll::Ready(Ok((ready!(forward), ready!(backward))))
    })
    .await
}

/// One direction's copy, polled until its reader has ended and all it read is written.
trait Pump<R: ?Sized, W: ?Sized> {
    /// The bytes copied, once done.
    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        reader: Pin<&mut R>,
        writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>;
}

enum Transfer<P> {
    Running(P),
    ShuttingDown(u64),
    Done(u64),
}

impl<P> Transfer<P> {
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        P: Pump<R, W>,
        R: ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            match self {
                Transfer::Running(pump) => {
                    let copied = ready!(pump.poll_copy(cx, reader.as_mut(), writer.as_mut()))?;
                    *self = Transfer::ShuttingDown(copied);
                }
                Transfer::ShuttingDown(copied) => {
                    let copied = *copied;
                    ready!(writer.as_mut().poll_shutdown(cx))?;
                    *self = Transfer::Done(copied);
                }
                Transfer::Done(copied) => return Poll::Ready(Ok(*copied)),
            }
        }
    }
}

/// One direction: the bytes read that the writer has not taken yet, and what it has copied.
#[derive(Default)]
struct Direction {
    /// `kept[written..]` waits for the writer.
    kept: Vec<u8>,
    written: usize,
    reader_done: bool,
    out: Written,
}

/// What one read from the scratch buffer came to.
enum Read {
    /// Data, all written on, or the rest kept.
    Data,
    /// The reader ended.
    Ended,
}

impl<R, W> Pump<R, W> for Direction
where
    R: AsyncRead + ?Sized,
    W: AsyncWrite + ?Sized,
{
    /// Copies until the reader ends (then flushes): the bytes copied.
    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>> {
        loop {
            while self.written < self.kept.len() {
                let n = ready!(writer.as_mut().poll_write(cx, &self.kept[self.written..]))?;
                self.out.add(n)?;
                self.written += n;
            }
            // Written out: the buffer stays while the transfer is busy.
            self.kept.clear();
            self.written = 0;
            if self.reader_done {
                return self.out.poll_done(cx, writer);
            }
            let read = with_scratch(|scratch| {
                self.read_and_write(cx, reader.as_mut(), writer.as_mut(), scratch)
            });
            match read {
                Poll::Ready(Ok(Read::Data)) => {}
                Poll::Ready(Ok(Read::Ended)) => self.reader_done = true,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {
                    // Quiet: give the buffer back.
                    self.kept = Vec::new();
                    ready!(self.out.poll_flush(cx, writer))?;
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Direction {
    /// One read into `scratch`, written on at once; what the writer does not take is kept.
    fn read_and_write<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        scratch: &mut [u8],
    ) -> Poll<io::Result<Read>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        let mut read = ReadBuf::new(scratch);
        ready!(reader.poll_read(cx, &mut read))?;
        let data = read.filled();
        if data.is_empty() {
            return Poll::Ready(Ok(Read::Ended));
        }
        let mut at = 0;
        while at < data.len() {
            match writer.as_mut().poll_write(cx, &data[at..]) {
                Poll::Ready(Ok(n)) => {
                    self.out.add(n)?;
                    at += n;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                // The writer will wake the task when it takes more.
                Poll::Pending => {
                    self.kept.extend_from_slice(&data[at..]);
                    break;
                }
            }
        }
        Poll::Ready(Ok(Read::Data))
    }
}

/// What a direction has written: the count, and whether the writer may hold some of it.
#[derive(Default)]
struct Written {
    copied: u64,
    /// Bytes written since the last flush.
    unflushed: bool,
}

impl Written {
    /// Counts `n` bytes the writer took; none is an error (it can take no more, ever).
    fn add(&mut self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the writer accepted no bytes",
            ));
        }
        self.copied += n as u64;
        self.unflushed = true;
        Ok(())
    }

    /// Pushes out what was written since the last flush, so it does not wait in the writer
    /// for more.
    fn poll_flush<W: AsyncWrite + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>> {
        if self.unflushed {
            ready!(writer.poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    /// The end of a direction: a last flush, then the count.
    fn poll_done<W: AsyncWrite + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>> {
        ready!(writer.poll_flush(cx))?;
        self.unflushed = false;
        Poll::Ready(Ok(self.copied))
    }
}

/// From a reader with buffers of its own: each is written on from where it is.
#[derive(Default)]
struct FromBuffers {
    out: Written,
}

impl<R, W> Pump<R, W> for FromBuffers
where
    R: AsyncBufRead + ?Sized,
    W: AsyncWrite + ?Sized,
{
    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>> {
        loop {
            let data = match reader.as_mut().poll_fill_buf(cx) {
                Poll::Ready(data) => data?,
                Poll::Pending => {
                    ready!(self.out.poll_flush(cx, writer))?;
                    return Poll::Pending;
                }
            };
            if data.is_empty() {
                return self.out.poll_done(cx, writer);
            }
            // The bytes stay with the reader until the writer takes them: nothing is kept here.
            let n = ready!(writer.as_mut().poll_write(cx, data))?;
            self.out.add(n)?;
            reader.as_mut().consume(n);
        }
    }
}

/// Into a writer that takes buffers whole. Small reads are copied out of [`SCRATCH`], as in
/// [`Direction`]; once a read comes to [`BULK`] bytes, the next is read into a buffer of its
/// own, which the writer takes as it is, until a read is smaller or would wait.
#[derive(Default)]
struct IntoOwned {
    /// Read and not yet taken by the writer; empty (and holding no buffer) otherwise.
    pending: Bytes,
    reader_done: bool,
    bulk: bool,
    out: Written,
}

impl<R, W> Pump<R, W> for IntoOwned
where
    R: AsyncRead + ?Sized,
    W: WriteOwned + ?Sized,
{
    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>> {
        loop {
            while !self.pending.is_empty() {
                let n = ready!(writer.as_mut().poll_write_owned(cx, &mut self.pending))?;
                self.out.add(n)?;
            }
            // Even emptied, a slice would hold on to the buffer it was cut from.
            self.pending = Bytes::new();
            if self.reader_done {
                return self.out.poll_done(cx, writer);
            }
            let read = if self.bulk {
                let mut buffer = BytesMut::with_capacity(SCRATCH);
                tokio_util::io::poll_read_buf(reader.as_mut(), cx, &mut buffer)
                    .map_ok(|_| buffer.freeze())
            } else {
                with_scratch(|scratch| read_copied(cx, reader.as_mut(), scratch))
            };
            match read {
                Poll::Ready(Ok(data)) if data.is_empty() => self.reader_done = true,
                Poll::Ready(Ok(data)) => {
                    self.bulk = data.len() >= BULK;
                    self.pending = data;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {
                    // Quiet: the next read starts small again.
                    self.bulk = false;
                    ready!(self.out.poll_flush(cx, writer))?;
                    return Poll::Pending;
                }
            }
        }
    }
}

/// `poll_read` for a reader with buffers of its own: copies from the buffer at hand into
/// `buf`, for callers that want the bytes in a buffer of theirs.
pub fn poll_read_buffered<R: AsyncBufRead + ?Sized>(
    mut reader: Pin<&mut R>,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let data = ready!(reader.as_mut().poll_fill_buf(cx))?;
    let n = data.len().min(buf.remaining());
    buf.put_slice(&data[..n]);
    reader.consume(n);
    Poll::Ready(Ok(()))
}

/// One read into `scratch`, copied out (empty: the reader ended).
fn read_copied<R: AsyncRead + ?Sized>(
    cx: &mut Context<'_>,
    reader: Pin<&mut R>,
    scratch: &mut [u8],
) -> Poll<io::Result<Bytes>> {
    let mut read = ReadBuf::new(scratch);
    ready!(reader.poll_read(cx, &mut read))?;
    Poll::Ready(Ok(Bytes::copy_from_slice(read.filled())))
}

#[cfg(test)]
mod tests;
