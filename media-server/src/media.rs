//! The tokio shell around the SFU engine: one UDP socket, one task, a command channel.
//!
//! The task owns the [`Sfu`] and the socket. It waits for whichever comes first, a datagram, a
//! command from the HTTP side, or the engine's deadline, feeds it to the engine, then sends every
//! pending transmit. Nothing else runs on the hot path.

use std::io;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use signaling::ids::{StreamName, Subject};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::forward::LayerPref;
use crate::sfu::{SessionAnswer, Sfu, SfuError};

enum Command {
    Publish {
        stream: StreamName,
        owner: Subject,
        offer: String,
        reply: oneshot::Sender<Result<SessionAnswer, SfuError>>,
    },
    View {
        stream: StreamName,
        offer: String,
        pref: LayerPref,
        reply: oneshot::Sender<Result<SessionAnswer, SfuError>>,
    },
    Close {
        session_id: String,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
}

/// Handle used by the HTTP (and later signaling) side to reach the media task.
#[derive(Clone, Debug)]
pub struct MediaHandle {
    tx: mpsc::Sender<Command>,
}

impl MediaHandle {
    /// Publishes `stream` for `owner` with a WHIP offer; returns the answer.
    pub async fn publish(&self, stream: StreamName, owner: Subject, offer: String) -> Result<SessionAnswer, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Publish { stream, owner, offer, reply }).await?;
        rx.await.map_err(|_| SfuError::Unavailable)?
    }

    /// Views `stream` with a WHEP offer and a layer preference; returns the answer.
    pub async fn view(&self, stream: StreamName, offer: String, pref: LayerPref) -> Result<SessionAnswer, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::View { stream, offer, pref, reply }).await?;
        rx.await.map_err(|_| SfuError::Unavailable)?
    }

    /// Ends the session `session_id`.
    pub async fn close(&self, session_id: String) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Close { session_id, reply }).await?;
        rx.await.map_err(|_| SfuError::Unavailable)?
    }

    async fn send(&self, cmd: Command) -> Result<(), SfuError> {
        self.tx.send(cmd).await.map_err(|_| SfuError::Unavailable)
    }
}

/// How long the media task sleeps when the engine has no deadline.
const IDLE_WAKE: std::time::Duration = std::time::Duration::from_secs(1);

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Starts the media task on `socket`. The task ends when every [`MediaHandle`] is dropped.
pub fn spawn(socket: UdpSocket, sfu: Sfu) -> (MediaHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(256);
    let task = tokio::spawn(run(socket, sfu, rx));
    (MediaHandle { tx }, task)
}

async fn run(socket: UdpSocket, mut sfu: Sfu, mut rx: mpsc::Receiver<Command>) {
    let mut buf = vec![0u8; 65536];
    loop {
        flush(&socket, &mut sfu).await;
        // With no session there is nothing to time out: wake at least once a second anyway.
        let now = Instant::now();
        let next = sfu.poll_timeout().unwrap_or(now + IDLE_WAKE).max(now);
        let deadline = tokio::time::Instant::from_std(next);
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => sfu.handle_receive(Instant::now(), from, &buf[..n]),
                // ICMP port-unreachable from a departed peer surfaces here on Linux; harmless.
                Err(e) if is_transient(&e) => debug!(error = %e, "transient receive error"),
                Err(e) => {
                    warn!(error = %e, "media socket receive failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            cmd = rx.recv() => match cmd {
                None => return,
                Some(cmd) => handle_command(&mut sfu, cmd),
            },
            _ = tokio::time::sleep_until(deadline) => sfu.handle_timeout(Instant::now()),
        }
    }
}

fn handle_command(sfu: &mut Sfu, cmd: Command) {
    let now = Instant::now();
    match cmd {
        Command::Publish { stream, owner, offer, reply } => {
            let _ = reply.send(sfu.publish(now, stream, owner, &offer, unix_ms()));
        }
        Command::View { stream, offer, pref, reply } => {
            let _ = reply.send(sfu.view(now, &stream, &offer, pref));
        }
        Command::Close { session_id, reply } => {
            let _ = reply.send(sfu.close_session(now, &session_id));
        }
    }
}

async fn flush(socket: &UdpSocket, sfu: &mut Sfu) {
    while let Some(t) = sfu.poll_transmit() {
        if let Err(e) = send(socket, &t.contents, t.destination).await {
            debug!(error = %e, "send failed");
        }
    }
}

async fn send(socket: &UdpSocket, data: &[u8], to: SocketAddr) -> io::Result<usize> {
    socket.send_to(data, to).await
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
