//! MAVLink 2 message signing (<https://mavlink.io/en/guide/message_signing.html>), with time
//! passed in.
//!
//! The signature is the first 48 bits of SHA-256 over the 32-byte secret key followed by the
//! frame from its start marker through the checksum, the link id and the 48-bit timestamp (units
//! of 10 µs since 2015-01-01 00:00:00 UTC). The key file holds the secret as 64 hexadecimal
//! characters, the form pymavlink's `setup_signing` takes as bytes.
//!
//! Why not the `mavlink` crate's `signing` feature: its `SigningData` reads the system clock
//! inside, and works on its own connection types; the bridge routes raw frames and checks them in
//! a core that is given the time.

use std::collections::HashMap;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::frame::{Frame, SysId, IFLAG_SIGNED, SIGNATURE_LEN};

/// Unix time of the signing epoch, 2015-01-01 00:00:00 UTC, in seconds.
pub const EPOCH_UNIX_S: u64 = 1_420_070_400;
/// A new stream's first timestamp may lag the local clock by at most this much (one minute, in
/// 10 µs units), as the specification says.
const NEW_STREAM_MAX_LAG: u64 = 60 * 100_000;

/// The 32-byte shared secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(pub [u8; 32]);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<secret>)")
    }
}

impl SigningKey {
    /// Parses 64 hexadecimal characters (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<SigningKey, String> {
        let t = text.trim();
        if t.len() != 64 {
            return Err(format!(
                "a signing key is 64 hexadecimal characters, this one has {}",
                t.len()
            ));
        }
        let bytes = hex::decode(t)
            .map_err(|e| format!("a signing key is 64 hexadecimal characters: {e}"))?;
        let mut k = [0u8; 32];
        k.copy_from_slice(&bytes);
        Ok(SigningKey(k))
    }

    /// Reads a key file.
    pub fn from_file(path: &Path) -> Result<SigningKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        SigningKey::from_hex(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn signature(&self, signed_part: &[u8]) -> [u8; 6] {
        let mut h = Sha256::new();
        h.update(self.0);
        h.update(signed_part);
        let d = h.finalize();
        let mut s = [0u8; 6];
        s.copy_from_slice(&d[..6]);
        s
    }
}

/// Signing timestamp (10 µs units since the signing epoch) of a Unix time in microseconds.
pub fn timestamp_of_unix_us(unix_us: u64) -> u64 {
    unix_us.saturating_sub(EPOCH_UNIX_S * 1_000_000) / 10
}

/// Signs outgoing frames on one link: timestamps strictly increase.
#[derive(Debug, Clone)]
pub struct Signer {
    key: SigningKey,
    link_id: u8,
    last: u64,
}

impl Signer {
    /// A signer with `key` for link `link_id`.
    pub fn new(key: SigningKey, link_id: u8) -> Self {
        Signer {
            key,
            link_id,
            last: 0,
        }
    }

    /// Fills in the signature block of `frame`, a MAVLink 2 frame encoded with room for it
    /// ([`crate::frame::encode_v2`] with `signed`), at Unix time `unix_us`.
    pub fn sign(&mut self, frame: &mut [u8], unix_us: u64) {
        debug_assert!(frame[2] & IFLAG_SIGNED != 0 && frame.len() >= 12 + SIGNATURE_LEN);
        let ts = timestamp_of_unix_us(unix_us).max(self.last + 1);
        self.last = ts;
        let n = frame.len();
        let block = n - SIGNATURE_LEN;
        frame[block] = self.link_id;
        frame[block + 1..block + 7].copy_from_slice(&ts.to_le_bytes()[..6]);
        let sig = self.key.signature(&frame[..n - 6]);
        frame[n - 6..].copy_from_slice(&sig);
    }
}

/// Compares two MACs in time that does not depend on where they differ, so an attacker timing
/// the bridge's answers cannot learn a valid signature byte by byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Why a frame failed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// No signature (MAVLink 1, or MAVLink 2 without the flag).
    Unsigned,
    /// The signature does not match the key.
    BadSignature,
    /// The timestamp is not newer than the stream's last one, or a new stream starts too far in
    /// the past: a replay.
    Replay,
}

/// Verifies incoming signed frames: signature and per-stream timestamps (a stream is link id,
/// system id, component id).
#[derive(Debug, Clone)]
pub struct Verifier {
    key: SigningKey,
    streams: HashMap<(u8, SysId, u8), u64>,
}

impl Verifier {
    /// A verifier with `key`.
    pub fn new(key: SigningKey) -> Self {
        Verifier {
            key,
            streams: HashMap::new(),
        }
    }

