//! Bandwidth estimation glue: a single-layer publisher is told what its viewers can take.

use super::*;

#[test]
fn single_layer_publisher_is_told_what_its_viewers_can_take() {
    let mut w = World::new();
    let p = w.connected_publisher(1000, &[(MediaKind::Video, Direction::SendOnly)], &[]);
    w.run_until("a first REMB", |w| !w.clients[p].remb.is_empty());
    assert_eq!(
        w.clients[p].remb.last(),
        Some(&2_500_000),
        "no viewer yet: the configured most"
    );
    let v = w.connected_viewer(
        2000,
        &[(MediaKind::Video, Direction::RecvOnly)],
        LayerPref::Auto,
    );
    let now = w.now;
    w.clients[v].down_cap = Some((300_000, now, VecDeque::new(), 0));
    // A 1.2 Mbit/s encoder that does not adapt: the viewer's estimate falls to its cap and
    // the publisher is asked for about that.
    for n in 0..300u64 {
        let now = w.now;
        let c = &mut w.clients[p];
        let wr = c.rtc.writer(c.video_mid.unwrap()).unwrap();
        let pt = wr
            .payload_params()
            .find(|p| p.spec().codec == Codec::Vp8)
            .unwrap()
            .pt();
        let mut frame = vec![
            if n % 60 == 0 { 0x10 } else { 0x11 },
            0x02,
            0x00,
            0x9d,
            0x01,
            0x2a,
            0x80,
            0x02,
            0x68,
            0x01,
        ];
        frame.resize(5000, n as u8);
        wr.write(
            pt,
            now,
            MediaTime::new(n * 3000, Frequency::NINETY_KHZ),
            frame,
        )
        .unwrap();
        for _ in 0..6 {
            w.step();
        }
    }
    let last = *w.clients[p].remb.last().unwrap();
    assert!(
        last < 600_000,
        "the publisher's target follows its capped viewer: {last}"
    );
    assert!(last >= 50_000);
}
