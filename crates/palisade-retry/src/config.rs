//! Configuration: [`RetryLayerBuilder`] and per-route overrides.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::backoff::{Backoff, Jitter, JitterSeed};
use palisade_core::error::ConfigError;
use palisade_core::event::{Listener, Listeners};
use palisade_core::protocol::{IsGrpc, Unchosen};
use palisade_core::route::{RouteTable, RouteTableBuilder};

use crate::budget::{RetryBudget, Throttle};
use crate::layer::RetryLayer;
use crate::policy::{DefaultPredicate, Extend, Replace};
use crate::replay::{DEFAULT_REPLAY_CAP, KeepReplayBody};

const LAYER: &str = "retry";

/// The largest replay buffer a layer may configure: 16 MiB.
pub const MAX_REPLAY_CAP: usize = 16 * 1024 * 1024;

/// The most retries a call may make: the builder rejects more, a route
/// override too, and a call's own
/// [`CallOptions::retries`](palisade_core::options::CallOptions::retries) is
/// clamped to it.
pub const MAX_RETRIES: u32 = 100;

/// The default backoff: exponential from 100 ms, factor 2, cap 2 s, full jitter.
pub fn default_backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(100))
        .factor(2.0)
        .max_delay(Duration::from_secs(2))
        .jitter(Jitter::Full)
        .build()
        .unwrap_or_else(|_| unreachable!("the default backoff is valid"))
}

/// Settings for one route (an http path or a gRPC method such as
/// `/package.Service/Method`) that override the layer's.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RouteRetry {
    /// Retries after the first attempt on this route.
    pub retries: Option<u32>,
    /// The backoff on this route.
    pub backoff: Option<Backoff>,
}

impl RouteRetry {
    /// No override yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Retries on this route (0 disables retries there).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    /// The backoff on this route.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }
}

/// The validated settings of a layer (without its protocol and predicate).
pub(crate) struct Settings {
    pub(crate) retries: u32,
    pub(crate) backoff: Backoff,
    pub(crate) max_pushback: Duration,
    pub(crate) replay_cap: usize,
    pub(crate) routes: RouteTable<RouteRetry>,
    /// Empty when the layer has no budget, no throttle and no listener: a
    /// call's future then holds no reference count at all.
    pub(crate) state: StateHandle,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("retries", &self.retries)
            .field("backoff", &self.backoff)
            .field("max_pushback", &self.max_pushback)
            .field("replay_cap", &self.replay_cap)
            .field("routes", &self.routes)
            .field("state", &self.state)
            .finish()
    }
}

/// The mutable state every call of one layer shares: what a retry spends and
/// who hears about it.
#[derive(Debug)]
pub(crate) struct SharedState {
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) throttle: Option<Throttle>,
    pub(crate) listeners: Listeners,
    /// A seed for the calls' jitter (tests); none in production.
    pub(crate) jitter: Option<JitterSeed>,
}

/// The configuration of one layer value (protocol, predicate, validated
/// settings), shared by every service it builds and their clones.
#[derive(Debug)]
pub(crate) struct Config<P, R> {
    pub(crate) protocol: P,
    pub(crate) predicate: R,
    pub(crate) settings: Settings,
}

/// What one call's future needs to decide on and make its retries: the
/// protocol and predicate (cloned per call, as `tower::retry` clones its
/// policy; the built-in ones are zero-sized), the backoff with any route
/// override applied, and the shared budget, throttle and listeners.
#[derive(Debug)]
pub(crate) struct CallPolicy<P, R> {
    pub(crate) protocol: P,
    pub(crate) predicate: R,
    pub(crate) backoff: Backoff,
    pub(crate) max_pushback: Duration,
    pub(crate) state: StateHandle,
}

/// A handle on the shared state, held by the layer and by each call that may
/// retry. Its reference is released by value, out of line, so that no pointer
/// into a response future escapes on the success path and the compiler can
/// keep the future in registers.
#[derive(Debug, Default)]
pub(crate) struct StateHandle(pub(crate) Option<Arc<SharedState>>);

