//! The trunk media plane in virtual time: the [`TrunkPlane`]s of two or three nodes carried
//! into each other in memory, with loss, path switches, slow hops, codec changes and garbage.

use super::*;

fn n(s: &str) -> NodeName {
    NodeName::parse(s).unwrap()
}
fn a(s: &str) -> StreamAddr {
    StreamAddr::parse(s).unwrap()
}
fn route(source: Hop, outputs: Vec<(Hop, LayerSet)>) -> Route {
    Route {
        source: Some(source),
        outputs,
        next: None,
    }
}
fn codec() -> std::sync::Arc<[u8]> {
    std::sync::Arc::from(&b"vp8"[..])
}

/// A town publishing `town/cam` (layer 0) to a city whose local viewers watch it.
fn town_to_city() -> (TrunkPlane, TrunkPlane) {
    let (mut town, mut city) = (TrunkPlane::new(n("town")), TrunkPlane::new(n("city")));
    town.set_route(
        a("town/cam"),
        route(Hop::Local, vec![(Hop::Trunk(n("city")), LayerSet(1))]),
    );
    city.set_route(
        a("town/cam"),
        route(Hop::Trunk(n("town")), vec![(Hop::Local, LayerSet(1))]),
    );
    (town, city)
}

/// Carries every output of `from` addressed to `to` into `to`'s plane.
fn carry(
    from: &mut TrunkPlane,
    to: &mut TrunkPlane,
    now: Instant,
    drop: impl Fn(usize) -> bool,
) -> usize {
    let mut i = 0;
    let mut bytes = 0;
    let me = from.node().clone();
    while let Some(o) = from.poll_output() {
        match o {
            TrunkOutput::Control { to: t, msg } if t == *to.node() => {
                to.handle_control(now, &me, msg)
            }
            TrunkOutput::Datagram { to: t, data } if t == *to.node() => {
                bytes += data.len();
                if !drop(i) {
                    to.handle_datagram(now, &me, &data);
                }
                i += 1;
            }
            _ => {}
        }
    }
    bytes
}

#[test]
fn frames_cross_two_hops_whole_and_once_per_trunk() {
    let now = Instant::now();
    let (mut town, mut county, mut city) = (
        TrunkPlane::new(n("town")),
        TrunkPlane::new(n("county")),
        TrunkPlane::new(n("city")),
    );
    let addr = a("town/cam");
    town.set_route(
        addr.clone(),
        route(Hop::Local, vec![(Hop::Trunk(n("county")), LayerSet(1))]),
    );
    county.set_route(
        addr.clone(),
        route(
            Hop::Trunk(n("town")),
            vec![
                (Hop::Local, LayerSet(1)),
                (Hop::Trunk(n("city")), LayerSet(1)),
            ],
        ),
    );
    city.set_route(
        addr.clone(),
        route(Hop::Trunk(n("county")), vec![(Hop::Local, LayerSet(1))]),
    );
    let cam = "cam";
    let frame: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    let mut total = 0;
    for i in 0..10u64 {
        town.send_local_frame(
            cam,
            true,
            LayerId(0),
            3000 * i,
            i == 0,
            false,
            96,
            codec,
            &frame,
        );
        // Layer 1 is not subscribed anywhere: it never leaves the town.
        town.send_local_frame(
            cam,
            true,
            LayerId(1),
            3000 * i,
            i == 0,
            false,
            96,
            codec,
            &frame,
        );
        town.send_local_frame(
            cam,
            false,
            LayerId(0),
            960 * i,
            false,
            false,
            111,
            codec,
            &[1, 2, 3],
        );
        total += carry(&mut town, &mut county, now, |_| false);
        carry(&mut county, &mut city, now, |_| false);
    }
    // One copy of layer 0 and the audio crossed: 5 fragments + 1 audio packet per frame.
    assert_eq!(town.counters().datagrams_out, 60);
    assert!(total < 10 * (5000 + 3 + 6 * HEADER + 100), "{total}");
    for p in [&mut county, &mut city] {
        let frames: Vec<RemoteFrame> = std::iter::from_fn(|| p.poll_frame()).collect();
        let video: Vec<&RemoteFrame> = frames.iter().filter(|f| f.key.video).collect();
        assert_eq!(video.len(), 10);
        assert!(video
            .iter()
            .all(|f| f.data == frame && f.key.layer == LayerId(0) && !f.discontinuity));
        assert!(video[0].keyframe && !video[1].keyframe);
        assert_eq!(video[3].time - video[2].time, 3000);
        assert_eq!(&*video[0].codec, b"vp8");
        assert_eq!(frames.len() - video.len(), 10, "audio too");
    }
}

