//! Fan-out: a frame for more viewers than a slice reaches every one, in order.

use super::*;

#[test]
fn a_frame_for_more_viewers_than_a_slice_reaches_every_one_in_order() {
    let mut w = World::new();
    let p = w.connected_publisher(1000, &[(MediaKind::Video, Direction::SendOnly)], &[]);
    // Enough viewers for a frame to be written in three slices.
    let viewers: Vec<usize> = (0..2 * MAX_FANOUT_SLICE + 3)
        .map(|i| {
            w.connected_viewer(
                2000 + i as u16,
                &[(MediaKind::Video, Direction::RecvOnly)],
                LayerPref::Auto,
            )
        })
        .collect();
    // Frames of one and of several packets, some written back to back so a frame arrives
    // while the previous one is still being written to its viewers.
    for n in 0..40u64 {
        w.write_vp8(p, n, n == 0);
        if n % 4 != 3 {
            for _ in 0..6 {
                w.step();
            }
        }
    }
    for _ in 0..100 {
        w.step();
    }
    assert_eq!(w.sfu.counters().frames_forwarded, 40 * viewers.len() as u64);
    for &v in &viewers {
        let video = &w.clients[v].video;
        let frames: Vec<u8> = video.iter().map(|d| d.data[6]).collect();
        assert_eq!(
            frames,
            (0..40u8).collect::<Vec<_>>(),
            "viewer {v} got every frame, in order"
        );
        assert!(video.iter().all(|d| d.contiguous));
    }
    assert!(!w.sfu.fanout.pending());
}
