//! Helpers shared by tests and the fuzz targets (`fuzz/`): the bodies of the decoder and router
//! fuzz targets, and the simulation's seeded generator ([`Rng`], from [`crate::sim`]).
//!
//! Compiled only for this crate's tests and with the feature `testkit` (the fuzz crate's and
//! other crates' tests turn it on), so it is not part of a release build of the node.

use crate::wire::{decode_body, encode, FrameDecoder};

/// The simulation's seeded generator, for tests that need random input.
pub use crate::sim::Rng;

/// Fuzz body: `data` as bytes of a trunk control stream, fed in two uneven pieces. Must never
/// panic, and whatever decodes must re-encode to a frame that decodes to the same message. Used
/// by `fuzz/fuzz_targets/trunk_decode.rs` and by a seeded unit test.
pub fn fuzz_decode(data: &[u8]) {
    let _ = decode_body(data);
    let mut d = FrameDecoder::new();
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    for piece in [&data[..split], &data[split..]] {
        d.push(piece);
        for _ in 0..=data.len() {
            match d.next_message() {
                Ok(Some(m)) => {
                    let frame = encode(&m);
                    let again = decode_body(&frame[4..]);
                    assert_eq!(
                        again.as_ref().ok(),
                        Some(&m),
                        "re-encoding changed the message"
                    );
                }
                Ok(None) => break,
                Err(crate::DecodeError::FrameTooLarge(_)) => return,
                Err(_) => {}
            }
        }
    }
}

