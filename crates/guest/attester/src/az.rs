//! Azure confidential VMs (`az-snp-vtpm`, `az-tdx-vtpm`): the paravisor's
//! vTPM quotes the PCRs with its AK (persistent handle 0x81000003) and
//! keeps the HCL report (the SNP report or TD report whose REPORT_DATA
//! binds the vTPM AK) in NV index 0x01400001. SNP evidence adds the VCEK
//! from the instance metadata service (IMDS); TDX evidence adds a TD quote
//! IMDS produces from the TD report. Evidence is shaped as CoCo's Azure
//! attesters shape it (hex quote fields, base64url blobs).

use crate::tpm::{TpmAttester, TpmAttesterConfig};
use crate::{Attester, AttesterError, InitDataBinding};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE as B64URL;
use cocoon_tpm::{Signature, Tcti, Tpm};
use cocoon_types::Tee;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::time::Duration;

/// NV index of the HCL report.
pub const HCL_REPORT_NV_INDEX: u32 = 0x0140_0001;
/// Persistent handle of the Azure vTPM AK.
pub const AZURE_AK_HANDLE: u32 = 0x8100_0003;
/// Where the hardware report starts in the HCL report (after its 32-byte header).
pub const HW_REPORT_OFFSET: usize = 32;
/// TDREPORT size.
const TD_REPORT_LEN: usize = 1024;
/// REPORTTYPE.type of a TDX TDREPORT.
const TDX_REPORT_TYPE: u8 = 0x81;
/// The instance metadata service.
pub const IMDS: &str = "169.254.169.254:80";

/// Which Azure CVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AzKind {
    /// SEV-SNP.
    Snp,
    /// TDX.
    Tdx,
}

/// The hardware kind the HCL report carries, from its report type byte.
pub fn hcl_kind(hcl: &[u8]) -> Result<AzKind, AttesterError> {
    if hcl.len() < HW_REPORT_OFFSET + TD_REPORT_LEN || &hcl[..4] != b"HCLA" {
        return Err(AttesterError::Device("not an HCL report".into()));
    }
    Ok(if hcl[HW_REPORT_OFFSET] == TDX_REPORT_TYPE {
        AzKind::Tdx
    } else {
        AzKind::Snp
    })
}

/// Probes for an Azure CVM: a vTPM holding an HCL report.
pub fn detect(tcti: &Tcti) -> Option<AzKind> {
    let mut tpm = Tpm::open(tcti).ok()?;
    tpm.nv_size(HCL_REPORT_NV_INDEX).ok()??;
    hcl_kind(&tpm.nv_read(HCL_REPORT_NV_INDEX).ok()?).ok()
}

/// A minimal HTTP/1.0 exchange with IMDS (plain HTTP on a link-local
/// address, reachable only from inside the VM).
pub fn imds_request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Vec<u8>, AttesterError> {
    let err = |e: String| AttesterError::Device(format!("Azure IMDS {path}: {e}"));
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| err(e.to_string()))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: 169.254.169.254\r\nMetadata: true\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .map_err(|e| err(e.to_string()))?;
    let mut resp = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut resp)
        .map_err(|e| err(e.to_string()))?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| err("malformed HTTP response".into()))?;
    let status = String::from_utf8_lossy(&resp[..split]);
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        return Err(err(format!("HTTP status {code}")));
    }
    Ok(resp[split + 4..].to_vec())
}

/// An Azure vTPM attester.
pub struct AzVtpmAttester {
    kind: AzKind,
    tcti: Tcti,
    imds: String,
    /// PCR extends and initdata binding work as on any TPM.
    tpm: TpmAttester,
}

impl AzVtpmAttester {
    /// An attester for `kind` on the vTPM at `cfg.tcti`.
    pub fn new(kind: AzKind, cfg: TpmAttesterConfig) -> Self {
        Self {
            kind,
            tcti: cfg.tcti.clone(),
            imds: IMDS.into(),
            tpm: TpmAttester::new(cfg),
        }
    }

