//! yiwang's validated names, one type each, shared by `signaling` (the wire protocol, tokens, the
//! signaling core) and `trunk` (the cascade between nodes): a node or stream name parsed once is
//! handed from one plane to the other as it is, never re-parsed from a string.
//!
//! Every id that arrives from a token, a URL, a config file or a peer is parsed into one of these
//! types before it is used, so the rest of the system never sees an empty, overlong or path-like
//! id.
//!
//! # The rule (the one place it is written in code; `docs/protocol.md` states it for clients)
//!
//! ASCII letters, digits, `.`, `_` and `-`, not starting with `.` or `-` (so an id can never be
//! `..`, a dotfile or look like a command-line flag), and not empty:
//!
//! | type | length |
//! |---|---|
//! | [`NodeName`] (`signaling::ids::NodeId`), [`Subject`], [`IncidentId`], [`TokenId`] | 1..=64 |
//! | [`StreamName`] | 1..=96 |
//!
//! A stream name containing `/` is a remote name `NODE/STREAM`, reserved for the cascade between
//! nodes: [`StreamName::parse`] refuses it with [`NameError::Reserved`]; only
//! [`StreamName::remote`] (and [`StreamName::parse_local_or_remote`], for what a viewer asks to
//! watch) make one. The trunk addresses such a stream as a [`StreamAddr`], whose stream part is
//! always a local name.
//!
//! With the feature `serde`, every id is a plain JSON string on the wire, exactly as with
//! `#[serde(transparent)]`, but deserialising validates it (and refuses `NODE/STREAM`).
//!
//! This crate has no dependencies (serde only with its feature), does no I/O and reads no clock.
#![deny(missing_docs)]

use std::fmt;
use std::str::FromStr;

/// Why a string was refused as an id, a stream name or a stream address.
///
/// Every `Display` message is written to be shown to a client as is (for example in an HTTP 400
/// body).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// The name has the `NODE/STREAM` form, which only the cascade between nodes may use.
    Reserved,
    /// The name breaks the syntax rules; `what` names the kind of id, `reason` the rule.
    Invalid {
        /// The kind of name that was being parsed, e.g. `"stream name"`.
        what: &'static str,
        /// The rule that was broken.
        reason: &'static str,
    },
    /// A stream address without exactly one `/` between node and stream.
    NotAnAddress,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Reserved => f.write_str("NODE/STREAM names are reserved for the cascade"),
            NameError::Invalid { what, reason } => write!(f, "invalid {what}: {reason}"),
            NameError::NotAnAddress => f.write_str("a stream address is NODE/STREAM"),
        }
    }
}

impl std::error::Error for NameError {}

/// Checks the common id syntax; `what` names the kind of id in the error.
fn check(s: &str, max: usize, what: &'static str) -> Result<(), NameError> {
    let invalid = |reason| NameError::Invalid { what, reason };
    if s.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if s.len() > max {
        return Err(invalid(if max == 64 {
            "must be at most 64 characters"
        } else {
            "must be at most 96 characters"
        }));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid("only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"));
    }
    if s.starts_with(['.', '-']) {
        return Err(invalid("must not start with '.' or '-'"));
    }
    Ok(())
}

