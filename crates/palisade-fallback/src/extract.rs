//! What the layer keeps of a request for its fallback.
//!
//! The inner service consumes the request, and request bodies are streams that
//! cannot be cloned. So before the call the layer runs an extractor on `&Req`
//! and keeps what it returns, and the fallback receives that kept value. The
//! extractor runs on every call, so its cost is on the success path: the
//! default [`KeepNothing`] keeps `()` and costs nothing; keep an id, a cache
//! key, or (with [`KeepHead`]) the head of an http request.

use std::fmt;

/// Keeps part of a request of type `Req` before the call.
pub trait Extract<Req> {
    /// What is kept.
    type Kept;

    /// Keeps what the fallback will need of `request`.
    fn extract(&self, request: &Req) -> Self::Kept;
}

/// Keeps nothing (`()`). The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeepNothing;

impl<Req> Extract<Req> for KeepNothing {
    type Kept = ();

    #[inline]
    fn extract(&self, _: &Req) {}
}

/// Keeps what a closure returns. Made by [`keep`](crate::FallbackBuilder::keep).
#[derive(Clone, Copy)]
pub struct KeepFn<F>(pub(crate) F);

impl<F> fmt::Debug for KeepFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeepFn(..)")
    }
}

impl<Req, K, F> Extract<Req> for KeepFn<F>
where
    F: Fn(&Req) -> K,
{
    type Kept = K;

    #[inline]
    fn extract(&self, request: &Req) -> K {
        (self.0)(request)
    }
}

/// Keeps the head of an `http::Request` (method, URI, version, headers and the
/// [`CallOptions`](palisade_core::options::CallOptions)), so that a fallback
/// service can be sent a request rebuilt from it with
/// [`RequestHead::into_request`]. Cloning the headers allocates on every call.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeepHead;

/// The head of an http request, kept by [`KeepHead`].
#[derive(Clone, Debug)]
pub struct RequestHead {
    /// The request method.
    pub method: http::Method,
    /// The request URI.
    pub uri: http::Uri,
    /// The http version.
    pub version: http::Version,
    /// The request headers.
    pub headers: http::HeaderMap,
    /// The call's options, if any were set.
    pub options: Option<palisade_core::options::CallOptions>,
}

impl RequestHead {
    /// A request with this head (and call options) and `body`.
    pub fn into_request<B>(self, body: B) -> http::Request<B> {
        let mut request = http::Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        if let Some(options) = self.options {
            request.extensions_mut().insert(options);
        }
        request
    }
}

impl<B> Extract<http::Request<B>> for KeepHead {
    type Kept = RequestHead;

    fn extract(&self, request: &http::Request<B>) -> RequestHead {
        RequestHead {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
            options: request
                .extensions()
                .get::<palisade_core::options::CallOptions>()
                .cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_core::options::CallOptionsExt;

    #[test]
    fn head_round_trips() {
        let mut request = http::Request::put("http://a/b?c")
            .header("x-id", "7")
            .body(vec![1u8])
            .unwrap();
        request.call_options_mut().set_retries(0);
        let head = KeepHead.extract(&request);
        let rebuilt = head.into_request(());
        assert_eq!(rebuilt.method(), http::Method::PUT);
        assert_eq!(rebuilt.uri(), "http://a/b?c");
        assert_eq!(rebuilt.headers()["x-id"], "7");
        assert_eq!(rebuilt.call_options().and_then(|o| o.retries()), Some(0));
        assert_eq!(KeepFn(|r: &http::Request<Vec<u8>>| r.body().len()).extract(&request), 1);
    }
}
