//! The office store behind a trait: what the signaling core needs to keep office messages
//! (mailboxes, orders), incidents and their logs, and the subjects it has seen.
//!
//! Model, whatever the implementation:
//! - an **item** is one office message (chat, order, order state change, SOS, SOS
//!   acknowledgement, read receipt), identified by `(sender, kind, client id)`: the id its sender
//!   chose, within the kind of message. Storing the same `(sender, kind, client id)` twice stores
//!   it once — a sender that retries after a lost acknowledgement never creates a duplicate — and
//!   a chat never answers for an order that happens to carry the same id;
//! - every recipient subject has a **mailbox**: its items in order, numbered `seq` 1, 2, 3… per
//!   recipient, without gaps. Delivery is "send everything after the client's cursor"; the client
//!   acknowledges a `seq` and drops duplicates by `seq`, so each item is processed exactly once;
//! - an **order** row tracks the state machine sent → delivered → accepted / declined → done with a
//!   timestamp per transition;
//! - incidents, their assignments and their append-only logs;
//! - every subject that ever had a session on the node, so that an order to a name nobody ever
//!   used is refused instead of waiting in a mailbox no one will read.
//!
//! Every write is durable before the call returns: the core acknowledges what the store
//! returned. The calls block (disk, or a network for a future province store), so the node
//! runs the core where blocking is allowed (see `media-server/src/signal.rs`).
//!
//! Implementations: [`SqliteStore`] (the node's `office.db`). The province plane will add one.

use serde::Serialize;
use serde_json::Value;

use crate::ids::Subject;
use crate::proto::MailItem;
pub use crate::proto::{LogEntry, Order, OrderState};
use crate::time::UnixMs;

mod sqlite;

pub use sqlite::{SqliteStore, SCHEMA_VERSION};

/// The node's default store.
pub type Store = SqliteStore;

/// Why the store failed. Shown to operators (logs) and, as `unavailable`, to clients.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The disk is full: nothing of the operation was stored; it may succeed once there is room.
    #[error("office store: the node's disk is full; nothing was stored")]
    Full,
    /// The backend refused an operation (file locked, corrupt database…).
    #[error("office store: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// The file was written by a newer yiwang (schema version too high).
    #[error("office store schema version {found} is newer than this node's ({SCHEMA_VERSION}); upgrade the node")]
    TooNew {
        /// The version found in the file.
        found: u32,
    },
    /// A stored value could not be read back (corrupt row).
    #[error("office store: corrupt row: {0}")]
    Corrupt(String),
}

/// One mailbox entry as delivered to a client.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mail {
    /// Position in the recipient's mailbox (from 1, no gaps).
    pub seq: u64,
    /// The item, as the client sees it.
    pub item: MailItem,
}

/// The result of storing an item.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The item's row id.
    pub item_id: i64,
    /// False when `(sender, kind, client id)` was already stored (a retry): nothing was added.
    pub new: bool,
    /// The mailbox entries created, per recipient.
    pub mails: Vec<(Subject, Mail)>,
    /// The item as stored (for a retry: as stored the first time).
    pub item: MailItem,
}

/// An item to store ([`OfficeStore::put`]).
#[derive(Debug, Clone, Copy)]
pub struct NewItem<'a> {
    /// Who sent it.
    pub sender: &'a Subject,
    /// The sender's id for it (its `msg_id`, or one the node derived).
    pub client_id: &'a str,
    /// Its kind (`chat`, `order`, …): the item's `kind`, part of the idempotency key.
    pub kind: &'a str,
    /// The incident it belongs to, if any.
    pub incident: Option<&'a str>,
    /// Whose mailboxes it goes to.
    pub recipients: &'a [Subject],
    /// When.
    pub now: UnixMs,
    /// For an order: the order row to create.
    pub order: Option<NewOrder<'a>>,
}

/// The order row of an order item.
#[derive(Debug, Clone, Copy)]
pub struct NewOrder<'a> {
    /// Its incident.
    pub incident: &'a str,
    /// The addressee.
    pub to: &'a Subject,
    /// What to do.
    pub text: &'a str,
}

