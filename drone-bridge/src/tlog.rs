//! `.tlog` recording: every frame the bridge accepted, as MAVProxy and QGroundControl write it —
//! an 8-byte big-endian Unix timestamp in microseconds, then the raw frame — one file per run,
//! `DIR/drone-bridge-UNIXSECONDS.tlog`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Flush at least this often.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// An open tlog.
#[derive(Debug)]
pub struct Tlog {
    path: PathBuf,
    out: BufWriter<File>,
    last_flush: Instant,
}

impl Tlog {
    /// Creates `dir` if needed and a new file in it named after `unix_s`.
    pub fn create(dir: &Path, unix_s: u64) -> std::io::Result<Tlog> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("drone-bridge-{unix_s}.tlog"));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        Ok(Tlog {
            path,
            out: BufWriter::new(file),
            last_flush: Instant::now(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record.
    pub fn record(&mut self, unix_us: u64, frame: &[u8]) -> std::io::Result<()> {
        self.out.write_all(&unix_us.to_be_bytes())?;
        self.out.write_all(frame)?;
        if self.last_flush.elapsed() >= FLUSH_EVERY {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.last_flush = Instant::now();
        self.out.flush()
    }
}

/// Reads a tlog back: (timestamp µs, frame) pairs (tests and tools).
pub fn read(bytes: &[u8]) -> Vec<(u64, crate::frame::Frame)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 < bytes.len() {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&bytes[at..at + 8]);
        let mut d = crate::frame::FrameDecoder::new();
        let end = (at + 8 + crate::frame::MAX_FRAME_LEN).min(bytes.len());
        d.push(&bytes[at + 8..end]);
        let Some(f) = d.next_frame() else { break };
        if d.stats().garbage_bytes > 0 {
            break;
        }
        at += 8 + f.bytes().len();
        out.push((u64::from_be_bytes(ts), f));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back() {
        let dir = std::env::temp_dir().join(format!("tlog-test-{}", std::process::id()));
        let (_, frames) = crate::frame::tests::captured();
        let mut t = Tlog::create(&dir, 1).unwrap();
        for (i, f) in frames.iter().enumerate() {
            t.record(1_000 + i as u64, f).unwrap();
        }
        t.flush().unwrap();
        let back = read(&std::fs::read(t.path()).unwrap());
        assert_eq!(back.len(), frames.len());
        assert_eq!(back[3].0, 1_003);
        assert_eq!(back[3].1.bytes(), &frames[3][..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
