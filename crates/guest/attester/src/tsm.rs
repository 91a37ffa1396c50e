//! Linux configfs-tsm reports (Linux 6.7+): one interface for TDX quotes and
//! SNP attestation reports. An entry is created under
//! `/sys/kernel/config/tsm/report/`, the report data written to `inblob`,
//! and `outblob` (and for SNP `auxblob`, the certificate table) read back;
//! `generation` detects a concurrent writer between the two.

use crate::AttesterError;
use std::path::{Path, PathBuf};

/// Where configfs-tsm lives.
pub const TSM_REPORT_ROOT: &str = "/sys/kernel/config/tsm/report";

/// A report read through configfs-tsm.
#[derive(Debug)]
pub struct TsmReport {
    /// The provider that produced it (`tdx_guest`, `sev_guest`).
    pub provider: String,
    /// The quote or report.
    pub outblob: Vec<u8>,
    /// Auxiliary data (SNP certificate table), if any.
    pub auxblob: Option<Vec<u8>>,
}

/// Whether configfs-tsm is available under `root`.
pub fn available(root: &Path) -> bool {
    root.is_dir()
}

/// An entry under the report root, removed on drop.
struct Entry(PathBuf);

impl Drop for Entry {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> AttesterError {
    AttesterError::Device(format!(
        "configfs-tsm: cannot {what} {}: {e}",
        path.display()
    ))
}

fn read_generation(dir: &Path) -> Result<u64, AttesterError> {
    let p = dir.join("generation");
    let s = std::fs::read_to_string(&p).map_err(|e| io("read", &p, e))?;
    s.trim()
        .parse()
        .map_err(|_| AttesterError::Device(format!("configfs-tsm: bad generation '{}'", s.trim())))
}

/// Requests a report carrying `inblob` (64 bytes) from the provider named
/// `expected_provider`.
pub fn request(
    root: &Path,
    expected_provider: &str,
    inblob: &[u8; 64],
) -> Result<TsmReport, AttesterError> {
    let name = format!(
        "cocoon-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let dir = root.join(name);
    std::fs::create_dir(&dir).map_err(|e| io("create", &dir, e))?;
    let entry = Entry(dir);
    let dir = &entry.0;
    let provider_path = dir.join("provider");
    let provider = std::fs::read_to_string(&provider_path)
        .map_err(|e| io("read", &provider_path, e))?
        .trim()
        .to_string();
    if provider != expected_provider {
        return Err(AttesterError::Device(format!(
            "configfs-tsm provider is '{provider}', expected '{expected_provider}'"
        )));
    }
    let inblob_path = dir.join("inblob");
    std::fs::write(&inblob_path, inblob).map_err(|e| io("write", &inblob_path, e))?;
    let generation = read_generation(dir)?;
    let out_path = dir.join("outblob");
    let outblob = std::fs::read(&out_path).map_err(|e| io("read", &out_path, e))?;
    let auxblob = std::fs::read(dir.join("auxblob"))
        .ok()
        .filter(|b| !b.is_empty());
    // Another writer changed inblob between our write and read: the report
    // may carry their data, not ours.
    if read_generation(dir)? != generation {
        return Err(AttesterError::Device(
            "configfs-tsm report entry was modified concurrently; retry".into(),
        ));
    }
    Ok(TsmReport {
        provider,
        outblob,
        auxblob,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_without_provider_fails_clearly_and_leaves_no_entry() {
        let root = tempfile::tempdir().unwrap();
        let err = request(root.path(), "tdx_guest", &[0; 64]).unwrap_err();
        assert!(err.to_string().contains("provider"), "{err}");
        // The entry created for the request is removed again.
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
        assert!(!available(&root.path().join("missing")));
    }
}
