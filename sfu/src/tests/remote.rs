//! Remote viewers: two engines joined by real trunk routers in lock-step virtual time.

use super::*;

fn tn(s: &str) -> trunk::NodeName {
    trunk::NodeName::parse(s).unwrap()
}

/// A township SFU and a province SFU joined by real trunk routers, in lock-step virtual
/// time: their control messages, datagrams, routes and keyframe requests are carried in
/// memory as the shells carry them over QUIC.
struct Cascade {
    town: World,
    prov: World,
    r_town: trunk::Router,
    r_prov: trunk::Router,
    /// How many of its layers (lowest first) the township publisher sends.
    town_layers: usize,
}

impl Cascade {
    fn new() -> Cascade {
        let mut town = World::new();
        let mut prov = World::new();
        prov.now = town.now;
        town.sfu.enable_trunks(tn("township"));
        prov.sfu.enable_trunks(tn("province"));
        let mut cfg = trunk::RouterConfig::new(tn("township"));
        cfg.parents = vec![tn("province")];
        let mut r_town = trunk::Router::new(cfg);
        let mut r_prov = trunk::Router::new(trunk::RouterConfig::new(tn("province")));
        r_town.trunk_up(town.now, tn("province"));
        r_prov.trunk_up(town.now, tn("township"));
        let mut c = Cascade {
            town,
            prov,
            r_town,
            r_prov,
            town_layers: 3,
        };
        c.carry();
        c
    }

