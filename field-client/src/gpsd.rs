//! Positions from gpsd (`--position gpsd`): its JSON protocol on TCP port 2947.
//!
//! The client sends `?WATCH={"enable":true,"json":true}` and reads one JSON object per line;
//! `TPV` objects with a 2D or 3D fix (`mode` ≥ 2) become [`Fix`]es. When gpsd is not running the
//! client says so once and keeps running without positions, trying again every 10 s. A line over
//! [`MAX_LINE`] bytes is treated the same way: the connection is dropped with that reason.

#[cfg(feature = "app")]
use std::time::Duration;

use serde_json::Value;
#[cfg(feature = "app")]
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
#[cfg(feature = "app")]
use tokio::net::TcpStream;
#[cfg(feature = "app")]
use tracing::debug;

#[cfg(feature = "app")]
use crate::output::Output;
use crate::position::Fix;
#[cfg(feature = "app")]
use crate::position::FixSender;

/// Where gpsd listens by default.
pub const DEFAULT_ADDR: &str = "localhost:2947";

/// The command that turns on JSON reports.
pub const WATCH: &[u8] = b"?WATCH={\"enable\":true,\"json\":true}\n";

#[cfg(feature = "app")]
/// Between attempts to reach gpsd.
const RETRY: Duration = Duration::from_secs(10);

#[cfg(feature = "app")]
/// Bound of one connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest line read from gpsd, newline included; a longer one ends the connection (as a lost
/// gpsd: warned, retried every 10 s). gpsd's own reports, `SKY` with every satellite included,
/// stay far below it; the cap bounds the memory a peer that is not gpsd can make us hold.
pub const MAX_LINE: usize = 64 * 1024;

/// The fix in one line of gpsd output, if it is a `TPV` report with a usable position.
pub fn parse_tpv(line: &str) -> Option<Fix> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v["class"] != "TPV" || v["mode"].as_u64().unwrap_or(0) < 2 {
        return None;
    }
    let num = |k: &str| v[k].as_f64().filter(|x| x.is_finite());
    let fix = Fix {
        lat: num("lat")?,
        lon: num("lon")?,
        // gpsd ≥ 3.20 says altMSL; older ones put MSL altitude in alt.
        alt: num("altMSL").or_else(|| num("alt")),
        accuracy: num("eph").filter(|a| *a >= 0.0),
        heading: num("track")
            .filter(|t| (0.0..=360.0).contains(t))
            .map(|t| t % 360.0),
        speed: num("speed").filter(|s| *s >= 0.0),
    };
    fix.to_proto().validate().ok()?;
    Some(fix)
}

/// The fuzz target's body (`fuzz/fuzz_targets/gpsd.rs`): `data` as gpsd's output, one JSON object
/// a line. Every line is read or skipped cleanly (never a panic), and every fix taken from it is a
/// valid `position`.
pub fn fuzz_parse(data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line);
        if let Some(fix) = parse_tpv(line.trim_end_matches('\r')) {
            if let Err(e) = fix.to_proto().validate() {
                panic!("{line:?} gave an invalid position {fix:?}: {e}");
            }
        }
    }
}

#[cfg(feature = "app")]
/// Follows gpsd at `addr` until the receiving end of `tx` is gone.
pub async fn follow(addr: String, tx: FixSender, out: Output) {
    let mut warned = false;
    loop {
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await;
        match connected {
            Ok(Ok(stream)) => {
                if warned {
                    out.note(&format!("connected to gpsd at {addr}; reporting positions"));
                }
                let why = watch(stream, &tx).await;
                if tx.is_closed() {
                    return;
                }
                out.warning(&format!(
                    "lost gpsd at {addr} ({why}); running without positions, retrying every {} s",
                    RETRY.as_secs()
                ));
                warned = true;
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer".to_owned(),
                };
                if !warned {
                    out.warning(&format!(
                        "gpsd is not running at {addr} ({why}); running without positions, retrying every {} s",
                        RETRY.as_secs()
                    ));
                    warned = true;
                } else {
                    debug!(%addr, %why, "gpsd still unreachable");
                }
            }
        }
        tokio::time::sleep(RETRY).await;
        if tx.is_closed() {
            return;
        }
    }
}

