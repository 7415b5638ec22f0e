//! The three clients the chaos run compares, over the same servers.
//!
//! - [`bare`]: a tonic `Channel::balance_list` over the servers' addresses,
//!   nothing else.
//! - [`tower_stack`]: tower's own middleware as a careful user stacks it:
//!   `Retry` (one retry, a `TpsBudget`) over a per-attempt `Timeout` over a
//!   p2c `Balance` of one `Channel` per server.
//! - [`palisade`]: Palisade's multi-instance client stack over the registry.
//!
//! Every client tags every request it sends (retries included) with its
//! name in the [`TAG_HEADER`] metadata, so the
//! servers count, per client, what reached them.

pub mod bare;
pub mod palisade;
pub mod tower_stack;

use std::error::Error as _;
use std::time::Duration;

use palisade_core::error::{BulkheadFull, CircuitOpen, NoAvailablePeers};
use palisade_testkit::TAG_HEADER;
use palisade_testkit::echo::EchoRequest;
use serde::Serialize;
use tonic::metadata::{Ascii, MetadataValue};

/// Which client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientKind {
    /// A bare `Channel::balance_list`.
    Bare,
    /// tower's `Retry` + `Timeout` + p2c `Balance`.
    Tower,
    /// Palisade's client stack.
    Palisade,
}

impl ClientKind {
    /// The three clients, in table order.
    pub const ALL: [ClientKind; 3] = [ClientKind::Bare, ClientKind::Tower, ClientKind::Palisade];

    /// The client's name in tables, charts and its request tag.
    pub fn name(self) -> &'static str {
        match self {
            ClientKind::Bare => "bare",
            ClientKind::Tower => "tower",
            ClientKind::Palisade => "palisade",
        }
    }

    /// What the client is, in a few words.
    pub fn description(self) -> &'static str {
        match self {
            ClientKind::Bare => "tonic Channel::balance_list",
            ClientKind::Tower => "tower Retry(TpsBudget) + Timeout + p2c Balance",
            ClientKind::Palisade => "Palisade: registry, per-peer breaker, retry, bulkhead, timeouts",
        }
    }

    /// The value of its requests' tag header.
    pub fn tag(self) -> MetadataValue<Ascii> {
        MetadataValue::from_static(self.name())
    }
}

/// The settings every client shares where it has the knob, and the Palisade
/// client's own.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Settings {
    /// Each attempt's timeout (tower and Palisade).
    #[serde(with = "millis")]
    pub attempt_timeout: Duration,
    /// The whole call's timeout (Palisade's total timeout; the caller's
    /// deadline bounds every client the same way).
    #[serde(with = "millis")]
    pub total_timeout: Duration,
    /// Retries after the first attempt (tower and Palisade).
    pub retries: u32,
    /// The Palisade bulkhead's concurrent calls.
    pub bulkhead_concurrent: usize,
    /// The Palisade bulkhead's queue.
    pub bulkhead_queue: usize,
    /// How long a queued call waits at most (`None`: as long as it takes).
    #[serde(with = "millis_opt")]
    pub bulkhead_wait: Option<Duration>,
    /// Seeds the retry jitter, so that runs repeat.
    pub seed: u64,
}

impl Default for Settings {
    /// The seed's defaults where the brief fixes them (3 consecutive failures,
    /// a 10 s cooldown, 1 retry), with the timeouts of issue 19's
    /// measurements (250 ms per attempt, 1 s in all), and a bulkhead that does
    /// not cap a healthy client at these rates (64 at once, 64 waiting: at
    /// 200 calls/s and about a millisecond per call, fewer than five are in
    /// flight).
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_millis(250),
            total_timeout: Duration::from_secs(1),
            retries: 1,
            bulkhead_concurrent: 64,
            bulkhead_queue: 64,
            bulkhead_wait: None,
            seed: 0,
        }
    }
}

/// How one call ended, as its caller sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The reply arrived.
    Ok,
    /// The caller's deadline passed first (it gave up on the call).
    CallerTimeout,
    /// Palisade's bulkhead refused the call (`BulkheadFull`).
    BulkheadFull,
    /// Palisade's balancer found no available peer, or every breaker refused.
    NoPeer,
    /// A timeout in the client stack fired (an attempt or the total).
    TimedOut,
    /// Any other error, by its gRPC code.
    Failed,
}

impl Outcome {
    /// Every outcome, in report order.
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::CallerTimeout,
        Outcome::BulkheadFull,
        Outcome::NoPeer,
        Outcome::TimedOut,
        Outcome::Failed,
    ];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::CallerTimeout => "caller-timeout",
            Outcome::BulkheadFull => "bulkhead-full",
            Outcome::NoPeer => "no-peer",
            Outcome::TimedOut => "timed-out",
            Outcome::Failed => "failed",
        }
    }

    /// Classifies a failed call's status by the error behind it.
    pub fn of_status(status: &tonic::Status) -> Self {
        let mut next: Option<&(dyn std::error::Error + 'static)> = status.source();
        while let Some(error) = next {
            if error.is::<BulkheadFull>() {
                return Outcome::BulkheadFull;
            }
            if error.is::<NoAvailablePeers>() || error.is::<CircuitOpen>() {
                return Outcome::NoPeer;
            }
            if error.is::<palisade_core::error::TimedOut>() || error.is::<tower::timeout::error::Elapsed>() {
                return Outcome::TimedOut;
            }
            next = error.source();
        }
        if status.code() == tonic::Code::DeadlineExceeded {
            return Outcome::TimedOut;
        }
        Outcome::Failed
    }
}

/// One client, ready to be cloned into each call's task.
#[derive(Clone)]
pub enum Client {
    /// See [`bare`].
    Bare(bare::BareClient),
    /// See [`tower_stack`].
    Tower(tower_stack::TowerClient),
    /// See [`palisade`](mod@palisade).
    Palisade(palisade::PalisadeClient),
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind().name())
    }
}

impl Client {
    /// Which client this is.
    pub fn kind(&self) -> ClientKind {
        match self {
            Client::Bare(_) => ClientKind::Bare,
            Client::Tower(_) => ClientKind::Tower,
            Client::Palisade(_) => ClientKind::Palisade,
        }
    }

    /// Makes one unary echo call, tagged with `tag` (`None`: untagged, for
    /// warm-up calls that the servers must not count).
    pub async fn call(self, tag: Option<MetadataValue<Ascii>>) -> Outcome {
        let message = EchoRequest {
            message: "chaos".into(),
            payload: Default::default(),
        };
        let result = match self {
            Client::Bare(mut client) => client.unary(tagged(message, tag)).await.map(drop),
            Client::Palisade(mut client) => client.unary(tagged(message, tag)).await.map(drop),
            Client::Tower(client) => client.call(message, tag).await,
        };
        match result {
            Ok(()) => Outcome::Ok,
            Err(status) => Outcome::of_status(&status),
        }
    }
}

/// A tonic request for `message`, tagged with `tag`.
pub(crate) fn tagged(message: EchoRequest, tag: Option<MetadataValue<Ascii>>) -> tonic::Request<EchoRequest> {
    let mut request = tonic::Request::new(message);
    if let Some(tag) = tag {
        request.metadata_mut().insert(TAG_HEADER, tag);
    }
    request
}

mod millis {
    use std::time::Duration;

    pub(crate) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1e3)
    }
}

mod millis_opt {
    use std::time::Duration;

    pub(crate) fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_secs_f64() * 1e3)),
            None => s.serialize_none(),
        }
    }
}