/// An incident as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentRow {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Open (or closed).
    pub open: bool,
    /// Creator (a subject, or the node id).
    pub created_by: String,
    /// When it was created.
    pub created_at: UnixMs,
    /// When it was closed.
    pub closed_at: Option<UnixMs>,
    /// Assigned subjects.
    pub assigned: Vec<String>,
}

/// What the signaling core keeps. Every method is one durable transaction.
pub trait OfficeStore: Send {
    /// Stores `item` once per `(sender, kind, client id)` and puts it in each recipient's
    /// mailbox. `build` makes the client-visible item from its row id (so it can name itself,
    /// e.g. `ord-42`); a retry adds nothing and returns the first copy.
    fn put(
        &mut self,
        item: NewItem<'_>,
        build: &mut dyn FnMut(i64) -> MailItem,
    ) -> Result<Stored, StoreError>;

    /// Mailbox entries of `recipient` after `after`, oldest first, at most `limit`.
    fn mail_after(
        &self,
        recipient: &Subject,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Mail>, StoreError>;

    /// Sender and kind of item `item_id`, if it is in `recipient`'s mailbox.
    fn item_in_mailbox(
        &self,
        recipient: &Subject,
        item_id: i64,
    ) -> Result<Option<(String, String)>, StoreError>;

    /// The newest `seq` in `recipient`'s mailbox (0 if empty).
    fn last_seq(&self, recipient: &Subject) -> Result<u64, StoreError>;

    /// The highest `seq` `recipient` acknowledged (0 if none).
    fn acked(&self, recipient: &Subject) -> Result<u64, StoreError>;

    /// Records that `recipient` processed everything up to `upto` (never moves backwards, never
    /// past the mailbox's end). Returns the orders that became delivered by it:
    /// `(order id, sender)`.
    fn ack(
        &mut self,
        recipient: &Subject,
        upto: u64,
        now: UnixMs,
    ) -> Result<Vec<(String, Subject)>, StoreError>;

    /// One order.
    fn order(&self, id: &str) -> Result<Option<Order>, StoreError>;

    /// Moves order `id` to `state` (the caller checked who may), recording ETA or reason.
    fn set_order_state(
        &mut self,
        id: &str,
        state: OrderState,
        now: UnixMs,
        eta_min: Option<u32>,
        reason: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Orders sent by or addressed to `subject` (every order when `None`), newest first, at most
    /// `limit`.
    fn orders(&self, subject: Option<&Subject>, limit: usize) -> Result<Vec<Order>, StoreError>;

    /// Every stored incident with its assignments.
    fn incidents(&self) -> Result<Vec<IncidentRow>, StoreError>;

    /// Creates or updates an incident (not its assignments).
    fn save_incident(&mut self, inc: &IncidentRow) -> Result<(), StoreError>;

    /// Assigns (`true`) or unassigns `subject` to `incident`.
    fn set_assigned(
        &mut self,
        incident: &str,
        subject: &str,
        assigned: bool,
    ) -> Result<(), StoreError>;

    /// Appends to an incident's log; returns the entry's `seq`.
    fn append_log(
        &mut self,
        incident: &str,
        time: UnixMs,
        who: &str,
        what: &str,
        detail: &Value,
    ) -> Result<u64, StoreError>;

    /// Log entries of `incident` after `after`, oldest first, at most `limit`; and the newest
    /// `seq`.
    fn log_after(
        &self,
        incident: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<LogEntry>, u64), StoreError>;

    /// Records that `subject` has had a session on this node (idempotent).
    fn note_subject(&mut self, subject: &Subject, now: UnixMs) -> Result<(), StoreError>;

    /// Whether `subject` ever had a session on this node.
    fn knows_subject(&self, subject: &Subject) -> Result<bool, StoreError>;
}

/// The order id of item `item_id`.
pub fn order_id(item_id: i64) -> String {
    format!("ord-{item_id}")
}
