//! The forwarding core's rules tested one by one: publish conflicts and takeovers, keyframe
//! gating, throttling and retries, layer ranking, choice and switching, standby layers, `auto`
//! following the estimate. Plain values and virtual time.

use super::*;

fn name(s: &str) -> StreamName {
    s.parse().unwrap()
}
fn subj(s: &str) -> Subject {
    s.parse().unwrap()
}
fn drain(f: &mut Forwarder) -> Vec<ForwardOutput> {
    std::iter::from_fn(|| f.poll_output()).collect()
}
fn kf(publisher: u64, layer: u8) -> ForwardOutput {
    ForwardOutput::RequestKeyframe {
        publisher: PeerId(publisher),
        layer: Layer(layer),
    }
}
fn video(layer: u8, keyframe: bool) -> Frame {
    let dims = keyframe.then_some((320 << layer, 180 << layer));
    Frame {
        kind: TrackKind::Video,
        layer: Layer(layer),
        keyframe,
        dims,
        bytes: 1000 << layer,
    }
}
fn audio() -> Frame {
    Frame {
        kind: TrackKind::Audio,
        layer: Layer(0),
        keyframe: false,
        dims: None,
        bytes: 100,
    }
}
fn route(f: &mut Forwarder, now: Instant, from: u64, frame: Frame) -> Vec<PeerId> {
    let mut t = Vec::new();
    f.route(now, PeerId(from), &frame, &mut t);
    t
}

#[test]
fn viewer_waits_for_keyframe_and_asks_for_one() {
    let t0 = Instant::now();
    let mut f = Forwarder::default();
    f.add_publisher(t0, name("cam"), subj("off-1"), PeerId(1))
        .unwrap();
    assert!(route(&mut f, t0, 1, video(0, false)).is_empty());
    assert!(drain(&mut f).is_empty(), "no viewer, no keyframe request");
    f.add_viewer(t0, &name("cam"), PeerId(2), LayerPref::Auto)
        .unwrap();
    assert_eq!(drain(&mut f), vec![kf(1, 0)]);

    assert!(
        route(&mut f, t0, 1, video(0, false)).is_empty(),
        "delta frame withheld from a waiting viewer"
    );
    assert_eq!(
        route(&mut f, t0, 1, audio()),
        vec![PeerId(2)],
        "audio is never withheld"
    );
    assert_eq!(route(&mut f, t0, 1, video(0, true)), vec![PeerId(2)]);
    assert_eq!(
        route(&mut f, t0, 1, video(0, false)),
        vec![PeerId(2)],
        "after the keyframe, delta frames flow"
    );
    assert_eq!(f.counters().dropped_waiting_keyframe, 1);
}

#[test]
fn keyframe_requests_are_throttled_and_none_is_lost() {
    let t0 = Instant::now();
    let mut f = Forwarder::default();
    f.add_publisher(t0, name("cam"), subj("off-1"), PeerId(1))
        .unwrap();
    route(&mut f, t0, 1, video(0, true));
    f.add_viewer(t0, &name("cam"), PeerId(2), LayerPref::Auto)
        .unwrap();
    f.add_viewer(t0, &name("cam"), PeerId(3), LayerPref::Auto)
        .unwrap();
    route(&mut f, t0, 1, video(0, true));
    // Ten PLIs from viewers within 100 ms: one request went out at t0, the rest are held.
    for i in 0..10 {
        f.viewer_keyframe_request(t0 + Duration::from_millis(i * 10), PeerId(2 + i % 2));
    }
    assert_eq!(drain(&mut f).len(), 1);
    assert_eq!(f.poll_timeout(), Some(t0 + Duration::from_millis(500)));
    f.handle_timeout(t0 + Duration::from_millis(499));
    assert!(drain(&mut f).is_empty());
    f.handle_timeout(t0 + Duration::from_millis(500));
    assert_eq!(drain(&mut f), vec![kf(1, 0)]);
    assert_eq!(f.poll_timeout(), None, "nothing held any more");
    assert_eq!(f.counters().keyframe_requests_sent, 2);
    assert_eq!(
        f.counters().keyframe_requests_aggregated,
        11,
        "the second viewer's join and ten PLIs"
    );
}

#[test]
fn waiting_viewer_asks_again_after_retry_interval() {
    let t0 = Instant::now();
    let mut f = Forwarder::default();
    f.add_publisher(t0, name("cam"), subj("off-1"), PeerId(1))
        .unwrap();
    route(&mut f, t0, 1, video(0, true));
    f.add_viewer(t0, &name("cam"), PeerId(2), LayerPref::Auto)
        .unwrap();
    assert_eq!(drain(&mut f), vec![kf(1, 0)]);
    route(&mut f, t0 + Duration::from_millis(900), 1, video(0, false));
    assert!(drain(&mut f).is_empty());
    route(&mut f, t0 + Duration::from_millis(1000), 1, video(0, false));
    assert_eq!(drain(&mut f), vec![kf(1, 0)]);
}