#[test]
fn a_lost_packet_is_repaired_by_nack_and_one_never_repaired_is_given_up() {
    let t0 = Instant::now();
    let (mut town, mut city) = town_to_city();
    // Frame 1 loses its second packet; the city NACKs it and the town resends it.
    for i in 0..3u64 {
        let data = [i as u8; 3000];
        town.send_local_frame(
            "cam",
            true,
            LayerId(0),
            3000 * i,
            i == 0,
            false,
            96,
            codec,
            &data,
        );
        carry(&mut town, &mut city, t0, |j| i == 1 && j == 1);
    }
    assert_eq!(city.counters().nacks_sent, 1);
    carry(&mut city, &mut town, t0, |_| false);
    assert_eq!(town.counters().retransmits, 1);
    carry(&mut town, &mut city, t0, |_| false);
    let frames: Vec<RemoteFrame> = std::iter::from_fn(|| city.poll_frame()).collect();
    let times: Vec<u64> = frames.iter().map(|f| f.time % (1 << 32) / 3000).collect();
    assert_eq!(times, vec![0, 1, 2], "in order, none lost");
    assert!(frames
        .iter()
        .all(|f| !f.discontinuity && f.data.len() == 3000));

    // Frame 3 loses a packet and its retransmission: frame 4 waits, then after the repair
    // wait the city gives frame 3 up and delivers frame 4 marked as a discontinuity.
    for i in 3..5u64 {
        town.send_local_frame(
            "cam",
            true,
            LayerId(0),
            3000 * i,
            false,
            false,
            96,
            codec,
            &[9; 3000],
        );
        carry(&mut town, &mut city, t0, |j| i == 3 && j == 0);
    }
    carry(&mut city, &mut town, t0, |_| false);
    carry(&mut town, &mut city, t0, |_| true);
    assert!(
        city.poll_frame().is_none(),
        "frame 4 waits for frame 3's repair"
    );
    town.send_local_frame(
        "cam",
        true,
        LayerId(0),
        3000 * 5,
        false,
        false,
        96,
        codec,
        &[9; 3000],
    );
    carry(&mut town, &mut city, t0 + REPAIR_WAIT, |_| false);
    let frames: Vec<RemoteFrame> = std::iter::from_fn(|| city.poll_frame()).collect();
    let times: Vec<u64> = frames.iter().map(|f| f.time % (1 << 32) / 3000).collect();
    assert_eq!(times, vec![4, 5]);
    assert!(frames[0].discontinuity && !frames[1].discontinuity);
    // Three packets per frame: frames 0–2, 4 and 5 reached the viewers, frame 3 did not.
    assert_eq!(city.counters().packets_delivered, 15);
    assert_eq!(city.counters().packets_given_up, 3);
}

