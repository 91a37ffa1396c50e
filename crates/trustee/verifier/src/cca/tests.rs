//! Against the real CCA token in `shared/fixtures/cca`, and tokens signed
//! here with generated keys for the platform signature, which needs the
//! platform's CPAK (the fixture's is not published with it).

use super::token::{CoseSign1, integer};
use super::*;
use ciborium::value::Value as Cbor;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

const FIXTURES: cocoon_fixtures::Dir = cocoon_fixtures::Dir("cca");

fn fixture_token() -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/trustee_cca_example_token.cbor")).unwrap()
}

#[test]
fn fixture_parses_and_its_realm_is_bound() {
    let t = CcaToken::parse(&fixture_token()).unwrap();
    assert_eq!(t.platform.profile, "http://arm.com/CCA-SSD/1.0.0");
    assert_eq!(t.platform.sw_components.len(), 13);
    assert_eq!(t.platform.lifecycle, 0x3003);
    assert_eq!(t.platform_cose.alg, -35);
    assert_eq!(t.realm.extensible_measurements.len(), 4);
    verify_realm(&t).unwrap();
    // Not signed by a key we trust.
    let e = verify_platform(&t, &Cpaks::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("not signed by any of the 0 trusted CPAKs"),
        "{e}"
    );
}

/// The claim set has CoCo's names and encodings (the expected-claims file
/// in the fixtures describes another token, so names and types are
/// compared, and values against the token's own bytes).
#[test]
fn claims_have_cocos_shape() {
    let t = CcaToken::parse(&fixture_token()).unwrap();
    let got = claims(&t);
    let want: Value = serde_json::from_slice(
        &std::fs::read(format!("{FIXTURES}/trustee_cca_claims.json")).unwrap(),
    )
    .unwrap();
    for section in ["platform", "realm"] {
        for (k, v) in want[section].as_object().unwrap() {
            let g = &got[section][k];
            assert!(!g.is_null(), "{section}.{k} missing");
            assert_eq!(
                std::mem::discriminant(g),
                std::mem::discriminant(v),
                "{section}.{k} type"
            );
        }
    }
    let names = [
        "measurement-type",
        "measurement-value",
        "signer-id",
        "version",
        "hash-algo-id",
    ];
    let sw0 = want["platform"]["cca-platform-sw-components"][0]
        .as_object()
        .unwrap();
    assert!(sw0.keys().all(|k| names.contains(&k.as_str())));
    for c in got["platform"]["cca-platform-sw-components"]
        .as_array()
        .unwrap()
    {
        let c = c.as_object().unwrap();
        assert!(c.keys().all(|k| names.contains(&k.as_str())), "{c:?}");
        assert!(c.contains_key("measurement-value") && c.contains_key("signer-id"));
    }
    for k in ["init_data", "report_data"] {
        assert_eq!(got[k].as_str().unwrap().len(), 128, "{k}");
    }
    assert_eq!(got["report_data"], hex::encode(&t.realm.challenge));
    assert_eq!(
        got["realm"]["cca-realm-public-key"],
        B64.encode(&t.realm.public_key)
    );
    assert_eq!(got["platform"]["cca-platform-lifecycle"], 12291);
}

struct Keys {
    cpak: EcdsaKeyPair,
    rak: EcdsaKeyPair,
}

fn keys() -> Keys {
    let rng = SystemRandom::new();
    let new_key = || {
        let pk = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pk.as_ref(), &rng).unwrap()
    };
    Keys {
        cpak: new_key(),
        rak: new_key(),
    }
}

fn sign1(key: &EcdsaKeyPair, payload: Vec<u8>) -> Vec<u8> {
    let mut protected = Vec::new();
    ciborium::into_writer(&Cbor::Map(vec![(integer(1), integer(-35))]), &mut protected).unwrap();
    let unsigned = CoseSign1 {
        protected: protected.clone(),
        alg: -35,
        payload: payload.clone(),
        signature: vec![],
    };
    let sig = key
        .sign(&SystemRandom::new(), &unsigned.to_be_signed())
        .unwrap();
    let msg = Cbor::Tag(
        18,
        Box::new(Cbor::Array(vec![
            Cbor::Bytes(protected),
            Cbor::Map(vec![]),
            Cbor::Bytes(payload),
            Cbor::Bytes(sig.as_ref().to_vec()),
        ])),
    );
    let mut out = Vec::new();
    ciborium::into_writer(&msg, &mut out).unwrap();
    out
}

