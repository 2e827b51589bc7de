//! Bodies: one boxed type for everything the proxies return, plain-text error responses, and a
//! wrapper that enforces idle and total deadlines on a streaming body.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep, sleep_until};

/// Any error inside a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response the data plane sends.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).map_err(|never| match never {}).boxed()
}

/// Wraps any body.
pub fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// A plain-text response that says why: `status` and a one-line reason.
pub fn error_response(status: StatusCode, reason: impl Into<String>) -> Response<Body> {
    let mut text = reason.into();
    text.push('\n');
    let mut r = Response::new(full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// The body ended because a deadline passed.
#[derive(Debug, thiserror::Error)]
pub enum DeadlineError {
    /// No bytes for longer than the idle timeout.
    #[error("no response bytes for {0:?} (idle timeout)")]
    Idle(Duration),
    /// The whole response took longer than the request timeout.
    #[error("response not complete within {0:?} (request timeout)")]
    Total(Duration),
}

pin_project! {
    /// A body that fails when it is idle for too long or runs past a deadline.
    pub struct Deadlines<B> {
        #[pin]
        inner: B,
        idle: Option<Duration>,
        #[pin]
        idle_timer: Option<Sleep>,
        total: Duration,
        #[pin]
        total_timer: Sleep,
    }
}

impl<B> Deadlines<B> {
    /// `idle`: max gap between frames (`None` = no limit); `deadline`: when the body must be done,
    /// `total` being the timeout it came from (for the message).
    pub fn new(inner: B, idle: Option<Duration>, deadline: Instant, total: Duration) -> Self {
        Self { inner, idle, idle_timer: idle.map(sleep), total, total_timer: sleep_until(deadline) }
    }
}

impl<B> HttpBody for Deadlines<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            if let (Some(idle), Some(timer)) = (*this.idle, this.idle_timer.as_mut().as_pin_mut()) {
                timer.reset(Instant::now() + idle);
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.total_timer.poll(cx).is_ready() {
            return Poll::Ready(Some(Err(DeadlineError::Total(*this.total).into())));
        }
        if let Some(timer) = this.idle_timer.as_pin_mut()
            && timer.poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err(DeadlineError::Idle(this.idle.unwrap_or_default()).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request body was larger than allowed.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {limit} bytes")]
pub struct TooLarge {
    /// The limit.
    pub limit: u64,
}

pin_project! {
    /// A request body that fails once more than `limit` bytes have passed.
    pub struct Limited<B> {
        #[pin]
        inner: B,
        left: u64,
        limit: u64,
    }
}

impl<B> Limited<B> {
    /// At most `limit` bytes.
    pub fn new(inner: B, limit: u64) -> Self {
        Self { inner, left: limit, limit }
    }
}

impl<B> HttpBody for Limited<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > *this.left {
                        return Poll::Ready(Some(Err(TooLarge { limit: *this.limit }.into())));
                    }
                    *this.left -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// True if `err` (or its source chain) says a body was too large.
pub fn is_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(x) = e {
        if x.is::<TooLarge>() {
            return true;
        }
        e = x.source();
    }
    false
}

pin_project! {
    /// A body that holds `guard` until it ends (last frame, error, or drop), so whatever the guard
    /// does on drop happens exactly when the response is over.
    pub struct Guarded<B, G> {
        #[pin]
        inner: B,
        guard: Option<G>,
    }
}

impl<B, G> Guarded<B, G> {
    /// Wraps `inner`, dropping `guard` when it ends.
    pub fn new(inner: B, guard: G) -> Self {
        Self { inner, guard: Some(guard) }
    }
}

impl<B, G> HttpBody for Guarded<B, G>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guard.take();
        }
        r.map(|f| f.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
