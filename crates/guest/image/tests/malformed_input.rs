//! Random and mutated untrusted input for every parser of the image
//! pipeline: layer tarballs, JWE and key-provider annotations, signature
//! policies, references and auth files. Each must return an error or a
//! result, never panic; an unpack must never write outside its root.

use base64::Engine;
use cocoon_image::keys::{PrivateKey, PublicKey};
use cocoon_image::ocicrypt::provider::AnnotationPacket;
use cocoon_image::ocicrypt::{DecryptConfig, LayerKey, jwe};
use cocoon_image::owner::LayerBuilder;
use cocoon_image::reference::Reference;
use cocoon_image::registry::parse_auth_json;
use cocoon_image::signature::Policy;
use cocoon_image::unpack::{Rootfs, UnpackOptions};
use std::collections::HashMap;
use std::io::Read;

/// xorshift64*, seeded per test so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// Flips, overwrites, truncates, duplicates or inserts bytes.
    fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut v = input.to_vec();
        for _ in 0..1 + self.below(4) {
            if v.is_empty() {
                v.push(self.next() as u8);
                continue;
            }
            let at = self.below(v.len());
            match self.below(6) {
                0 => v[at] ^= 1 << self.below(8),
                1 => v[at] = self.next() as u8,
                2 => v.truncate(at),
                3 => {
                    let end = (at + self.below(64)).min(v.len());
                    let chunk = v[at..end].to_vec();
                    v.splice(at..at, chunk);
                }
                4 => v.insert(at, b"0123456789./\\x00\"{}[],:"[self.below(22)]),
                _ => {
                    let end = (at + self.below(16)).min(v.len());
                    v.drain(at..end);
                }
            }
        }
        v
    }
}

fn sample_tar() -> Vec<u8> {
    let mut b = LayerBuilder::default();
    b.dir("etc").unwrap();
    b.file("etc/passwd", 0o644, b"root:x:0:0::/root:/bin/sh\n")
        .unwrap();
    b.symlink("etc/link", "passwd").unwrap();
    b.file("etc/.wh.gone", 0o644, b"").unwrap();
    b.file("bin/tool", 0o755, &[7u8; 3000]).unwrap();
    b.symlink("abs", "/etc/passwd").unwrap();
    let (gz, _) = b.finish().unwrap();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_end(&mut tar)
        .unwrap();
    tar
}

#[test]
fn mutated_layer_tarballs_never_escape_or_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let tar = sample_tar();
    let mut rng = Rng(0x5eed_0001);
    let opts = UnpackOptions {
        allow_devices: false,
        preserve_ownership: false,
    };
    let (mut ok, mut refused) = (0, 0);
    for i in 0..1500 {
        let input = if i % 10 == 0 {
            (0..rng.below(4096)).map(|_| rng.next() as u8).collect()
        } else {
            rng.mutate(&tar)
        };
        let root = tmp.path().join(format!("r{}", i % 8));
        let _ = std::fs::remove_dir_all(&root);
        let streamed = Rootfs::open(&root, opts.clone())
            .unwrap()
            .apply(input.as_slice());
        // The same bytes applied from memory (the whole-layer path, which
        // skips entries by seeking) come to the same verdict.
        let twin = tmp.path().join(format!("m{}", i % 8));
        let _ = std::fs::remove_dir_all(&twin);
        let in_memory = Rootfs::open(&twin, opts.clone())
            .unwrap()
            .apply_bytes(&input);
        assert_eq!(
            streamed.as_ref().map(|s| s.entries).ok(),
            in_memory.as_ref().map(|s| s.entries).ok(),
            "input {i}: {streamed:?} streamed, {in_memory:?} from memory"
        );
        match streamed {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "input {i} wrote outside the root"
        );
    }
    assert!(
        ok > 0 && refused > 0,
        "both outcomes exercised: {ok} ok, {refused} refused"
    );
}

#[tokio::test]
async fn mutated_annotations_never_panic() {
    let sk = p256::SecretKey::random(&mut rand_core::OsRng);
    let key = LayerKey::generate();
    let mut mac = key.mac();
    mac.update(b"ciphertext");
    let ann = key
        .annotations(
            mac,
            "sha256:00",
            &[PublicKey::Ec(sk.public_key())],
            &[("kbs:///a/b/c".into(), Default::default())],
        )
        .unwrap();
    let cfg = DecryptConfig {
        private_keys: std::sync::Arc::new(vec![PrivateKey::Ec(sk)]),
        fetcher: None,
    };
    let good: HashMap<String, String> = ann.clone().into_iter().collect();
    assert!(LayerKey::unwrap("sha256:l", &good, &cfg).await.is_ok());
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut rng = Rng(0x5eed_0002);
    let names: Vec<String> = ann.keys().cloned().collect();
    for _ in 0..3000 {
        let mut a = good.clone();
        let name = &names[rng.below(names.len())];
        let raw = b64.decode(&a[name]).unwrap_or_default();
        // Mutate the decoded JSON (and sometimes the base64 itself).
        let m = rng.mutate(&raw);
        let v = if rng.below(4) == 0 {
            String::from_utf8_lossy(&rng.mutate(a[name].as_bytes())).into_owned()
        } else {
            b64.encode(m)
        };
        a.insert(name.clone(), v);
        let _ = LayerKey::unwrap("sha256:l", &a, &cfg).await;
    }
    let jwe_json = b64
        .decode(&good["org.opencontainers.image.enc.keys.jwe"])
        .unwrap();
    for _ in 0..5000 {
        let _ = jwe::open(&rng.mutate(&jwe_json), &cfg.private_keys);
        let _ = AnnotationPacket::parse(&b64.encode(rng.mutate(br#"{"kid":"kbs:///a/b/c","wrapped_data":"AAAA","iv":"AAAAAAAAAAAAAAAA","wrap_type":"A256GCM"}"#)));
    }
}

#[test]
fn mutated_policies_references_and_auth_files_never_panic() {
    let policy = br#"{"default":[{"type":"reject"}],"transports":{"docker":{"r.io/a":[{"type":"sigstoreSigned","keyPath":"/k.pub","signedIdentity":{"type":"matchRepository"}}],"*.r.io":[{"type":"insecureAcceptAnything"}]}}}"#;
    assert!(Policy::parse(policy).is_ok());
    let auth = br#"{"auths":{"r.io":{"auth":"dTpw"}}}"#;
    let reference = b"r.io:5000/team/app:v1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let mut rng = Rng(0x5eed_0003);
    for _ in 0..20_000 {
        if let Ok(p) = Policy::parse(&rng.mutate(policy))
            && let Ok(r) = Reference::parse("r.io/a/b:c")
        {
            let _ = p.requirements_for(&r);
        }
        let _ = parse_auth_json(&rng.mutate(auth));
        if let Ok(r) = Reference::parse(&String::from_utf8_lossy(&rng.mutate(reference))) {
            // What parses prints and re-parses to the same thing.
            assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
        }
    }
}
