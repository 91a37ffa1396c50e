//! Keys under `testdata/` were made with OpenSSL 3.0 (`openssl genpkey`,
//! `openssl ecparam -genkey`, `openssl pkey -pubout`) for these tests only.

use super::*;

const ED25519: &str = include_str!("testdata/ed25519.pem");
const ED25519_PUB: &str = include_str!("testdata/ed25519.pub.pem");
const P256_PKCS8: &str = include_str!("testdata/p256-pkcs8.pem");
const P256_PKCS8_PUB: &str = include_str!("testdata/p256-pkcs8.pub.pem");
const P256_SEC1: &str = include_str!("testdata/p256-sec1.pem");
const P256_SEC1_PUB: &str = include_str!("testdata/p256-sec1.pub.pem");

const NOW: i64 = 1_700_000_000;

impl AdminSigningKey {
    /// Signs arbitrary claims, for tokens `token` would never make.
    fn sign_claims(&self, claims: &str) -> String {
        let alg = match self {
            AdminSigningKey::Ed25519(_) => "EdDSA",
            AdminSigningKey::P256(_) => "ES256",
        };
        let signing_input = format!(
            "{}.{}",
            B64URL.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#)),
            B64URL.encode(claims)
        );
        format!(
            "{signing_input}.{}",
            B64URL.encode(self.signature(signing_input.as_bytes()))
        )
    }
}

fn ed25519() -> (AdminSigningKey, [AdminKey; 1]) {
    let k = AdminSigningKey::generate_ed25519();
    let public = [k.public_key()];
    (k, public)
}

