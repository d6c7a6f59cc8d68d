//! Placeholder until the tonic implementation lands.
use bytes::Bytes;
/// Errors.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// Serves.
pub async fn serve(_l: tokio::net::TcpListener) -> Result<(), Error> {
    Err("tonic not built".into())
}
/// Client.
#[derive(Clone)]
pub struct Client;
impl Client {
    /// Connects.
    pub async fn connect(_a: std::net::SocketAddr) -> Result<Client, Error> {
        Err("tonic not built".into())
    }
    /// Calls.
    pub async fn call(&self, _p: Bytes) -> Result<Bytes, Error> {
        Err("tonic not built".into())
    }
}
