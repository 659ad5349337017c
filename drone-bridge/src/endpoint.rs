//! MAVLink endpoints (`udpin:`, `udpout:`, `tcpin:`, `tcpout:`, `serial:`) as tokio tasks that
//! hand received bytes to the bridge loop and write what it sends.
//!
//! Every endpoint reports [`Inbound`] chunks tagged with a peer (a UDP source address, a TCP
//! connection) so each peer gets its own frame decoder; a UDP datagram ends its input
//! (`end: true`), so a frame cut off inside it counts as truncated. Sending goes to every peer
//! of the endpoint: the UDP source addresses heard from (`udpin`: up to 16 sources that sent a
//! frame the core accepted — [`Outlet::heard`] — the least recently heard making room), the address given
//! (`udpout`), every open connection (`tcpin`), the one connection (`tcpout`, reconnecting), the
//! device (`serial`).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::core::{LinkId, PeerKey};

/// Where a MAVLink link is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Listen for UDP on `HOST:PORT`; reply to whoever sent.
    UdpIn(String),
    /// Send UDP to `HOST:PORT` (and read the replies).
    UdpOut(String),
    /// Accept TCP connections on `HOST:PORT`.
    TcpIn(String),
    /// Connect to `HOST:PORT` over TCP, reconnecting.
    TcpOut(String),
    /// A serial device at a baud rate.
    Serial {
        /// Device path.
        path: String,
        /// Baud rate.
        baud: u32,
    },
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "use udpin:HOST:PORT, udpout:HOST:PORT, tcpin:HOST:PORT, tcpout:HOST:PORT or serial:PATH:BAUD";
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("bad endpoint {s:?}: {usage}"))?;
        let host_port = |rest: &str| -> Result<String, String> {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("bad endpoint {s:?}: no port; {usage}"))?;
            if host.is_empty() {
                return Err(format!("bad endpoint {s:?}: no host; {usage}"));
            }
            port.parse::<u16>().map_err(|_| {
                format!("bad endpoint {s:?}: port {port:?} is not a number 0..=65535")
            })?;
            Ok(rest.to_owned())
        };
        match kind {
            "udpin" => Ok(Endpoint::UdpIn(host_port(rest)?)),
            "udpout" => Ok(Endpoint::UdpOut(host_port(rest)?)),
            "tcpin" => Ok(Endpoint::TcpIn(host_port(rest)?)),
            "tcpout" => Ok(Endpoint::TcpOut(host_port(rest)?)),
            "serial" => {
                let (path, baud) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| format!("bad endpoint {s:?}: no baud rate; {usage}"))?;
                let baud = baud.parse::<u32>().ok().filter(|b| *b > 0).ok_or_else(|| {
                    format!("bad endpoint {s:?}: baud {baud:?} is not a positive number")
                })?;
                if path.is_empty() {
                    return Err(format!("bad endpoint {s:?}: no device path; {usage}"));
                }
                Ok(Endpoint::Serial {
                    path: path.to_owned(),
                    baud,
                })
            }
            _ => Err(format!(
                "bad endpoint {s:?}: unknown kind {kind:?}; {usage}"
            )),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::UdpIn(a) => write!(f, "udpin:{a}"),
            Endpoint::UdpOut(a) => write!(f, "udpout:{a}"),
            Endpoint::TcpIn(a) => write!(f, "tcpin:{a}"),
            Endpoint::TcpOut(a) => write!(f, "tcpout:{a}"),
            Endpoint::Serial { path, baud } => write!(f, "serial:{path}:{baud}"),
        }
    }
}

/// Bytes from a link.
#[derive(Debug)]
pub struct Inbound {
    /// Which link.
    pub link: LinkId,
    /// Which peer of it.
    pub peer: PeerKey,
    /// The bytes (may be empty when only `end` is said).
    pub bytes: Vec<u8>,
    /// The peer's input ended after these bytes (a datagram's end, a closed connection).
    pub end: bool,
    /// The UDP source address (`udpin`, `udpout`), for [`Outlet::heard`].
    pub from: Option<SocketAddr>,
}

/// The sending side of an open endpoint.
#[derive(Debug, Clone)]
pub struct Outlet {
    tx: mpsc::Sender<Vec<u8>>,
    /// A `udpin` endpoint's peers: who it sends to.
    udp_peers: Option<Arc<Mutex<UdpPeers>>>,
}

/// The UDP sources a `udpin` endpoint sends to: only those a valid frame came from, at most
/// [`MAX_UDP_PEERS`], the least recently heard one leaving for a new one. Junk (bad checksums,
/// unsigned frames with signing on) from any number of addresses never enters, so it can neither
/// push the vehicle out nor receive what is meant for it.
#[derive(Debug, Default)]
struct UdpPeers {
    peers: Vec<(SocketAddr, std::time::Instant)>,
}

