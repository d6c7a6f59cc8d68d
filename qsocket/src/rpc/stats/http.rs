//! `/metrics` over HTTP/1.1 (hyper), for a Prometheus server to scrape.

use super::{prometheus, Stats};
use crate::Error;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves statistics in Prometheus text format at `GET /metrics` (anything else: 404) on an
/// address of its own, until dropped.
///
/// ```no_run
/// use qsocket::rpc::{MetricsServer, Side, Stats};
/// # async fn demo() -> Result<(), qsocket::Error> {
/// let stats = Stats::new(Side::Server);
/// let metrics = MetricsServer::bind("127.0.0.1:9464", [stats.clone()]).await?;
/// println!("scrape http://{}/metrics", metrics.local_addr());
/// # Ok(()) }
/// ```
#[must_use = "dropping it stops serving"]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Longest a scrape's connection may stay open.
const CONNECTION_LIMIT: Duration = Duration::from_secs(30);

impl MetricsServer {
    /// Binds `addr` (e.g. `"127.0.0.1:0"`) and serves every `Stats` given, merged in one
    /// page.
    pub async fn bind(
        addr: &str,
        stats: impl IntoIterator<Item = Stats>,
    ) -> Result<MetricsServer, Error> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stats: Arc<[Stats]> = stats.into_iter().collect();
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = token.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "metrics: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let (stats, token) = (stats.clone(), token.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let stats = stats.clone();
                        async move { Ok::<_, Infallible>(answer(&req, &stats)) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        () = token.cancelled() => {}
                        _ = tokio::time::timeout(CONNECTION_LIMIT, conn) => {}
                    }
                });
            }
        });
        Ok(MetricsServer { addr, stop })
    }

    /// The address it serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn answer(req: &Request<Incoming>, stats: &[Stats]) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    if req.method() != Method::GET || req.uri().path() != "/metrics" {
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return resp;
    }
    let snapshots: Vec<_> = stats.iter().map(Stats::snapshot).collect();
    let mut text = String::new();
    prometheus::encode(&snapshots, &mut text);
    if let Ok(v) = hyper::header::HeaderValue::from_str(
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
    ) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    *resp.body_mut() = Full::new(Bytes::from(text));
    resp
}
