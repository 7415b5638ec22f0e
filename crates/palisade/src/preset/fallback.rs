//! The presets' optional fallback: per route (a gRPC method, an http path),
//! outside every layer, answering when the whole stack gives up.

use std::sync::Arc;

use palisade_core::BoxError;
use palisade_core::classify::Classify;
use palisade_core::error::ConfigError;
use palisade_core::event::Listener;
use palisade_core::protocol::{Inspect, IsGrpc};
use palisade_core::route::{RouteIndex, RouteTable, RouteTableBuilder};
use palisade_fallback::policy::ErrorPolicy;
use palisade_fallback::source::Source;
use palisade_fallback::{FallbackLayer, MarkFallback, RouteFallback};
use tower::Layer;
use tower::util::BoxCloneSyncService;

/// A fallback's answer for one route.
pub(crate) type Answer<ResBody> = Arc<dyn Fn(&BoxError) -> http::Response<ResBody> + Send + Sync>;

/// A preset's boxed stack.
type Boxed<ReqBody, ResBody> = BoxCloneSyncService<http::Request<ReqBody>, http::Response<ResBody>, BoxError>;

/// Puts the fallback around the boxed stack (boxed again: a fallback costs
/// one more indirection, only when one is set).
pub(crate) type AddFallback<ReqBody, ResBody> = Box<dyn FnOnce(Boxed<ReqBody, ResBody>) -> Boxed<ReqBody, ResBody>>;

/// The answer of the called route, found by the route's index kept before the call.
#[derive(Clone)]
struct RouteAnswers<ResBody>(Arc<RouteTable<Answer<ResBody>>>);

impl<ResBody> Source<Option<RouteIndex>, http::Response<ResBody>> for RouteAnswers<ResBody> {
    type Future = std::future::Ready<Result<http::Response<ResBody>, BoxError>>;

    fn fall_back(&self, error: &BoxError, route: Option<RouteIndex>) -> Self::Future {
        // `only_routes` lets only the routes of the table reach here.
        let answer = route.and_then(|at| self.0.at(at));
        std::future::ready(match answer {
            Some(answer) => Ok(answer(error)),
            None => Err(format!("no fallback for this route (it was answering: {error})").into()),
        })
    }
}

/// The fallback layer for `answers` (`None` without any), speaking
/// `protocol`: an error or a failed response of a listed route is answered,
/// every other call passes through; a route named twice is a
/// [`ConfigError`] for field `fallback`.
pub(crate) fn by_route<P, ReqBody, ResBody>(
    answers: RouteTableBuilder<Answer<ResBody>>,
    protocol: P,
    listeners: &[Arc<dyn Listener>],
) -> Result<Option<AddFallback<ReqBody, ResBody>>, ConfigError>
where
    P: IsGrpc
        + Inspect<http::Request<ReqBody>>
        + Classify<http::Response<ResBody>, BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
    http::Response<ResBody>: MarkFallback,
{
    if answers.is_empty() {
        return Ok(None);
    }
    let mut layer = FallbackLayer::builder()
        .protocol(protocol)
        .on_failed_response()
        .only_routes();
    for (route, _) in answers.iter() {
        layer = layer.route(route, RouteFallback::OnErrors(ErrorPolicy::any()));
    }
    for listener in listeners {
        layer = layer.listener(listener.clone());
    }
    let answers = Arc::new(answers.build("preset", "fallback")?);
    let routes = answers.clone();
    let layer = layer
        .keep(move |request: &http::Request<ReqBody>| routes.find(request.uri().path()))
        .source(RouteAnswers(answers))
        .build()?;
    Ok(Some(Box::new(move |inner: Boxed<ReqBody, ResBody>| {
        BoxCloneSyncService::new(layer.layer(inner))
    })))
}
