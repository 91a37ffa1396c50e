//! Intel TDX DCAP quotes, versions 4 and 5, parsed at explicit offsets:
//! the 48-byte header, the TD report body (TD 1.0, 584 bytes; TD 1.5, 648
//! bytes in v5), and the ECDSA signature data with the QE report
//! certification data and the PCK certificate chain.

/// Header length.
pub const HEADER_LEN: usize = 48;
/// TD 1.0 report body length.
pub const TD10_BODY_LEN: usize = 584;
/// TD 1.5 report body length.
pub const TD15_BODY_LEN: usize = 648;
/// An SGX/TDX enclave report (the QE report) length.
pub const ENCLAVE_REPORT_LEN: usize = 384;

/// Why a quote did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed TDX quote at byte {offset}: {reason}")]
pub struct QuoteError {
    offset: usize,
    reason: String,
}

fn err(offset: usize, reason: impl Into<String>) -> QuoteError {
    QuoteError {
        offset,
        reason: reason.into(),
    }
}

/// The quote header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 4 or 5.
    pub version: u16,
    /// 2 = ECDSA P-256.
    pub att_key_type: u16,
    /// 0x81 = TDX.
    pub tee_type: u32,
    /// Reserved (QE/PCE SVN in SGX quotes).
    pub reserved: [u8; 4],
    /// QE vendor id (Intel: 939a7233…).
    pub vendor_id: [u8; 16],
    /// First 16 bytes: the platform identifier, then zero.
    pub user_data: [u8; 20],
}

/// The TD report body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdBody {
    /// TEE_TCB_SVN.
    pub tcb_svn: [u8; 16],
    /// MRSEAM.
    pub mr_seam: [u8; 48],
    /// MRSIGNERSEAM.
    pub mrsigner_seam: [u8; 48],
    /// SEAMATTRIBUTES.
    pub seam_attributes: [u8; 8],
    /// TDATTRIBUTES.
    pub td_attributes: [u8; 8],
    /// XFAM.
    pub xfam: [u8; 8],
    /// MRTD.
    pub mr_td: [u8; 48],
    /// MRCONFIGID (CoCo: the initdata digest).
    pub mr_config_id: [u8; 48],
    /// MROWNER.
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG.
    pub mr_owner_config: [u8; 48],
    /// RTMR0..3.
    pub rtmr: [[u8; 48]; 4],
    /// REPORTDATA.
    pub report_data: [u8; 64],
    /// TD 1.5 only: TEE_TCB_SVN2 and MRSERVICETD.
    pub td15: Option<([u8; 16], [u8; 48])>,
}

/// The QE report certification data (certification data type 6).
#[derive(Debug, Clone)]
pub struct QeCertData {
    /// The QE's enclave report.
    pub qe_report: Vec<u8>,
    /// ECDSA P-256 signature (r‖s) over the QE report by the PCK key.
    pub qe_report_signature: [u8; 64],
    /// QE authentication data.
    pub qe_auth_data: Vec<u8>,
    /// The PCK certificate chain, PEM (certification data type 5).
    pub pck_chain_pem: Vec<u8>,
}

