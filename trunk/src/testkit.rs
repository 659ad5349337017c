//! Helpers shared by tests, the simulation and the fuzz target: a tiny seeded random generator
//! and the decoder fuzz body.

use crate::wire::{decode_body, encode, FrameDecoder};

/// A small seeded xorshift64* generator: deterministic runs without a `rand` dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Rng {
        Rng((seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

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
}