impl UdpPeers {
    fn heard(&mut self, from: SocketAddr, now: std::time::Instant) {
        if let Some(p) = self.peers.iter_mut().find(|(a, _)| *a == from) {
            p.1 = now;
            return;
        }
        if self.peers.len() >= MAX_UDP_PEERS {
            if let Some(oldest) = (0..self.peers.len()).min_by_key(|&i| self.peers[i].1) {
                self.peers.swap_remove(oldest);
            }
        }
        self.peers.push((from, now));
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.peers.iter().map(|(a, _)| *a).collect()
    }
}

impl Outlet {
    /// Queues one frame; dropped when the endpoint is far behind (MAVLink tolerates loss, a
    /// stalled link must not stall the bridge).
    pub fn send(&self, bytes: Vec<u8>) -> bool {
        self.tx.try_send(bytes).is_ok()
    }

    /// The core accepted a frame from UDP source `from` ([`crate::core::Output::Heard`]): a
    /// `udpin` endpoint sends to it from now on. Other endpoints ignore it.
    pub fn heard(&self, from: SocketAddr) {
        if let Some(p) = &self.udp_peers {
            p.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .heard(from, std::time::Instant::now());
        }
    }
}

/// An open endpoint: where it listens (for `udpin`/`tcpin`, useful with port 0) and its outlet.
#[derive(Debug)]
pub struct Opened {
    /// The local address bound (UDP and TCP listeners).
    pub local: Option<SocketAddr>,
    /// Where to send.
    pub outlet: Outlet,
}

fn key_of(addr: &SocketAddr) -> PeerKey {
    let mut h = DefaultHasher::new();
    addr.hash(&mut h);
    PeerKey(h.finish())
}

const QUEUE: usize = 1024;
/// At most this many UDP peers of a `udpin` endpoint are sent to.
const MAX_UDP_PEERS: usize = 16;

