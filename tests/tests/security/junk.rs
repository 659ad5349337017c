//! Security suite: `junk` (see security.rs).
