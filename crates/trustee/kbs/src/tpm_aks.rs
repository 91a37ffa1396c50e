//! TPM attestation keys the trustee trusts: kept in the store, checked by
//! the `tpm` verifier, managed through admin endpoints
//! (`POST /kbs/v0/tpm-ak`, `GET /kbs/v0/tpm-aks`, `DELETE /kbs/v0/tpm-ak/<fingerprint>`),
//! or enrolled by the guest itself when its EK certificate chains to a TPM
//! manufacturer CA the trustee was given (`--tpm-ek-ca`): credential
//! activation (`POST /kbs/v0/tpm/ek-challenge`, then `/tpm/ek-activate`)
//! proves the AK is in that TPM.

use crate::api::{AppState, body_bytes, require_admin};
use crate::error::KbsError;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cocoon_store::{Store, ns};
use cocoon_verifier::tpm::ak_fingerprint;
use cocoon_verifier::{KeyTrust, TrustedKeys};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A registered AK.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisteredAk {
    /// SHA-256 of the DER SPKI, hex.
    pub fingerprint: String,
    /// DER SPKI, base64.
    pub spki: String,
    /// When it was added, unix seconds.
    pub added: i64,
    /// How it was trusted, when not by an admin: the EK's CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled_by_ek_of: Option<String>,
    /// Whether the admin declared it (or the EK CA that enrolled it) a
    /// hardware TPM's. Without it the `tpm` verifier's hardware claim is
    /// only at the warning tier: the host may run a software TPM.
    #[serde(default)]
    pub hardware_backed: bool,
}

/// Challenges by id, with their expiry (Unix seconds) and opening order.
pub type EkPending = std::sync::Mutex<
    std::collections::HashMap<String, (cocoon_verifier::tpm::ek::Pending, i64, u64)>,
>;

/// Order in which challenges were opened (the third field of [`EkPending`]).
static EK_CHALLENGE_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How long a guest has to answer a challenge.
const EK_CHALLENGE_SECS: i64 = 120;
/// Challenges kept at most.
const EK_PENDING_MAX: usize = 1024;
/// Open challenges per EK at most.
const EK_PENDING_PER_EK: usize = 4;

#[derive(Deserialize)]
struct EkChallengeRequest {
    /// The EK certificate, base64 DER.
    ek_cert: String,
    /// Intermediate CA certificates, base64 DER.
    #[serde(default)]
    ek_chain: Vec<String>,
    /// The AK's TPMT_PUBLIC, base64.
    ak_public: String,
}

#[derive(Deserialize)]
struct EkActivateRequest {
    challenge_id: String,
    /// The secret TPM2_ActivateCredential returned, base64.
    secret: String,
}

fn b64_field(v: &str, what: &str) -> Result<Vec<u8>, KbsError> {
    B64.decode(v)
        .map_err(|_| KbsError::BadRequest(format!("{what} is not base64")))
}

