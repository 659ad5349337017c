//! Camera and microphone out (`--source`, `--no-audio`, `--profile`, `--link`): the seam where
//! the publisher will plug in.
//!
//! Not implemented in this version: [`start`] always answers [`Unavailable::NotImplemented`] and
//! `run` says so. The publisher to come (GStreamer capture and encoder chosen by `hw-profiles`,
//! WebRTC with the `webrtc` crate, SDP through signaling's `publish` on the session `run` holds)
//! is a task started here and stopped by [`Publisher::stop`]; `run` needs no other change.

use std::path::PathBuf;
use std::str::FromStr;

use signaling::client::Client;

/// `--source`: what to publish.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Source {
    /// The tablet's camera (and microphone).
    #[default]
    Camera,
    /// A generated test pattern (and tone).
    Test,
    /// A media file, looped.
    File(PathBuf),
}

impl FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "camera" => Ok(Source::Camera),
            "test" => Ok(Source::Test),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(Source::File(PathBuf::from(p))),
                _ => Err(format!("unknown source {s:?} (camera, test or file:PATH)")),
            },
        }
    }
}

/// How to publish.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MediaOptions {
    /// What to publish.
    pub source: Source,
    /// Publish Opus audio too.
    pub audio: bool,
    /// The hardware profile (`hw-profiles`), if named.
    pub profile: Option<String>,
    /// The link class (`hw-profiles`), if named.
    pub link: Option<String>,
}

/// Why no publisher runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    /// This version has no media publishing yet.
    #[error("media publishing is not implemented yet")]
    NotImplemented,
}

/// A running publisher.
#[derive(Debug)]
pub struct Publisher {
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Stops publishing (closes the media session).
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Starts publishing `opts` over `client`'s session.
pub fn start(_client: &Client, _opts: &MediaOptions) -> Result<Publisher, Unavailable> {
    Err(Unavailable::NotImplemented)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!("camera".parse(), Ok(Source::Camera));
        assert_eq!("test".parse(), Ok(Source::Test));
        assert_eq!("file:/tmp/a.mp4".parse(), Ok(Source::File("/tmp/a.mp4".into())));
        assert!("file:".parse::<Source>().is_err());
        assert!("webcam".parse::<Source>().is_err());
    }
}
