//! Wire formats shared by every side of Cocoon: the KBS protocol payloads
//! (re-exported from `kbs-types`), resource paths and URIs, the report-data
//! binding, the resource JWE (and RSA-OAEP decryption for it), and the
//! error body. No I/O lives here.

pub mod binding;
pub mod container;
pub mod error_body;
pub mod initdata;
pub mod inline;
pub mod jwe;
pub mod percent;
pub mod resource;
pub mod rsa_oaep;
pub mod sealed;

pub use kbs_types::{
    Attestation, Challenge, CompositeEvidence, HashAlgorithm, InitData, Request, RuntimeData, Tee,
    TeePubKey,
};

/// The KBS protocol version stock CoCo clients send and the stock KBS requires.
pub const KBS_PROTOCOL_VERSION: &str = "0.4.0";

/// Name of the session cookie, as the stock KBS sets it.
pub const SESSION_COOKIE: &str = "kbs-session-id";

/// Every KBS endpoint lives below this prefix.
pub const KBS_PREFIX: &str = "/kbs/v0";

/// Parses a TEE name the way the stock KBS does (`az-snp-vtpm`, `sample`, ...).
pub fn parse_tee(name: &str) -> Option<Tee> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// The wire name of a TEE (`az-snp-vtpm`, `sample`, ...).
pub fn tee_name(tee: Tee) -> String {
    match serde_json::to_value(tee) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{tee:?}").to_lowercase(),
    }
}
