//! TPM 2.0 structures used for attestation (TPM 2.0 Library, Part 2), typed
//! at the edge: [`Attest`], [`Signature`], [`Public`], [`PcrSelection`].

use crate::TpmError;
use crate::wire::{Reader, Writer};

/// TPM_ALG_RSA.
pub const ALG_RSA: u16 = 0x0001;
/// TPM_ALG_SHA1.
pub const ALG_SHA1: u16 = 0x0004;
/// TPM_ALG_AES.
pub const ALG_AES: u16 = 0x0006;
/// TPM_ALG_SHA256.
pub const ALG_SHA256: u16 = 0x000B;
/// TPM_ALG_SHA384.
pub const ALG_SHA384: u16 = 0x000C;
/// TPM_ALG_SHA512.
pub const ALG_SHA512: u16 = 0x000D;
/// TPM_ALG_NULL.
pub const ALG_NULL: u16 = 0x0010;
/// TPM_ALG_RSASSA.
pub const ALG_RSASSA: u16 = 0x0014;
/// TPM_ALG_ECDSA.
pub const ALG_ECDSA: u16 = 0x0018;
/// TPM_ALG_ECC.
pub const ALG_ECC: u16 = 0x0023;
/// TPM_ALG_CFB.
pub const ALG_CFB: u16 = 0x0043;
/// TPM_ECC_NIST_P256.
pub const ECC_NIST_P256: u16 = 0x0003;

/// TPM_GENERATED_VALUE: every TPM-produced attestation starts with it.
pub const GENERATED_VALUE: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_QUOTE.
pub const ST_ATTEST_QUOTE: u16 = 0x8018;

/// Number of PCRs in a PC-client bank.
pub const PCR_COUNT: usize = 24;

/// Largest digest (SHA-512) and so the largest qualifying data / extraData.
pub const MAX_DIGEST: usize = 64;

/// Digest size of a TPM hash algorithm.
pub fn digest_len(alg: u16) -> Option<usize> {
    match alg {
        ALG_SHA1 => Some(20),
        ALG_SHA256 => Some(32),
        ALG_SHA384 => Some(48),
        ALG_SHA512 => Some(64),
        _ => None,
    }
}

/// Name of a hash algorithm, for messages.
pub fn alg_name(alg: u16) -> String {
    match alg {
        ALG_SHA1 => "sha1".into(),
        ALG_SHA256 => "sha256".into(),
        ALG_SHA384 => "sha384".into(),
        ALG_SHA512 => "sha512".into(),
        other => format!("alg 0x{other:04x}"),
    }
}

/// One bank's PCR selection (TPMS_PCR_SELECTION).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    /// Bank hash algorithm.
    pub hash: u16,
    /// Selected PCR indexes, ascending.
    pub pcrs: Vec<u8>,
}

impl PcrSelection {
    /// All 24 PCRs of the SHA-256 bank.
    pub fn sha256_all() -> Self {
        Self {
            hash: ALG_SHA256,
            pcrs: (0..PCR_COUNT as u8).collect(),
        }
    }

    fn bitmap(&self) -> [u8; 3] {
        let mut m = [0u8; 3];
        for p in &self.pcrs {
            m[(*p / 8) as usize] |= 1 << (p % 8);
        }
        m
    }
}

/// Writes a TPML_PCR_SELECTION.
pub fn write_pcr_selection_list(w: &mut Writer, sel: &[PcrSelection]) {
    w.u32(sel.len() as u32);
    for s in sel {
        w.u16(s.hash).u8(3).bytes(&s.bitmap());
    }
}

