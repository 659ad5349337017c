//! Sessions: a viewer joins at a keyframe, loss is repaired both ways, bad offers and junk are
//! refused without harm, a reconnect takes its name over.

use super::*;
use crate::DropReason;

#[test]
fn codec_preference_follows_the_offer() {
    let h264 = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\nm=video 9 UDP/TLS/RTP/SAVPF 108 96\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:108 H264/90000\r\n";
    let vp8 = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 108\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:108 H264/90000\r\n";
    assert!(offer_prefers_h264(h264));
    assert!(!offer_prefers_h264(vp8));
    assert!(!offer_prefers_h264("garbage"));
}

#[test]
fn viewer_gets_publisher_media_starting_at_a_keyframe() {
    let mut w = World::new();
    let av = [
        (MediaKind::Video, Direction::SendOnly),
        (MediaKind::Audio, Direction::SendOnly),
    ];
    let (p, offer, pending) = w.client(1000, &av);
    let now = w.now;
    let answer = w
        .sfu
        .publish(now, name("cam"), subj("off-1"), &offer)
        .unwrap();
    w.accept(p, pending, &answer.sdp);
    w.run_until("publisher connected", |w| w.clients[p].connected);
    assert_eq!(w.live().len(), 1);
    assert_eq!(w.live()[0].video_codec.as_deref(), Some("VP8"));

    // A live encoder: one frame per 30 ms, a keyframe only at the start and when asked.
    let mut n = 0u64;
    let mut answered = 0;
    let mut pump = |w: &mut World, frames: u64| {
        for _ in 0..frames {
            let asked = w.clients[p].keyframe_requests > answered;
            answered = w.clients[p].keyframe_requests;
            w.write_vp8(p, n, n == 0 || asked);
            w.write_opus(p, n);
            n += 1;
            for _ in 0..6 {
                w.step();
            }
        }
    };
    pump(&mut w, 20);

    let rv = [
        (MediaKind::Video, Direction::RecvOnly),
        (MediaKind::Audio, Direction::RecvOnly),
    ];
    let (v, offer, pending) = w.client(2000, &rv);
    let now = w.now;
    let answer = w
        .sfu
        .view(now, &name("cam"), &offer, LayerPref::Auto)
        .unwrap();
    w.accept(v, pending, &answer.sdp);
    for _ in 0..100 {
        pump(&mut w, 1);
        if w.clients[v].video.len() >= 60 {
            break;
        }
    }
    let video = &w.clients[v].video;
    assert!(video.len() >= 60, "viewer got {} frames", video.len());
    assert!(
        video[0].is_keyframe(),
        "the first frame a viewer sees is a keyframe"
    );
    assert!(
        video.iter().all(|d| d.contiguous),
        "no gap after the keyframe"
    );
    assert!(
        w.clients[p].keyframe_requests >= 1,
        "the SFU asked the publisher for a keyframe"
    );
    // Fast join: the keyframe came within a few frames of the viewer connecting.
    assert!(
        n - 20 - video.len() as u64 <= 10,
        "{} frames passed before the viewer's first",
        n - 20 - video.len() as u64
    );
    assert!(
        w.clients[v].audio >= 60,
        "audio is never held back: {}",
        w.clients[v].audio
    );
    assert!(w.sfu.counters().drops(DropReason::WaitingKeyframe) >= 1);
    assert_eq!(w.live()[0].viewers, 1);
}