impl StateHandle {
    pub(crate) fn budget(&self) -> Option<&RetryBudget> {
        self.0.as_ref().and_then(|s| s.budget.as_ref())
    }

    pub(crate) fn throttle(&self) -> Option<&Throttle> {
        self.0.as_ref().and_then(|s| s.throttle.as_ref())
    }

    pub(crate) fn listeners(&self) -> Option<&Listeners> {
        self.0.as_ref().map(|s| &s.listeners)
    }

    pub(crate) fn jitter(&self) -> Option<&JitterSeed> {
        self.0.as_ref().and_then(|s| s.jitter.as_ref())
    }
}

impl Drop for StateHandle {
    #[inline]
    fn drop(&mut self) {
        if let Some(state) = self.0.take() {
            release(state);
        }
    }
}

#[inline(never)]
fn release(state: Arc<SharedState>) {
    drop(state);
}

/// Builds a [`RetryLayer`]. `P` is the protocol ([`Plain`](palisade_core::protocol::Plain), [`Http`](palisade_core::protocol::Http),
/// [`Grpc`](palisade_core::protocol::Grpc)), `R` the predicate ([`DefaultPredicate`], [`Replace`], [`Extend`]).
///
/// | setting | default |
/// |---|---|
/// | [`retries`](Self::retries) | 1 |
/// | [`backoff`](Self::backoff) | exponential from 100 ms, factor 2, cap 2 s, full jitter |
/// | [`budget`](Self::budget) | 20 % of the request rate, floor 10 per second, TTL 10 s |
/// | [`throttle`](Self::throttle) | none |
/// | [`max_pushback`](Self::max_pushback) | 10 s |
/// | [`replay_cap`](Self::replay_cap) | 64 KiB |
/// | [`jitter_seed`](Self::jitter_seed) | none: each call's jitter is seeded from the thread's generator |
///
/// The builder starts on [`Unchosen`] and has no [`build`](Self::build)
/// until a protocol is chosen with [`grpc`](Self::grpc),
/// [`http`](Self::http), [`plain`](Self::plain) or
/// [`protocol`](Self::protocol). A retry layer left on [`Plain`](palisade_core::protocol::Plain) over a
/// tonic `Channel` would not replay bodies, would judge every response by
/// its head (a gRPC failure in the trailers is then never retried) and would
/// ignore per-call options, routes and server pushback, all silently; so
/// forgetting the protocol is a compile error instead:
///
/// ```compile_fail
/// use palisade_retry::RetryLayer;
/// let layer = RetryLayer::builder().retries(2).build();
/// ```
pub struct RetryLayerBuilder<P = Unchosen, R = DefaultPredicate, A = KeepReplayBody> {
    protocol: P,
    predicate: R,
    retries: u32,
    backoff: Backoff,
    budget: BudgetChoice,
    throttle: Option<(u32, f64)>,
    max_pushback: Duration,
    replay_cap: usize,
    routes: RouteTableBuilder<RouteRetry>,
    listeners: Listeners,
    jitter_seed: Option<u64>,
    attempt_body: PhantomData<fn() -> A>,
}

#[derive(Clone, Copy, Debug)]
enum BudgetChoice {
    None,
    Budget {
        ratio: f64,
        min_per_sec: u32,
        ttl: Duration,
    },
}

impl<P: fmt::Debug, R, A> fmt::Debug for RetryLayerBuilder<P, R, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayerBuilder")
            .field("protocol", &self.protocol)
            .field("retries", &self.retries)
            .field("backoff", &self.backoff)
            .field("budget", &self.budget)
            .field("throttle", &self.throttle)
            .field("max_pushback", &self.max_pushback)
            .field("replay_cap", &self.replay_cap)
            .field("routes", &self.routes)
            .field("jitter_seed", &self.jitter_seed)
            .finish_non_exhaustive()
    }
}