/// Reads a TPML_PCR_SELECTION (at most 16 banks, PCR bitmaps up to 4 bytes).
pub fn read_pcr_selection_list(r: &mut Reader<'_>) -> Result<Vec<PcrSelection>, TpmError> {
    let count = r.u32()?;
    if count > 16 {
        return Err(TpmError::Parse {
            what: "TPML_PCR_SELECTION",
            detail: format!("{count} banks"),
        });
    }
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let hash = r.u16()?;
        let size = r.u8()? as usize;
        if size > 4 {
            return Err(TpmError::Parse {
                what: "TPMS_PCR_SELECTION",
                detail: format!("sizeofSelect {size} > 4"),
            });
        }
        let map = r.bytes(size)?;
        let mut pcrs = Vec::new();
        for (i, byte) in map.iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    pcrs.push((i * 8 + bit) as u8);
                }
            }
        }
        out.push(PcrSelection { hash, pcrs });
    }
    Ok(out)
}

/// A parsed TPMS_ATTEST of type quote.
#[derive(Debug, Clone)]
pub struct Attest {
    /// Qualified name of the signing key.
    pub qualified_signer: Vec<u8>,
    /// The caller's qualifying data (the nonce / report data).
    pub extra_data: Vec<u8>,
    /// TPM clock (ms).
    pub clock: u64,
    /// TPM resets since the last clear.
    pub reset_count: u32,
    /// TPM restarts since the last reset.
    pub restart_count: u32,
    /// Whether the clock is safe.
    pub safe: bool,
    /// Firmware version.
    pub firmware_version: u64,
    /// The quoted PCRs.
    pub pcr_select: Vec<PcrSelection>,
    /// Digest over the selected PCR values.
    pub pcr_digest: Vec<u8>,
}

impl Attest {
    /// Parses TPMS_ATTEST bytes; only quotes are accepted.
    pub fn parse(bytes: &[u8]) -> Result<Self, TpmError> {
        let mut r = Reader::new(bytes, "TPMS_ATTEST");
        let magic = r.u32()?;
        if magic != GENERATED_VALUE {
            return Err(TpmError::Parse {
                what: "TPMS_ATTEST",
                detail: format!(
                    "magic 0x{magic:08x} is not TPM_GENERATED_VALUE: not produced by a TPM"
                ),
            });
        }
        let ty = r.u16()?;
        if ty != ST_ATTEST_QUOTE {
            return Err(TpmError::Parse {
                what: "TPMS_ATTEST",
                detail: format!("type 0x{ty:04x} is not a quote (0x8018)"),
            });
        }
        let qualified_signer = r.tpm2b(2 + MAX_DIGEST)?.to_vec();
        let extra_data = r.tpm2b(MAX_DIGEST + 2)?.to_vec();
        let clock = r.u64()?;
        let reset_count = r.u32()?;
        let restart_count = r.u32()?;
        let safe = r.u8()? != 0;
        let firmware_version = r.u64()?;
        let pcr_select = read_pcr_selection_list(&mut r)?;
        let pcr_digest = r.tpm2b(MAX_DIGEST)?.to_vec();
        r.finish()?;
        Ok(Self {
            qualified_signer,
            extra_data,
            clock,
            reset_count,
            restart_count,
            safe,
            firmware_version,
            pcr_select,
            pcr_digest,
        })
    }
}

/// A parsed TPMT_SIGNATURE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// RSASSA-PKCS1-v1_5.
    RsaSsa {
        /// Hash algorithm.
        hash: u16,
        /// Signature bytes.
        sig: Vec<u8>,
    },
    /// ECDSA.
    Ecdsa {
        /// Hash algorithm.
        hash: u16,
        /// r, big-endian.
        r: Vec<u8>,
        /// s, big-endian.
        s: Vec<u8>,
    },
}

