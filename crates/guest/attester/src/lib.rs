//! Guest attesters: produce TEE evidence whose report data carries the KBS
//! session binding, extend runtime measurements, and bind initdata. One
//! [`Attester`] per TEE, one module each; [`attester_for`] builds one by
//! name and [`detect`] picks the one this platform supports.

pub mod az;
pub mod sample;
pub mod snp;
pub mod tdx;
pub mod tpm;
pub mod tsm;

use cocoon_types::Tee;
use serde_json::Value;

pub use sample::SampleAttester;
pub use snp::SnpAttester;
pub use tdx::TdxAttester;
pub use tpm::{TpmAttester, TpmAttesterConfig};

/// Attester errors.
#[derive(Debug, thiserror::Error)]
pub enum AttesterError {
    /// No attester exists for the requested TEE on this build.
    #[error(
        "no attester for TEE '{0}' (available: tdx, snp, az-snp-vtpm, az-tdx-vtpm, tpm, sample)"
    )]
    Unsupported(String),
    /// This platform has none of the TEE interfaces an attester needs.
    #[error("no TEE found on this platform (looked for: {0}); pass --tee sample for development")]
    NoPlatform(String),
    /// Report data does not fit the TEE's field.
    #[error("report data of {0} bytes does not fit the TEE report field")]
    ReportDataTooLong(usize),
    /// The TEE does not support the operation.
    #[error("{0} is not supported by the {1} attester")]
    NotSupported(&'static str, &'static str),
    /// The initdata digest differs from the value the TEE has bound.
    #[error(
        "the TEE binds other initdata (expected {expected}, found {found}): the host launched this guest with different initdata"
    )]
    InitDataMismatch {
        /// Digest of the initdata given to the agent, hex.
        expected: String,
        /// Value in the TEE, hex.
        found: String,
    },
    /// The initdata digest cannot be bound by this TEE (wrong algorithm).
    #[error("{0}")]
    InitDataUnbindable(String),
    /// The TPM failed.
    #[error("TPM: {0}")]
    Tpm(#[from] cocoon_tpm::TpmError),
    /// The TEE device failed.
    #[error("{0}")]
    Device(String),
}

/// How initdata ended up bound to the evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitDataBinding {
    /// The hardware field (MRCONFIGID, HOSTDATA) already holds the digest.
    Checked,
    /// The digest was extended into a measurement register (vTPM PCR 8).
    Extended,
    /// The register already holds exactly this digest (agent restart).
    AlreadyExtended,
    /// The TEE cannot bind initdata (development TEEs).
    Unbound,
}

/// Produces evidence for one TEE.
pub trait Attester: Send + Sync {
    /// The TEE this attester speaks for.
    fn tee(&self) -> Tee;
    /// Evidence carrying `report_data`.
    fn evidence(&self, report_data: &[u8]) -> Result<Value, AttesterError>;
    /// Whether `evidence` may block on a device or the network (callers
    /// then run it on a blocking thread).
    fn may_block(&self) -> bool {
        true
    }
    /// Extends measurement register `index` with `digest` (runtime measurement).
    fn extend_runtime_measurement(&self, _index: u32, _digest: &[u8]) -> Result<(), AttesterError> {
        Err(AttesterError::NotSupported(
            "runtime measurement",
            tee_label(self.tee()),
        ))
    }
    /// Checks (or, for vTPMs, establishes) that the TEE binds `digest`, the
    /// initdata digest computed with the initdata's own algorithm.
    fn bind_init_data(&self, _digest: &[u8]) -> Result<InitDataBinding, AttesterError> {
        Ok(InitDataBinding::Unbound)
    }
    /// The endorsement identity a trustee can enroll this TEE's signing key
    /// by (a TPM with an EK certificate), or `None`: the key is then trusted
    /// only when an admin added it.
    fn endorsement(&self) -> Result<Option<Endorsement>, AttesterError> {
        Ok(None)
    }
    /// Answers a trustee's credential-activation challenge for the key of
    /// [`Attester::endorsement`]: the secret only that TPM can recover.
    fn activate_credential(
        &self,
        _id_object: &[u8],
        _encrypted_secret: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, AttesterError> {
        Err(AttesterError::NotSupported(
            "credential activation",
            tee_label(self.tee()),
        ))
    }
}

/// What a trustee enrolls a TPM's attestation key by: the EK certificate
/// (DER, as the manufacturer wrote it to NV) and the AK's public area.
#[derive(Debug, Clone)]
pub struct Endorsement {
    /// EK certificate, DER.
    pub ek_cert: Vec<u8>,
    /// The AK's TPMT_PUBLIC (what its name hashes).
    pub ak_public: Vec<u8>,
}

fn tee_label(tee: Tee) -> &'static str {
    match tee {
        Tee::Sample => "sample",
        Tee::Tpm => "tpm",
        Tee::Tdx => "tdx",
        Tee::Snp => "snp",
        Tee::AzSnpVtpm => "az-snp-vtpm",
        Tee::AzTdxVtpm => "az-tdx-vtpm",
        _ => "this",
    }
}

/// Options for building attesters.
#[derive(Debug, Clone, Default)]
pub struct AttesterOptions {
    /// TPM settings for `tpm`.
    pub tpm: TpmAttesterConfig,
}

/// The attester for a TEE name.
pub fn attester_for(tee: &str, opts: &AttesterOptions) -> Result<Box<dyn Attester>, AttesterError> {
    match tee {
        "sample" => Ok(Box::new(SampleAttester)),
        "tpm" => Ok(Box::new(TpmAttester::new(opts.tpm.clone()))),
        "tdx" => Ok(Box::new(TdxAttester::default())),
        "snp" => Ok(Box::new(SnpAttester::default())),
        "az-snp-vtpm" => Ok(Box::new(az::AzVtpmAttester::new(
            az::AzKind::Snp,
            opts.tpm.clone(),
        ))),
        "az-tdx-vtpm" => Ok(Box::new(az::AzVtpmAttester::new(
            az::AzKind::Tdx,
            opts.tpm.clone(),
        ))),
        other => Err(AttesterError::Unsupported(other.to_string())),
    }
}

/// Probes the platform and returns the attester for the TEE found, in order
/// of preference: hardware TEEs first, then a TPM. `sample` is never chosen
/// by probing.
pub fn detect(opts: &AttesterOptions) -> Result<Box<dyn Attester>, AttesterError> {
    // An Azure CVM's guest sees a vTPM, not the TEE device: look for the
    // paravisor's HCL report first.
    if let Some(kind) = az::detect(&opts.tpm.tcti) {
        return Ok(Box::new(az::AzVtpmAttester::new(kind, opts.tpm.clone())));
    }
    if tdx::detect() {
        return attester_for("tdx", opts);
    }
    if snp::detect() {
        return attester_for("snp", opts);
    }
    if tpm::detect(&opts.tpm) {
        return attester_for("tpm", opts);
    }
    Err(AttesterError::NoPlatform(format!(
        "{} (tdx), {} (snp), a TPM at {}",
        tdx::TDX_GUEST_DEVICE,
        snp::SEV_GUEST_DEVICE,
        opts.tpm.tcti
    )))
}