#[test]
fn reads_the_private_keys_openssl_writes_and_their_public_keys() {
    for (private, public, alg) in [
        (ED25519, ED25519_PUB, "EdDSA"),
        (P256_PKCS8, P256_PKCS8_PUB, "ES256"),
        (P256_SEC1, P256_SEC1_PUB, "ES256"),
    ] {
        let k = AdminSigningKey::from_pem(private).unwrap();
        let trusted = [AdminKey::from_pem(public).unwrap()];
        let t = k.token(NOW, 300);
        let header: serde_json::Value =
            serde_json::from_slice(&B64URL.decode(t.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["alg"], alg);
        verify_admin_token(&t, &trusted, NOW).unwrap();
        // The derived public key is the one OpenSSL wrote.
        assert_eq!(k.public_key().to_pem().trim(), public.trim());
    }
}

#[test]
fn refuses_keys_that_are_not_ed25519_or_p256() {
    let cases = [
        (include_str!("testdata/p384-sec1.pem"), "another curve"),
        // secp256k1 without its public key: the scalar alone would pass
        // as a P-256 key if the named curve were not checked.
        (
            include_str!("testdata/secp256k1-sec1-nopub.pem"),
            "another curve",
        ),
        (include_str!("testdata/rsa.pem"), "of type RSA"),
        (include_str!("testdata/ed448.pem"), "of type Ed448"),
        (include_str!("testdata/p384-pkcs8.pem"), "EC key on P-384"),
        (include_str!("testdata/ed25519-encrypted.pem"), "encrypted"),
        (ED25519_PUB, "no PRIVATE KEY"),
        ("hello", "no PRIVATE KEY"),
        (
            "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
            "PEM",
        ),
    ];
    for (pem, says) in cases {
        let e = AdminSigningKey::from_pem(pem)
            .err()
            .unwrap_or_else(|| panic!("accepted {pem}"))
            .to_string();
        assert!(e.contains(says), "{e:?} should say {says:?}");
    }
    for (pem, says) in [
        (ED25519, "only the public key"),
        (P256_SEC1, "only the public key"),
        ("hello", "no PUBLIC KEY"),
    ] {
        let e = AdminKey::from_pem(pem).err().unwrap().to_string();
        assert!(e.contains(says), "{e:?} should say {says:?}");
    }
}

#[test]
fn keys_are_written_as_pkcs8_v1_and_read_back() {
    use p256::pkcs8::{PrivateKeyInfo, Version, der::Decode};
    for k in [
        AdminSigningKey::generate_ed25519(),
        AdminSigningKey::from_pem(P256_SEC1).unwrap(),
    ] {
        let pem = k.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        let info = PrivateKeyInfo::from_der(der.secret_der()).unwrap();
        assert_eq!(info.version(), Version::V1);
        assert!(info.public_key.is_none());
        let again = AdminSigningKey::from_pem(&pem).unwrap();
        assert_eq!(again.public_key().to_pem(), k.public_key().to_pem());
    }
    // Keys earlier versions wrote (PKCS#8 v2, public key attached) still read.
    let old = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let v2 = old.to_pkcs8_pem(LineEnding::LF).unwrap();
    let read = AdminSigningKey::from_pem(&v2).unwrap();
    assert_eq!(
        read.public_key().to_pem(),
        AdminKey::Ed25519(old.verifying_key()).to_pem()
    );
}

#[test]
fn accepts_valid_and_rejects_forged_expired_and_foreign() {
    let (k, keys) = ed25519();
    let t = k.token(NOW, 300);
    assert_eq!(verify_admin_token(&t, &keys, NOW), Ok(()));
    assert!(matches!(
        verify_admin_token(&t, &keys, NOW + 400),
        Err(AdminTokenError::Expired(100))
    ));
    let (other, _) = ed25519();
    assert!(matches!(
        verify_admin_token(&other.token(NOW, 300), &keys, NOW),
        Err(AdminTokenError::NoKeyVerifies(_))
    ));
    let mut parts: Vec<String> = t.split('.').map(String::from).collect();
    parts[1] = B64URL.encode(format!(r#"{{"iat":{NOW},"exp":99999999999}}"#));
    assert!(matches!(
        verify_admin_token(&parts.join("."), &keys, NOW),
        Err(AdminTokenError::NoKeyVerifies(_))
    ));
    assert_eq!(
        verify_admin_token("garbage", &keys, NOW),
        Err(AdminTokenError::NotJwt)
    );
    // alg confusion: an ES256 header over an Ed25519 key never verifies
    parts = t.split('.').map(String::from).collect();
    parts[0] = B64URL.encode(r#"{"alg":"ES256"}"#);
    assert!(verify_admin_token(&parts.join("."), &keys, NOW).is_err());
    // ... nor an EdDSA header over a P-256 key
    let p = AdminSigningKey::from_pem(P256_PKCS8).unwrap();
    let p_keys = [p.public_key()];
    let mut es = p
        .token(NOW, 300)
        .split('.')
        .map(String::from)
        .collect::<Vec<_>>();
    assert_eq!(verify_admin_token(&es.join("."), &p_keys, NOW), Ok(()));
    es[0] = B64URL.encode(r#"{"alg":"EdDSA"}"#);
    assert!(verify_admin_token(&es.join("."), &p_keys, NOW).is_err());
}

#[test]
fn times_bound_the_token() {
    let (k, keys) = ed25519();
    let check = |claims: String| verify_admin_token(&k.sign_claims(&claims), &keys, NOW);
    use AdminTokenError::*;
    // No iat, however short the exp.
    assert_eq!(check(format!(r#"{{"exp":{}}}"#, NOW + 60)), Err(MissingIat));
    // iat ahead of the trustee's clock: up to the skew, and no further.
    let ahead = |d: i64| format!(r#"{{"iat":{},"exp":{}}}"#, NOW + d, NOW + d + 300);
    assert_eq!(check(ahead(CLOCK_SKEW_SECS)), Ok(()));
    assert_eq!(
        check(ahead(CLOCK_SKEW_SECS + 1)),
        Err(IssuedInFuture(CLOCK_SKEW_SECS + 1))
    );
    // No exp.
    assert_eq!(check(format!(r#"{{"iat":{NOW}}}"#)), Err(MissingExp));
    // Lifetime: at most the bound; never zero or negative.
    let life = |l: i64| format!(r#"{{"iat":{NOW},"exp":{}}}"#, NOW + l);
    assert_eq!(check(life(MAX_TOKEN_LIFETIME_SECS)), Ok(()));
    assert_eq!(
        check(life(MAX_TOKEN_LIFETIME_SECS + 1)),
        Err(BadLifetime(i128::from(MAX_TOKEN_LIFETIME_SECS) + 1))
    );
    assert_eq!(check(life(0)), Err(BadLifetime(0)));
    assert_eq!(check(life(-5)), Err(BadLifetime(-5)));
    // An old iat with a far exp is the long lifetime it is.
    assert!(matches!(
        check(format!(r#"{{"iat":{},"exp":{}}}"#, NOW - 86_400, NOW + 60)),
        Err(BadLifetime(_))
    ));
    // Extreme values do not overflow into acceptance.
    assert!(check(format!(r#"{{"iat":{},"exp":{}}}"#, i64::MIN, i64::MAX)).is_err());
    assert!(check(format!(r#"{{"iat":{NOW},"exp":{}}}"#, i64::MAX)).is_err());
    // nbf ahead beyond the skew.
    assert_eq!(
        check(format!(
            r#"{{"iat":{NOW},"nbf":{},"exp":{}}}"#,
            NOW + 100,
            NOW + 300
        )),
        Err(NotYetValid(100))
    );
    // Times must be integers.
    assert_eq!(
        check(format!(r#"{{"iat":"{NOW}","exp":{}}}"#, NOW + 60)),
        Err(BadClaims)
    );
    // Every refusal says what to do in its message.
    assert!(MissingIat.to_string().contains("iat"));
    assert!(MissingExp.to_string().contains("7200"));
}

#[test]
fn accepts_the_tokens_coco_kbs_client_makes() {
    // kbs-client signs {"iat": now, "exp": now + 7200} (jsonwebtoken), and
    // earlier releases {"iat", "nbf", "exp"} with the same two hours
    // (jwt-simple); the header is {"typ":"JWT","alg":"EdDSA"}.
    let k = AdminSigningKey::from_pem(ED25519).unwrap();
    let keys = [AdminKey::from_pem(ED25519_PUB).unwrap()];
    let sign = |claims: String| {
        let input = format!(
            "{}.{}",
            B64URL.encode(r#"{"typ":"JWT","alg":"EdDSA"}"#),
            B64URL.encode(claims)
        );
        format!("{input}.{}", B64URL.encode(k.signature(input.as_bytes())))
    };
    let current = sign(format!(r#"{{"exp":{},"iat":{NOW}}}"#, NOW + 7200));
    let older = sign(format!(
        r#"{{"iat":{NOW},"exp":{},"nbf":{NOW}}}"#,
        NOW + 7200
    ));
    for t in [current, older] {
        assert_eq!(verify_admin_token(&t, &keys, NOW), Ok(()));
        assert_eq!(verify_admin_token(&t, &keys, NOW + 7200), Ok(()));
    }
}

#[test]
fn cli_tokens_carry_iat_and_a_short_exp() {
    let (k, keys) = ed25519();
    let t = k.token(NOW, CLI_TOKEN_LIFETIME_SECS);
    let claims: serde_json::Value =
        serde_json::from_slice(&B64URL.decode(t.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(claims["iat"], NOW);
    assert_eq!(claims["exp"], NOW + CLI_TOKEN_LIFETIME_SECS);
    assert_eq!(verify_admin_token(&t, &keys, NOW), Ok(()));
}
