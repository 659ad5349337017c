//! The trunk router in the in-memory network, virtual time, 20 ms per hop: the 4-level
//! topology (province; city-a, city-b; a county with city-a as primary and city-b as second
//! parent; a township) and the province-size run.

use std::time::{Duration, Instant};

use trunk::sim::{province_run, ProvinceParams, Sim, SimConfig};
use trunk::wire::FailReason;
use trunk::{
    LayerId, LayerSet, Message, NodeName, Output, Router, RouterConfig, StreamAddr, ViewerEvent,
    ViewerId,
};

struct Four {
    sim: Sim,
    province: usize,
    city_a: usize,
    city_b: usize,
    county: usize,
    township: usize,
}

fn n(s: &str) -> NodeName {
    NodeName::parse(s).unwrap()
}

fn four(grace: Duration) -> Four {
    let mut sim = Sim::new(SimConfig::default());
    let mk = |name: &str, parents: &[&str]| {
        let mut c = RouterConfig::new(n(name));
        c.parents = parents.iter().map(|p| n(p)).collect();
        c.grace = grace;
        c
    };
    let province = sim.add_node(mk("province", &[]));
    let city_a = sim.add_node(mk("city-a", &["province"]));
    let city_b = sim.add_node(mk("city-b", &["province"]));
    let county = sim.add_node(mk("county", &["city-a", "city-b"]));
    let township = sim.add_node(mk("township", &["county"]));
    for (a, b) in [
        (province, city_a),
        (province, city_b),
        (county, city_a),
        (county, city_b),
        (township, county),
    ] {
        sim.link(a, b);
    }
    sim.run_until(Duration::from_millis(100));
    Four {
        sim,
        province,
        city_a,
        city_b,
        county,
        township,
    }
}

fn packets_between(sim: &Sim, a: usize, b: usize) -> u64 {
    sim.per_direction.get(&(a, b)).copied().unwrap_or(0)
}

#[test]
fn one_copy_per_trunk_whatever_the_viewers_and_only_layers_in_use() {
    let mut f = four(Duration::from_secs(10));
    let addr = f.sim.publish(f.township, "off-12", LayerSet::first(3));
    f.sim.run_until(Duration::from_millis(500));
    // 10 viewers at the province and 10 at city-b, all on layer 1.
    let mut vs = Vec::new();
    for _ in 0..10 {
        vs.push(f.sim.subscribe(f.province, &addr, LayerId(1)));
        vs.push(f.sim.subscribe(f.city_b, &addr, LayerId(1)));
    }
    f.sim.run_until(Duration::from_secs(2));
    let before = (
        packets_between(&f.sim, f.township, f.county),
        packets_between(&f.sim, f.county, f.city_a),
    );
    f.sim.run_until(Duration::from_secs(12));
    let ticks = 100; // 10 s at 100 ms
    let up = packets_between(&f.sim, f.township, f.county) - before.0;
    let mid = packets_between(&f.sim, f.county, f.city_a) - before.1;
    // One layer, one copy per tick, on every trunk on the path, however many viewers.
    assert!(
        (ticks - 1..=ticks + 1).contains(&up),
        "township→county carried {up} packets in {ticks} ticks"
    );
    assert!(
        (ticks - 1..=ticks + 1).contains(&mid),
        "county→city-a carried {mid} packets"
    );
    for v in &vs {
        let v = &f.sim.viewers()[*v];
        assert!(
            v.packets >= 110,
            "viewer at {} got {}",
            f.sim.name(v.node),
            v.packets
        );
    }
    // city-b pulls straight from the county over its backup trunk (its only route), the
    // province through city-a (cheaper than the backup).
    assert_eq!(f.sim.route_source(f.city_b, &addr), Some(Some(f.county)));
    assert_eq!(f.sim.route_source(f.province, &addr), Some(Some(f.city_a)));
    assert_eq!(f.sim.stats.duplicates, 0);
    // Adding a layer-2 viewer adds exactly that layer on the path.
    f.sim.subscribe(f.province, &addr, LayerId(2));
    let b = packets_between(&f.sim, f.township, f.county);
    f.sim.run_until(Duration::from_secs(22));
    let up = packets_between(&f.sim, f.township, f.county) - b;
    assert!(
        (2 * ticks - 4..=2 * ticks + 4).contains(&up),
        "two layers: {up}"
    );
}

