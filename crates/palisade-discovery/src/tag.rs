//! Naming the chosen peer on the response, for a retry layer above.

use palisade_core::classify::{ClassifyFn, ErrorsWith, ResponsesWith};
use palisade_core::peer::PeerId;
use palisade_core::protocol::{Grpc, Http, Plain};

/// How a protocol names the peer that answered on its response.
///
/// A retry layer gives each attempt its own copy of the request, so the
/// peer the balancer appends to the copy's
/// [`AttemptRecord`](palisade_core::peer::AttemptRecord) does not reach it.
/// For http responses ([`Http`], [`Grpc`]) the balancer also puts the
/// [`PeerId`] in the response's extensions, where `palisade-retry` looks for
/// it — only for requests that carry an attempt record, so plain calls pay
/// nothing. [`Plain`] responses have nowhere to carry it: the default does
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