fn cbor(v: &Cbor) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

/// A token in the fixture's layout, signed by `k`, with `challenge` and `rpv`;
/// `bind` = false puts another key's hash in the platform challenge.
fn make_token(k: &Keys, challenge: &[u8], rpv: &[u8], bind: bool) -> Vec<u8> {
    let rak = k.rak.public_key().as_ref().to_vec();
    let bound = if bind {
        ring::digest::digest(&ring::digest::SHA256, &rak)
            .as_ref()
            .to_vec()
    } else {
        vec![7; 32]
    };
    let platform = Cbor::Map(vec![
        (
            integer(265),
            Cbor::Text("http://arm.com/CCA-SSD/1.0.0".into()),
        ),
        (integer(10), Cbor::Bytes(bound)),
        (integer(2396), Cbor::Bytes(vec![1; 32])),
        (integer(256), Cbor::Bytes(vec![2; 33])),
        (integer(2401), Cbor::Bytes(vec![3; 4])),
        (integer(2395), integer(0x3003)),
        (
            integer(2399),
            Cbor::Array(vec![Cbor::Map(vec![
                (integer(1), Cbor::Text("BL".into())),
                (integer(2), Cbor::Bytes(vec![4; 32])),
                (integer(5), Cbor::Bytes(vec![5; 32])),
            ])]),
        ),
        (integer(2402), Cbor::Text("sha-256".into())),
    ]);
    let realm = Cbor::Map(vec![
        (integer(10), Cbor::Bytes(challenge.to_vec())),
        (integer(44235), Cbor::Bytes(rpv.to_vec())),
        (integer(44238), Cbor::Bytes(vec![6; 32])),
        (
            integer(44239),
            Cbor::Array(vec![Cbor::Bytes(vec![0; 32]); 4]),
        ),
        (integer(44240), Cbor::Text("sha-256".into())),
        (integer(44237), Cbor::Bytes(rak)),
        (integer(44236), Cbor::Text("sha-256".into())),
    ]);
    let collection = Cbor::Tag(
        399,
        Box::new(Cbor::Map(vec![
            (integer(44234), Cbor::Bytes(sign1(&k.cpak, cbor(&platform)))),
            (integer(44241), Cbor::Bytes(sign1(&k.rak, cbor(&realm)))),
        ])),
    );
    cbor(&collection)
}

fn verifier(k: &Keys) -> CcaVerifier {
    CcaVerifier {
        cpaks: Arc::new(Cpaks(vec![k.cpak.public_key().as_ref().to_vec()])),
    }
}

fn run(
    v: &CcaVerifier,
    token: &[u8],
    rd: &[u8],
    init: Option<&[u8]>,
) -> Result<TeeClaims, VerifyError> {
    use crate::Verifier;
    let ev = json!({"token": B64.encode(token)});
    v.verify(&VerifyInput {
        evidence: &ev,
        expected_report_data: rd,
        init_data_digest: init,
    })
}

#[test]
fn signed_token_verifies_end_to_end() {
    let k = keys();
    let rd = [9u8; 48];
    let mut challenge = rd.to_vec();
    challenge.resize(64, 0);
    let rpv = [8u8; 64];
    let token = make_token(&k, &challenge, &rpv, true);
    let c = run(&verifier(&k), &token, &rd, Some(&rpv)).unwrap();
    assert_eq!(c.claims["report_data"], hex::encode(&challenge));
    assert_eq!(c.claims["init_data"], hex::encode(rpv));
    assert_eq!(
        c.claims["platform"]["cca-platform-sw-components"][0]["measurement-type"],
        "BL"
    );
    // The token as a byte array (serde's Vec<u8> form) is accepted too.
    let ev = json!({"token": token.clone()});
    assert_eq!(token_from_evidence(&ev).unwrap(), token);
}

