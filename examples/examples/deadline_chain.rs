//! A caller's deadline flowing A -> B -> C over tonic: C sees what is left
//! of A's time, not a fresh timeout of its own.
//!
//! A calls B with a 500 ms deadline through the preset client. B is a tonic
//! server behind `DeadlineServerLayer`: it reads the incoming `grpc-timeout`,
//! spends 100 ms on its own work, then calls C through its own preset client
//! without setting any deadline. Its client inherits what is left of A's
//! (about 400 ms) and sends it on as `grpc-timeout`; the test-kit server C
//! records what it received.
//!
//! Run: `cargo run -p palisade-examples --example deadline_chain`

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use palisade::BoxError;
use palisade::core::options::{CallOptionsExt, Deadline};
use palisade::preset::GrpcClient;
use palisade::timeout::DeadlineServerLayer;
use palisade_testkit::EchoServer;
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_testkit::echo::echo_server::{Echo, EchoServer as EchoService};
use palisade_testkit::echo::{EchoReply, EchoRequest, StreamRequest};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Service B: does 100 ms of work, then asks C.
struct B {
    to_c: EchoClient<GrpcClient>,
}

#[tonic::async_trait]
impl Echo for B {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let received = request.metadata().get("grpc-timeout").cloned();
        println!("B received grpc-timeout {received:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        // No deadline set here: the one B's request came with is inherited.
        self.to_c.clone().unary(request.into_inner()).await
    }

    type ServerStreamStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send + 'static>>;

    async fn server_stream(&self, _: Request<StreamRequest>) -> Result<Response<Self::ServerStreamStream>, Status> {
        Err(Status::unimplemented("B: unary only"))
    }

    async fn client_stream(&self, _: Request<tonic::Streaming<EchoRequest>>) -> Result<Response<EchoReply>, Status> {
        Err(Status::unimplemented("B: unary only"))
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let c = EchoServer::start("C").await?;
    let to_c = EchoClient::new(GrpcClient::over_channel(c.channel()).build()?);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let b_addr = listener.local_addr()?;
    tokio::spawn(
        Server::builder()
            .layer(DeadlineServerLayer::new())
            .add_service(EchoService::new(B { to_c }))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{b_addr}"))?.connect_lazy();
    let mut to_b = EchoClient::new(GrpcClient::over_channel(channel).build()?);
    let mut request = Request::new(EchoRequest {
        message: "chain".into(),
        payload: Default::default(),
    });
    request
        .call_options_mut()
        .set_deadline(Deadline::after(Duration::from_millis(500)));
    let reply = to_b.unary(request).await?;
    println!("A got {:?} from {}", reply.get_ref().message, reply.get_ref().server);
    let at_c = c.stats().last_grpc_timeout().ok_or("C received no grpc-timeout")?;
    println!("C received grpc-timeout {at_c:?}: A's 500 ms less B's 100 ms of work");
    if at_c > Duration::from_millis(400) {
        return Err(format!("C was given {at_c:?}, more than what was left of A's 500 ms").into());
    }
    Ok(())
}