#[test]
fn a_lost_retransmission_is_asked_for_again() {
    let t0 = Instant::now();
    let (mut town, mut city) = town_to_city();
    city.set_rtt(&n("town"), Duration::from_millis(40));
    let retry = nack_retry(Duration::from_millis(40));
    let send = |town: &mut TrunkPlane, i: u64| {
        town.send_local_frame(
            "cam",
            true,
            LayerId(0),
            3000 * i,
            i == 0,
            false,
            96,
            codec,
            &[i as u8; 3000],
        );
    };
    send(&mut town, 0);
    carry(&mut town, &mut city, t0, |_| false);
    // Frame 1 loses its second packet; the NACK's answer is lost as well.
    send(&mut town, 1);
    carry(&mut town, &mut city, t0, |j| j == 1);
    carry(&mut city, &mut town, t0, |_| false);
    assert_eq!(town.counters().retransmits, 1);
    carry(&mut town, &mut city, t0, |_| true);
    // The next frame arrives before the retry time: nothing asked again yet.
    send(&mut town, 2);
    carry(&mut town, &mut city, t0 + retry / 2, |_| false);
    assert_eq!(city.counters().nacks_repeated, 0);
    // One after it: the packet is asked for again, resent, and frame 1 completes.
    send(&mut town, 3);
    carry(&mut town, &mut city, t0 + retry, |_| false);
    assert_eq!(city.counters().nacks_repeated, 1);
    carry(&mut city, &mut town, t0 + retry, |_| false);
    assert_eq!(town.counters().retransmits, 2);
    carry(&mut town, &mut city, t0 + retry, |_| false);
    let frames: Vec<RemoteFrame> = std::iter::from_fn(|| city.poll_frame()).collect();
    let times: Vec<u64> = frames.iter().map(|f| f.time % (1 << 32) / 3000).collect();
    assert_eq!(times, vec![0, 1, 2, 3], "repaired in time, in order");
    assert!(frames.iter().all(|f| !f.discontinuity));
    assert_eq!(city.counters().packets_given_up, 0);
    // A packet never coming is asked for NACK_TRIES times in all, then no more.
    send(&mut town, 4);
    carry(&mut town, &mut city, t0 + retry, |j| j == 0);
    let mut t = t0 + retry;
    for i in 5..12 {
        carry(&mut city, &mut town, t, |_| false);
        while town.poll_output().is_some() {} // every answer lost
        t += retry;
        send(&mut town, i);
        carry(&mut town, &mut city, t, |_| false);
    }
    assert_eq!(
        city.counters().nacks_repeated,
        1 + u64::from(NACK_TRIES) - 1
    );
}

#[test]
fn a_slow_hop_is_waited_for_and_its_repair_time_is_passed_on() {
    // town --600 ms RTT (satellite)--> county --40 ms--> city; viewers at county and city.
    let t0 = Instant::now();
    let (mut town, mut county, mut city) = (
        TrunkPlane::new(n("town")),
        TrunkPlane::new(n("county")),
        TrunkPlane::new(n("city")),
    );
    let addr = a("town/cam");
    town.set_route(
        addr.clone(),
        route(Hop::Local, vec![(Hop::Trunk(n("county")), LayerSet(1))]),
    );
    county.set_route(
        addr.clone(),
        route(
            Hop::Trunk(n("town")),
            vec![
                (Hop::Local, LayerSet(1)),
                (Hop::Trunk(n("city")), LayerSet(1)),
            ],
        ),
    );
    city.set_route(
        addr.clone(),
        route(Hop::Trunk(n("county")), vec![(Hop::Local, LayerSet(1))]),
    );
    county.set_rtt(&n("town"), Duration::from_millis(600));
    city.set_rtt(&n("county"), Duration::from_millis(40));
    let send = |town: &mut TrunkPlane, i: u64| {
        town.send_local_frame(
            "cam",
            true,
            LayerId(0),
            3000 * i,
            i == 0,
            false,
            96,
            codec,
            &[i as u8; 3000],
        );
    };
    send(&mut town, 0);
    carry(&mut town, &mut county, t0, |_| false);
    carry(&mut county, &mut city, t0, |_| false);
    // The county tells the city how long the path above it may take to repair a loss.
    let slow = hop_repair(Duration::from_millis(600));
    assert_eq!(
        city.tracks.values().next().unwrap().upstream_repair,
        Duration::from_millis(slow.as_millis() as u64)
    );
    // Frame 1 loses a packet on the slow hop; more frames follow; the resend comes 700 ms
    // later, long past the 250 ms floor: both viewers still get every frame whole, in order.
    send(&mut town, 1);
    carry(&mut town, &mut county, t0, |j| j == 1);
    // The county's NACK reaches the town at once; its answer is 600 ms on the way.
    let mut outs: Vec<TrunkOutput> = std::iter::from_fn(|| county.poll_output()).collect();
    let to_town: Vec<Message> = outs
        .iter()
        .filter_map(|o| match o {
            TrunkOutput::Control { to, msg } if *to == n("town") => Some(msg.clone()),
            _ => None,
        })
        .collect();
    outs.retain(|o| !matches!(o, TrunkOutput::Control { to, .. } if *to == n("town")));
    for m in to_town {
        town.handle_control(t0, &n("county"), m);
    }
    assert_eq!(town.counters().retransmits, 1);
    let resent: Vec<TrunkOutput> = std::iter::from_fn(|| town.poll_output()).collect();
    for o in outs {
        if let TrunkOutput::Datagram { to, data } = o {
            if to == n("city") {
                city.handle_datagram(t0, &n("county"), &data);
            }
        } else if let TrunkOutput::Control { to, msg } = o {
            if to == n("city") {
                city.handle_control(t0, &n("county"), msg);
            }
        }
    }
    // Frames 2–7 keep arriving every 100 ms meanwhile.
    for i in 2..8u64 {
        let t = t0 + Duration::from_millis(100 * (i - 1));
        send(&mut town, i);
        carry(&mut town, &mut county, t, |_| false);
        carry(&mut county, &mut city, t, |_| false);
    }
    let late = t0 + Duration::from_millis(700);
    for o in resent {
        if let TrunkOutput::Datagram { data, .. } = o {
            county.handle_datagram(late, &n("town"), &data);
        }
    }
    carry(&mut county, &mut city, late, |_| false);
    for p in [&mut county, &mut city] {
        let frames: Vec<RemoteFrame> = std::iter::from_fn(|| p.poll_frame()).collect();
        let times: Vec<u64> = frames.iter().map(|f| f.time % (1 << 32) / 3000).collect();
        assert_eq!(
            times,
            (0..8).collect::<Vec<u64>>(),
            "{}: repaired across the slow hop",
            p.node()
        );
        assert!(frames.iter().all(|f| !f.discontinuity));
        assert_eq!(p.counters().packets_given_up, 0);
    }
}

