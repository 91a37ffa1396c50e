//! Evidence verifiers, one module per TEE, behind one [`Verifier`] trait and
//! registered in one place ([`VerifierRegistry::new`]).
//!
//! A verifier checks the evidence's signature chain (where the TEE has one),
//! that its report data equals the expected session binding exactly, and
//! returns the claims it extracted, typed inside the module and turned into
//! JSON only here, at the policy edge.

pub mod az;
pub mod cca;
pub mod eventlog;
pub mod fetch;
pub mod sample;
pub mod sgx;
pub mod snp;
pub mod tdx;
pub mod tpm;
pub mod x509;

use cocoon_types::Tee;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Why evidence was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The evidence does not parse as this TEE's format.
    #[error("malformed {tee} evidence: {detail}")]
    Malformed {
        /// TEE name.
        tee: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The report data does not carry the session binding (stale nonce,
    /// wrong key, or replayed evidence).
    #[error(
        "report data does not match this session (expected {expected}, evidence has {found}): evidence is stale, replayed, or bound to another key"
    )]
    ReportDataMismatch {
        /// Expected binding, hex.
        expected: String,
        /// Binding found in the evidence, hex.
        found: String,
    },
    /// The init data digest bound in the evidence differs from the one supplied.
    #[error("init data digest does not match the value bound in the evidence")]
    InitDataMismatch,
    /// The evidence binds init data (a non-zero MRCONFIGID, HOSTDATA,
    /// CONFIGID, personalization value or PCR 8) but the guest sent none:
    /// whatever configured the guest is being withheld from the appraisal.
    #[error(
        "{tee} evidence binds initdata ({field} = {value}) but the guest sent none: send the initdata document the VM was started with (\"init-data\" in the Attestation)"
    )]
    InitDataWithheld {
        /// TEE name.
        tee: &'static str,
        /// Which field binds it.
        field: &'static str,
        /// The field's first bytes, hex.
        value: String,
    },
    /// No verifier for this TEE is registered (or it is disabled).
    #[error("{0}")]
    Unavailable(String),
    /// Something the check needs (the trustee's store) cannot be read now:
    /// no verdict, and the guest should retry.
    #[error("the trustee cannot check this evidence right now: {0}")]
    Backend(String),
    /// A signature or integrity check failed.
    #[error("{tee} evidence rejected: {reason}")]
    Invalid {
        /// TEE name.
        tee: &'static str,
        /// Which check failed.
        reason: String,
    },
    /// The evidence is signed by a key the trustee does not trust.
    #[error("{tee} evidence is signed by an untrusted key: {detail}")]
    UntrustedKey {
        /// TEE name.
        tee: &'static str,
        /// Which key and how to trust it.
        detail: String,
    },
}

/// How a key came to be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTrust {
    /// Who vouched for it (`admin`, `ek:<CA>`, …), for the claims.
    pub by: String,
    /// Whether the admin declared the key (or the CA that vouched for it)
    /// to live in hardware. A key an admin registered, or one a software
    /// TPM's EK enrolled, may belong to a TPM emulated by the host, which
    /// proves nothing about the guest.
    pub hardware_backed: bool,
}

/// A set of trusted public keys (for example TPM attestation keys),
/// looked up by DER SubjectPublicKeyInfo.
pub trait TrustedKeys: Send + Sync {
    /// How `spki_der` came to be trusted; `None` when it is not.
    fn trusted_by(&self, spki_der: &[u8]) -> Result<Option<KeyTrust>, String>;
}

/// The TEE class the claims describe; names the EAR submodule (`cpu0`, `gpu0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeeClass {
    /// A confidential VM or enclave.
    Cpu,
    /// An attached device.
    Gpu,
}

impl TeeClass {
    /// `cpu` / `gpu`.
    pub fn as_str(self) -> &'static str {
        match self {
            TeeClass::Cpu => "cpu",
            TeeClass::Gpu => "gpu",
        }
    }
}