/// Stream names: the common syntax, but `/` gets its own error because `NODE/STREAM` is a real
/// (remote) name that only the cascade may create.
fn check_stream(s: &str, max: usize, what: &'static str) -> Result<(), NameError> {
    if s.contains('/') {
        return Err(NameError::Reserved);
    }
    check(s, max, what)
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $what:literal, $max:literal, $check:path) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        #[cfg_attr(feature = "serde", serde(try_from = "String", into = "String"))]
        pub struct $name(String);

        impl $name {
            /// The longest accepted value, in characters (all of them ASCII, so also bytes).
            pub const MAX_LEN: usize = $max;

            fn validate(s: &str) -> Result<(), NameError> {
                $check(s, $max, $what)
            }

            /// Parses and validates `s`.
            pub fn parse(s: &str) -> Result<Self, NameError> {
                Self::validate(s)?;
                Ok(Self(s.to_owned()))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as an owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::validate(&s)?;
                Ok(Self(s))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = NameError;
            fn try_from(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

id_type!(
    /// A node: one site's media-server, e.g. `hq`, `county-7` or `node-3fa2c01b`. Its signaling
    /// name is `signaling::ids::NodeId` (a token's `iss` and, unless it is `*`, its `aud`); on
    /// the trunks it also names the trunk to that node (a node has at most one trunk to each
    /// peer).
    NodeName, "node id", 64, check
);
id_type!(
    /// The subject of a token: the person, device or drone pilot station it was issued to, e.g.
    /// `off-12`. A publisher's default stream name.
    Subject, "subject", 64, check
);
id_type!(
    /// The id of an incident, e.g. `duty` (every node's standing incident) or `2024-flood-3`.
    IncidentId, "incident id", 64, check
);
id_type!(
    /// A token's unique id (`jti`); issued tokens use 32 lowercase hex characters.
    TokenId, "token id", 64, check
);
id_type!(
    /// A stream name, e.g. `off-12` or `pilot-3-drone1`, as its publishing node names it.
    /// [`StreamName::parse`] never yields a `/`: the `NODE/STREAM` form is reserved for the
    /// cascade ([`StreamName::remote`]).
    StreamName, "stream name", 96, check_stream
);

impl StreamName {
    /// The cascade's name for `stream` published at node `node`: `NODE/STREAM`. Only the trunk
    /// plane makes these (for a stream pulled from another node); [`StreamName::parse`] refuses
    /// them, so no local publisher can take such a name.
    pub fn remote(node: &NodeName, stream: &StreamName) -> StreamName {
        StreamName(format!("{node}/{stream}"))
    }

    /// A name to watch: a local stream (`cam1`) or one at another node (`township-3/cam1`),
    /// as `subscribe` and `/whep/{node}/{stream}` take it. Publishing takes only
    /// [`StreamName::parse`].
    pub fn parse_local_or_remote(s: &str) -> Result<StreamName, NameError> {
        match s.split_once('/') {
            Some((node, stream)) => Ok(StreamName::remote(
                &NodeName::parse(node)?,
                &StreamName::parse(stream)?,
            )),
            None => StreamName::parse(s),
        }
    }

    /// For a name made by [`StreamName::remote`]: the node and the stream at that node.
    pub fn split_remote(&self) -> Option<(&str, &str)> {
        self.0.split_once('/')
    }

    /// For a name made by [`StreamName::remote`]: its address on the trunks. `None` for a local
    /// name.
    pub fn remote_addr(&self) -> Option<StreamAddr> {
        // Both parts were validated when the remote name was made, and a local stream name
        // holds no `/`, so the split is exact.
        let (node, stream) = self.split_remote()?;
        Some(StreamAddr {
            node: NodeName(node.to_owned()),
            stream: StreamName(stream.to_owned()),
        })
    }
}

/// A stream anywhere in the province: `NODE/STREAM`, the stream named by its publishing node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamAddr {
    /// The node the stream is published at.
    pub node: NodeName,
    /// Its name there (a local name: no `/`).
    pub stream: StreamName,
}

impl StreamAddr {
    /// The address of `stream` at `node`.
    pub fn new(node: NodeName, stream: StreamName) -> StreamAddr {
        StreamAddr { node, stream }
    }

    /// Parses `NODE/STREAM`.
    pub fn parse(s: &str) -> Result<StreamAddr, NameError> {
        let (node, stream) = s.split_once('/').ok_or(NameError::NotAnAddress)?;
        if stream.contains('/') {
            return Err(NameError::NotAnAddress);
        }
        Ok(StreamAddr {
            node: NodeName::parse(node)?,
            stream: StreamName::parse(stream)?,
        })
    }

    /// The name local viewers know this stream by: `NODE/STREAM` ([`StreamName::remote`]).
    pub fn to_stream_name(&self) -> StreamName {
        StreamName::remote(&self.node, &self.stream)
    }
}

impl fmt::Display for StreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.stream)
    }
}