/// A parsed quote.
#[derive(Debug, Clone)]
pub struct TdxQuote {
    /// Header.
    pub header: Header,
    /// TD report body.
    pub body: TdBody,
    /// The bytes the attestation key signed (header and body).
    pub signed: Vec<u8>,
    /// ECDSA P-256 signature (r‖s) by the attestation key.
    pub signature: [u8; 64],
    /// The attestation public key (x‖y).
    pub attestation_key: [u8; 64],
    /// QE report, its signature, auth data and the PCK chain.
    pub qe: QeCertData,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], QuoteError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| err(self.pos, format!("{what}: {n} bytes past the end")))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N], QuoteError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u16(&mut self, what: &str) -> Result<u16, QuoteError> {
        Ok(u16::from_le_bytes(self.arr(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, QuoteError> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
}

fn td_body(r: &mut Reader<'_>, td15: bool) -> Result<TdBody, QuoteError> {
    Ok(TdBody {
        tcb_svn: r.arr("tcb_svn")?,
        mr_seam: r.arr("mr_seam")?,
        mrsigner_seam: r.arr("mrsigner_seam")?,
        seam_attributes: r.arr("seam_attributes")?,
        td_attributes: r.arr("td_attributes")?,
        xfam: r.arr("xfam")?,
        mr_td: r.arr("mr_td")?,
        mr_config_id: r.arr("mr_config_id")?,
        mr_owner: r.arr("mr_owner")?,
        mr_owner_config: r.arr("mr_owner_config")?,
        rtmr: [
            r.arr("rtmr0")?,
            r.arr("rtmr1")?,
            r.arr("rtmr2")?,
            r.arr("rtmr3")?,
        ],
        report_data: r.arr("report_data")?,
        td15: if td15 {
            Some((r.arr("tee_tcb_svn2")?, r.arr("mr_servicetd")?))
        } else {
            None
        },
    })
}

impl TdxQuote {
    /// Parses a v4 or v5 TDX quote with ECDSA P-256 and QE certification data.
    pub fn parse(b: &[u8]) -> Result<Self, QuoteError> {
        let mut r = Reader { b, pos: 0 };
        let header = Header {
            version: r.u16("version")?,
            att_key_type: r.u16("att_key_type")?,
            tee_type: r.u32("tee_type")?,
            reserved: r.arr("reserved")?,
            vendor_id: r.arr("vendor_id")?,
            user_data: r.arr("user_data")?,
        };
        if header.tee_type != 0x81 {
            return Err(err(
                4,
                format!("TEE type {:#x} is not TDX (0x81)", header.tee_type),
            ));
        }
        if header.att_key_type != 2 {
            return Err(err(
                2,
                format!(
                    "attestation key type {} is not ECDSA P-256 (2)",
                    header.att_key_type
                ),
            ));
        }
        let body = match header.version {
            4 => td_body(&mut r, false)?,
            5 => {
                let body_type = r.u16("body type")?;
                let size = r.u32("body size")? as usize;
                let (td15, want) = match body_type {
                    2 => (false, TD10_BODY_LEN),
                    3 => (true, TD15_BODY_LEN),
                    t => {
                        return Err(err(
                            HEADER_LEN,
                            format!("body type {t} is not a TD report (2 or 3)"),
                        ));
                    }
                };
                if size != want {
                    return Err(err(
                        HEADER_LEN + 2,
                        format!("body size {size}, expected {want}"),
                    ));
                }
                td_body(&mut r, td15)?
            }
            v => return Err(err(0, format!("quote version {v} (4 or 5)"))),
        };
        let signed = b[..r.pos].to_vec();
        let sig_len = r.u32("signature data length")? as usize;
        let sig_start = r.pos;
        let signature = r.arr("quote signature")?;
        let attestation_key = r.arr("attestation key")?;
        let cert_type = r.u16("certification data type")?;
        if cert_type != 6 {
            return Err(err(
                r.pos - 2,
                format!("certification data type {cert_type} (6: QE report certification data)"),
            ));
        }
        let cert_size = r.u32("certification data size")? as usize;
        let cert_start = r.pos;
        let qe_report = r.take(ENCLAVE_REPORT_LEN, "QE report")?.to_vec();
        let qe_report_signature = r.arr("QE report signature")?;
        let auth_len = r.u16("QE auth data size")? as usize;
        let qe_auth_data = r.take(auth_len, "QE auth data")?.to_vec();
        let inner_type = r.u16("PCK certification data type")?;
        if inner_type != 5 {
            return Err(err(
                r.pos - 2,
                format!("PCK certification data type {inner_type} (5: PEM chain)"),
            ));
        }
        let inner_size = r.u32("PCK chain size")? as usize;
        let pck_chain_pem = r.take(inner_size, "PCK chain")?.to_vec();
        if r.pos - cert_start != cert_size {
            return Err(err(
                cert_start,
                "certification data size does not match its contents",
            ));
        }
        if r.pos - sig_start != sig_len {
            return Err(err(
                sig_start,
                "signature data length does not match its contents",
            ));
        }
        // Quote buffers from drivers may be zero-padded; anything else is not a quote.
        if b[r.pos..].iter().any(|x| *x != 0) {
            return Err(err(r.pos, "trailing bytes after the quote"));
        }
        Ok(Self {
            header,
            body,
            signed,
            signature,
            attestation_key,
            qe: QeCertData {
                qe_report,
                qe_report_signature,
                qe_auth_data,
                pck_chain_pem,
            },
        })
    }

    /// REPORTDATA of the QE report (offset 320 in an enclave report).
    pub fn qe_report_data(&self) -> &[u8] {
        &self.qe.qe_report[320..384]
    }
}
