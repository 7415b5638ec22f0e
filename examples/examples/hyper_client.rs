//! The Palisade client stack around a hyper client, speaking plain http
//! (`Http`): a PUT whose body is replayed on retry, then a breaker that
//! opens on timeouts and refuses the next call without reaching the server.
//!
//! A test-kit hyper server on loopback echoes request bodies. It answers the
//! first two attempts `503`: the retry sends the same PUT body again, and
//! the third attempt's echo is the original body (tower's `Retry` cannot
//! replay an http body; ours buffers it while it may be needed; a POST is
//! not retried once the server answered, being not idempotent). Then the
//! server hangs: the call's three attempts each time out after 200 ms, the
//! breaker counts them and opens, and the next call fails at once with
//! `CircuitOpen`, without reaching the server.
//!
//! Run: `cargo run -p palisade-examples --example hyper_client`

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade::BoxError;
use palisade::bulkhead::BulkheadLayer;
use palisade::circuit_breaker::CircuitBreakerLayer;
use palisade::core::error::{CircuitOpen, find_error};
use palisade::retry::{ReplayBody, RetryLayer};
use palisade::timeout::{TimeoutKind, TimeoutLayer};
use palisade_testkit::HttpServer;
use tower::{Service, ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let server = HttpServer::start("backend").await?;
    // Attempts reach the hyper client with a replayable body.
    let hyper = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let breaker = CircuitBreakerLayer::builder()
        .http()
        .peer(server.addr().to_string())
        .failure_threshold(3)
        .build()?;
    let breaker_state = breaker.handle();
    let mut client = ServiceBuilder::new()
        .layer(
            TimeoutLayer::builder()
                .http()
                .kind(TimeoutKind::Total)
                .timeout(Some(Duration::from_secs(2)))
                .build()?,
        )
        .layer(RetryLayer::builder().http().retries(2).build()?)
        .layer(BulkheadLayer::builder().http().max_concurrent(64).build()?)
        .layer(breaker)
        .layer(
            TimeoutLayer::builder()
                .http()
                .timeout(Some(Duration::from_millis(200)))
                .build()?,
        )
        .service(hyper);

    let put = |body: &'static str| -> Result<http::Request<Full<Bytes>>, http::Error> {
        http::Request::put(server.uri("/orders/1").unwrap_or_default())
            .body(Full::new(Bytes::from_static(body.as_bytes())))
    };

    server.faults().fail_next(2, http::StatusCode::SERVICE_UNAVAILABLE);
    let response = client.ready().await?.call(put("order #1")?).await?;
    let status = response.status();
    let echoed = response.into_body().collect().await?.to_bytes();
    println!(
        "PUT answered {status} with {echoed:?} after {} attempts",
        server.stats().requests()
    );
    if echoed != "order #1" || server.stats().requests() != 3 {
        return Err("the retried PUT did not carry its body".into());
    }

    server.faults().set_hang(true);
    let error = client
        .ready()
        .await?
        .call(put("order #2")?)
        .await
        .err()
        .ok_or("a hanging server answered")?;
    println!(
        "a call to the hanging server failed: {error}; breaker {:?}",
        breaker_state.state()
    );
    let before = server.stats().requests();
    let error = client
        .ready()
        .await?
        .call(put("order #3")?)
        .await
        .err()
        .ok_or("an open breaker let a call through")?;
    let open: &CircuitOpen = find_error(error.as_ref()).ok_or("not refused by the breaker")?;
    if server.stats().requests() != before {
        return Err("an open breaker let a call reach the server".into());
    }
    println!(
        "refused at once: {open}; the server saw {} new requests",
        server.stats().requests() - before
    );
    Ok(())
}
