//! ttrpc bindings of the CoCo guest APIs, generated at build time from
//! `protos/` (same packages, services and field names as guest-components).
#![allow(
    missing_docs,
    clippy::all,
    unused_qualifications,
    unused_imports,
    unused_mut,
    dead_code,
    nonstandard_style
)]

/// `attestation_agent` messages.
pub mod attestation_agent {
    include!(concat!(env!("OUT_DIR"), "/attestation_agent.rs"));
}
/// `attestation_agent.AttestationAgentService` client and server.
pub mod attestation_agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/attestation_agent_ttrpc.rs"));
}
/// `api` (CDH) messages.
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/api.rs"));
}
/// `api.*Service` (CDH) clients and servers.
pub mod api_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/api_ttrpc.rs"));
}

pub use protobuf;
pub use ttrpc;