#[test]
fn refusals_are_specific() {
    let k = keys();
    let rd = [9u8; 64];
    let rpv = [8u8; 64];
    let token = make_token(&k, &rd, &rpv, true);
    let v = verifier(&k);
    let e = run(&v, &token, &[1; 64], None).unwrap_err();
    assert!(matches!(e, VerifyError::ReportDataMismatch { .. }), "{e}");
    let e = run(&v, &token, &rd, Some(&[8; 32])).unwrap_err();
    assert!(matches!(e, VerifyError::InitDataMismatch), "{e}");
    // Another platform's key.
    let other = keys();
    let e = run(&verifier(&other), &token, &rd, None).unwrap_err();
    assert!(matches!(e, VerifyError::UntrustedKey { .. }), "{e}");
    // The realm token not bound to the platform token.
    let unbound = make_token(&k, &rd, &rpv, false);
    let e = run(&v, &unbound, &rd, None).unwrap_err();
    assert!(
        e.to_string().contains("not the hash of the realm's RAK"),
        "{e}"
    );
    // One flipped bit anywhere in either signed payload.
    let t = CcaToken::parse(&token).unwrap();
    for (name, payload) in [
        ("platform", &t.platform_cose.payload),
        ("realm", &t.realm_cose.payload),
    ] {
        let at = token
            .windows(payload.len())
            .position(|w| w == payload.as_slice())
            .unwrap();
        for off in [payload.len() / 3, payload.len() - 3] {
            let mut m = token.clone();
            m[at + off] ^= 0x01;
            let e = match run(&v, &m, &rd, None) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{name} bit {off} accepted"),
            };
            assert!(
                e.contains("signature")
                    || e.contains("not signed by any")
                    || e.contains("malformed")
                    || e.contains("hash of the realm"),
                "{name} bit {off}: {e}"
            );
        }
    }
    // The fixture's platform is not trusted by this verifier.
    let e = run(&v, &fixture_token(), &rd, None).unwrap_err();
    assert!(
        e.to_string()
            .contains("not signed by any of the 1 trusted CPAKs"),
        "{e}"
    );
}

#[test]
fn malformed_tokens_are_errors() {
    let raw = fixture_token();
    for cut in [0, 1, 10, raw.len() / 2, raw.len() - 1] {
        assert!(CcaToken::parse(&raw[..cut]).is_err(), "cut {cut}");
    }
    let mut junk = raw.clone();
    junk.push(0);
    assert!(
        CcaToken::parse(&junk)
            .unwrap_err()
            .to_string()
            .contains("trailing")
    );
    let mut tag = raw.clone();
    tag[2] = 0x90; // tag 400
    assert!(
        CcaToken::parse(&tag)
            .unwrap_err()
            .to_string()
            .contains("tag 400")
    );
    assert!(
        CcaToken::parse(&cbor(&Cbor::Map(vec![])))
            .unwrap_err()
            .to_string()
            .contains("no platform token")
    );
    let e = token_from_evidence(&json!({"token": [1, 300]})).unwrap_err();
    assert!(e.to_string().contains("byte array"), "{e}");
}

#[test]
fn cpaks_load_from_pem_and_jwk() {
    let k = keys();
    let point = k.cpak.public_key().as_ref().to_vec();
    let b64u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwk = json!({"kty": "EC", "crv": "P-384", "x": b64u.encode(&point[1..49]), "y": b64u.encode(&point[49..])});
    assert_eq!(parse_keys(&jwk.to_string()).unwrap(), vec![point.clone()]);
    let set = json!({"keys": [jwk]});
    assert_eq!(parse_keys(&set.to_string()).unwrap().len(), 1);
    assert!(parse_keys("{\"kty\":\"RSA\"}").is_err());
    assert!(parse_keys("nonsense").is_err());
}
