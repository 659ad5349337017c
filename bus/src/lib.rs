//! The province bus: how a node's office and directory talk to other nodes.
//!
//! One small API ([`Bus`]) with two implementations:
//!
//! - [`MemoryBus`]: in-process, the default. A single site needs nothing more than today; the
//!   office and directory use the same calls whether or not a province is configured.
//! - [`NatsBus`]: a client (`async-nats`) of the `nats-server` beside the node. Servers are chained
//!   by leaf-node connections along the province's hierarchy (township → county → city →
//!   province), each with its own JetStream domain.
//!
//! What the bus offers:
//!
//! - **events** ([`Bus::publish`], [`Bus::subscribe`]): volatile, fan-out, for presence, positions,
//!   telemetry;
//! - **requests** ([`Bus::request`], [`Bus::serve`]): one answer or a clear [`BusError::NoAnswer`];
//! - **mail** ([`Bus::send`], [`Bus::mailbox`]): durable. `send` returns once the message is stored
//!   at this node (its own stream, `YW_<node>`); the recipient's node reads it with a durable
//!   consumer, at least once, and the [`Mailbox`] drops second copies by message id
//!   ([`Dedup`]), so the application sees each message exactly once. A cut link only delays mail:
//!   it waits in the sender's stream and flows when the link heals.
//!
//! Every subject carries its origin node first (`yw.<origin>.…`, see [`subject`]); the servers'
//! permissions stop a node publishing under another's name, and every receiver re-checks the
//! origin header against the subject ([`subject::check_origin`]) and drops what disagrees, with a
//! `warn` log.
//!
//! The logic (subject names, origin checks, dedup, the nats-server configuration) is pure and
//! tested without a server; the NATS shell is thin. [`server`] writes a node's nats-server
//! configuration and runs the server as a supervised child process.
//!
//! ```no_run
//! # async fn demo() -> Result<(), bus::BusError> {
//! use bus::{Bus, MemoryBus, MsgId, Topic};
//! let node = ids::NodeName::parse("county-7").unwrap();
//! let bus = MemoryBus::new(node.clone());
//! let mut mailbox = bus.mailbox(&node, "office").await?;
//! bus.send(&node, &Topic::parse("chat")?, &MsgId::parse("m-1")?, "hello".into()).await?;
//! let mail = mailbox.next().await.expect("open");
//! assert_eq!(&mail.payload[..], b"hello");
//! mail.ack().await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod dedup;
mod error;
mod memory;
mod nats;
pub mod server;
pub mod subject;

pub use dedup::Dedup;
pub use error::BusError;
pub use ids::NodeName;
pub use memory::{MemoryBus, MemoryHub};
pub use nats::{NatsBus, NatsOptions};
pub use subject::{MsgId, Topic};

use bytes::Bytes;
use std::time::Duration;
use tokio::sync::mpsc;

/// Largest payload the bus carries by default (nats-server's own default `max_payload`).
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// Ids remembered per origin by a mailbox's [`Dedup`].
pub const DEDUP_WINDOW: usize = 100_000;

/// The bus as the node's office and directory see it.
#[async_trait::async_trait]
pub trait Bus: Send + Sync {
    /// This node's name: the origin of everything it publishes.
    fn node(&self) -> &NodeName;

    /// Publishes an event under `yw.<this node>.evt.<topic>`; volatile (subscribers that are not
    /// connected now miss it).
    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<(), BusError>;

    /// Events on `topic` from `origin` (or from every node when `None`).
    async fn subscribe(
        &self,
        origin: Option<&NodeName>,
        topic: &Topic,
    ) -> Result<Subscription, BusError>;

