//! The office: chat, SOS and its acknowledgement, orders and **order states**, read receipts,
//! and each subject's mailbox (sync and acknowledgement) — stored before they are acknowledged.
//!
//! Owns the raised SOS alerts (in memory: after a restart the alerts are still delivered, but
//! cannot be acknowledged) and the rules of the office messages. Everything durable lives in the
//! [`OfficeStore`] the dispatch lends it. Who receives an incident's message is membership's
//! business: the dispatch computes the recipients and passes them in; this component returns
//! what was stored, and the dispatch delivers it to the connections and writes the logs.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::auth::{Action, Claims, Role};
use crate::ids::{IncidentId, Subject};
use crate::proto::{
    valid_msg_id, ErrorCode, MailItem, OrderAnswer, OrderState, Position, ProtoError, RequestId,
};
use crate::store::{order_id, Mail, NewItem, NewOrder, OfficeStore, Order, StoreError, Stored};
use crate::time::UnixMs;

/// Mailbox entries sent per `mail_sync` reply at most; the reply says `more` when there are more.
pub const MAIL_SYNC_BATCH: usize = 1000;

/// A store failure as the client sees it (`unavailable`; nothing was stored).
pub fn store_err(re: Option<RequestId>, e: StoreError) -> ProtoError {
    ProtoError::new(re, ErrorCode::Unavailable, e.to_string())
}

fn bad(re: Option<RequestId>, m: impl Into<String>) -> ProtoError {
    ProtoError::new(re, ErrorCode::BadRequest, m)
}

/// A chat's or an order's text: not blank, at most 4000 characters.
pub fn check_text(re: Option<RequestId>, text: &str) -> Result<(), ProtoError> {
    if text.trim().is_empty() || text.chars().count() > 4000 {
        return Err(bad(re, "text must be 1..=4000 characters"));
    }
    Ok(())
}

/// The sender's message id (named `field` in the error), or a fresh one (then a retry would be
/// stored twice).
pub fn msg_id(
    re: Option<RequestId>,
    msg_id: Option<String>,
    field: &str,
) -> Result<String, ProtoError> {
    match msg_id {
        Some(m) if valid_msg_id(&m) => Ok(m),
        Some(_) => Err(bad(
            re,
            format!("{field} must be 1..=64 characters of A-Z a-z 0-9 . _ : -"),
        )),
        None => Ok(format!("auto-{}", random_id())),
    }
}

fn random_id() -> String {
    use rand::RngCore as _;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Mailbox entries to deliver, per recipient.
pub type Mails = Vec<(Subject, Mail)>;

/// Whom a chat goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTarget {
    /// Everyone in (or assigned to) the incident.
    Incident(IncidentId),
    /// One subject.
    Direct(Subject),
}

/// A stored office message the dispatch must deliver, and the log entry it makes.
#[derive(Debug, Clone, PartialEq)]
pub struct Filed {
    /// The mailbox entries created (empty for a retry).
    pub mails: Mails,
    /// The incident log entry to write (`what`, `detail`), when the message is new.
    pub log: Option<(IncidentId, &'static str, Value)>,
}

/// A raised SOS not yet acknowledged.
struct OpenSos {
    from: Subject,
    recipients: Vec<Subject>,
    incidents: Vec<IncidentId>,
}

/// The office's own state: the raised SOS alerts.
#[derive(Default)]
pub struct Office {
    open_sos: BTreeMap<String, OpenSos>,
}

/// A `mail_sync` answer: the entries to send, then the reply's numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Sync {
    /// Entries after the cursor, at most [`MAIL_SYNC_BATCH`].
    pub mails: Vec<Mail>,
    /// The newest `seq` of the mailbox.
    pub last: u64,
    /// The `seq` of the last entry sent (the cursor if none).
    pub sent_upto: u64,
    /// More entries wait after `sent_upto`.
    pub more: bool,
}

impl Office {
    /// No SOS raised.
    pub fn new() -> Office {
        Office::default()
    }

    /// Whom a chat goes to: exactly one of `incident` (the sender's session must be in it:
    /// `in_incident`) and `to` (another subject).
    pub fn chat_target(
        re: RequestId,
        sender: &Subject,
        incident: Option<&IncidentId>,
        to: Option<&Subject>,
        in_incident: bool,
    ) -> Result<ChatTarget, ProtoError> {
        match (incident, to) {
            (Some(i), None) if in_incident => Ok(ChatTarget::Incident(i.clone())),
            (Some(i), None) => Err(ProtoError::new(
                Some(re),
                ErrorCode::Forbidden,
                format!("join incident {i} to chat in it"),
            )),
            (None, Some(t)) if t != sender => Ok(ChatTarget::Direct(t.clone())),
            (None, Some(_)) => Err(bad(Some(re), "a direct message needs another subject")),
            _ => Err(bad(Some(re), "give exactly one of incident and to")),
        }
    }

