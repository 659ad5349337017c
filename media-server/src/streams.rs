//! The node's live-stream table: what is published here right now.
//!
//! The media task ([`crate::media`]) writes the local streams, applying the SFU engine's
//! [`Event`]s ([`LiveStreams::apply`]); the cascade shell writes the remote ones. HTTP handlers
//! and the signaling server read it through [`LiveStreams`] without going through the media
//! task. Reads clone a snapshot, so a reader never holds the lock while doing I/O.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;
use signaling::ids::{StreamName, Subject};

use sfu::Event;

/// One live stream as the API shows it (`GET /api/streams`; fields pinned in `docs/api.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamInfo {
    /// The stream's name on this node.
    pub name: StreamName,
    /// Subject of the token that publishes it.
    pub owner: Subject,
    /// Video codec MIME subtype (`H264`, `VP8`), if the stream has video.
    pub video_codec: Option<String>,
    /// Whether the stream carries audio (Opus).
    pub audio: bool,
    /// Viewers attached now.
    pub viewers: usize,
    /// When publishing started, Unix milliseconds.
    pub started_unix_ms: u64,
    /// The video layers being received, lowest first (one for a non-simulcast publisher; empty
    /// until media flows). Refreshed every second.
    pub layers: Vec<LayerSummary>,
}

/// One received video layer as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerSummary {
    /// Rank among the publisher's layers: 0 = lowest.
    pub rank: usize,
    /// Picture width from the layer's last keyframe, if readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Picture height from the layer's last keyframe, if readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Bitrate over the last second, kbit/s.
    pub kbps: u64,
    /// The layer's id at this node (its simulcast index; the trunk layer id). Not part of the
    /// API: trunks announce which ids are live.
    #[serde(skip)]
    pub id: u8,
}

/// The trunk layer set announcing `layers` (the live ones' ids); a stream with no video layer
/// yet (audio only, or video not arrived) announces layer 0.
pub fn announced_layers(layers: &[LayerSummary]) -> trunk::LayerSet {
    let mask = layers.iter().fold(0u8, |m, l| {
        m | 1u8.checked_shl(u32::from(l.id)).unwrap_or(0)
    });
    if mask == 0 {
        trunk::LayerSet::first(1)
    } else {
        trunk::LayerSet(mask)
    }
}

/// A stream published at another node and reachable over the trunks, as `GET /api/streams`
/// (`remote`) and the signaling catalog show it; watched as `/whep/{node}/{stream}` or
/// `subscribe` with `NODE/STREAM` (docs/trunk.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteStreamInfo {
    /// `NODE/STREAM`.
    pub name: String,
    /// The node it is published at.
    pub node: String,
    /// Its name there.
    pub stream: String,
    /// Video layers its publisher sends.
    pub layers: u8,
    /// Which layer ids its origin announced as live (bit n: layer n). Not part of the API.
    #[serde(skip)]
    pub layer_ids: u8,
    /// Route cost from this node: trunk hops, plus 100 per backup path taken.
    pub cost: u16,
    /// Always `true`: the stream is pulled over the trunks when watched.
    pub remote: bool,
}

/// Shared, cheaply clonable handle on the live-stream table.
#[derive(Debug, Clone, Default)]
pub struct LiveStreams {
    inner: Arc<RwLock<BTreeMap<StreamName, StreamInfo>>>,
    remote: Arc<RwLock<Vec<RemoteStreamInfo>>>,
    /// Bumped at every change of `remote`, so the media task reads it only when it changed.
    remote_version: Arc<AtomicU64>,
}

impl LiveStreams {
    /// Applies one event of the SFU engine; `unix_ms` is now (a new stream's start time).
    pub fn apply(&self, event: Event, unix_ms: u64) {
        match event {
            Event::StreamUp {
                name,
                owner,
                video_codec,
                audio,
                viewers,
            } => self.upsert(StreamInfo {
                name,
                owner,
                video_codec,
                audio,
                viewers,
                started_unix_ms: unix_ms,
                layers: Vec::new(),
            }),
            Event::StreamDown { name } => self.remove(&name),
            Event::Viewers { name, count } => self.set_viewers(&name, count),
            Event::Layers { name, layers } => {
                let layers = layers
                    .into_iter()
                    .enumerate()
                    .map(|(rank, l)| LayerSummary {
                        rank,
                        width: l.dims.map(|d| d.0),
                        height: l.dims.map(|d| d.1),
                        kbps: l.bitrate_bps / 1000,
                        id: l.layer.0,
                    })
                    .collect();
                self.set_layers(&name, layers);
            }
        }
    }

    /// Changes with every change of [`LiveStreams::remote_list`].
    pub fn remote_version(&self) -> u64 {
        self.remote_version.load(Ordering::Acquire)
    }