    /// Carries what each SFU and router has for the other side until nothing moves.
    fn carry(&mut self) {
        let now = self.town.now;
        loop {
            let mut moved = false;
            for side in 0..2 {
                let (me, other, r_me, r_other, name) = if side == 0 {
                    (
                        &mut self.town,
                        &mut self.prov,
                        &mut self.r_town,
                        &mut self.r_prov,
                        tn("township"),
                    )
                } else {
                    (
                        &mut self.prov,
                        &mut self.town,
                        &mut self.r_prov,
                        &mut self.r_town,
                        tn("province"),
                    )
                };
                while let Some(req) = me.sfu.poll_trunk() {
                    moved = true;
                    match req {
                        TrunkRequest::Plane(TrunkOutput::Datagram { data, .. }) => {
                            other.sfu.trunk_datagram(now, &name, &data)
                        }
                        TrunkRequest::Plane(TrunkOutput::Control { msg, .. }) => {
                            other.sfu.trunk_control(now, &name, msg)
                        }
                        TrunkRequest::Plane(TrunkOutput::NextPathReady(addr)) => {
                            r_me.next_path_ready(now, &addr)
                        }
                        TrunkRequest::Subscribe {
                            viewer,
                            addr,
                            layers,
                        } => r_me.subscribe(now, viewer, addr, layers),
                        TrunkRequest::Unsubscribe { viewer, addr } => {
                            r_me.unsubscribe(now, viewer, &addr)
                        }
                        TrunkRequest::Keyframe { addr, layer } => {
                            r_me.request_keyframe(now, &addr, layer)
                        }
                    }
                }
                r_me.handle_timeout(now);
                while let Some(o) = r_me.poll_output() {
                    moved = true;
                    match o {
                        trunk::Output::Send { msg, .. } => r_other.handle_message(now, &name, msg),
                        trunk::Output::Route { addr, route } => {
                            me.sfu.trunk_route(now, addr, route)
                        }
                        trunk::Output::PublisherKeyframe { stream, layer } => {
                            me.sfu.publisher_keyframe(now, &stream, layer.0)
                        }
                        trunk::Output::Viewer { .. } => {}
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn step(&mut self) {
        self.town.step();
        self.prov.step();
        self.carry();
    }

    /// The layers the township sends the province of `addr`.
    fn to_province(&self, addr: &trunk::StreamAddr) -> trunk::LayerSet {
        self.r_town
            .route(addr)
            .and_then(|r| {
                r.outputs
                    .iter()
                    .find(|(h, _)| *h == trunk::Hop::Trunk(tn("province")))
                    .map(|(_, l)| *l)
            })
            .unwrap_or_default()
    }
}

/// An `auto` viewer of a remote simulcast stream pulls only the layer it receives (after the
/// first seconds, when every layer is pulled and sized), yet follows its link down and up:
/// the layers it does not pull stay choosable, and a choice of one pulls it over the trunk.
#[test]
fn a_remote_auto_viewer_pulls_only_its_layer_and_still_follows_its_link() {
    let mut c = Cascade::new();
    let p = c.town.connected_publisher(
        1000,
        &[(MediaKind::Video, Direction::SendOnly)],
        &["q", "h", "f"],
    );
    c.r_town.publish(
        c.town.now,
        trunk::StreamName::parse("cam").unwrap(),
        trunk::LayerSet(0b111),
    );
    c.carry();
    let addr = trunk::StreamAddr::parse("township/cam").unwrap();

    // Browser-like layers: 150 / 500 / 1200 kbit/s at 30 fps; frame size tells them apart.
    let sizes = [("q", 320u16, 625usize), ("h", 640, 2083), ("f", 1280, 5000)];
    let layer_of = |len: usize| {
        sizes
            .iter()
            .position(|(_, _, s)| len.abs_diff(*s + 10) < 20)
    };
    let (mut n, mut answered) = (0u64, 0usize);
    // One frame per layer at the township publisher (keyframes when asked), then 33 ms.
    let mut frame = |c: &mut Cascade| {
        let asked = c.town.clients[p].keyframe_requests > answered;
        answered = c.town.clients[p].keyframe_requests;
        let layers = c.town_layers;
        c.town.write_layers(p, &sizes[..layers], n, n == 0 || asked);
        n += 1;
        for _ in 0..6 {
            c.step();
        }
    };

    let peer = c.prov.sfu.watch_remote(addr.clone());
    c.carry();
    for _ in 0..300 {
        if c.prov.sfu.remote_codecs(&addr).0 {
            break;
        }
        frame(&mut c);
    }
    assert!(
        c.prov.sfu.remote_codecs(&addr).0,
        "the remote stream's video reached the province"
    );
    assert_eq!(
        c.to_province(&addr),
        trunk::LayerSet(ALL_LAYERS),
        "every layer is pulled at first"
    );
    let (v, offer, pending) = c
        .prov
        .client(2000, &[(MediaKind::Video, Direction::RecvOnly)]);
    let now = c.prov.now;
    let answer = c
        .prov
        .sfu
        .view_remote(now, peer, &addr, &offer, LayerPref::Auto)
        .unwrap();
    c.prov.accept(v, pending, &answer.sdp);
    for _ in 0..300 {
        if c.prov.clients[v].connected {
            break;
        }
        frame(&mut c);
    }
    assert!(c.prov.clients[v].connected, "the province viewer connected");

    // Runs `secs` of virtual time: the layer of each frame the viewer got (by size), and
    // whether the township's route to the province carried exactly the viewer's layer at
    // the end.
    let mut run = |c: &mut Cascade, secs: u64| -> Vec<Option<usize>> {
        let before = c.prov.clients[v].video.len();
        for _ in 0..secs * 30 {
            frame(c);
        }
        c.prov.clients[v].video[before..]
            .iter()
            .map(|d| layer_of(d.data.len()))
            .collect()
    };
    let pulled_is_viewers = |c: &Cascade| {
        let layer = c
            .prov
            .sfu
            .fwd
            .viewer_layer(peer)
            .map(|l| trunk::LayerId(l.0));
        (layer.map(trunk::LayerSet::single), c.to_province(&addr))
    };

    let open = run(&mut c, 8);
    assert_eq!(
        open.last().copied().flatten(),
        Some(2),
        "on an open link the viewer climbs to the top layer"
    );
    let (want, got) = pulled_is_viewers(&c);
    assert_eq!(Some(got), want, "only the top layer crosses the trunk");

    // Cap the viewer's downlink at 300 kbit/s: it moves down to the low layer, which the
    // province pulls again for it; then only the low layer crosses.
    c.prov.clients[v].down_cap = Some((300_000, c.prov.now, VecDeque::new(), 0));
    let capped = run(&mut c, 10);
    assert_eq!(
        capped.last().copied().flatten(),
        Some(0),
        "capped, the viewer gets the low layer"
    );
    let (want, got) = pulled_is_viewers(&c);
    assert_eq!(Some(got), want, "only the low layer crosses the trunk");

    // Lift the cap: the estimate grows towards the next layer's last known bitrate and the
    // viewer climbs again; the layer is pulled when chosen.
    c.prov.clients[v].down_cap = None;
    let lifted = run(&mut c, 15);
    assert!(
        lifted.last().copied().flatten() >= Some(1),
        "back above the low layer: {:?}",
        lifted.last()
    );
    let (want, got) = pulled_is_viewers(&c);
    assert_eq!(
        Some(got),
        want,
        "again only the viewer's layer crosses the trunk"
    );
    let all: Vec<_> = open.iter().chain(&capped).chain(&lifted).collect();
    assert!(
        all.iter().all(|l| l.is_some()),
        "every frame is one of the layers"
    );

    // The township's publisher pauses its top layer (its own congestion control), and the
    // trunk catalog announces the two others only: the viewer moves to a layer that flows
    // and the province never pulls the top one again, however well its estimate fits it.
    // Layer ids follow the order layers first arrived, not their size: find the top one.
    let name = c.prov.sfu.remote[&addr].name.clone();
    let known = c.prov.sfu.fwd.known_layers(&name);
    let top = known
        .iter()
        .max_by_key(|l| l.dims.map(|d| d.0))
        .map(|l| trunk::LayerId(l.layer.0))
        .unwrap();
    let others = known
        .iter()
        .filter(|l| l.layer.0 != top.0)
        .fold(0u8, |m, l| m | 1 << l.layer.0);
    c.town_layers = 2;
    c.prov
        .sfu
        .set_remote_catalog([(addr.clone(), trunk::LayerSet(others))]);
    let before = c.prov.clients[v].video.len();
    let t_pause = c.prov.now;
    let paused = run(&mut c, 4);
    // The longest time without a frame: the forwarding core's layer timeout (1.5 s) and a
    // keyframe of the layer moved to, which was already pulled (REMOTE_FALLBACK_AFTER).
    let times: Vec<Instant> = std::iter::once(t_pause)
        .chain(
            c.prov.clients[v].video[before..]
                .iter()
                .map(|d| d.network_time),
        )
        .collect();
    let gap = times
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .max()
        .unwrap_or_default();
    assert!(
        gap < crate::forward::LAYER_TIMEOUT + Duration::from_millis(400),
        "the viewer went {gap:?} without a frame"
    );
    let now_on = paused.last().copied().flatten();
    assert!(
        matches!(now_on, Some(0 | 1)),
        "the viewer moved to a layer that flows: {now_on:?}"
    );
    // The top layer, pulled while the viewer was on it, is dropped 2 s after the switch ...
    for _ in 0..4 * 30 {
        if !c.to_province(&addr).contains(top) {
            break;
        }
        frame(&mut c);
    }
    assert!(
        !c.to_province(&addr).contains(top),
        "the paused layer is no longer pulled"
    );
    // ... and not pulled again.
    let mut pulled_top = 0;
    for _ in 0..8 * 30 {
        frame(&mut c);
        pulled_top += usize::from(c.to_province(&addr).contains(top));
    }
    assert_eq!(
        pulled_top, 0,
        "a layer the origin does not announce is not pulled again"
    );
    let on = c
        .prov
        .sfu
        .fwd
        .viewer_layer(peer)
        .map(|l| trunk::LayerId(l.0));
    assert!(
        on.is_some_and(|l| l != top && c.to_province(&addr).contains(l)),
        "the viewer's layer {on:?} flows"
    );
}
