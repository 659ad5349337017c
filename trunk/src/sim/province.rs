//! The province-size scenario: the province of the issue (1 + 11 + 90 + 1,360 nodes), random
//! viewers over its levels, and [`province_run`] — publish, subscribe, cut the busiest county's
//! primary trunk, restore it, prune — with what it measured ([`ProvinceReport`]). Run by
//! `cargo run --release -p trunk --bin province-sim` and `trunk/tests/sim.rs`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::{Rng, Sim, SimConfig, SimStats};
use crate::ids::{LayerId, LayerSet, NodeName, StreamAddr};
use crate::router::RouterConfig;

/// The province of the issue: 1 province, 11 cities, 90 counties (county `k` under city
/// `k % 11`, with city `(k + 1) % 11` as its second parent), 1,360 townships (township `k` under
/// county `k % 90`). Returns the network with every trunk coming up.
pub fn province(cfg: SimConfig, grace: Duration) -> Sim {
    let mut sim = Sim::new(cfg);
    let name = |s: String| NodeName::parse(&s).expect("valid");
    let mk = |n: NodeName, parents: Vec<NodeName>| {
        let mut c = RouterConfig::new(n);
        c.parents = parents;
        c.grace = grace;
        c
    };
    let p = sim.add_node(mk(name("province".into()), vec![]));
    let cities: Vec<usize> = (0..11)
        .map(|k| sim.add_node(mk(name(format!("city-{k}")), vec![name("province".into())])))
        .collect();
    let counties: Vec<usize> = (0..90)
        .map(|k| {
            sim.add_node(mk(
                name(format!("county-{k}")),
                vec![
                    name(format!("city-{}", k % 11)),
                    name(format!("city-{}", (k + 1) % 11)),
                ],
            ))
        })
        .collect();
    let townships: Vec<usize> = (0..1360)
        .map(|k| {
            sim.add_node(mk(
                name(format!("township-{k}")),
                vec![name(format!("county-{}", k % 90))],
            ))
        })
        .collect();
    for &c in &cities {
        sim.link(p, c);
    }
    for (k, &c) in counties.iter().enumerate() {
        sim.link(c, cities[k % 11]);
        sim.link(c, cities[(k + 1) % 11]);
    }
    for (k, &t) in townships.iter().enumerate() {
        sim.link(t, counties[k % 90]);
    }
    sim
}

/// Picks `n` random viewers' (node, stream, layer) over the province's levels: 10 % at the
/// province, 15 % at cities, 25 % at counties, 50 % at townships; streams uniformly.
pub fn random_viewers(
    sim: &Sim,
    streams: &[StreamAddr],
    n: usize,
    rng: &mut Rng,
) -> Vec<(usize, StreamAddr, LayerId)> {
    let level = |r: u64| -> (usize, usize) {
        match r {
            0..=9 => (0, 1),
            10..=24 => (1, 11),
            25..=49 => (12, 90),
            _ => (102, 1360),
        }
    };
    (0..n)
        .map(|_| {
            let (start, count) = level(rng.below(100));
            let node = start + rng.below(count as u64) as usize;
            let addr = streams[rng.below(streams.len() as u64) as usize].clone();
            let layer = LayerId(rng.below(3) as u8);
            debug_assert!(node < sim.node_count());
            (node, addr, layer)
        })
        .collect()
}

/// Settings of [`province_run`].
#[derive(Debug, Clone)]
pub struct ProvinceParams {
    /// Random seed (placement of publishers and viewers).
    pub seed: u64,
    /// Streams published (at random townships), 3 layers each.
    pub streams: usize,
    /// Viewers (see [`random_viewers`]), each wanting one random layer.
    pub viewers: usize,
    /// Routers' prune grace.
    pub grace: Duration,
    /// The network.
    pub sim: SimConfig,
}

impl Default for ProvinceParams {
    fn default() -> Self {
        ProvinceParams {
            seed: 1,
            streams: 500,
            viewers: 2000,
            grace: Duration::from_secs(10),
            sim: SimConfig::default(),
        }
    }
}

/// Route setup times of viewers whose stream is `hops` trunks away (primary tree).
#[derive(Debug, Clone, Default)]
pub struct SetupRow {
    /// Trunks between the viewer's node and the publisher's.
    pub hops: usize,
    /// Viewers measured.
    pub viewers: usize,
    /// Subscribe → `Flowing`, median / 99th percentile / max.
    pub control: [Duration; 3],
    /// Subscribe → first media packet, median / 99th percentile / max.
    pub media: [Duration; 3],
}

