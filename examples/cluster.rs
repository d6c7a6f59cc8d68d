//! A client with failover and auth against two servers, one killed mid-way; the statistics
//! of both sides printed at the end.
//!
//! ```sh
//! cargo run -p qsocket-examples --bin cluster
//! ```
//!
//! Two `demo.Bank` servers on 127.0.0.1 (ports chosen by the system) check a bearer token. A
//! client calls `Balance` (idempotent) 200 times from eight tasks through statistics →
//! failover → token; after 100 calls the first server is killed. Every call still succeeds:
//! the ones in flight on the dead server are retried on the other.

use qsocket::rpc::{
    Auth, BearerToken, BearerTokens, CallContext, Cluster, Policy, Principal, Router, RpcClient,
    RpcServer, Service, Side, Stats, Status,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A balance query.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
struct Account {
    /// The account id.
    #[prost(string, tag = "1")]
    id: String,
}

/// A balance, and which server answered.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
struct Balance {
    #[prost(int64, tag = "1")]
    cents: i64,
    #[prost(string, tag = "2")]
    server: String,
    #[prost(string, tag = "3")]
    caller: String,
}

const TOKEN: &str = "demo-token";

async fn bank(name: &'static str, stats: &Stats) -> Result<RpcServer, qsocket::Error> {
    let svc = Service::new("demo.Bank").unary("Balance", move |a: Account, ctx: CallContext| {
        let caller = Principal::of(&ctx)
            .map(|p| p.id.clone())
            .unwrap_or_default();
        async move {
            Ok::<_, Status>(Balance {
                cents: a.id.len() as i64 * 100,
                server: name.to_string(),
                caller,
            })
        }
    });
    RpcServer::builder(Router::new().add_service(svc))
        .layer(stats.layer())
        .layer(Auth::new(
            BearerTokens::new().token(TOKEN, Principal::new("demo-client")),
        ))
        .bind("tcp://127.0.0.1:0")
        .start()
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server_stats = Stats::new(Side::Server);
    let a = bank("a", &server_stats).await?;
    let b = bank("b", &server_stats).await?;
    let (url_a, url_b) = (
        a.local_endpoints()[0].to_string(),
        b.local_endpoints()[0].to_string(),
    );
    println!("servers: a = {url_a}, b = {url_b}");

    let client_stats = Stats::new(Side::Client);
    let cluster = Cluster::new(Policy::failover(2).idempotent());
    let client = RpcClient::builder()
        .endpoint(&url_a)
        .endpoint(&url_b)
        .timeout(Duration::from_secs(2))
        .start()
        .await?
        .layer(BearerToken::new(TOKEN))
        .layer(cluster.clone())
        .layer(client_stats.layer());
    client.channel().ready().await?;

    // Eight callers share the client; after 100 calls server a is killed (dropped: its
    // connections close at once, calls in flight on it fail and are retried on b).
    let done = Arc::new(AtomicUsize::new(0));
    let by_b = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (client, done, by_b) = (client.clone(), done.clone(), by_b.clone());
            tokio::spawn(async move {
                for i in 0..25 {
                    let acct = Account {
                        id: format!("acct-{w}-{i}"),
                    };
                    let r: Balance = client.call("demo.Bank", "Balance", &acct).await?;
                    if r.server == "b" {
                        by_b.fetch_add(1, Ordering::Relaxed);
                    }
                    if w == 0 && i == 0 {
                        println!(
                            "first answer: {} cents from server {} for {}",
                            r.cents, r.server, r.caller
                        );
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, Status>(())
            })
        })
        .collect();
    while done.load(Ordering::Relaxed) < 100 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "after {} calls: killing server a",
        done.load(Ordering::Relaxed)
    );
    drop(a);
    for w in workers {
        w.await??;
    }
    let b_share = by_b.load(Ordering::Relaxed);
    println!(
        "200 calls, all answered: {} by a, {b_share} by b; {} retries",
        200 - b_share,
        cluster.counters().retries
    );
    println!();
    println!("{}", client_stats.snapshot());
    println!("{}", server_stats.snapshot());
    b.shutdown(Duration::from_millis(50)).await;
    Ok(())
}