impl Signature {
    /// Parses TPMT_SIGNATURE bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, TpmError> {
        let mut rd = Reader::new(bytes, "TPMT_SIGNATURE");
        let alg = rd.u16()?;
        let sig = match alg {
            ALG_RSASSA => {
                let hash = rd.u16()?;
                let sig = rd.tpm2b(512)?.to_vec();
                Signature::RsaSsa { hash, sig }
            }
            ALG_ECDSA => {
                let hash = rd.u16()?;
                let r = rd.tpm2b(66)?.to_vec();
                let s = rd.tpm2b(66)?.to_vec();
                Signature::Ecdsa { hash, r, s }
            }
            other => {
                return Err(TpmError::Parse {
                    what: "TPMT_SIGNATURE",
                    detail: format!(
                        "signature algorithm 0x{other:04x} (only RSASSA and ECDSA are accepted)"
                    ),
                });
            }
        };
        rd.finish()?;
        Ok(sig)
    }

    /// Marshals back to TPMT_SIGNATURE bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Signature::RsaSsa { hash, sig } => {
                w.u16(ALG_RSASSA).u16(*hash).tpm2b(sig);
            }
            Signature::Ecdsa { hash, r, s } => {
                w.u16(ALG_ECDSA).u16(*hash).tpm2b(r).tpm2b(s);
            }
        }
        w.into_inner()
    }
}

/// Key algorithm of an attestation key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// RSA 2048, RSASSA-SHA256 (what CoCo's verifier accepts).
    Rsa2048,
    /// ECC NIST P-256, ECDSA-SHA256.
    EccP256,
}

/// The public part of a TPM key (TPMT_PUBLIC), as far as attestation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Public {
    /// RSA key: modulus and exponent.
    Rsa {
        /// Object attributes.
        attributes: u32,
        /// Modulus, big-endian.
        n: Vec<u8>,
        /// Public exponent.
        e: u32,
    },
    /// ECC P-256 key.
    EccP256 {
        /// Object attributes.
        attributes: u32,
        /// x coordinate.
        x: Vec<u8>,
        /// y coordinate.
        y: Vec<u8>,
    },
}

/// fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | restricted | sign.
pub const AK_ATTRIBUTES: u32 = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 16) | (1 << 18);
/// fixedTPM | fixedParent | sensitiveDataOrigin | adminWithPolicy | restricted | decrypt.
pub const EK_ATTRIBUTES: u32 = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 7) | (1 << 16) | (1 << 17);
/// PolicySecret(TPM_RH_ENDORSEMENT), the policy of the TCG default EK templates.
pub const EK_POLICY: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
    0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa,
];

/// TPMT_PUBLIC template for a restricted signing AK.
pub fn ak_template(alg: KeyAlgorithm) -> Vec<u8> {
    let mut w = Writer::new();
    match alg {
        KeyAlgorithm::Rsa2048 => {
            w.u16(ALG_RSA).u16(ALG_SHA256).u32(AK_ATTRIBUTES).tpm2b(&[]);
            // symmetric NULL, scheme RSASSA(SHA256), 2048 bits, default exponent
            w.u16(ALG_NULL)
                .u16(ALG_RSASSA)
                .u16(ALG_SHA256)
                .u16(2048)
                .u32(0);
            w.tpm2b(&[]);
        }
        KeyAlgorithm::EccP256 => {
            w.u16(ALG_ECC).u16(ALG_SHA256).u32(AK_ATTRIBUTES).tpm2b(&[]);
            // symmetric NULL, scheme ECDSA(SHA256), curve P-256, kdf NULL
            w.u16(ALG_NULL)
                .u16(ALG_ECDSA)
                .u16(ALG_SHA256)
                .u16(ECC_NIST_P256)
                .u16(ALG_NULL);
            w.tpm2b(&[]).tpm2b(&[]);
        }
    }
    w.into_inner()
}

/// TPMT_PUBLIC of the TCG default RSA 2048 EK (EK Credential Profile, template L-1).
pub fn ek_rsa_template() -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(ALG_RSA)
        .u16(ALG_SHA256)
        .u32(EK_ATTRIBUTES)
        .tpm2b(&EK_POLICY);
    w.u16(ALG_AES)
        .u16(128)
        .u16(ALG_CFB)
        .u16(ALG_NULL)
        .u16(2048)
        .u32(0);
    w.tpm2b(&[0u8; 256]);
    w.into_inner()
}

