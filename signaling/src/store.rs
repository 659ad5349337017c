//! The node's office store: SQLite (WAL), schema migrations, store-and-forward mailboxes and
//! orders.
//!
//! Model:
//! - an **item** is one office message (chat, order, order state change, SOS, SOS
//!   acknowledgement, read receipt), identified by `(sender, kind, client id)`: the id its sender
//!   chose, within the kind of message. Storing the same `(sender, kind, client id)` twice stores
//!   it once — a sender that retries after a lost acknowledgement never creates a duplicate — and
//!   a chat never answers for an order that happens to carry the same id (schema 3);
//! - every recipient subject has a **mailbox**: its items in order, numbered `seq` 1, 2, 3… per
//!   recipient, without gaps. Delivery is "send everything after the client's cursor"; the client
//!   acknowledges a `seq` and drops duplicates by `seq`, so each item is processed exactly once;
//! - an **order** row tracks the state machine sent → delivered → accepted / declined → done with a
//!   timestamp per transition.
//!
//! Durability: every write is one transaction, committed before the node acknowledges it. The
//! database runs in WAL mode with `synchronous = NORMAL`: a committed transaction survives the
//! process being killed (SIGKILL, OOM, panic); an operating-system crash or power cut may lose
//! the last transactions before a checkpoint. `PRAGMA user_version` holds the schema version;
//! [`Store::open`] migrates older files forward and refuses newer ones.
//!
//! The store also remembers every subject that ever had a session on the node (`subjects`), so
//! that an order to a name nobody ever used is refused instead of waiting in a mailbox no one
//! will read.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension as _};
use serde::Serialize;
use serde_json::Value;

use crate::ids::Subject;
use crate::proto::MailItem;
pub use crate::proto::{LogEntry, Order, OrderState};
use crate::time::UnixMs;

/// Schema version this code writes.
pub const SCHEMA_VERSION: u32 = 3;

/// Why the store failed. Shown to operators (logs) and, as `unavailable`, to clients.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite refused an operation (disk full, file locked, corrupt database…).
    #[error("office store: {0}")]
    Sqlite(#[from] rusqlite::Error),
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
    /// False when `(sender, client id)` was already stored (a retry): nothing was added.
    pub new: bool,
    /// The mailbox entries created, per recipient.
    pub mails: Vec<(Subject, Mail)>,
    /// The item as stored (for a retry: as stored the first time).
    pub item: MailItem,
}

/// The SQLite office store. Not `Sync`: the node keeps it inside the signaling core's lock.
pub struct Store {
    conn: Connection,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

const MIGRATIONS: &[&str] = &[
    // 0 → 1
    "CREATE TABLE items(
        id INTEGER PRIMARY KEY,
        sender TEXT NOT NULL,
        client_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        incident TEXT,
        body TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE(sender, client_id)
    );
    CREATE TABLE mailbox(
        recipient TEXT NOT NULL,
        seq INTEGER NOT NULL,
        item INTEGER NOT NULL REFERENCES items(id),
        PRIMARY KEY(recipient, seq)
    ) WITHOUT ROWID;
    CREATE TABLE cursors(
        recipient TEXT PRIMARY KEY,
        acked INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE orders(
        id TEXT PRIMARY KEY,
        item INTEGER NOT NULL REFERENCES items(id),
        incident TEXT NOT NULL,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        text TEXT NOT NULL,
        state TEXT NOT NULL,
        eta_min INTEGER,
        reason TEXT,
        sent_at INTEGER NOT NULL,
        delivered_at INTEGER,
        accepted_at INTEGER,
        declined_at INTEGER,
        done_at INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX orders_recipient ON orders(recipient);
    CREATE INDEX orders_sender ON orders(sender);",
    // 1 → 2: incidents, assignments and the append-only incident log.
    "CREATE TABLE incidents(
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        open INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        closed_at INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE assignments(
        incident TEXT NOT NULL REFERENCES incidents(id),
        subject TEXT NOT NULL,
        PRIMARY KEY(incident, subject)
    ) WITHOUT ROWID;
    CREATE TABLE incident_log(
        incident TEXT NOT NULL REFERENCES incidents(id),
        seq INTEGER NOT NULL,
        time INTEGER NOT NULL,
        who TEXT NOT NULL,
        what TEXT NOT NULL,
        detail TEXT NOT NULL,
        PRIMARY KEY(incident, seq)
    ) WITHOUT ROWID;
    CREATE TRIGGER incident_log_append_only_u BEFORE UPDATE ON incident_log
        BEGIN SELECT RAISE(ABORT, 'the incident log is append-only'); END;
    CREATE TRIGGER incident_log_append_only_d BEFORE DELETE ON incident_log
        BEGIN SELECT RAISE(ABORT, 'the incident log is append-only'); END;",
    // 2 → 3: an item's idempotency key includes its kind (a chat whose id equals an earlier
    // order's was answered with the order and never stored), and the subjects ever seen. SQLite
    // cannot change a UNIQUE constraint in place: the table is rebuilt (foreign keys are off
    // while migrations run, see `Store::init`), keeping every row id.
    "CREATE TABLE items_v3(
        id INTEGER PRIMARY KEY,
        sender TEXT NOT NULL,
        client_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        incident TEXT,
        body TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE(sender, kind, client_id)
    );
    INSERT INTO items_v3(id, sender, client_id, kind, incident, body, created_at)
        SELECT id, sender, client_id, kind, incident, body, created_at FROM items;
    DROP TABLE items;
    ALTER TABLE items_v3 RENAME TO items;
    CREATE TABLE subjects(
        subject TEXT PRIMARY KEY,
        first_seen INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO subjects(subject, first_seen)
        SELECT who, MIN(time) FROM incident_log WHERE what = 'joined' GROUP BY who;",
];

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
    /// Unix ms.
    pub created_at: u64,
    /// Unix ms.
    pub closed_at: Option<u64>,
    /// Assigned subjects.
    pub assigned: Vec<String>,
}

impl Store {
    /// Opens (creating if needed) the store at `path` and migrates it to [`SCHEMA_VERSION`].
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        Store::init(conn)
    }