#[test]
fn a_cut_trunk_fails_over_within_3_s_and_moves_back_without_a_stall() {
    let mut f = four(Duration::from_secs(10));
    let addr = f.sim.publish(f.township, "off-12", LayerSet::first(3));
    let down = f.sim.publish(f.province, "wall", LayerSet::first(1));
    f.sim.run_until(Duration::from_millis(500));
    let v = f.sim.subscribe(f.province, &addr, LayerId(0));
    let w = f.sim.subscribe(f.township, &down, LayerId(0));
    f.sim.run_until(Duration::from_secs(3));
    assert_eq!(f.sim.route_source(f.province, &addr), Some(Some(f.city_a)));
    f.sim.reset_gaps();
    f.sim.cut(f.county, f.city_a);
    f.sim.run_until(Duration::from_secs(10));
    for k in [v, w] {
        let viewer = &f.sim.viewers()[k];
        assert!(
            viewer.max_gap <= Duration::from_secs(3),
            "gap {:?}",
            viewer.max_gap
        );
        assert!(
            f.sim.now() - viewer.last_packet.unwrap() <= Duration::from_millis(200),
            "flowing again"
        );
    }
    assert_eq!(f.sim.route_source(f.province, &addr), Some(Some(f.city_b)));
    assert_eq!(f.sim.route_source(f.county, &down), Some(Some(f.city_b)));
    f.sim.reset_gaps();
    f.sim.restore(f.county, f.city_a);
    f.sim.run_until(Duration::from_secs(15));
    assert_eq!(
        f.sim.route_source(f.province, &addr),
        Some(Some(f.city_a)),
        "moved back"
    );
    assert_eq!(
        f.sim.route_source(f.county, &down),
        Some(Some(f.city_a)),
        "moved back"
    );
    for k in [v, w] {
        let gap = f.sim.viewers()[k].max_gap;
        assert!(
            gap <= Duration::from_millis(150),
            "move back stalled a viewer for {gap:?}"
        );
    }
    // The backup path is released.
    let b =
        packets_between(&f.sim, f.county, f.city_b) + packets_between(&f.sim, f.city_b, f.county);
    f.sim.run_until(Duration::from_secs(17));
    let after =
        packets_between(&f.sim, f.county, f.city_b) + packets_between(&f.sim, f.city_b, f.county);
    assert_eq!(after, b, "nothing crosses the backup trunk any more");
    assert_eq!(f.sim.stats.duplicates, 0);
}

#[test]
fn the_last_viewer_leaving_prunes_every_trunk_after_the_grace_period() {
    let grace = Duration::from_secs(10);
    let mut f = four(grace);
    let addr = f.sim.publish(f.township, "off-12", LayerSet::first(3));
    f.sim.run_until(Duration::from_millis(500));
    let a = f.sim.subscribe(f.province, &addr, LayerId(0));
    let b = f.sim.subscribe(f.province, &addr, LayerId(2));
    f.sim.run_until(Duration::from_secs(2));
    f.sim.unsubscribe(a);
    f.sim.run_until(Duration::from_secs(3));
    // Layer 0 no longer crosses any trunk, layer 2 still does.
    let p0 = f.sim.stats.trunk_packets;
    f.sim.run_until(Duration::from_secs(4));
    assert_eq!(
        f.sim.stats.trunk_packets - p0,
        3 * 10,
        "one layer over three trunks"
    );
    f.sim.unsubscribe(b);
    // Still warm during the grace period (a viewer coming back finds it at once) ...
    f.sim.run_until(Duration::from_secs(13));
    let p1 = f.sim.stats.trunk_packets;
    f.sim
        .run_until(Duration::from_secs(13) + Duration::from_millis(500));
    assert!(
        f.sim.stats.trunk_packets > p1,
        "pruned before the grace ran out"
    );
    // ... and gone from every trunk right after it.
    f.sim
        .run_until(Duration::from_secs(14) + Duration::from_millis(500));
    let p2 = f.sim.stats.trunk_packets;
    f.sim.run_until(Duration::from_secs(20));
    assert_eq!(
        f.sim.stats.trunk_packets, p2,
        "still crossing trunks after the grace period"
    );
    for i in 0..f.sim.node_count() {
        assert_eq!(
            f.sim.router(i).active_streams().count(),
            0,
            "state left at {}",
            f.sim.name(i)
        );
    }
}

