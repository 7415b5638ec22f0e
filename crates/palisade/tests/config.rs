//! The preset's settings from a file (feature `serde`): the example file
//! loads and its values reach the layers of a real client; unknown fields and
//! bad values are errors that name the field's path.
#![cfg(feature = "serde")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use palisade::core::error::{TimedOut, find_error};
use palisade::preset::{ClientsConfig, GrpcClient, PresetConfig};
use palisade_testkit::EchoServer;
use palisade_testkit::echo::EchoRequest;
use palisade_testkit::echo::echo_client::EchoClient;

const EXAMPLE: &str = include_str!("../../../examples/config/preset.toml");

fn toml(text: &str) -> Result<PresetConfig, palisade::preset::ConfigFileError> {
    PresetConfig::from_deserializer(toml::Deserializer::parse(text).unwrap())
}

fn json(text: &str) -> Result<PresetConfig, palisade::preset::ConfigFileError> {
    PresetConfig::from_deserializer(&mut serde_json::Deserializer::from_str(text))
}

fn hello() -> EchoRequest {
    EchoRequest {
        message: "hi".into(),
        payload: Default::default(),
    }
}

#[test]
fn the_example_file_sets_every_section() {
    let config = toml(EXAMPLE).unwrap();
    assert_eq!(config.retries, Some(2));
    assert_eq!(config.breaker.cooldown, Some(Duration::from_secs(5)));
    assert_eq!(config.breaker.failure_rate_threshold, Some(0.5));
    assert_eq!(
        config.attempt_timeout.timeout.unwrap().0,
        Some(Duration::from_millis(300))
    );
    let stream_route = &config.attempt_timeout.routes["/palisade.testkit.echo.v1.Echo/ServerStream"];
    assert_eq!(stream_route.0, None, "\"off\" turns a route's limit off");
    assert_eq!(config.bulkhead.max_concurrent, Some(64));
    assert_eq!(config.bulkhead.max_wait, Some(Duration::from_millis(50)));
    let backoff = config.retry.backoff.unwrap();
    assert_eq!(backoff.base(), Duration::from_millis(20));
    assert_eq!(backoff.cap(), Duration::from_millis(500));
    assert!(config.retry.budget.is_some());
    assert_eq!(config.retry.routes.len(), 1);
    assert!(config.balancer.load.is_some());
}

#[tokio::test(start_paused = true)]
async fn the_example_files_values_reach_the_layers_of_a_real_client() {
    let server = EchoServer::start("configured").await.unwrap();
    let config = toml(EXAMPLE).unwrap();
    let client = GrpcClient::over_channel(server.channel())
        .config(&config)
        .build()
        .unwrap();
    let mut echo = EchoClient::new(client.clone());
    echo.unary(hello()).await.unwrap();

    let health = client.health();
    assert_eq!(health.bulkhead_limit, 64, "bulkhead.max_concurrent");

    // attempt_timeout.timeout = "300ms": a hanging server fails each attempt
    // after 300 ms, and retries = 2 makes three attempts.
    server.faults().set_hang(true);
    let before = server.stats().requests();
    let status = echo.unary(hello()).await.unwrap_err();
    let timed_out: &TimedOut = find_error(&status).expect("an attempt timeout");
    assert_eq!(timed_out.limit(), Duration::from_millis(300), "{status:?}");
    assert_eq!(server.stats().requests() - before, 3, "retries = 2");
}

#[test]
fn a_json_file_works_the_same() {
    let config = json(r#"{ "retries": 0, "total_timeout": { "timeout": "off" }, "breaker": { "jitter": { "proportional": { "low": 0.8, "high": 1.2 } } } }"#).unwrap();
    assert_eq!(config.retries, Some(0));
    assert_eq!(config.total_timeout.timeout.unwrap().0, None);
    assert!(config.breaker.jitter.is_some());
}

#[test]
fn an_unknown_field_names_its_path() {
    let err = toml("[breaker]\ncooldwn = \"5s\"\n").unwrap_err();
    assert_eq!(err.path(), "breaker.cooldwn");
    assert!(err.message().contains("unknown field"), "{err}");
    let err = toml("retires = 2\n").unwrap_err();
    assert_eq!(err.path(), "retires");
}

#[test]
fn a_bad_duration_names_its_path_and_the_accepted_form() {
    let err = toml("[bulkhead]\nmax_wait = \"fifty\"\n").unwrap_err();
    assert_eq!(err.path(), "bulkhead.max_wait");
    assert!(err.message().contains("250ms"), "{err}");
    let err = toml("[attempt_timeout.routes]\n\"/a/B\" = \"soon\"\n").unwrap_err();
    assert_eq!(err.path(), "attempt_timeout.routes./a/B");
}

#[test]
fn a_value_of_the_wrong_type_or_an_invalid_backoff_names_its_path() {
    let err = toml("[breaker]\nfailure_threshold = \"three\"\n").unwrap_err();
    assert_eq!(err.path(), "breaker.failure_threshold");
    let err = toml("[retry]\nbackoff = { base = \"10ms\", factor = 0.5 }\n").unwrap_err();
    assert_eq!(err.path(), "retry.backoff");
    assert!(err.message().contains("factor"), "{err}");
    let err = toml("[attempt_timeout]\npropagate_header = \"not a header\"\n").unwrap_err();
    assert_eq!(err.path(), "attempt_timeout.propagate_header");
}

#[tokio::test]
async fn a_value_a_layer_rejects_is_its_config_error_at_build() {
    let config = toml("[breaker]\nfailure_threshold = 0\n").unwrap();
    let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
    let err = GrpcClient::over_channel(channel).config(&config).build().unwrap_err();
    assert_eq!(err.field(), "failure_threshold", "{err}");
}

#[test]
fn a_clients_file_has_settings_for_all_and_sections_per_service() {
    let text = "retries = 1\n[services.payments]\nretries = 3\n[services.payments.attempt_timeout]\ntimeout = \"2s\"\n";
    let config = ClientsConfig::from_deserializer(toml::Deserializer::parse(text).unwrap()).unwrap();
    assert_eq!(config.all.retries, Some(1));
    assert_eq!(config.services["payments"].retries, Some(3));
    let err = ClientsConfig::from_deserializer(toml::Deserializer::parse("[services.payments]\nretrys = 3\n").unwrap())
        .unwrap_err();
    assert_eq!(err.path(), "services.payments.retrys");
}

#[cfg(feature = "hyper")]
#[tokio::test(start_paused = true)]
async fn the_same_file_configures_the_http_preset() {
    use bytes::Bytes;
    use http_body_util::Full;
    use palisade::preset::HttpClient;
    use tower::{Service, ServiceExt};

    let server = palisade_testkit::HttpServer::start("configured").await.unwrap();
    let config = toml(EXAMPLE).unwrap();
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut client = HttpClient::over_hyper(hyper).config(&config).build().unwrap();
    assert_eq!(client.health().bulkhead_limit, 64, "bulkhead.max_concurrent");

    // attempt_timeout.timeout = "300ms" and retries = 2: three attempts, each cut at 300 ms.
    server.faults().set_hang(true);
    let get = http::Request::get(server.uri("/").unwrap())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let error = client.ready().await.unwrap().call(get).await.unwrap_err();
    let timed_out: &TimedOut = find_error(error.as_ref()).expect("an attempt timeout");
    assert_eq!(timed_out.limit(), Duration::from_millis(300));
    assert_eq!(server.stats().requests(), 3, "retries = 2");
}