impl Default for RetryLayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryLayerBuilder {
    /// The defaults, with no protocol chosen yet (see the type's docs).
    pub fn new() -> Self {
        Self {
            protocol: Unchosen,
            predicate: DefaultPredicate,
            retries: 1,
            backoff: default_backoff(),
            budget: BudgetChoice::Budget {
                ratio: 0.2,
                min_per_sec: 10,
                ttl: Duration::from_secs(10),
            },
            throttle: None,
            max_pushback: Duration::from_secs(10),
            replay_cap: DEFAULT_REPLAY_CAP,
            routes: RouteTableBuilder::new(),
            listeners: Listeners::new(),
            jitter_seed: None,
            attempt_body: PhantomData,
        }
    }
}

impl<P, R, A> RetryLayerBuilder<P, R, A> {
    palisade_core::protocol_methods! {
        builder: RetryLayerBuilder<_, R, A>,
        rebuild: |self, protocol: Q| self.retype(|_| protocol, |predicate| predicate),
        protocol: "[`Plain`](palisade_core::protocol::Plain) clones `Req: Clone` requests; \
            [`Http`](palisade_core::protocol::Http) and [`Grpc`](palisade_core::protocol::Grpc) replay \
            `http::Request<B>` bodies and apply their default rules.",
        grpc: "replayable bodies, trailers-only UNAVAILABLE retried, `grpc-retry-pushback-ms` honoured. Over \
            a tonic `Channel`, add `.tonic_body()` (feature `tonic`).",
        http: "replayable bodies, 502/503/504 retried for idempotent requests, `Retry-After` honoured.",
        plain: "requests are cloned (`Req: Clone`), every `Ok` is a success.",
    }

    /// How each attempt is handed to the inner service (see
    /// [`AttemptBody`](crate::AttemptBody)); the default,
    /// [`KeepReplayBody`], hands it on unchanged. Over a tonic `Channel` use
    /// `tonic_body`.
    pub fn attempt_body<T>(self) -> RetryLayerBuilder<P, R, T> {
        self.retype(|protocol| protocol, |predicate| predicate)
    }

    /// Over a tonic `Channel` (feature `tonic`): each attempt reaches the
    /// inner service as `http::Request<tonic::body::Body>`, the type a
    /// `Channel` takes, so no `map_request` goes between the layer and the
    /// channel. The replayable body is put into tonic's body once per
    /// attempt (one allocation, as the `map_request` it replaces made).
    ///
    /// A choice of its own rather than what `.grpc()` does: gRPC does not
    /// mean tonic (a hyper client or a test service speaks gRPC over any
    /// body), and a cargo feature must not change the type `.grpc()` builds.
    ///
    /// ```
    /// use palisade_retry::RetryLayer;
    /// let layer = RetryLayer::builder().grpc().tonic_body().retries(2).build()?;
    /// # Ok::<(), palisade_core::error::ConfigError>(())
    /// ```
    #[cfg(feature = "tonic")]
    pub fn tonic_body(self) -> RetryLayerBuilder<P, R, crate::replay::TonicBody> {
        self.attempt_body()
    }

    fn predicate_with<Q>(self, predicate: Q) -> RetryLayerBuilder<P, Q, A> {
        self.retype(|protocol| protocol, |_| predicate)
    }

    /// The same settings with the protocol, predicate or attempt body type changed.
    fn retype<Q, S, T>(
        self,
        protocol: impl FnOnce(P) -> Q,
        predicate: impl FnOnce(R) -> S,
    ) -> RetryLayerBuilder<Q, S, T> {
        RetryLayerBuilder {
            protocol: protocol(self.protocol),
            predicate: predicate(self.predicate),
            retries: self.retries,
            backoff: self.backoff,
            budget: self.budget,
            throttle: self.throttle,
            max_pushback: self.max_pushback,
            replay_cap: self.replay_cap,
            routes: self.routes,
            listeners: self.listeners,
            jitter_seed: self.jitter_seed,
            attempt_body: PhantomData,
        }
    }

    /// Replaces the default rules by `predicate` (a
    /// [`RetryPredicate`](palisade_core::retry::RetryPredicate), such as a
    /// closure `Fn(&View, &Result<Res, BoxError>) -> RetryDecision`; the view
    /// is the request for [`Plain`](palisade_core::protocol::Plain) and the request's head
    /// `http::Request<()>` for [`Http`](palisade_core::protocol::Http) and [`Grpc`](palisade_core::protocol::Grpc),
    /// with the extensions the caller sent: the peer an attempt used is named
    /// on its response, see [`KeptRequest`](crate::policy::KeptRequest)).
    pub fn predicate<F>(self, predicate: F) -> RetryLayerBuilder<P, Replace<F>, A> {
        self.predicate_with(Replace(predicate))
    }