#[test]
fn an_unknown_stream_fails_and_a_viewer_coming_back_within_grace_is_served_at_once() {
    let mut f = four(Duration::from_secs(10));
    let ghost = StreamAddr::parse("township/nobody").unwrap();
    let elsewhere = StreamAddr::parse("nowhere/cam").unwrap();
    let v = f.sim.subscribe(f.province, &ghost, LayerId(0));
    let w = f.sim.subscribe(f.township, &elsewhere, LayerId(0));
    f.sim.run_until(Duration::from_secs(1));
    assert!(f.sim.viewers()[v].failed, "unknown stream at a known node");
    assert!(
        f.sim.viewers()[w].failed,
        "unknown node: the root says not found"
    );
    let addr = f.sim.publish(f.township, "off-12", LayerSet::first(1));
    f.sim.run_until(Duration::from_secs(2));
    let a = f.sim.subscribe(f.province, &addr, LayerId(0));
    f.sim.run_until(Duration::from_secs(3));
    f.sim.unsubscribe(a);
    f.sim.run_until(Duration::from_secs(5));
    let again = f.sim.subscribe(f.province, &addr, LayerId(0));
    let t = f.sim.now();
    f.sim.run_until(Duration::from_secs(6));
    let viewer = &f.sim.viewers()[again];
    assert_eq!(viewer.flowing_at, Some(t), "warm path: flowing at once");
    assert!(viewer.first_packet.unwrap() - t <= Duration::from_millis(100));
}

#[test]
fn keyframe_requests_go_upstream_throttled() {
    let t0 = Instant::now();
    let mut cfg = RouterConfig::new(n("county"));
    cfg.parents = vec![n("city-a")];
    let mut r = Router::new(cfg);
    r.trunk_up(t0, n("city-a"));
    r.trunk_up(t0, n("township"));
    let addr = StreamAddr::parse("township/off-12").unwrap();
    r.handle_message(
        t0,
        &n("township"),
        Message::Announce(vec![trunk::CatalogEntry {
            addr: addr.clone(),
            layers: LayerSet(1),
            cost: 1,
        }]),
    );
    r.subscribe(t0, ViewerId(1), addr.clone(), LayerSet(1));
    r.handle_message(
        t0,
        &n("township"),
        Message::Subscribed { addr: addr.clone() },
    );
    while r.poll_output().is_some() {}
    let mut sent = 0;
    for ms in (0..2000).step_by(50) {
        let now = t0 + Duration::from_millis(ms);
        r.request_keyframe(now, &addr, LayerId(0));
        r.handle_message(
            now,
            &n("city-a"),
            Message::KeyframeRequest {
                addr: addr.clone(),
                layer: LayerId(0),
            },
        );
        while let Some(o) = r.poll_output() {
            if let Output::Send {
                trunk,
                msg: Message::KeyframeRequest { .. },
            } = o
            {
                assert_eq!(trunk, n("township"));
                sent += 1;
            }
        }
    }
    assert_eq!(sent, 4, "at most one per 500 ms over 2 s");
}

