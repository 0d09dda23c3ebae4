use std::time::Duration;

use http::HeaderValue;
use http_body_util::channel::{Channel, Sender};
use http_body_util::{BodyExt as _, Empty};

use super::*;

/// Far more than an in-memory exchange takes; a frame that never comes fails the test.
const DEADLINE: Duration = Duration::from_secs(5);

type Source = Channel<Bytes, std::io::Error>;

/// A client body the test feeds, and the request body over it.
fn streaming() -> (Sender<Bytes, std::io::Error>, RequestBody<Source>) {
    let (tx, source) = Channel::new(64);
    (tx, RequestBody::new(source))
}

async fn frame(body: &mut Outgoing<Source>) -> Option<Result<Frame<Bytes>, Error>> {
    tokio::time::timeout(DEADLINE, body.frame())
        .await
        .expect("a frame within the deadline")
}

async fn data(body: &mut Outgoing<Source>) -> Bytes {
    match frame(body).await {
        Some(Ok(frame)) => frame.into_data().expect("a data frame"),
        other => panic!("expected data, got {other:?}"),
    }
}

/// Polls once, without waiting.
fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    Pin::new(future).poll(&mut Context::from_waker(Waker::noop()))
}

fn trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("5eb63bbb"));
    trailers
}

#[tokio::test]
async fn a_try_gets_each_frame_as_it_arrives_then_the_trailers() {
    let (mut tx, body) = streaming();
    let mut first = body.first_try();
    assert!(!first.is_end_stream());
    tx.send_data(Bytes::from_static(b"hello ")).await.unwrap();
    assert_eq!(data(&mut first).await, "hello ");
    tx.send_data(Bytes::from_static(b"world")).await.unwrap();
    assert_eq!(data(&mut first).await, "world");
    tx.send_trailers(trailers()).await.unwrap();
    let last = frame(&mut first).await.unwrap().unwrap();
    assert_eq!(last.into_trailers().unwrap(), trailers());
    assert!(frame(&mut first).await.is_none());
    assert_eq!(body.bytes_read(), 11);
}

#[tokio::test]
async fn a_request_without_a_body_sends_none_and_has_ended() {
    let body = RequestBody::new(Empty::<Bytes>::new());
    let mut first = body.first_try();
    assert!(first.is_end_stream());
    assert_eq!(first.size_hint().exact(), Some(0));
    assert!(first.frame().await.is_none());
    assert!(poll_once(&mut body.ended()).is_ready());
    assert!(body.retry().is_some());
}

#[tokio::test]
async fn a_retry_replays_the_body_from_its_start_then_goes_on_with_the_rest() {
    let (mut tx, body) = streaming();
    let mut first = body.first_try();
    tx.send_data(Bytes::from_static(b"one ")).await.unwrap();
    tx.send_data(Bytes::from_static(b"two ")).await.unwrap();
    assert_eq!(data(&mut first).await, "one ");
    assert_eq!(data(&mut first).await, "two ");

    let mut second = body.retry().expect("a small body replays");
    assert!(
        matches!(frame(&mut first).await, Some(Err(Error::Abandoned))),
        "the try given up stops"
    );
    assert_eq!(data(&mut second).await, "one ");
    assert_eq!(data(&mut second).await, "two ");
    tx.send_data(Bytes::from_static(b"three")).await.unwrap();
    tx.send_trailers(trailers()).await.unwrap();
    assert_eq!(data(&mut second).await, "three");
    let last = frame(&mut second).await.unwrap().unwrap();
    assert_eq!(last.into_trailers().unwrap(), trailers());
    assert!(frame(&mut second).await.is_none());

    // Once ended, a retry is the whole body with its length known.
    let third = body.retry().expect("still replays");
    assert_eq!(third.size_hint().exact(), Some(13));
    let collected = third.collect().await.unwrap();
    assert_eq!(collected.trailers(), Some(&trailers()));
    assert_eq!(collected.to_bytes(), "one two three");
    assert_eq!(body.bytes_read(), 13, "the client's bytes count once");
}

#[tokio::test]
async fn a_body_past_the_replay_limit_is_let_go_as_sent_and_not_retried() {
    let (mut tx, body) = streaming();
    let mut first = body.first_try();
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let chunks = REPLAY_LIMIT / chunk.len() + 2;
    let sending = tokio::spawn(async move {
        for _ in 0..chunks {
            tx.send_data(chunk.clone()).await.unwrap();
        }
    });
    let mut received = 0;
    while let Some(frame) = frame(&mut first).await {
        received += frame.unwrap().into_data().unwrap().len();
    }
    sending.await.unwrap();
    assert_eq!(received, chunks * 64 * 1024, "forwarded whole");
    assert!(!body.replays());
    assert!(body.retry().is_none(), "part of it was let go: no retry");
}

#[tokio::test]
async fn reading_ahead_stops_at_the_limit_and_a_body_not_yet_sent_still_replays() {
    let (mut tx, body) = streaming();
    let chunk = Bytes::from(vec![1u8; 256 * 1024]);
    for _ in 0..8 {
        tx.send_data(chunk.clone()).await.unwrap();
    }
    let mut ended = body.ended();
    assert!(
        poll_once(&mut ended).is_pending(),
        "the client has not ended"
    );
    let read = body.bytes_read() as usize;
    assert!(
        read > REPLAY_LIMIT && read <= REPLAY_LIMIT + chunk.len(),
        "read ahead up to the limit and one frame past it: {read}"
    );
    // No try has sent anything: nothing was let go.
    assert!(body.replays());
    drop(tx);
    let mut first = body.first_try();
    let mut retried = body.retry().expect("whole");
    assert!(matches!(
        frame(&mut first).await,
        Some(Err(Error::Abandoned))
    ));
    let mut received = 0;
    while let Some(frame) = frame(&mut retried).await {
        received += frame.unwrap().into_data().unwrap().len();
    }
    assert_eq!(received, 8 * chunk.len());
    tokio::time::timeout(DEADLINE, ended)
        .await
        .expect("the try's reads find the end");
}

