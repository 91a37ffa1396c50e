//! A certificate parsed for the fields the verifiers read (names, key,
//! validity, extensions), and PEM bundles split into DER. Trust in a
//! certificate comes only from [`super::verify_path`].

use der::Decode;
use x509_cert::Certificate;
use x509_cert::der;

/// `id-ce-basicConstraints`.
const BASIC_CONSTRAINTS: &str = "2.5.29.19";
/// `id-ce-keyUsage`.
const KEY_USAGE: &str = "2.5.29.15";

/// A parsed certificate, with the DER it was parsed from.
#[derive(Clone)]
pub struct X509Cert {
    /// The parsed certificate.
    pub cert: Certificate,
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

/// The common name of `name`, or its whole text when it has none (a TPM
/// EK certificate's subject is often empty: then `(empty subject)`).
pub(super) fn display_name(name: &x509_cert::name::Name) -> String {
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
    if name.0.is_empty() {
        "(empty subject)".into()
    } else {
        name.to_string()
    }
}

impl X509Cert {
    /// Parses DER.
    pub fn from_der(der_bytes: &[u8]) -> Result<Self, String> {
        let cert = Certificate::from_der(der_bytes)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let cn = display_name(&cert.tbs_certificate.subject);
        Ok(Self {
            cert,
            der: der_bytes.to_vec(),
            cn,
        })
    }

    /// Parses every certificate of a PEM bundle.
    pub fn from_pem_bundle(pem: &str) -> Result<Vec<Self>, String> {
        pem_ders(pem)?.iter().map(|d| Self::from_der(d)).collect()
    }

    /// The signed `tbsCertificate`, exactly as encoded.
    pub(super) fn tbs(&self) -> Option<&[u8]> {
        let (outer_hdr, _) = tlv(&self.der)?;
        let inner = self.der.get(outer_hdr..)?;
        let (hdr, len) = tlv(inner)?;
        inner.get(..hdr.checked_add(len)?)
    }

    /// The issuer's common name (or whole name), for messages.
    pub fn issuer_name(&self) -> String {
        display_name(&self.cert.tbs_certificate.issuer)
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

    /// The subject public key as an uncompressed EC point (VCEK/VLEK, PCK,
    /// TCB signing certificate).
    pub fn ec_point(&self) -> &[u8] {
        self.subject_public_key()
    }

    /// The subjectPublicKey bits: an EC point, or an RSAPublicKey.
    pub fn subject_public_key(&self) -> &[u8] {
        self.cert
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes()
    }

    /// Start of the validity window (Unix seconds).
    pub fn not_before(&self) -> u64 {
        self.cert
            .tbs_certificate
            .validity
            .not_before
            .to_unix_duration()
            .as_secs()
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

    /// The value of extension `oid` (dotted), if present.
    pub fn extension(&self, oid: &str) -> Option<&[u8]> {
        self.extensions()
            .find(|e| e.extn_id.to_string() == oid)
            .map(|e| e.extn_value.as_bytes())
    }

    /// Every extension.
    pub(super) fn extensions(&self) -> impl Iterator<Item = &x509_cert::ext::Extension> {
        self.cert
            .tbs_certificate
            .extensions
            .as_deref()
            .unwrap_or_default()
            .iter()
    }

    /// Whether basic constraints make this a CA certificate.
    pub(super) fn is_ca(&self) -> Result<bool, String> {
        match self.extension(BASIC_CONSTRAINTS) {
            Some(v) => x509_cert::ext::pkix::BasicConstraints::from_der(v)
                .map(|bc| bc.ca)
                .map_err(|e| format!("{} basic constraints: {e}", self.cn)),
            None => Ok(false),
        }
    }

    /// Whether key usage allows signing certificates (keyCertSign, or no
    /// key usage extension at all).
    pub(super) fn may_sign_certificates(&self) -> Result<bool, String> {
        match self.extension(KEY_USAGE) {
            Some(v) => x509_cert::ext::pkix::KeyUsage::from_der(v)
                .map(|ku| ku.key_cert_sign())
                .map_err(|e| format!("{} key usage: {e}", self.cn)),
            None => Ok(true),
        }
    }
}
