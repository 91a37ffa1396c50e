//! The HCL report an Azure confidential VM's paravisor (HCL) hands out:
//! a 32-byte header, the hardware report (an SNP report, or a TDREPORT
//! padded to the same 1184 bytes), then the IGVM request data whose
//! variable part is a JSON document holding the vTPM's attestation key.
//! The hardware report's REPORTDATA starts with the hash of that variable
//! data: this is what binds the vTPM to the TEE.

use serde::Deserialize;

/// Header length.
const HEADER_LEN: usize = 32;
/// Hardware report area length (an SNP report's size).
pub const HW_REPORT_LEN: usize = 1184;
/// IGVM request data header length.
const IGVM_HEADER_LEN: usize = 20;
/// Largest variable data accepted.
const MAX_VAR_DATA: usize = 64 * 1024;

/// Why an HCL report did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed HCL report: {0}")]
pub struct HclError(String);

fn err(s: impl Into<String>) -> HclError {
    HclError(s.into())
}

/// The TEE whose report the HCL report carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HwReportType {
    /// AMD SEV-SNP attestation report.
    Snp,
    /// Intel TDX TDREPORT.
    Tdx,
}

/// A parsed HCL report.
#[derive(Debug, Clone)]
pub struct HclReport {
    /// Header version.
    pub version: u32,
    /// SNP or TDX.
    pub report_type: HwReportType,
    /// The hardware report (1184 bytes; a TDREPORT uses the first 1024).
    pub hw_report: Vec<u8>,
    /// The variable data exactly as hashed.
    pub var_data: Vec<u8>,
    /// The hash of the variable data, with the algorithm the header names.
    pub var_data_hash: Vec<u8>,
    /// The variable data, parsed.
    pub runtime: RuntimeData,
}

/// The variable data's JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct RuntimeData {
    /// Keys: `HCLAkPub` (the vTPM AK) and `HCLEkPub`.
    pub keys: Vec<Jwk>,
    /// VM configuration (secure boot, TPM, console, VM id).
    #[serde(rename = "vm-configuration", default)]
    pub vm_configuration: serde_json::Value,
    /// 64 bytes of user data, hex.
    #[serde(rename = "user-data", default)]
    pub user_data: Option<String>,
}

/// An RSA JWK.
#[derive(Debug, Clone, Deserialize)]
pub struct Jwk {
    /// Key id.
    pub kid: String,
    /// Key type (`RSA`).
    pub kty: String,
    /// Modulus, base64url.
    #[serde(default)]
    pub n: String,
    /// Exponent, base64url.
    #[serde(default)]
    pub e: String,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl HclReport {
    /// Parses HCL report bytes.
    pub fn parse(b: &[u8]) -> Result<Self, HclError> {
        let fixed = HEADER_LEN + HW_REPORT_LEN + IGVM_HEADER_LEN;
        if b.len() < fixed {
            return Err(err(format!("{} bytes, at least {fixed} needed", b.len())));
        }
        if &b[..4] != b"HCLA" {
            return Err(err("no HCLA signature"));
        }
        let version = u32_at(b, 4);
        let report_size = u32_at(b, 8) as usize;
        let igvm = HEADER_LEN + HW_REPORT_LEN;
        let data_size = u32_at(b, igvm) as usize;
        let report_type = match u32_at(b, igvm + 8) {
            2 => HwReportType::Snp,
            4 => HwReportType::Tdx,
            t => return Err(err(format!("hardware report type {t} (2: SNP, 4: TDX)"))),
        };
        let hash_type = u32_at(b, igvm + 12);
        let var_size = u32_at(b, igvm + 16) as usize;
        if var_size > MAX_VAR_DATA || fixed + var_size > b.len() {
            return Err(err(format!(
                "variable data of {var_size} bytes overruns the report"
            )));
        }
        if data_size != IGVM_HEADER_LEN + var_size || report_size != igvm + data_size {
            return Err(err("sizes in the header disagree"));
        }
        if b[fixed + var_size..].iter().any(|x| *x != 0) {
            return Err(err("trailing bytes after the variable data"));
        }
        let var_data = b[fixed..fixed + var_size].to_vec();
        let var_data_hash = match hash_type {
            1 => ring::digest::digest(&ring::digest::SHA256, &var_data),
            2 => ring::digest::digest(&ring::digest::SHA384, &var_data),
            3 => ring::digest::digest(&ring::digest::SHA512, &var_data),
            h => {
                return Err(err(format!(
                    "report data hash type {h} (1-3: SHA-256/384/512)"
                )));
            }
        }
        .as_ref()
        .to_vec();
        let runtime: RuntimeData = serde_json::from_slice(&var_data)
            .map_err(|e| err(format!("variable data is not the runtime JSON: {e}")))?;
        Ok(Self {
            version,
            report_type,
            hw_report: b[HEADER_LEN..HEADER_LEN + HW_REPORT_LEN].to_vec(),
            var_data,
            var_data_hash,
            runtime,
        })
    }

    /// The vTPM attestation key (`HCLAkPub`): RSA modulus and exponent.
    pub fn ak_pub(&self) -> Result<(Vec<u8>, Vec<u8>), HclError> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let k = self
            .runtime
            .keys
            .iter()
            .find(|k| k.kid == "HCLAkPub")
            .ok_or_else(|| err("the variable data has no HCLAkPub key"))?;
        if k.kty != "RSA" {
            return Err(err(format!("HCLAkPub is {}, not RSA", k.kty)));
        }
        let n = b64
            .decode(k.n.trim_end_matches('='))
            .map_err(|_| err("HCLAkPub modulus is not base64url"))?;
        let e = b64
            .decode(k.e.trim_end_matches('='))
            .map_err(|_| err("HCLAkPub exponent is not base64url"))?;
        Ok((n, e))
    }

    /// REPORTDATA of the hardware report (SNP: offset 0x50; TDREPORT: 128).
    pub fn hw_report_data(&self) -> &[u8] {
        match self.report_type {
            HwReportType::Snp => &self.hw_report[0x50..0x90],
            HwReportType::Tdx => &self.hw_report[128..192],
        }
    }
}