/// Opens `ep` as `link`; received bytes go to `inbound`. Binding/opening errors are returned at
/// once; later I/O errors are logged and (for `tcpout`) retried.
pub async fn open(
    ep: &Endpoint,
    link: LinkId,
    inbound: mpsc::Sender<Inbound>,
) -> std::io::Result<Opened> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let mut outlet = Outlet {
        tx,
        udp_peers: None,
    };
    match ep {
        Endpoint::UdpIn(addr) | Endpoint::UdpOut(addr) => {
            let out_to = if let Endpoint::UdpOut(_) = ep {
                Some(resolve(addr).await?)
            } else {
                None
            };
            let sock = match out_to {
                Some(to) => {
                    UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).await?
                }
                None => UdpSocket::bind(resolve(addr).await?).await?,
            };
            let local = sock.local_addr().ok();
            let sock = Arc::new(sock);
            let peers = Arc::new(Mutex::new(UdpPeers::default()));
            if out_to.is_none() {
                outlet.udp_peers = Some(peers.clone());
            }
            let s = sock.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                loop {
                    match s.recv_from(&mut buf).await {
                        Ok((n, from)) => {
                            let msg = Inbound {
                                link,
                                peer: key_of(&from),
                                bytes: buf[..n].to_vec(),
                                end: true,
                                from: Some(from),
                            };
                            if inbound.send(msg).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            // ICMP port unreachable shows up here on Linux: not fatal.
                            tracing::debug!(?link, "udp receive: {e}");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            });
            tokio::spawn(async move {
                while let Some(bytes) = rx.recv().await {
                    let targets = match out_to {
                        Some(to) => vec![to],
                        None => peers.lock().unwrap_or_else(PoisonError::into_inner).addrs(),
                    };
                    for t in targets {
                        if let Err(e) = sock.send_to(&bytes, t).await {
                            tracing::debug!(?link, "udp send: {e}");
                        }
                    }
                }
            });
            Ok(Opened { local, outlet })
        }
        Endpoint::TcpIn(addr) => {
            let listener = TcpListener::bind(resolve(addr).await?).await?;
            let local = listener.local_addr().ok();
            let conns: Arc<Mutex<Vec<mpsc::Sender<Vec<u8>>>>> = Arc::default();
            let c = conns.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, from)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let (w_tx, w_rx) = mpsc::channel(QUEUE);
                    c.lock().unwrap_or_else(PoisonError::into_inner).push(w_tx);
                    tokio::spawn(serve_stream(
                        stream,
                        link,
                        key_of(&from),
                        inbound.clone(),
                        w_rx,
                    ));
                }
            });
            tokio::spawn(async move {
                while let Some(bytes) = rx.recv().await {
                    let mut c = conns.lock().unwrap_or_else(PoisonError::into_inner);
                    c.retain(|w| !w.is_closed());
                    for w in c.iter() {
                        let _ = w.try_send(bytes.clone());
                    }
                }
            });
            Ok(Opened { local, outlet })
        }
        Endpoint::TcpOut(addr) => {
            let addr = addr.clone();
            // The first connection must succeed: a wrong address is an error the user sees.
            let first = TcpStream::connect(resolve(&addr).await?).await?;
            tokio::spawn(async move {
                let mut stream = Some(first);
                let mut n: u64 = 0;
                loop {
                    let s = match stream.take() {
                        Some(s) => s,
                        None => match TcpStream::connect(&addr).await {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::debug!(?link, "tcp connect: {e}");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                continue;
                            }
                        },
                    };
                    let _ = s.set_nodelay(true);
                    n += 1;
                    let (w_tx, w_rx) = mpsc::channel(QUEUE);
                    let serving =
                        tokio::spawn(serve_stream(s, link, PeerKey(n), inbound.clone(), w_rx));
                    // Forward outgoing frames to this connection until it ends.
                    tokio::pin!(serving);
                    loop {
                        tokio::select! {
                            _ = &mut serving => break,
                            b = rx.recv() => match b {
                                Some(b) => { let _ = w_tx.try_send(b); }
                                None => return,
                            },
                        }
                    }
                    tracing::warn!(?link, "tcp connection closed; reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
            Ok(Opened {
                local: None,
                outlet,
            })
        }
        Endpoint::Serial { path, baud } => {
            // The line settings through stty (raw, no echo, the baud rate): no unsafe termios here.
            let st = std::process::Command::new("stty")
                .args(["-F", path, &baud.to_string(), "raw", "-echo"])
                .status();
            match st {
                Ok(s) if s.success() => {}
                Ok(s) => tracing::warn!(
                    "stty -F {path} {baud} raw -echo failed ({s}); using the device as it is"
                ),
                Err(e) => tracing::warn!("cannot run stty ({e}); using the device as it is"),
            }
            let file = tokio::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .await?;
            let (mut r, mut w) = tokio::io::split(file);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            let _ = inbound
                                .send(Inbound {
                                    link,
                                    peer: PeerKey(0),
                                    bytes: vec![],
                                    end: true,
                                    from: None,
                                })
                                .await;
                            tracing::warn!(?link, "serial device closed");
                            return;
                        }
                        Ok(n) => {
                            if inbound
                                .send(Inbound {
                                    link,
                                    peer: PeerKey(0),
                                    bytes: buf[..n].to_vec(),
                                    end: false,
                                    from: None,
                                })
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            });
            tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    if w.write_all(&b).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Opened {
                local: None,
                outlet,
            })
        }
    }
}

async fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr} resolves to no address")))
}

/// Reads a stream into `inbound` and writes `out` to it, until either side ends.
async fn serve_stream(
    stream: TcpStream,
    link: LinkId,
    peer: PeerKey,
    inbound: mpsc::Sender<Inbound>,
    mut out: mpsc::Receiver<Vec<u8>>,
) {
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        while let Some(b) = out.recv().await {
            if w.write_all(&b).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if inbound
                    .send(Inbound {
                        link,
                        peer,
                        bytes: buf[..n].to_vec(),
                        end: false,
                        from: None,
                    })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    writer.abort();
    let _ = inbound
        .send(Inbound {
            link,
            peer,
            bytes: vec![],
            end: true,
            from: None,
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_bad_ones_say_why() {
        assert_eq!(
            "udpin:0.0.0.0:14550".parse(),
            Ok(Endpoint::UdpIn("0.0.0.0:14550".into()))
        );
        assert_eq!(
            "tcpout:[::1]:5760".parse(),
            Ok(Endpoint::TcpOut("[::1]:5760".into()))
        );
        assert_eq!(
            "serial:/dev/ttyUSB0:57600".parse(),
            Ok(Endpoint::Serial {
                path: "/dev/ttyUSB0".into(),
                baud: 57600
            })
        );
        assert_eq!(
            "udpout:localhost:14550"
                .parse::<Endpoint>()
                .unwrap()
                .to_string(),
            "udpout:localhost:14550"
        );
        for bad in [
            "udp:1.2.3.4:5",
            "udpin:1.2.3.4",
            "udpin::5",
            "tcpin:host:99999",
            "serial:/dev/ttyS0",
            "serial:/dev/ttyS0:fast",
            "14550",
        ] {
            let e = bad.parse::<Endpoint>().unwrap_err();
            assert!(e.contains("bad endpoint"), "{bad}: {e}");
        }
    }
}