    /// Streams published at other nodes that the trunk catalog reaches, ordered by name
    /// (empty without trunks; refreshed every 500 ms).
    pub fn remote_list(&self) -> Vec<RemoteStreamInfo> {
        self.remote
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_remote(&self, mut list: Vec<RemoteStreamInfo>) {
        list.sort_by(|a, b| a.name.cmp(&b.name));
        let mut g = self.remote.write().unwrap_or_else(|e| e.into_inner());
        if *g != list {
            *g = list;
            self.remote_version.fetch_add(1, Ordering::Release);
        }
    }

    /// Every live stream, ordered by name.
    pub fn list(&self) -> Vec<StreamInfo> {
        self.read().values().cloned().collect()
    }

    /// One stream by name.
    pub fn get(&self, name: &StreamName) -> Option<StreamInfo> {
        self.read().get(name).cloned()
    }

    fn upsert(&self, info: StreamInfo) {
        self.write().insert(info.name.clone(), info);
    }

    fn remove(&self, name: &StreamName) {
        self.write().remove(name);
    }

    fn set_layers(&self, name: &StreamName, layers: Vec<LayerSummary>) {
        let mut map = self.write();
        if let Some(s) = map.get_mut(name) {
            if s.layers != layers {
                s.layers = layers;
            }
        }
    }

    fn set_viewers(&self, name: &StreamName, viewers: usize) {
        if let Some(s) = self.write().get_mut(name) {
            s.viewers = viewers;
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<StreamName, StreamInfo>> {
        // A poisoned lock only means a writer panicked mid-update of plain data; keep serving.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<StreamName, StreamInfo>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(rank: usize, id: u8) -> LayerSummary {
        LayerSummary {
            rank,
            width: None,
            height: None,
            kbps: 100,
            id,
        }
    }

    #[test]
    fn the_engines_events_keep_the_table() {
        use sfu::forward::{Layer, LayerInfo};
        let live = LiveStreams::default();
        let cam: StreamName = "cam".parse().unwrap();
        live.apply(
            Event::StreamUp {
                name: cam.clone(),
                owner: "off-1".parse().unwrap(),
                video_codec: Some("VP8".into()),
                audio: true,
                viewers: 2,
            },
            1_700_000_000_000,
        );
        let s = live.get(&cam).expect("listed once up");
        assert_eq!((s.viewers, s.started_unix_ms), (2, 1_700_000_000_000));
        assert!(s.layers.is_empty(), "no layer before media flows");
        let layers = vec![
            LayerInfo {
                layer: Layer(1),
                dims: Some((320, 180)),
                bitrate_bps: 150_000,
            },
            LayerInfo {
                layer: Layer(0),
                dims: None,
                bitrate_bps: 900_000,
            },
        ];
        live.apply(
            Event::Layers {
                name: cam.clone(),
                layers,
            },
            0,
        );
        live.apply(
            Event::Viewers {
                name: cam.clone(),
                count: 3,
            },
            0,
        );
        let s = live.get(&cam).unwrap();
        assert_eq!(s.viewers, 3);
        assert_eq!(
            s.layers,
            vec![
                LayerSummary {
                    rank: 0,
                    width: Some(320),
                    height: Some(180),
                    kbps: 150,
                    id: 1
                },
                LayerSummary {
                    rank: 1,
                    width: None,
                    height: None,
                    kbps: 900,
                    id: 0
                },
            ]
        );
        // Viewers of a stream not live here (a remote one, `NODE/STREAM`) change nothing.
        let remote = StreamName::remote(&"township".parse().unwrap(), &cam);
        live.apply(
            Event::Viewers {
                name: remote,
                count: 1,
            },
            0,
        );
        assert_eq!(live.list().len(), 1);
        live.apply(Event::StreamDown { name: cam.clone() }, 0);
        assert!(live.get(&cam).is_none() && live.list().is_empty());
    }

    #[test]
    fn the_remote_version_moves_only_when_the_remote_list_changes() {
        let live = LiveStreams::default();
        let v0 = live.remote_version();
        let entry = RemoteStreamInfo {
            name: "township/cam".into(),
            node: "township".into(),
            stream: "cam".into(),
            layers: 3,
            layer_ids: 0b111,
            cost: 1,
            remote: true,
        };
        live.set_remote(vec![entry.clone()]);
        let v1 = live.remote_version();
        assert_ne!(v0, v1);
        live.set_remote(vec![entry.clone()]);
        assert_eq!(live.remote_version(), v1, "the same list is no change");
        live.set_remote(vec![RemoteStreamInfo {
            layer_ids: 0b011,
            ..entry
        }]);
        assert_ne!(live.remote_version(), v1);
    }

    #[test]
    fn trunks_announce_the_ids_of_the_live_layers() {
        // Simulcast ids 0..=2 with the top one (id 1 here: ids follow RID order, not size) paused.
        assert_eq!(
            announced_layers(&[layer(0, 2), layer(1, 0)]),
            trunk::LayerSet(0b101)
        );
        assert_eq!(announced_layers(&[layer(0, 0)]), trunk::LayerSet(0b1));
        assert_eq!(
            announced_layers(&[]),
            trunk::LayerSet(0b1),
            "no video yet: layer 0"
        );
        let json = serde_json::to_value(layer(0, 2)).unwrap();
        assert!(json.get("id").is_none(), "the id stays internal: {json}");
    }
}