#[test]
fn a_parent_asking_for_a_stream_we_cannot_reach_is_refused() {
    let t0 = Instant::now();
    let mut cfg = RouterConfig::new(n("county"));
    cfg.parents = vec![n("city-a")];
    let mut r = Router::new(cfg);
    r.trunk_up(t0, n("city-a"));
    while r.poll_output().is_some() {}
    let addr = StreamAddr::parse("township/off-12").unwrap();
    r.handle_message(
        t0,
        &n("city-a"),
        Message::Subscribe {
            addr: addr.clone(),
            layers: LayerSet(1),
        },
    );
    let out: Vec<Output> = std::iter::from_fn(|| r.poll_output()).collect();
    assert!(
        out.contains(&Output::Send {
            trunk: n("city-a"),
            msg: Message::SubscribeFailed {
                addr: addr.clone(),
                reason: FailReason::NoRoute
            }
        }),
        "{out:?}"
    );
    assert!(
        !out.iter().any(|o| matches!(
            o,
            Output::Send {
                msg: Message::Subscribe { .. },
                ..
            }
        )),
        "must not loop back up: {out:?}"
    );
    assert_eq!(r.active_streams().count(), 0);
    // A viewer here learns the failure when its parent does not know the stream either.
    r.subscribe(t0, ViewerId(7), addr.clone(), LayerSet(1));
    r.handle_message(
        t0,
        &n("city-a"),
        Message::SubscribeFailed {
            addr: addr.clone(),
            reason: FailReason::NotFound,
        },
    );
    let out: Vec<Output> = std::iter::from_fn(|| r.poll_output()).collect();
    assert!(
        out.contains(&Output::Viewer {
            viewer: ViewerId(7),
            addr,
            event: ViewerEvent::Failed(FailReason::NotFound)
        }),
        "{out:?}"
    );
}

/// The province in virtual time: 1,462 nodes, 500 streams, 2,000 viewers.
#[test]
fn province_size_simulation() {
    let p = ProvinceParams::default();
    let r = province_run(&p);
    assert_eq!(r.nodes, 1462);
    assert_eq!(
        r.stats.duplicates, 0,
        "a stream layer crossed a trunk direction twice"
    );
    assert_eq!(r.viewers_failed, 0);
    assert_eq!(r.viewers_served, p.viewers);
    // Four levels (township ↔ province = 3 hops): goal < 500 ms.
    let four_levels = r
        .setup
        .iter()
        .find(|row| row.hops == 3)
        .expect("some 3-hop viewers");
    assert!(
        four_levels.control[2] < Duration::from_millis(500),
        "{four_levels:?}"
    );
    assert!(
        four_levels.media[2] < Duration::from_millis(500),
        "{four_levels:?}"
    );
    // The whole tree (township ↔ township in another city = 6 hops) too.
    assert!(
        r.setup
            .iter()
            .all(|row| row.media[2] < Duration::from_millis(500)),
        "{:?}",
        r.setup
    );
    assert!(r.failover_viewers > 0);
    assert!(
        r.failover_max_gap <= Duration::from_secs(3),
        "failover gap {:?}",
        r.failover_max_gap
    );
    assert!(r.moved_back, "routes did not return to the primary path");
    assert!(
        r.move_back_max_gap < Duration::from_millis(300),
        "move back gap {:?}",
        r.move_back_max_gap
    );
    assert!(
        r.packets_before_grace_end > 0,
        "pruned before the grace period ended"
    );
    assert_eq!(
        r.packets_after_prune, 0,
        "streams still cross trunks after the grace period"
    );
    assert_eq!(r.leftover_state, 0);
}

