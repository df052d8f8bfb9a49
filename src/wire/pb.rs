//! The generated protobuf and gRPC code, behind one module. Nothing outside `rpc/` and `quic/`
//! (and the CLI's client side) uses these types; domain code converts with `TryFrom`.

#![allow(missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic, unreachable_pub)]

/// `palyra.common.v1`: error reasons.
pub mod common {
    pub mod v1 {
        tonic::include_proto!("palyra.common.v1");
    }
}

/// `palyra.vault.v1`: VaultService.
pub mod vault {
    pub mod v1 {
        tonic::include_proto!("palyra.vault.v1");
    }
}

/// `palyra.identity.v1`: IdentityService.
pub mod identity {
    pub mod v1 {
        tonic::include_proto!("palyra.identity.v1");
    }
}

/// `palyra.pairing.v1`: PairingService.
pub mod pairing {
    pub mod v1 {
        tonic::include_proto!("palyra.pairing.v1");
    }
}

/// `palyra.policy.v1`: PolicyService.
pub mod policy {
    pub mod v1 {
        tonic::include_proto!("palyra.policy.v1");
    }
}

/// `palyra.audit.v1`: AuditService.
pub mod audit {
    pub mod v1 {
        tonic::include_proto!("palyra.audit.v1");
    }
}

/// `palyra.auth.v1`: AuthProfileService.
pub mod auth {
    pub mod v1 {
        tonic::include_proto!("palyra.auth.v1");
    }
}

/// `palyra.console.v1`: ConsoleService.
pub mod console {
    pub mod v1 {
        tonic::include_proto!("palyra.console.v1");
    }
}

/// `palyra.node.v1`: the QUIC data plane's messages.
pub mod node {
    pub mod v1 {
        tonic::include_proto!("palyra.node.v1");
    }
}

/// The descriptor set of every Palyra proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("palyra_descriptor");
