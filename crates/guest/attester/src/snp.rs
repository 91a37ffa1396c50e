//! The `snp` attester: an SEV-SNP attestation report with the report data,
//! from configfs-tsm or, on older kernels, the `/dev/sev-guest` extended
//! report ioctl, plus the certificate table the host supplied (VCEK/VLEK
//! chain). Evidence is CoCo's: `{"attestation_report": <report as the
//! `sev` crate serializes it>, "cert_chain": [..] | null}`. Initdata is
//! checked against HOSTDATA.

use crate::tdx::{fit, pad64};
use crate::{Attester, AttesterError, InitDataBinding, tsm};
use cocoon_types::Tee;
use serde_json::{Value, json};
use sev::firmware::guest::{AttestationReport, Firmware};
use sev::firmware::host::CertTableEntry;
use sev::parser::ByteParser;
use std::path::{Path, PathBuf};

/// The SEV guest device.
pub const SEV_GUEST_DEVICE: &str = "/dev/sev-guest";

/// Whether this is an SNP guest.
pub fn detect() -> bool {
    Path::new(SEV_GUEST_DEVICE).exists() || Path::new("/sys/devices/platform/sev-guest").exists()
}

/// The SNP attester.
pub struct SnpAttester {
    tsm_root: PathBuf,
}

impl Default for SnpAttester {
    fn default() -> Self {
        Self {
            tsm_root: tsm::TSM_REPORT_ROOT.into(),
        }
    }
}

fn device(e: impl std::fmt::Display) -> AttesterError {
    AttesterError::Device(format!("SEV-SNP: {e}"))
}

/// Parses a raw attestation report.
pub fn parse_report(bytes: &[u8]) -> Result<AttestationReport, AttesterError> {
    AttestationReport::from_bytes(bytes).map_err(|e| device(format!("malformed report: {e}")))
}

impl SnpAttester {
    fn report(
        &self,
        rd: [u8; 64],
    ) -> Result<(AttestationReport, Option<Vec<CertTableEntry>>), AttesterError> {
        if tsm::available(&self.tsm_root) {
            let r = tsm::request(&self.tsm_root, "sev_guest", &rd)?;
            let certs = match r.auxblob {
                Some(mut aux) => Some(
                    CertTableEntry::vec_bytes_to_cert_table(&mut aux)
                        .map_err(|e| device(format!("certificate table: {e}")))?,
                ),
                None => None,
            };
            return Ok((parse_report(&r.outblob)?, certs));
        }
        // Older kernels: the extended-report ioctl.
        let mut fw = Firmware::open().map_err(|e| {
            device(format!(
                "no configfs-tsm and cannot open {SEV_GUEST_DEVICE}: {e}"
            ))
        })?;
        let (bytes, certs) = fw
            .get_ext_report(None, Some(rd), Some(0))
            .map_err(|e| device(format!("extended report request failed: {e}")))?;
        Ok((parse_report(&bytes)?, certs))
    }
}

impl Attester for SnpAttester {
    fn tee(&self) -> Tee {
        Tee::Snp
    }

    fn evidence(&self, report_data: &[u8]) -> Result<Value, AttesterError> {
        let (report, certs) = self.report(pad64(report_data)?)?;
        Ok(json!({"attestation_report": report, "cert_chain": certs}))
    }

    fn bind_init_data(&self, digest: &[u8]) -> Result<InitDataBinding, AttesterError> {
        let expected = fit(digest, 32)?;
        let (report, _) = self.report([0; 64])?;
        if report.host_data[..] != expected[..] {
            return Err(AttesterError::InitDataMismatch {
                expected: hex::encode(&expected),
                found: hex::encode(report.host_data),
            });
        }
        Ok(InitDataBinding::Checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_report_parses_and_serializes_with_its_fields() {
        let bytes = cocoon_fixtures::read("snp/trustee_snp_report.bin");
        let r = parse_report(&bytes).unwrap();
        let v = serde_json::to_value(r).unwrap();
        assert!(
            v.get("report_data").is_some() && v.get("host_data").is_some(),
            "{v}"
        );
        assert_eq!(r.report_data[..], bytes[0x50..0x90]);
        assert!(parse_report(&bytes[..100]).is_err());
    }
}
