//! Security suite: `fuzz_corpus` (see security.rs).