    /// Asks `target`'s `service`; the answer, or [`BusError::NoAnswer`] after `timeout`.
    async fn request(
        &self,
        target: &NodeName,
        service: &Topic,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError>;

    /// Requests to this node's `service`, from any node.
    async fn serve(&self, service: &Topic) -> Result<Requests, BusError>;

    /// Mails `payload` to node `to` under `topic` with id `id` (unique per sender). Returns once
    /// it is stored durably at this node; sending the same id again is harmless (stored once).
    async fn send(
        &self,
        to: &NodeName,
        topic: &Topic,
        id: &MsgId,
        payload: Bytes,
    ) -> Result<(), BusError>;

    /// This node's mailbox for mail from `from`, as durable consumer `name`: mail not acknowledged
    /// under this name (also before a restart) is delivered, in order, each id once.
    async fn mailbox(&self, from: &NodeName, name: &str) -> Result<Mailbox, BusError>;
}

/// An event received.
#[derive(Debug, Clone)]
pub struct Event {
    /// The node that published it (checked).
    pub origin: NodeName,
    /// Its topic.
    pub topic: Topic,
    /// Its bytes.
    pub payload: Bytes,
}

/// A stream of events; ends when the bus closes.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Event>,
    _task: Option<AbortOnDrop>,
}

impl Subscription {
    /// The next event; `None` once closed.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

/// A request received, to answer once.
#[derive(Debug)]
pub struct Request {
    /// The asking node (checked).
    pub origin: NodeName,
    /// The service asked.
    pub service: Topic,
    /// The request's bytes.
    pub payload: Bytes,
    reply: Replier,
}

#[derive(Debug)]
enum Replier {
    Memory(tokio::sync::oneshot::Sender<Bytes>),
    Nats(async_nats::Client, Option<async_nats::Subject>),
}

impl Request {
    /// Sends the answer.
    pub async fn respond(self, payload: Bytes) -> Result<(), BusError> {
        match self.reply {
            Replier::Memory(tx) => tx.send(payload).map_err(|_| BusError::Closed),
            Replier::Nats(client, Some(subject)) => client
                .publish(subject, payload)
                .await
                .map_err(|e| BusError::Nats(e.to_string())),
            Replier::Nats(_, None) => Ok(()),
        }
    }
}

/// A stream of requests; ends when the bus closes.
#[derive(Debug)]
pub struct Requests {
    rx: mpsc::Receiver<Request>,
    _task: Option<AbortOnDrop>,
}

impl Requests {
    /// The next request; `None` once closed.
    pub async fn next(&mut self) -> Option<Request> {
        self.rx.recv().await
    }
}

/// A mail delivered to this node; [`Mail::ack`] it once it is safely in the application's store.
#[derive(Debug)]
pub struct Mail {
    /// The sending node (checked: the node whose stream it was read from).
    pub origin: NodeName,
    /// Its topic.
    pub topic: Topic,
    /// Its id, unique per origin.
    pub id: MsgId,
    /// Its bytes.
    pub payload: Bytes,
    acker: Acker,
}

#[derive(Debug)]
enum Acker {
    Memory(memory::Ack),
    Nats(Box<async_nats::jetstream::Message>),
}

impl Mail {
    /// Acknowledges the mail: it is not delivered under this mailbox's name again.
    pub async fn ack(self) -> Result<(), BusError> {
        match self.acker {
            Acker::Memory(a) => {
                a.ack();
                Ok(())
            }
            Acker::Nats(m) => m.ack().await.map_err(|e| BusError::Nats(e.to_string())),
        }
    }
}

/// A durable mailbox: each mail once, in the sender's order.
#[derive(Debug)]
pub struct Mailbox {
    rx: mpsc::Receiver<Mail>,
    _task: Option<AbortOnDrop>,
}

impl Mailbox {
    /// The next mail; `None` once closed.
    pub async fn next(&mut self) -> Option<Mail> {
        self.rx.recv().await
    }
}

/// Aborts a background task when dropped (a subscription's pump dies with the subscription).
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn check_size(len: usize, max: usize) -> Result<(), BusError> {
    if len > max {
        Err(BusError::TooLarge(len, max))
    } else {
        Ok(())
    }
}
