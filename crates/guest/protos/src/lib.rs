//! ttrpc bindings of the CoCo guest APIs, generated at build time from
//! `protos/` (same packages, services and field names as guest-components),
//! and of the Kata Containers agent API under [`kata`].
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

/// Cocoon's `cocoon.pod.PodNetwork` service beside the agent API.
pub mod pod {
    include!(concat!(env!("OUT_DIR"), "/pod.rs"));
}

/// Client and server of `cocoon.pod.PodNetwork`.
pub mod pod_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/pod_ttrpc.rs"));
}

/// The Kata Containers agent API (`grpc.AgentService`, `grpc.Health`), the
/// calls a containerd shim makes to the agent in the pod VM. Wire-compatible
/// with Kata's `agent.proto`; the modules are siblings because the generated
/// code names the others as `super::oci`, `super::types`, ...
pub mod kata {
    /// `types` package: interfaces, routes, ARP neighbours, fsGroup policy.
    pub mod types {
        include!(concat!(env!("OUT_DIR"), "/kata/types.rs"));
    }
    /// The OCI runtime spec as protobuf (`grpc.Spec` and its parts).
    pub mod oci {
        include!(concat!(env!("OUT_DIR"), "/kata/oci.rs"));
    }
    /// `grpc.AgentService` messages.
    pub mod agent {
        include!(concat!(env!("OUT_DIR"), "/kata/agent.rs"));
    }
    /// `google.protobuf.Empty`, where the generated services look for it.
    pub mod empty {
        pub use protobuf::well_known_types::empty::Empty;
    }
    /// `grpc.AgentService` client and server.
    pub mod agent_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/kata/agent_ttrpc.rs"));
    }
    /// `grpc.Health` messages.
    pub mod health {
        include!(concat!(env!("OUT_DIR"), "/kata/health.rs"));
    }
    /// `grpc.Health` client and server.
    pub mod health_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/kata/health_ttrpc.rs"));
    }
}

pub use protobuf;
pub use ttrpc;

pub mod json;
