//! `rpc`: unary echo calls through qsocket's public RPC API (deadline sent, service + method
//! dispatch, requests run as the RPC core runs them), per transport and codec, at 1, 32 and
//! 256 calls in flight on one connection. The server runs on its own thread with a one-thread
//! runtime, the client on another, so each side has one core as in a two-process setup.

use crate::impl_qsocket::EchoMsg;
use crate::Error;
use bytes::Bytes;
use hdrhistogram::Histogram;
use qsocket::rpc::{CallContext, Codec, Router, RpcClient, RpcServer, Service, Status};
use qsocket::session::Transport;
use std::time::{Duration, Instant};

/// What one (transport, codec, in-flight) point measured.
pub struct RpcRow {
    pub transport: Transport,
    pub codec: Codec,
    pub inflight: usize,
    pub calls_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
}

fn one_thread_runtime() -> Result<tokio::runtime::Runtime, Error> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Runs every point; `secs` measured after a 1 s warm-up each.
pub fn cmd_rpc(secs: u64, inflights: &[usize]) -> Result<Vec<RpcRow>, Error> {
    // The server: its own thread, its own one-thread runtime.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_thread = std::thread::spawn(move || -> Result<(), Error> {
        let rt = one_thread_runtime()?;
        rt.block_on(async move {
            let svc = Service::new("bench.Echo")
                .unary("Echo", |m: EchoMsg, _ctx: CallContext| async move {
                    Ok::<_, Status>(m)
                });
            let server = RpcServer::builder(Router::new().add_service(svc))
                .bind("tcp://127.0.0.1:0")
                .bind("udp://127.0.0.1:0")
                .bind("ws://127.0.0.1:0/rpc")
                .start()
                .await?;
            let eps: Vec<_> = server.local_endpoints().to_vec();
            let _ = addr_tx.send(eps);
            let _ = stop_rx.await;
            server.shutdown(Duration::from_secs(2)).await;
            Ok(())
        })
    });
    let endpoints = addr_rx.recv_timeout(Duration::from_secs(10))?;
    let rt = one_thread_runtime()?;
    let mut rows = Vec::new();
    for transport in [Transport::Tcp, Transport::Udp, Transport::Ws] {
        let ep = endpoints
            .iter()
            .find(|e| e.transport() == transport)
            .ok_or("server endpoint missing")?
            .to_string();
        for codec in [Codec::Protobuf, Codec::Json] {
            for &n in inflights {
                eprintln!(
                    "rpc {transport}/{} x{n}: 1 s warm-up + {secs} s ...",
                    codec.name()
                );
                let row = rt.block_on(point(&ep, transport, codec, n, secs))?;
                eprintln!(
                    "rpc {transport}/{} x{n}: {:.0} calls/s, p50 {:.1} µs, p99 {:.1} µs, {} errors",
                    codec.name(),
                    row.calls_per_sec,
                    row.p50_us,
                    row.p99_us,
                    row.errors
                );
                rows.push(row);
            }
        }
    }
    let _ = stop_tx.send(());
    server_thread
        .join()
        .map_err(|_| "server thread panicked")??;
    Ok(rows)
}

async fn point(
    url: &str,
    transport: Transport,
    codec: Codec,
    n: usize,
    secs: u64,
) -> Result<RpcRow, Error> {
    let client = RpcClient::builder()
        .endpoint(url)
        .codec(codec)
        .timeout(Duration::from_secs(5))
        .start()
        .await?;
    let msg = EchoMsg {
        payload: Bytes::from(vec![7u8; 64]),
    };
    // Wait for the connection.
    let _: EchoMsg = client.call("bench.Echo", "Echo", &msg).await?;
    let warm_end = Instant::now() + Duration::from_secs(1);
    let end = warm_end + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            let msg = msg.clone();
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
                let (mut done, mut errors) = (0u64, 0u64);
                // Bounded in count as well as in time.
                for _ in 0..50_000_000u64 {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let r: Result<EchoMsg, Status> = client.call("bench.Echo", "Echo", &msg).await;
                    let t1 = Instant::now();
                    if t0 >= warm_end {
                        match r {
                            Ok(_) => {
                                done += 1;
                                let _ = hist.record(t1.duration_since(t0).as_nanos() as u64);
                            }
                            Err(_) => errors += 1,
                        }
                    }
                }
                (hist, done, errors)
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut done, mut errors) = (0, 0);
    for t in tasks {
        let (h, d, e) = t.await?;
        hist.add(&h)?;
        done += d;
        errors += e;
    }
    client.close().await;
    Ok(RpcRow {
        transport,
        codec,
        inflight: n,
        calls_per_sec: done as f64 / secs as f64,
        p50_us: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1000.0,
        errors,
    })
}

/// The Markdown table of the rows.
pub fn rpc_table(rows: &[RpcRow]) -> String {
    let mut out = String::from(
        "| transport | codec | in flight | calls/s | p50 µs | p99 µs | errors |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {} |\n",
            r.transport,
            r.codec.name(),
            r.inflight,
            r.calls_per_sec,
            r.p50_us,
            r.p99_us,
            r.errors
        ));
    }
    out
}
