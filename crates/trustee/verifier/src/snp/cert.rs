//! The AMD certificate chain, ARK → ASK/ASVK → VCEK/VLEK: RSA-PSS
//! SHA-384 signatures (ring), validity windows, CA constraints, and the
//! VCEK's TCB and hwID extensions.

use der::Decode;
use x509_cert::Certificate;
use x509_cert::der;

/// `id-RSASSA-PSS`.
const RSASSA_PSS: &str = "1.2.840.113549.1.1.10";
/// `ecdsa-with-SHA256`.
const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
const RSA_SHA256: &str = "1.2.840.113549.1.1.11";
const RSA_SHA384: &str = "1.2.840.113549.1.1.12";
/// AMD's VCEK extensions (`1.3.6.1.4.1.3704.1.…`).
const EXT_BL: &str = "1.3.6.1.4.1.3704.1.3.1";
const EXT_TEE: &str = "1.3.6.1.4.1.3704.1.3.2";
const EXT_SNP: &str = "1.3.6.1.4.1.3704.1.3.3";
const EXT_UCODE: &str = "1.3.6.1.4.1.3704.1.3.8";
const EXT_FMC: &str = "1.3.6.1.4.1.3704.1.3.9";
const EXT_HWID: &str = "1.3.6.1.4.1.3704.1.4";

/// A parsed certificate with the raw bytes its signature covers.
#[derive(Clone)]
pub struct X509Cert {
    /// The parsed certificate.
    pub cert: Certificate,
    tbs: Vec<u8>,
    /// The certificate as received.
    pub der: Vec<u8>,
    /// The subject's common name.
    pub cn: String,
}

impl std::fmt::Debug for X509Cert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "X509Cert({})", self.cn)
    }
}

/// The DER of every certificate in a PEM bundle, not yet parsed.
pub fn pem_ders(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for block in pem.split("-----END CERTIFICATE-----") {
        let Some(start) = block.find("-----BEGIN CERTIFICATE-----") else {
            continue;
        };
        let b64: Vec<u8> = block.as_bytes()[start + 27..]
            .iter()
            .copied()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        out.push(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
                .map_err(|_| "PEM certificate is not base64".to_string())?,
        );
    }
    Ok(out)
}

/// One DER TLV at the start of `b`: (header length, content length).
pub(crate) fn tlv(b: &[u8]) -> Option<(usize, usize)> {
    let first = *b.get(1)?;
    if first < 0x80 {
        return Some((2, first as usize));
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | *b.get(2 + i)? as usize;
    }
    Some((2 + n, len))
}

/// The raw `tbsCertificate` inside a certificate's outer SEQUENCE.
pub(crate) fn tbs_slice(cert: &[u8]) -> Option<&[u8]> {
    let (outer_hdr, _) = tlv(cert)?;
    let inner = cert.get(outer_hdr..)?;
    let (hdr, len) = tlv(inner)?;
    inner.get(..hdr.checked_add(len)?)
}

fn common_name(name: &x509_cert::name::Name) -> String {
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid.to_string() == "2.5.4.3" {
                if let Ok(s) = der::asn1::PrintableStringRef::try_from(&atv.value) {
                    return s.to_string();
                }
                if let Ok(s) = der::asn1::Utf8StringRef::try_from(&atv.value) {
                    return s.to_string();
                }
                if let Ok(s) = der::asn1::Ia5StringRef::try_from(&atv.value) {
                    return s.to_string();
                }
            }
        }
    }
    String::new()
}

impl X509Cert {
    /// Parses DER.
    pub fn from_der(der_bytes: &[u8]) -> Result<Self, String> {
        let cert = Certificate::from_der(der_bytes)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        // The signature covers the body exactly as encoded, not a re-encoding.
        let tbs = tbs_slice(der_bytes)
            .ok_or_else(|| "certificate body is not DER".to_string())?
            .to_vec();
        let cn = common_name(&cert.tbs_certificate.subject);
        Ok(Self {
            cert,
            tbs,
            der: der_bytes.to_vec(),
            cn,
        })
    }

    /// Parses every certificate of a PEM bundle.
    pub fn from_pem_bundle(pem: &str) -> Result<Vec<Self>, String> {
        pem_ders(pem)?.iter().map(|d| Self::from_der(d)).collect()
    }

    /// The subject Name exactly as encoded in the certificate (what a CRL
    /// this certificate issued names as its issuer).
    pub(crate) fn subject_der(&self) -> &[u8] {
        fn walk(tbs: &[u8]) -> Option<&[u8]> {
            let (hdr, len) = tlv(tbs)?;
            let mut r = tbs.get(hdr..hdr.checked_add(len)?)?;
            let skip = |r: &[u8]| -> Option<usize> {
                let (h, l) = tlv(r)?;
                h.checked_add(l)
            };
            if r.first() == Some(&0xa0) {
                r = r.get(skip(r)?..)?; // version
            }
            for _ in 0..4 {
                r = r.get(skip(r)?..)?; // serial, signature, issuer, validity
            }
            r.get(..skip(r)?)
        }
        walk(&self.tbs).unwrap_or_default()
    }

    /// The SubjectPublicKeyInfo, DER.
    pub fn spki_der(&self) -> Vec<u8> {
        use der::Encode;
        self.cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .unwrap_or_default()
    }

    pub(crate) fn spki(&self) -> &[u8] {
        self.cert
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes()
    }

    /// The subject public key as an uncompressed EC point (VCEK/VLEK).
    pub fn ec_point(&self) -> &[u8] {
        self.spki()
    }

