//! Untrusted bytes into every parser in this crate: random and mutated
//! inputs must give an error, never a panic.

use cocoon_types::initdata::InitData;
use cocoon_types::jwe::{FlattenedJwe, SealingKey, TeeKeyPair};
use cocoon_types::resource::{ResourcePath, ResourceUri};
use cocoon_types::sealed::SealedSecret;
use rand_core::{OsRng, RngCore};

fn random_bytes(max: usize) -> Vec<u8> {
    let len = (OsRng.next_u32() as usize) % max;
    let mut v = vec![0u8; len];
    OsRng.fill_bytes(&mut v);
    v
}

fn mutate(seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..(1 + OsRng.next_u32() % 4) {
        if v.is_empty() {
            break;
        }
        let i = OsRng.next_u32() as usize % v.len();
        v[i] = OsRng.next_u32() as u8;
    }
    v
}

#[test]
fn parsers_never_panic_on_random_or_mutated_input() {
    let key = TeeKeyPair::generate_ec();
    let jwe = SealingKey::new(&key.public_jwk())
        .unwrap()
        .seal(b"payload")
        .unwrap();
    let jwe_json = serde_json::to_vec(&jwe).unwrap();
    let initdata = b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"http://x\"\n'''\n";
    let sk = p256::ecdsa::SigningKey::random(&mut OsRng);
    let sealed = cocoon_types::sealed::seal(
        &cocoon_types::sealed::envelope_encrypt(b"x", &[1; 32], "kbs:///a/b/c").unwrap(),
        &sk,
        "kbs:///a/b/k",
    )
    .unwrap();
    let mut opened = 0;
    for i in 0..3000 {
        let raw = if i % 2 == 0 {
            random_bytes(256)
        } else {
            mutate(&jwe_json)
        };
        let text = String::from_utf8_lossy(&raw);
        let _ = ResourcePath::parse(&text);
        let _ = ResourceUri::parse(&format!("kbs:///{text}"));
        let _ = InitData::parse(&String::from_utf8_lossy(&mutate(initdata)));
        let _ = SealedSecret::parse(&String::from_utf8_lossy(&mutate(sealed.as_bytes())));
        let _ = SealedSecret::parse(&text);
        if let Ok(j) = serde_json::from_slice::<FlattenedJwe>(&raw)
            && let Ok(plain) = key.decrypt(&j)
        {
            opened += 1;
            assert_eq!(
                &*plain, b"payload",
                "a tampered JWE must never open to other bytes"
            );
        }
    }
    assert!(opened < 1500, "mutated JWEs must not open");
}
