//! Security suite: `quotas` (see security.rs).
