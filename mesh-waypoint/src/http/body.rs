//! The client's request body on its way upstream, streamed as Envoy streams it: each frame
//! goes to the try in flight as it arrives — the upstream connection's reads pull it from the
//! client, so backpressure reaches the client — and the trailers after it.
//!
//! Retries: the frames read are kept, up to [`REPLAY_LIMIT`] bytes, so that a retry can send
//! the body again from its start and then go on with what the client has not sent yet. Past
//! the limit the body is no longer kept (only what the try in flight has not sent yet is):
//! once a frame has gone upstream and been let go, the request cannot be retried.
//!
//! Mirrors: each frame is copied into a queue per mirror as it is read; a mirror that falls
//! [`MIRROR_LAG`] bytes behind loses its copy (its request is reset), so a slow or dead
//! mirror never holds up the request or the client.
//!
//! Timeouts: Envoy starts the route and per-try timeouts once the client's request has been
//! read to its end; [`RequestBody::ended`] says when, reading ahead into the replay buffer
//! (as Envoy's buffer does while the upstream connection is being set up) up to the limit.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::{Notify, mpsc};

/// The most of a request body kept for retries: Envoy's default buffer limit
/// (`per_connection_buffer_limit_bytes`, 1 MiB), which is also its retry buffer's. A body
/// that outgrows it is still forwarded whole, but not retried.
pub const REPLAY_LIMIT: usize = 1024 * 1024;

/// How far behind the request a mirror's copy may fall (bytes queued for a mirror that has
/// not taken them yet) before it is dropped.
pub const MIRROR_LAG: usize = 256 * 1024;

/// Frames queued for a mirror at most, whatever their size (a bound for a client sending
/// many tiny frames; [`MIRROR_LAG`] is the one that matters for memory).
const MIRROR_FRAMES: usize = 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a body sent upstream stopped short; hyper resets that upstream request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the client's request body failed: {0}")]
    Client(BoxError),
    #[error("the client's request body failed earlier")]
    ClientFailed,
    #[error("this try was given up (a retry, a timeout or a local answer took over)")]
    Abandoned,
    #[error("the mirror's copy of the request body was dropped")]
    MirrorCut,
}

/// One request's body as the tries, the timeouts and the mirrors see it. Clones share it.
pub struct RequestBody<B = Incoming> {
    /// `None` for a request without a body.
    shared: Option<Arc<Shared<B>>>,
}

