//! tower's own middleware as a careful user stacks it over tonic.
//!
//! ```text
//! Retry (1 retry, TpsBudget)   tower's budget: retries add at most 20% (10/s floor, 10 s window)
//! Timeout (per attempt)        tower::timeout, 250 ms
//! Buffer                       shares the balancer between the callers' tasks (Retry needs Clone)
//! Balance (p2c, pending reqs)  one tonic Channel per server
//! ```
//!
//! tower's `Retry` needs a `Clone` request, and a tonic request (a streaming
//! http body) is not: the stack therefore works at the level of the
//! generated client's message, each channel wrapped in [`EchoUnary`], which
//! is what a tower user of tonic does.

use std::future::{Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::BoxError;
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_testkit::echo::{EchoReply, EchoRequest};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::{Policy, Retry};
use tower::timeout::Timeout;
use tower::{Service, ServiceExt};

use super::{Settings, tagged};

/// One call through the tower stack: the message and the caller's tag.
#[derive(Clone, Debug)]
pub struct EchoCall {
    message: EchoRequest,
    tag: Option<MetadataValue<Ascii>>,
}

type Balanced = Balance<PendingRequestsDiscover<ServiceList<Vec<EchoUnary>>, CompleteOnResponse>, EchoCall>;
type Stack = Retry<BudgetedRetry, Timeout<Buffer<EchoCall, <Balanced as Service<EchoCall>>::Future>>>;

/// The tower client, cheap to clone (the policy and a `Buffer` handle).
#[derive(Clone)]
pub struct TowerClient {
    inner: Stack,
}

impl TowerClient {
    /// One call; the error is a `tonic::Status` (tower's own errors, such as
    /// `Elapsed`, become its source).
    pub fn call(
        self,
        message: EchoRequest,
        tag: Option<MetadataValue<Ascii>>,
    ) -> impl Future<Output = Result<(), tonic::Status>> + Send {
        // Boxed: rustc cannot prove the `Send` of tower's retry future over a
        // `Buffer` inside an async block (higher-ranked lifetimes through
        // `Into<BoxError>`), though it is `Send`; the coercion proves it.
        let call: Pin<Box<dyn Future<Output = Result<EchoReply, BoxError>> + Send>> =
            Box::pin(self.inner.oneshot(EchoCall { message, tag }));
        async move {
            match call.await {
                Ok(_) => Ok(()),
                Err(error) => Err(match error.downcast::<tonic::Status>() {
                    Ok(status) => *status,
                    Err(other) => tonic::Status::from_error(other),
                }),
            }
        }
    }
}

/// tower's stack over one lazily connected channel per address.
pub fn tower_stack(addrs: &[String], settings: &Settings) -> Result<TowerClient, BoxError> {
    let services = addrs
        .iter()
        .map(|addr| {
            Ok(EchoUnary {
                channel: Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy(),
            })
        })
        .collect::<Result<Vec<_>, BoxError>>()?;
    let balance = Balance::new(PendingRequestsDiscover::new(
        ServiceList::new(services),
        CompleteOnResponse::default(),
    ));
    let policy = BudgetedRetry {
        // tower's defaults: 10 s window, 10 retries/s floor, 20% of requests.
        budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
        retries_left: settings.retries,
    };
    let balance = Buffer::new(balance, 1024);
    Ok(TowerClient {
        inner: Retry::new(policy, Timeout::new(balance, settings.attempt_timeout)),
    })
}

/// One channel as a `Service<EchoCall>`.
#[derive(Clone)]
pub struct EchoUnary {
    channel: Channel,
}

type UnaryFuture = Pin<Box<dyn Future<Output = Result<EchoReply, tonic::Status>> + Send>>;

impl Service<EchoCall> for EchoUnary {
    type Response = EchoReply;
    type Error = tonic::Status;
    type Future = UnaryFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
        Service::<http::Request<tonic::body::Body>>::poll_ready(&mut self.channel, cx)
            .map_err(|e| tonic::Status::from_error(e.into()))
    }

    fn call(&mut self, call: EchoCall) -> UnaryFuture {
        // The channel that was made ready goes with the call.
        let fresh = self.channel.clone();
        let ready = std::mem::replace(&mut self.channel, fresh);
        Box::pin(async move {
            let reply = EchoClient::new(ready).unary(tagged(call.message, call.tag)).await?;
            Ok(reply.into_inner())
        })
    }
}

/// One retry on a retryable error, if tower's budget allows it; each success
/// deposits, as tower's docs do it.
#[derive(Clone)]
struct BudgetedRetry {
    budget: Arc<TpsBudget>,
    retries_left: u32,
}

/// Connection errors, `UNAVAILABLE` and attempt timeouts: what a careful
/// user retries.
fn retryable(error: &BoxError) -> bool {
    if error.is::<tower::timeout::error::Elapsed>() {
        return true;
    }
    error
        .downcast_ref::<tonic::Status>()
        .is_some_and(|status| matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown))
}

impl<Res> Policy<EchoCall, Res, BoxError> for BudgetedRetry {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut EchoCall, result: &mut Result<Res, BoxError>) -> Option<Ready<()>> {
        match result {
            Ok(_) => {
                self.budget.deposit();
                None
            }
            Err(error) if self.retries_left > 0 && retryable(error) => {
                if !self.budget.withdraw() {
                    return None;
                }
                self.retries_left -= 1;
                Some(ready(()))
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, call: &EchoCall) -> Option<EchoCall> {
        Some(call.clone())
    }
}
