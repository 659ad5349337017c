//! The office's mail items: what a subject's mailbox holds ([`ServerMsg::Mail`]'s `item`), one
//! variant per `kind` (chat, order, order state, SOS, SOS acknowledgement, read receipt).
//!
//! The node stores each item as its JSON, as this type writes it, and sends what it stored.
//! Optional members of an item are written as `null` (unlike events): that is how the node has
//! always stored them. A kind this version does not know decodes as [`MailItem::Unknown`].
//!
//! [`ServerMsg::Mail`]: super::ServerMsg::Mail

use serde::{Deserialize, Serialize};

use super::Position;
use crate::auth::Role;
use crate::ids::{IncidentId, Subject};
use crate::time::UnixMs;

/// One stored office message, as its recipients get it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum MailItem {
    /// A chat message, to an incident or to one subject.
    Chat {
        /// The item id (what a `read` receipt names).
        id: u64,
        /// The sender's message id.
        msg_id: String,
        /// Who wrote it.
        from: Subject,
        /// The incident, for an incident chat (`null` for a direct message).
        incident: Option<IncidentId>,
        /// The addressee of a direct message (`null` for an incident chat).
        to: Option<Subject>,
        /// The text.
        text: String,
        /// When the node stored it.
        time: UnixMs,
    },
    /// An order to its addressee.
    Order {
        /// The node's order id (`ord-N`).
        order: String,
        /// The sender's message id.
        msg_id: String,
        /// Who ordered.
        from: Subject,
        /// The addressee.
        to: Subject,
        /// The incident.
        incident: IncidentId,
        /// What to do.
        text: String,
        /// When the node stored it.
        time: UnixMs,
    },
    /// An order changed state (to the order's sender).
    OrderState {
        /// The order (`ord-N`).
        order: String,
        /// Its new state.
        state: OrderState,
        /// Who changed it (the addressee).
        by: Subject,
        /// Minutes to arrival (`null` unless given).
        eta_min: Option<u32>,
        /// Why it was declined (`null` unless given).
        reason: Option<String>,
        /// When.
        time: UnixMs,
    },
    /// An SOS (urgent).
    Sos {
        /// Its id (`sos-N`), what `sos_ack` names.
        sos: String,
        /// Who raised it.
        from: Subject,
        /// The sender's role.
        role: Role,
        /// The incidents it was raised in.
        incidents: Vec<IncidentId>,
        /// The sender's text (`null` if none).
        text: Option<String>,
        /// The sender's last reported position (`null` if none).
        position: Option<Position>,
        /// When.
        time: UnixMs,
    },
    /// An SOS was acknowledged (urgent).
    SosAck {
        /// The SOS (`sos-N`).
        sos: String,
        /// Who acknowledged it.
        by: Subject,
        /// When.
        time: UnixMs,
    },
    /// A read receipt for a chat item the recipient sent.
    Read {
        /// The chat item.
        item: u64,
        /// Who read it.
        by: Subject,
        /// When.
        time: UnixMs,
    },
    /// A kind this version does not know (a newer node): ignore it.
    #[serde(other)]
    Unknown,
}

/// An order's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    /// Stored, not yet acknowledged by the addressee's device.
    Sent,
    /// The addressee's device acknowledged it.
    Delivered,
    /// Accepted (with an ETA).
    Accepted,
    /// Declined (with a reason). Final.
    Declined,
    /// Done. Final.
    Done,
}

impl OrderState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Sent => "sent",
            OrderState::Delivered => "delivered",
            OrderState::Accepted => "accepted",
            OrderState::Declined => "declined",
            OrderState::Done => "done",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<OrderState> {
        Some(match s {
            "sent" => OrderState::Sent,
            "delivered" => OrderState::Delivered,
            "accepted" => OrderState::Accepted,
            "declined" => OrderState::Declined,
            "done" => OrderState::Done,
            _ => return None,
        })
    }

    /// Whether `self → next` is a valid transition: sent → delivered; sent or delivered →
    /// accepted or declined; accepted → done.
    pub fn may_become(self, next: OrderState) -> bool {
        use OrderState::*;
        matches!(
            (self, next),
            (Sent, Delivered) | (Sent | Delivered, Accepted | Declined) | (Accepted, Done)
        )
    }
}