#[cfg(feature = "app")]
/// Reads one gpsd connection; returns why it ended.
async fn watch(mut stream: TcpStream, tx: &FixSender) -> String {
    if let Err(e) = stream.write_all(WATCH).await {
        return e.to_string();
    }
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        // At most one byte past the cap is read into `line`, whatever the peer sends.
        let limit = MAX_LINE as u64 + 1;
        match (&mut reader).take(limit).read_until(b'\n', &mut line).await {
            Ok(0) => return "gpsd closed the connection".to_owned(),
            Ok(_) if line.len() > MAX_LINE => {
                return format!(
                    "it sent a line longer than {} KiB, which gpsd never does",
                    MAX_LINE / 1024
                )
            }
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                if let Some(fix) = parse_tpv(text.trim_end_matches(['\r', '\n'])) {
                    tx.send_replace(Some(fix));
                }
                if tx.is_closed() {
                    return "stopped".to_owned();
                }
            }
            Err(e) => return e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TPV: &str = r#"{"class":"TPV","device":"/dev/ttyUSB0","mode":3,"time":"2026-11-26T19:00:00.000Z","lat":30.5928,"lon":114.3055,"altMSL":23.5,"eph":4.2,"track":359.99,"speed":1.25}"#;

    #[test]
    fn tpv_reports_become_fixes() {
        let fix = parse_tpv(TPV).unwrap();
        assert_eq!(
            (fix.lat, fix.lon, fix.alt, fix.accuracy),
            (30.5928, 114.3055, Some(23.5), Some(4.2))
        );
        assert_eq!((fix.heading, fix.speed), (Some(359.99), Some(1.25)));
        // No fix yet, other classes, junk and out-of-range values are skipped.
        assert_eq!(parse_tpv(r#"{"class":"TPV","mode":1}"#), None);
        assert_eq!(parse_tpv(r#"{"class":"SKY","satellites":[]}"#), None);
        assert_eq!(
            parse_tpv(r#"{"class":"TPV","mode":2,"lat":95,"lon":0}"#),
            None
        );
        assert_eq!(parse_tpv("not json"), None);
        // Older gpsd: altitude in alt.
        let old = parse_tpv(r#"{"class":"TPV","mode":3,"lat":1,"lon":2,"alt":7}"#).unwrap();
        assert_eq!(old.alt, Some(7.0));
    }

    #[test]
    fn the_fuzz_body_holds_on_seeded_garbage_and_mutated_reports() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        };
        let alphabet = b"{}[]:,\"0123456789.-+eE truefalsnul\\";
        for round in 0..2000 {
            let mut data = format!("{TPV}\n").into_bytes();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % data.len();
                data[i] = if round % 2 == 0 {
                    alphabet[(next() as usize) % alphabet.len()]
                } else {
                    next() as u8
                };
            }
            fuzz_parse(&data);
        }
        fuzz_parse(br#"{"class":"TPV","mode":3,"lat":1e400,"lon":-0,"track":360,"speed":-0.0}"#);
    }

    #[cfg(feature = "app")]
    #[tokio::test]
    async fn follows_a_gpsd_that_speaks_json() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = vec![0u8; WATCH.len()];
            s.read_exact(&mut got).await.unwrap();
            assert_eq!(got, WATCH);
            s.write_all(b"{\"class\":\"VERSION\",\"release\":\"3.22\"}\n")
                .await
                .unwrap();
            s.write_all(format!("{TPV}\n").as_bytes()).await.unwrap();
            // Keep the connection open until the client is done.
            let _ = s.read(&mut [0u8; 1]).await;
        });
        let (tx, mut rx) = tokio::sync::watch::channel(None);
        let client = tokio::spawn(follow(addr, tx, Output::new(true)));
        let fix = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                rx.changed().await.unwrap();
                if let Some(f) = *rx.borrow_and_update() {
                    return f;
                }
            }
        })
        .await
        .expect("a fix from the fake gpsd");
        assert_eq!(fix.lat, 30.5928);
        client.abort();
        server.abort();
    }

    #[cfg(feature = "app")]
    #[tokio::test]
    async fn an_endless_line_ends_the_connection_instead_of_filling_memory() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A peer that is not gpsd: it answers WATCH with bytes and never a newline, up to 16 MiB.
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = vec![0u8; WATCH.len()];
            s.read_exact(&mut got).await.unwrap();
            let junk = vec![b'x'; 64 * 1024];
            let mut sent = 0usize;
            while sent < 16 << 20 {
                if s.write_all(&junk).await.is_err() {
                    return Some(sent);
                }
                sent += junk.len();
            }
            // Everything sent and still connected: the client kept reading one line.
            let _ = s.read(&mut [0u8; 1]).await;
            None
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let (tx, _rx) = tokio::sync::watch::channel(None);
        let why = tokio::time::timeout(Duration::from_secs(20), watch(stream, &tx))
            .await
            .expect("the client gives up on the line");
        assert!(why.contains("longer than"), "{why}");
        let sent = tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .expect("the server notices")
            .unwrap();
        assert!(sent.is_some(), "the client read 16 MiB without a newline");
    }
}
