//! The tokio shell around the SFU engine: one UDP socket, one task, a command channel.
//!
//! The task owns the [`Sfu`] and the socket. It waits for whichever comes first, readable
//! datagrams, a command from the HTTP side, or the engine's deadline, feeds it to the engine, then
//! sends every pending transmit. Socket I/O is batched (quinn-udp: `recvmmsg`/GRO in, GSO out).

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use signaling::ids::{StreamName, Subject};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::forward::LayerPref;
use crate::sfu::{SessionAnswer, Sfu, SfuError, Transmit};

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

/// Deadlines closer than this are served without sleeping (tokio's timer ticks in milliseconds).
const TIMER_GRANULARITY: std::time::Duration = std::time::Duration::from_millis(1);

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

/// Receive buffer per batch slot: with GRO one slot can carry many coalesced datagrams.
const SLOT: usize = 64 * 1024;
/// Most receive batches handled before the task looks at its timer and commands again.
const MAX_BATCHES_PER_WAKE: usize = 8;

/// Batched socket I/O: `recvmmsg` (and GRO where the kernel does it) in, UDP GSO out, through
/// quinn-udp, so a burst costs a few system calls instead of one per datagram.
struct BatchIo {
    state: quinn_udp::UdpSocketState,
    slots: Vec<Vec<u8>>,
    metas: Vec<quinn_udp::RecvMeta>,
    /// Transmits taken from the engine, not yet on the wire.
    out: VecDeque<Transmit>,
    /// Scratch for coalescing a GSO train.
    train: Vec<u8>,
}

impl BatchIo {
    fn new(socket: &UdpSocket) -> io::Result<BatchIo> {
        Ok(BatchIo {
            state: quinn_udp::UdpSocketState::new(socket.into())?,
            slots: (0..quinn_udp::BATCH_SIZE).map(|_| vec![0u8; SLOT]).collect(),
            metas: vec![quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE],
            out: VecDeque::new(),
            train: Vec::with_capacity(SLOT),
        })
    }

    /// Reads whatever is queued (up to a few batches) into the engine. Returns false when the
    /// socket had nothing (a spurious readiness).
    fn recv(&mut self, socket: &UdpSocket, sfu: &mut Sfu) -> bool {
        let mut got = false;
        for _ in 0..MAX_BATCHES_PER_WAKE {
            let mut slots = self.slots.iter_mut();
            let mut iovs: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
                std::array::from_fn(|_| IoSliceMut::new(slots.next().expect("BATCH_SIZE slots")));
            let (state, metas) = (&self.state, &mut self.metas);
            match socket.try_io(Interest::READABLE, || state.recv(socket.into(), &mut iovs, metas)) {
                Ok(n) => {
                    got = true;
                    let now = Instant::now();
                    for (meta, buf) in self.metas[..n].iter().zip(iovs.iter()) {
                        if meta.len == 0 {
                            // An empty datagram is still input (and junk to be counted).
                            sfu.handle_receive(now, meta.addr, &[]);
                        }
                        // With GRO one slot holds several datagrams of `stride` bytes.
                        for datagram in buf[..meta.len].chunks(meta.stride.max(1)) {
                            sfu.handle_receive(now, meta.addr, datagram);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP port-unreachable from a departed peer surfaces here on Linux; harmless.
                Err(e) if is_transient(&e) => debug!(error = %e, "transient receive error"),
                Err(e) => {
                    warn!(error = %e, "media socket receive failed");
                    break;
                }
            }
        }
        got
    }

    /// Sends every pending transmit. Consecutive datagrams to one destination, all of one size
    /// but the last, leave as one GSO send.
    async fn flush(&mut self, socket: &UdpSocket, sfu: &mut Sfu) {
        while let Some(t) = sfu.poll_transmit() {
            self.out.push_back(t);
        }
        let max_segments = self.state.max_gso_segments().max(1);
        while let Some(first) = self.out.front() {
            let (dest, size) = (first.destination, first.contents.len());
            let mut n = 1;
            while n < max_segments && (n + 1) * size <= SLOT {
                match self.out.get(n) {
                    Some(t) if t.destination == dest && t.contents.len() <= size => {
                        n += 1;
                        if t.contents.len() < size {
                            break; // a shorter datagram can only end a train
                        }
                    }
                    _ => break,
                }
            }
            // A lone datagram goes out from its own buffer; a train is copied into one.
            let contents: &[u8] = if n == 1 {
                &first.contents
            } else {
                self.train.clear();
                for t in self.out.range(..n) {
                    self.train.extend_from_slice(&t.contents);
                }
                &self.train
            };
            let transmit = quinn_udp::Transmit {
                destination: dest,
                ecn: None,
                contents,
                segment_size: (n > 1).then_some(size),
                src_ip: None,
            };
            loop {
                match socket.try_io(Interest::WRITABLE, || self.state.send(socket.into(), &transmit)) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if socket.writable().await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, %dest, "send failed");
                        break;
                    }
                }
            }
            self.out.drain(..n);
        }
    }
}

async fn run(socket: UdpSocket, mut sfu: Sfu, mut rx: mpsc::Receiver<Command>) {
    let mut io = match BatchIo::new(&socket) {
        Ok(io) => io,
        Err(e) => {
            tracing::error!(error = %e, "media socket unusable");
            return;
        }
    };
    loop {
        io.flush(&socket, &mut sfu).await;
        // With no session there is nothing to time out: wake at least once a second anyway.
        let now = Instant::now();
        let next = sfu.poll_timeout().unwrap_or(now + IDLE_WAKE).max(now);
        if next <= now + TIMER_GRANULARITY {
            // str0m's pacer releases one packet per timeout and asks to be polled again within
            // microseconds while it has packets queued; tokio's timer would round that up to a
            // millisecond per packet. Take what the socket and the channel already hold, drive
            // the engine, let other tasks run, and go round again without sleeping.
            io.recv(&socket, &mut sfu);
            while let Ok(cmd) = rx.try_recv() {
                handle_command(&mut sfu, cmd);
            }
            sfu.handle_timeout(Instant::now());
            tokio::task::yield_now().await;
            continue;
        }
        let deadline = tokio::time::Instant::from_std(next);
        tokio::select! {
            r = socket.readable() => match r {
                Ok(()) => {
                    io.recv(&socket, &mut sfu);
                }
                Err(e) => {
                    warn!(error = %e, "media socket failed");
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

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
