//! The route timeout after the response's headers: Envoy's route timeout runs from the end
//! of the client's request to the end of the response, so a response whose body is still
//! coming when it passes is cut off (the client sees a reset: HTTP/2 `RST_STREAM`, HTTP/1.1
//! a closed connection) and counted with flag `UT`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

use super::{Body, BodyError};

/// The error a response body ends with when the route's timeout passed first.
#[derive(Debug, thiserror::Error)]
#[error("upstream request timeout: the route's timeout passed before the response's end")]
pub(super) struct RouteTimeout;

/// A response body cut off when `expired` completes first.
pub(super) struct Deadline {
    body: Body,
    expired: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
}

impl Deadline {
    pub(super) fn new(
        body: Body,
        expired: Pin<Box<dyn Future<Output = ()> + Send + Sync>>,
    ) -> Deadline {
        Deadline {
            body,
            expired: Some(expired),
        }
    }
}

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(expired) = this.expired.as_mut()
            && expired.as_mut().poll(cx).is_ready()
        {
            this.expired = None;
            // What the upstream would still send is dropped with the body.
            this.body = Body::default();
            return Poll::Ready(Some(Err(RouteTimeout.into())));
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            // Done in time: the timer goes.
            this.expired = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