    /// Keeps the default rules and also retries what `predicate` accepts
    /// (never an error marked not retryable or a passed deadline).
    pub fn or_retry_if<F>(self, predicate: F) -> RetryLayerBuilder<P, Extend<F>, A> {
        self.predicate_with(Extend(predicate))
    }

    /// Retries after the first attempt (default 1; 0 disables). A call's
    /// [`CallOptions::retries`](palisade_core::options::CallOptions::retries)
    /// and a route's override win. At most [`MAX_RETRIES`] (a call's option
    /// above it is clamped).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The backoff between attempts (see [`palisade_core::backoff`]).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The retry budget: retries add at most `retry_ratio` (0.2 = 20 %) to
    /// the request rate, at least `min_per_sec` per second, counted over `ttl`
    /// (1 s to 60 s). See [`RetryBudget`].
    pub fn budget(mut self, retry_ratio: f64, min_per_sec: u32, ttl: Duration) -> Self {
        self.budget = BudgetChoice::Budget {
            ratio: retry_ratio,
            min_per_sec,
            ttl,
        };
        self
    }

    /// No retry budget: only the retry count, the throttle and the deadline bound retries.
    pub fn no_budget(mut self) -> Self {
        self.budget = BudgetChoice::None;
        self
    }

    /// gRPC-style throttling as well: a bucket of `max_tokens` that failures
    /// drain and successes refill by `token_ratio`; see [`Throttle`].
    pub fn throttle(mut self, max_tokens: u32, token_ratio: f64) -> Self {
        self.throttle = Some((max_tokens, token_ratio));
        self
    }

    /// The longest server pushback honoured (default 10 s); a longer one
    /// skips the retry.
    pub fn max_pushback(mut self, max: Duration) -> Self {
        self.max_pushback = max;
        self
    }

    /// The largest request body buffered for replay (default 64 KiB, at most
    /// [`MAX_REPLAY_CAP`]); a larger body is sent once and not retried.
    pub fn replay_cap(mut self, bytes: usize) -> Self {
        self.replay_cap = bytes;
        self
    }

    /// Overrides settings for one route (the http path or the gRPC method
    /// `/package.Service/Method`, as [`Inspect::route`](palisade_core::protocol::Inspect::route) gives it).
    /// Configuring one route twice (or an empty route) is an error at
    /// [`build`](Self::build) (see [`palisade_core::route`]).
    pub fn route(mut self, route: impl Into<String>, settings: RouteRetry) -> Self {
        self.routes.push(route, settings);
        self
    }

    /// Adds a listener for the layer's events (each retry, budget exhaustion).
    pub fn listener(mut self, listener: Arc<dyn Listener>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    /// Seeds the jitter of the backoff, so that a test can replay a jittered
    /// run exactly (a proptest regression, say). Each call of the layer still
    /// draws its own delays (the n-th call gets the same ones in every run,
    /// see [`JitterSeed`]), so seeded calls do not retry in step either.
    /// Leave it unset in production: each call then seeds its jitter from
    /// the thread's generator.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.jitter_seed = Some(seed);
        self
    }
}

