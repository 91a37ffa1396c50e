//! The `sample` TEE: unsigned JSON evidence for development. It proves
//! nothing and is registered only when development TEEs are allowed.

use crate::{TeeClaims, TeeClass, Verifier, VerifyError, VerifyInput, hex_short};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cocoon_types::Tee;
use serde::{Deserialize, Serialize};

/// Sample evidence, as CoCo's sample attester writes it.
#[derive(Debug, Deserialize)]
struct SampleEvidence {
    svn: String,
    #[serde(default)]
    report_data: String,
}

#[derive(Debug, Serialize)]
struct PlatformVersion {
    major: u32,
    minor: u32,
}

/// Claims CoCo's sample verifier emits.
#[derive(Debug, Serialize)]
struct SampleClaims {
    svn: String,
    report_data: String,
    launch_digest: &'static str,
    platform_version: PlatformVersion,
    debug: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    init_data: Option<String>,
}

/// Verifier for the `sample` TEE.
pub struct SampleVerifier;

impl Verifier for SampleVerifier {
    fn tee(&self) -> Tee {
        Tee::Sample
    }

    fn development_only(&self) -> bool {
        true
    }

    fn verify(&self, input: &VerifyInput<'_>) -> Result<TeeClaims, VerifyError> {
        let ev: SampleEvidence = serde::Deserialize::deserialize(input.evidence).map_err(|e| {
            VerifyError::Malformed {
                tee: "sample",
                detail: format!("expected {{\"svn\": string, \"report_data\": base64}}: {e}"),
            }
        })?;
        let found = B64
            .decode(&ev.report_data)
            .map_err(|_| VerifyError::Malformed {
                tee: "sample",
                detail: "report_data is not base64".into(),
            })?;
        // Exact comparison: no padding or truncation to make it fit.
        if found != input.expected_report_data {
            return Err(VerifyError::ReportDataMismatch {
                expected: hex_short(input.expected_report_data),
                found: hex_short(&found),
            });
        }
        let init_data = input.init_data_digest.map(|d| B64.encode(d));
        let claims = SampleClaims {
            svn: ev.svn,
            report_data: ev.report_data.clone(),
            launch_digest: "abcde",
            platform_version: PlatformVersion { major: 1, minor: 4 },
            debug: false,
            init_data: init_data.clone(),
        };
        Ok(TeeClaims {
            class: TeeClass::Cpu,
            claims: serde_json::to_value(claims).map_err(|e| VerifyError::Malformed {
                tee: "sample",
                detail: e.to_string(),
            })?,
            report_data: ev.report_data,
            init_data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_exact_binding_and_emits_coco_claims() {
        let rd = [7u8; 48];
        let ev = json!({"svn": "1", "report_data": B64.encode(rd)});
        let c = SampleVerifier
            .verify(&VerifyInput {
                evidence: &ev,
                expected_report_data: &rd,
                init_data_digest: None,
            })
            .unwrap();
        assert_eq!(c.claims["svn"], "1");
        assert_eq!(c.claims["launch_digest"], "abcde");
        assert_eq!(c.claims["platform_version"]["major"], 1);
        assert_eq!(c.claims["debug"], false);
        assert!(c.claims.get("init_data").is_none());
    }

    #[test]
    fn rejects_wrong_padded_and_malformed_binding() {
        let rd = [7u8; 48];
        let mut padded = rd.to_vec();
        padded.extend_from_slice(&[0u8; 16]);
        for ev in [
            json!({"svn": "1", "report_data": B64.encode([8u8; 48])}),
            json!({"svn": "1", "report_data": B64.encode(&padded)}),
            json!({"svn": "1"}),
        ] {
            let r = SampleVerifier.verify(&VerifyInput {
                evidence: &ev,
                expected_report_data: &rd,
                init_data_digest: None,
            });
            assert!(
                matches!(r, Err(VerifyError::ReportDataMismatch { .. })),
                "{ev}"
            );
        }
        for ev in [
            json!({"report_data": "x"}),
            json!([1]),
            json!({"svn": "1", "report_data": "%%"}),
        ] {
            let r = SampleVerifier.verify(&VerifyInput {
                evidence: &ev,
                expected_report_data: &rd,
                init_data_digest: None,
            });
            assert!(matches!(r, Err(VerifyError::Malformed { .. })), "{ev}");
        }
    }
}
