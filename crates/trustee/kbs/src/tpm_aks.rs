//! TPM attestation keys the trustee trusts: kept in the store, checked by
//! the `tpm` verifier, managed through admin endpoints
//! (`POST /kbs/v0/tpm-ak`, `GET /kbs/v0/tpm-aks`, `DELETE /kbs/v0/tpm-ak/<fingerprint>`).

use crate::api::{AppState, body_bytes, require_admin};
use crate::error::KbsError;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cocoon_store::{Store, ns};
use cocoon_verifier::TrustedKeys;
use cocoon_verifier::tpm::ak_fingerprint;
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
}

/// The AK set the `tpm` verifier consults, backed by the store.
pub struct StoreTrustedAks(pub Arc<dyn Store>);

impl TrustedKeys for StoreTrustedAks {
    fn is_trusted(&self, spki_der: &[u8]) -> Result<bool, String> {
        let fp = ak_fingerprint(spki_der);
        let v = self
            .0
            .get(ns::TPM_AKS, &fp)
            .map_err(|e| format!("cannot read trusted TPM AKs: {e}"))?;
        Ok(
            match v.and_then(|b| serde_json::from_slice::<RegisteredAk>(&b).ok()) {
                // Compare the whole key, not only its hash.
                Some(ak) => B64.decode(ak.spki).ok().as_deref() == Some(spki_der),
                None => false,
            },
        )
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

pub(crate) async fn add_tpm_ak(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, KbsError> {
    require_admin(&s, &headers)?;
    let der = parse_ak(&body_bytes(body)?).map_err(KbsError::BadRequest)?;
    let ak = RegisteredAk {
        fingerprint: ak_fingerprint(&der),
        spki: B64.encode(&der),
        added: time::OffsetDateTime::now_utc().unix_timestamp(),
    };
    let bytes = serde_json::to_vec(&ak).map_err(|e| KbsError::Internal(e.to_string()))?;
    s.store.put(ns::TPM_AKS, &ak.fingerprint, &bytes)?;
    tracing::info!(fingerprint = %ak.fingerprint, "TPM attestation key trusted");
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
