//! Security suite: `sessions` (see security.rs).