    /// Stores a chat for `recipients`; returns it and what to deliver.
    #[allow(clippy::too_many_arguments)]
    pub fn chat(
        store: &mut dyn OfficeStore,
        now: UnixMs,
        re: RequestId,
        sender: &Subject,
        msg_id: &str,
        target: &ChatTarget,
        text: &str,
        recipients: &[Subject],
    ) -> Result<(Stored, Filed), ProtoError> {
        let (incident, to) = match target {
            ChatTarget::Incident(i) => (Some(i.clone()), None),
            ChatTarget::Direct(t) => (None, Some(t.clone())),
        };
        let stored = store
            .put(
                NewItem {
                    sender,
                    client_id: msg_id,
                    kind: "chat",
                    incident: incident.as_ref().map(IncidentId::as_str),
                    recipients,
                    now,
                    order: None,
                },
                &mut |item| MailItem::Chat {
                    id: item as u64,
                    msg_id: msg_id.to_owned(),
                    from: sender.clone(),
                    incident: incident.clone(),
                    to: to.clone(),
                    text: text.to_owned(),
                    time: now,
                },
            )
            .map_err(|e| store_err(Some(re), e))?;
        let log = incident
            .filter(|_| stored.new)
            .map(|i| (i, "chat", json!({"item": stored.item_id, "text": text})));
        let filed = Filed {
            mails: stored.mails.clone(),
            log,
        };
        Ok((stored, filed))
    }

    /// Raises an SOS in `incidents` to `recipients` (stored once per `msg_id`); returns its id
    /// (`sos-N`) and what to deliver (urgently) and log in each incident.
    #[allow(clippy::too_many_arguments)]
    pub fn raise_sos(
        &mut self,
        store: &mut dyn OfficeStore,
        now: UnixMs,
        re: RequestId,
        sender: &Subject,
        role: Role,
        msg_id: &str,
        incidents: &[IncidentId],
        text: Option<String>,
        position: Option<Position>,
        recipients: &[Subject],
    ) -> Result<(String, Mails, Option<Value>), ProtoError> {
        let stored = store
            .put(
                NewItem {
                    sender,
                    client_id: msg_id,
                    kind: "sos",
                    incident: incidents.first().map(IncidentId::as_str),
                    recipients,
                    now,
                    order: None,
                },
                &mut |item| MailItem::Sos {
                    sos: format!("sos-{item}"),
                    from: sender.clone(),
                    role,
                    incidents: incidents.to_vec(),
                    text: text.clone(),
                    position: position.clone(),
                    time: now,
                },
            )
            .map_err(|e| store_err(Some(re), e))?;
        let sos = format!("sos-{}", stored.item_id);
        if !stored.new {
            return Ok((sos, Vec::new(), None));
        }
        self.open_sos.insert(
            sos.clone(),
            OpenSos {
                from: sender.clone(),
                recipients: recipients.to_vec(),
                incidents: incidents.to_vec(),
            },
        );
        let log = json!({"sos": sos, "text": text, "position": position});
        Ok((sos, stored.mails, Some(log)))
    }

    /// Acknowledges a raised SOS: every recipient and the sender (but the acknowledger) get the
    /// urgent `sos_ack` mail. Returns what to deliver and the incidents to log it in.
    pub fn ack_sos(
        &mut self,
        store: &mut dyn OfficeStore,
        now: UnixMs,
        re: RequestId,
        by: &Subject,
        sos: &str,
    ) -> Result<(Mails, Vec<IncidentId>), ProtoError> {
        let Some(open) = self.open_sos.remove(sos) else {
            return Err(ProtoError::new(
                Some(re),
                ErrorCode::NotFound,
                format!("no raised SOS {sos}"),
            ));
        };
        let mut recipients: Vec<Subject> = open
            .recipients
            .iter()
            .filter(|r| *r != by)
            .cloned()
            .collect();
        if open.from != *by && !recipients.contains(&open.from) {
            recipients.push(open.from.clone());
        }
        let stored = store
            .put(
                NewItem {
                    sender: by,
                    client_id: &format!("{sos}:ack"),
                    kind: "sos_ack",
                    incident: open.incidents.first().map(IncidentId::as_str),
                    recipients: &recipients,
                    now,
                    order: None,
                },
                &mut |_| MailItem::SosAck {
                    sos: sos.to_owned(),
                    by: by.clone(),
                    time: now,
                },
            )
            .map_err(|e| store_err(Some(re), e))?;
        Ok((stored.mails, open.incidents))
    }

