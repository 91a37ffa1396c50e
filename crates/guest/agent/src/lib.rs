//! Guest services inside the TEE: the Attestation Agent ([`aa`]), the
//! Confidential Data Hub ([`cdh`]), their CoCo ttrpc APIs ([`services`]),
//! the workload REST API ([`rest`]) and the runtime event log
//! ([`eventlog`]). The `cocoon-guest` binary is a thin layer over these.

pub mod aa;
pub mod cdh;
pub mod cli;
pub mod eventlog;
pub mod pod;
pub mod rest;
pub mod services;

/// Guest service errors. Messages never carry secret material.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The attester failed (including initdata mismatches).
    #[error(transparent)]
    Attester(#[from] cocoon_attester::AttesterError),
    /// The initdata document is invalid.
    #[error(transparent)]
    InitData(#[from] cocoon_types::initdata::InitDataError),
    /// The KBS refused or could not be reached.
    #[error(transparent)]
    Kbs(#[from] cocoon_kbs_client::ClientError),
    /// A sealed secret is malformed, unsigned or undecryptable.
    #[error(transparent)]
    Sealed(#[from] cocoon_types::sealed::SealedError),
    /// A runtime measurement was refused.
    #[error(transparent)]
    Event(#[from] eventlog::EventError),
    /// An image pull failed (registry, policy, keys, layers).
    #[error(transparent)]
    Image(#[from] cocoon_image::pull::PullError),
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
    /// The caller's request is invalid.
    #[error("{0}")]
    BadRequest(String),
    /// Another guest service failed.
    #[error("{0}")]
    Remote(String),
    /// An internal failure.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The guest's async runtime: two workers (guests have few vCPUs).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Runs blocking device I/O on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::Internal(format!("blocking task failed: {e}")))
}
