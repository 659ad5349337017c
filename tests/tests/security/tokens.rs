//! Security suite: `tokens` (see security.rs).