#[test]
fn loss_is_repaired_by_nack_and_rtx_both_ways() {
    let mut w = World::new();
    let p = w.connected_publisher(1000, &[(MediaKind::Video, Direction::SendOnly)], &[]);
    let v = w.connected_viewer(
        2000,
        &[(MediaKind::Video, Direction::RecvOnly)],
        LayerPref::Auto,
    );

    // 5 % loss on every datagram in both directions, RTCP included, for 150 frames (5 s).
    w.loss = 0.05;
    for n in 0..150u64 {
        w.write_vp8(p, n, n == 0);
        for _ in 0..6 {
            w.step();
        }
    }
    w.loss = 0.0;
    // Two seconds more for the last repairs. At 5 % loss of every datagram, NACKs and
    // retransmissions included, a packet may stay lost after str0m's NACK retries; the
    // media-quality bar is 99 % of packets, so at least 98 % of these two-packet frames.
    for _ in 0..400 {
        w.step();
    }
    let video = &w.clients[v].video;
    let late = w.sfu.counters().drops(DropReason::Late) as usize;
    assert!(video.len() + late <= 150, "no frame delivered twice");
    assert!(
        video.len() >= 147,
        "at least 98 % of frames delivered: {} (+{late} late)",
        video.len()
    );
    let gaps = video.iter().filter(|d| !d.contiguous).count();
    assert!(
        gaps <= 150 - video.len(),
        "a gap only where a frame could not be repaired: {gaps}"
    );
    // The SFU sent them in order: by the sequence numbers it gave them, frames run 0..150.
    // (The test client's own str0m receiver may hand a frame repaired late to the test after
    // the next one; a browser's jitter buffer reorders, so arrival order is not checked.)
    let mut by_seq: Vec<(u64, u8)> = video
        .iter()
        .map(|d| (**d.seq_range.start(), d.data[6]))
        .collect();
    by_seq.sort();
    assert!(
        by_seq.windows(2).all(|p| p[0].1 < p[1].1),
        "sent in order: {by_seq:?}"
    );
    let m = w.sfu.counters();
    assert!(m.nacks_out > 0, "the SFU asked the publisher to repair");
    assert!(m.nacks_in > 0, "the viewer asked the SFU to repair");
}

#[test]
fn conflicts_garbage_and_unknown_streams_are_refused_without_harm() {
    let mut w = World::new();
    let p = w.connected_publisher(1000, &[(MediaKind::Video, Direction::SendOnly)], &[]);

    let (_, offer2, _) = w.client(1001, &[(MediaKind::Video, Direction::SendOnly)]);
    let now = w.now;
    assert!(matches!(
        w.sfu.publish(now, name("cam"), subj("off-2"), &offer2),
        Err(SfuError::Conflict { holder }) if holder.as_str() == "off-1"
    ));
    assert!(matches!(
        w.sfu.view(now, &name("nope"), &offer2, LayerPref::Auto),
        Err(SfuError::NotLive)
    ));
    assert!(matches!(
        w.sfu.publish(now, name("x"), subj("x"), "v=0\r\ngarbage"),
        Err(SfuError::BadSdp(_))
    ));

    let peers_before = w.sfu.peer_count();
    let junk: [&[u8]; 4] = [
        &[],
        &[0xff; 3],
        &[0x00, 0x01, 0x00, 0x50],
        &[0x16, 0xfe, 0xfd, 0, 0],
    ];
    for j in junk {
        w.sfu.handle_receive(now, "10.9.9.9:9".parse().unwrap(), j);
    }
    assert_eq!(
        w.sfu.peer_count(),
        peers_before,
        "no session harmed by junk"
    );
    assert!(
        w.sfu.counters().drops(DropReason::Malformed)
            + w.sfu.counters().drops(DropReason::UnknownSource)
            >= 4
    );
    // The publisher keeps working.
    w.write_vp8(p, 0, true);
    w.step();
    assert!(w.clients[p].connected);
}

#[test]
fn same_owner_reconnect_takes_over_the_name() {
    let mut w = World::new();
    let (p1, offer, pending) = w.client(1000, &[(MediaKind::Video, Direction::SendOnly)]);
    let now = w.now;
    let a = w
        .sfu
        .publish(now, name("cam"), subj("off-1"), &offer)
        .unwrap();
    w.accept(p1, pending, &a.sdp);
    w.run_until("first publisher connected", |w| w.clients[p1].connected);
    let (p2, offer, pending) = w.client(1001, &[(MediaKind::Video, Direction::SendOnly)]);
    let now = w.now;
    let b = w
        .sfu
        .publish(now, name("cam"), subj("off-1"), &offer)
        .unwrap();
    w.accept(p2, pending, &b.sdp);
    w.run_until("second publisher connected", |w| w.clients[p2].connected);
    assert_eq!(w.sfu.peer_count(), 1, "the displaced session is gone");
    assert!(matches!(
        w.sfu.close_session(w.now, &a.session_id),
        Err(SfuError::NoSession)
    ));
    w.sfu.close_session(w.now, &b.session_id).unwrap();
    assert!(w.live().is_empty());
}