/// What [`province_run`] measured.
#[derive(Debug, Clone, Default)]
pub struct ProvinceReport {
    /// Nodes in the network.
    pub nodes: usize,
    /// Viewers that ever received media / that were reported failed.
    pub viewers_served: usize,
    /// Viewers reported failed.
    pub viewers_failed: usize,
    /// Setup times by distance.
    pub setup: Vec<SetupRow>,
    /// The cut trunk (county, its primary city).
    pub cut: (String, String),
    /// Viewers whose path crossed the cut trunk.
    pub failover_viewers: usize,
    /// Longest media gap among them from the cut on (detection + reroute + first packet).
    pub failover_max_gap: Duration,
    /// Longest media gap among them while flows moved back after the trunk returned.
    pub move_back_max_gap: Duration,
    /// Whether every node's route of the affected streams was the same as before the cut once
    /// flows moved back.
    pub moved_back: bool,
    /// Trunk packets sent in the last second before the grace ran out (must be > 0: warm).
    pub packets_before_grace_end: u64,
    /// Trunk packets sent from 1 s after the grace ran out to 3 s after (must be 0: pruned).
    pub packets_after_prune: u64,
    /// Streams still with forwarding state anywhere at the end (must be 0).
    pub leftover_state: usize,
    /// Largest number of trunk flows (stream × output) at once.
    pub peak_trunk_flows: usize,
    /// Counters (duplicates must be 0).
    pub stats: SimStats,
}

fn percentiles(mut v: Vec<Duration>) -> [Duration; 3] {
    if v.is_empty() {
        return [Duration::ZERO; 3];
    }
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    [at(0.5), at(0.99), *v.last().expect("non-empty")]
}