/// Fuzz body: `data` as a script of inputs to one router (`county` with parents `city-a`,
/// `city-b`, peer `county-9`, children `township-0..2`): trunks up and down, control messages
/// from them (well-formed or decoded from the raw bytes), viewers, publishers, time passing.
/// Must never panic, and every output must make sense: messages only on trunks that are up,
/// routes never sending a stream back to its source. Used by `fuzz/fuzz_targets/trunk_router.rs`
/// and by a seeded unit test.
pub fn fuzz_router(data: &[u8]) {
    use crate::ids::{LayerId, LayerSet, NodeName, StreamAddr, StreamName, ViewerId};
    use crate::router::{Hop, Output, Router, RouterConfig};
    use crate::wire::{CatalogEntry, FailReason, Message};
    use std::collections::BTreeSet;
    use std::time::{Duration, Instant};

    let name = |s: &str| NodeName::parse(s).expect("valid");
    let peers = [
        "city-a",
        "city-b",
        "county-9",
        "township-0",
        "township-1",
        "township-2",
    ]
    .map(name);
    let addrs: Vec<StreamAddr> = [
        "township-0/cam",
        "township-1/cam",
        "county/own",
        "elsewhere/x",
        "county-9/y",
    ]
    .iter()
    .map(|a| StreamAddr::parse(a).expect("valid"))
    .collect();
    let mut cfg = RouterConfig::new(name("county"));
    cfg.parents = vec![name("city-a"), name("city-b")];
    cfg.peers = vec![name("county-9")];
    cfg.grace = Duration::from_millis(500);
    let mut r = Router::new(cfg);
    let t0 = Instant::now();
    let mut now = t0;
    let mut up: BTreeSet<NodeName> = BTreeSet::new();
    let mut i = 0;
    let byte = |i: &mut usize| -> u8 {
        let b = data.get(*i).copied().unwrap_or(0);
        *i += 1;
        b
    };
    while i < data.len() {
        let op = byte(&mut i);
        let p = peers[usize::from(byte(&mut i)) % peers.len()].clone();
        let a = addrs[usize::from(byte(&mut i)) % addrs.len()].clone();
        let l = LayerSet(byte(&mut i));
        match op % 16 {
            0 => {
                r.trunk_up(now, p.clone());
                up.insert(p);
            }
            1 => {
                r.trunk_down(now, &p);
                up.remove(&p);
            }
            2 => r.handle_message(
                now,
                &p,
                Message::Announce(vec![CatalogEntry {
                    addr: a,
                    layers: l,
                    cost: u16::from(l.0),
                }]),
            ),
            3 => r.handle_message(now, &p, Message::Withdraw(vec![a])),
            4 => r.handle_message(now, &p, Message::Subscribe { addr: a, layers: l }),
            5 => r.handle_message(now, &p, Message::Unsubscribe { addr: a }),
            6 => r.handle_message(now, &p, Message::Subscribed { addr: a }),
            7 => {
                let reason = if l.0.is_multiple_of(2) {
                    FailReason::NotFound
                } else {
                    FailReason::NoRoute
                };
                r.handle_message(now, &p, Message::SubscribeFailed { addr: a, reason });
            }
            8 => r.handle_message(
                now,
                &p,
                Message::KeyframeRequest {
                    addr: a,
                    layer: LayerId(l.0 % 8),
                },
            ),
            9 => r.subscribe(now, ViewerId(u64::from(l.0 % 4)), a, l),
            10 => r.unsubscribe(now, ViewerId(u64::from(l.0 % 4)), &a),
            11 => r.publish(
                now,
                StreamName::parse(["own", "cam"][usize::from(l.0 % 2)]).expect("valid"),
                l,
            ),
            12 => r.unpublish(now, &StreamName::parse("own").expect("valid")),
            13 => {
                now += Duration::from_millis(u64::from(l.0) * 10);
                r.handle_timeout(now);
            }
            14 => r.next_path_ready(now, &a),
            _ => {
                // Raw bytes as a frame body from this peer.
                let n = usize::from(l.0 % 32);
                let body: Vec<u8> = (0..n).map(|_| byte(&mut i)).collect();
                if let Ok(m) = decode_body(&body) {
                    r.handle_message(now, &p, m);
                }
            }
        }
        while let Some(out) = r.poll_output() {
            match out {
                Output::Send { trunk, .. } => assert!(
                    up.contains(&trunk),
                    "message on a trunk that is down: {trunk}"
                ),
                Output::Route { addr, route } => {
                    if let Some(Hop::Trunk(src)) = &route.source {
                        assert!(
                            !route
                                .outputs
                                .iter()
                                .any(|(h, _)| *h == Hop::Trunk(src.clone())),
                            "{addr} sent back to its source {src}: {route:?}"
                        );
                        assert!(up.contains(src), "source {src} of {addr} is down");
                    }
                }
                _ => {}
            }
        }
        if let Some(t) = r.poll_timeout() {
            assert!(t <= now + Duration::from_secs(3), "timer too far ahead");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{LayerSet, StreamAddr};
    use crate::wire::Message;

    #[test]
    fn random_bytes_and_mutated_frames_never_panic() {
        let mut rng = Rng::new(7);
        let valid: Vec<u8> = [
            Message::Subscribe {
                addr: StreamAddr::parse("township-3/off-12").unwrap(),
                layers: LayerSet(3),
            },
            Message::Withdraw(vec![StreamAddr::parse("a/b").unwrap()]),
        ]
        .iter()
        .flat_map(encode)
        .collect();
        for round in 0..20_000 {
            let mut m = if round % 2 == 0 {
                valid.clone()
            } else {
                let n = rng.below(300) as usize;
                (0..n).map(|_| rng.next_u64() as u8).collect()
            };
            for _ in 0..rng.below(4) {
                if !m.is_empty() {
                    let i = rng.below(m.len() as u64) as usize;
                    m[i] = rng.next_u64() as u8;
                }
            }
            if round % 5 == 0 && m.len() > 4 {
                // Keep the length prefix plausible so bodies get decoded.
                let n = (m.len() - 4) as u32;
                m[..4].copy_from_slice(&n.to_be_bytes());
            }
            fuzz_decode(&m);
        }
    }

    #[test]
    fn random_router_inputs_never_panic_and_outputs_stay_sane() {
        let mut rng = Rng::new(11);
        for _ in 0..3000 {
            let n = 4 * (1 + rng.below(60) as usize);
            let script: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            fuzz_router(&script);
        }
    }
}
