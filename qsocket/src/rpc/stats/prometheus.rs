//! Statistics in Prometheus text format, through the `prometheus-client` crate: a registry is
//! filled from snapshots when scraped (recording never touches it).

use super::StatsSnapshot;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(&'static str, String)>;

/// Appends `snapshots` to `out` (metric names in [`StatsSnapshot::encode_prometheus`]).
pub(super) fn encode(snapshots: &[StatsSnapshot], out: &mut String) {
    let calls = Family::<Labels, Counter>::default();
    let errors = Family::<Labels, Counter>::default();
    let retries = Family::<Labels, Counter>::default();
    let hedges = Family::<Labels, Counter>::default();
    let in_flight = Family::<Labels, Gauge<u64, AtomicU64>>::default();
    let latency = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for snap in snapshots {
        for m in &snap.methods {
            let labels: Labels = vec![
                ("side", snap.side.name().to_string()),
                ("service", m.service.clone()),
                ("method", m.method.clone()),
            ];
            let with = |k: &'static str, v: String| {
                let mut l = labels.clone();
                l.push((k, v));
                l
            };
            calls.get_or_create(&labels).inc_by(m.calls);
            for (code, n) in &m.errors {
                errors
                    .get_or_create(&with("code", code.as_str().to_string()))
                    .inc_by(*n);
            }
            retries.get_or_create(&labels).inc_by(m.retries);
            hedges.get_or_create(&labels).inc_by(m.hedges);
            in_flight.get_or_create(&labels).set(m.in_flight);
            for (q, v) in [
                ("0.5", m.p50),
                ("0.9", m.p90),
                ("0.99", m.p99),
                ("1", m.max),
            ] {
                if let Some(v) = v {
                    latency
                        .get_or_create(&with("quantile", q.to_string()))
                        .set(v.as_secs_f64());
                }
            }
        }
    }
    let mut registry = Registry::default();
    registry.register("qsocket_rpc_calls", "RPC calls started", calls);
    registry.register(
        "qsocket_rpc_errors",
        "RPC calls that failed, by status code",
        errors,
    );
    registry.register(
        "qsocket_rpc_retries",
        "Retries sent by a cluster strategy",
        retries,
    );
    registry.register("qsocket_rpc_hedges", "Hedges and extra forks sent", hedges);
    registry.register("qsocket_rpc_in_flight", "RPC calls in flight", in_flight);
    registry.register(
        "qsocket_rpc_latency_seconds",
        "RPC latency percentiles of ended calls (quantile 1: the maximum)",
        latency,
    );
    // Writing into a `String` cannot fail.
    let _ = prometheus_text::encode(out, &registry);
}
