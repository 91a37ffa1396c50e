//! Quote verification against real TPM evidence captured by CoCo's attester
//! (`shared/fixtures/tpm`), including tampering in each signed region.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cocoon_tpm::{AkPublicKey, Attest, Signature, TpmError, verify_quote};

struct Fixture {
    ak: Vec<u8>,
    attest: Vec<u8>,
    sig: Vec<u8>,
    pcrs: Vec<[u8; 32]>,
}

fn fixture() -> Fixture {
    let text = cocoon_fixtures::read_to_string("tpm/trustee_tpm_evidence.json");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let q = &v["tpm_quote"];
    Fixture {
        ak: B64.decode(v["ak_public"].as_str().unwrap()).unwrap(),
        attest: B64.decode(q["message"].as_str().unwrap()).unwrap(),
        sig: B64.decode(q["signature"].as_str().unwrap()).unwrap(),
        pcrs: q["pcrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                hex::decode(p.as_str().unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap()
            })
            .collect(),
    }
}

#[test]
fn real_quote_verifies_and_parses() {
    let f = fixture();
    let ak = AkPublicKey::from_spki_der(&f.ak).unwrap();
    let q = verify_quote(&ak, &f.attest, &f.sig, &f.pcrs).unwrap();
    assert_eq!(q.attest.extra_data.len(), 64);
    assert_eq!(q.pcrs.len(), 24);
    // The signer name is a SHA-256 name (alg id + 32 bytes).
    assert_eq!(q.attest.qualified_signer.len(), 34);
    assert!(matches!(
        Signature::parse(&f.sig).unwrap(),
        Signature::RsaSsa { hash: 0x000b, .. }
    ));
    // Marshalling round-trips.
    assert_eq!(Signature::parse(&f.sig).unwrap().to_bytes(), f.sig);
}

#[test]
fn a_flipped_bit_anywhere_in_the_attest_is_refused() {
    let f = fixture();
    let ak = AkPublicKey::from_spki_der(&f.ak).unwrap();
    for i in 0..f.attest.len() {
        let mut a = f.attest.clone();
        a[i] ^= 0x01;
        let err = verify_quote(&ak, &a, &f.sig, &f.pcrs).unwrap_err();
        assert!(matches!(err, TpmError::BadSignature), "byte {i}: {err}");
    }
}

#[test]
fn tampered_signature_pcrs_and_key_are_refused() {
    let f = fixture();
    let ak = AkPublicKey::from_spki_der(&f.ak).unwrap();
    let mut sig = f.sig.clone();
    let last = sig.len() - 1;
    sig[last] ^= 0x80;
    assert!(matches!(
        verify_quote(&ak, &f.attest, &sig, &f.pcrs),
        Err(TpmError::BadSignature)
    ));
    let mut pcrs = f.pcrs.clone();
    pcrs[7][0] ^= 1;
    let err = verify_quote(&ak, &f.attest, &f.sig, &pcrs).unwrap_err();
    assert!(matches!(err, TpmError::PcrDigestMismatch), "{err}");
    assert!(matches!(
        verify_quote(&ak, &f.attest, &f.sig, &f.pcrs[..23]),
        Err(TpmError::PcrSelection(_))
    ));
    // Another RSA key does not verify.
    let other = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
    let der = rsa::pkcs8::EncodePublicKey::to_public_key_der(&other.to_public_key()).unwrap();
    let other = AkPublicKey::from_spki_der(der.as_bytes()).unwrap();
    assert!(matches!(
        verify_quote(&other, &f.attest, &f.sig, &f.pcrs),
        Err(TpmError::BadSignature)
    ));
}

#[test]
fn truncated_and_garbage_structures_are_errors_not_panics() {
    let f = fixture();
    for n in 0..f.attest.len() {
        assert!(Attest::parse(&f.attest[..n]).is_err());
    }
    for n in 0..f.sig.len() {
        assert!(Signature::parse(&f.sig[..n]).is_err());
    }
    let mut seed = 0x1234_5678_u64;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut a = f.attest.clone();
        let i = (seed as usize) % a.len();
        a[i] = (seed >> 32) as u8;
        let _ = Attest::parse(&a);
        let _ = cocoon_tpm::Public::parse(&a);
        let _ = Signature::parse(&a[..(seed as usize >> 8) % a.len()]);
    }
    assert!(AkPublicKey::from_spki_der(b"not a key").is_err());
}