    /// Checks that `issuer` signed this certificate (RSA-PSS SHA-384 as
    /// AMD signs, or ECDSA P-256 SHA-256 as Intel signs) and that the
    /// names chain.
    pub fn verify_signed_by(&self, issuer: &X509Cert) -> Result<(), String> {
        use ring::signature as rs;
        let p384 = issuer.spki().len() == 97;
        let alg: &'static dyn rs::VerificationAlgorithm =
            match self.cert.signature_algorithm.oid.to_string().as_str() {
                RSASSA_PSS => &rs::RSA_PSS_2048_8192_SHA384,
                ECDSA_SHA256 if p384 => &rs::ECDSA_P384_SHA256_ASN1,
                ECDSA_SHA256 => &rs::ECDSA_P256_SHA256_ASN1,
                ECDSA_SHA384 if p384 => &rs::ECDSA_P384_SHA384_ASN1,
                ECDSA_SHA384 => &rs::ECDSA_P256_SHA384_ASN1,
                RSA_SHA256 => &rs::RSA_PKCS1_2048_8192_SHA256,
                RSA_SHA384 => &rs::RSA_PKCS1_2048_8192_SHA384,
                other => {
                    return Err(format!(
                        "{} is signed with {other}, not RSA (PKCS#1 v1.5 or PSS) or ECDSA",
                        self.cn
                    ));
                }
            };
        if self.cert.tbs_certificate.issuer != issuer.cert.tbs_certificate.subject {
            return Err(format!("{} was not issued by {}", self.cn, issuer.cn));
        }
        let sig = self
            .cert
            .signature
            .as_bytes()
            .ok_or_else(|| format!("{}: signature has unused bits", self.cn))?;
        ring::signature::UnparsedPublicKey::new(alg, issuer.spki())
            .verify(&self.tbs, sig)
            .map_err(|_| {
                format!(
                    "the signature on {} by {} does not verify",
                    self.cn, issuer.cn
                )
            })
    }

    /// End of the validity window (Unix seconds).
    pub fn not_after(&self) -> u64 {
        self.cert
            .tbs_certificate
            .validity
            .not_after
            .to_unix_duration()
            .as_secs()
    }

    /// Checks the validity window at `now` (Unix seconds).
    pub fn check_validity(&self, now: u64) -> Result<(), String> {
        let v = &self.cert.tbs_certificate.validity;
        let (nb, na) = (
            v.not_before.to_unix_duration().as_secs(),
            v.not_after.to_unix_duration().as_secs(),
        );
        if now < nb {
            return Err(format!(
                "{} is not valid yet (from {})",
                self.cn, v.not_before
            ));
        }
        if now > na {
            return Err(format!("{} expired on {}", self.cn, v.not_after));
        }
        Ok(())
    }

    /// Checks that this is a CA certificate allowed to sign certificates
    /// (basic constraints CA, and keyCertSign when key usage is present).
    pub fn check_ca(&self) -> Result<(), String> {
        let exts = self
            .cert
            .tbs_certificate
            .extensions
            .as_deref()
            .unwrap_or_default();
        let mut is_ca = false;
        for e in exts {
            match e.extn_id.to_string().as_str() {
                "2.5.29.19" => {
                    let bc =
                        x509_cert::ext::pkix::BasicConstraints::from_der(e.extn_value.as_bytes())
                            .map_err(|err| format!("{} basic constraints: {err}", self.cn))?;
                    is_ca = bc.ca;
                }
                "2.5.29.15" => {
                    let ku = x509_cert::ext::pkix::KeyUsage::from_der(e.extn_value.as_bytes())
                        .map_err(|err| format!("{} key usage: {err}", self.cn))?;
                    if !ku.key_cert_sign() {
                        return Err(format!("{} may not sign certificates (key usage)", self.cn));
                    }
                }
                _ => {}
            }
        }
        if !is_ca {
            return Err(format!("{} is not a CA certificate", self.cn));
        }
        Ok(())
    }

    fn extension(&self, oid: &str) -> Option<&[u8]> {
        self.cert
            .tbs_certificate
            .extensions
            .as_deref()?
            .iter()
            .find(|e| e.extn_id.to_string() == oid)
            .map(|e| e.extn_value.as_bytes())
    }

    /// A VCEK SPL extension (DER INTEGER) as a byte.
    pub fn spl(&self, which: Spl) -> Result<Option<u8>, String> {
        let oid = match which {
            Spl::Bootloader => EXT_BL,
            Spl::Tee => EXT_TEE,
            Spl::Snp => EXT_SNP,
            Spl::Microcode => EXT_UCODE,
            Spl::Fmc => EXT_FMC,
        };
        let Some(v) = self.extension(oid) else {
            return Ok(None);
        };
        let n = der::asn1::Uint::from_der(v)
            .map_err(|e| format!("{} extension {oid}: {e}", self.cn))?;
        let bytes = n.as_bytes();
        match bytes {
            [] => Ok(Some(0)),
            [b] => Ok(Some(*b)),
            _ => Err(format!("{} extension {oid} is larger than a byte", self.cn)),
        }
    }

    /// The hwID extension (64 bytes), if present.
    pub fn hwid(&self) -> Result<Option<Vec<u8>>, String> {
        let Some(v) = self.extension(EXT_HWID) else {
            return Ok(None);
        };
        // AMD encodes it as an OCTET STRING; accept the raw 64 bytes too.
        if v.len() == 64 {
            return Ok(Some(v.to_vec()));
        }
        der::asn1::OctetString::from_der(v)
            .map(|o| Some(o.as_bytes().to_vec()))
            .map_err(|e| format!("{} hwID: {e}", self.cn))
    }
}

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