/// What a verifier is given.
#[derive(Debug)]
pub struct VerifyInput<'a> {
    /// The evidence JSON as the guest sent it.
    pub evidence: &'a Value,
    /// The exact report data the evidence must carry.
    pub expected_report_data: &'a [u8],
    /// Digest of the init data the guest sent, if any.
    pub init_data_digest: Option<&'a [u8]>,
}

/// Claims extracted from verified evidence.
#[derive(Debug, Clone)]
pub struct TeeClaims {
    /// Which class of TEE.
    pub class: TeeClass,
    /// Claims as JSON, shaped as CoCo's verifier for this TEE shapes them.
    pub claims: Value,
    /// The report data as the verifier emits it (b64 for sample, hex for hardware TEEs).
    pub report_data: String,
    /// The initdata digest the guest sent (hex; b64 for sample), once the
    /// evidence was found to bind it. The same form for every TEE (the
    /// TEE's own field, padded or extended, stays in its claims), so one
    /// reference value `init_data` serves them all.
    pub init_data: Option<String>,
}

/// One TEE's verifier.
pub trait Verifier: Send + Sync {
    /// The TEE it verifies.
    fn tee(&self) -> Tee;
    /// Whether it is a development-only TEE that proves nothing.
    fn development_only(&self) -> bool {
        false
    }
    /// Verifies `input` and extracts claims.
    fn verify(&self, input: &VerifyInput<'_>) -> Result<TeeClaims, VerifyError>;
}

/// Which verifiers to register.
#[derive(Clone, Default)]
pub struct VerifierOptions {
    /// Register development TEEs (`sample`), which accept unsigned evidence.
    pub allow_dev_tee: bool,
    /// TPM attestation keys the `tpm` verifier trusts; without it the `tpm`
    /// TEE is not registered.
    pub tpm_trusted_aks: Option<Arc<dyn TrustedKeys>>,
    /// DCAP collateral (by TEE and FMSPC) the `tdx` and `sgx` verifiers
    /// use when evidence carries none.
    pub dcap_collateral: Option<Arc<tdx::collateral::CollateralSet>>,
    /// Platform attestation keys the `cca` verifier trusts.
    pub cca_cpaks: Option<Arc<cca::Cpaks>>,
    /// Where the `snp` and `az-snp-vtpm` verifiers find VCEKs the evidence
    /// does not carry.
    pub snp_vcek: Option<Arc<snp::VcekSource>>,
}

impl std::fmt::Debug for VerifierOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifierOptions")
            .field("allow_dev_tee", &self.allow_dev_tee)
            .field("tpm", &self.tpm_trusted_aks.is_some())
            .finish()
    }
}

/// The set of verifiers, by TEE.
pub struct VerifierRegistry {
    verifiers: HashMap<Tee, Arc<dyn Verifier>>,
    options: VerifierOptions,
}

impl VerifierRegistry {
    /// Registers every verifier the options allow. Adding a TEE means one
    /// module and one line here.
    pub fn new(options: VerifierOptions) -> Self {
        let mut all: Vec<Arc<dyn Verifier>> = Vec::new();
        if options.allow_dev_tee {
            all.push(Arc::new(sample::SampleVerifier));
        }
        all.push(Arc::new(tdx::TdxVerifier {
            collateral: options.dcap_collateral.clone(),
            ..Default::default()
        }));
        all.push(Arc::new(sgx::SgxVerifier {
            collateral: options.dcap_collateral.clone(),
            ..Default::default()
        }));
        all.push(Arc::new(cca::CcaVerifier {
            cpaks: options.cca_cpaks.clone().unwrap_or_default(),
        }));
        all.push(Arc::new(az::AzTdxVtpmVerifier {
            collateral: options.dcap_collateral.clone(),
            ..Default::default()
        }));
        match snp::SnpVerifier::new() {
            Ok(mut v) => {
                v.vcek_source = options.snp_vcek.clone();
                let v = Arc::new(v);
                all.push(Arc::new(az::AzSnpVtpmVerifier::new(v.clone())));
                all.push(v);
            }
            Err(e) => {
                tracing::error!(error = %e, "the SEV-SNP verifier is disabled: its embedded AMD chain does not verify")
            }
        }
        if let Some(aks) = &options.tpm_trusted_aks {
            all.push(Arc::new(tpm::TpmVerifier::new(aks.clone())));
        }
        let verifiers = all.into_iter().map(|v| (v.tee(), v)).collect();
        Self { verifiers, options }
    }

