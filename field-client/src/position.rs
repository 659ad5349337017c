//! Where positions come from (`--position`) and how they reach the node.
//!
//! A source task ([`spawn_source`]) writes the newest [`Fix`] into a `watch` channel; the reporter
//! ([`report`]) sends it as a `position` message, at most once per second, and only when a new
//! fix came in (`fixed:` renews its fix every second). Positions are best effort by design of the
//! protocol: while the link is down they are dropped, since a stale position is worth nothing.
//!
//! No `time` is sent: the node stamps each report on receipt, which is within a second of the
//! fix here, and a recorded NMEA file replayed later would otherwise show old times.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use signaling::proto::Position;
#[cfg(feature = "app")]
use signaling::{
    client::{Client, ClientError},
    proto::ClientMsg,
};
#[cfg(feature = "app")]
use tokio::{io::AsyncReadExt as _, sync::watch};
#[cfg(feature = "app")]
use tracing::{debug, warn};

use crate::gpsd;
#[cfg(feature = "app")]
use crate::{nmea, output::Output};

/// Reports go out at most this often.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// How long to wait before reading a regular NMEA file again after reaching its end.
#[cfg(feature = "app")]
const TAIL_POLL: Duration = Duration::from_millis(250);

/// One position fix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fix {
    /// Degrees, −90..=90.
    pub lat: f64,
    /// Degrees, −180..=180.
    pub lon: f64,
    /// Metres above mean sea level.
    pub alt: Option<f64>,
    /// Horizontal accuracy, metres.
    pub accuracy: Option<f64>,
    /// Degrees clockwise from true north, 0..360.
    pub heading: Option<f64>,
    /// Ground speed, m/s.
    pub speed: Option<f64>,
}

impl Fix {
    /// The protocol's `position` body (without `time`: the node stamps it).
    pub fn to_proto(&self) -> Position {
        Position {
            lat: self.lat,
            lon: self.lon,
            alt: self.alt,
            accuracy: self.accuracy,
            heading: self.heading.map(|h| h.rem_euclid(360.0)),
            speed: self.speed,
            time: None,
        }
    }
}

/// `--position`: where fixes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum PositionSource {
    /// `fixed:LAT,LON`: a fixed point, reported every second.
    Fixed(Fix),
    /// `nmea:PATH`: NMEA 0183 sentences from a file (followed as it grows) or a FIFO (reopened
    /// when its writer goes away), e.g. a serial GPS's device node.
    Nmea(PathBuf),
    /// `gpsd` (localhost:2947) or `gpsd:HOST:PORT`: TPV reports from a gpsd daemon.
    Gpsd(String),
}

impl FromStr for PositionSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("fixed:") {
            let (lat, lon) = rest
                .split_once(',')
                .ok_or_else(|| format!("fixed position {rest:?}: expected LAT,LON in degrees"))?;
            let parse = |v: &str, what: &str| {
                v.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("fixed position: {what} {v:?} is not a number"))
            };
            let fix = Fix {
                lat: parse(lat, "latitude")?,
                lon: parse(lon, "longitude")?,
                alt: None,
                accuracy: None,
                heading: None,
                speed: None,
            };
            fix.to_proto()
                .validate()
                .map_err(|e| format!("fixed position: {e}"))?;
            Ok(PositionSource::Fixed(fix))
        } else if let Some(path) = s.strip_prefix("nmea:") {
            if path.is_empty() {
                return Err("nmea: needs a path (nmea:/dev/ttyUSB0, nmea:track.nmea)".into());
            }
            Ok(PositionSource::Nmea(PathBuf::from(path)))
        } else if s == "gpsd" {
            Ok(PositionSource::Gpsd(gpsd::DEFAULT_ADDR.to_owned()))
        } else if let Some(addr) = s.strip_prefix("gpsd:") {
            Ok(PositionSource::Gpsd(addr.to_owned()))
        } else {
            Err(format!(
                "unknown position source {s:?} (fixed:LAT,LON, nmea:PATH or gpsd)"
            ))
        }
    }
}

#[cfg(feature = "app")]
/// The newest fix, as the source tasks publish it.
pub type FixSender = watch::Sender<Option<Fix>>;

#[cfg(feature = "app")]
/// Starts the task that reads `source` into a channel; the reporter reads the other end.
pub fn spawn_source(
    source: PositionSource,
    out: Output,
) -> (tokio::task::JoinHandle<()>, watch::Receiver<Option<Fix>>) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        match source {
            PositionSource::Fixed(fix) => fixed(fix, tx).await,
            PositionSource::Nmea(path) => nmea_file(path, tx, out).await,
            PositionSource::Gpsd(addr) => gpsd::follow(addr, tx, out).await,
        }
    });
    (task, rx)
}

#[cfg(feature = "app")]
async fn fixed(fix: Fix, tx: FixSender) {
    let mut every = tokio::time::interval(REPORT_EVERY);
    loop {
        every.tick().await;
        tx.send_replace(Some(fix));
        if tx.is_closed() {
            return;
        }
    }
}

