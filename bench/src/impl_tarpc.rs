//! Competitor: [tarpc](https://crates.io/crates/tarpc), a unary echo over TCP with tarpc's
//! serde transport (length-delimited frames, bincode), set up as in tarpc's own examples.

use bytes::Bytes;
use futures_util::StreamExt;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::{client, context};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// Any error of this module.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Deadline of each call.
const DEADLINE: Duration = Duration::from_secs(10);

/// The service: echoes its payload.
#[tarpc::service]
pub trait EchoService {
    /// Returns `payload` unchanged.
    async fn echo(payload: Bytes) -> Bytes;
}

/// The server side of [`EchoService`].
#[derive(Clone)]
struct EchoServer;

impl EchoService for EchoServer {
    async fn echo(self, _: context::Context, payload: Bytes) -> Bytes {
        payload
    }
}

async fn spawn(fut: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(fut);
}

/// Serves the echo on an already-bound listener until the process exits.
pub async fn serve(listener: TcpListener) -> Result<(), Error> {
    loop {
        let (stream, _) = listener.accept().await?;
        let transport = tarpc::serde_transport::new(
            Framed::new(stream, LengthDelimitedCodec::new()),
            Bincode::default(),
        );
        let channel = BaseChannel::with_defaults(transport);
        // Each request runs in its own task.
        tokio::spawn(channel.execute(EchoServer.serve()).for_each(spawn));
    }
}

/// One connection, shared by many concurrent callers: clones use the same connection.
#[derive(Clone)]
pub struct Client {
    inner: EchoServiceClient,
}

impl Client {
    /// Connects to the server at `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Client, Error> {
        let stream = TcpStream::connect(addr).await?;
        let transport = tarpc::serde_transport::new(
            Framed::new(stream, LengthDelimitedCodec::new()),
            Bincode::default(),
        );
        let inner = EchoServiceClient::new(client::Config::default(), transport).spawn();
        Ok(Client { inner })
    }

    /// One echo call.
    pub async fn call(&self, payload: Bytes) -> Result<Bytes, Error> {
        let mut ctx = context::current();
        ctx.deadline = Instant::now() + DEADLINE;
        Ok(self.inner.echo(ctx, payload).await?)
    }
}
