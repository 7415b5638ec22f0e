//! The preset's settings from a configuration file (feature `serde`).
//!
//! [`PresetConfig`] deserialises from any serde format (TOML, YAML, JSON,
//! ...): every setting of every layer of the preset, each optional (what is
//! left out keeps the preset's default), durations in human form (`"250ms"`,
//! `"1.5s"`, `"2m"`), a time limit that can be turned off as `"off"`.
//! [`ClientsConfig`] adds per-service sections for a [`GrpcClients`](super::GrpcClients) set.
//!
//! Load with [`PresetConfig::from_deserializer`] (or
//! [`ClientsConfig::from_deserializer`]): an unknown field or a bad value
//! is a [`ConfigFileError`] that names the field's path
//! (`breaker.cooldown`); a value of the right type that a layer rejects (a
//! zero threshold) is the layer's [`ConfigError`] at
//! [`build`](GrpcClientBuilder::build), naming the layer and the field.
//!
//! ```
//! use palisade::discovery::InMemoryRegistry;
//! use palisade::preset::{GrpcClient, PresetConfig};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), palisade::BoxError> {
//! let text = r#"{
//!     "retries": 2,
//!     "attempt_timeout": { "timeout": "300ms", "routes": { "/echo.Echo/Slow": "2s" } },
//!     "breaker": { "failure_threshold": 5, "cooldown": "5s" },
//!     "bulkhead": { "max_concurrent": 64, "max_queue": 16, "max_wait": "50ms" }
//! }"#;
//! let config = PresetConfig::from_deserializer(&mut serde_json::Deserializer::from_str(text))?;
//! let client = GrpcClient::builder(InMemoryRegistry::new(), "echo").config(&config).build()?;
//!
//! let typo = r#"{ "breaker": { "cooldwn": "5s" } }"#;
//! let err = PresetConfig::from_deserializer(&mut serde_json::Deserializer::from_str(typo)).unwrap_err();
//! assert_eq!(err.path(), "breaker.cooldwn");
//! # drop(client); Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use http::HeaderName;
use palisade_bulkhead::{AimdConfig, GradientConfig};
use palisade_core::backoff::{Backoff, Jitter};
use palisade_core::error::ConfigError;
use palisade_discovery::{AllOpenPolicy, LoadMetric};
use palisade_retry::RouteRetry;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, de::DeserializeOwned};

use super::grpc::GrpcClientBuilder;
use super::set::GrpcClientsBuilder;

/// Every setting of a preset client, each optional: what is left out keeps
/// the preset's default. See the [module docs](self) for the format.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PresetConfig {
    /// Attempts after the first ([`GrpcClientBuilder::retries`]).
    pub retries: Option<u32>,
    /// The per-instance breaker ([`GrpcClientBuilder::breaker`]).
    pub breaker: BreakerSettings,
    /// The per-attempt timeout ([`GrpcClientBuilder::attempt_timeout_layer`]).
    pub attempt_timeout: TimeoutSettings,
    /// The whole call's timeout ([`GrpcClientBuilder::total_timeout_layer`]).
    pub total_timeout: TimeoutSettings,
    /// The retry layer ([`GrpcClientBuilder::retry`]).
    pub retry: RetrySettings,
    /// The client's bulkhead ([`GrpcClientBuilder::bulkhead`]).
    pub bulkhead: BulkheadSettings,
    /// The balancer ([`GrpcClientBuilder::balancer`]).
    pub balancer: BalancerSettings,
}

/// A preset for every service of a [`GrpcClients`](super::GrpcClients) set,
/// and per-service sections applied after it.
///
/// ```toml
/// retries = 1                    # every service
/// [services.payments]
/// attempt_timeout = { timeout = "2s" }
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientsConfig {
    /// Settings for every service.
    #[serde(flatten)]
    pub all: PresetConfig,
    /// Settings for one service, by its registry name.
    pub services: BTreeMap<String, PresetConfig>,
}

