//! QUIC data plane: `node.stream_events` throughput to 1 and 16 peers and publish-to-receive
//! latency (p50/p99, hdrhistogram), each beside a raw quinn stream carrying the same frames in
//! the same run, printed as ratios. Targets (README.md, "Performance"): ≥ 100k events/s to one peer,
//! p99 ≤ 2 ms. Reports, does not assert. The scenario itself lives in `support/quic.rs`,
//! shared with the end-to-end harness (`benches/e2e.rs`).
//!
//! `cargo bench --bench quic` (release). `PALYRA_BENCH_EVENTS` sets the replayed events
//! (default 100,000, the default retention).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use hdrhistogram::Histogram;
use palyra::testkit::{self, NodeInternals};

fn percentiles(h: &Histogram<u64>) -> (f64, f64) {
    (h.value_at_quantile(0.5) as f64 / 1000.0, h.value_at_quantile(0.99) as f64 / 1000.0)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs us without it: stay quick then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let count: u64 = std::env::var("PALYRA_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 2_000 } else { 100_000 });
    let latency_samples: u64 = if quick { 100 } else { 2_000 };
    testkit::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let dir = testkit::private_tempdir();
        let node = testkit::open_node(&dir.path().join("node")).await;
        let figures = support::quic::run(&node, count, latency_samples).await;
        for (subscribers, palyra, raw) in &figures.rates {
            println!(
                "quic/{:<28} palyra {:>10.0} events/s   raw quinn {:>10.0} events/s   ratio {:.2}",
                format!("stream_events to {subscribers} peer(s) (total)"),
                palyra,
                raw,
                palyra / raw
            );
        }
        let (p50, p99) = percentiles(&figures.palyra_latency);
        let (raw50, raw99) = percentiles(&figures.raw_latency);
        println!(
            "quic/publish-to-receive latency     palyra p50 {p50:.3} ms p99 {p99:.3} ms   raw quinn p50 {raw50:.3} ms p99 {raw99:.3} ms   p99 ratio {:.2}",
            p99 / raw99.max(0.001)
        );
        println!("quic/targets: >= 100000 events/s to one peer; p99 <= 2 ms");
        node.close_db();
    });
}
