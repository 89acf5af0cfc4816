//! The simulator as a benchmark: `cargo run --release -p ferry-mesh --features sim --example sim
//! -- [nodes] [seed]` (default 1000 nodes). Prints delivery, latency and transmissions against
//! shortest paths and epidemic flooding on the same scenario.
#![allow(clippy::print_stdout)]

use ferry_mesh::sim::{self, Scenario, SimConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let cfg = SimConfig {
        nodes,
        extra_links: nodes,
        users: nodes / 2,
        messages: nodes * 2,
        link_flaps: nodes / 10,
        partitions: 2,
        crashes: nodes / 50,
        moves: nodes / 20,
        chaos_ms: 120_000,
        settle_ms: 180_000,
        ..SimConfig::small(seed)
    };
    let t = std::time::Instant::now();
    let sc = Scenario::generate(cfg);
    let r = sim::run(&sc);
    let wall = t.elapsed();
    let f = sim::run_flooding(&sc);
    println!("nodes {nodes}, links {}, seed {seed}", sc.links.len());
    println!(
        "acknowledged {} (long TTL {}), shown {} + {} short-TTL, lost {}, shown twice {}, after expiry {}",
        r.acknowledged,
        r.acknowledged_long,
        r.delivered_long,
        r.delivered_short,
        r.lost.len(),
        r.shown_twice,
        r.shown_after_expiry
    );
    println!(
        "delivery ratio {:.4}, median latency {} ms",
        r.delivery_ratio(),
        r.median_latency_ms
    );
    println!(
        "bundle transmissions {} = {:.2} per delivered message, {:.3}x shortest paths; flooding {:.1} per message",
        r.bundle_transmissions,
        r.transmissions_per_delivered(),
        r.stretch(),
        f.per_delivered()
    );
    println!(
        "link messages {} ({:.0} per node); simulated in {:.1} s",
        r.link_messages,
        r.link_messages as f64 / nodes as f64,
        wall.as_secs_f64()
    );
}