    fn vcek_der(&self) -> Result<Vec<u8>, AttesterError> {
        let body = imds_request(&self.imds, "GET", "/metadata/THIM/amd/certification", None)?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| AttesterError::Device(format!("IMDS certification: {e}")))?;
        let pem = v["vcekCert"]
            .as_str()
            .ok_or_else(|| AttesterError::Device("IMDS certification has no vcekCert".into()))?;
        let mut rd = pem.as_bytes();
        match rustls_pemfile::read_one(&mut rd) {
            Ok(Some(rustls_pemfile::Item::X509Certificate(c))) => Ok(c.to_vec()),
            _ => Err(AttesterError::Device(
                "IMDS vcekCert is not a PEM certificate".into(),
            )),
        }
    }

    fn td_quote(&self, hcl: &[u8]) -> Result<Vec<u8>, AttesterError> {
        let report = &hcl[HW_REPORT_OFFSET..HW_REPORT_OFFSET + TD_REPORT_LEN];
        let req =
            json!({"report": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(report)});
        let body = imds_request(
            &self.imds,
            "POST",
            "/acc/tdquote",
            Some(req.to_string().as_bytes()),
        )?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| AttesterError::Device(format!("IMDS tdquote: {e}")))?;
        let q = v["quote"]
            .as_str()
            .ok_or_else(|| AttesterError::Device("IMDS tdquote has no quote".into()))?;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(q.trim_end_matches('='))
            .map_err(|_| AttesterError::Device("IMDS quote is not base64url".into()))
    }
}

impl Attester for AzVtpmAttester {
    fn tee(&self) -> Tee {
        match self.kind {
            AzKind::Snp => Tee::AzSnpVtpm,
            AzKind::Tdx => Tee::AzTdxVtpm,
        }
    }

    fn evidence(&self, report_data: &[u8]) -> Result<Value, AttesterError> {
        if report_data.len() > cocoon_tpm::structs::MAX_DIGEST {
            return Err(AttesterError::ReportDataTooLong(report_data.len()));
        }
        let (hcl, quote, pcrs) = {
            let mut tpm = Tpm::open(&self.tcti)?;
            let hcl = tpm.nv_read(HCL_REPORT_NV_INDEX)?;
            let quote = tpm.quote(AZURE_AK_HANDLE, report_data)?;
            (hcl, quote, tpm.pcr_read_sha256()?)
        };
        let Signature::RsaSsa { sig, .. } = Signature::parse(&quote.signature)? else {
            return Err(AttesterError::Device(
                "the Azure vTPM AK did not sign with RSASSA".into(),
            ));
        };
        let tpm_quote = json!({
            "signature": hex::encode(sig),
            "message": hex::encode(&quote.attest),
            "pcrs": pcrs.iter().map(hex::encode).collect::<Vec<_>>(),
        });
        let mut ev =
            json!({"version": 1, "tpm_quote": tpm_quote, "hcl_report": B64URL.encode(&hcl)});
        match self.kind {
            AzKind::Snp => ev["vcek"] = Value::String(B64URL.encode(self.vcek_der()?)),
            AzKind::Tdx => ev["td_quote"] = Value::String(B64URL.encode(self.td_quote(&hcl)?)),
        }
        Ok(ev)
    }

    fn extend_runtime_measurement(&self, index: u32, digest: &[u8]) -> Result<(), AttesterError> {
        self.tpm.extend_runtime_measurement(index, digest)
    }

    fn bind_init_data(&self, digest: &[u8]) -> Result<InitDataBinding, AttesterError> {
        self.tpm.bind_init_data(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_hcl(dir: &str) -> Vec<u8> {
        let v: Value = serde_json::from_str(&cocoon_fixtures::read_to_string(&format!(
            "{dir}/trustee_evidence_v1.json"
        )))
        .unwrap();
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v["hcl_report"].as_str().unwrap().trim_end_matches('='))
            .unwrap()
    }

    #[test]
    fn real_hcl_reports_are_recognized() {
        assert_eq!(hcl_kind(&fixture_hcl("az-tdx-vtpm")).unwrap(), AzKind::Tdx);
        assert_eq!(hcl_kind(&fixture_hcl("az-snp-vtpm")).unwrap(), AzKind::Snp);
        assert!(hcl_kind(b"HCLA").is_err());
    }

    #[test]
    fn imds_client_reads_bodies_and_refuses_errors() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            for reply in [
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"quote\":\"AAEC\"}",
                "HTTP/1.1 404 Not Found\r\n\r\nnope",
            ] {
                let (mut s, _) = l.accept().unwrap();
                // The whole request, body included: closing with unread
                // bytes would reset the connection before the reply is read.
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    let n = s.read(&mut buf).unwrap();
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        if req.len() >= end + 4 + len || n == 0 {
                            break;
                        }
                    } else if n == 0 {
                        break;
                    }
                }
                assert!(String::from_utf8_lossy(&req).contains("Metadata: true"));
                s.write_all(reply.as_bytes()).unwrap();
            }
        });
        let body = imds_request(&addr, "POST", "/acc/tdquote", Some(b"{}")).unwrap();
        assert_eq!(body, b"{\"quote\":\"AAEC\"}");
        let err = imds_request(&addr, "GET", "/metadata/THIM/amd/certification", None).unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
        server.join().unwrap();
    }
}
