//! Scenarios shared by the benches: the Cedar workload and the QUIC scenario (its raw quinn
//! baseline included). Nodes, devices and client TLS come from `palyra::testkit`.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod policy;
pub mod quic;
