//! The `tpm` attester: a quote over SHA-256 PCRs 0-23 with a persistent AK,
//! the report data as extraData, plus the firmware event log when the
//! kernel exposes one. The evidence JSON is what CoCo's TPM attester sends
//! (`report_data`, `tpm_quote{signature,message,pcrs}`, `ak_public`), so a
//! stock trustee reads it too.

use crate::{Attester, AttesterError, InitDataBinding};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cocoon_tpm::{DEFAULT_AK_HANDLE, DEFAULT_EK_HANDLE, KeyAlgorithm, Tcti, Tpm, extend_sha256};
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
    /// Create the AK (RSA 2048, restricted signing) at `ak_handle` when
    /// none is there: a guest whose fresh TPM is enrolled by its EK
    /// certificate. Without it a missing AK is an error (an admin
    /// provisions and trusts it with `cocoon tpm enroll`).
    pub create_ak: bool,
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
            create_ak: false,
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

    /// The AK's public area, created first where the settings allow.
    fn ak(&self, tpm: &mut Tpm) -> Result<cocoon_tpm::Public, AttesterError> {
        if let Some(ak) = tpm.read_public(self.cfg.ak_handle)? {
            return Ok(ak);
        }
        if !self.cfg.create_ak {
            return Err(cocoon_tpm::TpmError::NoAk(self.cfg.ak_handle).into());
        }
        let (ak, _) = tpm.ensure_ak(self.cfg.ak_handle, KeyAlgorithm::Rsa2048)?;
        tracing::info!(handle = %format!("0x{:08x}", self.cfg.ak_handle), "TPM attestation key created");
        Ok(ak)
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
            let ak = self.ak(tpm)?;
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

    fn endorsement(&self) -> Result<Option<crate::Endorsement>, AttesterError> {
        self.with_tpm(|tpm| {
            // A TPM without an EK certificate is trusted by its AK alone.
            if tpm.nv_size(cocoon_tpm::swtpm::EK_CERT_NV_INDEX)?.is_none() {
                return Ok(None);
            }
            let ek_cert = tpm.nv_read(cocoon_tpm::swtpm::EK_CERT_NV_INDEX)?;
            tpm.ensure_ek(DEFAULT_EK_HANDLE)?;
            self.ak(tpm)?;
            let ak_public = tpm
                .read_public_bytes(self.cfg.ak_handle)?
                .ok_or(cocoon_tpm::TpmError::NoAk(self.cfg.ak_handle))?;
            Ok(Some(crate::Endorsement { ek_cert, ak_public }))
        })
    }

    fn activate_credential(
        &self,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, AttesterError> {
        self.with_tpm(|tpm| {
            Ok(zeroize::Zeroizing::new(tpm.activate_credential(
                self.cfg.ak_handle,
                DEFAULT_EK_HANDLE,
                id_object,
                encrypted_secret,
            )?))
        })
    }
}