#[test]
fn after_a_switch_nothing_is_forwarded_twice() {
    let now = Instant::now();
    let (mut a_side, mut b_side, mut prov) = (
        TrunkPlane::new(n("city-a")),
        TrunkPlane::new(n("city-b")),
        TrunkPlane::new(n("province")),
    );
    let addr = a("county/cam");
    prov.set_route(
        addr.clone(),
        Route {
            source: Some(Hop::Trunk(n("city-b"))),
            outputs: vec![(Hop::Local, LayerSet(1))],
            next: Some(Hop::Trunk(n("city-a"))),
        },
    );
    let mut origin = TrunkPlane::new(n("county"));
    origin.set_route(
        addr.clone(),
        route(
            Hop::Local,
            vec![
                (Hop::Trunk(n("city-a")), LayerSet(1)),
                (Hop::Trunk(n("city-b")), LayerSet(1)),
            ],
        ),
    );
    for p in [&mut a_side, &mut b_side] {
        p.set_route(
            addr.clone(),
            route(
                Hop::Trunk(n("county")),
                vec![(Hop::Trunk(n("province")), LayerSet(1))],
            ),
        );
    }
    let cam = "cam";
    let step = |origin: &mut TrunkPlane,
                a_side: &mut TrunkPlane,
                b_side: &mut TrunkPlane,
                prov: &mut TrunkPlane,
                i: u64,
                a_late: bool| {
        origin.send_local_frame(
            cam,
            true,
            LayerId(0),
            3000 * i,
            i.is_multiple_of(4),
            false,
            96,
            codec,
            &[i as u8; 2000],
        );
        let mut outs: Vec<TrunkOutput> = std::iter::from_fn(|| origin.poll_output()).collect();
        for o in outs.drain(..) {
            match o {
                TrunkOutput::Control { to, msg } => {
                    let p = if to == n("city-a") {
                        &mut *a_side
                    } else {
                        &mut *b_side
                    };
                    p.handle_control(now, &n("county"), msg)
                }
                TrunkOutput::Datagram { to, data } => {
                    let p = if to == n("city-a") {
                        &mut *a_side
                    } else {
                        &mut *b_side
                    };
                    p.handle_datagram(now, &n("county"), &data)
                }
                _ => {}
            }
        }
        if a_late {
            carry(b_side, prov, now, |_| false);
            carry(a_side, prov, now, |_| false);
        } else {
            carry(a_side, prov, now, |_| false);
            carry(b_side, prov, now, |_| false);
        }
    };
    step(&mut origin, &mut a_side, &mut b_side, &mut prov, 0, false);
    assert_eq!(
        prov.poll_output(),
        Some(TrunkOutput::NextPathReady(addr.clone()))
    );
    step(&mut origin, &mut a_side, &mut b_side, &mut prov, 1, false);
    assert_eq!(prov.poll_output(), None, "reported once");
    // The router switches: city-a becomes the source; city-b still delivers for a moment.
    prov.set_route(
        addr.clone(),
        route(Hop::Trunk(n("city-a")), vec![(Hop::Local, LayerSet(1))]),
    );
    for i in 2..6 {
        step(&mut origin, &mut a_side, &mut b_side, &mut prov, i, i == 2);
    }
    let frames: Vec<u64> = std::iter::from_fn(|| prov.poll_frame())
        .map(|f| f.time / 3000 % (1 << 20))
        .collect();
    let times: Vec<u64> = frames.iter().map(|t| t % 1000).collect();
    let mut dedup = times.clone();
    dedup.dedup();
    assert_eq!(times, dedup, "no frame twice: {times:?}");
    assert_eq!(times.len(), 6, "{times:?}");
}