    /// The verifier for `tee`, or a message saying why there is none.
    pub fn get(&self, tee: Tee) -> Result<&Arc<dyn Verifier>, VerifyError> {
        self.verifiers.get(&tee).ok_or_else(|| {
            let name = cocoon_types::tee_name(tee);
            VerifyError::Unavailable(if matches!(tee, Tee::Sample | Tee::SampleDevice) && !self.options.allow_dev_tee {
                format!("TEE '{name}' is a development TEE and is disabled: start the trustee with --allow-dev-tee to accept it")
            } else {
                format!("TEE '{name}' is not supported by this trustee (supported: {})", self.supported().join(", "))
            })
        })
    }

    /// Names of the registered TEEs.
    pub fn supported(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .verifiers
            .keys()
            .map(|t| cocoon_types::tee_name(*t))
            .collect();
        v.sort();
        v
    }
}

/// Checks the evidence's initdata field against the digest the guest sent:
/// with a digest, `field` must be the digest zero-padded (`padded`) or
/// exactly equal; without one, `field` must be all zeros, since a bound
/// initdata that the guest keeps back would go unappraised.
pub(crate) fn check_init_data_field(
    tee: &'static str,
    name: &'static str,
    field: &[u8],
    input: &VerifyInput<'_>,
    padded: bool,
) -> Result<(), VerifyError> {
    match input.init_data_digest {
        Some(d) => {
            let ok = if padded {
                crate::tdx::padded_equal(field, d)
            } else {
                field == d
            };
            if ok {
                Ok(())
            } else {
                Err(VerifyError::InitDataMismatch)
            }
        }
        None if field.iter().all(|b| *b == 0) => Ok(()),
        None => Err(VerifyError::InitDataWithheld {
            tee,
            field: name,
            value: hex_short(field),
        }),
    }
}

/// `e` with its TEE name replaced by `tee`, for checks shared between TEEs.
pub(crate) fn retag(e: VerifyError, tee: &'static str) -> VerifyError {
    match e {
        VerifyError::Invalid { reason, .. } => VerifyError::Invalid { tee, reason },
        VerifyError::UntrustedKey { detail, .. } => VerifyError::UntrustedKey { tee, detail },
        VerifyError::Malformed { detail, .. } => VerifyError::Malformed { tee, detail },
        VerifyError::InitDataWithheld { field, value, .. } => {
            VerifyError::InitDataWithheld { tee, field, value }
        }
        e => e,
    }
}

/// The current time, Unix seconds.
/// The files a `--flag FILE|DIR` names, read: the file itself, or every
/// file in the directory with one of `exts` (sorted by name).
pub(crate) fn read_file_or_dir(
    path: &std::path::Path,
    exts: &[&str],
) -> Result<Vec<(std::path::PathBuf, Vec<u8>)>, String> {
    let files = if path.is_dir() {
        let mut v: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| exts.iter().any(|e| x == *e)))
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    files
        .into_iter()
        .map(|f| {
            let bytes =
                std::fs::read(&f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
            Ok((f, bytes))
        })
        .collect()
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The first 8 bytes of `b` in hex, for error messages.
pub(crate) fn hex_short(b: &[u8]) -> String {
    let mut s = String::with_capacity(20);
    for x in b.iter().take(8) {
        s.push_str(&format!("{x:02x}"));
    }
    if b.len() > 8 {
        s.push('…');
    }
    s
}
