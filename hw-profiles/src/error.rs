//! Errors of this crate. Every message starts with the file (profile) name and, where there is
//! one, the field path, e.g.
//! `tablet-rk3588.toml: video.encoders[1].element: "mpph264enc " is not a valid GStreamer element name`.

use std::fmt;

use crate::elements::Codec;
use crate::resolve::Skipped;

/// One problem found by validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Field path in the file, e.g. `video.encoders[1].element` (empty for the whole file).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// A profile could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The text is not valid TOML, has an unknown key, a missing key or a value of the wrong type.
    #[error("{file}: {}{message} (line {line}, column {column})", field_prefix(.field))]
    Parse {
        /// File (profile) name as given to [`crate::load`].
        file: String,
        /// Field path where the error was found (may be empty).
        field: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// The profile parsed but breaks one or more rules; every issue is listed.
    #[error("{}", render_issues(.file, .issues))]
    Invalid {
        /// File (profile) name as given to [`crate::load`].
        file: String,
        /// Every problem found, in file order.
        issues: Vec<Issue>,
    },
    /// A shipped profile was asked for by a name that does not exist.
    #[error("no shipped profile named {name:?}")]
    UnknownProfile {
        /// The name asked for.
        name: String,
    },
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() || field == "." {
        String::new()
    } else {
        format!("{field}: ")
    }
}

fn render_issues(file: &str, issues: &[Issue]) -> String {
    let mut out = String::new();
    for (i, issue) in issues.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(file);
        out.push_str(": ");
        out.push_str(&field_prefix(&issue.field));
        out.push_str(&issue.message);
    }
    out
}

impl ProfileError {
    /// The issues of an [`ProfileError::Invalid`] error (empty for other kinds).
    pub fn issues(&self) -> &[Issue] {
        match self {
            ProfileError::Invalid { issues, .. } => issues,
            _ => &[],
        }
    }
}

/// No element could be chosen.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The profile has no chain for what was asked (e.g. encoders on a wall decoder host).
    #[error("{profile}: {what}")]
    NotApplicable {
        /// Device profile name.
        profile: String,
        /// Why, e.g. "a wall-decoder profile has no encoders".
        what: String,
    },
    /// Every element of the chain was skipped.
    #[error("{profile}: no usable {what}: {}", list_skipped(.skipped))]
    NothingUsable {
        /// Device profile name.
        profile: String,
        /// What was looked for, e.g. "encoder" or "h265 decoder".
        what: String,
        /// Every element tried, with the reason it was skipped.
        skipped: Vec<Skipped>,
    },
    /// A drone camera profile has no ingest entry for this codec.
    #[error("{profile}: no ingest entry for codec {codec}")]
    NoIngest {
        /// Device profile name.
        profile: String,
        /// The codec asked for.
        codec: Codec,
    },
}

fn list_skipped(skipped: &[Skipped]) -> String {
    if skipped.is_empty() {
        return "the chain is empty".to_owned();
    }
    skipped
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", field_prefix(&self.field), self.message)
    }
}
