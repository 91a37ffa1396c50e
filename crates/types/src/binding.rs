//! The binding between a KBS session and TEE evidence: the hash of the
//! runtime data (nonce + TEE public key + additional evidence), computed over
//! its RFC 8785 canonical JSON form exactly as CoCo does.

use kbs_types::{HashAlgorithm, TeePubKey};
use serde_json::{Value, json};

/// Error while computing a binding.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    /// The runtime data could not be put in canonical JSON form.
    #[error("cannot canonicalize runtime data: {0}")]
    Canonicalize(String),
}

/// The object whose digest the primary attester puts in its report data.
/// The `additional-evidence` member is always present, even when empty.
pub fn runtime_data_object(
    nonce: &str,
    tee_pubkey: &TeePubKey,
    additional_evidence: &str,
) -> Value {
    json!({
        "nonce": nonce,
        "tee-pubkey": tee_pubkey,
        "additional-evidence": additional_evidence,
    })
}

/// The object whose digest additional (device) attesters receive.
pub fn device_runtime_data_object(nonce: &str, tee_pubkey: &TeePubKey) -> Value {
    json!({ "nonce": nonce, "tee-pubkey": tee_pubkey })
}

/// `H(JCS(value))`.
pub fn digest_canonical(alg: HashAlgorithm, value: &Value) -> Result<Vec<u8>, BindingError> {
    let text = serde_json_canonicalizer::to_string(value)
        .map_err(|e| BindingError::Canonicalize(e.to_string()))?;
    Ok(alg.digest(text.as_bytes()))
}

/// The report data a primary attester must carry for this session.
pub fn primary_report_data(
    alg: HashAlgorithm,
    nonce: &str,
    tee_pubkey: &TeePubKey,
    additional_evidence: &str,
) -> Result<Vec<u8>, BindingError> {
    digest_canonical(
        alg,
        &runtime_data_object(nonce, tee_pubkey, additional_evidence),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn matches_the_published_test_vector() {
        let key = TeePubKey::EC {
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "xx".into(),
            y: "yy".into(),
        };
        let obj = runtime_data_object("AAAA", &key, "");
        assert_eq!(
            serde_json_canonicalizer::to_string(&obj).unwrap(),
            r#"{"additional-evidence":"","nonce":"AAAA","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"xx","y":"yy"}}"#
        );
        let d = primary_report_data(HashAlgorithm::Sha384, "AAAA", &key, "").unwrap();
        assert_eq!(
            hex::encode(&d),
            "50afebdd550d27873e4daa5f182e1fcac89a931b57c976e7ba3956b8fb34603d2fb6293917669bab46e73bdfb3797d52"
        );
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(&d),
            "UK/r3VUNJ4c+TapfGC4fysiakxtXyXbnujlWuPs0YD0vtik5F2abq0bnO9+zeX1S"
        );
    }

    #[test]
    fn a_different_nonce_changes_the_binding() {
        let key = TeePubKey::EC {
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "xx".into(),
            y: "yy".into(),
        };
        let a = primary_report_data(HashAlgorithm::Sha384, "AAAA", &key, "").unwrap();
        let b = primary_report_data(HashAlgorithm::Sha384, "AAAB", &key, "").unwrap();
        assert_ne!(a, b);
    }
}
