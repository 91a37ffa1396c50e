//! Intel DCAP quotes parsed at explicit offsets: the 48-byte header, the
//! body, and the ECDSA signature data with the QE report certification data
//! and the PCK certificate chain. TDX quotes are versions 4 and 5 with a TD
//! report body (TD 1.0, 584 bytes; TD 1.5, 648 bytes in v5); SGX quotes are
//! versions 3 and 4 with a 384-byte enclave report body. The signature data
//! of a v3 quote carries the QE report directly; v4 and v5 wrap it in
//! certification data of type 6.

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
#[error("malformed {tee} quote at byte {offset}: {reason}")]
pub struct QuoteError {
    tee: &'static str,
    offset: usize,
    reason: String,
}

fn err(offset: usize, reason: impl Into<String>) -> QuoteError {
    QuoteError {
        tee: "DCAP",
        offset,
        reason: reason.into(),
    }
}

/// The quote header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 3 (SGX), 4 or 5.
    pub version: u16,
    /// 2 = ECDSA P-256.
    pub att_key_type: u16,
    /// 0x81 = TDX, 0 = SGX (`att_key_data_0` in v3).
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

/// An SGX enclave report: the body of an SGX quote, and the QE report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnclaveReport {
    /// CPUSVN.
    pub cpu_svn: [u8; 16],
    /// MISCSELECT.
    pub misc_select: [u8; 4],
    /// Reserved.
    pub reserved1: [u8; 12],
    /// ISVEXTPRODID.
    pub isv_ext_prod_id: [u8; 16],
    /// ATTRIBUTES.FLAGS.
    pub attributes_flags: [u8; 8],
    /// ATTRIBUTES.XFRM.
    pub attributes_xfrm: [u8; 8],
    /// MRENCLAVE.
    pub mr_enclave: [u8; 32],
    /// Reserved.
    pub reserved2: [u8; 32],
    /// MRSIGNER.
    pub mr_signer: [u8; 32],
    /// Reserved.
    pub reserved3: [u8; 32],
    /// CONFIGID (CoCo: the initdata digest).
    pub config_id: [u8; 64],
    /// ISVPRODID.
    pub isv_prod_id: [u8; 2],
    /// ISVSVN.
    pub isv_svn: [u8; 2],
    /// CONFIGSVN.
    pub config_svn: [u8; 2],
    /// Reserved.
    pub reserved4: [u8; 42],
    /// ISVFAMILYID.
    pub isv_family_id: [u8; 16],
    /// REPORTDATA.
    pub report_data: [u8; 64],
}

/// What differs between TDX and SGX quotes: the body and its TEE type.
pub trait QuoteBody: Sized + Clone + std::fmt::Debug {
    /// `tdx` or `sgx`, for messages.
    const NAME: &'static str;
    /// The header's TEE type.
    const TEE_TYPE: u32;
    /// The `id` of the TCB info that judges this TEE (`TDX`, `SGX`).
    const TCB_INFO_ID: &'static str;
    /// The `id` of the QE identity for this TEE's quoting enclave (`TD_QE`, `QE`).
    const QE_IDENTITY_ID: &'static str;
    /// ISVPRODID of Intel's quoting enclave for this TEE (TD QE 2, QE3 1).
    const QE_PROD_ID: u16;
    /// MRSIGNER of Intel's quoting enclave for this TEE (as in Intel's QE
    /// identity documents).
    const QE_MRSIGNER: [u8; 32];
    /// Reads the body of a version-`version` quote.
    fn read(r: &mut Reader<'_>, version: u16) -> Result<Self, QuoteError>;
    /// TDX: TEE_TCB_SVN, judged against the TCB info's TDX components.
    fn tee_tcb_svn(&self) -> Option<&[u8; 16]>;
    /// TDX: MRSIGNERSEAM and SEAMATTRIBUTES, judged against the TCB info's
    /// module identity.
    fn seam(&self) -> Option<(&[u8; 48], &[u8; 8])>;
}

/// A parsed quote.
#[derive(Debug, Clone)]
pub struct Quote<B> {
    /// Header.
    pub header: Header,
    /// TD report body (TDX) or enclave report (SGX).
    pub body: B,
    /// The bytes the attestation key signed (header and body).
    pub signed: Vec<u8>,
    /// ECDSA P-256 signature (r‖s) by the attestation key.
    pub signature: [u8; 64],
    /// The attestation public key (x‖y).
    pub attestation_key: [u8; 64],
    /// QE report, its signature, auth data and the PCK chain.
    pub qe: QeCertData,
}

/// A TDX quote.
pub type TdxQuote = Quote<TdBody>;
/// An SGX quote.
pub type SgxQuote = Quote<EnclaveReport>;

/// A cursor over quote bytes.
pub struct Reader<'a> {
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

impl QuoteBody for TdBody {
    const NAME: &'static str = "TDX";
    const TEE_TYPE: u32 = 0x81;
    const TCB_INFO_ID: &'static str = "TDX";
    const QE_IDENTITY_ID: &'static str = "TD_QE";
    const QE_PROD_ID: u16 = 2;
    const QE_MRSIGNER: [u8; 32] = [
        0xdc, 0x9e, 0x2a, 0x7c, 0x6f, 0x94, 0x8f, 0x17, 0x47, 0x4e, 0x34, 0xa7, 0xfc, 0x43, 0xed,
        0x03, 0x0f, 0x7c, 0x15, 0x63, 0xf1, 0xba, 0xbd, 0xdf, 0x63, 0x40, 0xc8, 0x2e, 0x0e, 0x54,
        0xa8, 0xc5,
    ];

