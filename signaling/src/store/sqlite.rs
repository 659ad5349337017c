//! The SQLite [`OfficeStore`]: WAL mode, schema migrations, the node's `office.db`.
//!
//! Durability: every write is one transaction, committed before the call returns. The database
//! runs in WAL mode with `synchronous = FULL`: the WAL is fsynced at every commit, so a committed
//! transaction — an acknowledged order — survives the process being killed (SIGKILL, OOM, panic)
//! and an operating-system crash or power cut too. (`NORMAL` would fsync only at checkpoints and
//! could lose the last acknowledged orders on power loss; bench/RESULTS.md has what FULL costs.)
//!
//! A full disk is an error, not a panic: the write fails with [`StoreError::Full`], the
//! transaction is rolled back (nothing of it is stored), and the next write succeeds once there
//! is room again. `PRAGMA user_version` holds the schema version;
//! [`SqliteStore::open`] migrates older files forward and refuses newer ones. Schema 3 made the
//! idempotency key `(sender, kind, client id)` and added the `subjects` table.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension as _};
use serde_json::Value;

use super::{
    order_id, IncidentRow, LogEntry, Mail, NewItem, NewOrder, OfficeStore, Order, OrderState,
    StoreError, Stored,
};
use crate::ids::Subject;
use crate::proto::MailItem;
use crate::time::UnixMs;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            return StoreError::Full;
        }
        StoreError::Backend(Box::new(e))
    }
}

/// Schema version this code writes.
pub const SCHEMA_VERSION: u32 = 3;

/// The SQLite office store. `Send`, not `Sync`: one owner (the signaling core) uses it.
pub struct SqliteStore {
    conn: Connection,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
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

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and migrates it to [`SCHEMA_VERSION`].
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        SqliteStore::init(conn)
    }

    /// A store in memory (tests, tools).
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        SqliteStore::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<SqliteStore, StoreError> {
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Migrations may rebuild referenced tables, which SQLite allows only with foreign keys
        // off (the pragma is a no-op inside a transaction); each migration checks them itself.
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        let mut store = SqliteStore { conn };
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
}

impl OfficeStore for SqliteStore {
    fn put(
        &mut self,
        new: NewItem<'_>,
        build: &mut dyn FnMut(i64) -> MailItem,
    ) -> Result<Stored, StoreError> {
        let NewItem {
            sender,
            client_id,
            kind,
            incident,
            recipients,
            now,
            order,
        } = new;
        let now = now.as_millis();
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
        if let Some(NewOrder { incident, to, text }) = order {
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

    fn mail_after(
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

    fn item_in_mailbox(
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

    fn note_subject(&mut self, subject: &Subject, now: UnixMs) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO subjects(subject, first_seen) VALUES (?1, ?2)",
            params![subject.as_str(), now.as_millis() as i64],
        )?;
        Ok(())
    }

    fn knows_subject(&self, subject: &Subject) -> Result<bool, StoreError> {
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

    fn last_seq(&self, recipient: &Subject) -> Result<u64, StoreError> {
        let v: i64 = self.conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM mailbox WHERE recipient = ?1",
            params![recipient.as_str()],
            |r| r.get(0),
        )?;
        Ok(v as u64)
    }

    fn acked(&self, recipient: &Subject) -> Result<u64, StoreError> {
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

    fn ack(
        &mut self,
        recipient: &Subject,
        upto: u64,
        now: UnixMs,
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
                params![id, now.as_millis() as i64],
            )?;
        }
        tx.commit()?;
        Ok(delivered)
    }

    fn order(&self, id: &str) -> Result<Option<Order>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(&format!("{ORDER_SELECT} WHERE id = ?1"))?;
        let mut rows = st.query(params![id])?;
        match rows.next()? {
            Some(r) => Ok(Some(order_row(r)?)),
            None => Ok(None),
        }
    }