/// The per-instance circuit breaker; each field is the builder method of the
/// same name on [`CircuitBreakerConfigBuilder`](palisade_circuit_breaker::CircuitBreakerConfigBuilder).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: Option<u32>,
    /// The longest gap between two failures of one run.
    #[serde(deserialize_with = "duration")]
    pub failure_window: Option<Duration>,
    /// `false`: no consecutive-failures rule (a failure-rate rule only).
    pub consecutive: Option<bool>,
    /// The failure rate (0 to 1) that opens the breaker.
    pub failure_rate_threshold: Option<f64>,
    /// Calls in the window before the rate counts.
    pub min_requests: Option<u32>,
    /// The failure rate's window.
    #[serde(deserialize_with = "duration")]
    pub rate_window: Option<Duration>,
    /// Buckets of the rate window.
    pub rate_buckets: Option<u32>,
    /// A call this slow or slower counts as slow.
    #[serde(deserialize_with = "duration")]
    pub slow_call_duration: Option<Duration>,
    /// The slow-call rate (0 to 1) that opens the breaker.
    pub slow_call_rate_threshold: Option<f64>,
    /// The first cooldown.
    #[serde(deserialize_with = "duration")]
    pub cooldown: Option<Duration>,
    /// The longest cooldown (cooldowns double up to it).
    #[serde(deserialize_with = "duration")]
    pub max_cooldown: Option<Duration>,
    /// How cooldowns are randomised.
    pub jitter: Option<JitterSetting>,
    /// Probes at a time when half-open.
    pub half_open_max_probes: Option<u32>,
    /// Probe successes that close the breaker.
    pub success_threshold: Option<u32>,
    /// How long a probe may take before it counts as failed.
    #[serde(deserialize_with = "duration")]
    pub probe_timeout: Option<Duration>,
}

/// A timeout layer; each field is the builder method of the same name on
/// [`TimeoutBuilder`](palisade_timeout::TimeoutBuilder).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TimeoutSettings {
    /// The limit, or `"off"`.
    pub timeout: Option<Limit>,
    /// Per-route limits (`"/pkg.Service/Method" = "2s"` or `"off"`).
    pub routes: BTreeMap<String, Limit>,
    /// Whether to send `grpc-timeout`.
    pub propagate_grpc_timeout: Option<bool>,
    /// Also send the time left in milliseconds in this header.
    #[serde(deserialize_with = "header_name")]
    pub propagate_header: Option<HeaderName>,
}

/// The retry layer; each field is the builder method of the same name on
/// [`RetryLayerBuilder`](palisade_retry::RetryLayerBuilder).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetrySettings {
    /// Attempts after the first (the same as the top-level `retries`).
    pub retries: Option<u32>,
    /// The delay between attempts:
    /// `{ shape = "exponential", base = "100ms", factor = 2.0, max_delay = "2s", jitter = "full" }`
    /// (`shape` also `"linear"` or `"constant"`; all but `base` optional).
    #[serde(deserialize_with = "backoff")]
    pub backoff: Option<Backoff>,
    /// The retry budget.
    pub budget: Option<BudgetSetting>,
    /// `true`: no retry budget.
    pub no_budget: Option<bool>,
    /// gRPC-style throttling.
    pub throttle: Option<ThrottleSetting>,
    /// The longest server pushback honoured.
    #[serde(deserialize_with = "duration")]
    pub max_pushback: Option<Duration>,
    /// The most request-body bytes kept for a replay.
    pub replay_cap: Option<usize>,
    /// A fixed seed for the backoff's jitter (tests, reproductions).
    pub jitter_seed: Option<u64>,
    /// Per-route retry settings.
    pub routes: BTreeMap<String, RouteRetrySetting>,
}

/// A [`Backoff`], validated when it is read (a bad one is a
/// [`ConfigFileError`] at its path):
/// `{ shape = "exponential", base = "100ms", factor = 2.0, max_delay = "2s", jitter = "full" }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackoffSetting {
    #[serde(default)]
    shape: ShapeSetting,
    #[serde(deserialize_with = "required_duration")]
    base: Duration,
    factor: Option<f64>,
    #[serde(default, deserialize_with = "duration")]
    max_delay: Option<Duration>,
    jitter: Option<JitterSetting>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum ShapeSetting {
    #[default]
    Exponential,
    Linear,
    Constant,
}

