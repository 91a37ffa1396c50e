//! Azure confidential VMs: `az-snp-vtpm` and `az-tdx-vtpm`. The guest
//! attests with its vTPM; the vTPM's attestation key is vouched for by the
//! hardware through the HCL report. Checks, in order:
//!
//! 1. the HCL report parses and carries the expected hardware report type;
//! 2. the hardware evidence verifies: the SNP report with its VCEK chain to
//!    AMD's root (and VMPL 0), or the TD quote with the DCAP checks;
//! 3. the hardware report's REPORTDATA starts with the hash of the HCL
//!    variable data (and is zero after it), which binds the AK in it;
//! 4. the vTPM quote is signed by that AK (`HCLAkPub`, RSASSA SHA-256) and
//!    its PCR digest matches the PCR values sent;
//! 5. the quote's nonce (extraData) equals the session's report data, and
//!    in version 2 evidence the HCL user data starts with it too;
//! 6. with initdata, PCR 8 is one extend of its digest from zero.
//!
//! Claims are the hardware TEE's claims (CoCo's SNP or TDX shape) plus
//! `tpm.pcr00`..`tpm.pcr23`, as CoCo's Azure verifiers emit them.

pub mod hcl;

use crate::tdx::collateral::CollateralSet;
use crate::tdx::quote::TdxQuote;
use crate::tdx::{self, TdxCache};
use crate::{TeeClaims, TeeClass, VerifyError, VerifyInput, hex_short, retag};
use base64::Engine;
use cocoon_tpm::{AkPublicKey, Signature, verify_quote_signature};
use cocoon_types::Tee;
use hcl::{HclReport, HwReportType};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;

/// Azure evidence as CoCo's attesters send it.
#[derive(Debug, Deserialize)]
struct AzEvidence {
    #[serde(default)]
    version: Value,
    tpm_quote: QuoteHex,
    hcl_report: String,
    #[serde(default)]
    vcek: Option<String>,
    #[serde(default)]
    td_quote: Option<String>,
}

#[derive(Debug, Deserialize)]
struct QuoteHex {
    signature: String,
    message: String,
    pcrs: Vec<String>,
}

fn b64_any(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let t = s.trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(t)
        .ok()
        .or_else(|| STANDARD.decode(s).ok())
}

/// What the vTPM part established.
struct Vtpm {
    pcrs: Vec<[u8; 32]>,
    nonce: Vec<u8>,
}

fn parse(tee: &'static str, evidence: &Value) -> Result<(AzEvidence, HclReport), VerifyError> {
    let malformed = |detail: String| VerifyError::Malformed { tee, detail };
    let ev: AzEvidence = serde::Deserialize::deserialize(evidence).map_err(|e| {
        malformed(format!(
            "expected {{\"version\", \"tpm_quote\": {{\"signature\", \"message\", \"pcrs\"}}, \"hcl_report\", …}}: {e}"
        ))
    })?;
    let raw =
        b64_any(&ev.hcl_report).ok_or_else(|| malformed("hcl_report is not base64".into()))?;
    let hcl = HclReport::parse(&raw).map_err(|e| malformed(e.to_string()))?;
    Ok((ev, hcl))
}

/// Steps 3-6: the binding of the AK to the hardware report, the vTPM quote,
/// the nonce and the initdata PCR.
fn verify_vtpm(
    tee: &'static str,
    ev: &AzEvidence,
    hcl: &HclReport,
    hw_report_data: &[u8],
    input: &VerifyInput<'_>,
) -> Result<Vtpm, VerifyError> {
    let invalid = |reason: String| VerifyError::Invalid { tee, reason };
    let malformed = |detail: String| VerifyError::Malformed { tee, detail };
    let h = &hcl.var_data_hash;
    if !(hw_report_data.starts_with(h) && hw_report_data[h.len()..].iter().all(|b| *b == 0)) {
        return Err(invalid(
            "the hardware report does not bind the HCL variable data (REPORTDATA is not its hash): the vTPM key is not vouched for".into(),
        ));
    }
    let (n, e) = hcl.ak_pub().map_err(|e| malformed(e.to_string()))?;
    let hex = |field: &str, s: &str| {
        hex::decode(s).map_err(|_| malformed(format!("tpm_quote.{field} is not hex")))
    };
    let attest = hex("message", &ev.tpm_quote.message)?;
    let sig = hex("signature", &ev.tpm_quote.signature)?;
    let pcrs = crate::tpm::parse_pcrs(&ev.tpm_quote.pcrs).map_err(malformed)?;
    let quote = verify_quote_signature(
        &AkPublicKey::Rsa { n, e },
        &attest,
        &Signature::RsaSsa {
            hash: cocoon_tpm::structs::ALG_SHA256,
            sig,
        },
        &pcrs,
    )
    .map_err(|e| invalid(format!("vTPM quote: {e}")))?;
    let nonce = quote.attest.extra_data;
    if nonce != input.expected_report_data {
        return Err(VerifyError::ReportDataMismatch {
            expected: hex_short(input.expected_report_data),
            found: hex_short(&nonce),
        });
    }
    if ev
        .version
        .as_u64()
        .or_else(|| ev.version.as_str()?.parse().ok())
        >= Some(2)
    {
        let user = hcl
            .runtime
            .user_data
            .as_deref()
            .and_then(|u| hex::decode(u).ok())
            .ok_or_else(|| malformed("version 2 evidence without hex HCL user-data".into()))?;
        if !user.starts_with(input.expected_report_data) {
            return Err(VerifyError::ReportDataMismatch {
                expected: hex_short(input.expected_report_data),
                found: hex_short(&user),
            });
        }
    }
    crate::tpm::check_init_data_pcr(tee, &quote.pcrs[crate::tpm::INITDATA_PCR], input)?;
    Ok(Vtpm {
        pcrs: quote.pcrs,
        nonce,
    })
}