impl<P: IsGrpc, R, A> RetryLayerBuilder<P, R, A> {
    /// Checks the settings and builds the layer. Exists once a protocol is
    /// chosen (every protocol implements [`IsGrpc`]; [`Unchosen`] does not).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field: a zero `max_pushback`, a
    /// `replay_cap` above [`MAX_REPLAY_CAP`], `retries` (or a route's) above
    /// [`MAX_RETRIES`], an invalid `budget` or `throttle`, or an empty or
    /// duplicate `route`.
    pub fn build(self) -> Result<RetryLayer<P, R, A>, ConfigError> {
        if self.max_pushback.is_zero() {
            return Err(ConfigError::new(LAYER, "max_pushback", "must be more than zero"));
        }
        if self.replay_cap > MAX_REPLAY_CAP {
            return Err(ConfigError::new(LAYER, "replay_cap", "must be at most 16 MiB"));
        }
        if self.retries > MAX_RETRIES {
            return Err(ConfigError::new(LAYER, "retries", "must be at most 100"));
        }
        let budget = match self.budget {
            BudgetChoice::None => None,
            BudgetChoice::Budget {
                ratio,
                min_per_sec,
                ttl,
            } => Some(RetryBudget::new(ratio, min_per_sec, ttl)?),
        };
        let throttle = match self.throttle {
            None => None,
            Some((max, ratio)) => Some(Throttle::new(max, ratio)?),
        };
        if self
            .routes
            .iter()
            .any(|(_, s)| s.retries.is_some_and(|r| r > MAX_RETRIES))
        {
            return Err(ConfigError::new(LAYER, "route.retries", "must be at most 100"));
        }
        let routes = self.routes.build(LAYER, "route")?;
        let jitter = self.jitter_seed.map(JitterSeed::new);
        let state = StateHandle(
            (budget.is_some() || throttle.is_some() || !self.listeners.is_empty() || jitter.is_some()).then(|| {
                Arc::new(SharedState {
                    budget,
                    throttle,
                    listeners: self.listeners,
                    jitter,
                })
            }),
        );
        Ok(RetryLayer::from_shared(Arc::new(Config {
            protocol: self.protocol,
            predicate: self.predicate,
            settings: Settings {
                retries: self.retries,
                backoff: self.backoff,
                max_pushback: self.max_pushback,
                replay_cap: self.replay_cap,
                routes,
                state,
            },
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_core::protocol::Plain;

    #[test]
    fn invalid_settings_name_the_field() {
        let field = |b: RetryLayerBuilder<Plain>| b.build().unwrap_err().field();
        assert_eq!(
            field(RetryLayerBuilder::new().plain().max_pushback(Duration::ZERO)),
            "max_pushback"
        );
        assert_eq!(
            field(RetryLayerBuilder::new().plain().replay_cap(MAX_REPLAY_CAP + 1)),
            "replay_cap"
        );
        assert_eq!(field(RetryLayerBuilder::new().plain().retries(1000)), "retries");
        assert_eq!(
            field(RetryLayerBuilder::new().plain().budget(-1.0, 1, Duration::from_secs(1))),
            "budget.retry_ratio"
        );
        assert_eq!(
            field(RetryLayerBuilder::new().plain().throttle(0, 0.1)),
            "throttle.max_tokens"
        );
        assert_eq!(
            field(
                RetryLayerBuilder::new()
                    .plain()
                    .route("/a", RouteRetry::new().retries(101))
            ),
            "route.retries"
        );
        assert_eq!(
            field(RetryLayerBuilder::new().plain().route("", RouteRetry::new())),
            "route"
        );
    }

    #[test]
    fn a_route_configured_twice_is_an_error() {
        let err = RetryLayerBuilder::new()
            .plain()
            .route("/a", RouteRetry::new().retries(2))
            .route("/b", RouteRetry::new())
            .route("/a", RouteRetry::new().retries(3))
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "route");
        assert!(err.to_string().contains("`/a` is configured twice"), "{err}");
        let layer = RetryLayerBuilder::new()
            .plain()
            .route("/a", RouteRetry::new().retries(2))
            .route("/b", RouteRetry::new().retries(0))
            .build()
            .unwrap();
        let routes = &layer.shared().settings.routes;
        assert_eq!(routes.get("/a").and_then(|r| r.retries), Some(2));
        assert_eq!(routes.get("/b").and_then(|r| r.retries), Some(0));
        assert_eq!(routes.get("/c"), None);
    }

    #[test]
    fn the_default_backoff_is_the_documented_one() {
        let b = default_backoff();
        assert_eq!(b.base(), Duration::from_millis(100));
        assert_eq!(b.cap(), Duration::from_secs(2));
        assert_eq!(b.jitter(), Jitter::Full);
        assert_eq!(b.undithered(1), Duration::from_millis(200));
    }
}
