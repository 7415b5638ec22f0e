//! Naming the chosen peer on the response, for middleware above the balancer
//! (the retry layer itself reads the shared attempt record).

use palisade_body::Joined;
use palisade_core::classify::{ClassifyFn, ErrorsWith, ResponsesWith};
use palisade_core::peer::PeerId;
use palisade_core::protocol::{Grpc, Http, Plain};

/// How a protocol names the peer that answered on its response, and
/// describes a failed response for the health report.
///
/// The retry layer learns the chosen peer through the request's
/// [`AttemptRecord`](palisade_core::peer::AttemptRecord), a shared handle:
/// each attempt's copy of the request carries a clone of the same record, so
/// the peer the balancer records reaches the retry layer whether the attempt
/// answered or failed with an error. For http responses ([`Http`], [`Grpc`])
/// the balancer also puts the [`PeerId`] in the response's extensions, for
/// middleware that looks at the response (logging, metrics) — only for
/// requests that carry an attempt record, so plain calls pay nothing. [`Plain`] responses have nowhere to carry it: the default does
/// nothing.
pub trait TagPeer<Res> {
    /// Names `peer` on `response`.
    fn tag_peer(&self, response: &mut Res, peer: &PeerId) {
        let _ = (response, peer);
    }

    /// Says what failed about `response`, a response the protocol classified
    /// as a failure from its head, for the peer's `last_error` in the health
    /// report ("HTTP 503 Service Unavailable", "gRPC status 14 (UNAVAILABLE):
    /// ..."). The default says nothing specific.
    fn describe_failure(&self, response: &Res) -> Option<String> {
        let _ = response;
        None
    }
}

/// A `grpc-message` as sent: percent-encoded (gRPC over HTTP/2 spec).
fn percent_decode(bytes: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status line of an http response, or the gRPC status its head carries
/// (a trailers-only answer) with its message.
fn describe_http<B>(response: &http::Response<B>) -> String {
    describe_grpc(response.headers()).unwrap_or_else(|| format!("HTTP {}", response.status()))
}

/// The gRPC status in `headers` (a trailers-only head, or the trailers at
/// the end of a stream) with its message, if there is one.
pub(crate) fn describe_grpc(headers: &http::HeaderMap) -> Option<String> {
    let code = headers.get("grpc-status").and_then(|v| v.to_str().ok())?;
    let name = palisade_core::protocol::GrpcCode::from_headers(headers).map_or("UNKNOWN", |c| c.name());
    let message = headers
        .get("grpc-message")
        .map(|v| percent_decode(v.as_bytes()))
        .unwrap_or_default();
    Some(if message.is_empty() {
        format!("gRPC status {code} ({name})")
    } else {
        format!("gRPC status {code} ({name}): {message}")
    })
}

impl<Res> TagPeer<Res> for Plain {}

impl<F, Res> TagPeer<Res> for ClassifyFn<F> {}

impl<B> TagPeer<http::Response<B>> for Http {
    fn tag_peer(&self, response: &mut http::Response<B>, peer: &PeerId) {
        response.extensions_mut().insert(peer.clone());
    }

    fn describe_failure(&self, response: &http::Response<B>) -> Option<String> {
        Some(describe_http(response))
    }
}

impl<B> TagPeer<http::Response<B>> for Grpc {
    fn tag_peer(&self, response: &mut http::Response<B>, peer: &PeerId) {
        response.extensions_mut().insert(peer.clone());
    }

    fn describe_failure(&self, response: &http::Response<B>) -> Option<String> {
        Some(describe_http(response))
    }
}

/// A balancer above another tracking layer ([`Joined`]) tags and describes
/// as the protocol it joins with.
impl<P: TagPeer<Res>, Res> TagPeer<Res> for Joined<P> {
    fn tag_peer(&self, response: &mut Res, peer: &PeerId) {
        self.inner().tag_peer(response, peer);
    }

    fn describe_failure(&self, response: &Res) -> Option<String> {
        self.inner().describe_failure(response)
    }
}

impl<C: TagPeer<Res>, F, Res> TagPeer<Res> for ErrorsWith<C, F> {
    fn tag_peer(&self, response: &mut Res, peer: &PeerId) {
        self.inner().tag_peer(response, peer);
    }

    fn describe_failure(&self, response: &Res) -> Option<String> {
        self.inner().describe_failure(response)
    }
}

impl<C: TagPeer<Res>, F, Res> TagPeer<Res> for ResponsesWith<C, F> {
    fn tag_peer(&self, response: &mut Res, peer: &PeerId) {
        self.inner().tag_peer(response, peer);
    }

    fn describe_failure(&self, response: &Res) -> Option<String> {
        self.inner().describe_failure(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_response_is_described_by_its_status() {
        let mut grpc = http::Response::new(());
        grpc.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("14"));
        grpc.headers_mut()
            .insert("grpc-message", http::HeaderValue::from_static("backend%20down%"));
        assert_eq!(
            Grpc::default().describe_failure(&grpc).as_deref(),
            Some("gRPC status 14 (UNAVAILABLE): backend down%")
        );
        let mut http = http::Response::new(());
        *http.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(
            Http::default().describe_failure(&http).as_deref(),
            Some("HTTP 503 Service Unavailable")
        );
        assert_eq!(TagPeer::<()>::describe_failure(&Plain, &()), None);
        // Joined (a balancer above a breaker) says what the protocol it wraps says.
        assert_eq!(
            Joined(Grpc::default()).describe_failure(&grpc).as_deref(),
            Some("gRPC status 14 (UNAVAILABLE): backend down%")
        );
        let mut tagged = http::Response::new(());
        Joined(Grpc::default()).tag_peer(&mut tagged, &PeerId::new("peer-1"));
        assert_eq!(tagged.extensions().get::<PeerId>(), Some(&PeerId::new("peer-1")));
    }
}