impl MailItem {
    /// The `kind` string, as stored and sent (`"unknown"` for [`MailItem::Unknown`]).
    pub fn kind(&self) -> &'static str {
        match self {
            MailItem::Chat { .. } => "chat",
            MailItem::Order { .. } => "order",
            MailItem::OrderState { .. } => "order_state",
            MailItem::Sos { .. } => "sos",
            MailItem::SosAck { .. } => "sos_ack",
            MailItem::Read { .. } => "read",
            MailItem::Unknown => "unknown",
        }
    }

    /// When the node stored it (`None` for [`MailItem::Unknown`]).
    pub fn time(&self) -> Option<UnixMs> {
        match self {
            MailItem::Chat { time, .. }
            | MailItem::Order { time, .. }
            | MailItem::OrderState { time, .. }
            | MailItem::Sos { time, .. }
            | MailItem::SosAck { time, .. }
            | MailItem::Read { time, .. } => Some(*time),
            MailItem::Unknown => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(x: &str) -> Subject {
        Subject::parse(x).unwrap()
    }

    #[test]
    fn every_item_kind_is_stored_as_the_json_the_node_always_stored() {
        let duty = IncidentId::parse("duty").unwrap();
        let cases = [
            (
                MailItem::Chat {
                    id: 42,
                    msg_id: "m1".into(),
                    from: s("cmd-1"),
                    incident: Some(duty.clone()),
                    to: None,
                    text: "hi".into(),
                    time: UnixMs(3),
                },
                json!({"kind": "chat", "id": 42, "msg_id": "m1", "from": "cmd-1", "incident": "duty", "to": null, "text": "hi", "time": 3}),
            ),
            (
                MailItem::Order {
                    order: "ord-7".into(),
                    msg_id: "o1".into(),
                    from: s("cmd-1"),
                    to: s("off-1"),
                    incident: duty.clone(),
                    text: "go".into(),
                    time: UnixMs(3),
                },
                json!({"kind": "order", "order": "ord-7", "msg_id": "o1", "from": "cmd-1", "to": "off-1", "incident": "duty", "text": "go", "time": 3}),
            ),
            (
                MailItem::OrderState {
                    order: "ord-7".into(),
                    state: OrderState::Declined,
                    by: s("off-1"),
                    eta_min: None,
                    reason: Some("flooded".into()),
                    time: UnixMs(4),
                },
                json!({"kind": "order_state", "order": "ord-7", "state": "declined", "by": "off-1", "eta_min": null, "reason": "flooded", "time": 4}),
            ),
            (
                MailItem::Sos {
                    sos: "sos-3".into(),
                    from: s("off-1"),
                    role: Role::Officer,
                    incidents: vec![duty],
                    text: None,
                    position: None,
                    time: UnixMs(5),
                },
                json!({"kind": "sos", "sos": "sos-3", "from": "off-1", "role": "officer", "incidents": ["duty"], "text": null, "position": null, "time": 5}),
            ),
            (
                MailItem::SosAck {
                    sos: "sos-3".into(),
                    by: s("op-1"),
                    time: UnixMs(6),
                },
                json!({"kind": "sos_ack", "sos": "sos-3", "by": "op-1", "time": 6}),
            ),
            (
                MailItem::Read {
                    item: 42,
                    by: s("off-1"),
                    time: UnixMs(7),
                },
                json!({"kind": "read", "item": 42, "by": "off-1", "time": 7}),
            ),
        ];
        for (item, before) in cases {
            assert_eq!(
                serde_json::to_value(&item).unwrap(),
                before,
                "{}",
                item.kind()
            );
            assert_eq!(item.kind(), before["kind"]);
            assert_eq!(serde_json::from_value::<MailItem>(before).unwrap(), item);
        }
        let later: MailItem = serde_json::from_value(json!({"kind": "poll", "q": "?"})).unwrap();
        assert_eq!(later, MailItem::Unknown);
    }

    #[test]
    fn transitions() {
        use OrderState::*;
        assert!(Sent.may_become(Accepted));
        assert!(Delivered.may_become(Declined));
        assert!(Accepted.may_become(Done));
        assert!(!Declined.may_become(Accepted));
        assert!(!Done.may_become(Accepted));
        assert!(!Sent.may_become(Done));
        for st in [Sent, Delivered, Accepted, Declined, Done] {
            assert_eq!(OrderState::parse(st.as_str()), Some(st));
        }
    }
}