#[test]
fn peers_pull_from_each_other_and_fall_back_to_the_tree_when_the_peer_trunk_is_cut() {
    let mut sim = Sim::new(SimConfig::default());
    let mk = |name: &str, parents: &[&str], peers: &[&str]| {
        let mut c = RouterConfig::new(n(name));
        c.parents = parents.iter().map(|p| n(p)).collect();
        c.peers = peers.iter().map(|p| n(p)).collect();
        c
    };
    let city = sim.add_node(mk("city", &[], &[]));
    let a = sim.add_node(mk("county-a", &["city"], &["county-b"]));
    let b = sim.add_node(mk("county-b", &["city"], &["county-a"]));
    let t = sim.add_node(mk("township", &["county-b"], &[]));
    for (x, y) in [(city, a), (city, b), (a, b), (t, b)] {
        sim.link(x, y);
    }
    sim.run_until(Duration::from_millis(100));
    let addr = sim.publish(t, "cam", LayerSet::first(1));
    sim.run_until(Duration::from_millis(500));
    let v = sim.subscribe(a, &addr, LayerId(0));
    sim.run_until(Duration::from_secs(2));
    // The sibling link is the direct path.
    assert_eq!(sim.route_source(a, &addr), Some(Some(b)));
    assert!(sim.viewers()[v].packets > 10);
    // What county-a learned from its peer is not announced to its parent.
    let city_routes: Vec<String> = sim
        .router(city)
        .catalog()
        .iter()
        .map(|e| format!("{} {}", e.addr, e.cost))
        .collect();
    assert_eq!(
        city_routes,
        vec!["township/cam 2".to_string()],
        "the city knows it only via county-b"
    );
    sim.reset_gaps();
    sim.cut(a, b);
    sim.run_until(Duration::from_secs(6));
    assert_eq!(
        sim.route_source(a, &addr),
        Some(Some(city)),
        "through the tree"
    );
    let viewer = &sim.viewers()[v];
    assert!(
        viewer.max_gap <= Duration::from_secs(3),
        "gap {:?}",
        viewer.max_gap
    );
    assert!(sim.now() - viewer.last_packet.unwrap() <= Duration::from_millis(200));
    sim.restore(a, b);
    sim.run_until(Duration::from_secs(10));
    assert_eq!(
        sim.route_source(a, &addr),
        Some(Some(b)),
        "back on the peer link"
    );
    assert_eq!(sim.stats.duplicates, 0);
}

/// Both of the county's paths cut: the province's viewer of a township stream is told to wait,
/// not failed, and its media comes back by itself once a path returns (the stream announced
/// from below again, or the 2 s retry). A viewer asking for the lost stream during the outage
/// waits with it (the node's WHEP answer gives up after 10 s with 503) and gets it too.
#[test]
fn a_viewer_waits_through_an_outage_of_every_path_and_resumes() {
    let mut f = four(Duration::from_secs(10));
    let addr = f.sim.publish(f.township, "off-12", LayerSet::first(1));
    f.sim.run_until(Duration::from_secs(1));
    let v = f.sim.subscribe(f.province, &addr, LayerId(0));
    f.sim.run_until(Duration::from_secs(2));
    assert!(f.sim.viewers()[v].packets > 0, "flowing before the outage");

    f.sim.cut(f.county, f.city_a);
    f.sim.cut(f.county, f.city_b);
    f.sim.run_until(Duration::from_secs(5));
    let late = f.sim.subscribe(f.province, &addr, LayerId(0));
    f.sim.run_until(Duration::from_secs(8));
    assert!(
        !f.sim.viewers()[v].failed,
        "a viewer that was watching waits"
    );
    assert!(
        !f.sim.viewers()[late].failed && f.sim.viewers()[late].packets == 0,
        "a new viewer of the lost stream waits too"
    );
    let before = f.sim.viewers()[v].packets;

    f.sim.restore(f.county, f.city_b);
    let back = f.sim.now();
    f.sim.run_until(Duration::from_secs(12));
    let viewer = &f.sim.viewers()[v];
    assert!(
        viewer.packets > before,
        "media again after the path returned"
    );
    let resumed = viewer.last_packet.unwrap();
    assert!(resumed > back && !viewer.failed);
    assert!(
        f.sim.viewers()[late].packets > 0,
        "the viewer that asked during the outage is served"
    );
}