    fn read(r: &mut Reader<'_>, version: u16) -> Result<Self, QuoteError> {
        match version {
            4 => td_body(r, false),
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
                td_body(r, td15)
            }
            v => Err(err(0, format!("TDX quote version {v} (4 or 5)"))),
        }
    }

    fn tee_tcb_svn(&self) -> Option<&[u8; 16]> {
        Some(&self.tcb_svn)
    }

    fn seam(&self) -> Option<(&[u8; 48], &[u8; 8])> {
        Some((&self.mrsigner_seam, &self.seam_attributes))
    }
}

impl QuoteBody for EnclaveReport {
    const NAME: &'static str = "SGX";
    const TEE_TYPE: u32 = 0;
    const TCB_INFO_ID: &'static str = "SGX";
    const QE_IDENTITY_ID: &'static str = "QE";
    const QE_PROD_ID: u16 = 1;
    const QE_MRSIGNER: [u8; 32] = [
        0x8c, 0x4f, 0x57, 0x75, 0xd7, 0x96, 0x50, 0x3e, 0x96, 0x13, 0x7f, 0x77, 0xc6, 0x8a, 0x82,
        0x9a, 0x00, 0x56, 0xac, 0x8d, 0xed, 0x70, 0x14, 0x0b, 0x08, 0x1b, 0x09, 0x44, 0x90, 0xc5,
        0x7b, 0xff,
    ];

    fn read(r: &mut Reader<'_>, version: u16) -> Result<Self, QuoteError> {
        if !matches!(version, 3 | 4) {
            return Err(err(0, format!("SGX quote version {version} (3 or 4)")));
        }
        Self::read_report(r)
    }

    fn tee_tcb_svn(&self) -> Option<&[u8; 16]> {
        None
    }

    fn seam(&self) -> Option<(&[u8; 48], &[u8; 8])> {
        None
    }
}

impl EnclaveReport {
    /// Reads a 384-byte enclave report.
    pub fn parse(b: &[u8]) -> Result<Self, QuoteError> {
        if b.len() != ENCLAVE_REPORT_LEN {
            return Err(err(
                0,
                format!("enclave report of {} bytes, expected 384", b.len()),
            ));
        }
        Self::read_report(&mut Reader { b, pos: 0 })
    }

    fn read_report(r: &mut Reader<'_>) -> Result<Self, QuoteError> {
        Ok(Self {
            cpu_svn: r.arr("cpu_svn")?,
            misc_select: r.arr("misc_select")?,
            reserved1: r.arr("reserved1")?,
            isv_ext_prod_id: r.arr("isv_ext_prod_id")?,
            attributes_flags: r.arr("attributes.flags")?,
            attributes_xfrm: r.arr("attributes.xfrm")?,
            mr_enclave: r.arr("mr_enclave")?,
            reserved2: r.arr("reserved2")?,
            mr_signer: r.arr("mr_signer")?,
            reserved3: r.arr("reserved3")?,
            config_id: r.arr("config_id")?,
            isv_prod_id: r.arr("isv_prod_id")?,
            isv_svn: r.arr("isv_svn")?,
            config_svn: r.arr("config_svn")?,
            reserved4: r.arr("reserved4")?,
            isv_family_id: r.arr("isv_family_id")?,
            report_data: r.arr("report_data")?,
        })
    }
}

impl<B: QuoteBody> Quote<B> {
    /// Parses a quote with ECDSA P-256 and QE certification data.
    pub fn parse(b: &[u8]) -> Result<Self, QuoteError> {
        Self::parse_inner(b).map_err(|mut e| {
            e.tee = B::NAME;
            e
        })
    }

    fn parse_inner(b: &[u8]) -> Result<Self, QuoteError> {
        let mut r = Reader { b, pos: 0 };
        let header = Header {
            version: r.u16("version")?,
            att_key_type: r.u16("att_key_type")?,
            tee_type: r.u32("tee_type")?,
            reserved: r.arr("reserved")?,
            vendor_id: r.arr("vendor_id")?,
            user_data: r.arr("user_data")?,
        };
        if header.tee_type != B::TEE_TYPE {
            let named = match header.tee_type {
                0 => " (SGX)",
                0x81 => " (TDX)",
                _ => "",
            };
            return Err(err(
                4,
                format!(
                    "TEE type {:#x}{named} is not {} ({:#x})",
                    header.tee_type,
                    B::NAME,
                    B::TEE_TYPE
                ),
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
        let body = B::read(&mut r, header.version)?;
        let signed = b[..r.pos].to_vec();
        let sig_len = r.u32("signature data length")? as usize;
        let sig_start = r.pos;
        let signature = r.arr("quote signature")?;
        let attestation_key = r.arr("attestation key")?;
        // v3 carries the QE report directly; later versions wrap it.
        let wrapped = header.version >= 4;
        let (cert_size, cert_start) = if wrapped {
            let cert_type = r.u16("certification data type")?;
            if cert_type != 6 {
                return Err(err(
                    r.pos - 2,
                    format!(
                        "certification data type {cert_type} (6: QE report certification data)"
                    ),
                ));
            }
            (r.u32("certification data size")? as usize, r.pos)
        } else {
            (0, r.pos)
        };
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
        if wrapped && r.pos - cert_start != cert_size {
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

impl QeCertData {
    /// The QE report's fields (read from the signed bytes each time, so
    /// the two never disagree).
    pub fn report(&self) -> Result<EnclaveReport, QuoteError> {
        EnclaveReport::parse(&self.qe_report)
    }
}