    /// Checks `frame` at local Unix time `unix_us`.
    pub fn verify(&mut self, frame: &Frame, unix_us: u64) -> Result<(), Rejected> {
        let Some(block) = frame.signature() else {
            return Err(Rejected::Unsigned);
        };
        let bytes = frame.bytes();
        let sig = self.key.signature(&bytes[..bytes.len() - 6]);
        if !constant_time_eq(&sig, &block[7..13]) {
            return Err(Rejected::BadSignature);
        }
        let mut ts = [0u8; 8];
        ts[..6].copy_from_slice(&block[1..7]);
        let ts = u64::from_le_bytes(ts);
        let key = (block[0], frame.sysid(), frame.compid());
        match self.streams.get(&key) {
            Some(&last) if ts <= last => return Err(Rejected::Replay),
            None if ts + NEW_STREAM_MAX_LAG < timestamp_of_unix_us(unix_us) => {
                return Err(Rejected::Replay)
            }
            _ => {}
        }
        self.streams.insert(key, ts);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_v2, parse_one, tests::heartbeat, Sender};

    const NOW: u64 = 1_800_000_000_000_000;

    fn signed(key: [u8; 32], at: u64) -> Frame {
        let mut f = encode_v2(
            Sender {
                sysid: 1,
                compid: 1,
                seq: 9,
            },
            &heartbeat(),
            true,
        );
        Signer::new(SigningKey(key), 3).sign(&mut f, at);
        parse_one(&f).expect("a signed frame parses")
    }

    #[test]
    fn keys_parse_from_64_hex_characters() {
        let k = SigningKey::from_hex(&format!("{}\n", "ab".repeat(32))).unwrap();
        assert_eq!(k.0, [0xAB; 32]);
        assert!(SigningKey::from_hex("abcd").is_err());
        assert!(SigningKey::from_hex(&"zz".repeat(32)).is_err());
        assert_eq!(format!("{k:?}"), "SigningKey(<secret>)");
    }

    #[test]
    fn good_signatures_pass_and_wrong_keys_replays_and_unsigned_do_not() {
        let mut v = Verifier::new(SigningKey([1; 32]));
        assert_eq!(v.verify(&signed([1; 32], NOW), NOW), Ok(()));
        assert_eq!(v.verify(&signed([1; 32], NOW), NOW), Err(Rejected::Replay));
        assert_eq!(v.verify(&signed([1; 32], NOW + 10), NOW), Ok(()));
        assert_eq!(
            v.verify(&signed([2; 32], NOW + 20), NOW),
            Err(Rejected::BadSignature)
        );
        let unsigned = parse_one(&encode_v2(
            Sender {
                sysid: 1,
                compid: 1,
                seq: 0,
            },
            &heartbeat(),
            false,
        ))
        .unwrap();
        assert_eq!(v.verify(&unsigned, NOW), Err(Rejected::Unsigned));
        // A new stream (another component) starting two minutes ago: a replay.
        let mut f = encode_v2(
            Sender {
                sysid: 1,
                compid: 2,
                seq: 0,
            },
            &heartbeat(),
            true,
        );
        Signer::new(SigningKey([1; 32]), 3).sign(&mut f, NOW - 120_000_000);
        assert_eq!(
            v.verify(&parse_one(&f).unwrap(), NOW),
            Err(Rejected::Replay)
        );
    }

    #[test]
    fn signer_timestamps_strictly_increase() {
        let mut s = Signer::new(SigningKey([1; 32]), 0);
        let mut a = encode_v2(
            Sender {
                sysid: 1,
                compid: 1,
                seq: 0,
            },
            &heartbeat(),
            true,
        );
        let mut b = a.clone();
        s.sign(&mut a, NOW);
        s.sign(&mut b, NOW);
        let mut v = Verifier::new(SigningKey([1; 32]));
        assert_eq!(v.verify(&parse_one(&a).unwrap(), NOW), Ok(()));
        assert_eq!(v.verify(&parse_one(&b).unwrap(), NOW), Ok(()));
    }

    #[test]
    fn a_signature_pymavlink_would_compute() {
        // The signed part is STX..CRC, link id, timestamp: SHA-256(key || that)[..6].
        let f = signed([5; 32], NOW);
        let b = f.bytes();
        let mut h = Sha256::new();
        h.update([5u8; 32]);
        h.update(&b[..b.len() - 6]);
        assert_eq!(&h.finalize()[..6], &b[b.len() - 6..]);
        assert_eq!(b[b.len() - 13], 3, "link id");
    }
}
