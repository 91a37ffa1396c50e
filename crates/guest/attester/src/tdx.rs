//! The `tdx` attester: a TD quote from configfs-tsm with the report data,
//! plus the CC event log (CCEL) when the firmware publishes it. Evidence is
//! CoCo's: `{"cc_eventlog": b64 | null, "quote": b64}`. Initdata is checked
//! against MRCONFIGID in the TDREPORT (from `/dev/tdx_guest`).

use crate::{Attester, AttesterError, InitDataBinding, tsm};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cocoon_types::Tee;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// The CC event log ACPI table data.
pub const CCEL_PATH: &str = "/sys/firmware/acpi/tables/data/CCEL";
/// The TDX guest device.
pub const TDX_GUEST_DEVICE: &str = "/dev/tdx_guest";
/// TDREPORT size.
const TDREPORT_LEN: usize = 1024;
/// MRCONFIGID in TDREPORT_STRUCT: TDINFO starts at 512 (after the 256-byte
/// REPORTMACSTRUCT, 239-byte TEE_TCB_INFO and 17 reserved bytes), then
/// ATTRIBUTES (8), XFAM (8), MRTD (48).
const MRCONFIGID_OFFSET: usize = 512 + 8 + 8 + 48;

/// Whether this is a TD.
pub fn detect() -> bool {
    Path::new(TDX_GUEST_DEVICE).exists()
}

/// The TDX attester.
pub struct TdxAttester {
    tsm_root: PathBuf,
}

impl Default for TdxAttester {
    fn default() -> Self {
        Self {
            tsm_root: tsm::TSM_REPORT_ROOT.into(),
        }
    }
}

// struct tdx_report_req { __u8 reportdata[64]; __u8 tdreport[1024]; }
#[repr(C)]
struct TdxReportReq {
    reportdata: [u8; 64],
    tdreport: [u8; TDREPORT_LEN],
}

/// TDX_CMD_GET_REPORT0 = _IOWR('T', 1, struct tdx_report_req).
const TDX_CMD_GET_REPORT0: libc::c_ulong = (3 << 30)
    | ((std::mem::size_of::<TdxReportReq>() as libc::c_ulong) << 16)
    | ((b'T' as libc::c_ulong) << 8)
    | 1;

/// A TDREPORT for `report_data` from the TDX guest device.
fn tdreport(report_data: [u8; 64]) -> Result<[u8; TDREPORT_LEN], AttesterError> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(TDX_GUEST_DEVICE)
        .map_err(|e| AttesterError::Device(format!("cannot open {TDX_GUEST_DEVICE}: {e}")))?;
    let mut req = TdxReportReq {
        reportdata: report_data,
        tdreport: [0; TDREPORT_LEN],
    };
    // SAFETY: `req` is a live, exclusively borrowed struct with the exact
    // layout the kernel's TDX_CMD_GET_REPORT0 expects; the fd is open for
    // the whole call.
    let rc = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            TDX_CMD_GET_REPORT0,
            &mut req as *mut TdxReportReq,
        )
    };
    if rc != 0 {
        return Err(AttesterError::Device(format!(
            "TDX_CMD_GET_REPORT0 failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(req.tdreport)
}

impl Attester for TdxAttester {
    fn tee(&self) -> Tee {
        Tee::Tdx
    }

    fn evidence(&self, report_data: &[u8]) -> Result<Value, AttesterError> {
        let rd = pad64(report_data)?;
        if !tsm::available(&self.tsm_root) {
            return Err(AttesterError::Device(format!(
                "no configfs-tsm at {}: a TD quote needs Linux 6.7+ with configfs mounted (mount -t configfs none /sys/kernel/config) and a quote generation service on the host",
                self.tsm_root.display()
            )));
        }
        let report = tsm::request(&self.tsm_root, "tdx_guest", &rd)?;
        let cc_eventlog = std::fs::read(CCEL_PATH).ok().map(|b| B64.encode(b));
        Ok(json!({"cc_eventlog": cc_eventlog, "quote": B64.encode(report.outblob)}))
    }

    fn bind_init_data(&self, digest: &[u8]) -> Result<InitDataBinding, AttesterError> {
        let expected = fit(digest, 48)?;
        let report = tdreport([0; 64])?;
        let found = &report[MRCONFIGID_OFFSET..MRCONFIGID_OFFSET + 48];
        if found != expected.as_slice() {
            return Err(AttesterError::InitDataMismatch {
                expected: hex::encode(&expected),
                found: hex::encode(found),
            });
        }
        Ok(InitDataBinding::Checked)
    }
}

/// Report data zero-padded to the 64-byte field.
pub(crate) fn pad64(report_data: &[u8]) -> Result<[u8; 64], AttesterError> {
    if report_data.len() > 64 {
        return Err(AttesterError::ReportDataTooLong(report_data.len()));
    }
    let mut rd = [0u8; 64];
    rd[..report_data.len()].copy_from_slice(report_data);
    Ok(rd)
}

/// An initdata digest placed in a `len`-byte field: zero-padded when
/// shorter (sha256 in MRCONFIGID), refused when longer.
pub(crate) fn fit(digest: &[u8], len: usize) -> Result<Vec<u8>, AttesterError> {
    if digest.len() > len {
        return Err(AttesterError::InitDataUnbindable(format!(
            "an initdata digest of {} bytes does not fit the {len}-byte field: use a shorter algorithm",
            digest.len()
        )));
    }
    let mut v = digest.to_vec();
    v.resize(len, 0);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_number_matches_the_kernel_header() {
        // _IOWR('T', 1, 1088 bytes)
        assert_eq!(TDX_CMD_GET_REPORT0, 0xc440_5401);
        assert_eq!(MRCONFIGID_OFFSET, 576);
    }

    #[test]
    fn report_data_and_initdata_fitting() {
        assert_eq!(pad64(&[1; 48]).unwrap()[47..49], [1, 0]);
        assert!(pad64(&[1; 65]).is_err());
        assert_eq!(fit(&[2; 32], 48).unwrap().len(), 48);
        assert!(matches!(
            fit(&[2; 64], 48),
            Err(AttesterError::InitDataUnbindable(_))
        ));
    }

    #[test]
    fn missing_configfs_is_a_clear_error() {
        let a = TdxAttester {
            tsm_root: "/nonexistent/tsm/report".into(),
        };
        let err = a.evidence(&[0; 48]).unwrap_err().to_string();
        assert!(err.contains("configfs-tsm"), "{err}");
    }
}
