//! gRPC bindings of the host side.

/// Kubernetes CRI `runtime.v1` (the subset `cocoon pod` uses).
#[allow(missing_docs, clippy::all)]
pub mod cri {
    tonic::include_proto!("runtime.v1");
}

/// containerd's packages, nested as their names are (the generated code
/// refers across them by relative paths).
#[allow(missing_docs, clippy::all)]
pub mod containerd {
    /// `containerd.types`.
    pub mod types {
        tonic::include_proto!("containerd.types");
    }
    /// `containerd.services.*`.
    pub mod services {
        /// `containerd.services.snapshots`.
        pub mod snapshots {
            /// `containerd.services.snapshots.v1`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
    }
}

/// containerd's snapshotter API (`containerd.services.snapshots.v1`).
pub use containerd::services::snapshots::v1 as snapshots;
