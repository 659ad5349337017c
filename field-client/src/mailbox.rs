//! A short, read-only session that reads the whole mailbox: what `orders` lists.
//!
//! Why not [`signaling::client::Client`]: it syncs the mailbox from the subject's acknowledged
//! position and drops every mail at or below the newest one it delivered, so an explicit
//! `mail_sync` from 0 through it yields nothing already seen. This session speaks `yiwang/1`
//! itself over the same pinned QUIC configuration ([`pinned_quic_config`]): `hello`, requests one
//! at a time, `bye`. It never sends `mail_ack`, so listing does not mark anything delivered.
//!
//! Native clients stay off the node's HTTP API (`GET /api/orders`): one port, one credential
//! check, the same session rules as everything else.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use quinn::{ConnectionError, ReadError, VarInt};
use serde_json::Value;
use signaling::client::{pinned_quic_config, ClientConfig, ClientError, SERVER_NAME};
use signaling::proto::{
    encode_frame, ClientMsg, FrameDecoder, MailItem, RequestId, ServerMsg, Welcome,
    MAX_SERVER_FRAME, VERSION,
};

/// One open session.
pub struct RawSession {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    next_id: RequestId,
    /// The node's `welcome`.
    pub welcome: Welcome,
}

fn lost(e: ConnectionError) -> ClientError {
    match &e {
        ConnectionError::ApplicationClosed(ac) => ClientError::Connect(format!(
            "the node closed the connection (code {}): {}",
            ac.error_code,
            String::from_utf8_lossy(&ac.reason)
        )),
        ConnectionError::TransportError(t) if (0x100..0x200).contains(&u64::from(t.code)) => {
            ClientError::Tls(e.to_string())
        }
        _ => ClientError::Connect(e.to_string()),
    }
}

impl RawSession {
    /// Connects to `cfg.node`, sends `hello` and waits for `welcome`. Not bounded: the caller is.
    pub async fn open(cfg: &ClientConfig) -> Result<RawSession, ClientError> {
        let quic = pinned_quic_config(cfg)?;
        let addr = tokio::net::lookup_host(&cfg.node)
            .await
            .map_err(|e| ClientError::Resolve(format!("{}: {e}", cfg.node)))?
            .next()
            .ok_or_else(|| ClientError::Resolve(format!("{}: no address", cfg.node)))?;
        let bind = match addr {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        let endpoint = quinn::Endpoint::client(bind)?;
        let conn = endpoint
            .connect_with(quic, addr, SERVER_NAME)
            .map_err(|e| ClientError::Connect(e.to_string()))?
            .await
            .map_err(lost)?;
        let (send, recv) = conn.open_bi().await.map_err(lost)?;
        let mut s = RawSession {
            endpoint,
            conn,
            send,
            recv,
            decoder: FrameDecoder::with_max(MAX_SERVER_FRAME),
            next_id: 1,
            welcome: Welcome {
                v: VERSION,
                session: String::new(),
                node: "unknown".parse().expect("valid id"),
                time: signaling::UnixMs(0),
                subject: "unknown".parse().expect("valid id"),
                role: signaling::Role::Viewer,
                incidents: Vec::new(),
                resumed: false,
                gap: false,
                last: 0,
                mail_last: 0,
                mail_acked: 0,
            },
        };
        s.write(&ClientMsg::Hello {
            v: VERSION,
            token: cfg.token.clone(),
            resume: None,
        })
        .await?;
        match s.read().await? {
            ServerMsg::Welcome(w) => {
                s.welcome = w;
                Ok(s)
            }
            ServerMsg::Error { code, message, .. } => Err(ClientError::Refused { code, message }),
            _ => Err(ClientError::Protocol(
                "the answer to hello was not welcome".into(),
            )),
        }
    }

    async fn write(&mut self, msg: &ClientMsg) -> Result<(), ClientError> {
        self.send
            .write_all(&encode_frame(msg))
            .await
            .map_err(|e| match e {
                quinn::WriteError::ConnectionLost(c) => lost(c),
                other => ClientError::Connect(other.to_string()),
            })
    }

    async fn read(&mut self) -> Result<ServerMsg, ClientError> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => match serde_json::from_slice::<ServerMsg>(&frame) {
                    Ok(m) => return Ok(m),
                    Err(_) => continue, // a newer node's message type: ignore
                },
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_proto().message)),
            }
            match self.recv.read(&mut buf).await {
                Ok(Some(n)) => self.decoder.push(&buf[..n]),
                Ok(None) => return Err(lost(self.conn.closed().await)),
                Err(ReadError::ConnectionLost(e)) => return Err(lost(e)),
                Err(e) => return Err(ClientError::Connect(e.to_string())),
            }
        }
    }

    /// Sends `make(id)` and waits for its reply. Returns the mail that arrived before the reply
    /// (as `(seq, item)`) and the reply's `data`; events are skipped.
    pub async fn request(
        &mut self,
        make: impl FnOnce(RequestId) -> ClientMsg,
    ) -> Result<(Vec<(u64, MailItem)>, Value), ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        self.write(&make(id)).await?;
        let mut mail = Vec::new();
        loop {
            match self.read().await? {
                ServerMsg::Mail { seq, item } => mail.push((seq, item)),
                ServerMsg::Result { re, data } if re == id => return Ok((mail, data)),
                ServerMsg::Error {
                    re: Some(re),
                    code,
                    message,
                } if re == id => return Err(ClientError::Remote { code, message }),
                ServerMsg::Error {
                    re: None,
                    code,
                    message,
                } if code.closes() => return Err(ClientError::Refused { code, message }),
                _ => {}
            }
        }
    }

    /// Ends the session (`bye`) and waits briefly for the node to close the connection.
    pub async fn bye(mut self) {
        let _ = self.write(&ClientMsg::Bye).await;
        let _ = self.send.finish();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.conn.closed()).await;
        self.conn.close(VarInt::from_u32(0), b"bye");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.endpoint.wait_idle())
            .await;
    }
}
