//! What the benches share: the Cedar workload, the QUIC scenario (its raw quinn baseline
//! included), and the machine's figures (`host`). Nodes, devices and client TLS come from
//! `palyra::testkit`.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod host;
pub mod policy;
pub mod quic;
