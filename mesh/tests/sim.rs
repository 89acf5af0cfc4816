//! The mesh in the deterministic simulator: properties over many seeds, and how much it
//! transmits compared with shortest paths and with epidemic flooding on the same scenarios.
//!
//! `FERRY_SIM_SEEDS=1000 cargo test -p ferry-mesh --release --test sim -- --nocapture` runs more.

use ferry_mesh::sim::{self, Scenario, SimConfig};

fn seeds() -> u64 {
    std::env::var("FERRY_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

#[test]
fn exactly_once_no_late_delivery_no_custody_loss_over_many_seeds() {
    let n = seeds();
    let mut acked = 0;
    let mut delivered = 0;
    let mut tx = 0;
    let mut shown = 0;
    let mut dup_fetches = 0;
    let mut crashes = 0;
    let mut latencies = Vec::new();
    let mut flood_tx = 0;
    let mut flood_delivered = 0;
    for seed in 0..n {
        let sc = Scenario::generate(SimConfig::small(seed));
        let r = sim::run(&sc);
        assert!(
            r.acknowledged_long > 0,
            "seed {seed}: nothing was acknowledged"
        );
        assert!(
            r.lost.is_empty(),
            "seed {seed}: acknowledged messages never shown: {:?} ({r:?})",
            r.lost
        );
        assert_eq!(r.shown_twice, 0, "seed {seed}: a message was shown twice");
        assert_eq!(r.shown_after_expiry, 0, "seed {seed}: shown after expiry");
        acked += r.acknowledged_long;
        delivered += r.delivered_long;
        tx += r.bundle_transmissions;
        shown += r.delivered_long + r.delivered_short;
        dup_fetches += r.duplicate_fetches;
        crashes += r.crashes;
        latencies.push(r.median_latency_ms);
        let f = sim::run_flooding(&sc);
        flood_tx += f.transmissions;
        flood_delivered += f.delivered;
    }
    latencies.sort_unstable();
    let ferry_per = tx as f64 / shown.max(1) as f64;
    let flood_per = flood_tx as f64 / flood_delivered.max(1) as f64;
    eprintln!(
        "{n} seeds (16 nodes, churn, partitions, {crashes} crashes, moves): delivery ratio {:.4} \
         ({delivered}/{acked}), median of median latencies {} ms, transmissions per delivered \
         message {ferry_per:.2} (flooding {flood_per:.2}), duplicate fetches absorbed by clients {dup_fetches}",
        delivered as f64 / acked.max(1) as f64,
        latencies[latencies.len() / 2],
    );
    assert!(
        ferry_per * 3.0 < flood_per,
        "custody routing should cost far less than flooding"
    );
}

#[test]
fn quiet_networks_use_near_shortest_paths() {
    let mut tx = 0;
    let mut hops = 0;
    let mut flood_tx = 0;
    let mut flood_delivered = 0;
    let mut shown = 0;
    for seed in 0..10 {
        let sc = Scenario::generate(SimConfig::quiet(seed, 30));
        let r = sim::run(&sc);
        assert!(r.lost.is_empty(), "seed {seed}: {:?}", r.lost);
        tx += r.bundle_transmissions;
        hops += r.shortest_path_hops;
        shown += r.delivered_long;
        let f = sim::run_flooding(&sc);
        flood_tx += f.transmissions;
        flood_delivered += f.delivered;
    }
    let stretch = tx as f64 / hops.max(1) as f64;
    eprintln!(
        "30-node quiet networks: {tx} bundle transmissions for {shown} messages over \
         {hops} shortest-path hops: {stretch:.3}x shortest path; flooding {:.1} per message vs \
         {:.2}",
        flood_tx as f64 / flood_delivered.max(1) as f64,
        tx as f64 / shown.max(1) as f64
    );
    assert!(
        stretch <= 1.5,
        "transmissions {stretch:.3}x the shortest paths"
    );
}

#[test]
fn a_seed_replays_exactly() {
    let a = sim::run(&Scenario::generate(SimConfig::small(7)));
    let b = sim::run(&Scenario::generate(SimConfig::small(7)));
    assert_eq!(a.bundle_transmissions, b.bundle_transmissions);
    assert_eq!(a.link_messages, b.link_messages);
    assert_eq!(a.median_latency_ms, b.median_latency_ms);
}