#[test]
fn second_publisher_conflicts_unless_same_owner() {
    let t0 = Instant::now();
    let mut f = Forwarder::default();
    f.add_publisher(t0, name("cam"), subj("off-1"), PeerId(1))
        .unwrap();
    assert_eq!(
        f.add_publisher(t0, name("cam"), subj("off-2"), PeerId(2)),
        Err(PublishConflict {
            holder: subj("off-1")
        })
    );
    f.add_viewer(t0, &name("cam"), PeerId(3), LayerPref::Auto)
        .unwrap();
    drain(&mut f);
    // The same owner reconnects: takes over, old publisher closed, viewer waits for a keyframe.
    f.add_publisher(
        t0 + Duration::from_secs(2),
        name("cam"),
        subj("off-1"),
        PeerId(4),
    )
    .unwrap();
    assert_eq!(
        drain(&mut f),
        vec![ForwardOutput::Close { peer: PeerId(1) }]
    );
    assert!(
        route(&mut f, t0, 1, video(0, true)).is_empty(),
        "the displaced publisher forwards nothing"
    );
    assert_eq!(f.counters().dropped_not_publisher, 1);
    assert!(route(&mut f, t0, 4, video(0, false)).is_empty());
    assert_eq!(
        drain(&mut f),
        vec![kf(4, 0)],
        "the new publisher is asked for a keyframe"
    );
    assert_eq!(route(&mut f, t0, 4, video(0, true)), vec![PeerId(3)]);
}

#[test]
fn viewers_outlive_their_publisher_and_resume() {
    let t0 = Instant::now();
    let mut f = Forwarder::default();
    f.add_publisher(t0, name("cam"), subj("off-1"), PeerId(1))
        .unwrap();
    f.add_viewer(t0, &name("cam"), PeerId(2), LayerPref::Auto)
        .unwrap();
    assert_eq!(f.remove_peer(PeerId(1)), Some(name("cam")));
    assert_eq!(f.live_owner(&name("cam")), None);
    assert_eq!(
        f.add_viewer(t0, &name("cam"), PeerId(3), LayerPref::Auto),
        Err(ViewError::NotLive)
    );
    assert_eq!(f.viewer_count(&name("cam")), 1);
    // Anyone may publish the name now that it is not live.
    f.add_publisher(t0, name("cam"), subj("off-9"), PeerId(5))
        .unwrap();
    assert_eq!(route(&mut f, t0, 5, video(0, true)), vec![PeerId(2)]);
    f.remove_peer(PeerId(2));
    f.remove_peer(PeerId(5));
    assert_eq!(f.viewer_count(&name("cam")), 0);
    assert!(f.streams.is_empty(), "empty streams are forgotten");
}

#[test]
fn unknown_stream_or_duplicate_viewer_is_refused() {
    let t0 = Instant::now();
    let mut f = Forwarder::default();
    assert_eq!(
        f.add_viewer(t0, &name("nope"), PeerId(1), LayerPref::Auto),
        Err(ViewError::NotLive)
    );
    f.add_publisher(t0, name("cam"), subj("off-1"), PeerId(1))
        .unwrap();
    assert_eq!(
        f.add_viewer(t0, &name("cam"), PeerId(1), LayerPref::Auto),
        Err(ViewError::DuplicatePeer)
    );
}

/// Three layers numbered in an order unrelated to their size (as RIDs may be).
fn simulcast(f: &mut Forwarder, now: Instant) {
    for (layer, kf) in [(2u8, true), (0, true), (1, true)] {
        route(f, now, 1, video(layer, kf));
    }
}

#[test]
fn layers_ranked_by_picture_size_and_chosen_by_preference() {
    let t0 = Instant::now();
    let mut f = Forwarder::default();
    f.add_publisher(t0, name("cam"), subj("off-1"), PeerId(1))
        .unwrap();
    simulcast(&mut f, t0);
    let ranked: Vec<Layer> = f.layers(&name("cam")).iter().map(|l| l.layer).collect();
    assert_eq!(ranked, vec![Layer(0), Layer(1), Layer(2)]);
    let prefs = [
        (10, LayerPref::Low, 0u8),
        (11, LayerPref::Mid, 1),
        (12, LayerPref::High, 2),
        (13, LayerPref::MaxHeight(400), 1), // heights 180, 360, 720
        (14, LayerPref::MaxHeight(100), 0),
        (15, LayerPref::Auto, 2),
    ];
    for (peer, pref, _) in prefs {
        f.add_viewer(t0, &name("cam"), PeerId(peer), pref).unwrap();
    }
    let t1 = t0 + Duration::from_millis(10);
    simulcast(&mut f, t1);
    for (peer, pref, layer) in prefs {
        assert_eq!(f.viewer_layer(PeerId(peer)), Some(Layer(layer)), "{pref:?}");
    }
    // Each viewer gets only its own layer's frames.
    assert_eq!(
        route(&mut f, t1, 1, video(1, false)),
        vec![PeerId(11), PeerId(13)]
    );
    assert_eq!(
        route(&mut f, t1, 1, video(2, false)),
        vec![PeerId(12), PeerId(15)]
    );
}