/// A [`Jitter`]: `"none"`, `"full"`, `"equal"`, `"decorrelated"` or
/// `{ proportional = { low = 0.8, high = 1.2 } }`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum JitterSetting {
    /// No randomness.
    None,
    /// Uniform between zero and the delay.
    Full,
    /// Half the delay plus up to the other half.
    Equal,
    /// Between the base and three times the previous delay.
    Decorrelated,
    /// The delay times a factor in `[low, high]`.
    Proportional {
        /// The smallest factor.
        low: f64,
        /// The largest factor.
        high: f64,
    },
}

impl From<JitterSetting> for Jitter {
    fn from(setting: JitterSetting) -> Self {
        match setting {
            JitterSetting::None => Jitter::None,
            JitterSetting::Full => Jitter::Full,
            JitterSetting::Equal => Jitter::Equal,
            JitterSetting::Decorrelated => Jitter::Decorrelated,
            JitterSetting::Proportional { low, high } => Jitter::Proportional { low, high },
        }
    }
}

/// A retry budget ([`RetryLayerBuilder::budget`](palisade_retry::RetryLayerBuilder::budget)).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BudgetSetting {
    /// Retries add at most this share (0.2 = 20 %) to the request rate.
    pub retry_ratio: f64,
    /// Retries allowed per second whatever the rate.
    pub min_per_sec: u32,
    /// The window the budget counts over.
    #[serde(deserialize_with = "required_duration")]
    pub ttl: Duration,
}

/// gRPC-style throttling ([`RetryLayerBuilder::throttle`](palisade_retry::RetryLayerBuilder::throttle)).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ThrottleSetting {
    /// The bucket's size.
    pub max_tokens: u32,
    /// What a success refills.
    pub token_ratio: f64,
}

/// A route's retry settings ([`RouteRetry`]).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteRetrySetting {
    /// Attempts after the first on this route.
    pub retries: Option<u32>,
    /// The delay between attempts on this route.
    #[serde(deserialize_with = "backoff")]
    pub backoff: Option<Backoff>,
}

/// The client's bulkhead; each field is the builder method of the same name
/// on [`BulkheadConfigBuilder`](palisade_bulkhead::BulkheadConfigBuilder).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BulkheadSettings {
    /// Calls in flight at once.
    pub max_concurrent: Option<usize>,
    /// Calls waiting for a permit.
    pub max_queue: Option<usize>,
    /// The longest a call waits for a permit.
    #[serde(deserialize_with = "duration")]
    pub max_wait: Option<Duration>,
    /// An adaptive AIMD limit (fields left out keep [`AimdConfig`]'s defaults).
    pub aimd: Option<AimdSetting>,
    /// An adaptive gradient limit (fields left out keep [`GradientConfig`]'s defaults).
    pub gradient: Option<GradientSetting>,
}

/// An [`AimdConfig`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AimdSetting {
    /// [`AimdConfig::floor`]: the lowest limit.
    pub floor: Option<usize>,
    /// [`AimdConfig::ceiling`]: the highest limit.
    pub ceiling: Option<usize>,
    /// [`AimdConfig::increase_by`]: the additive step.
    pub increase_by: Option<usize>,
    /// [`AimdConfig::decrease_ratio`]: the multiplicative step.
    pub decrease_ratio: Option<f64>,
    /// [`AimdConfig::latency_threshold`]: a success this slow lowers the limit.
    #[serde(deserialize_with = "duration")]
    pub latency_threshold: Option<Duration>,
}

/// A [`GradientConfig`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GradientSetting {
    /// [`GradientConfig::floor`]: the lowest limit.
    pub floor: Option<usize>,
    /// [`GradientConfig::ceiling`]: the highest limit.
    pub ceiling: Option<usize>,
    /// [`GradientConfig::smoothing`]: how fast the limit follows.
    pub smoothing: Option<f64>,
    /// [`GradientConfig::rtt_tolerance`]: how much slower than the long-term RTT is tolerated.
    pub rtt_tolerance: Option<f64>,
    /// [`GradientConfig::long_window`]: samples in the long-term RTT.
    pub long_window: Option<u32>,
    /// [`GradientConfig::queue_size`]: the headroom added to the limit.
    pub queue_size: Option<usize>,
}

