//! Simulcast: each viewer gets its layer and switches on keyframes without timestamp jumps;
//! an `auto` viewer follows a capped link down.

use super::*;

#[test]
fn simulcast_viewers_get_their_layer_and_switch_on_keyframes_without_timestamp_jumps() {
    let mut w = World::new();
    let (p, offer, pending) = w.client_with(
        1000,
        &[(MediaKind::Video, Direction::SendOnly)],
        &["q", "h", "f"],
    );
    assert!(offer.contains("a=simulcast:send"), "{offer}");
    let now = w.now;
    let answer = w
        .sfu
        .publish(now, name("cam"), subj("off-1"), &offer)
        .unwrap();
    assert!(answer.sdp.contains("a=simulcast:recv"), "{}", answer.sdp);
    w.accept(p, pending, &answer.sdp);
    w.run_until("publisher connected", |w| w.clients[p].connected);

    // Layers with their own timestamp bases, as real encoders have.
    let layers = [
        ("q", 320u16, 180u16, 1_000_000u64),
        ("h", 640, 360, 5_000_000),
        ("f", 1280, 720, 9_000_000),
    ];
    let mut n = 0u64;
    let mut answered = 0usize;
    let mut pump = |w: &mut World, frames: u64| {
        for _ in 0..frames {
            let asked = w.clients[p].keyframe_requests > answered;
            answered = w.clients[p].keyframe_requests;
            for layer in layers {
                w.write_vp8_layer(p, layer, n, n == 0 || asked);
            }
            n += 1;
            for _ in 0..6 {
                w.step();
            }
        }
    };
    pump(&mut w, 10);
    let rv = [(MediaKind::Video, Direction::RecvOnly)];
    let mut viewers = Vec::new();
    for (port, pref) in [(2000, LayerPref::Low), (2001, LayerPref::High)] {
        let (v, offer, pending) = w.client(port, &rv);
        let now = w.now;
        let answer = w.sfu.view(now, &name("cam"), &offer, pref).unwrap();
        w.accept(v, pending, &answer.sdp);
        viewers.push(v);
    }
    pump(&mut w, 40);
    let widths = |w: &World, v: usize| -> Vec<u32> {
        w.clients[v]
            .video
            .iter()
            .filter_map(|d| keyframe_dims(VideoCodec::Vp8, &d.data))
            .map(|d| d.0)
            .collect()
    };
    let (low, high) = (viewers[0], viewers[1]);
    assert!(w.clients[low].video.len() >= 30 && w.clients[high].video.len() >= 30);
    assert_eq!(
        widths(&w, low).first(),
        Some(&320),
        "the low viewer starts on the smallest layer"
    );
    assert_eq!(
        widths(&w, high).first(),
        Some(&1280),
        "the high viewer on the largest"
    );
    assert!(
        w.clients[low].video.iter().all(|d| d.data.len() < 200),
        "only low-layer frames"
    );

    // The low viewer asks for high: it moves at the next high keyframe, and its timestamps
    // run on without a jump (90 kHz, 30 fps: 3000 per frame; the switch may differ by the
    // wall-clock time between the two layers' frames).
    // Viewer peer ids are allocated in order: the low viewer's is the smaller.
    let low_peer = w
        .sfu
        .peers
        .iter()
        .filter(|(_, pe)| matches!(pe.role, PeerRole::Viewer { .. }))
        .map(|(id, _)| *id)
        .min()
        .unwrap();
    let now = w.now;
    w.sfu.fwd.set_viewer_pref(now, low_peer, LayerPref::High);
    w.sfu.after_input(now);
    let before = w.clients[low].video.len();
    pump(&mut w, 30);
    let after = &w.clients[low].video[before..];
    let first_big = after
        .iter()
        .position(|d| d.data.len() > 200)
        .expect("switched to high");
    assert!(
        after[first_big].is_keyframe(),
        "the switch lands on a keyframe"
    );
    assert!(
        first_big <= 3,
        "switch within a few frames of asking ({first_big})"
    );
    assert!(after.iter().all(|d| d.contiguous));
    let ts: Vec<u64> = w.clients[low]
        .video
        .iter()
        .map(|d| d.time.numer())
        .collect();
    for pair in ts.windows(2) {
        let step = pair[1].wrapping_sub(pair[0]);
        assert!(
            (1..=9000).contains(&step),
            "timestamps run on across the switch: {pair:?}"
        );
    }
    assert_eq!(w.sfu.forward_counters().layer_switches, 1);
}