    /// A read receipt from `reader` for chat item `item` of its mailbox, to the chat's sender.
    pub fn read(
        store: &mut dyn OfficeStore,
        now: UnixMs,
        re: RequestId,
        reader: &Subject,
        item: u64,
    ) -> Result<Mails, ProtoError> {
        let item_id = i64::try_from(item)
            .map_err(|_| ProtoError::new(Some(re), ErrorCode::NotFound, "no such item"))?;
        let found = store
            .item_in_mailbox(reader, item_id)
            .map_err(|e| store_err(Some(re), e))?;
        let Some((sender, _)) = found.filter(|(_, k)| k == "chat") else {
            return Err(ProtoError::new(
                Some(re),
                ErrorCode::NotFound,
                format!("no chat item {item} in your mailbox"),
            ));
        };
        let sender = Subject::parse(&sender)
            .map_err(|e| ProtoError::new(Some(re), ErrorCode::Unavailable, e.to_string()))?;
        let stored = store
            .put(
                NewItem {
                    sender: reader,
                    client_id: &format!("read:{item}"),
                    kind: "read",
                    incident: None,
                    recipients: &[sender],
                    now,
                    order: None,
                },
                &mut |_| MailItem::Read {
                    item,
                    by: reader.clone(),
                    time: now,
                },
            )
            .map_err(|e| store_err(Some(re), e))?;
        Ok(stored.mails)
    }

    /// The mailbox of `sub` after `after` (default: its acknowledged position).
    pub fn sync(
        store: &dyn OfficeStore,
        re: RequestId,
        sub: &Subject,
        after: Option<u64>,
    ) -> Result<Sync, ProtoError> {
        let after = match after {
            Some(a) => a,
            None => store.acked(sub).map_err(|e| store_err(Some(re), e))?,
        };
        let mails = store
            .mail_after(sub, after, MAIL_SYNC_BATCH)
            .map_err(|e| store_err(Some(re), e))?;
        let last = store.last_seq(sub).map_err(|e| store_err(Some(re), e))?;
        let sent_upto = mails.last().map_or(after, |m| m.seq);
        Ok(Sync {
            mails,
            last,
            sent_upto,
            more: sent_upto < last,
        })
    }

    /// `sub` processed its mailbox up to `upto`: returns the orders in that range that became
    /// delivered (each sender is then told with [`Office::order_state_mail`]).
    pub fn mail_ack(
        store: &mut dyn OfficeStore,
        now: UnixMs,
        sub: &Subject,
        upto: u64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(store
            .ack(sub, upto, now)?
            .into_iter()
            .map(|(order, _sender)| order)
            .collect())
    }

    /// Tells an order's sender its current state (stored once per state): what to deliver and
    /// log, `None` when there is nothing new to say.
    pub fn order_state_mail(
        store: &mut dyn OfficeStore,
        now: UnixMs,
        order: &str,
        by: &Subject,
    ) -> Result<Option<Filed>, StoreError> {
        let Some(o) = store.order(order)? else {
            return Ok(None);
        };
        let Ok(sender) = Subject::parse(&o.from) else {
            return Ok(None);
        };
        let state = o.state;
        let stored = store.put(
            NewItem {
                sender: by,
                client_id: &format!("{order}:{}", state.as_str()),
                kind: "order_state",
                incident: Some(&o.incident),
                recipients: &[sender],
                now,
                order: None,
            },
            &mut |_| MailItem::OrderState {
                order: order.to_owned(),
                state,
                by: by.clone(),
                eta_min: o.eta_min,
                reason: o.reason.clone(),
                time: now,
            },
        )?;
        if !stored.new {
            return Ok(None);
        }
        let log = IncidentId::parse(&o.incident).ok().map(|i| {
            (
                i,
                "order_state",
                json!({"order": order, "state": state, "eta_min": o.eta_min, "reason": o.reason}),
            )
        });
        Ok(Some(Filed {
            mails: stored.mails,
            log,
        }))
    }

