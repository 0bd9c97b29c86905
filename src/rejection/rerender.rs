//! [`RerenderLayer`]: re-renders every rejection of a stack with one renderer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::header;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::Rejection;
use super::render::RenderRejection;

/// Re-renders, with one renderer, every rejection that the layers inside it answered with:
/// the way to replace the rendering once for a whole stack.
///
/// A response is re-rendered when it carries a [`Rejection`] in its extensions; upstream
/// responses pass through untouched. Headers that the inner layers set on the rejection
/// response after rendering it (`RateLimit`, say) are kept; the old body and content headers
/// are replaced.
///
/// # Example
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_gateway::rejection::{Rejection, RejectionKind, RerenderLayer};
///
/// let svc = ServiceBuilder::new()
///     .layer(RerenderLayer::new(|rejection: &Rejection| {
///         Response::new(Full::from(format!("sorry: {}", rejection.detail())))
///     }))
///     .service_fn(|req: Request<()>| async move {
///         // Stands in for any layer that refuses the request.
///         let answer = Rejection::new(RejectionKind::NotFound).for_request(&req);
///         Ok::<_, std::convert::Infallible>(answer.into_response::<Full<Bytes>>())
///     });
///
/// let response = svc.oneshot(Request::new(())).await.unwrap();
/// assert_eq!(response.status(), 404);
/// let body = response.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(body, "sorry: no route matches the request path");
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct RerenderLayer<R> {
    render: R,
}

impl<R> RerenderLayer<R> {
    /// Re-renders inner rejections with `render`.
    pub fn new(render: R) -> Self {
        Self { render }
    }
}

impl<S, R: Clone> Layer<S> for RerenderLayer<R> {
    type Service = Rerender<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Rerender {
            inner,
            render: self.render.clone(),
        }
    }
}

/// Service of [`RerenderLayer`]: re-renders inner rejections.
#[derive(Clone, Debug)]
pub struct Rerender<S, R> {
    inner: S,
    render: R,
}

impl<S, R> Rerender<S, R> {
    /// Wraps `inner`.
    pub fn new(inner: S, render: R) -> Self {
        Self { inner, render }
    }

    inner_accessors!();
}

impl<S, R, ReqB, ResB> Service<Request<ReqB>> for Rerender<S, R>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    R: RenderRejection<ResB> + Clone,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = RerenderFuture<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        RerenderFuture {
            inner: self.inner.call(request),
            render: Some(self.render.clone()),
        }
    }
}

pin_project! {
    /// Response future of [`Rerender`].
    pub struct RerenderFuture<F, R> {
        #[pin]
        inner: F,
        render: Option<R>,
    }
}

impl<F, R> fmt::Debug for RerenderFuture<F, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RerenderFuture").finish_non_exhaustive()
    }
}

impl<F, R, B, E> Future for RerenderFuture<F, R>
where
    F: Future<Output = Result<Response<B>, E>>,
    R: RenderRejection<B>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        let Some(rejection) = response.extensions_mut().remove::<Rejection>() else {
            return Poll::Ready(Ok(response));
        };
        let mut render = this.render.take().expect("polled after completion");
        let mut rendered = rejection.into_response_with(&mut render);
        // Keep the headers that layers between the first rendering and here added (rate-limit
        // headers, say); drop the old body's own description.
        let old = response.headers();
        let headers = rendered.headers_mut();
        for name in old.keys() {
            if name == header::CONTENT_TYPE || name == header::CONTENT_LENGTH {
                continue;
            }
            if !headers.contains_key(name) {
                for value in old.get_all(name) {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        Poll::Ready(Ok(rendered))
    }
}