    fn set_order_state(
        &mut self,
        id: &str,
        state: OrderState,
        now: UnixMs,
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
            params![id, state.as_str(), now.as_millis() as i64, eta_min, reason],
        )?;
        Ok(())
    }

    fn orders(&self, subject: Option<&Subject>, limit: usize) -> Result<Vec<Order>, StoreError> {
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

    fn incidents(&self) -> Result<Vec<IncidentRow>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT id, name, open, created_by, created_at, closed_at FROM incidents ORDER BY id",
        )?;
        let rows = st.query_map([], |r| {
            Ok(IncidentRow {
                id: r.get(0)?,
                name: r.get(1)?,
                open: r.get::<_, i64>(2)? != 0,
                created_by: r.get(3)?,
                created_at: UnixMs(r.get::<_, i64>(4)? as u64),
                closed_at: r.get::<_, Option<i64>>(5)?.map(|v| UnixMs(v as u64)),
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

    fn save_incident(&mut self, inc: &IncidentRow) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO incidents(id, name, open, created_by, created_at, closed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(id) DO UPDATE SET name = excluded.name, open = excluded.open, closed_at = excluded.closed_at",
            params![inc.id, inc.name, inc.open as i64, inc.created_by, inc.created_at.as_millis() as i64, inc.closed_at.map(|v| v.as_millis() as i64)],
        )?;
        Ok(())
    }

    fn set_assigned(
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

    fn append_log(
        &mut self,
        incident: &str,
        time: UnixMs,
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
            params![incident, seq, time.as_millis() as i64, who, what, detail.to_string()],
        )?;
        tx.commit()?;
        Ok(seq as u64)
    }

    fn log_after(
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
        let mut st = SqliteStore::open_in_memory().unwrap();
        let a = st
            .put(
                NewItem {
                    sender: &s("cmd"),
                    client_id: "m1",
                    kind: "chat",
                    incident: Some("duty"),
                    recipients: &[s("off-1"), s("off-2")],
                    now: UnixMs(10),
                    order: None,
                },
                &mut |id| chat(id, "a"),
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
                NewItem {
                    sender: &s("cmd"),
                    client_id: "m1",
                    kind: "chat",
                    incident: Some("duty"),
                    recipients: &[s("off-1")],
                    now: UnixMs(11),
                    order: None,
                },
                &mut |id| chat(id, "again"),
            )
            .unwrap();
        assert!(!again.new);
        assert_eq!(again.item, a.item);
        st.put(
            NewItem {
                sender: &s("cmd"),
                client_id: "m2",
                kind: "chat",
                incident: None,
                recipients: &[s("off-1")],
                now: UnixMs(12),
                order: None,
            },
            &mut |id| chat(id, "b"),
        )
        .unwrap();
        let mail = st.mail_after(&s("off-1"), 0, 100).unwrap();
        assert_eq!(mail.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(st.mail_after(&s("off-1"), 1, 100).unwrap().len(), 1);
        assert_eq!(st.last_seq(&s("off-2")).unwrap(), 1);
    }

    #[test]
    fn ack_delivers_orders_and_never_moves_back() {
        let mut st = SqliteStore::open_in_memory().unwrap();
        let o = st
            .put(
                NewItem {
                    sender: &s("cmd"),
                    client_id: "o1",
                    kind: "order",
                    incident: Some("duty"),
                    recipients: &[s("off-1")],
                    now: UnixMs(10),
                    order: Some(NewOrder {
                        incident: "duty",
                        to: &s("off-1"),
                        text: "go",
                    }),
                },
                &mut order,
            )
            .unwrap();
        let id = order_id(o.item_id);
        assert_eq!(st.order(&id).unwrap().unwrap().state, OrderState::Sent);
        let d = st.ack(&s("off-1"), 1, UnixMs(20)).unwrap();
        assert_eq!(d, vec![(id.clone(), s("cmd"))]);
        assert_eq!(
            st.order(&id).unwrap().unwrap().delivered_at,
            Some(UnixMs(20))
        );
        assert!(st.ack(&s("off-1"), 0, UnixMs(30)).unwrap().is_empty());
        assert!(
            st.ack(&s("off-1"), 99, UnixMs(30)).unwrap().is_empty(),
            "clamped to the mailbox end"
        );
        assert_eq!(st.acked(&s("off-1")).unwrap(), 1);
        st.set_order_state(&id, OrderState::Accepted, UnixMs(40), Some(7), None)
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
        let mut st = SqliteStore::open_in_memory().unwrap();
        let row = IncidentRow {
            id: "fire-1".into(),
            name: "Fire".into(),
            open: true,
            created_by: "cmd".into(),
            created_at: UnixMs(5),
            closed_at: None,
            assigned: vec![],
        };
        st.save_incident(&row).unwrap();
        st.set_assigned("fire-1", "off-1", true).unwrap();
        st.set_assigned("fire-1", "off-1", true).unwrap();
        assert_eq!(
            st.append_log(
                "fire-1",
                UnixMs(6),
                "cmd",
                "created",
                &json!({"name": "Fire"})
            )
            .unwrap(),
            1
        );
        assert_eq!(
            st.append_log("fire-1", UnixMs(7), "cmd", "closed", &Value::Null)
                .unwrap(),
            2
        );
        st.save_incident(&IncidentRow {
            open: false,
            closed_at: Some(UnixMs(7)),
            ..row
        })
        .unwrap();
        let all = st.incidents().unwrap();
        assert_eq!(
            (all[0].open, all[0].closed_at, all[0].assigned.clone()),
            (false, Some(UnixMs(7)), vec!["off-1".to_owned()])
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
        let mut st = SqliteStore::open_in_memory().unwrap();
        let order = st
            .put(
                NewItem {
                    sender: &s("cmd"),
                    client_id: "m1",
                    kind: "order",
                    incident: Some("duty"),
                    recipients: &[s("off-1")],
                    now: UnixMs(10),
                    order: Some(NewOrder {
                        incident: "duty",
                        to: &s("off-1"),
                        text: "go",
                    }),
                },
                &mut order,
            )
            .unwrap();
        let chat = st
            .put(
                NewItem {
                    sender: &s("cmd"),
                    client_id: "m1",
                    kind: "chat",
                    incident: Some("duty"),
                    recipients: &[s("off-1")],
                    now: UnixMs(11),
                    order: None,
                },
                &mut |id| chat(id, "c"),
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
        let mut st = SqliteStore::open(&path).unwrap();
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
                NewItem {
                    sender: &s("cmd"),
                    client_id: "m1",
                    kind: "order",
                    incident: None,
                    recipients: &[s("off-1")],
                    now: UnixMs(9),
                    order: None,
                },
                &mut |id| chat(id, "again"),
            )
            .unwrap();
        assert_eq!((retry.new, retry.item_id), (false, 7), "still idempotent");
        assert!(
            st.conn
                .execute("INSERT INTO mailbox VALUES ('off-1', 2, 999)", [])
                .is_err(),
            "foreign keys are enforced again after the migration"
        );
        st.note_subject(&s("off-2"), UnixMs(20)).unwrap();
        st.note_subject(&s("off-2"), UnixMs(21)).unwrap();
        assert!(st.knows_subject(&s("off-2")).unwrap());
        drop(st);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn file_store_survives_reopen_and_refuses_newer_schema() {
        let dir = tempfile_dir();
        let path = dir.join("office.db");
        {
            let mut st = SqliteStore::open(&path).unwrap();
            st.put(
                NewItem {
                    sender: &s("cmd"),
                    client_id: "m1",
                    kind: "chat",
                    incident: None,
                    recipients: &[s("off-1")],
                    now: UnixMs(1),
                    order: None,
                },
                &mut |id| chat(id, "x"),
            )
            .unwrap();
        }
        let st = SqliteStore::open(&path).unwrap();
        assert_eq!(st.schema_version().unwrap(), SCHEMA_VERSION);
        // WAL, fsynced at every commit (synchronous = FULL is 2).
        let mode: String = st
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        let sync: i64 = st
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 2));
        assert_eq!(
            st.mail_after(&s("off-1"), 0, 10).unwrap()[0].item,
            chat(1, "x")
        );
        st.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(st);
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::TooNew { found: 99 })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_full_disk_is_its_own_error() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let e = StoreError::from(full);
        assert!(matches!(e, StoreError::Full), "{e}");
        assert!(e.to_string().contains("disk is full"), "{e}");
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(matches!(StoreError::from(busy), StoreError::Backend(_)));
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