    /// Stores an order once per `(sender, msg_id)` and mails it to `to`; returns its id
    /// (`ord-N`), whether it is new, and what to deliver and log. The dispatch has checked the
    /// right, the text, the incident and that `to` is known.
    #[allow(clippy::too_many_arguments)]
    pub fn order(
        store: &mut dyn OfficeStore,
        now: UnixMs,
        re: Option<RequestId>,
        sender: &Subject,
        msg_id: &str,
        incident: &IncidentId,
        to: &Subject,
        text: &str,
    ) -> Result<(String, bool, Filed), ProtoError> {
        let stored = store
            .put(
                NewItem {
                    sender,
                    client_id: msg_id,
                    kind: "order",
                    incident: Some(incident.as_str()),
                    recipients: std::slice::from_ref(to),
                    now,
                    order: Some(NewOrder {
                        incident: incident.as_str(),
                        to,
                        text,
                    }),
                },
                &mut |item| MailItem::Order {
                    order: order_id(item),
                    msg_id: msg_id.to_owned(),
                    from: sender.clone(),
                    to: to.clone(),
                    incident: incident.clone(),
                    text: text.to_owned(),
                    time: now,
                },
            )
            .map_err(|e| store_err(re, e))?;
        let order = order_id(stored.item_id);
        let log = stored.new.then(|| {
            (
                incident.clone(),
                "order",
                json!({"order": order, "to": to, "text": text}),
            )
        });
        let filed = Filed {
            mails: stored.mails,
            log,
        };
        Ok((order, stored.new, filed))
    }

    /// `order_answer`: only the addressee may answer, along the order states (sent → delivered
    /// → accepted / declined → done); the answer the order already has is a retry. Returns, for
    /// a change, what to deliver and log.
    #[allow(clippy::too_many_arguments)]
    pub fn answer(
        store: &mut dyn OfficeStore,
        now: UnixMs,
        re: Option<RequestId>,
        claims: &Claims,
        order: &str,
        answer: OrderAnswer,
        eta_min: Option<u32>,
        reason: Option<String>,
    ) -> Result<Option<Filed>, ProtoError> {
        if !claims.may(Action::AnswerOrder) {
            return Err(ProtoError::new(
                re,
                ErrorCode::Forbidden,
                format!("role {} may not {}", claims.role, Action::AnswerOrder),
            ));
        }
        let o = store
            .order(order)
            .map_err(|e| store_err(re, e))?
            .ok_or_else(|| ProtoError::new(re, ErrorCode::NotFound, format!("no order {order}")))?;
        if o.to != claims.sub.as_str() {
            return Err(ProtoError::new(
                re,
                ErrorCode::Forbidden,
                format!("only {} may answer order {order}", o.to),
            ));
        }
        let target = match answer {
            OrderAnswer::Accept => OrderState::Accepted,
            OrderAnswer::Decline => OrderState::Declined,
            OrderAnswer::Done => OrderState::Done,
        };
        let reason = reason
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty());
        if target == OrderState::Declined && reason.is_none() {
            return Err(bad(re, "declining needs a reason"));
        }
        if reason.as_ref().is_some_and(|r| r.chars().count() > 1000) {
            return Err(bad(re, "reason must be at most 1000 characters"));
        }
        if eta_min.is_some_and(|m| m > 7 * 24 * 60) {
            return Err(bad(re, "eta_min must be at most a week"));
        }
        let mut filed = None;
        if o.state != target {
            if !o.state.may_become(target) {
                return Err(ProtoError::new(
                    re,
                    ErrorCode::Conflict,
                    format!(
                        "order {order} is {}; it cannot become {}",
                        o.state.as_str(),
                        target.as_str()
                    ),
                ));
            }
            store
                .set_order_state(order, target, now, eta_min, reason.as_deref())
                .map_err(|e| store_err(re, e))?;
            filed = Office::order_state_mail(store, now, order, &claims.sub)
                .map_err(|e| store_err(re, e))?;
        }
        Ok(filed)
    }

    /// Orders visible to `claims` (`GET /api/orders`): admin and commander see every order,
    /// others the ones they sent or received. Newest first, at most `limit`.
    pub fn orders_for(
        store: &dyn OfficeStore,
        claims: &Claims,
        limit: usize,
    ) -> Result<Vec<Order>, ProtoError> {
        let all = matches!(claims.role, Role::Admin | Role::Commander);
        store
            .orders(if all { None } else { Some(&claims.sub) }, limit)
            .map_err(|e| store_err(None, e))
    }
}
