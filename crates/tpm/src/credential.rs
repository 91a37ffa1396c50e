//! Credential activation (TPM 2.0 Library Part 1, 24 "Credential
//! Protection"): a verifier that trusts an EK (by its certificate) proves
//! that an AK lives in the same TPM. It encrypts a secret to the EK, bound
//! to the AK's name ([`make_credential`], in software); only that TPM can
//! recover it with TPM2_ActivateCredential, and only for that AK.
//!
//! RSA EKs with the TCG default template (RSA 2048, SHA-256 name, AES-128
//! CFB) are supported.

use crate::TpmError;
use crate::structs::ALG_SHA256;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The object name of a TPMT_PUBLIC with a SHA-256 name algorithm:
/// `TPM_ALG_SHA256 ‖ SHA-256(TPMT_PUBLIC)`.
pub fn name_sha256(tpmt_public: &[u8]) -> Vec<u8> {
    let mut n = ALG_SHA256.to_be_bytes().to_vec();
    n.extend_from_slice(&Sha256::digest(tpmt_public));
    n
}

/// KDFa with HMAC-SHA256 (Part 1, 11.4.10.2): `bits` of key material from
/// `key`, `label` (NUL-terminated here), `context_u` and `context_v`.
pub fn kdfa_sha256(
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Vec<u8> {
    let want = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(want + 32);
    let mut counter = 1u32;
    while out.len() < want {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key size");
        mac.update(&counter.to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter += 1;
    }
    out.truncate(want);
    out
}

/// AES-128 in CFB mode with a zero IV, encrypting (the TPM's parameter
/// and credential encryption).
fn aes128_cfb_encrypt(key: &[u8], data: &[u8]) -> Vec<u8> {
    use aes::cipher::{BlockEncrypt, KeyInit};
    let cipher = aes::Aes128::new_from_slice(key).expect("a 16-byte key");
    let mut iv = [0u8; 16];
    let mut out = Vec::with_capacity(data.len());
    for chunk in data.chunks(16) {
        let mut block = aes::Block::from(iv);
        cipher.encrypt_block(&mut block);
        let c: Vec<u8> = chunk.iter().zip(block.iter()).map(|(p, k)| p ^ k).collect();
        if c.len() == 16 {
            iv.copy_from_slice(&c);
        }
        out.extend_from_slice(&c);
    }
    out
}

fn tpm2b(data: &[u8]) -> Vec<u8> {
    let mut w = crate::wire::Writer::new();
    w.tpm2b(data);
    w.into_inner()
}

/// What TPM2_ActivateCredential takes: the TPM2B_ID_OBJECT credential blob
/// and the TPM2B_ENCRYPTED_SECRET (the seed encrypted to the EK).
#[derive(Debug, Clone)]
pub struct Credential {
    /// TPM2B_ID_OBJECT.
    pub id_object: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET.
    pub encrypted_secret: Vec<u8>,
}

/// TPM2_MakeCredential in software for an RSA EK (`ek_n`, `ek_e`), binding
/// `secret` (at most 32 bytes) to the object named `ak_name`.
pub fn make_credential(
    ek_n: &[u8],
    ek_e: u32,
    ak_name: &[u8],
    secret: &[u8],
) -> Result<Credential, TpmError> {
    let bad = |detail: String| TpmError::Parse {
        what: "credential",
        detail,
    };
    if secret.len() > 32 {
        return Err(bad("the secret is longer than a SHA-256 digest".into()));
    }
    if ek_n.len() != 256 {
        return Err(bad(format!(
            "the EK is RSA-{}, the TCG default template is RSA-2048",
            ek_n.len() * 8
        )));
    }
    let mut rng = rand_core::OsRng;
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rng, &mut seed);
    let ek = rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(ek_n), rsa::BigUint::from(ek_e))
        .map_err(|e| bad(format!("EK public key: {e}")))?;
    let encrypted_seed = ek
        .encrypt(
            &mut rng,
            rsa::Oaep::new_with_label::<Sha256, _>("IDENTITY\0"),
            &seed,
        )
        .map_err(|e| bad(format!("encrypting the seed to the EK: {e}")))?;
    let sym = kdfa_sha256(&seed, "STORAGE", ak_name, &[], 128);
    let enc_identity = aes128_cfb_encrypt(&sym, &tpm2b(secret));
    let hmac_key = kdfa_sha256(&seed, "INTEGRITY", &[], &[], 256);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&hmac_key).expect("HMAC key");
    mac.update(&enc_identity);
    mac.update(ak_name);
    let outer = mac.finalize().into_bytes();
    let mut blob = tpm2b(&outer);
    blob.extend_from_slice(&enc_identity);
    Ok(Credential {
        id_object: tpm2b(&blob),
        encrypted_secret: tpm2b(&encrypted_seed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// KDFa output length and determinism; CFB block chaining against the
    /// AES block function (the end-to-end check is the swtpm activation).
    #[test]
    fn kdfa_and_cfb() {
        let a = kdfa_sha256(b"k", "STORAGE", b"name", &[], 128);
        assert_eq!(a.len(), 16);
        assert_eq!(a, kdfa_sha256(b"k", "STORAGE", b"name", &[], 128));
        assert_ne!(a, kdfa_sha256(b"k", "INTEGRITY", b"name", &[], 128));
        assert_eq!(kdfa_sha256(b"k", "INTEGRITY", &[], &[], 256).len(), 32);
        // With IV = 0 the first CFB block is P xor AES(K, 0).
        use aes::cipher::{BlockEncrypt, KeyInit};
        let key = [7u8; 16];
        let aes = aes::Aes128::new_from_slice(&key).unwrap();
        let mut z = aes::Block::from([0u8; 16]);
        aes.encrypt_block(&mut z);
        let plain = [0x5au8; 20];
        let c = aes128_cfb_encrypt(&key, &plain);
        assert_eq!(c.len(), 20);
        for i in 0..16 {
            assert_eq!(c[i], plain[i] ^ z[i]);
        }
        // The second block chains on the first ciphertext block.
        let mut first = [0u8; 16];
        first.copy_from_slice(&c[..16]);
        let mut b2 = aes::Block::from(first);
        aes.encrypt_block(&mut b2);
        for i in 0..4 {
            assert_eq!(c[16 + i], plain[16 + i] ^ b2[i]);
        }
    }
}
