//! Security suite: `matrix` (see security.rs).
