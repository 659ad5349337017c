//! A time code in the picture, for glass-to-glass latency: `run --source test` paints the
//! capture time into each frame's top rows, `watch` reads it back from the decoded frame and
//! reports how old the frame is (sender and viewer on one clock: the same machine, or machines
//! kept in step by NTP/PTP).
//!
//! The code is 32 blocks across the full width of the top eighth of the luma plane (I420/NV12):
//! 24 bits of Unix milliseconds (modulo 2²⁴, about 4.6 hours) and an 8-bit check, most
//! significant bit first, white (235) for 1 and black (16) for 0. Blocks are big enough (1/32 of
//! the width, 1/8 of the height) to survive scaling to the smallest simulcast layer and a low
//! bitrate; the reader samples the middle half of each block and refuses a code whose check fails.

/// Bits in the code.
const BITS: usize = 32;
/// The code covers this fraction of the height (1/N).
const HEIGHT_DIV: usize = 8;
/// Milliseconds wrap at 2²⁴.
const MS_MASK: u64 = (1 << 24) - 1;

fn check(ms24: u32) -> u32 {
    let b = ms24.to_be_bytes();
    u32::from((b[1] ^ b[2] ^ b[3]) ^ 0xA5)
}

/// Paints `unix_ms` into the luma plane `y` (`width`×`height`, `stride` bytes per row).
pub fn paint(y: &mut [u8], width: usize, height: usize, stride: usize, unix_ms: u64) {
    let ms24 = (unix_ms & MS_MASK) as u32;
    let code = (ms24 << 8) | check(ms24);
    let rows = (height / HEIGHT_DIV).max(1);
    for row in 0..rows.min(height) {
        let line = &mut y[row * stride..row * stride + width];
        for (x, px) in line.iter_mut().enumerate() {
            let bit = x * BITS / width;
            *px = if code >> (BITS - 1 - bit) & 1 == 1 {
                235
            } else {
                16
            };
        }
    }
}

/// Reads the code from a luma plane; `None` when there is none (or it is damaged).
pub fn read(y: &[u8], width: usize, height: usize, stride: usize) -> Option<u32> {
    let rows = (height / HEIGHT_DIV).max(1);
    if width < BITS || rows < 2 || y.len() < rows * stride {
        return None;
    }
    let mut code = 0u32;
    for bit in 0..BITS {
        let (x0, x1) = (bit * width / BITS, (bit + 1) * width / BITS);
        let (bx0, bx1) = (x0 + (x1 - x0) / 4, x1 - (x1 - x0) / 4);
        let (by0, by1) = (rows / 4, rows - rows / 4);
        let (mut sum, mut n) = (0u64, 0u64);
        for row in by0..by1.max(by0 + 1) {
            for px in &y[row * stride + bx0..row * stride + bx1.max(bx0 + 1)] {
                sum += u64::from(*px);
                n += 1;
            }
        }
        code = (code << 1) | u32::from(sum / n.max(1) > 125);
    }
    let ms24 = code >> 8;
    (check(ms24) == code & 0xFF).then_some(ms24)
}

/// How old a frame stamped `stamp` (from [`read`]) is at `now_unix_ms`, in ms; `None` when
/// implausible (more than a minute, or from the future: clocks not in step).
pub fn age_ms(stamp: u32, now_unix_ms: u64) -> Option<u64> {
    let now = now_unix_ms & MS_MASK;
    let age = now.wrapping_sub(u64::from(stamp)) & MS_MASK;
    (age < 60_000).then_some(age)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_painted_code_reads_back_at_every_layer_size() {
        for (w, h) in [(640, 480), (320, 240), (160, 120), (1280, 720)] {
            let stride = w + 16;
            let mut y = vec![128u8; stride * h];
            paint(&mut y, w, h, stride, 1_795_729_760_165);
            let stamp = read(&y, w, h, stride).unwrap_or_else(|| panic!("{w}x{h}"));
            assert_eq!(u64::from(stamp), 1_795_729_760_165 & MS_MASK);
            assert_eq!(age_ms(stamp, 1_795_729_760_165 + 87), Some(87));
        }
    }

    #[test]
    fn no_code_no_reading() {
        let (w, h) = (640, 480);
        assert_eq!(read(&vec![128u8; w * h], w, h, w), None);
        assert_eq!(
            read(&vec![16u8; w * h], w, h, w),
            None,
            "all zero bits fail the check"
        );
        let mut y = vec![0u8; w * h];
        paint(&mut y, w, h, w, 42);
        // One block flipped: the check catches it.
        for row in 0..h / 8 {
            for px in &mut y[row * w + 100..row * w + 120] {
                *px = 255 - *px;
            }
        }
        assert_eq!(read(&y, w, h, w), None);
    }

    #[test]
    fn ages_wrap_and_refuse_the_future() {
        assert_eq!(age_ms(((1u64 << 24) - 10) as u32, 1 << 24), Some(10));
        assert_eq!(age_ms(100, 90), None);
    }
}
