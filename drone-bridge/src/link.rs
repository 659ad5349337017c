//! The MAVLink half of the bridge as a tokio task: the endpoints, the tlog and the [`Core`]
//! driven with the real clock. The mesh half talks to it through [`MavlinkHandle`]: commands in,
//! events and counters out. Tests drive it directly (no node needed).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};

use crate::core::{self, CommandRequest, Core, Event, LinkId, Output, PeerKey, Stats};
use crate::endpoint::{self, Endpoint, Inbound, Outlet};
use crate::tlog::Tlog;

/// What the MAVLink side needs.
#[derive(Debug, Clone)]
pub struct MavlinkOptions {
    /// The vehicles' link (`--mavlink`).
    pub mavlink: Endpoint,
    /// The ground station's link (`--gcs`), routed transparently.
    pub gcs: Option<Endpoint>,
    /// Where to write the tlog (`--tlog`).
    pub tlog: Option<PathBuf>,
    /// Core settings (timeouts, rates, signing).
    pub core: core::Config,
}

/// Why the MAVLink side could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// An endpoint could not be opened.
    #[error("cannot open {endpoint}: {source}")]
    Endpoint {
        /// Which.
        endpoint: Endpoint,
        /// Why.
        source: std::io::Error,
    },
    /// The tlog could not be created.
    #[error("cannot create a tlog in {dir}: {source}")]
    Tlog {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The running MAVLink side.
#[derive(Debug)]
pub struct MavlinkHandle {
    /// Commands for vehicles.
    pub commands: mpsc::UnboundedSender<CommandRequest>,
    /// Events for the mesh (telemetry, link up/lost, acks, video URIs).
    pub events: mpsc::UnboundedReceiver<Event>,
    /// Counters, updated as they change (at most every 100 ms).
    pub stats: watch::Receiver<Stats>,
    /// The local address of the vehicle link (for `udpin`/`tcpin`, useful with port 0).
    pub mavlink_local: Option<SocketAddr>,
    /// The local address of the ground-station link.
    pub gcs_local: Option<SocketAddr>,
    /// The tlog being written.
    pub tlog: Option<PathBuf>,
    task: tokio::task::JoinHandle<()>,
}

impl MavlinkHandle {
    /// Stops the task (the tlog is flushed as it drops).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for MavlinkHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Opens the endpoints and the tlog and starts the loop.
pub async fn start(opts: MavlinkOptions) -> Result<MavlinkHandle, StartError> {
    let (in_tx, in_rx) = mpsc::channel::<Inbound>(4096);
    let open = |ep: Endpoint, link| {
        let in_tx = in_tx.clone();
        async move {
            endpoint::open(&ep, link, in_tx)
                .await
                .map_err(|source| StartError::Endpoint {
                    endpoint: ep,
                    source,
                })
        }
    };
    let vehicle = open(opts.mavlink.clone(), LinkId::Vehicle).await?;
    let gcs = match opts.gcs.clone() {
        Some(ep) => Some(open(ep, LinkId::Gcs).await?),
        None => None,
    };
    drop(in_tx);
    let now_us = unix_us();
    let tlog = match &opts.tlog {
        Some(dir) => {
            Some(
                Tlog::create(dir, now_us / 1_000_000).map_err(|source| StartError::Tlog {
                    dir: dir.clone(),
                    source,
                })?,
            )
        }
        None => None,
    };
    let tlog_path = tlog.as_ref().map(|t| t.path().to_owned());
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (stats_tx, stats_rx) = watch::channel(Stats::default());
    let core = Core::new(opts.core.clone(), Instant::now(), now_us);
    let lp = Loop {
        core,
        vehicle: vehicle.outlet,
        gcs: gcs.as_ref().map(|g| g.outlet.clone()),
        tlog,
        events: ev_tx,
        stats: stats_tx,
        heard_from: None,
    };
    let task = tokio::spawn(lp.run(in_rx, cmd_rx));
    Ok(MavlinkHandle {
        commands: cmd_tx,
        events: ev_rx,
        stats: stats_rx,
        mavlink_local: vehicle.local,
        gcs_local: gcs.and_then(|g| g.local),
        tlog: tlog_path,
        task,
    })
}

struct Loop {
    core: Core,
    vehicle: Outlet,
    gcs: Option<Outlet>,
    tlog: Option<Tlog>,
    events: mpsc::UnboundedSender<Event>,
    stats: watch::Sender<Stats>,
    /// The UDP source of the datagram the core is handling (see [`Output::Heard`]).
    heard_from: Option<(LinkId, PeerKey, SocketAddr)>,
}

impl Loop {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut commands: mpsc::UnboundedReceiver<CommandRequest>,
    ) {
        let mut stats_tick = tokio::time::interval(std::time::Duration::from_millis(100));
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut commands_open = true;
        loop {
            let wake = tokio::time::Instant::from_std(self.core.poll_timeout());
            tokio::select! {
                m = inbound.recv() => match m {
                    Some(m) => {
                        let now = Instant::now();
                        if !m.bytes.is_empty() {
                            self.core.handle_bytes(now, m.link, m.peer, &m.bytes);
                        }
                        if m.end {
                            self.core.handle_end(m.link, m.peer);
                        }
                        // The core answers synchronously: a `Heard` drained now is this datagram's.
                        self.heard_from = m.from.map(|a| (m.link, m.peer, a));
                    }
                    None => return,
                },
                c = commands.recv(), if commands_open => match c {
                    Some(c) => self.core.handle_command(Instant::now(), c),
                    None => commands_open = false,
                },
                () = tokio::time::sleep_until(wake) => self.core.handle_timeout(Instant::now()),
                _ = stats_tick.tick() => {
                    let s = self.core.stats();
                    self.stats.send_if_modified(|old| if *old != s { *old = s; true } else { false });
                    if let Some(t) = &mut self.tlog {
                        let _ = t.flush();
                    }
                }
            }
            self.drain();
            self.heard_from = None;
        }
    }

    fn drain(&mut self) {
        while let Some(o) = self.core.poll_output() {
            match o {
                Output::Transmit {
                    link: LinkId::Vehicle,
                    bytes,
                } => {
                    self.vehicle.send(bytes);
                }
                Output::Transmit {
                    link: LinkId::Gcs,
                    bytes,
                } => {
                    if let Some(g) = &self.gcs {
                        g.send(bytes);
                    }
                }
                Output::Record { unix_us, bytes } => {
                    if let Some(t) = &mut self.tlog {
                        if let Err(e) = t.record(unix_us, &bytes) {
                            tracing::error!("tlog {}: {e}; recording stops", t.path().display());
                            self.tlog = None;
                        }
                    }
                }
                Output::Event(e) => {
                    let _ = self.events.send(e);
                }
                Output::Heard { link, peer } => {
                    if let Some((l, p, addr)) = self.heard_from {
                        if (l, p) == (link, peer) {
                            let outlet = match link {
                                LinkId::Vehicle => Some(&self.vehicle),
                                LinkId::Gcs => self.gcs.as_ref(),
                            };
                            if let Some(o) = outlet {
                                o.heard(addr);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Action;
    use crate::frame::{encode_v2, parse_one, tests::heartbeat, Sender, SysId};
    use std::time::Duration;
    use tokio::net::UdpSocket;

    const WITHIN: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn junk_from_64_ports_takes_no_vehicle_place_and_loses_no_command() {
        let mut h = start(MavlinkOptions {
            mavlink: "udpin:127.0.0.1:0".parse().unwrap(),
            gcs: None,
            tlog: None,
            core: core::Config {
                // One send per command: every COMMAND_LONG the vehicle gets is a first send.
                command_attempts: 1,
                command_retry: Duration::from_secs(30),
                ..core::Config::default()
            },
        })
        .await
        .unwrap();
        let bridge = h.mavlink_local.unwrap();
        let vehicle = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let hb = encode_v2(
            Sender {
                sysid: 1,
                compid: 1,
                seq: 0,
            },
            &heartbeat(),
            false,
        );
        vehicle.send_to(&hb, bridge).await.unwrap();
        tokio::time::timeout(WITHIN, async {
            while let Some(e) = h.events.recv().await {
                if matches!(e, Event::Link { up: true, .. }) {
                    return;
                }
            }
        })
        .await
        .expect("the vehicle's link came up");

        let mut junk = Vec::new();
        for _ in 0..64 {
            junk.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        }
        const COMMANDS: usize = 20;
        for i in 0..COMMANDS {
            // A burst of junk from every port (garbage, and a frame with a broken checksum)
            // before each command.
            let mut broken = hb.clone();
            let n = broken.len();
            broken[n - 1] ^= 0xFF;
            for j in &junk {
                j.send_to(b"\xFD\x09junk junk junk", bridge).await.unwrap();
                j.send_to(&broken, bridge).await.unwrap();
            }
            // Let the bridge take the burst in before the command (bounded by its stats).
            let want = ((i + 1) * 64) as u64;
            tokio::time::timeout(WITHIN, async {
                while h.stats.borrow().decode.bad_crc < want {
                    h.stats.changed().await.unwrap();
                }
            })
            .await
            .expect("the junk was received");
            h.commands
                .send(CommandRequest {
                    cmd: format!("dc-{i}"),
                    drone: SysId(1),
                    action: if i % 2 == 0 {
                        Action::Rtl
                    } else {
                        Action::Hold
                    },
                })
                .unwrap();
        }
        let mut got = 0;
        let mut buf = vec![0u8; 2048];
        tokio::time::timeout(WITHIN, async {
            while got < COMMANDS {
                let (n, _) = vehicle.recv_from(&mut buf).await.unwrap();
                if parse_one(&buf[..n]).is_some_and(|f| f.msgid() == 76) {
                    got += 1;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{got} of {COMMANDS} commands reached the vehicle"));
        for j in &junk {
            assert!(
                j.try_recv_from(&mut buf).is_err(),
                "a junk sender received a frame meant for the vehicle"
            );
        }
    }
}