    /// A store in memory (tests, tools).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Store::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Store, StoreError> {
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Migrations may rebuild referenced tables, which SQLite allows only with foreign keys
        // off (the pragma is a no-op inside a transaction); each migration checks them itself.
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        let mut store = Store { conn };
        store.migrate()?;
        store.conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let found: u32 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew { found });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            let broken: Option<String> = tx
                .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
                .optional()?;
            if let Some(table) = broken {
                return Err(StoreError::Corrupt(format!(
                    "migration to schema {} leaves a dangling reference in {table}",
                    i + 1
                )));
            }
            tx.pragma_update(None, "user_version", (i + 1) as u32)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// The schema version of the open file.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Stores an item from `sender` with its client id and puts it in each recipient's mailbox,
    /// in one transaction. `build` makes the client-visible item from its row id (so the item can
    /// name itself, e.g. `ord-42`). A retry (same sender, kind and client id) adds nothing and
    /// returns the first copy; the same client id under another kind is another item. An order
    /// row is created when `order` is given.
    #[allow(clippy::too_many_arguments)]
    pub fn put(
        &mut self,
        sender: &Subject,
        client_id: &str,
        kind: &str,
        incident: Option<&str>,
        recipients: &[Subject],
        now: u64,
        order: Option<(&str, &Subject, &str)>,
        build: impl FnOnce(i64) -> MailItem,
    ) -> Result<Stored, StoreError> {
        let tx = self.conn.transaction()?;
        let existing: Option<(i64, String)> = tx
            .query_row(
                "SELECT id, body FROM items WHERE sender = ?1 AND kind = ?2 AND client_id = ?3",
                params![sender.as_str(), kind, client_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((item_id, body)) = existing {
            let item = parse_item(&body)?;
            return Ok(Stored {
                item_id,
                new: false,
                mails: Vec::new(),
                item,
            });
        }
        tx.execute(
            "INSERT INTO items(sender, client_id, kind, incident, body, created_at) VALUES (?1, ?2, ?3, ?4, '{}', ?5)",
            params![sender.as_str(), client_id, kind, incident, now as i64],
        )?;
        let item_id = tx.last_insert_rowid();
        let item = build(item_id);
        let body = serde_json::to_string(&item).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        tx.execute(
            "UPDATE items SET body = ?1 WHERE id = ?2",
            params![body, item_id],
        )?;
        if let Some((incident, to, text)) = order {
            tx.execute(
                "INSERT INTO orders(id, item, incident, sender, recipient, text, state, sent_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'sent', ?7)",
                params![
                    order_id(item_id),
                    item_id,
                    incident,
                    sender.as_str(),
                    to.as_str(),
                    text,
                    now as i64
                ],
            )?;
        }
        let mut mails = Vec::with_capacity(recipients.len());
        for r in recipients {
            let seq: i64 = tx.query_row(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM mailbox WHERE recipient = ?1",
                params![r.as_str()],
                |row| row.get(0),
            )?;
            tx.execute(
                "INSERT INTO mailbox(recipient, seq, item) VALUES (?1, ?2, ?3)",
                params![r.as_str(), seq, item_id],
            )?;
            mails.push((
                r.clone(),
                Mail {
                    seq: seq as u64,
                    item: item.clone(),
                },
            ));
        }
        tx.commit()?;
        Ok(Stored {
            item_id,
            new: true,
            mails,
            item,
        })
    }

    /// Mailbox entries of `recipient` after `after`, oldest first, at most `limit`.
    pub fn mail_after(
        &self,
        recipient: &Subject,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Mail>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT m.seq, i.body FROM mailbox m JOIN items i ON i.id = m.item
             WHERE m.recipient = ?1 AND m.seq > ?2 ORDER BY m.seq LIMIT ?3",
        )?;
        let rows = st.query_map(
            params![recipient.as_str(), after as i64, limit as i64],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, body) = row?;
            let item = parse_item(&body)?;
            out.push(Mail {
                seq: seq as u64,
                item,
            });
        }
        Ok(out)
    }

    /// Sender and kind of item `item_id`, if it is in `recipient`'s mailbox.
    pub fn item_in_mailbox(
        &self,
        recipient: &Subject,
        item_id: i64,
    ) -> Result<Option<(String, String)>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT i.sender, i.kind FROM mailbox m JOIN items i ON i.id = m.item
                 WHERE m.recipient = ?1 AND m.item = ?2 LIMIT 1",
                params![recipient.as_str(), item_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Records that `subject` has had a session on this node (idempotent).
    pub fn note_subject(&mut self, subject: &Subject, now: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO subjects(subject, first_seen) VALUES (?1, ?2)",
            params![subject.as_str(), now as i64],
        )?;
        Ok(())
    }

    /// Whether `subject` ever had a session on this node (see [`Store::note_subject`]).
    pub fn knows_subject(&self, subject: &Subject) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM subjects WHERE subject = ?1",
                params![subject.as_str()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// The newest `seq` in `recipient`'s mailbox (0 if empty).
    pub fn last_seq(&self, recipient: &Subject) -> Result<u64, StoreError> {
        let v: i64 = self.conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM mailbox WHERE recipient = ?1",
            params![recipient.as_str()],
            |r| r.get(0),
        )?;
        Ok(v as u64)
    }

    /// The highest `seq` `recipient` acknowledged (0 if none).
    pub fn acked(&self, recipient: &Subject) -> Result<u64, StoreError> {
        let v: Option<i64> = self
            .conn
            .query_row(
                "SELECT acked FROM cursors WHERE recipient = ?1",
                params![recipient.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.unwrap_or(0) as u64)
    }

    /// Records that `recipient` processed everything up to `upto` (never moves backwards, never
    /// past the mailbox's end). Returns the orders that became delivered by it:
    /// `(order id, sender)`.
    pub fn ack(
        &mut self,
        recipient: &Subject,
        upto: u64,
        now: u64,
    ) -> Result<Vec<(String, Subject)>, StoreError> {
        let tx = self.conn.transaction()?;
        let old: i64 = tx
            .query_row(
                "SELECT acked FROM cursors WHERE recipient = ?1",
                params![recipient.as_str()],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        let last: i64 = tx.query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM mailbox WHERE recipient = ?1",
            params![recipient.as_str()],
            |r| r.get(0),
        )?;
        let upto = (upto.min(i64::MAX as u64) as i64).min(last);
        if upto <= old {
            return Ok(Vec::new());
        }
        tx.execute(
            "INSERT INTO cursors(recipient, acked) VALUES (?1, ?2)
             ON CONFLICT(recipient) DO UPDATE SET acked = excluded.acked",
            params![recipient.as_str(), upto],
        )?;
        let mut delivered = Vec::new();
        {
            let mut st = tx.prepare(
                "SELECT o.id, o.sender FROM orders o JOIN mailbox m ON m.item = o.item
                 WHERE m.recipient = ?1 AND m.seq > ?2 AND m.seq <= ?3
                   AND o.recipient = ?1 AND o.state = 'sent'",
            )?;
            let rows = st.query_map(params![recipient.as_str(), old, upto], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            for row in rows {
                let (id, sender) = row?;
                let sender =
                    Subject::parse(&sender).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                delivered.push((id, sender));
            }
        }
        for (id, _) in &delivered {
            tx.execute(
                "UPDATE orders SET state = 'delivered', delivered_at = ?2 WHERE id = ?1",
                params![id, now as i64],
            )?;
        }
        tx.commit()?;
        Ok(delivered)
    }

    /// One order.
    pub fn order(&self, id: &str) -> Result<Option<Order>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(&format!("{ORDER_SELECT} WHERE id = ?1"))?;
        let mut rows = st.query(params![id])?;
        match rows.next()? {
            Some(r) => Ok(Some(order_row(r)?)),
            None => Ok(None),
        }
    }

    /// Moves order `id` to `state` (the caller checked who may), recording ETA or reason.
    pub fn set_order_state(
        &mut self,
        id: &str,
        state: OrderState,
        now: u64,
        eta_min: Option<u32>,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let column = match state {
            OrderState::Sent => "sent_at",
            OrderState::Delivered => "delivered_at",
            OrderState::Accepted => "accepted_at",
            OrderState::Declined => "declined_at",
            OrderState::Done => "done_at",
        };
        self.conn.execute(
            &format!(
                "UPDATE orders SET state = ?2, {column} = ?3,
                   eta_min = COALESCE(?4, eta_min), reason = COALESCE(?5, reason),
                   delivered_at = COALESCE(delivered_at, ?3)
                 WHERE id = ?1"
            ),
            params![id, state.as_str(), now as i64, eta_min, reason],
        )?;
        Ok(())
    }

    /// Orders sent by or addressed to `subject` (every order when `None`), newest first, at most
    /// `limit`.
    pub fn orders(
        &self,
        subject: Option<&Subject>,
        limit: usize,
    ) -> Result<Vec<Order>, StoreError> {
        let mut out = Vec::new();
        match subject {
            Some(s) => {
                let mut st = self.conn.prepare_cached(&format!(
                    "{ORDER_SELECT} WHERE sender = ?1 OR recipient = ?1 ORDER BY sent_at DESC, id DESC LIMIT ?2"
                ))?;
                let mut rows = st.query(params![s.as_str(), limit as i64])?;
                while let Some(r) = rows.next()? {
                    out.push(order_row(r)?);
                }
            }
            None => {
                let mut st = self.conn.prepare_cached(&format!(
                    "{ORDER_SELECT} ORDER BY sent_at DESC, id DESC LIMIT ?1"
                ))?;
                let mut rows = st.query(params![limit as i64])?;
                while let Some(r) = rows.next()? {
                    out.push(order_row(r)?);
                }
            }
        }
        Ok(out)
    }
}