#[test]
fn a_route_that_goes_and_comes_back_keeps_its_flows() {
    let now = Instant::now();
    let (mut town, mut city) = (TrunkPlane::new(n("town")), TrunkPlane::new(n("city")));
    let addr = a("town/cam");
    let up = route(Hop::Local, vec![(Hop::Trunk(n("city")), LayerSet(1))]);
    let down = route(Hop::Trunk(n("town")), vec![(Hop::Local, LayerSet(1))]);
    town.set_route(addr.clone(), up.clone());
    city.set_route(addr.clone(), down.clone());
    town.send_local_frame("cam", true, LayerId(0), 0, true, false, 96, codec, &[1; 10]);
    carry(&mut town, &mut city, now, |_| false);
    // A path switch at the city passes through "no route"; the flow id stays announced.
    city.set_route(addr.clone(), Route::default());
    city.set_route(addr.clone(), down);
    town.send_local_frame(
        "cam",
        true,
        LayerId(0),
        3000,
        false,
        false,
        96,
        codec,
        &[2; 10],
    );
    carry(&mut town, &mut city, now, |_| false);
    let frames: Vec<RemoteFrame> = std::iter::from_fn(|| city.poll_frame()).collect();
    assert_eq!(frames.len(), 2);
    assert_eq!(&*frames[1].codec, b"vp8");
}

#[test]
fn a_new_path_running_ahead_loses_nothing_at_the_switch() {
    let now = Instant::now();
    let addr = a("county/cam");
    let mut origin = TrunkPlane::new(n("county"));
    origin.set_route(
        addr.clone(),
        route(
            Hop::Local,
            vec![
                (Hop::Trunk(n("city-a")), LayerSet(1)),
                (Hop::Trunk(n("city-b")), LayerSet(1)),
            ],
        ),
    );
    let (mut ca, mut cb) = (TrunkPlane::new(n("city-a")), TrunkPlane::new(n("city-b")));
    for p in [&mut ca, &mut cb] {
        p.set_route(
            addr.clone(),
            route(
                Hop::Trunk(n("county")),
                vec![(Hop::Trunk(n("province")), LayerSet(1))],
            ),
        );
    }
    let mut prov = TrunkPlane::new(n("province"));
    prov.set_route(
        addr.clone(),
        Route {
            source: Some(Hop::Trunk(n("city-b"))),
            outputs: vec![(Hop::Local, LayerSet(1))],
            next: Some(Hop::Trunk(n("city-a"))),
        },
    );
    for i in 0..4u64 {
        origin.send_local_frame(
            "cam",
            true,
            LayerId(0),
            3000 * i,
            i == 2,
            false,
            96,
            codec,
            &[i as u8; 2000],
        );
        for o in std::iter::from_fn(|| origin.poll_output()).collect::<Vec<_>>() {
            let (to, o) = match o {
                TrunkOutput::Control { to, msg } => (to, Ok(msg)),
                TrunkOutput::Datagram { to, data } => (to, Err(data)),
                _ => continue,
            };
            let p = if to == n("city-a") { &mut ca } else { &mut cb };
            match o {
                Ok(msg) => p.handle_control(now, &n("county"), msg),
                Err(d) => p.handle_datagram(now, &n("county"), &d),
            }
        }
        // City-a (the new path) delivers everything; city-b (the old one) lags behind
        // from frame 2 on.
        carry(&mut ca, &mut prov, now, |_| false);
        if i < 2 {
            carry(&mut cb, &mut prov, now, |_| false);
        }
    }
    assert!(std::iter::from_fn(|| prov.poll_output())
        .any(|o| o == TrunkOutput::NextPathReady(addr.clone())));
    prov.set_route(
        addr.clone(),
        route(Hop::Trunk(n("city-a")), vec![(Hop::Local, LayerSet(1))]),
    );
    carry(&mut cb, &mut prov, now, |_| false); // the old path's late copies: dropped
    let times: Vec<u64> = std::iter::from_fn(|| prov.poll_frame())
        .map(|f| f.time % (1 << 32) / 3000)
        .collect();
    assert_eq!(
        times,
        vec![0, 1, 2, 3],
        "each frame once, none lost at the switch"
    );
}