/// The balancer; each field is the builder method of the same name on
/// [`PeerDiscoveryBuilder`](palisade_discovery::PeerDiscoveryBuilder).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BalancerSettings {
    /// The share of unavailable peers past which the balancer panics.
    pub panic_threshold: Option<f64>,
    /// What to do when every peer is open.
    pub all_open: Option<AllOpenSetting>,
    /// The largest share of peers the breakers may eject.
    pub max_ejected_share: Option<f64>,
    /// `true`: no ejection cap.
    pub no_ejection_cap: Option<bool>,
    /// How load is measured.
    pub load: Option<LoadSetting>,
}

/// An [`AllOpenPolicy`]: `"fail_fast"`, `"probe_now"` or `"reset"`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AllOpenSetting {
    /// [`AllOpenPolicy::FailFast`].
    FailFast,
    /// [`AllOpenPolicy::ProbeNow`].
    ProbeNow,
    /// [`AllOpenPolicy::Reset`].
    Reset,
}

/// A [`LoadMetric`]: `"pending_requests"` or
/// `{ peak_ewma = { default_rtt = "30ms", decay = "10s" } }`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum LoadSetting {
    /// Calls in flight.
    PendingRequests,
    /// Peak-EWMA of response time.
    PeakEwma {
        /// The response time assumed before a peer answers.
        #[serde(deserialize_with = "required_duration")]
        default_rtt: Duration,
        /// The decay time constant.
        #[serde(deserialize_with = "required_duration")]
        decay: Duration,
    },
}

/// A time limit: a duration (`"300ms"`) or `"off"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit(pub Option<Duration>);

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LimitVisitor;
        impl Visitor<'_> for LimitVisitor {
            type Value = Limit;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"250ms\" or \"2s\", or \"off\"")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Limit, E> {
                if value == "off" {
                    return Ok(Limit(None));
                }
                parse_duration(value).map(|d| Limit(Some(d)))
            }
        }
        deserializer.deserialize_str(LimitVisitor)
    }
}

fn parse_duration<E: de::Error>(value: &str) -> Result<Duration, E> {
    humantime::parse_duration(value).map_err(|e| {
        E::custom(format!(
            "invalid duration {value:?} ({e}); write it as \"250ms\", \"1.5s\" or \"2m\""
        ))
    })
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"250ms\" or \"2s\"")
    }
    fn visit_str<E: de::Error>(self, value: &str) -> Result<Duration, E> {
        parse_duration(value)
    }
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    deserializer.deserialize_str(DurationVisitor).map(Some)
}

fn required_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_str(DurationVisitor)
}

/// A configuration file that does not fit [`PresetConfig`]: an unknown
/// field, a value of the wrong type, a bad duration. Names the field's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFileError {
    path: String,
    message: String,
}

impl ConfigFileError {
    /// The path of the field at fault, dotted (`breaker.cooldown`,
    /// `retry.routes./echo.Echo/Unary.retries`); `.` for the file itself.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong with it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "preset configuration, field `{}`: {}", self.path, self.message)
    }
}

impl std::error::Error for ConfigFileError {}