#[test]
fn auto_layer_follows_a_capped_link_down_on_keyframes() {
    let mut w = World::new();
    let p = w.connected_publisher(
        1000,
        &[(MediaKind::Video, Direction::SendOnly)],
        &["q", "h", "f"],
    );
    let v = w.connected_viewer(
        2000,
        &[(MediaKind::Video, Direction::RecvOnly)],
        LayerPref::Auto,
    );
    let viewer = w
        .sfu
        .peers
        .iter()
        .find(|(_, pe)| matches!(pe.role, PeerRole::Viewer { .. }))
        .map(|(id, _)| *id)
        .unwrap();

    // Browser-like layers: 150 / 500 / 1200 kbit/s at 30 fps; frame size tells them apart.
    let sizes = [("q", 320u16, 625usize), ("h", 640, 2083), ("f", 1280, 5000)];
    let layer_of = |len: usize| {
        sizes
            .iter()
            .position(|(_, _, s)| len.abs_diff(*s + 10) < 20)
    };
    let mut n = 0u64;
    let mut answered = 0usize;
    // Runs `secs` of virtual time; returns the layer index of each frame the viewer got, with
    // the virtual time it arrived and whether it was a keyframe, and when the SFU first
    // forwarded the low layer to the viewer.
    type Arrivals = Vec<(Instant, Option<usize>, bool)>;
    let mut run = |w: &mut World, secs: u64| -> (Arrivals, Option<Instant>) {
        let before = w.clients[v].video.len();
        let mut arrived = Vec::new();
        let mut sfu_low = None;
        for _ in 0..secs * 30 {
            let asked = w.clients[p].keyframe_requests > answered;
            answered = w.clients[p].keyframe_requests;
            w.write_layers(p, &sizes, n, n == 0 || asked);
            n += 1;
            for _ in 0..6 {
                w.step();
                if sfu_low.is_none() && w.sfu.fwd.viewer_layer(viewer) == Some(Layer(0)) {
                    sfu_low = Some(w.now);
                }
                let c = &w.clients[v];
                for d in &c.video[before + arrived.len()..] {
                    arrived.push((w.now, layer_of(d.data.len()), d.is_keyframe()));
                }
            }
        }
        (arrived, sfu_low)
    };
    let (open, _) = run(&mut w, 8);
    assert!(!open.is_empty());
    let top = open.last().unwrap().1;
    assert_eq!(
        top,
        Some(2),
        "on an open link the viewer climbs to the top layer"
    );

    // Cap the viewer's downlink at 300 kbit/s: within two seconds the SFU forwards it the low
    // layer (from a keyframe of it). What str0m's pacer already holds of the old layer (the
    // estimate it paces by falls within ~1 s, the smoothed one the SFU acts on lags it) still
    // drains through the 300 kbit/s link first, so the viewer sees the switch ~3 s later.
    let t_cap = w.now;
    w.clients[v].down_cap = Some((300_000, t_cap, VecDeque::new(), 0));
    let (capped, sfu_low) = run(&mut w, 6);
    let sfu_low = sfu_low.expect("the SFU moved the viewer to the low layer");
    assert!(
        sfu_low - t_cap <= Duration::from_secs(2),
        "SFU moved down within 2 s, took {:?}",
        sfu_low - t_cap
    );
    let first_low = capped
        .iter()
        .find(|(_, l, _)| *l == Some(0))
        .expect("the viewer got the low layer");
    assert!(
        first_low.0 - t_cap <= Duration::from_millis(4500),
        "low layer at the viewer within 4.5 s, took {:?}",
        first_low.0 - t_cap
    );
    assert_eq!(capped.last().unwrap().1, Some(0), "stays low while capped");

    // Lift the cap: padding towards the next layer (see `update_probing`) and str0m's probes
    // let the estimate grow again, and the viewer climbs back to at least the mid layer.
    let t_lift = w.now;
    w.clients[v].down_cap = None;
    let (lifted, _) = run(&mut w, 15);
    assert!(
        !lifted.is_empty(),
        "frames keep flowing after the cap is lifted"
    );
    let back_up = lifted
        .iter()
        .find(|(_, l, _)| *l >= Some(1))
        .expect("climbed back above the low layer");
    assert!(
        back_up.0 - t_lift <= Duration::from_secs(15),
        "back up within 15 s, took {:?}",
        back_up.0 - t_lift
    );
    assert!(
        lifted.last().unwrap().1 >= Some(1),
        "stays up on the open link: {:?}",
        lifted.last().unwrap().1
    );
    // Every change of layer the viewer saw landed on a keyframe.
    let all: Vec<_> = open.iter().chain(&capped).chain(&lifted).collect();
    for pair in all.windows(2) {
        if pair[0].1 != pair[1].1 {
            assert!(
                pair[1].2,
                "switch {:?} -> {:?} not on a keyframe",
                pair[0].1, pair[1].1
            );
        }
    }
    assert!(
        all.iter().all(|(_, l, _)| l.is_some()),
        "every frame is one of the layers"
    );
}
