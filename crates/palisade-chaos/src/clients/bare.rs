//! The bare client: tonic's own balancing channel, nothing else.

use palisade_core::BoxError;
use palisade_testkit::echo::echo_client::EchoClient;
use tonic::transport::{Channel, Endpoint};

/// A tonic echo client over `Channel::balance_list`.
pub type BareClient = EchoClient<Channel>;

/// `Channel::balance_list` over `addrs` (`127.0.0.1:PORT`), with tonic's
/// defaults: no timeout, no retry. A server that is replaced is never
/// learnt of: the list is fixed, as a user without a registry has it.
pub fn bare(addrs: &[String]) -> Result<BareClient, BoxError> {
    let endpoints = addrs
        .iter()
        .map(|addr| Endpoint::from_shared(format!("http://{addr}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(EchoClient::new(Channel::balance_list(endpoints.into_iter())))
}
