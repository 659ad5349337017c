//! Subject naming and the origin check: pure functions, no I/O.
//!
//! Every subject starts with the node that published it, so a server's permissions can say "this
//! leaf may publish only under its own name (and its subtree's)", and a receiver can re-check that
//! a message's claimed origin matches where it came from.
//!
//! | subject | what | kept |
//! |---|---|---|
//! | `yw.<origin>.evt.<topic>` | events: presence, positions, telemetry | no (core NATS) |
//! | `yw.<origin>.rpc.<target>.<service>` | a request from `origin` to `target` | no |
//! | `yw.<origin>.box.<recipient>.<topic>` | office mail from `origin` to `recipient` | stream `YW_<origin>` at `origin` |
//!
//! Node names (`ids::NodeName`) may contain `.`, which NATS uses as the token separator; in
//! subjects, stream names and JetStream domains a `.` is written as `~` (a character node names
//! cannot contain), so the mapping is one-to-one. Topics are one or more tokens of
//! `A-Z a-z 0-9 - _`, separated by `.`.

use crate::BusError;
use ids::NodeName;

/// The first token of every yiwang subject.
pub const ROOT: &str = "yw";
/// Header carrying the publishing node's name (re-checked against the subject by receivers).
pub const ORIGIN_HEADER: &str = "Yw-Origin";
/// Header carrying an office message's id (JetStream's own de-duplication header).
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Longest topic, bytes.
pub const MAX_TOPIC: usize = 128;

/// `name` as one subject token (`.` → `~`).
pub fn node_token(name: &NodeName) -> String {
    name.as_str().replace('.', "~")
}

/// The node name a subject token stands for, if it is one.
pub fn node_from_token(token: &str) -> Option<NodeName> {
    if token.contains('.') {
        return None;
    }
    NodeName::parse(&token.replace('~', ".")).ok()
}

/// The JetStream domain of `node`'s server: its token.
pub fn domain(node: &NodeName) -> String {
    node_token(node)
}

/// The durable stream holding mail that `origin` sent: `YW_<token>`.
pub fn stream_name(origin: &NodeName) -> String {
    format!("YW_{}", node_token(origin))
}

/// A topic: one or more `.`-separated tokens of `A-Z a-z 0-9 - _`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic(String);

impl Topic {
    /// Checks `s`.
    pub fn parse(s: &str) -> Result<Topic, BusError> {
        let bad = |why| Err(BusError::InvalidName(s.to_owned(), why));
        if s.is_empty() || s.len() > MAX_TOPIC {
            return bad("a topic is 1..=128 bytes");
        }
        for tok in s.split('.') {
            if tok.is_empty() {
                return bad("empty token");
            }
            if !tok
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return bad("only A-Z, a-z, 0-9, '-', '_' and '.' between tokens");
            }
        }
        Ok(Topic(s.to_owned()))
    }

    /// The topic as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An office message id: unique per origin (the office uses its row id or a UUID).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId(String);