impl FromStr for StreamAddr {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for s in ["a", "off-12", "node_1.b", "A9", "x.y-z_", &"a".repeat(64)] {
            assert_eq!(NodeName::parse(s).unwrap().as_str(), s);
            assert_eq!(Subject::parse(s).unwrap().to_string(), s);
            assert_eq!(s.parse::<IncidentId>().unwrap(), s);
            assert!(TokenId::parse(s).is_ok());
            assert!(StreamName::parse(s).is_ok());
        }
        assert!(StreamName::parse(&"s".repeat(96)).is_ok());
    }

    #[test]
    fn refuses_invalid_ids() {
        for s in [
            "",
            ".hidden",
            "-flag",
            "..",
            "a b",
            "a\0",
            "é",
            "a:b",
            "a\\b",
            "a/b",
            &"a".repeat(65),
        ] {
            assert!(
                matches!(
                    NodeName::parse(s),
                    Err(NameError::Invalid {
                        what: "node id",
                        ..
                    })
                ),
                "{s:?}"
            );
            assert!(Subject::parse(s).is_err(), "{s:?}");
            assert!(IncidentId::parse(s).is_err(), "{s:?}");
            assert!(TokenId::parse(s).is_err(), "{s:?}");
        }
        assert!(matches!(
            StreamName::parse(&"s".repeat(97)),
            Err(NameError::Invalid { .. })
        ));
        assert!(matches!(
            StreamName::parse("-x"),
            Err(NameError::Invalid { .. })
        ));
    }

    #[test]
    fn stream_name_slash_is_reserved() {
        for s in ["hq/off-12", "/x", "x/", "a/b/c", "a b/c"] {
            assert_eq!(StreamName::parse(s), Err(NameError::Reserved), "{s:?}");
        }
        assert_eq!(
            NameError::Reserved.to_string(),
            "NODE/STREAM names are reserved for the cascade"
        );
    }

    #[test]
    fn serde_is_a_plain_validated_string() {
        let id = StreamName::parse("pilot-3-drone1").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"pilot-3-drone1\"");
        let back: StreamName = serde_json::from_str("\"pilot-3-drone1\"").unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<StreamName>("\"hq/x\"").is_err());
        assert!(serde_json::from_str::<NodeName>("\"\"").is_err());
        assert!(serde_json::from_str::<Subject>("\"../etc\"").is_err());
    }

    #[test]
    fn error_messages_name_the_kind() {
        let e = IncidentId::parse("").unwrap_err();
        assert_eq!(e.to_string(), "invalid incident id: must not be empty");
    }

    #[test]
    fn stream_addresses_parse_and_print_as_node_slash_stream() {
        let a = StreamAddr::parse("township-3/off-12").unwrap();
        assert_eq!(a.to_string(), "township-3/off-12");
        assert_eq!(a.node.as_str(), "township-3");
        assert_eq!(a.stream.as_str(), "off-12");
        assert_eq!(StreamAddr::parse("x"), Err(NameError::NotAnAddress));
        assert_eq!(StreamAddr::parse("a/b/c"), Err(NameError::NotAnAddress));
        assert!(matches!(
            StreamAddr::parse("a/.b"),
            Err(NameError::Invalid {
                what: "stream name",
                ..
            })
        ));
        assert!(matches!(
            StreamAddr::parse("/b"),
            Err(NameError::Invalid {
                what: "node id",
                ..
            })
        ));
    }

    #[test]
    fn a_remote_stream_name_and_its_address_are_one_stream() {
        let addr = StreamAddr::parse("township-3/cam1").unwrap();
        let name = addr.to_stream_name();
        assert_eq!(name, "township-3/cam1");
        assert_eq!(name.split_remote(), Some(("township-3", "cam1")));
        assert_eq!(name.remote_addr(), Some(addr.clone()));
        assert_eq!(
            StreamName::parse_local_or_remote("township-3/cam1").unwrap(),
            name
        );
        let local = StreamName::parse_local_or_remote("cam1").unwrap();
        assert_eq!(local.remote_addr(), None);
        assert!(StreamName::parse_local_or_remote("a/b/c").is_err());
    }
}