#[test]
fn a_codec_change_at_the_origin_reaches_the_viewers_side() {
    let now = Instant::now();
    let (mut town, mut county, mut city) = (
        TrunkPlane::new(n("town")),
        TrunkPlane::new(n("county")),
        TrunkPlane::new(n("city")),
    );
    let addr = a("town/cam");
    town.set_route(
        addr.clone(),
        route(Hop::Local, vec![(Hop::Trunk(n("county")), LayerSet(1))]),
    );
    county.set_route(
        addr.clone(),
        route(
            Hop::Trunk(n("town")),
            vec![(Hop::Trunk(n("city")), LayerSet(1))],
        ),
    );
    city.set_route(
        addr.clone(),
        route(Hop::Trunk(n("county")), vec![(Hop::Local, LayerSet(1))]),
    );
    let h264 = || std::sync::Arc::from(&b"h264"[..]);
    for (i, c) in [codec, codec, h264, h264].into_iter().enumerate() {
        let i = i as u64;
        town.send_local_frame(
            "cam",
            true,
            LayerId(0),
            3000 * i,
            i.is_multiple_of(2),
            false,
            96,
            c,
            &[1; 10],
        );
        carry(&mut town, &mut county, now, |_| false);
        carry(&mut county, &mut city, now, |_| false);
    }
    let codecs: Vec<Vec<u8>> = std::iter::from_fn(|| city.poll_frame())
        .map(|f| f.codec.to_vec())
        .collect();
    assert_eq!(
        codecs,
        vec![
            b"vp8".to_vec(),
            b"vp8".to_vec(),
            b"h264".to_vec(),
            b"h264".to_vec()
        ]
    );
}

#[test]
fn sequence_and_timestamp_extension_wraps() {
    assert_eq!(extend16(Some(0x1_fffe), 1), 0x2_0001);
    assert_eq!(extend16(Some(0x2_0001), 0xfffe), 0x1_fffe);
    assert_eq!(extend32(Some(0x1_ffff_fff0), 5), 0x2_0000_0005);
}

#[test]
fn garbage_datagrams_are_counted_not_fatal() {
    let now = Instant::now();
    let mut p = TrunkPlane::new(n("city"));
    for d in [
        &[][..],
        &[0, 1],
        &[0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
    ] {
        p.handle_datagram(now, &n("town"), d);
    }
    p.handle_control(
        now,
        &n("town"),
        Message::Flow {
            flow: 0,
            addr: a("town/cam"),
            video: true,
            layer: LayerId(0),
            codec: vec![],
            repair_ms: 0,
        },
    );
    p.handle_datagram(now, &n("town"), &[0, 0, 0x81, 0, 0, 0]);
    assert!(p.poll_frame().is_none());
    assert!(p.counters().unknown >= 3);
}