impl<B> Clone for RequestBody<B> {
    fn clone(&self) -> Self {
        RequestBody {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<B> {
    state: Mutex<State<B>>,
    /// The length the client declared (`Content-Length`), if it did.
    declared: Option<u64>,
}

struct State<B> {
    /// The client's body, until it ends (after its trailers, if any) or fails.
    source: Option<B>,
    failed: bool,
    /// Data read and not let go: from the start while `keeping`, else only what the try in
    /// flight has not sent yet.
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    /// Bytes read from the client.
    read: u64,
    /// Whether everything read so far fits the replay buffer: frames are kept after they are
    /// sent, and reading ahead of the try is allowed.
    keeping: bool,
    /// Whether a frame has been let go: no try can start over.
    let_go: bool,
    /// The try that may send (older ones get [`Error::Abandoned`]); 0 before the first.
    generation: u64,
    /// That try's place: the next chunk it sends, whether it sent the trailers, the bytes
    /// it sent.
    cursor: usize,
    trailers_sent: bool,
    sent: u64,
    mirrors: Vec<MirrorQueue>,
    /// Tasks that found the client's body with nothing new: woken by any frame, its end, or
    /// a reader going away (the source wakes only the last task that polled it).
    readers: Vec<Waker>,
    /// Tasks waiting for the end only.
    at_end: Vec<Waker>,
}

/// Adds the polling task to `list`, once.
fn register(list: &mut Vec<Waker>, cx: &Context<'_>) {
    if !list.iter().any(|w| w.will_wake(cx.waker())) {
        list.push(cx.waker().clone());
    }
}

fn wake(list: &mut Vec<Waker>) {
    for waker in list.drain(..) {
        waker.wake();
    }
}

impl<B> Shared<B> {
    fn lock(&self) -> MutexGuard<'_, State<B>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<B> State<B> {
    /// The client's body is done: mirrors get their end, waiters are woken.
    fn finish(&mut self, failed: bool) {
        self.source = None;
        self.failed = failed;
        for mirror in self.mirrors.drain(..) {
            mirror.close(!failed);
        }
        wake(&mut self.readers);
        wake(&mut self.at_end);
    }

    /// Copies a frame to every mirror still keeping up.
    fn mirror(&mut self, frame: &Frame<Bytes>) {
        self.mirrors.retain(|mirror| mirror.offer(frame));
    }
}

impl<B> State<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Reads one frame from the client into the state (or its end, or its failure).
    fn read(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let Some(source) = self.source.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let frame = match Pin::new(source).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                self.finish(false);
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Some(Err(error))) => {
                self.finish(true);
                return Poll::Ready(Err(error.into()));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        // The task reading sees the frame itself; the others are woken for it below.
        self.readers.retain(|w| !w.will_wake(cx.waker()));
        self.mirror(&frame);
        match frame.into_data() {
            Ok(data) => {
                self.read += data.len() as u64;
                if self.read > REPLAY_LIMIT as u64 && self.keeping {
                    self.keeping = false;
                    tracing::debug!(
                        limit = REPLAY_LIMIT,
                        "the request body outgrows the replay buffer: once sent on, it cannot be retried"
                    );
                }
                if !data.is_empty() {
                    self.chunks.push_back(data);
                }
                wake(&mut self.readers);
            }
            Err(frame) => {
                // Trailers end a body.
                self.trailers = frame.into_trailers().ok();
                self.finish(false);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<B> RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    pub fn new(body: B) -> RequestBody<B> {
        if body.is_end_stream() {
            return RequestBody { shared: None };
        }
        let declared = body.size_hint().exact();
        let state = State {
            source: Some(body),
            failed: false,
            chunks: VecDeque::new(),
            trailers: None,
            read: 0,
            keeping: true,
            let_go: false,
            generation: 0,
            cursor: 0,
            trailers_sent: false,
            sent: 0,
            mirrors: Vec::new(),
            readers: Vec::new(),
            at_end: Vec::new(),
        };
        RequestBody {
            shared: Some(Arc::new(Shared {
                state: Mutex::new(state),
                declared,
            })),
        }
    }

    /// The body for the first try.
    pub fn first_try(&self) -> Outgoing<B> {
        match &self.shared {
            Some(shared) => start_try(shared, &mut shared.lock()),
            None => Outgoing::Empty,
        }
    }

    /// The body for a retry, sent from the start; the try before it is given up. `None`
    /// when part of the body has gone upstream and been let go (it outgrew
    /// [`REPLAY_LIMIT`]): the request cannot be sent again.
    pub fn retry(&self) -> Option<Outgoing<B>> {
        let Some(shared) = &self.shared else {
            return Some(Outgoing::Empty);
        };
        let mut state = shared.lock();
        (!state.let_go).then(|| start_try(shared, &mut state))
    }

    /// Whether a retry could send the body from its start (see [`RequestBody::retry`]).
    pub fn replays(&self) -> bool {
        self.shared.as_ref().is_none_or(|s| !s.lock().let_go)
    }

    /// The try in flight is the last: its answer goes to the client. What it has sent is let
    /// go at once and nothing more is kept, so a long stream does not hold the replay buffer.
    pub fn last_try(&self) {
        if let Some(shared) = &self.shared {
            let mut state = shared.lock();
            state.keeping = false;
            let sent = state.cursor;
            state.chunks.drain(..sent);
            state.cursor = 0;
            state.let_go |= sent > 0;
        }
    }

    /// Gives up the try in flight: the request was answered some other way (a timeout, a
    /// local answer), and the client's body must not go on streaming to that upstream.
    pub fn abandon(&self) {
        if let Some(shared) = &self.shared {
            let mut state = shared.lock();
            state.generation += 1;
            wake(&mut state.readers);
        }
    }

    /// Bytes read from the client so far.
    pub fn bytes_read(&self) -> u64 {
        self.shared.as_ref().map_or(0, |s| s.lock().read)
    }

    /// Whether reading the client's body failed (the client went away mid-request).
    pub fn failed(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| s.lock().failed)
    }

    /// Resolves once the client's body has been read to its end (or failed). While the body
    /// fits the replay buffer it reads ahead of the try to find the end; past that, the try's
    /// own reads get there.
    pub fn ended(&self) -> Ended<B> {
        Ended {
            shared: self.shared.clone(),
        }
    }

    /// A copy of the body for a mirror, and the handle on that copy; a copy that cannot be
    /// whole (the start was let go) is cut at once.
    pub fn mirror(&self) -> (Outgoing<B>, MirrorCopy) {
        let link = Arc::new(Link {
            queued: AtomicUsize::new(0),
            complete: AtomicBool::new(false),
            behind: AtomicBool::new(false),
            cut: Notify::new(),
        });
        let copy = MirrorCopy { link: link.clone() };
        let Some(shared) = &self.shared else {
            return (Outgoing::Empty, copy);
        };
        let (tx, rx) = mpsc::channel(MIRROR_FRAMES);
        let queue = MirrorQueue {
            tx,
            link: link.clone(),
        };
        let mut state = shared.lock();
        let caught_up = !state.let_go
            && state
                .chunks
                .iter()
                .all(|chunk| queue.offer(&Frame::data(chunk.clone())));
        if caught_up {
            match (&state.source, &state.trailers) {
                (Some(_), _) => state.mirrors.push(queue),
                (None, Some(trailers)) => {
                    if queue.offer(&Frame::trailers(trailers.clone())) {
                        queue.close(!state.failed);
                    }
                }
                (None, None) => queue.close(!state.failed),
            }
        } else {
            queue.close(false);
        }
        let body = MirrorBody {
            rx,
            link,
            remaining: shared.declared,
        };
        (Outgoing::Mirror(body), copy)
    }
}

/// A try's body, from the start; the try before it (if any) is given up.
fn start_try<B>(shared: &Arc<Shared<B>>, state: &mut State<B>) -> Outgoing<B> {
    state.generation += 1;
    state.cursor = 0;
    state.trailers_sent = false;
    state.sent = 0;
    // The try given up may be waiting on the client: it must poll to see it is given up.
    wake(&mut state.readers);
    Outgoing::Try(TryBody {
        shared: shared.clone(),
        generation: state.generation,
    })
}

/// Waits for the end of the client's body (see [`RequestBody::ended`]).
pub struct Ended<B> {
    shared: Option<Arc<Shared<B>>>,
}

impl<B> Future for Ended<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(shared) = &self.shared else {
            return Poll::Ready(());
        };
        let mut state = shared.lock();
        loop {
            if state.source.is_none() {
                return Poll::Ready(());
            }
            if !state.keeping {
                register(&mut state.at_end, cx);
                return Poll::Pending;
            }
            if state.read(cx).is_pending() {
                register(&mut state.readers, cx);
                return Poll::Pending;
            }
        }
    }
}

impl<B> Drop for Ended<B> {
    fn drop(&mut self) {
        // The client's body may hold this task's waker: whoever else reads must poll it anew.
        if let Some(shared) = &self.shared {
            wake(&mut shared.lock().readers);
        }
    }
}

/// A request body as sent upstream: none, a try's, or a mirror's copy.
pub enum Outgoing<B = Incoming> {
    Empty,
    Try(TryBody<B>),
    Mirror(MirrorBody),
}

/// One try's view of the client's body.
pub struct TryBody<B> {
    shared: Arc<Shared<B>>,
    generation: u64,
}

impl<B> TryBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    fn poll(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let mut state = self.shared.lock();
        loop {
            if state.generation != self.generation {
                return Poll::Ready(Some(Err(Error::Abandoned)));
            }
            if !state.keeping && state.cursor > 0 {
                // Past the limit: what this try has sent is let go.
                let sent = state.cursor;
                state.chunks.drain(..sent);
                state.cursor = 0;
                state.let_go = true;
            }
            if let Some(chunk) = state.chunks.get(state.cursor).cloned() {
                state.sent += chunk.len() as u64;
                if state.keeping {
                    state.cursor += 1;
                } else {
                    state.chunks.pop_front();
                    state.let_go = true;
                }
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if state.source.is_none() {
                if state.failed {
                    return Poll::Ready(Some(Err(Error::ClientFailed)));
                }
                if !state.trailers_sent
                    && let Some(trailers) = state.trailers.clone()
                {
                    state.trailers_sent = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                return Poll::Ready(None);
            }
            match state.read(cx) {
                Poll::Pending => {
                    register(&mut state.readers, cx);
                    return Poll::Pending;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Some(Err(Error::Client(error)))),
                Poll::Ready(Ok(())) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let state = self.shared.lock();
        state.generation == self.generation
            && state.source.is_none()
            && !state.failed
            && state.cursor == state.chunks.len()
            && (state.trailers.is_none() || state.trailers_sent)
    }

    fn size_hint(&self) -> SizeHint {
        let state = self.shared.lock();
        if let Some(declared) = self.shared.declared {
            return SizeHint::with_exact(declared.saturating_sub(state.sent));
        }
        if state.source.is_none() && !state.failed {
            let left = state
                .chunks
                .iter()
                .skip(state.cursor)
                .map(Bytes::len)
                .sum::<usize>();
            return SizeHint::with_exact(left as u64);
        }
        SizeHint::default()
    }
}

impl<B> Drop for TryBody<B> {
    fn drop(&mut self) {
        // The client's body may hold this try's waker: whoever else reads must poll it anew.
        wake(&mut self.shared.lock().readers);
    }
}

impl<B> Body for Outgoing<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match self.get_mut() {
            Outgoing::Empty => Poll::Ready(None),
            Outgoing::Try(body) => body.poll(cx),
            Outgoing::Mirror(body) => body.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Outgoing::Empty => true,
            Outgoing::Try(body) => body.is_end_stream(),
            Outgoing::Mirror(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Outgoing::Empty => SizeHint::with_exact(0),
            Outgoing::Try(body) => body.size_hint(),
            Outgoing::Mirror(body) => body
                .remaining
                .map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}

/// What the request side and a mirror's body share about the mirror's copy.
struct Link {
    /// Data bytes queued and not yet taken by the mirror.
    queued: AtomicUsize,
    /// Set before the queue closes when the copy is whole; a queue closed without it cuts the
    /// copy.
    complete: AtomicBool,
    /// The copy was dropped because the mirror fell behind.
    behind: AtomicBool,
    /// Signalled when the copy is cut, so the mirror's request can be reset even while its
    /// connection reads nothing.
    cut: Notify,
}

/// The request side of a mirror's copy.
struct MirrorQueue {
    tx: mpsc::Sender<Frame<Bytes>>,
    link: Arc<Link>,
}

impl MirrorQueue {
    /// Queues a copy of `frame`; `false` when the mirror is gone or was cut for falling
    /// behind.
    fn offer(&self, frame: &Frame<Bytes>) -> bool {
        let copy = match frame.data_ref() {
            Some(data) => {
                let queued = self.link.queued.fetch_add(data.len(), Ordering::AcqRel);
                if queued + data.len() > MIRROR_LAG {
                    return self.fall_behind();
                }
                Frame::data(data.clone())
            }
            None => match frame.trailers_ref() {
                Some(trailers) => Frame::trailers(trailers.clone()),
                None => return true,
            },
        };
        match self.tx.try_send(copy) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => self.fall_behind(),
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Marks the copy dropped for falling behind (the queue is then dropped: cut).
    fn fall_behind(&self) -> bool {
        self.link.behind.store(true, Ordering::Release);
        false
    }

    /// Ends the copy: whole, or cut (the client's body failed, or the copy lacks its start).
    fn close(self, whole: bool) {
        if whole {
            self.link.complete.store(true, Ordering::Release);
        }
    }
}

impl Drop for MirrorQueue {
    fn drop(&mut self) {
        // Closed without the whole body (cut, fallen behind, or the request ended before its
        // body did): the mirror's body fails once it has taken what was queued.
        if !self.link.complete.load(Ordering::Acquire) {
            self.link.cut.notify_one();
        }
    }
}

/// A mirror's copy of the client's body, as it streams.
pub struct MirrorBody {
    rx: mpsc::Receiver<Frame<Bytes>>,
    link: Arc<Link>,
    /// The declared length not received yet.
    remaining: Option<u64>,
}

impl MirrorBody {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.link.queued.fetch_sub(data.len(), Ordering::AcqRel);
                    self.remaining = self.remaining.map(|r| r.saturating_sub(data.len() as u64));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) if self.link.complete.load(Ordering::Acquire) => Poll::Ready(None),
            Poll::Ready(None) => Poll::Ready(Some(Err(Error::MirrorCut))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The mirror task's handle on its copy of the body.
pub struct MirrorCopy {
    link: Arc<Link>,
}

impl MirrorCopy {
    /// Resolves when the copy is cut (the mirror fell behind, or the client's body failed or
    /// never ended); never for a whole copy.
    pub async fn cut(&self) {
        self.link.cut.notified().await;
    }

    /// Whether the copy was dropped because the mirror fell behind the request.
    pub fn fell_behind(&self) -> bool {
        self.link.behind.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests;
