//! Arbitrary bytes as a JWE, a key-provider packet, and a pubopts
//! annotation set.
#![no_main]

use base64::Engine;
use cocoon_image::keys::PrivateKey;
use cocoon_image::ocicrypt::provider::AnnotationPacket;
use cocoon_image::ocicrypt::jwe;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn keys() -> &'static [PrivateKey] {
    static K: OnceLock<Vec<PrivateKey>> = OnceLock::new();
    K.get_or_init(|| vec![PrivateKey::Ec(p256::SecretKey::random(&mut rand_core::OsRng))])
}

fuzz_target!(|data: &[u8]| {
    let _ = jwe::open(data, keys());
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    if let Ok(p) = AnnotationPacket::parse(&b64) {
        let _ = p.unwrap(&[0u8; 32]);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = AnnotationPacket::parse(s);
    }
});
