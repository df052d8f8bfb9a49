//! Shared pieces of the fuzz targets in `fuzz_targets/`: the field framing most targets read
//! their input with, and the fixtures (keys, bindings, a clock) they share with the seed corpus.
//! They live in palyra's testkit (`palyra::testkit::fuzz`), where `tests/fuzz_seeds.rs`, which
//! writes the seeds, uses the same ones.

#![forbid(unsafe_code)]

pub use palyra::testkit::fuzz::*;
