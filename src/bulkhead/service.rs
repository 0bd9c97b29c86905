//! [`Bulkhead`]: the service of a [`BulkheadLayer`](super::BulkheadLayer).

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::UPGRADE;
use http::{Request, Response};
use http_body::Body;
use tower::Service;

use super::body::ResponseBody;
use super::future::ResponseFuture;
use super::limit::{Limit, Slot, in_flight, max_concurrent};
use crate::extensions::UpgradeGuards;
use crate::rejection::{ProblemJson, Rejection, RejectionKind, RenderRejection};

/// Service of [`BulkheadLayer`](super::BulkheadLayer).
pub struct Bulkhead<S, R = ProblemJson> {
    pub(super) inner: S,
    pub(super) limit: Option<Limit>,
    pub(super) render: R,
}

impl<S, R> Bulkhead<S, R> {
    /// How many requests may be in flight at once; `None` when there is no limit.
    pub fn max_concurrent(&self) -> Option<usize> {
        max_concurrent(self.limit.as_ref())
    }

    /// How many requests are in flight now, across every clone of this service and of the
    /// layer that made it (always 0 without a limit).
    pub fn in_flight(&self) -> usize {
        in_flight(self.limit.as_ref())
    }

    inner_accessors!();
}

impl<S: Clone, R: Clone> Clone for Bulkhead<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limit: self.limit.clone(),
            render: self.render.clone(),
        }
    }
}

impl<S: fmt::Debug, R> fmt::Debug for Bulkhead<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("max_concurrent", &self.max_concurrent())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl<S, R, ReqB, ResB> Service<Request<ReqB>> for Bulkhead<S, R>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    R: RenderRejection<ResB>,
    ResB: Body,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Admission is decided in `call`; nothing is reserved here.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let permit = match &self.limit {
            None => None,
            Some(limit) => match limit.try_admit() {
                Some(permit) if req.headers().contains_key(UPGRADE) => {
                    // It may become a tunnel that outlives the response: the proxy keeps a
                    // share of the slot in the tunnel until it closes.
                    let shared = Arc::new(permit);
                    req.extensions_mut()
                        .get_or_insert_default::<UpgradeGuards>()
                        .push(Arc::clone(&shared) as Arc<dyn Any + Send + Sync>);
                    Some(Slot::Shared(shared))
                }
                Some(permit) => Some(Slot::Owned(permit)),
                None => {
                    let res = Rejection::new(RejectionKind::ConcurrencyLimited)
                        .with_detail(
                            "too many requests are in flight for this route; \
                             the request was not queued",
                        )
                        .for_request(&req)
                        .into_response_with(&mut self.render);
                    return ResponseFuture::answer(res.map(ResponseBody::new));
                }
            },
        };
        ResponseFuture::forward(self.inner.call(req), permit)
    }
}