fn from_deserializer<'de, T: DeserializeOwned, D: Deserializer<'de>>(deserializer: D) -> Result<T, ConfigFileError> {
    serde_path_to_error::deserialize(deserializer).map_err(|e| ConfigFileError {
        path: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

impl PresetConfig {
    /// Reads the settings from any serde deserializer
    /// (`toml::Deserializer::new(text)`,
    /// `&mut serde_json::Deserializer::from_str(text)`, ...); the error names
    /// the field at fault.
    pub fn from_deserializer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, ConfigFileError> {
        from_deserializer(deserializer)
    }

    /// Sets every setting given on `builder`; the others keep what `builder`
    /// had. Values a layer rejects are its [`ConfigError`] at
    /// [`build`](GrpcClientBuilder::build).
    #[cfg(feature = "tonic")]
    pub fn apply(&self, builder: GrpcClientBuilder) -> GrpcClientBuilder {
        apply_settings!(self, builder)
    }

    /// [`apply`](Self::apply) for the http preset's builder.
    #[cfg(feature = "hyper")]
    pub fn apply_http<B: super::http::RequestBody>(
        &self,
        builder: super::http::HttpClientBuilder<B>,
    ) -> super::http::HttpClientBuilder<B> {
        apply_settings!(self, builder)
    }
}

/// Sets every setting of a [`PresetConfig`] on a preset builder (both have
/// the same layer knobs, see `knobs.rs`).
macro_rules! apply_settings {
    ($config:expr, $builder:expr) => {{
        let config: &PresetConfig = $config;
        let mut builder = $builder;
        if let Some(retries) = config.retries {
            builder = builder.retries(retries);
        }
        let breaker = config.breaker.clone();
        builder = builder.breaker(move |b| breaker.apply(b));
        let attempt = config.attempt_timeout.clone();
        builder = builder.attempt_timeout_layer(move |t| attempt.apply(t));
        let total = config.total_timeout.clone();
        builder = builder.total_timeout_layer(move |t| total.apply(t));
        let retry = config.retry.clone();
        builder = builder.retry(move |r| retry.apply(r));
        let bulkhead = config.bulkhead.clone();
        builder = builder.bulkhead(move |b| bulkhead.apply(b));
        let balancer = config.balancer.clone();
        builder.balancer(move |b| balancer.apply(b))
    }};
}
use apply_settings;

impl ClientsConfig {
    /// Reads the settings from any serde deserializer; the error names the
    /// field at fault.
    pub fn from_deserializer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, ConfigFileError> {
        from_deserializer(deserializer)
    }
}

impl GrpcClientBuilder {
    /// Sets every setting of `config` (see [`PresetConfig::apply`]).
    pub fn config(self, config: &PresetConfig) -> Self {
        config.apply(self)
    }
}

#[cfg(feature = "hyper")]
impl<B: super::http::RequestBody> super::http::HttpClientBuilder<B> {
    /// Sets every setting of `config` (see [`PresetConfig::apply_http`]).
    pub fn config(self, config: &PresetConfig) -> Self {
        config.apply_http(self)
    }
}

impl GrpcClientsBuilder {
    /// Sets `config`'s settings for every service and its per-service
    /// sections for theirs (see [`all`](Self::all) and
    /// [`service`](Self::service)).
    pub fn config(self, config: &ClientsConfig) -> Self {
        let all = config.all.clone();
        let mut builder = self.all(move |b| all.apply(b));
        for (service, settings) in &config.services {
            let settings = settings.clone();
            builder = builder.service(service.clone(), move |b| settings.apply(b));
        }
        builder
    }
}

type BreakerBuilder = palisade_circuit_breaker::CircuitBreakerConfigBuilder;
type BulkheadBuilder = palisade_bulkhead::BulkheadConfigBuilder;

/// Calls `builder.$method(value)` for each setting that is given.
macro_rules! set {
    ($builder:ident, $settings:expr; $($field:ident),* $(,)?) => {
        $(if let Some(value) = $settings.$field.clone() {
            $builder = $builder.$field(value.into());
        })*
    };
}

impl BreakerSettings {
    fn apply(&self, mut b: BreakerBuilder) -> BreakerBuilder {
        set!(b, self; failure_threshold, failure_window, failure_rate_threshold, min_requests, rate_window,
            rate_buckets, slow_call_duration, slow_call_rate_threshold, cooldown, max_cooldown, jitter,
            half_open_max_probes, success_threshold, probe_timeout);
        if self.consecutive == Some(false) {
            b = b.without_consecutive();
        }
        b
    }
}

impl TimeoutSettings {
    fn apply<P>(&self, mut t: palisade_timeout::TimeoutBuilder<P>) -> palisade_timeout::TimeoutBuilder<P> {
        if let Some(Limit(limit)) = self.timeout {
            t = t.timeout(limit);
        }
        for (route, Limit(limit)) in &self.routes {
            t = t.route(route.clone(), *limit);
        }
        set!(t, self; propagate_grpc_timeout, propagate_header);
        t
    }
}

fn backoff<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Backoff>, D::Error> {
    let setting = BackoffSetting::deserialize(deserializer)?;
    setting
        .to_backoff()
        .map(Some)
        .map_err(|e| de::Error::custom(e.to_string()))
}

fn header_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<HeaderName>, D::Error> {
    let name = String::deserialize(deserializer)?;
    HeaderName::try_from(name.as_str())
        .map(Some)
        .map_err(|_| de::Error::custom(format!("{name:?} is not a valid http header name")))
}

impl BackoffSetting {
    fn to_backoff(&self) -> Result<Backoff, ConfigError> {
        let mut builder = match self.shape {
            ShapeSetting::Exponential => Backoff::exponential(self.base),
            ShapeSetting::Linear => Backoff::linear(self.base),
            ShapeSetting::Constant => Backoff::constant(self.base),
        };
        set!(builder, self; factor, max_delay, jitter);
        builder.build()
    }
}

impl RetrySettings {
    fn apply<P>(&self, mut r: palisade_retry::RetryLayerBuilder<P>) -> palisade_retry::RetryLayerBuilder<P> {
        set!(r, self; retries, backoff, max_pushback, replay_cap, jitter_seed);
        if let Some(budget) = &self.budget {
            r = r.budget(budget.retry_ratio, budget.min_per_sec, budget.ttl);
        }
        if self.no_budget == Some(true) {
            r = r.no_budget();
        }
        if let Some(throttle) = &self.throttle {
            r = r.throttle(throttle.max_tokens, throttle.token_ratio);
        }
        for (route, settings) in &self.routes {
            let mut rule = RouteRetry::new();
            if let Some(retries) = settings.retries {
                rule = rule.retries(retries);
            }
            if let Some(backoff) = settings.backoff {
                rule = rule.backoff(backoff);
            }
            r = r.route(route.clone(), rule);
        }
        r
    }
}

impl BulkheadSettings {
    fn apply(&self, mut b: BulkheadBuilder) -> BulkheadBuilder {
        set!(b, self; max_concurrent, max_queue, max_wait);
        if let Some(aimd) = &self.aimd {
            let mut config = AimdConfig::default();
            macro_rules! field {
                ($($f:ident),*) => { $(if let Some(v) = aimd.$f { config.$f = v; })* };
            }
            field!(floor, ceiling, increase_by, decrease_ratio, latency_threshold);
            b = b.aimd(config);
        }
        if let Some(gradient) = &self.gradient {
            let mut config = GradientConfig::default();
            macro_rules! field {
                ($($f:ident),*) => { $(if let Some(v) = gradient.$f { config.$f = v; })* };
            }
            field!(floor, ceiling, smoothing, rtt_tolerance, long_window, queue_size);
            b = b.gradient(config);
        }
        b
    }
}

impl BalancerSettings {
    fn apply<P>(
        &self,
        mut b: palisade_discovery::PeerDiscoveryBuilder<P>,
    ) -> palisade_discovery::PeerDiscoveryBuilder<P> {
        set!(b, self; panic_threshold, max_ejected_share);
        if let Some(policy) = self.all_open {
            b = b.all_open(match policy {
                AllOpenSetting::FailFast => AllOpenPolicy::FailFast,
                AllOpenSetting::ProbeNow => AllOpenPolicy::ProbeNow,
                AllOpenSetting::Reset => AllOpenPolicy::Reset,
            });
        }
        if self.no_ejection_cap == Some(true) {
            b = b.no_ejection_cap();
        }
        if let Some(load) = self.load {
            b = b.load(match load {
                LoadSetting::PendingRequests => LoadMetric::PendingRequests,
                LoadSetting::PeakEwma { default_rtt, decay } => LoadMetric::PeakEwma { default_rtt, decay },
            });
        }
        b
    }
}
