//! Intel SGX: DCAP ECDSA quotes (v3, and v4 with an enclave body). The
//! checks are the TDX ones (attestation key signature, QE report binding,
//! PCK signature over the QE report, PCK chain to Intel's root, and with
//! collateral CRLs, TCB info and QE identity), with the SGX TCB info and the
//! SGX QE identity. The enclave's identity (MRENCLAVE, MRSIGNER, ISV product
//! id and SVN) is in the claims for policies to judge.

use crate::tdx::TdxCache;
use crate::tdx::collateral::{self, Collateral, CollateralSet};
use crate::tdx::quote::{EnclaveReport, SgxQuote};
use crate::{TeeClaims, TeeClass, VerifyError, VerifyInput};
use cocoon_types::Tee;
use serde_json::{Value, json};

const TEE: &str = "sgx";

fn retag(e: VerifyError) -> VerifyError {
    crate::retag(e, TEE)
}

/// Verifies an SGX quote (everything but the report-data and initdata
/// binding), with `collateral` when given; results are cached in `cache`.
pub fn verify_quote(
    q: &SgxQuote,
    collateral: Option<&Collateral>,
    now: u64,
    cache: &TdxCache,
) -> Result<Option<collateral::CollateralResult>, VerifyError> {
    verify_quote_with(q, collateral, None, now, cache)
}

/// [`verify_quote`] with the evidence's collateral or the configured set.
pub fn verify_quote_with(
    q: &SgxQuote,
    sent: Option<&Collateral>,
    configured: Option<&CollateralSet>,
    now: u64,
    cache: &TdxCache,
) -> Result<Option<collateral::CollateralResult>, VerifyError> {
    crate::tdx::verify_quote_with(q, sent, configured, now, cache).map_err(retag)
}

/// Claims in CoCo's SGX shape: `header`, `body`, `report_data`, `init_data`.
pub fn claims(q: &SgxQuote) -> Value {
    let h = &q.header;
    let b = &q.body;
    json!({
        "header": {
            "version": hex::encode(h.version.to_le_bytes()),
            "att_key_type": hex::encode(h.att_key_type.to_le_bytes()),
            "att_key_data_0": hex::encode(h.tee_type.to_le_bytes()),
            "qe_svn": hex::encode(&h.reserved[..2]),
            "pce_svn": hex::encode(&h.reserved[2..]),
            "vendor_id": hex::encode(h.vendor_id),
            "user_data": hex::encode(h.user_data),
        },
        "body": {
            "cpu_svn": hex::encode(b.cpu_svn),
            "misc_select": hex::encode(b.misc_select),
            "reserved1": hex::encode(b.reserved1),
            "isv_ext_prod_id": hex::encode(b.isv_ext_prod_id),
            "attributes.flags": hex::encode(b.attributes_flags),
            "attributes.xfrm": hex::encode(b.attributes_xfrm),
            "mr_enclave": hex::encode(b.mr_enclave),
            "reserved2": hex::encode(b.reserved2),
            "mr_signer": hex::encode(b.mr_signer),
            "reserved3": hex::encode(b.reserved3),
            "config_id": hex::encode(b.config_id),
            "isv_prod_id": hex::encode(b.isv_prod_id),
            "isv_svn": hex::encode(b.isv_svn),
            "config_svn": hex::encode(b.config_svn),
            "reserved4": hex::encode(b.reserved4),
            "isv_family_id": hex::encode(b.isv_family_id),
            "report_data": hex::encode(b.report_data),
        },
        "report_data": hex::encode(b.report_data),
        "init_data": hex::encode(b.config_id),
    })
}

/// The SGX verifier the trustee registers. Evidence: `{"quote": b64,
/// "collateral"?: {…}}`.
#[derive(Default)]
pub struct SgxVerifier {
    /// Collateral used when the evidence carries none.
    pub collateral: Option<std::sync::Arc<CollateralSet>>,
    /// Verified platform results.
    pub cache: TdxCache,
}

impl crate::Verifier for SgxVerifier {
    fn tee(&self) -> Tee {
        Tee::Sgx
    }

    fn verify(&self, input: &VerifyInput<'_>) -> Result<TeeClaims, VerifyError> {
        self.verify_at(input, crate::unix_now())
    }
}

impl SgxVerifier {
    /// [`crate::Verifier::verify`] at `now` (Unix seconds).
    pub fn verify_at(&self, input: &VerifyInput<'_>, now: u64) -> Result<TeeClaims, VerifyError> {
        let (q, checked) = crate::tdx::verify_dcap_evidence::<EnclaveReport>(
            input.evidence,
            self.collateral.as_deref(),
            &self.cache,
            now,
        )
        .map_err(retag)?;
        check_bindings(&q, input)?;
        let mut c = claims(&q);
        collateral::CollateralResult::set_claims(checked.as_ref(), &mut c);
        Ok(TeeClaims {
            class: TeeClass::Cpu,
            claims: c,
            report_data: hex::encode(q.body.report_data),
            init_data: input.init_data_digest.map(hex::encode),
        })
    }
}

/// REPORTDATA against the session binding, CONFIGID against the initdata
/// digest (both zero-padded to 64 bytes).
pub fn check_bindings(q: &SgxQuote, input: &VerifyInput<'_>) -> Result<(), VerifyError> {
    crate::tdx::check_bindings(
        TEE,
        &q.body.report_data,
        ("CONFIGID", &q.body.config_id),
        input,
    )
}

#[cfg(test)]
mod tests;