#[test]
fn a_layer_switch_waits_for_a_keyframe_of_the_new_layer() {
    let t0 = Instant::now();
    let mut f = Forwarder::default();
    f.add_publisher(t0, name("cam"), subj("off-1"), PeerId(1))
        .unwrap();
    simulcast(&mut f, t0);
    f.add_viewer(t0, &name("cam"), PeerId(2), LayerPref::High)
        .unwrap();
    simulcast(&mut f, t0);
    assert_eq!(f.viewer_layer(PeerId(2)), Some(Layer(2)));
    drain(&mut f);

    let t1 = t0 + Duration::from_secs(1);
    f.set_viewer_pref(t1, PeerId(2), LayerPref::Low);
    assert_eq!(
        drain(&mut f),
        vec![kf(1, 0)],
        "keyframe of the new layer asked for at once"
    );
    // Until it comes, the old layer keeps flowing and the new one's deltas are not sent.
    assert_eq!(route(&mut f, t1, 1, video(2, false)), vec![PeerId(2)]);
    assert!(route(&mut f, t1, 1, video(0, false)).is_empty());
    assert_eq!(f.viewer_layer(PeerId(2)), Some(Layer(2)));
    assert_eq!(route(&mut f, t1, 1, video(0, true)), vec![PeerId(2)]);
    assert_eq!(f.viewer_layer(PeerId(2)), Some(Layer(0)));
    assert!(
        route(&mut f, t1, 1, video(2, false)).is_empty(),
        "old layer no longer sent"
    );
    assert_eq!(f.counters().layer_switches, 1);
}

#[test]
fn a_stopped_layer_drops_out_of_the_ranking() {
    let t0 = Instant::now();
    let mut f = Forwarder::default();
    f.add_publisher(t0, name("cam"), subj("off-1"), PeerId(1))
        .unwrap();
    simulcast(&mut f, t0);
    f.add_viewer(t0, &name("cam"), PeerId(2), LayerPref::High)
        .unwrap();
    simulcast(&mut f, t0);
    drain(&mut f);
    // The top layer stops (CPU adaptation) while the others go on; after LAYER_TIMEOUT the
    // viewer moves to mid.
    let t_mid = t0 + Duration::from_secs(1);
    route(&mut f, t_mid, 1, video(0, false));
    assert_eq!(route(&mut f, t_mid, 1, video(2, false)), vec![PeerId(2)]);
    route(&mut f, t_mid, 1, video(1, false));
    assert!(drain(&mut f).is_empty(), "all three layers still active");
    let t_late = t_mid + Duration::from_secs(1);
    route(&mut f, t_late, 1, video(0, false));
    route(&mut f, t_late, 1, video(1, false));
    assert!(drain(&mut f).is_empty());
    let t1 = t_mid + LAYER_TIMEOUT + Duration::from_millis(100);
    route(&mut f, t1, 1, video(0, false));
    assert!(route(&mut f, t1, 1, video(1, false)).is_empty());
    assert_eq!(drain(&mut f), vec![kf(1, 1)]);
    assert_eq!(route(&mut f, t1, 1, video(1, true)), vec![PeerId(2)]);
    assert_eq!(f.viewer_layer(PeerId(2)), Some(Layer(1)));
}

