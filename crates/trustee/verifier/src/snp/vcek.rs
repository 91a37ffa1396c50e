//! The VCEK's (and VLEK's) AMD extensions: the TCB it was issued for and
//! the chip's hwID.

use crate::x509::X509Cert;
use x509_cert::der::{self, Decode};

/// AMD's VCEK extensions (`1.3.6.1.4.1.3704.1.…`).
const EXT_BL: &str = "1.3.6.1.4.1.3704.1.3.1";
const EXT_TEE: &str = "1.3.6.1.4.1.3704.1.3.2";
const EXT_SNP: &str = "1.3.6.1.4.1.3704.1.3.3";
const EXT_UCODE: &str = "1.3.6.1.4.1.3704.1.3.8";
const EXT_FMC: &str = "1.3.6.1.4.1.3704.1.3.9";
const EXT_HWID: &str = "1.3.6.1.4.1.3704.1.4";

/// The VCEK TCB extensions.
#[derive(Debug, Clone, Copy)]
pub enum Spl {
    /// Boot loader.
    Bootloader,
    /// PSP OS.
    Tee,
    /// SNP firmware.
    Snp,
    /// Microcode.
    Microcode,
    /// Firmware (Turin).
    Fmc,
}

/// A VCEK SPL extension (DER INTEGER) as a byte.
pub fn spl(cert: &X509Cert, which: Spl) -> Result<Option<u8>, String> {
    let oid = match which {
        Spl::Bootloader => EXT_BL,
        Spl::Tee => EXT_TEE,
        Spl::Snp => EXT_SNP,
        Spl::Microcode => EXT_UCODE,
        Spl::Fmc => EXT_FMC,
    };
    let Some(v) = cert.extension(oid) else {
        return Ok(None);
    };
    let n =
        der::asn1::Uint::from_der(v).map_err(|e| format!("{} extension {oid}: {e}", cert.cn))?;
    match n.as_bytes() {
        [] => Ok(Some(0)),
        [b] => Ok(Some(*b)),
        _ => Err(format!("{} extension {oid} is larger than a byte", cert.cn)),
    }
}

/// The hwID extension (64 bytes), if present.
pub fn hwid(cert: &X509Cert) -> Result<Option<Vec<u8>>, String> {
    let Some(v) = cert.extension(EXT_HWID) else {
        return Ok(None);
    };
    // AMD encodes it as an OCTET STRING; accept the raw 64 bytes too.
    if v.len() == 64 {
        return Ok(Some(v.to_vec()));
    }
    der::asn1::OctetString::from_der(v)
        .map(|o| Some(o.as_bytes().to_vec()))
        .map_err(|e| format!("{} hwID: {e}", cert.cn))
}