#[tokio::test]
async fn a_small_body_is_read_ahead_to_its_end() {
    let (mut tx, body) = streaming();
    tx.send_data(Bytes::from_static(b"small")).await.unwrap();
    let mut ended = body.ended();
    assert!(poll_once(&mut ended).is_pending());
    drop(tx);
    tokio::time::timeout(DEADLINE, ended)
        .await
        .expect("the end is read ahead of any try");
    let first = body.first_try();
    assert_eq!(first.size_hint().exact(), Some(5));
    assert_eq!(first.collect().await.unwrap().to_bytes(), "small");
}

#[tokio::test]
async fn a_mirror_gets_a_copy_and_one_that_falls_behind_is_cut() {
    let (mut tx, body) = streaming();
    let (mut keeping_up, keeping_up_copy) = body.mirror();
    let (mut stalled, stalled_copy) = body.mirror();
    let mut first = body.first_try();
    let chunk = Bytes::from(vec![9u8; 64 * 1024]);
    let chunks = MIRROR_LAG / chunk.len() + 1;
    for _ in 0..chunks {
        tx.send_data(chunk.clone()).await.unwrap();
        assert_eq!(data(&mut first).await, chunk);
        assert_eq!(data(&mut keeping_up).await, chunk);
    }
    drop(tx);
    assert!(frame(&mut first).await.is_none());
    assert!(frame(&mut keeping_up).await.is_none(), "a whole copy ends");
    assert!(!keeping_up_copy.fell_behind());

    assert!(stalled_copy.fell_behind());
    tokio::time::timeout(DEADLINE, stalled_copy.cut())
        .await
        .expect("the stalled mirror's copy is cut");
    let mut queued = 0;
    let ending = loop {
        match frame(&mut stalled).await {
            Some(Ok(frame)) => queued += frame.into_data().unwrap().len(),
            other => break other,
        }
    };
    assert!(queued <= MIRROR_LAG, "{queued} bytes queued");
    assert!(matches!(ending, Some(Err(Error::MirrorCut))), "{ending:?}");
}

#[tokio::test]
async fn a_client_that_goes_away_fails_the_try_and_cuts_the_mirrors() {
    let (mut tx, body) = streaming();
    let (mut mirror, copy) = body.mirror();
    let mut first = body.first_try();
    tx.send_data(Bytes::from_static(b"partial")).await.unwrap();
    assert_eq!(data(&mut first).await, "partial");
    tx.abort(std::io::Error::other("connection reset"));
    assert!(matches!(
        frame(&mut first).await,
        Some(Err(Error::Client(_)))
    ));
    assert!(body.failed());
    assert!(matches!(
        frame(&mut first).await,
        Some(Err(Error::ClientFailed))
    ));
    assert_eq!(data(&mut mirror).await, "partial");
    assert!(matches!(
        frame(&mut mirror).await,
        Some(Err(Error::MirrorCut))
    ));
    assert!(!copy.fell_behind());
}

#[tokio::test]
async fn a_request_dropped_before_its_body_ended_cuts_the_mirrors() {
    let (tx, body) = streaming();
    let (mut mirror, copy) = body.mirror();
    drop(body);
    tokio::time::timeout(DEADLINE, copy.cut())
        .await
        .expect("cut");
    assert!(matches!(
        frame(&mut mirror).await,
        Some(Err(Error::MirrorCut))
    ));
    drop(tx);
}

#[tokio::test]
async fn a_mirror_taken_after_the_first_frames_still_gets_the_body_from_its_start() {
    let (mut tx, body) = streaming();
    let mut first = body.first_try();
    tx.send_data(Bytes::from_static(b"early ")).await.unwrap();
    assert_eq!(data(&mut first).await, "early ");
    let (mirror, copy) = body.mirror();
    tx.send_data(Bytes::from_static(b"late")).await.unwrap();
    drop(tx);
    assert_eq!(data(&mut first).await, "late");
    assert!(frame(&mut first).await.is_none());
    let whole = tokio::time::timeout(DEADLINE, mirror.collect())
        .await
        .expect("the copy ends")
        .unwrap();
    assert_eq!(whole.to_bytes(), "early late");
    assert!(!copy.fell_behind());
}

#[tokio::test]
async fn the_last_try_lets_go_of_what_it_sent_and_keeps_nothing_more() {
    let (mut tx, body) = streaming();
    let mut first = body.first_try();
    tx.send_data(Bytes::from_static(b"request ")).await.unwrap();
    assert_eq!(data(&mut first).await, "request ");
    body.last_try();
    assert!(!body.replays());
    tx.send_data(Bytes::from_static(b"stream")).await.unwrap();
    assert_eq!(data(&mut first).await, "stream");
    drop(tx);
    assert!(frame(&mut first).await.is_none());
    let state = body.shared.as_ref().unwrap().lock();
    assert!(state.chunks.is_empty(), "nothing kept");
}