#[test]
fn a_layer_on_standby_stays_ranked_and_can_be_chosen() {
    let t0 = Instant::now();
    let mut f = Forwarder::default();
    f.add_publisher(t0, name("cam"), subj("trunk"), PeerId(1))
        .unwrap();
    simulcast(&mut f, t0);
    f.add_viewer(t0, &name("cam"), PeerId(2), LayerPref::Low)
        .unwrap();
    simulcast(&mut f, t0);
    drain(&mut f);
    assert_eq!(f.viewer_layer(PeerId(2)), Some(Layer(0)));
    // Only the low layer is pulled now; mid and high are on standby and silent.
    f.set_standby(t0, &name("cam"), &[Layer(1), Layer(2), Layer(7)]);
    let t1 = t0 + LAYER_TIMEOUT * 3;
    assert_eq!(route(&mut f, t1, 1, video(0, false)), vec![PeerId(2)]);
    let ranked: Vec<Layer> = f.layers(&name("cam")).iter().map(|l| l.layer).collect();
    assert_eq!(
        ranked,
        vec![Layer(0), Layer(1), Layer(2)],
        "silent standby layers stay ranked, an unknown one is ignored"
    );
    // The viewer wants high: chosen although nothing of it flows, asked for, and the low layer
    // keeps flowing until its keyframe comes.
    f.set_viewer_pref(t1, PeerId(2), LayerPref::High);
    assert_eq!(f.viewer_choice(PeerId(2)), Some(Layer(2)));
    assert_eq!(drain(&mut f), vec![kf(1, 2)]);
    f.set_standby(t1, &name("cam"), &[Layer(1)]);
    assert_eq!(route(&mut f, t1, 1, video(0, false)), vec![PeerId(2)]);
    assert_eq!(route(&mut f, t1, 1, video(2, true)), vec![PeerId(2)]);
    assert_eq!(f.viewer_layer(PeerId(2)), Some(Layer(2)));
    // Taken off standby and never arriving, a layer leaves the ranking after the timeout.
    f.set_standby(t1, &name("cam"), &[]);
    let t2 = t1 + LAYER_TIMEOUT + Duration::from_millis(100);
    route(&mut f, t2, 1, video(0, false));
    route(&mut f, t2, 1, video(2, false));
    let ranked: Vec<Layer> = f.layers(&name("cam")).iter().map(|l| l.layer).collect();
    assert_eq!(ranked, vec![Layer(0), Layer(2)]);
    assert_eq!(f.known_layers(&name("cam")).len(), 3);
}

#[test]
fn auto_follows_the_bandwidth_estimate() {
    let t0 = Instant::now();
    let mut f = Forwarder::default();
    f.add_publisher(t0, name("cam"), subj("off-1"), PeerId(1))
        .unwrap();
    f.add_viewer(t0, &name("cam"), PeerId(2), LayerPref::Auto)
        .unwrap();
    // Two seconds of 30 fps per layer so bitrates are measured: 1000/2000/4000 bytes a frame
    // ≈ 250/500/1000 kbit/s.
    let mut now = t0;
    for i in 0..60 {
        now = t0 + Duration::from_millis(i * 33);
        for layer in 0..3 {
            route(&mut f, now, 1, video(layer, i % 30 == 0));
        }
    }
    let rates: Vec<u64> = f
        .layers(&name("cam"))
        .iter()
        .map(|l| l.bitrate_bps / 1000)
        .collect();
    assert!(
        rates[0] >= 200 && rates[0] <= 260 && rates[2] >= 900 && rates[2] <= 1050,
        "{rates:?}"
    );
    assert_eq!(
        f.viewer_layer(PeerId(2)),
        Some(Layer(2)),
        "no estimate yet: the top layer"
    );
    drain(&mut f);
    f.set_viewer_bandwidth(now, PeerId(2), 600_000);
    assert_eq!(
        drain(&mut f),
        vec![kf(1, 1)],
        "500 kbit/s fits in 90 % of 600"
    );
    route(&mut f, now, 1, video(1, true));
    assert_eq!(f.viewer_layer(PeerId(2)), Some(Layer(1)));
    f.set_viewer_bandwidth(now, PeerId(2), 100_000);
    route(&mut f, now, 1, video(0, true));
    assert_eq!(
        f.viewer_layer(PeerId(2)),
        Some(Layer(0)),
        "nothing fits: the lowest"
    );

    // The estimate recovers: up only after it has held for AUTO_UP_HOLD.
    drain(&mut f);
    f.set_viewer_bandwidth(now, PeerId(2), 2_000_000);
    let up_frames = |f: &mut Forwarder, at: Instant| {
        for layer in 0..3 {
            route(f, at, 1, video(layer, true));
        }
    };
    for ms in (100..=1900).step_by(100) {
        up_frames(&mut f, now + Duration::from_millis(ms));
        assert_eq!(
            f.viewer_layer(PeerId(2)),
            Some(Layer(0)),
            "no up-switch before the hold ({ms} ms)"
        );
    }
    up_frames(&mut f, now + Duration::from_millis(2000));
    assert_eq!(
        f.viewer_layer(PeerId(2)),
        Some(Layer(2)),
        "after the hold, straight to what fits"
    );
    // A fall is followed at once.
    f.set_viewer_bandwidth(now + Duration::from_millis(2300), PeerId(2), 10_000);
    up_frames(&mut f, now + Duration::from_millis(2300));
    assert_eq!(f.viewer_layer(PeerId(2)), Some(Layer(0)));
}
