//! The gRPC edge: the only module that knows tonic and the generated `pb` types.

pub mod pb;
pub mod status;