/// Skips a key's TPMT_SYM_DEF_OBJECT and signing scheme (algorithm plus
/// key bits and mode, or plus hash), which attestation does not need.
fn skip_symmetric_and_scheme(r: &mut Reader<'_>) -> Result<(), TpmError> {
    if r.u16()? != ALG_NULL {
        r.u16()?;
        r.u16()?;
    }
    if r.u16()? != ALG_NULL {
        r.u16()?;
    }
    Ok(())
}

impl Public {
    /// Parses TPMT_PUBLIC bytes (RSA and ECC P-256 keys).
    pub fn parse(bytes: &[u8]) -> Result<Self, TpmError> {
        let mut r = Reader::new(bytes, "TPMT_PUBLIC");
        let ty = r.u16()?;
        let _name_alg = r.u16()?;
        let attributes = r.u32()?;
        let _policy = r.tpm2b(MAX_DIGEST)?;
        let bad = |detail: String| TpmError::Parse {
            what: "TPMT_PUBLIC",
            detail,
        };
        let out = match ty {
            ALG_RSA => {
                skip_symmetric_and_scheme(&mut r)?;
                let _bits = r.u16()?;
                let e = match r.u32()? {
                    0 => 65537,
                    e => e,
                };
                let n = r.tpm2b(512)?.to_vec();
                Public::Rsa { attributes, n, e }
            }
            ALG_ECC => {
                skip_symmetric_and_scheme(&mut r)?;
                let curve = r.u16()?;
                if curve != ECC_NIST_P256 {
                    return Err(bad(format!("curve 0x{curve:04x} (only NIST P-256)")));
                }
                let kdf = r.u16()?;
                if kdf != ALG_NULL {
                    r.u16()?;
                }
                let x = r.tpm2b(32)?.to_vec();
                let y = r.tpm2b(32)?.to_vec();
                Public::EccP256 { attributes, x, y }
            }
            other => return Err(bad(format!("key type 0x{other:04x}"))),
        };
        r.finish()?;
        Ok(out)
    }

    /// The key as DER SubjectPublicKeyInfo.
    pub fn to_spki_der(&self) -> Result<Vec<u8>, TpmError> {
        use p256::pkcs8::EncodePublicKey as _;
        let bad = |detail: String| TpmError::Parse {
            what: "TPMT_PUBLIC",
            detail,
        };
        match self {
            Public::Rsa { n, e, .. } => {
                let key =
                    rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(n), rsa::BigUint::from(*e))
                        .map_err(|e| bad(format!("RSA key: {e}")))?;
                rsa::pkcs8::EncodePublicKey::to_public_key_der(&key)
                    .map(|d| d.as_bytes().to_vec())
                    .map_err(|e| bad(format!("RSA key: {e}")))
            }
            Public::EccP256 { x, y, .. } => {
                let mut pt = vec![0x04];
                pt.extend(std::iter::repeat_n(0, 32 - x.len()));
                pt.extend_from_slice(x);
                pt.extend(std::iter::repeat_n(0, 32 - y.len()));
                pt.extend_from_slice(y);
                let key = p256::PublicKey::from_sec1_bytes(&pt)
                    .map_err(|_| bad("ECC point is not on P-256".into()))?;
                key.to_public_key_der()
                    .map(|d| d.as_bytes().to_vec())
                    .map_err(|e| bad(format!("ECC key: {e}")))
            }
        }
    }

    /// Whether the key is a restricted signing key (an AK).
    pub fn is_restricted_signing(&self) -> bool {
        let a = match self {
            Public::Rsa { attributes, .. } | Public::EccP256 { attributes, .. } => *attributes,
        };
        a & (1 << 16) != 0 && a & (1 << 18) != 0
    }
}