#[cfg(feature = "app")]
/// Reads NMEA sentences from `path` for as long as the client runs.
async fn nmea_file(path: PathBuf, tx: FixSender, out: Output) {
    let mut builder = nmea::FixBuilder::new();
    let mut decoder = nmea::LineDecoder::new();
    let mut bad = 0u64;
    let mut buf = vec![0u8; 4096];
    'open: loop {
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => {
                out.warning(&format!(
                    "cannot open NMEA source {}: {e}; running without positions",
                    path.display()
                ));
                return;
            }
        };
        let is_fifo = is_fifo(&file).await;
        loop {
            match file.read(&mut buf).await {
                Ok(0) if is_fifo => continue 'open, // the writer went away: wait for the next
                Ok(0) => tokio::time::sleep(TAIL_POLL).await, // follow a growing file
                Ok(n) => {
                    decoder.push(&buf[..n]);
                    while let Some(line) = decoder.next_line() {
                        if line.is_empty() {
                            continue;
                        }
                        match nmea::parse(&line) {
                            Ok(Some(s)) => {
                                if let Some(fix) = builder.update(&s) {
                                    tx.send_replace(Some(fix));
                                }
                            }
                            Ok(None) => {}
                            Err(e) => {
                                bad += 1;
                                if bad == 1 {
                                    out.warning(&format!(
                                        "ignoring unusable NMEA input from {} ({e}); further ones are only logged",
                                        path.display()
                                    ));
                                } else {
                                    debug!(%e, "ignoring NMEA sentence");
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    out.warning(&format!(
                        "reading NMEA source {} failed: {e}; running without positions",
                        path.display()
                    ));
                    return;
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    }
}

#[cfg(feature = "app")]
#[cfg(unix)]
async fn is_fifo(file: &tokio::fs::File) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    file.metadata()
        .await
        .is_ok_and(|m| m.file_type().is_fifo() || m.file_type().is_char_device())
}

#[cfg(feature = "app")]
#[cfg(not(unix))]
async fn is_fifo(_file: &tokio::fs::File) -> bool {
    false
}

#[cfg(feature = "app")]
/// Sends each new fix to the node, at most once per [`REPORT_EVERY`]. Ends when the source ends
/// or the client is closed.
pub async fn report(client: Client, mut rx: watch::Receiver<Option<Fix>>) {
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        let fix = *rx.borrow_and_update();
        if let Some(fix) = fix {
            match client.send(ClientMsg::Position {
                id: None,
                pos: fix.to_proto(),
            }) {
                Ok(()) | Err(ClientError::Disconnected) => {}
                Err(ClientError::Closed) => return,
                Err(e) => warn!(%e, "position not sent"),
            }
        }
        // Rate limit, not synchronisation: newer fixes replace one another meanwhile.
        tokio::time::sleep(REPORT_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_sources_parse() {
        match "fixed:30.59,114.30".parse::<PositionSource>().unwrap() {
            PositionSource::Fixed(f) => assert_eq!((f.lat, f.lon), (30.59, 114.30)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            "nmea:/dev/ttyUSB0".parse::<PositionSource>().unwrap(),
            PositionSource::Nmea("/dev/ttyUSB0".into())
        );
        assert_eq!(
            "gpsd".parse::<PositionSource>().unwrap(),
            PositionSource::Gpsd("localhost:2947".into())
        );
        assert_eq!(
            "gpsd:10.0.0.2:2947".parse::<PositionSource>().unwrap(),
            PositionSource::Gpsd("10.0.0.2:2947".into())
        );
        for bad in [
            "fixed:91,0",
            "fixed:30.5",
            "fixed:a,b",
            "nmea:",
            "glonass",
            "",
        ] {
            assert!(bad.parse::<PositionSource>().is_err(), "{bad}");
        }
    }

    #[cfg(feature = "app")]
    #[tokio::test]
    async fn a_sentence_with_a_non_ascii_address_does_not_stop_positions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("track.nmea");
        let sentence = |body: &str| {
            let sum = body.bytes().fold(0u8, |a, b| a ^ b);
            format!("${body}*{sum:02X}")
        };
        std::fs::write(
            &path,
            format!(
                "{}\n{}\n",
                sentence("G\u{e9}MC,1,A,4807.038,N,01131.000,E,0,0,230394,,"),
                sentence("GPRMC,2,A,3035.400,N,11418.000,E,0,0,261126,,")
            ),
        )
        .unwrap();
        let (task, mut rx) = spawn_source(PositionSource::Nmea(path), Output::new(false));
        let fix = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if rx.changed().await.is_err() {
                    return None;
                }
                if let Some(f) = *rx.borrow_and_update() {
                    return Some(f);
                }
            }
        })
        .await
        .expect("a fix within 10 s");
        assert!(!task.is_finished(), "the position task ended");
        let fix = fix.expect("the position task ended before the good sentence");
        assert!((fix.lat - 30.59).abs() < 1e-6, "{fix:?}");
        task.abort();
    }

    #[cfg(feature = "app")]
    #[tokio::test]
    async fn a_growing_nmea_file_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("track.nmea");
        let sentence = |body: &str| {
            let sum = body.bytes().fold(0u8, |a, b| a ^ b);
            format!("${body}*{sum:02X}")
        };
        std::fs::write(
            &path,
            sentence("GPRMC,1,A,4807.038,N,01131.000,E,0,0,230394,,") + "\n",
        )
        .unwrap();
        let (_task, mut rx) = spawn_source(PositionSource::Nmea(path.clone()), Output::new(false));
        let first = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                rx.changed().await.unwrap();
                if let Some(f) = *rx.borrow_and_update() {
                    return f;
                }
            }
        })
        .await
        .expect("first fix");
        assert!((first.lat - 48.1173).abs() < 1e-3, "{first:?}");
        // Appended lines are read too; a bad checksum is skipped, not fatal.
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(f, "$GPRMC,2,A,3035.400,N,11418.000,E,0,0,261126,,*00").unwrap();
        writeln!(
            f,
            "{}",
            sentence("GPRMC,3,A,3035.400,N,11418.000,E,0,0,261126,,")
        )
        .unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                rx.changed().await.unwrap();
                if let Some(f) = *rx.borrow_and_update() {
                    if (f.lat - 30.59).abs() < 1e-6 {
                        return f;
                    }
                }
            }
        })
        .await
        .expect("fix from the appended line");
        assert!((next.lon - 114.30).abs() < 1e-6);
    }
}
