//! gRPC bindings of the host side.

/// Kubernetes CRI `runtime.v1` (the subset `cocoon pod` uses).
#[allow(missing_docs, clippy::all)]
pub mod cri {
    tonic::include_proto!("runtime.v1");
}
