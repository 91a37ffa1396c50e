//! Guest attesters: produce TEE evidence whose report data carries the KBS
//! session binding. One [`Attester`] per TEE; [`attester_for`] picks one.

use base64::Engine;
use cocoon_types::Tee;
use serde_json::{Value, json};

/// Attester errors.
#[derive(Debug, thiserror::Error)]
pub enum AttesterError {
    /// No attester exists for the requested TEE on this build.
    #[error("no attester for TEE '{0}' (available: sample)")]
    Unsupported(String),
    /// Report data does not fit the TEE's field.
    #[error("report data of {0} bytes does not fit the TEE report field")]
    ReportDataTooLong(usize),
}

/// Produces evidence for one TEE.
pub trait Attester: Send + Sync {
    /// The TEE this attester speaks for.
    fn tee(&self) -> Tee;
    /// Evidence carrying `report_data`.
    fn evidence(&self, report_data: &[u8]) -> Result<Value, AttesterError>;
}

/// The development `sample` TEE: unsigned JSON with the report data in base64.
pub struct SampleAttester;

impl Attester for SampleAttester {
    fn tee(&self) -> Tee {
        Tee::Sample
    }

    fn evidence(&self, report_data: &[u8]) -> Result<Value, AttesterError> {
        if report_data.len() > 64 {
            return Err(AttesterError::ReportDataTooLong(report_data.len()));
        }
        Ok(json!({
            "svn": "1",
            "report_data": base64::engine::general_purpose::STANDARD.encode(report_data),
        }))
    }
}

/// The attester for a TEE name.
pub fn attester_for(tee: &str) -> Result<Box<dyn Attester>, AttesterError> {
    match tee {
        "sample" => Ok(Box::new(SampleAttester)),
        other => Err(AttesterError::Unsupported(other.to_string())),
    }
}
