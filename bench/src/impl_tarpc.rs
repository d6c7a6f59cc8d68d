//! Placeholder until the tarpc implementation lands.
use bytes::Bytes;
/// Errors.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// Serves.
pub async fn serve(_l: tokio::net::TcpListener) -> Result<(), Error> {
    Err("tarpc not built".into())
}
/// Client.
#[derive(Clone)]
pub struct Client;
impl Client {
    /// Connects.
    pub async fn connect(_a: std::net::SocketAddr) -> Result<Client, Error> {
        Err("tarpc not built".into())
    }
    /// Calls.
    pub async fn call(&self, _p: Bytes) -> Result<Bytes, Error> {
        Err("tarpc not built".into())
    }
}