pub(crate) async fn ek_challenge(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, KbsError> {
    if s.ek_trust.is_empty() {
        return Err(KbsError::BadRequest(
            "this trustee does not enroll TPM AKs by EK certificate (start it with --tpm-ek-ca or --tpm-hardware-ek-ca FILE|DIR); an admin can add the AK with `cocoon admin add-tpm-ak`".into(),
        ));
    }
    let req: EkChallengeRequest = serde_json::from_slice(&body_bytes(body)?).map_err(|e| {
        KbsError::BadRequest(format!(
            "expected {{\"ek_cert\", \"ak_public\", \"ek_chain\"?}}: {e}"
        ))
    })?;
    let ek = b64_field(&req.ek_cert, "ek_cert")?;
    let ak = b64_field(&req.ak_public, "ak_public")?;
    let chain = req
        .ek_chain
        .iter()
        .map(|c| b64_field(c, "ek_chain"))
        .collect::<Result<Vec<_>, _>>()?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // The first CA set the EK chains to decides (hardware makers' first).
    let mut refused = Vec::new();
    let mut made = None;
    for trust in &s.ek_trust {
        match trust.challenge(&ek, &chain, &ak, now.max(0) as u64) {
            Ok(c) => {
                made = Some(c);
                break;
            }
            Err(e) => refused.push(e),
        }
    }
    let (credential, pending) = made.ok_or_else(|| {
        KbsError::AttestationFailed(format!("TPM AK enrollment refused: {}", refused.join("; ")))
    })?;
    let mut id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
        .map_err(|_| KbsError::Internal("no randomness".into()))?;
    let id = hex::encode(id);
    {
        let mut p = s
            .ek_pending
            .lock()
            .map_err(|_| KbsError::Internal("EK challenges lock".into()))?;
        p.retain(|_, (_, exp, _)| *exp > now);
        // A few at a time per TPM, the newest: EK certificates are public,
        // so anyone can ask, and refusing would let them lock the real TPM
        // out; a TPM that answers needs only its own, fresh challenge.
        let mut same: Vec<(String, u64)> = p
            .iter()
            .filter(|(_, (q, _, _))| q.ek_digest == pending.ek_digest)
            .map(|(id, (_, _, seq))| (id.clone(), *seq))
            .collect();
        if same.len() >= EK_PENDING_PER_EK {
            same.sort_by_key(|(_, seq)| *seq);
            for (old, _) in &same[..=same.len() - EK_PENDING_PER_EK] {
                p.remove(old);
            }
        }
        if p.len() >= EK_PENDING_MAX {
            return Err(KbsError::Internal(
                "too many EK challenges in flight; retry later".into(),
            ));
        }
        let seq = EK_CHALLENGE_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        p.insert(id.clone(), (pending, now + EK_CHALLENGE_SECS, seq));
    }
    Ok(Json(serde_json::json!({
        "challenge_id": id,
        "id_object": B64.encode(&credential.id_object),
        "encrypted_secret": B64.encode(&credential.encrypted_secret),
    }))
    .into_response())
}

pub(crate) async fn ek_activate(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, KbsError> {
    let req: EkActivateRequest = serde_json::from_slice(&body_bytes(body)?).map_err(|e| {
        KbsError::BadRequest(format!("expected {{\"challenge_id\", \"secret\"}}: {e}"))
    })?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // One answer per challenge, right or wrong.
    let pending = s
        .ek_pending
        .lock()
        .map_err(|_| KbsError::Internal("EK challenges lock".into()))?
        .remove(&req.challenge_id);
    let Some((pending, _, _)) = pending.filter(|(_, exp, _)| *exp > now) else {
        return Err(KbsError::AttestationFailed(
            "unknown, expired or replaced EK challenge: ask for a new one".into(),
        ));
    };
    let answer = b64_field(&req.secret, "secret")?;
    let der = pending
        .finish(&answer)
        .map_err(|e| KbsError::AttestationFailed(format!("TPM AK enrollment refused: {e}")))?;
    let fingerprint = ak_fingerprint(&der);
    // An AK already trusted (by an admin, or an earlier enrollment) keeps
    // its record: how and when it was first trusted stays visible.
    if let Some(existing) = s.store.get(ns::TPM_AKS, &fingerprint)?
        && let Ok(ak) = serde_json::from_slice::<RegisteredAk>(&existing)
    {
        return Ok(Json(ak).into_response());
    }
    let ak = RegisteredAk {
        fingerprint,
        spki: B64.encode(&der),
        added: now,
        enrolled_by_ek_of: Some(pending.ek_issuer.clone()),
        hardware_backed: pending.ek_ca_hardware_backed,
    };
    let bytes = serde_json::to_vec(&ak).map_err(|e| KbsError::Internal(e.to_string()))?;
    s.store.put(ns::TPM_AKS, &ak.fingerprint, &bytes)?;
    tracing::info!(fingerprint = %ak.fingerprint, ek_ca = %pending.ek_issuer, "TPM attestation key trusted by EK credential activation");
    Ok(Json(ak).into_response())
}

/// The AK set the `tpm` verifier consults, backed by the store.
pub struct StoreTrustedAks(pub Arc<dyn Store>);

impl TrustedKeys for StoreTrustedAks {
    fn trusted_by(&self, spki_der: &[u8]) -> Result<Option<KeyTrust>, String> {
        let fp = ak_fingerprint(spki_der);
        let v = self
            .0
            .get(ns::TPM_AKS, &fp)
            .map_err(|e| format!("cannot read trusted TPM AKs: {e}"))?;
        let Some(ak) = v.and_then(|b| serde_json::from_slice::<RegisteredAk>(&b).ok()) else {
            return Ok(None);
        };
        // Compare the whole key, not only its hash.
        if B64.decode(&ak.spki).ok().as_deref() != Some(spki_der) {
            return Ok(None);
        }
        Ok(Some(KeyTrust {
            by: match ak.enrolled_by_ek_of {
                Some(ca) => format!("ek:{ca}"),
                None => "admin".into(),
            },
            hardware_backed: ak.hardware_backed,
        }))
    }
}

/// DER SPKI from a PEM `PUBLIC KEY` or raw DER body, checked to be an RSA
/// or P-256 key.
pub fn parse_ak(body: &[u8]) -> Result<Vec<u8>, String> {
    let der = if body.starts_with(b"-----BEGIN") {
        let mut rd = body;
        match rustls_pemfile::read_one(&mut rd) {
            Ok(Some(rustls_pemfile::Item::SubjectPublicKeyInfo(d))) => d.as_ref().to_vec(),
            _ => return Err("expected a PEM 'PUBLIC KEY' block".into()),
        }
    } else {
        body.to_vec()
    };
    cocoon_tpm::AkPublicKey::from_spki_der(&der).map_err(|e| e.to_string())?;
    Ok(der)
}

#[derive(Deserialize)]
pub(crate) struct AddAkQuery {
    /// `true` when the admin vouches that the AK is in a hardware TPM.
    #[serde(default)]
    hardware_backed: bool,
}

pub(crate) async fn add_tpm_ak(
    State(s): State<AppState>,
    Query(q): Query<AddAkQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, KbsError> {
    require_admin(&s, &headers)?;
    let der = parse_ak(&body_bytes(body)?).map_err(KbsError::BadRequest)?;
    let ak = RegisteredAk {
        fingerprint: ak_fingerprint(&der),
        spki: B64.encode(&der),
        added: time::OffsetDateTime::now_utc().unix_timestamp(),
        enrolled_by_ek_of: None,
        hardware_backed: q.hardware_backed,
    };
    let bytes = serde_json::to_vec(&ak).map_err(|e| KbsError::Internal(e.to_string()))?;
    s.store.put(ns::TPM_AKS, &ak.fingerprint, &bytes)?;
    tracing::info!(fingerprint = %ak.fingerprint, hardware_backed = ak.hardware_backed, "TPM attestation key trusted");
    Ok(Json(ak).into_response())
}

pub(crate) async fn list_tpm_aks(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, KbsError> {
    require_admin(&s, &headers)?;
    let mut out = Vec::new();
    for k in s.store.list(ns::TPM_AKS)? {
        if let Some(v) = s.store.get(ns::TPM_AKS, &k)?
            && let Ok(ak) = serde_json::from_slice::<RegisteredAk>(&v)
        {
            out.push(ak);
        }
    }
    Ok(Json(out).into_response())
}

pub(crate) async fn delete_tpm_ak(
    State(s): State<AppState>,
    Path(fp): Path<String>,
    headers: HeaderMap,
) -> Result<Response, KbsError> {
    require_admin(&s, &headers)?;
    if !s.store.delete(ns::TPM_AKS, &fp)? {
        return Err(KbsError::NotFound(format!("TPM AK '{fp}'")));
    }
    tracing::info!(fingerprint = %fp, "TPM attestation key removed");
    Ok(StatusCode::OK.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One store read answers both "trusted?" and "how?"; a record whose
    /// key differs from the one asked about (same fingerprint slot) is not
    /// trust.
    #[test]
    fn store_says_whether_and_how_an_ak_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(cocoon_store::SqliteStore::open(&dir.path().join("db")).unwrap());
        let keys = StoreTrustedAks(store.clone());
        let put = |spki: &[u8], ek: Option<&str>, slot: &str| {
            let ak = RegisteredAk {
                fingerprint: slot.into(),
                spki: B64.encode(spki),
                added: 0,
                enrolled_by_ek_of: ek.map(Into::into),
                hardware_backed: ek.is_some(),
            };
            store
                .put(ns::TPM_AKS, slot, &serde_json::to_vec(&ak).unwrap())
                .unwrap();
        };
        let (admin, ek, other) = (
            b"admin-ak".as_slice(),
            b"ek-ak".as_slice(),
            b"other".as_slice(),
        );
        assert_eq!(keys.trusted_by(admin).unwrap(), None);
        put(admin, None, &ak_fingerprint(admin));
        put(ek, Some("vendor-ca"), &ak_fingerprint(ek));
        put(admin, None, &ak_fingerprint(other));
        let trust = |by: &str, hardware_backed| {
            Some(KeyTrust {
                by: by.into(),
                hardware_backed,
            })
        };
        assert_eq!(keys.trusted_by(admin).unwrap(), trust("admin", false));
        assert_eq!(keys.trusted_by(ek).unwrap(), trust("ek:vendor-ca", true));
        assert_eq!(keys.trusted_by(other).unwrap(), None);
        // Where nothing may block (an async worker), the lookup does not
        // touch the store and asks to run again elsewhere.
        assert_eq!(
            cocoon_types::inline::without_blocking(|| keys.trusted_by(admin)),
            None
        );
    }
}
