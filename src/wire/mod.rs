//! The wire, in one place: the generated protobuf and gRPC code ([`pb`]), the conversions
//! between wire messages and domain types ([`convert`]), and the one mapping from domain errors
//! to a gRPC `Status` with its `ErrorInfo` ([`status`]) or a QUIC error frame ([`quic`]). The
//! gRPC edge (`rpc/`), the QUIC data
//! plane (`quic/`) and the CLI's clients use it; domain modules never do.

pub mod convert;
pub mod pb;
pub mod quic;
pub mod status;