impl MsgId {
    /// Checks `s`: 1..=64 bytes of `A-Z a-z 0-9 - _ : .`.
    pub fn parse(s: &str) -> Result<MsgId, BusError> {
        if s.is_empty() || s.len() > 64 {
            return Err(BusError::InvalidName(s.to_owned(), "an id is 1..=64 bytes"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'))
        {
            return Err(BusError::InvalidName(
                s.to_owned(),
                "only A-Z, a-z, 0-9, '-', '_', ':' and '.'",
            ));
        }
        Ok(MsgId(s.to_owned()))
    }

    /// The id as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for MsgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `yw.<origin>.evt.<topic>`.
pub fn event(origin: &NodeName, topic: &Topic) -> String {
    format!("{ROOT}.{}.evt.{topic}", node_token(origin))
}

/// What a subscriber to events listens on: from one origin or from any (`*`).
pub fn event_filter(origin: Option<&NodeName>, topic: &Topic) -> String {
    let o = origin.map_or_else(|| "*".to_owned(), node_token);
    format!("{ROOT}.{o}.evt.{topic}")
}

/// Events of every origin and topic: `yw.*.evt.>` (the NATS bus filters topics itself).
pub fn any_event_filter() -> String {
    format!("{ROOT}.*.evt.>")
}

/// Requests of every origin to every target: `yw.*.rpc.>`.
pub fn any_request_filter() -> String {
    format!("{ROOT}.*.rpc.>")
}

/// `yw.<origin>.rpc.<target>.<service>`.
pub fn request(origin: &NodeName, target: &NodeName, service: &Topic) -> String {
    format!(
        "{ROOT}.{}.rpc.{}.{service}",
        node_token(origin),
        node_token(target)
    )
}

/// What `target` listens on for `service` requests from anyone.
pub fn request_filter(target: &NodeName, service: &Topic) -> String {
    format!("{ROOT}.*.rpc.{}.{service}", node_token(target))
}

/// `yw.<origin>.box.<recipient>.<topic>`.
pub fn mail(origin: &NodeName, recipient: &NodeName, topic: &Topic) -> String {
    format!(
        "{ROOT}.{}.box.{}.{topic}",
        node_token(origin),
        node_token(recipient)
    )
}

/// What the stream of `origin` captures: everything it mails.
pub fn mail_stream_subjects(origin: &NodeName) -> String {
    format!("{ROOT}.{}.box.>", node_token(origin))
}

/// What `recipient`'s mailbox consumer on `origin`'s stream filters on.
pub fn mail_filter(origin: &NodeName, recipient: &NodeName) -> String {
    format!(
        "{ROOT}.{}.box.{}.>",
        node_token(origin),
        node_token(recipient)
    )
}

/// A subject taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// `yw.<origin>.evt.<topic>`.
    Event {
        /// Publishing node.
        origin: NodeName,
        /// Topic.
        topic: Topic,
    },
    /// `yw.<origin>.rpc.<target>.<service>`.
    Request {
        /// Asking node.
        origin: NodeName,
        /// Answering node.
        target: NodeName,
        /// Service.
        service: Topic,
    },
    /// `yw.<origin>.box.<recipient>.<topic>`.
    Mail {
        /// Sending node.
        origin: NodeName,
        /// Receiving node.
        recipient: NodeName,
        /// Topic.
        topic: Topic,
    },
}

impl Parsed {
    /// The node the subject says published it.
    pub fn origin(&self) -> &NodeName {
        match self {
            Parsed::Event { origin, .. }
            | Parsed::Request { origin, .. }
            | Parsed::Mail { origin, .. } => origin,
        }
    }
}

/// Takes a yiwang subject apart; `None` for anything else.
pub fn parse(subject: &str) -> Option<Parsed> {
    let mut it = subject.splitn(4, '.');
    if it.next()? != ROOT {
        return None;
    }
    let origin = node_from_token(it.next()?)?;
    let kind = it.next()?;
    let rest = it.next()?;
    match kind {
        "evt" => Some(Parsed::Event {
            origin,
            topic: Topic::parse(rest).ok()?,
        }),
        "rpc" | "box" => {
            let (who, topic) = rest.split_once('.')?;
            let who = node_from_token(who)?;
            let topic = Topic::parse(topic).ok()?;
            Some(if kind == "rpc" {
                Parsed::Request {
                    origin,
                    target: who,
                    service: topic,
                }
            } else {
                Parsed::Mail {
                    origin,
                    recipient: who,
                    topic,
                }
            })
        }
        _ => None,
    }
}

/// Why a received message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The subject is not a yiwang subject.
    BadSubject,
    /// The origin header is missing.
    NoOriginHeader,
    /// The origin header names another node than the subject.
    OriginMismatch {
        /// Origin in the subject.
        subject: NodeName,
        /// Origin in the header.
        header: String,
    },
    /// The message came from another node than the one it was fetched from / expected.
    UnexpectedOrigin {
        /// Expected origin.
        expected: NodeName,
        /// Origin claimed.
        claimed: NodeName,
    },
    /// The message is larger than the limit.
    TooLarge(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::BadSubject => f.write_str("not a yiwang subject"),
            Refusal::NoOriginHeader => f.write_str("no origin header"),
            Refusal::OriginMismatch { subject, header } => {
                write!(f, "subject origin {subject} but header origin {header:?}")
            }
            Refusal::UnexpectedOrigin { expected, claimed } => {
                write!(f, "expected origin {expected}, message claims {claimed}")
            }
            Refusal::TooLarge(n) => write!(f, "{n} bytes over the limit"),
        }
    }
}

/// The receiver's re-check: the subject parses, the origin header agrees with the subject, and
/// (where the receiver knows where it fetched the message from) the origin is that node.
pub fn check_origin(
    subject: &str,
    origin_header: Option<&str>,
    expected: Option<&NodeName>,
) -> Result<Parsed, Refusal> {
    let parsed = parse(subject).ok_or(Refusal::BadSubject)?;
    let header = origin_header.ok_or(Refusal::NoOriginHeader)?;
    if header != parsed.origin().as_str() {
        return Err(Refusal::OriginMismatch {
            subject: parsed.origin().clone(),
            header: header.chars().take(64).collect(),
        });
    }
    if let Some(expected) = expected {
        if expected != parsed.origin() {
            return Err(Refusal::UnexpectedOrigin {
                expected: expected.clone(),
                claimed: parsed.origin().clone(),
            });
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        NodeName::parse(s).unwrap()
    }

    #[test]
    fn dotted_node_names_map_to_one_token_and_back() {
        let name = n("prov.city-a");
        assert_eq!(node_token(&name), "prov~city-a");
        assert_eq!(node_from_token("prov~city-a"), Some(name.clone()));
        assert_eq!(stream_name(&name), "YW_prov~city-a");
        assert_eq!(node_from_token("a.b"), None);
    }

    #[test]
    fn every_subject_kind_parses_back_to_what_made_it() {
        let (a, b, t) = (n("county"), n("prov.x"), Topic::parse("order.new").unwrap());
        assert_eq!(
            parse(&event(&a, &t)),
            Some(Parsed::Event {
                origin: a.clone(),
                topic: t.clone()
            })
        );
        assert_eq!(
            parse(&request(&a, &b, &t)),
            Some(Parsed::Request {
                origin: a.clone(),
                target: b.clone(),
                service: t.clone()
            })
        );
        assert_eq!(
            parse(&mail(&a, &b, &t)),
            Some(Parsed::Mail {
                origin: a.clone(),
                recipient: b.clone(),
                topic: t.clone()
            })
        );
        assert_eq!(mail_filter(&a, &b), "yw.county.box.prov~x.>");
    }

    #[test]
    fn junk_subjects_do_not_parse() {
        for s in [
            "",
            "yw",
            "yw.a",
            "yw.a.evt",
            "x.a.evt.t",
            "yw.a.zzz.t",
            "yw.a.box.b",
            "yw.a.evt.t*",
            "yw.-a.evt.t",
            "yw.a.evt..t",
        ] {
            assert_eq!(parse(s), None, "{s}");
        }
    }

    #[test]
    fn a_header_that_disagrees_with_the_subject_is_refused() {
        let t = Topic::parse("pos").unwrap();
        let s = event(&n("county"), &t);
        assert!(check_origin(&s, Some("county"), None).is_ok());
        assert_eq!(check_origin(&s, None, None), Err(Refusal::NoOriginHeader));
        assert!(matches!(
            check_origin(&s, Some("city-b"), None),
            Err(Refusal::OriginMismatch { .. })
        ));
        assert!(matches!(
            check_origin(&s, Some("county"), Some(&n("city-b"))),
            Err(Refusal::UnexpectedOrigin { .. })
        ));
        assert_eq!(
            check_origin("junk", Some("county"), None),
            Err(Refusal::BadSubject)
        );
    }

    #[test]
    fn topics_and_ids_refuse_reserved_characters() {
        for bad in ["", "a..b", "a.*", "a.>", "a b", ".a", "a."] {
            assert!(Topic::parse(bad).is_err(), "{bad}");
        }
        assert!(MsgId::parse("ord-1:2.3").is_ok());
        assert!(MsgId::parse("a b").is_err());
        assert!(MsgId::parse(&"x".repeat(65)).is_err());
    }
}
