//! The Key Broker Service: CoCo's KBS protocol over HTTP(S), with the
//! built-in attestation service, stateless sealed sessions, admin API,
//! metrics and the denial log.

pub mod admin;
pub mod api;
pub mod audit;
mod data_dir;
pub mod decision;
pub mod error;
pub mod fetch;
pub mod limits;
pub mod metrics;
pub mod seed;
pub mod server;
pub mod session;
#[cfg(test)]
mod test_store;
pub mod tokens;
pub mod tpm_aks;

pub use server::{TlsMode, Trustee, TrusteeConfig, default_data_dir};
