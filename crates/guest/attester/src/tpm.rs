//! The `tpm` attester: a quote over SHA-256 PCRs 0-23 with a persistent AK,
//! the report data as extraData, plus the firmware event log when the
//! kernel exposes one. The evidence JSON is what CoCo's TPM attester sends
//! (`report_data`, `tpm_quote{signature,message,pcrs}`, `ak_public`), so a
//! stock trustee reads it too.

use crate::{Attester, AttesterError, InitDataBinding};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cocoon_tpm::{DEFAULT_AK_HANDLE, Tcti, Tpm, extend_sha256};
use cocoon_types::Tee;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Mutex;

/// PCR that holds the initdata digest (CoCo convention).
pub const INITDATA_PCR: u32 = 8;
/// Size of the quote's extraData: report data is zero-padded to it.
pub const REPORT_DATA_SIZE: usize = 64;
/// Where Linux exposes the firmware (TCG) event log.
pub const DEFAULT_EVENT_LOG: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";

/// TPM attester settings.
#[derive(Debug, Clone)]
pub struct TpmAttesterConfig {
    /// Where the TPM is.
    pub tcti: Tcti,
    /// Persistent handle of the AK.
    pub ak_handle: u32,
    /// TCG event log to include, if readable.
    pub event_log: Option<PathBuf>,
}

impl Default for TpmAttesterConfig {
    fn default() -> Self {
        Self {
            tcti: std::env::var("AA_TPM_DEVICE")
                .ok()
                .map(Tcti::Device)
                .unwrap_or_default(),
            ak_handle: std::env::var("AA_TPM_AK_HANDLE")
                .ok()
                .and_then(|h| u32::from_str_radix(h.trim_start_matches("0x"), 16).ok())
                .unwrap_or(DEFAULT_AK_HANDLE),
            event_log: Some(DEFAULT_EVENT_LOG.into()),
        }
    }
}

/// Whether a TPM answers at the configured TCTI.
pub fn detect(cfg: &TpmAttesterConfig) -> bool {
    match &cfg.tcti {
        Tcti::Device(p) => std::path::Path::new(p).exists(),
        Tcti::Swtpm { .. } => Tpm::open(&cfg.tcti).is_ok(),
    }
}

/// The TPM attester. Commands are serialized: the TPM is one device.
pub struct TpmAttester {
    cfg: TpmAttesterConfig,
    lock: Mutex<()>,
}

impl TpmAttester {
    /// An attester for the TPM in `cfg`.
    pub fn new(cfg: TpmAttesterConfig) -> Self {
        Self {
            cfg,
            lock: Mutex::new(()),
        }
    }

    fn with_tpm<T>(
        &self,
        f: impl FnOnce(&mut Tpm) -> Result<T, AttesterError>,
    ) -> Result<T, AttesterError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut tpm = Tpm::open(&self.cfg.tcti)?;
        f(&mut tpm)
    }
}

impl Attester for TpmAttester {
    fn tee(&self) -> Tee {
        Tee::Tpm
    }

    fn evidence(&self, report_data: &[u8]) -> Result<Value, AttesterError> {
        if report_data.len() > REPORT_DATA_SIZE {
            return Err(AttesterError::ReportDataTooLong(report_data.len()));
        }
        let mut rd = report_data.to_vec();
        rd.resize(REPORT_DATA_SIZE, 0);
        let (quote, pcrs, ak) = self.with_tpm(|tpm| {
            let ak = tpm
                .read_public(self.cfg.ak_handle)?
                .ok_or(cocoon_tpm::TpmError::NoAk(self.cfg.ak_handle))?;
            let quote = tpm.quote(self.cfg.ak_handle, &rd)?;
            let pcrs = tpm.pcr_read_sha256()?;
            Ok((quote, pcrs, ak))
        })?;
        let mut ev = json!({
            "report_data": B64.encode(&rd),
            "tpm_quote": {
                "signature": B64.encode(&quote.signature),
                "message": B64.encode(&quote.attest),
                "pcrs": pcrs.iter().map(hex::encode).collect::<Vec<_>>(),
            },
            "ak_public": B64.encode(ak.to_spki_der()?),
        });
        if let Some(log) = self
            .cfg
            .event_log
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
        {
            ev["eventlog"] = Value::String(B64.encode(log));
        }
        Ok(ev)
    }

    fn extend_runtime_measurement(&self, index: u32, digest: &[u8]) -> Result<(), AttesterError> {
        let d: [u8; 32] = digest.try_into().map_err(|_| {
            AttesterError::Device(format!(
                "a SHA-256 PCR extend needs a 32-byte digest, got {}",
                digest.len()
            ))
        })?;
        self.with_tpm(|tpm| Ok(tpm.pcr_extend_sha256(index, &d)?))
    }

    fn bind_init_data(&self, digest: &[u8]) -> Result<InitDataBinding, AttesterError> {
        let d: [u8; 32] = digest.try_into().map_err(|_| {
            AttesterError::InitDataUnbindable(format!(
                "a vTPM binds initdata in SHA-256 PCR {INITDATA_PCR}: the initdata must declare algorithm = \"sha256\" (its digest has {} bytes)",
                digest.len()
            ))
        })?;
        let expected = extend_sha256(&[0; 32], &d);
        self.with_tpm(|tpm| {
            let pcrs = tpm.pcr_read_sha256()?;
            let cur = pcrs[INITDATA_PCR as usize];
            if cur == expected {
                return Ok(InitDataBinding::AlreadyExtended);
            }
            if cur != [0; 32] {
                return Err(AttesterError::InitDataMismatch {
                    expected: hex::encode(expected),
                    found: hex::encode(cur),
                });
            }
            tpm.pcr_extend_sha256(INITDATA_PCR, &d)?;
            Ok(InitDataBinding::Extended)
        })
    }
}