const ORDER_SELECT: &str =
    "SELECT id, incident, sender, recipient, text, state, eta_min, reason, sent_at,
    delivered_at, accepted_at, declined_at, done_at FROM orders";

fn order_row(r: &rusqlite::Row<'_>) -> Result<Order, StoreError> {
    let ms = |i: usize| -> Result<Option<UnixMs>, rusqlite::Error> {
        Ok(r.get::<_, Option<i64>>(i)?.map(|v| UnixMs(v as u64)))
    };
    Ok(Order {
        id: r.get(0)?,
        incident: r.get(1)?,
        from: r.get(2)?,
        to: r.get(3)?,
        text: r.get(4)?,
        state: {
            let st: String = r.get(5)?;
            OrderState::parse(&st)
                .ok_or_else(|| StoreError::Corrupt(format!("order state {st:?}")))?
        },
        eta_min: r.get(6)?,
        reason: r.get(7)?,
        sent_at: UnixMs(r.get::<_, i64>(8)? as u64),
        delivered_at: ms(9)?,
        accepted_at: ms(10)?,
        declined_at: ms(11)?,
        done_at: ms(12)?,
    })
}

impl Store {
    /// Every stored incident with its assignments.
    pub fn incidents(&self) -> Result<Vec<IncidentRow>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT id, name, open, created_by, created_at, closed_at FROM incidents ORDER BY id",
        )?;
        let rows = st.query_map([], |r| {
            Ok(IncidentRow {
                id: r.get(0)?,
                name: r.get(1)?,
                open: r.get::<_, i64>(2)? != 0,
                created_by: r.get(3)?,
                created_at: r.get::<_, i64>(4)? as u64,
                closed_at: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
                assigned: Vec::new(),
            })
        })?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?);
        }
        let mut st = self
            .conn
            .prepare("SELECT subject FROM assignments WHERE incident = ?1 ORDER BY subject")?;
        for inc in &mut out {
            let subs = st.query_map(params![inc.id], |r| r.get::<_, String>(0))?;
            for s in subs {
                inc.assigned.push(s?);
            }
        }
        Ok(out)
    }

    /// Creates or updates an incident (not its assignments).
    pub fn save_incident(&mut self, inc: &IncidentRow) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO incidents(id, name, open, created_by, created_at, closed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(id) DO UPDATE SET name = excluded.name, open = excluded.open, closed_at = excluded.closed_at",
            params![inc.id, inc.name, inc.open as i64, inc.created_by, inc.created_at as i64, inc.closed_at.map(|v| v as i64)],
        )?;
        Ok(())
    }

    /// Assigns (`true`) or unassigns `subject` to `incident`.
    pub fn set_assigned(
        &mut self,
        incident: &str,
        subject: &str,
        assigned: bool,
    ) -> Result<(), StoreError> {
        if assigned {
            self.conn.execute(
                "INSERT OR IGNORE INTO assignments(incident, subject) VALUES (?1, ?2)",
                params![incident, subject],
            )?;
        } else {
            self.conn.execute(
                "DELETE FROM assignments WHERE incident = ?1 AND subject = ?2",
                params![incident, subject],
            )?;
        }
        Ok(())
    }

    /// Appends to an incident's log; returns the entry's `seq`.
    pub fn append_log(
        &mut self,
        incident: &str,
        time: u64,
        who: &str,
        what: &str,
        detail: &Value,
    ) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let seq: i64 = tx.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM incident_log WHERE incident = ?1",
            params![incident],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO incident_log(incident, seq, time, who, what, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![incident, seq, time as i64, who, what, detail.to_string()],
        )?;
        tx.commit()?;
        Ok(seq as u64)
    }

    /// Log entries of `incident` after `after`, oldest first, at most `limit`; and the newest `seq`.
    pub fn log_after(
        &self,
        incident: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<LogEntry>, u64), StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT seq, time, who, what, detail FROM incident_log WHERE incident = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = st.query_map(
            params![incident, after.min(i64::MAX as u64) as i64, limit as i64],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            },
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, time, who, what, detail) = row?;
            let detail =
                serde_json::from_str(&detail).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.push(LogEntry {
                seq: seq as u64,
                time: UnixMs(time as u64),
                who,
                what,
                detail,
            });
        }
        let last: i64 = self.conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM incident_log WHERE incident = ?1",
            params![incident],
            |r| r.get(0),
        )?;
        Ok((out, last as u64))
    }
}

