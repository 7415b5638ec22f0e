//! Naming the chosen peer on the response, for middleware above the balancer
//! (the retry layer itself reads the shared attempt record).

use palisade_core::classify::{ClassifyFn, ErrorsWith, ResponsesWith};
use palisade_core::peer::PeerId;
use palisade_core::protocol::{Grpc, Http, Plain};

/// How a protocol names the peer that answered on its response.
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
}

impl<Res> TagPeer<Res> for Plain {}

impl<F, Res> TagPeer<Res> for ClassifyFn<F> {}

impl<B> TagPeer<http::Response<B>> for Http {
    fn tag_peer(&self, response: &mut http::Response<B>, peer: &PeerId) {
        response.extensions_mut().insert(peer.clone());
    }
}

impl<B> TagPeer<http::Response<B>> for Grpc {
    fn tag_peer(&self, response: &mut http::Response<B>, peer: &PeerId) {
        response.extensions_mut().insert(peer.clone());
    }
}

impl<C: TagPeer<Res>, F, Res> TagPeer<Res> for ErrorsWith<C, F> {
    fn tag_peer(&self, response: &mut Res, peer: &PeerId) {
        self.inner().tag_peer(response, peer);
    }
}

impl<C: TagPeer<Res>, F, Res> TagPeer<Res> for ResponsesWith<C, F> {
    fn tag_peer(&self, response: &mut Res, peer: &PeerId) {
        self.inner().tag_peer(response, peer);
    }
}