/// Runs the province scenario: build the province, publish, subscribe every viewer over 2 s,
/// cut the busiest county's primary trunk, restore it, then let every viewer leave and wait for
/// the prune. Virtual time; the result is deterministic for a seed.
pub fn province_run(p: &ProvinceParams) -> ProvinceReport {
    let mut rng = Rng::new(p.seed);
    let mut sim = province(p.sim.clone(), p.grace);
    let interval = p.sim.media_interval;
    let mut report = ProvinceReport {
        nodes: sim.node_count(),
        ..Default::default()
    };
    // Primary tree for distances.
    let parent: Vec<Option<usize>> = (0..sim.node_count())
        .map(|i| {
            sim.router(i)
                .config()
                .parents
                .first()
                .and_then(|n| sim.index.get(n).copied())
        })
        .collect();
    let ancestors = |mut i: usize| {
        let mut v = vec![i];
        while let Some(p) = parent[i] {
            v.push(p);
            i = p;
        }
        v
    };
    let hops = |a: usize, b: usize| {
        let (pa, pb) = (ancestors(a), ancestors(b));
        let (ia, ib) = pa
            .iter()
            .enumerate()
            .find_map(|(ia, x)| pb.iter().position(|y| y == x).map(|ib| (ia, ib)))
            .unwrap_or((pa.len(), pb.len()));
        ia + ib
    };
    sim.run_until(Duration::from_millis(200));
    let townships: Vec<usize> = (0..sim.node_count())
        .filter(|&i| sim.name(i).as_str().starts_with("township-"))
        .collect();
    let streams: Vec<StreamAddr> = (0..p.streams)
        .map(|k| {
            let t = townships[rng.below(townships.len() as u64) as usize];
            sim.publish(t, &format!("cam-{k}"), LayerSet::first(3))
        })
        .collect();
    // Let the catalog reach the province (3 hops).
    sim.run_until(Duration::from_secs(1));
    let wanted = random_viewers(&sim, &streams, p.viewers, &mut rng);
    let start = Duration::from_secs(1);
    let spread = Duration::from_secs(2);
    for (k, (node, addr, layer)) in wanted.iter().enumerate() {
        let at = start + spread * k as u32 / p.viewers.max(1) as u32;
        sim.run_until(at);
        sim.subscribe(*node, addr, *layer);
        report.peak_trunk_flows = report.peak_trunk_flows.max(sim.trunk_flows());
    }
    sim.run_until(Duration::from_secs(5));
    report.peak_trunk_flows = report.peak_trunk_flows.max(sim.trunk_flows());
    let publisher = |sim: &Sim, a: &StreamAddr| sim.index[&a.node];
    let mut by_hops: std::collections::BTreeMap<usize, (Vec<Duration>, Vec<Duration>)> =
        Default::default();
    for v in sim.viewers() {
        let h = hops(v.node, publisher(&sim, &v.addr));
        let e = by_hops.entry(h).or_default();
        if let Some(f) = v.flowing_at {
            e.0.push(f - v.subscribed_at);
        }
        if let Some(f) = v.first_packet {
            e.1.push(f - v.subscribed_at);
        }
    }
    report.setup = by_hops
        .into_iter()
        .map(|(h, (c, m))| SetupRow {
            hops: h,
            viewers: m.len(),
            control: percentiles(c),
            media: percentiles(m),
        })
        .collect();

    // Failover: the county whose trunk to its primary city carries the most viewers' paths.
    let county_of = |i: usize| {
        ancestors(i)
            .into_iter()
            .find(|&a| sim.name(a).as_str().starts_with("county-"))
    };
    let mut load: HashMap<usize, Vec<usize>> = HashMap::new();
    for (k, v) in sim.viewers().iter().enumerate() {
        let (cv, cp) = (county_of(v.node), county_of(publisher(&sim, &v.addr)));
        if cv != cp {
            for c in [cv, cp].into_iter().flatten() {
                load.entry(c).or_default().push(k);
            }
        }
    }
    let (county, affected) = load
        .into_iter()
        .max_by_key(|(c, v)| (v.len(), *c))
        .expect("some load");
    let city = parent[county].expect("county has a parent");
    report.cut = (sim.name(county).to_string(), sim.name(city).to_string());
    report.failover_viewers = affected.len();
    let affected_addrs: HashSet<StreamAddr> = affected
        .iter()
        .map(|&k| sim.viewers()[k].addr.clone())
        .collect();
    let snapshot = |sim: &Sim| {
        let mut v: Vec<(usize, StreamAddr, Option<Option<usize>>)> = Vec::new();
        for i in 0..sim.node_count() {
            for a in &affected_addrs {
                let s = sim.route_source(i, a);
                if s.is_some() {
                    v.push((i, a.clone(), s));
                }
            }
        }
        v.sort();
        v
    };
    let before = snapshot(&sim);
    sim.reset_gaps();
    let t_cut = sim.elapsed();
    sim.cut(county, city);
    sim.run_until(t_cut + Duration::from_secs(10));
    report.failover_max_gap = affected
        .iter()
        .map(|&k| {
            let v = &sim.viewers()[k];
            // A viewer that got nothing since the cut has a gap up to now.
            let since = v.last_packet.map_or(Duration::MAX, |l| sim.now() - l);
            if since > interval * 3 {
                sim.elapsed() - t_cut
            } else {
                v.max_gap
            }
        })
        .max()
        .unwrap_or_default();
    if std::env::var_os("TRUNK_SIM_DEBUG").is_some() {
        for &k in &affected {
            let v = &sim.viewers()[k];
            let since = v.last_packet.map_or(Duration::MAX, |l| sim.now() - l);
            if since > interval * 3 || v.max_gap > Duration::from_secs(3) {
                let pubn = publisher(&sim, &v.addr);
                eprintln!(
                    "viewer {k} at {} wants {} (pub {}), last {:?} ago, gap {:?}",
                    sim.name(v.node),
                    v.addr,
                    sim.name(pubn),
                    since,
                    v.max_gap
                );
                for i in ancestors(v.node)
                    .into_iter()
                    .chain(ancestors(pubn))
                    .chain([city, parent[county].unwrap()])
                {
                    eprintln!(
                        "   {}: source {:?} route {:?}",
                        sim.name(i),
                        sim.route_source(i, &v.addr),
                        sim.router(i).route(&v.addr)
                    );
                }
            }
        }
    }
    sim.reset_gaps();
    let t_back = sim.elapsed();
    sim.restore(county, city);
    sim.run_until(t_back + Duration::from_secs(5));
    report.move_back_max_gap = affected
        .iter()
        .map(|&k| sim.viewers()[k].max_gap)
        .max()
        .unwrap_or_default();
    report.moved_back = snapshot(&sim) == before;

    // Prune: everyone leaves.
    let t_leave = sim.elapsed();
    for k in 0..sim.viewers().len() {
        sim.unsubscribe(k);
    }
    sim.run_until(t_leave + p.grace - Duration::from_millis(1000));
    let a = sim.stats.trunk_packets;
    sim.run_until(t_leave + p.grace - Duration::from_millis(100));
    report.packets_before_grace_end = sim.stats.trunk_packets - a;
    sim.run_until(t_leave + p.grace + Duration::from_secs(1));
    let b = sim.stats.trunk_packets;
    sim.run_until(t_leave + p.grace + Duration::from_secs(3));
    report.packets_after_prune = sim.stats.trunk_packets - b;
    report.leftover_state = (0..sim.node_count())
        .map(|i| sim.router(i).active_streams().count())
        .sum();
    report.viewers_served = sim.viewers().iter().filter(|v| v.packets > 0).count();
    report.viewers_failed = sim.viewers().iter().filter(|v| v.failed).count();
    report.stats = sim.stats.clone();
    report
}