/// A stored item body. A kind this version does not know is a corrupt row: only this node
/// writes the store.
fn parse_item(body: &str) -> Result<MailItem, StoreError> {
    match serde_json::from_str(body) {
        Ok(MailItem::Unknown) => Err(StoreError::Corrupt(format!(
            "mail item of unknown kind: {}",
            body.chars().take(80).collect::<String>()
        ))),
        Ok(item) => Ok(item),
        Err(e) => Err(StoreError::Corrupt(e.to_string())),
    }
}

/// The order id of item `item_id`.
pub fn order_id(item_id: i64) -> String {
    format!("ord-{item_id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(x: &str) -> Subject {
        Subject::parse(x).unwrap()
    }

    fn chat(id: i64, text: &str) -> MailItem {
        MailItem::Chat {
            id: id as u64,
            msg_id: format!("m{id}"),
            from: s("cmd"),
            incident: None,
            to: Some(s("off-1")),
            text: text.into(),
            time: crate::time::UnixMs(1),
        }
    }

    fn order(id: i64) -> MailItem {
        MailItem::Order {
            order: order_id(id),
            msg_id: "o".into(),
            from: s("cmd"),
            to: s("off-1"),
            incident: crate::ids::IncidentId::parse("duty").unwrap(),
            text: "go".into(),
            time: crate::time::UnixMs(1),
        }
    }

    #[test]
    fn items_are_stored_once_and_numbered_per_recipient() {
        let mut st = Store::open_in_memory().unwrap();
        let a = st
            .put(
                &s("cmd"),
                "m1",
                "chat",
                Some("duty"),
                &[s("off-1"), s("off-2")],
                10,
                None,
                |id| chat(id, "a"),
            )
            .unwrap();
        assert!(a.new);
        assert_eq!(
            a.mails
                .iter()
                .map(|(r, m)| (r.as_str(), m.seq))
                .collect::<Vec<_>>(),
            vec![("off-1", 1), ("off-2", 1)]
        );
        let again = st
            .put(
                &s("cmd"),
                "m1",
                "chat",
                Some("duty"),
                &[s("off-1")],
                11,
                None,
                |id| chat(id, "again"),
            )
            .unwrap();
        assert!(!again.new);
        assert_eq!(again.item, a.item);
        st.put(
            &s("cmd"),
            "m2",
            "chat",
            None,
            &[s("off-1")],
            12,
            None,
            |id| chat(id, "b"),
        )
        .unwrap();
        let mail = st.mail_after(&s("off-1"), 0, 100).unwrap();
        assert_eq!(mail.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(st.mail_after(&s("off-1"), 1, 100).unwrap().len(), 1);
        assert_eq!(st.last_seq(&s("off-2")).unwrap(), 1);
    }

    #[test]
    fn ack_delivers_orders_and_never_moves_back() {
        let mut st = Store::open_in_memory().unwrap();
        let o = st
            .put(
                &s("cmd"),
                "o1",
                "order",
                Some("duty"),
                &[s("off-1")],
                10,
                Some(("duty", &s("off-1"), "go")),
                order,
            )
            .unwrap();
        let id = order_id(o.item_id);
        assert_eq!(st.order(&id).unwrap().unwrap().state, OrderState::Sent);
        let d = st.ack(&s("off-1"), 1, 20).unwrap();
        assert_eq!(d, vec![(id.clone(), s("cmd"))]);
        assert_eq!(
            st.order(&id).unwrap().unwrap().delivered_at,
            Some(UnixMs(20))
        );
        assert!(st.ack(&s("off-1"), 0, 30).unwrap().is_empty());
        assert!(
            st.ack(&s("off-1"), 99, 30).unwrap().is_empty(),
            "clamped to the mailbox end"
        );
        assert_eq!(st.acked(&s("off-1")).unwrap(), 1);
        st.set_order_state(&id, OrderState::Accepted, 40, Some(7), None)
            .unwrap();
        let o = st.order(&id).unwrap().unwrap();
        assert_eq!(
            (o.state, o.eta_min, o.accepted_at),
            (OrderState::Accepted, Some(7), Some(UnixMs(40)))
        );
        assert_eq!(st.orders(Some(&s("cmd")), 10).unwrap().len(), 1);
        assert!(st.orders(Some(&s("off-9")), 10).unwrap().is_empty());
    }

    #[test]
    fn incidents_and_an_append_only_log() {
        let mut st = Store::open_in_memory().unwrap();
        let row = IncidentRow {
            id: "fire-1".into(),
            name: "Fire".into(),
            open: true,
            created_by: "cmd".into(),
            created_at: 5,
            closed_at: None,
            assigned: vec![],
        };
        st.save_incident(&row).unwrap();
        st.set_assigned("fire-1", "off-1", true).unwrap();
        st.set_assigned("fire-1", "off-1", true).unwrap();
        assert_eq!(
            st.append_log("fire-1", 6, "cmd", "created", &json!({"name": "Fire"}))
                .unwrap(),
            1
        );
        assert_eq!(
            st.append_log("fire-1", 7, "cmd", "closed", &Value::Null)
                .unwrap(),
            2
        );
        st.save_incident(&IncidentRow {
            open: false,
            closed_at: Some(7),
            ..row
        })
        .unwrap();
        let all = st.incidents().unwrap();
        assert_eq!(
            (all[0].open, all[0].closed_at, all[0].assigned.clone()),
            (false, Some(7), vec!["off-1".to_owned()])
        );
        let (entries, last) = st.log_after("fire-1", 1, 10).unwrap();
        assert_eq!(
            (entries.len(), entries[0].what.as_str(), last),
            (1, "closed", 2)
        );
        assert!(
            st.conn.execute("DELETE FROM incident_log", []).is_err(),
            "append-only"
        );
        assert!(
            st.conn
                .execute("UPDATE incident_log SET what = 'x'", [])
                .is_err(),
            "append-only"
        );
    }

    #[test]
    fn the_same_client_id_under_another_kind_is_another_item() {
        let mut st = Store::open_in_memory().unwrap();
        let order = st
            .put(
                &s("cmd"),
                "m1",
                "order",
                Some("duty"),
                &[s("off-1")],
                10,
                Some(("duty", &s("off-1"), "go")),
                order,
            )
            .unwrap();
        let chat = st
            .put(
                &s("cmd"),
                "m1",
                "chat",
                Some("duty"),
                &[s("off-1")],
                11,
                None,
                |id| chat(id, "c"),
            )
            .unwrap();
        assert!(chat.new, "a chat is not a retry of an order");
        assert_ne!(chat.item_id, order.item_id);
        assert_eq!(
            st.mail_after(&s("off-1"), 0, 10).unwrap().len(),
            2,
            "both are in the mailbox"
        );
    }

    #[test]
    fn a_schema_2_file_migrates_keeping_its_rows_and_learns_its_subjects() {
        let dir = tempfile_dir();
        let path = dir.join("office.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..2] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute_batch(
                "INSERT INTO items VALUES (7, 'cmd', 'm1', 'order', 'duty', '{\"kind\":\"order\",\"order\":\"ord-7\",\"msg_id\":\"m1\",\"from\":\"cmd\",\"to\":\"off-1\",\"incident\":\"duty\",\"text\":\"go\",\"time\":5}', 5);
                 INSERT INTO mailbox VALUES ('off-1', 1, 7);
                 INSERT INTO orders(id, item, incident, sender, recipient, text, state, sent_at)
                     VALUES ('ord-7', 7, 'duty', 'cmd', 'off-1', 'go', 'sent', 5);
                 INSERT INTO incidents VALUES ('duty', 'Standing duty', 1, 'node-a', 1, NULL);
                 INSERT INTO incident_log VALUES ('duty', 1, 3, 'off-1', 'joined', '{}');
                 INSERT INTO incident_log VALUES ('duty', 2, 4, 'off-1', 'joined', '{}');",
            )
            .unwrap();
        }
        let mut st = Store::open(&path).unwrap();
        assert_eq!(st.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(st.order("ord-7").unwrap().unwrap().to, "off-1");
        assert_eq!(
            st.mail_after(&s("off-1"), 0, 10).unwrap()[0].item.kind(),
            "order"
        );
        assert!(
            st.knows_subject(&s("off-1")).unwrap(),
            "learnt from the log"
        );
        assert!(!st.knows_subject(&s("off-2")).unwrap());
        let retry = st
            .put(
                &s("cmd"),
                "m1",
                "order",
                None,
                &[s("off-1")],
                9,
                None,
                |id| chat(id, "again"),
            )
            .unwrap();
        assert_eq!((retry.new, retry.item_id), (false, 7), "still idempotent");
        assert!(
            st.conn
                .execute("INSERT INTO mailbox VALUES ('off-1', 2, 999)", [])
                .is_err(),
            "foreign keys are enforced again after the migration"
        );
        st.note_subject(&s("off-2"), 20).unwrap();
        st.note_subject(&s("off-2"), 21).unwrap();
        assert!(st.knows_subject(&s("off-2")).unwrap());
        drop(st);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn file_store_survives_reopen_and_refuses_newer_schema() {
        let dir = tempfile_dir();
        let path = dir.join("office.db");
        {
            let mut st = Store::open(&path).unwrap();
            st.put(
                &s("cmd"),
                "m1",
                "chat",
                None,
                &[s("off-1")],
                1,
                None,
                |id| chat(id, "x"),
            )
            .unwrap();
        }
        let st = Store::open(&path).unwrap();
        assert_eq!(st.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(
            st.mail_after(&s("off-1"), 0, 10).unwrap()[0].item,
            chat(1, "x")
        );
        st.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(st);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 99 })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "yiwang-store-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
