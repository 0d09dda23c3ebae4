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

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one read takes.
pub const SCRATCH: usize = 128 * 1024;

/// The read buffer of a copy nested in another's poll (see [`Direction::poll_copy`]).
const NESTED: usize = 16 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Copies `a` to `b` and `b` to `a` until both have ended (each end shuts the other side's
/// writer down) or either fails. Returns the bytes copied `a` → `b` and `b` → `a`.
pub async fn bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Transfer::Running(Direction::default());
    let mut b_to_a = Transfer::Running(Direction::default());
    poll_fn(|cx| {
        let forward = a_to_b.poll(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let backward = b_to_a.poll(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        Poll::Ready(Ok((ready!(forward), ready!(backward))))
    })
    .await
}

enum Transfer {
    Running(Direction),
    ShuttingDown(u64),
    Done(u64),
}

impl Transfer {
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            match self {
                Transfer::Running(direction) => {
                    let copied = ready!(direction.poll_copy(cx, reader.as_mut(), writer.as_mut()))?;
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
    /// Bytes written since the last flush.
    unflushed: bool,
    copied: u64,
}

/// What one read from the scratch buffer came to.
enum Read {
    /// Data, all written on, or the rest kept.
    Data,
    /// The reader ended.
    Ended,
}

impl Direction {
    /// Copies until the reader ends (then flushes): the bytes copied.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            while self.written < self.kept.len() {
                let n = ready!(writer.as_mut().poll_write(cx, &self.kept[self.written..]))?;
                self.wrote(n)?;
                self.written += n;
            }
            // Written out: the buffer stays while the transfer is busy.
            self.kept.clear();
            self.written = 0;
            if self.reader_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                self.unflushed = false;
                return Poll::Ready(Ok(self.copied));
            }
            let read = SCRATCH_BUF.with(|scratch| match scratch.try_borrow_mut() {
                Ok(mut scratch) => {
                    self.read_and_write(cx, reader.as_mut(), writer.as_mut(), &mut scratch)
                }
                // Only if a reader or writer copies through this module from inside its own
                // poll: then this read gets a buffer of its own.
                Err(_) => {
                    self.read_and_write(cx, reader.as_mut(), writer.as_mut(), &mut vec![0; NESTED])
                }
            });
            match read {
                Poll::Ready(Ok(Read::Data)) => {}
                Poll::Ready(Ok(Read::Ended)) => self.reader_done = true,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {
                    // Quiet: give the buffer back, and push out what was written so it does
                    // not wait in the writer for more.
                    self.kept = Vec::new();
                    if self.unflushed {
                        ready!(writer.as_mut().poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

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
                    self.wrote(n)?;
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

    fn wrote(&mut self, n: usize) -> io::Result<()> {
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
}

#[cfg(test)]
mod tests;
