//! Security suite: `listeners` (see security.rs).
