//! HTTP responses on the host's port: the body type every route answers with (whole, or
//! streamed as SSE) and the plain-text / JSON helper.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

/// Every response's body: whole (`Full`) or streamed (SSE).
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A whole response of `content_type`.
pub(crate) fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
