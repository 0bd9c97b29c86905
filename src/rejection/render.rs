//! How a [`Rejection`] becomes a response: the [`RenderRejection`] trait and the default
//! [`ProblemJson`] renderer.

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderValue};

use super::Rejection;

/// Turns a [`Rejection`] into a response body and content type.
///
/// [`Rejection::into_response_with`] sets the status, the rejection's headers and the
/// extension afterwards, so an implementation only chooses the body. Any
/// `FnMut(&Rejection) -> Response<B>` is a renderer:
///
/// ```
/// use http::{header, Response};
/// use tower_gateway::rejection::{Rejection, RejectionKind};
///
/// let mut plain = |rejection: &Rejection| {
///     Response::builder()
///         .header(header::CONTENT_TYPE, "text/plain")
///         .body(rejection.detail().to_owned())
///         .unwrap()
/// };
/// let response = Rejection::new(RejectionKind::NotFound).into_response_with(&mut plain);
/// assert_eq!(response.status(), 404);
/// assert_eq!(response.body(), "no route matches the request path");
/// ```
pub trait RenderRejection<B> {
    /// Renders the body (and any content headers) for `rejection`.
    fn render(&mut self, rejection: &Rejection) -> Response<B>;
}

impl<B, F> RenderRejection<B> for F
where
    F: FnMut(&Rejection) -> Response<B>,
{
    fn render(&mut self, rejection: &Rejection) -> Response<B> {
        self(rejection)
    }
}

/// The default renderer: RFC 9457 `application/problem+json`, for any body `B: From<Bytes>`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProblemJson;

impl<B: From<Bytes>> RenderRejection<B> for ProblemJson {
    fn render(&mut self, rejection: &Rejection) -> Response<B> {
        let mut response = Response::new(B::from(rejection.problem().to_json()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}