fn finish(mut claims: Value, v: Vtpm, input: &VerifyInput<'_>) -> TeeClaims {
    let tpm: Map<String, Value> = v
        .pcrs
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("pcr{i:02}"), Value::String(hex::encode(p))))
        .collect();
    claims["tpm"] = Value::Object(tpm);
    TeeClaims {
        class: TeeClass::Cpu,
        claims,
        report_data: hex::encode(&v.nonce),
        init_data: input.init_data_digest.map(hex::encode),
    }
}

const SNP_TEE: &str = "az-snp-vtpm";
const TDX_TEE: &str = "az-tdx-vtpm";

/// The `az-snp-vtpm` verifier.
pub struct AzSnpVtpmVerifier {
    snp: Arc<crate::snp::SnpVerifier>,
}

impl AzSnpVtpmVerifier {
    /// Uses `snp` for the SNP report and its chain.
    pub fn new(snp: Arc<crate::snp::SnpVerifier>) -> Self {
        Self { snp }
    }

    /// Verifies at `now` (Unix seconds).
    pub fn verify_at(&self, input: &VerifyInput<'_>, now: u64) -> Result<TeeClaims, VerifyError> {
        let (ev, hcl) = parse(SNP_TEE, input.evidence)?;
        if hcl.report_type != HwReportType::Snp {
            return Err(VerifyError::Malformed {
                tee: SNP_TEE,
                detail: "the HCL report carries a TDX report: use az-tdx-vtpm".into(),
            });
        }
        let snp = match ev.vcek.as_deref() {
            Some(v) => {
                let der = match crate::x509::pem_ders(v) {
                    Ok(mut ders) if !ders.is_empty() => Some(ders.remove(0)),
                    _ => b64_any(v),
                }
                .ok_or_else(|| VerifyError::Malformed {
                    tee: SNP_TEE,
                    detail: "vcek is neither PEM nor base64 DER".into(),
                })?;
                self.snp.verify_report(&hcl.hw_report, &der, now)
            }
            // As for snp evidence: the trustee's VCEK source.
            None => self.snp.verify_with_source(&hcl.hw_report, now),
        }
        .map_err(|e| retag(e, SNP_TEE))?;
        if snp.report.vmpl != 0 {
            return Err(VerifyError::Invalid {
                tee: SNP_TEE,
                reason: format!(
                    "the SNP report is from VMPL {}, the HCL runs at VMPL 0",
                    snp.report.vmpl
                ),
            });
        }
        let v = verify_vtpm(SNP_TEE, &ev, &hcl, &snp.report.report_data, input)?;
        Ok(finish(snp.to_json(), v, input))
    }
}

impl crate::Verifier for AzSnpVtpmVerifier {
    fn tee(&self) -> Tee {
        Tee::AzSnpVtpm
    }

    fn verify(&self, input: &VerifyInput<'_>) -> Result<TeeClaims, VerifyError> {
        self.verify_at(input, crate::unix_now())
    }
}

/// The `az-tdx-vtpm` verifier.
#[derive(Default)]
pub struct AzTdxVtpmVerifier {
    /// DCAP collateral for TD quotes that carry none.
    pub collateral: Option<Arc<CollateralSet>>,
    /// Verified platform results.
    pub cache: TdxCache,
}

impl AzTdxVtpmVerifier {
    /// Verifies at `now` (Unix seconds).
    pub fn verify_at(&self, input: &VerifyInput<'_>, now: u64) -> Result<TeeClaims, VerifyError> {
        let (ev, hcl) = parse(TDX_TEE, input.evidence)?;
        let malformed = |detail: String| VerifyError::Malformed {
            tee: TDX_TEE,
            detail,
        };
        if hcl.report_type != HwReportType::Tdx {
            return Err(malformed(
                "the HCL report carries an SNP report: use az-snp-vtpm".into(),
            ));
        }
        let raw = ev
            .td_quote
            .as_deref()
            .and_then(b64_any)
            .ok_or_else(|| malformed("no base64 \"td_quote\"".into()))?;
        let q = TdxQuote::parse(&raw).map_err(|e| malformed(e.to_string()))?;
        let sent = tdx::sent_collateral(input.evidence).map_err(|e| retag(e, TDX_TEE))?;
        let checked = tdx::verify_quote_with(
            &q,
            sent.as_ref(),
            self.collateral.as_deref(),
            now,
            &self.cache,
        )
        .map_err(|e| retag(e, TDX_TEE))?;
        if hcl.hw_report_data() != q.body.report_data {
            return Err(VerifyError::Invalid {
                tee: TDX_TEE,
                reason: "the TD quote is not for the HCL report's TDREPORT (report data differs)"
                    .into(),
            });
        }
        let v = verify_vtpm(TDX_TEE, &ev, &hcl, &q.body.report_data, input)?;
        let mut c = tdx::claims(&q, None);
        crate::tdx::collateral::CollateralResult::set_claims(checked.as_ref(), &mut c);
        Ok(finish(c, v, input))
    }
}

impl crate::Verifier for AzTdxVtpmVerifier {
    fn tee(&self) -> Tee {
        Tee::AzTdxVtpm
    }

    fn verify(&self, input: &VerifyInput<'_>) -> Result<TeeClaims, VerifyError> {
        self.verify_at(input, crate::unix_now())
    }
}

#[cfg(test)]
mod tests;
