//! Copying a proxied connection both ways with buffers that fit the traffic.
//!
//! `tokio::io::copy_bidirectional` holds two 8 KiB buffers for the life of every
//! connection: 16 KiB per connection whether it carries a request a minute or a bulk
//! transfer, and too small to move bulk data in few system calls. Here each direction starts
//! with [`SMALL`] bytes (a 1 KB request or response fits), moves to [`MEDIUM`] after
//! [`GROW_AFTER`] reads in a row that filled the buffer, and from there to [`LARGE`] the same
//! way; a [`LARGE`] buffer goes back to [`SMALL`] as soon as its side goes quiet (a read
//! would block with nothing left to write), so a thousand idle connections that once
//! carried a transfer do not keep hundreds of KiB each. A direction whose reader ended drops
//! its buffer before it shuts its writer down (half-close), and the copy ends when both
//! directions have.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Every direction's first buffer.
pub const SMALL: usize = 2 * 1024;
/// After [`GROW_AFTER`] full reads of a [`SMALL`] buffer.
pub const MEDIUM: usize = 16 * 1024;
/// After [`GROW_AFTER`] full reads of a [`MEDIUM`] buffer: bulk transfers.
pub const LARGE: usize = 128 * 1024;
/// Full reads in a row that move a direction to the next buffer size.
pub const GROW_AFTER: u32 = 4;

/// Copies `a` to `b` and `b` to `a` until both have ended (each end shuts the other side's
/// writer down) or either fails. Returns the bytes copied `a` → `b` and `b` → `a`.
pub async fn bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Transfer::Running(Direction::new());
    let mut b_to_a = Transfer::Running(Direction::new());
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
                    // Dropping the direction frees its buffer before the half-close.
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

/// One direction: its buffer, what of it is still to be written, and what it has copied.
struct Direction {
    buf: Vec<u8>,
    /// `buf[written..filled]` is read and not written yet.
    written: usize,
    filled: usize,
    /// Reads in a row that filled the buffer.
    full_reads: u32,
    reader_done: bool,
    /// Bytes written since the last flush.
    unflushed: bool,
    copied: u64,
}

impl Direction {
    fn new() -> Direction {
        Direction {
            buf: vec![0; SMALL],
            written: 0,
            filled: 0,
            full_reads: 0,
            reader_done: false,
            unflushed: false,
            copied: 0,
        }
    }

    /// The buffer size for the next read, given how the last ones went.
    fn resize_for_next_read(&mut self) {
        let next = match self.buf.len() {
            SMALL if self.full_reads >= GROW_AFTER => MEDIUM,
            MEDIUM if self.full_reads >= GROW_AFTER => LARGE,
            _ => return,
        };
        self.buf = vec![0; next];
        self.full_reads = 0;
    }

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
            if self.written == self.filled && !self.reader_done {
                self.resize_for_next_read();
                let mut read = ReadBuf::new(&mut self.buf);
                match reader.as_mut().poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) => {
                        let n = read.filled().len();
                        self.written = 0;
                        self.filled = n;
                        if n == 0 {
                            self.reader_done = true;
                        } else if n == self.buf.len() {
                            self.full_reads += 1;
                        } else {
                            self.full_reads = 0;
                        }
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => {
                        // Quiet: give back a bulk-sized buffer, and push out what was
                        // written so it does not wait in the writer for more.
                        if self.buf.len() == LARGE {
                            self.buf = vec![0; SMALL];
                            self.full_reads = 0;
                        }
                        if self.unflushed {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.unflushed = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.written < self.filled {
                let n = ready!(
                    writer
                        .as_mut()
                        .poll_write(cx, &self.buf[self.written..self.filled])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the writer accepted no bytes",
                    )));
                }
                self.written += n;
                self.copied += n as u64;
                self.unflushed = true;
            }
            if self.reader_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                self.unflushed = false;
                return Poll::Ready(Ok(self.copied));
            }
        }
    }
}

#[cfg(test)]
mod tests;
