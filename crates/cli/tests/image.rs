//! End to end: the image pipeline against Debian's `docker-registry` on
//! 127.0.0.1, with skopeo as the independent ocicrypt peer and runc running
//! what was unpacked.

mod common;

use base64::Engine;
use cocoon_image::owner::{LayerBuilder, push_image};
use cocoon_image::reference::Reference;
use cocoon_image::registry::{RegistryClient, RegistryConfig};
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const GREETING: &str = "hello from a cocoon image\n";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn client(reg: &Registry) -> RegistryClient {
    cocoon_kbs_client::install_crypto_provider();
    RegistryClient::new(RegistryConfig {
        insecure: [reg.addr.clone()].into(),
        ..Default::default()
    })
    .expect("client")
}

/// Pushes a three-layer busybox image; the last layer whites out a file
/// of the first. Returns the manifest digest.
fn push_busybox(reg: &Registry, repo_tag: &str) -> String {
    need("busybox");
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
    let mut l1 = LayerBuilder::default();
    l1.dir("bin").unwrap().dir("etc").unwrap();
    l1.file("bin/busybox", 0o755, &busybox).unwrap();
    for applet in ["sh", "cat", "ls", "echo"] {
        l1.symlink(&format!("bin/{applet}"), "busybox").unwrap();
    }
    l1.file("etc/motd", 0o644, b"removed by the top layer\n")
        .unwrap();
    let mut l2 = LayerBuilder::default();
    l2.file("etc/greeting", 0o644, GREETING.as_bytes()).unwrap();
    let mut l3 = LayerBuilder::default();
    l3.file("etc/.wh.motd", 0o644, b"").unwrap();
    let layers = vec![
        l1.finish().unwrap(),
        l2.finish().unwrap(),
        l3.finish().unwrap(),
    ];
    let r = Reference::parse(&format!("{}/{repo_tag}", reg.addr)).unwrap();
    rt().block_on(push_image(
        &client(reg),
        &r,
        &layers,
        &["/bin/sh", "-c", "cat /etc/greeting"],
    ))
    .expect("push busybox")
}

fn openssl(args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

struct Keys {
    rsa: PathBuf,
    rsa_pub: PathBuf,
    ec: PathBuf,
    /// The same EC key as PKCS#8: Go ocicrypt (skopeo) silently ignores
    /// SEC1 `EC PRIVATE KEY` files ("missing private key needed for decryption").
    ec_pkcs8: PathBuf,
    ec_pub: PathBuf,
}

fn keys(dir: &Path) -> Keys {
    need("openssl");
    let k = Keys {
        rsa: dir.join("rsa.pem"),
        rsa_pub: dir.join("rsa.pub"),
        ec: dir.join("ec.pem"),
        ec_pkcs8: dir.join("ec8.pem"),
        ec_pub: dir.join("ec.pub"),
    };
    let s = |p: &PathBuf| p.to_str().unwrap().to_string();
    openssl(&["genrsa", "-out", &s(&k.rsa), "2048"]);
    openssl(&["rsa", "-in", &s(&k.rsa), "-pubout", "-out", &s(&k.rsa_pub)]);
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &s(&k.ec),
    ]);
    openssl(&["ec", "-in", &s(&k.ec), "-pubout", "-out", &s(&k.ec_pub)]);
    openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        &s(&k.ec),
        "-out",
        &s(&k.ec_pkcs8),
    ]);
    k
}

fn skopeo(dir: &Path, args: &[&str]) -> std::process::Output {
    need("skopeo");
    let policy = write(
        dir,
        "skopeo-policy.json",
        br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    );
    Command::new("skopeo")
        .arg("--policy")
        .arg(policy)
        .args(args)
        .output()
        .expect("skopeo")
}

/// `cocoon image pull` into `dir/name`, with a per-test cache.
fn pull(
    reg: &Registry,
    dir: &Path,
    image: &str,
    name: &str,
    extra: &[&str],
) -> (std::process::Output, PathBuf) {
    let dest = dir.join(name);
    let cache = dir.join("cache");
    let mut args = vec![
        "image",
        "pull",
        image,
        "--dest",
        dest.to_str().unwrap(),
        "--insecure-registry",
        &reg.addr,
        "--quiet",
    ];
    if !extra.contains(&"--cache") {
        args.extend_from_slice(&["--cache", cache.to_str().unwrap()]);
    }
    args.extend_from_slice(extra);
    (cocoon(&args, &[]), dest)
}

/// The bundle holds the expected rootfs (whiteout applied) and config.
fn assert_bundle(dest: &Path) {
    let rootfs = dest.join("rootfs");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/greeting")).unwrap(),
        GREETING
    );
    assert!(
        !rootfs.join("etc/motd").exists(),
        "the whiteout removed etc/motd"
    );
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(dest.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["process"]["args"][2], "cat /etc/greeting");
    assert_eq!(cfg["root"]["path"], "rootfs");
}

/// Nothing unpacked is left after a failed pull.
fn assert_nothing_left(dest: &Path) {
    if let Ok(entries) = std::fs::read_dir(dest) {
        let left: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "left in {}: {left:?}", dest.display());
    }
}

fn runc(dest: &Path, id: &str) -> String {
    need("runc");
    let o = Command::new("runc")
        .args(["run", "--bundle"])
        .arg(dest)
        .arg(id)
        .output()
        .expect("runc");
    assert!(
        o.status.success(),
        "runc run: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Layer digests of an OCI layout image written by skopeo.
fn layout_layers(layout: &Path) -> Vec<(String, String)> {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mdigest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let m: Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(mdigest)).unwrap())
            .unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["mediaType"].as_str().unwrap().to_string(),
                l["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn manifest(reg: &Registry, image: &str) -> Value {
    let r = Reference::parse(&format!("{}/{image}", reg.addr)).unwrap();
    let m = rt().block_on(client(reg).manifest(&r)).expect("manifest");
    serde_json::from_slice(&m.bytes).unwrap()
}

/// Pushes hand-made manifest bytes under `image` (as someone who controls
/// the registry could); returns the manifest digest.
fn push_raw_manifest(
    reg: &Registry,
    image: &Reference,
    bytes: Vec<u8>,
    media_type: &str,
) -> String {
    rt().block_on(client(reg).push_manifest(image, bytes, media_type))
        .expect("push manifest")
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[test]
fn jwe_images_interoperate_with_skopeo_and_run_with_runc() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let reg = Registry::start(d);
    push_busybox(&reg, "busybox:plain");
    let k = keys(d);
    let a = &reg.addr;
    let plain = format!("{a}/busybox:plain");

    // Plain image: pulled, unpacked, and run by runc.
    let (o, dest) = pull(&reg, d, &plain, "plain", &[]);
    let stdout = ok(&o);
    assert!(stdout.trim().starts_with("sha256:"), "{stdout}");
    assert_bundle(&dest);
    assert_eq!(runc(&dest, "cocoon-plain"), GREETING);

    // skopeo encrypts (RSA and EC recipients); we decrypt.
    for (tag, public, private) in [
        ("skopeo-rsa", &k.rsa_pub, &k.rsa),
        ("skopeo-ec", &k.ec_pub, &k.ec),
    ] {
        ok(&skopeo(
            d,
            &[
                "copy",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                "--encryption-key",
                &format!("jwe:{}", public.display()),
                &format!("docker://{plain}"),
                &format!("docker://{a}/busybox:{tag}"),
            ],
        ));
        let m = manifest(&reg, &format!("busybox:{tag}"));
        assert!(
            m["layers"][0]["mediaType"]
                .as_str()
                .unwrap()
                .ends_with("+encrypted")
        );
        let (o, dest) = pull(
            &reg,
            d,
            &format!("{a}/busybox:{tag}"),
            tag,
            &["--decryption-key", private.to_str().unwrap()],
        );
        ok(&o);
        assert_bundle(&dest);
        assert_eq!(runc(&dest, &format!("cocoon-{tag}")), GREETING);
    }

    // The layer cache is shared: a second pull downloads nothing, and a
    // layer from the cache is checked again before use.
    let (o, _) = pull(&reg, d, &plain, "plain-again", &[]);
    ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("0.0 MB downloaded"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let skopeo_ec = format!("{a}/busybox:skopeo-ec");
    let (o, dest) = pull(
        &reg,
        d,
        &skopeo_ec,
        "ec-again",
        &["--decryption-key", k.ec.to_str().unwrap()],
    );
    ok(&o);
    assert_bundle(&dest);
    let m = manifest(&reg, "busybox:skopeo-ec");
    let cached = d.join("cache/blobs/sha256").join(
        m["layers"][1]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    let mut bytes = std::fs::read(&cached).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&cached, bytes).unwrap();
    let (o, dest) = pull(
        &reg,
        d,
        &skopeo_ec,
        "ec-tampered-cache",
        &["--decryption-key", k.ec.to_str().unwrap()],
    );
    let err = fails(&o);
    assert!(err.contains("digest mismatch for cached layer"), "{err}");
    assert_nothing_left(&dest);
    // The bad blob was dropped from the cache: the next pull downloads it
    // again and succeeds.
    assert!(!cached.exists());
    let (o, dest) = pull(
        &reg,
        d,
        &skopeo_ec,
        "ec-after-tampered-cache",
        &["--decryption-key", k.ec.to_str().unwrap()],
    );
    ok(&o);
    assert_bundle(&dest);

    // Docker v2 schema 2 manifests, and an index with platform selection.
    ok(&skopeo(
        d,
        &[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--format",
            "v2s2",
            &format!("docker://{plain}"),
            &format!("docker://{a}/busybox:docker"),
        ],
    ));
    assert_eq!(
        manifest(&reg, "busybox:docker")["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let (o, dest) = pull(
        &reg,
        d,
        &format!("{a}/busybox:docker"),
        "docker-v2",
        &["--cache", d.join("cache-v2").to_str().unwrap()],
    );
    ok(&o);
    assert_bundle(&dest);
    let c = client(&reg);
    let digest_of = |tag: &str| {
        rt().block_on(c.manifest(&Reference::parse(&format!("{a}/busybox:{tag}")).unwrap()))
            .unwrap()
    };
    let (amd64, other) = (digest_of("plain"), digest_of("skopeo-rsa"));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": other.digest, "size": other.bytes.len(), "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd64.digest, "size": amd64.bytes.len(), "platform": {"architecture": "amd64", "os": "linux"}},
        ],
    });
    let multi = Reference::parse(&format!("{a}/busybox:multi")).unwrap();
    let index_digest = push_raw_manifest(
        &reg,
        &multi,
        index.to_string().into_bytes(),
        "application/vnd.oci.image.index.v1+json",
    );
    let (o, dest) = pull(&reg, d, &multi.to_string(), "multi", &[]);
    assert_eq!(
        ok(&o).trim(),
        index_digest,
        "the index digest is what the reference resolves to"
    );
    assert_bundle(&dest);

    // Wrong key, and no key: refused with the reason, nothing unpacked.
    let (o, dest) = pull(
        &reg,
        d,
        &format!("{a}/busybox:skopeo-rsa"),
        "wrong-key",
        &["--decryption-key", k.ec.to_str().unwrap()],
    );
    let err = fails(&o);
    assert!(
        err.contains("no key to decrypt")
            && err.contains("cannot unwrap the layer key with any configured key"),
        "{err}"
    );
    assert_nothing_left(&dest);
    let (o, dest) = pull(&reg, d, &format!("{a}/busybox:skopeo-ec"), "no-key", &[]);
    let err = fails(&o);
    assert!(err.contains("no key to decrypt"), "{err}");
    assert_nothing_left(&dest);

    // We encrypt for two recipients; skopeo decrypts with either key and
    // gets back exactly the original layers.
    let out = ok(&cocoon(
        &[
            "image",
            "encrypt",
            &plain,
            &format!("{a}/busybox:cocoon-jwe"),
            "--insecure-registry",
            a,
            "--recipient",
            &format!("jwe:{}", k.rsa_pub.display()),
            "--recipient",
            &format!("jwe:{}", k.ec_pub.display()),
        ],
        &[],
    ));
    assert!(out.trim().starts_with("sha256:"));
    let plain_layers: Vec<String> = manifest(&reg, "busybox:plain")["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let enc = manifest(&reg, "busybox:cocoon-jwe");
    for l in enc["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
        );
        assert!(
            !plain_layers.contains(&l["digest"].as_str().unwrap().to_string()),
            "layer not re-encrypted"
        );
    }
    for (name, private) in [("rsa", &k.rsa), ("ec", &k.ec_pkcs8)] {
        let layout = d.join(format!("skopeo-dec-{name}"));
        ok(&skopeo(
            d,
            &[
                "copy",
                "--src-tls-verify=false",
                "--decryption-key",
                private.to_str().unwrap(),
                &format!("docker://{a}/busybox:cocoon-jwe"),
                &format!("oci:{}:dec", layout.display()),
            ],
        ));
        let got = layout_layers(&layout);
        assert_eq!(
            got.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(),
            plain_layers,
            "skopeo ({name}) recovered the original layers"
        );
        assert!(
            got.iter()
                .all(|(mt, _)| mt == "application/vnd.oci.image.layer.v1.tar+gzip")
        );
    }
    // Without the key skopeo cannot decrypt it either.
    let o = skopeo(
        d,
        &[
            "copy",
            "--src-tls-verify=false",
            "--decryption-key",
            d.join("nokey.pem").to_str().unwrap(),
            &format!("docker://{a}/busybox:cocoon-jwe"),
            &format!("oci:{}:dec", d.join("skopeo-fail").display()),
        ],
    );
    assert!(!o.status.success());
    // And we pull our own encryption with the EC key.
    let (o, dest) = pull(
        &reg,
        d,
        &format!("{a}/busybox:cocoon-jwe"),
        "cocoon-jwe",
        &["--decryption-key", k.ec.to_str().unwrap()],
    );
    ok(&o);
    assert_bundle(&dest);
}

#[test]
fn tampering_is_detected_and_nothing_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let reg = Registry::start(d);
    push_busybox(&reg, "busybox:plain");
    let k = keys(d);
    let a = &reg.addr;
    ok(&cocoon(
        &[
            "image",
            "encrypt",
            &format!("{a}/busybox:plain"),
            &format!("{a}/busybox:enc"),
            "--insecure-registry",
            a,
            "--recipient",
            &format!("jwe:{}", k.ec_pub.display()),
        ],
        &[],
    ));
    let key = ["--decryption-key", k.ec.to_str().unwrap()];
    let c = client(&reg);
    let runtime = rt();

    // Ciphertext changed by someone who controls the registry: the blob
    // digest is consistent (they re-pushed it), but the HMAC is not.
    let mut m = manifest(&reg, "busybox:enc");
    let enc_ref = Reference::parse(&format!("{a}/busybox:enc")).unwrap();
    let digest = m["layers"][1]["digest"].as_str().unwrap().to_string();
    let mut blob = runtime.block_on(c.small_blob(&enc_ref, &digest)).unwrap();
    let mid = blob.len() / 2;
    blob[mid] ^= 0x01;
    let (new_digest, _) = runtime.block_on(c.push_bytes(&enc_ref, blob)).unwrap();
    m["layers"][1]["digest"] = Value::String(new_digest);
    let tampered = Reference::parse(&format!("{a}/busybox:tampered-ciphertext")).unwrap();
    push_raw_manifest(&reg, &tampered, m.to_string().into_bytes(), OCI_MANIFEST);
    let (o, dest) = pull(&reg, d, &tampered.to_string(), "tampered-ciphertext", &key);
    let err = fails(&o);
    assert!(err.contains("HMAC mismatch"), "{err}");
    assert_nothing_left(&dest);

    // The wrapped key annotation changed: the same generic error as a wrong key.
    let mut m = manifest(&reg, "busybox:enc");
    let ann = m["layers"][0]["annotations"]["org.opencontainers.image.enc.keys.jwe"]
        .as_str()
        .unwrap()
        .to_string();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut jwe: Value = serde_json::from_slice(&b64.decode(ann).unwrap()).unwrap();
    let ct = jwe["ciphertext"].as_str().unwrap().to_string();
    jwe["ciphertext"] = Value::String(format!(
        "{}{}",
        if ct.starts_with('A') { "B" } else { "A" },
        &ct[1..]
    ));
    m["layers"][0]["annotations"]["org.opencontainers.image.enc.keys.jwe"] =
        Value::String(b64.encode(jwe.to_string()));
    let r = Reference::parse(&format!("{a}/busybox:tampered-key")).unwrap();
    push_raw_manifest(&reg, &r, m.to_string().into_bytes(), OCI_MANIFEST);
    let (o, dest) = pull(&reg, d, &r.to_string(), "tampered-key", &key);
    let err = fails(&o);
    assert!(
        err.contains("cannot unwrap the layer key with any configured key"),
        "{err}"
    );
    assert_nothing_left(&dest);

    // A blob changed on the registry's disk: digest mismatch while streaming.
    let plain = manifest(&reg, "busybox:plain");
    let l0 = plain["layers"][0]["digest"].as_str().unwrap();
    let file = reg.blob_file(l0);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x80;
    std::fs::write(&file, &bytes).unwrap();
    let fresh = d.join("fresh-cache");
    let (o, dest) = pull(
        &reg,
        d,
        &format!("{a}/busybox:plain"),
        "tampered-blob",
        &["--cache", fresh.to_str().unwrap()],
    );
    let err = fails(&o);
    assert!(err.contains("digest mismatch") && err.contains(l0), "{err}");
    assert_nothing_left(&dest);

    // A manifest changed on the registry's disk: refused before any layer.
    let m_digest = {
        let r = Reference::parse(&format!("{a}/busybox:enc")).unwrap();
        runtime.block_on(c.manifest(&r)).unwrap().digest
    };
    let mfile = reg.blob_file(&m_digest);
    let text = std::fs::read_to_string(&mfile)
        .unwrap()
        .replacen("\"size\":", "\"size\": ", 1);
    std::fs::write(&mfile, text).unwrap();
    let (o, dest) = pull(
        &reg,
        d,
        &format!("{a}/busybox:enc"),
        "tampered-manifest",
        &key,
    );
    let err = fails(&o);
    assert!(err.contains("digest mismatch for manifest"), "{err}");
    assert_nothing_left(&dest);

    // A hostile layer (symlink escaping the root) is refused mid-pull and
    // the staging rootfs, with the layers before it, is removed.
    let mut good = LayerBuilder::default();
    good.file("etc/ok", 0o644, b"fine").unwrap();
    let mut evil = LayerBuilder::default();
    evil.symlink("escape", "../../../../etc").unwrap();
    let evil_ref = Reference::parse(&format!("{a}/hostile:1")).unwrap();
    runtime
        .block_on(push_image(
            &c,
            &evil_ref,
            &[good.finish().unwrap(), evil.finish().unwrap()],
            &["/bin/true"],
        ))
        .unwrap();
    let (o, dest) = pull(&reg, d, &evil_ref.to_string(), "hostile", &[]);
    let err = fails(&o);
    assert!(err.contains("escapes the root"), "{err}");
    assert_nothing_left(&dest);

    // The config's diff_id for layer 1 is not that layer's tar digest (the
    // blob digests are all consistent): refused, plain and encrypted, and
    // the layer before it is not kept either.
    let mut first = LayerBuilder::default();
    first.file("etc/ok", 0o644, b"fine").unwrap();
    let mut second = LayerBuilder::default();
    second
        .file("etc/greeting", 0o644, GREETING.as_bytes())
        .unwrap();
    let (first, first_id) = first.finish().unwrap();
    let (second, second_id) = second.finish().unwrap();
    let plain_ref = Reference::parse(&format!("{a}/wrong-diff-id:plain")).unwrap();
    runtime
        .block_on(push_image(
            &c,
            &plain_ref,
            &[(first, first_id.clone()), (second, first_id.clone())],
            &["/bin/true"],
        ))
        .unwrap();
    let enc_ref = format!("{a}/wrong-diff-id:enc");
    ok(&cocoon(
        &[
            "image",
            "encrypt",
            &plain_ref.to_string(),
            &enc_ref,
            "--insecure-registry",
            a,
            "--recipient",
            &format!("jwe:{}", k.ec_pub.display()),
        ],
        &[],
    ));
    for (image, name) in [(plain_ref.to_string(), "diff-plain"), (enc_ref, "diff-enc")] {
        let (o, dest) = pull(&reg, d, &image, name, &key);
        let err = fails(&o);
        assert!(
            err.contains("layer 1")
                && err.contains("rootfs.diff_ids[1]")
                && err.contains(&first_id)
                && err.contains(&second_id),
            "{err}"
        );
        assert_nothing_left(&dest);
    }
}

fn policy_json(scopes: &[(&str, &Path)]) -> String {
    let mut docker = serde_json::Map::new();
    for (scope, key) in scopes {
        docker.insert(
            scope.to_string(),
            serde_json::json!([{"type": "sigstoreSigned", "keyPath": key, "signedIdentity": {"type": "matchRepository"}}]),
        );
    }
    serde_json::json!({"default": [{"type": "reject"}], "transports": {"docker": docker}})
        .to_string()
}

#[test]
fn kbs_held_keys_and_signature_policies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let reg = Registry::start(d);
    let a = reg.addr.clone();
    let signed_digest = push_busybox(&reg, "busybox:plain");
    push_busybox(&reg, "unsigned:v1");
    push_busybox(&reg, "elsewhere:v1");
    let t = TrusteeProc::start(&d.join("trustee"), &[]);
    let admin_key = t.admin_key();
    let (url, ak) = (t.url.as_str(), admin_key.to_str().unwrap());

    // The owner encrypts with a key that goes into the trustee.
    let kid = "kbs:///default/image-key/busybox";
    let kek: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let kek_file = write(d, "kek.bin", &kek);
    ok(&cocoon(
        &[
            "image",
            "encrypt",
            &format!("{a}/busybox:plain"),
            &format!("{a}/busybox:kbs"),
            "--insecure-registry",
            &a,
            "--kbs-key",
            kid,
            "--kek-file",
            kek_file.to_str().unwrap(),
            "--url",
            url,
            "--admin-key",
            ak,
        ],
        &[],
    ));
    let m = manifest(&reg, "busybox:kbs");
    let packet = m["layers"][0]["annotations"]["org.opencontainers.image.enc.keys.provider.attestation-agent"].as_str().unwrap();
    let packet: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(packet)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(packet["kid"], kid);
    assert_eq!(packet["wrap_type"], "A256GCM");

    // The trustee speaks plain HTTP here: refused unless explicitly allowed.
    let (o, dest) = pull(
        &reg,
        d,
        &format!("{a}/busybox:kbs"),
        "kbs-http",
        &["--kbs", url, "--tee", "sample"],
    );
    let err = fails(&o);
    assert!(
        err.contains("refusing the plain-HTTP KBS") && err.contains("--insecure-http-kbs"),
        "{err}"
    );
    assert_nothing_left(&dest);

    // A guest that attests (sample TEE) gets the key and the image.
    let kbs = ["--kbs", url, "--insecure-http-kbs", "--tee", "sample"];
    let (o, dest) = pull(&reg, d, &format!("{a}/busybox:kbs"), "kbs", &kbs);
    ok(&o);
    assert_bundle(&dest);
    assert_eq!(runc(&dest, "cocoon-kbs"), GREETING);
    // Without a KBS the pipeline says what it needs.
    let (o, dest) = pull(&reg, d, &format!("{a}/busybox:kbs"), "kbs-none", &[]);
    let err = fails(&o);
    assert!(err.contains(kid) && err.contains("--kbs"), "{err}");
    assert_nothing_left(&dest);

    // cosign-style signatures under a policy that requires them.
    let (key, public) = (d.join("cosign.key"), d.join("cosign.pub"));
    ok(&cocoon(
        &[
            "image",
            "keygen",
            "--out",
            key.to_str().unwrap(),
            "--pub-out",
            public.to_str().unwrap(),
        ],
        &[],
    ));
    let out = ok(&cocoon(
        &[
            "image",
            "sign",
            &format!("{a}/busybox:plain"),
            "--key",
            key.to_str().unwrap(),
            "--insecure-registry",
            &a,
        ],
        &[],
    ));
    assert_eq!(out.trim(), signed_digest);
    let busybox_scope = format!("{a}/busybox");
    let unsigned_scope = format!("{a}/unsigned");
    let policy = write(
        d,
        "policy.json",
        policy_json(&[(&busybox_scope, &public), (&unsigned_scope, &public)]).as_bytes(),
    );
    let pol = ["--policy", policy.to_str().unwrap()];
    let (o, dest) = pull(&reg, d, &format!("{a}/busybox:plain"), "signed", &pol);
    ok(&o);
    assert_bundle(&dest);
    let (o, dest) = pull(&reg, d, &format!("{a}/unsigned:v1"), "unsigned", &pol);
    let err = fails(&o);
    assert!(err.contains("no cosign signature"), "{err}");
    assert_nothing_left(&dest);
    let (o, dest) = pull(&reg, d, &format!("{a}/elsewhere:v1"), "elsewhere", &pol);
    let err = fails(&o);
    assert!(err.contains("rejects this scope"), "{err}");
    assert_nothing_left(&dest);
    // The encrypted variant is in the signed scope but was never signed.
    let (o, dest) = pull(
        &reg,
        d,
        &format!("{a}/busybox:kbs"),
        "kbs-unsigned",
        &[&pol[..], &kbs[..]].concat(),
    );
    assert!(fails(&o).contains("no cosign signature"));
    assert_nothing_left(&dest);
    // Another key: the signature does not verify.
    let (other_key, other_pub) = (d.join("other.key"), d.join("other.pub"));
    ok(&cocoon(
        &[
            "image",
            "keygen",
            "--out",
            other_key.to_str().unwrap(),
            "--pub-out",
            other_pub.to_str().unwrap(),
        ],
        &[],
    ));
    let wrong = write(
        d,
        "wrong.json",
        policy_json(&[(&busybox_scope, &other_pub)]).as_bytes(),
    );
    let (o, dest) = pull(
        &reg,
        d,
        &format!("{a}/busybox:plain"),
        "wrong-key",
        &["--policy", wrong.to_str().unwrap()],
    );
    assert!(fails(&o).contains("does not verify"));
    assert_nothing_left(&dest);
    // A signature copied to another image's signature tag: refused.
    let c = client(&reg);
    let runtime = rt();
    let sig_ref = Reference::parse(&format!(
        "{a}/busybox:sha256-{}.sig",
        signed_digest.trim_start_matches("sha256:")
    ))
    .unwrap();
    let sig_manifest = runtime.block_on(c.manifest(&sig_ref)).unwrap();
    let kbs_digest = runtime
        .block_on(c.manifest(&Reference::parse(&format!("{a}/busybox:kbs")).unwrap()))
        .unwrap()
        .digest;
    let stolen = Reference::parse(&format!(
        "{a}/busybox:sha256-{}.sig",
        kbs_digest.trim_start_matches("sha256:")
    ))
    .unwrap();
    push_raw_manifest(&reg, &stolen, sig_manifest.bytes.clone(), OCI_MANIFEST);
    let (o, dest) = pull(
        &reg,
        d,
        &format!("{a}/busybox:kbs"),
        "stolen-sig",
        &[&pol[..], &kbs[..]].concat(),
    );
    let err = fails(&o);
    assert!(
        err.contains(&format!("signature is for {signed_digest}")),
        "{err}"
    );
    assert_nothing_left(&dest);

    // The signature checks out with an independent verifier: openssl over
    // the pushed payload, as `cosign verify --key` does. (Debian's skopeo
    // is built with sigstore disabled, so it cannot be the peer here.)
    let sm: Value = serde_json::from_slice(&sig_manifest.bytes).unwrap();
    let layer = &sm["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    let payload = runtime
        .block_on(c.small_blob(&sig_ref, layer["digest"].as_str().unwrap()))
        .unwrap();
    let p: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(p["critical"]["type"], "cosign container image signature");
    assert_eq!(
        p["critical"]["image"]["docker-manifest-digest"],
        signed_digest.as_str()
    );
    assert_eq!(
        p["critical"]["identity"]["docker-reference"],
        busybox_scope.as_str()
    );
    let sig = base64::engine::general_purpose::STANDARD
        .decode(
            layer["annotations"]["dev.cosignproject.cosign/signature"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let (pf, sf) = (
        write(d, "payload.json", &payload),
        write(d, "payload.sig", &sig),
    );
    for (k, expect_ok) in [(&public, true), (&other_pub, false)] {
        let o = Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(k)
            .arg("-signature")
            .arg(&sf)
            .arg(&pf)
            .output()
            .unwrap();
        assert_eq!(
            o.status.success(),
            expect_ok,
            "openssl: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }

    // Policy and verification key both held by the KBS.
    ok(&t.admin(&[
        "set-resource",
        "kbs:///default/cosign-key/1",
        "--file",
        public.to_str().unwrap(),
    ]));
    let kbs_policy = serde_json::json!({"default": [{"type": "reject"}], "transports": {"docker": {busybox_scope.clone(): [
        {"type": "sigstoreSigned", "keyPath": "kbs:///default/cosign-key/1", "signedIdentity": {"type": "matchRepository"}}]}}});
    let kp = write(d, "kbs-policy.json", kbs_policy.to_string().as_bytes());
    ok(&t.admin(&[
        "set-resource",
        "kbs:///default/security-policy/test",
        "--file",
        kp.to_str().unwrap(),
    ]));
    let from_kbs = ["--policy", "kbs:///default/security-policy/test"];
    let (o, dest) = pull(
        &reg,
        d,
        &format!("{a}/busybox:plain"),
        "kbs-policy",
        &[&from_kbs[..], &kbs[..]].concat(),
    );
    ok(&o);
    assert_bundle(&dest);
    let (o, dest) = pull(
        &reg,
        d,
        &format!("{a}/unsigned:v1"),
        "kbs-policy-unsigned",
        &[&from_kbs[..], &kbs[..]].concat(),
    );
    assert!(fails(&o).contains("rejects this scope"));
    assert_nothing_left(&dest);

    // The trustee refuses the key: the pull stops before any layer.
    let deny = write(
        d,
        "deny.rego",
        b"package policy\nimport rego.v1\ndefault allow := false\n",
    );
    ok(&t.admin(&["set-policy", "resource", "--file", deny.to_str().unwrap()]));
    let (o, dest) = pull(&reg, d, &format!("{a}/busybox:kbs"), "kbs-denied", &kbs);
    let err = fails(&o);
    assert!(err.contains(&format!("fetching the KEK {kid}")), "{err}");
    assert_nothing_left(&dest);
    // The key never shows in the trustee's log or the guest's output.
    let log = t.stop();
    assert!(log.contains("image-key/busybox"), "the log was captured");
    let b64 = base64::engine::general_purpose::STANDARD;
    for text in [log, err] {
        assert!(!text.contains(&b64.encode(&kek)) && !text.contains(&hex::encode(&kek)));
    }
}

/// The data hub pulls inside the guest over CoCo's `ImagePullService`:
/// layer key from the KBS after attestation, signature policy from the KBS.
#[test]
fn data_hub_pulls_encrypted_images() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let reg = Registry::start(d);
    let a = reg.addr.clone();
    push_busybox(&reg, "busybox:plain");
    let t = TrusteeProc::start(&d.join("trustee"), &[]);
    let admin_key = t.admin_key();
    let kid = "kbs:///default/image-key/hub";
    ok(&cocoon(
        &[
            "image",
            "encrypt",
            &format!("{a}/busybox:plain"),
            &format!("{a}/busybox:hub"),
            "--insecure-registry",
            &a,
            "--kbs-key",
            kid,
            "--url",
            &t.url,
            "--admin-key",
            admin_key.to_str().unwrap(),
        ],
        &[],
    ));
    // Only busybox:hub's repository is allowed, unsigned.
    let policy = format!(
        r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{a}/busybox":[{{"type":"insecureAcceptAnything"}}]}}}}}}"#
    );
    let pf = write(d, "policy.json", policy.as_bytes());
    ok(&t.admin(&[
        "set-resource",
        "kbs:///default/security-policy/hub",
        "--file",
        pf.to_str().unwrap(),
    ]));
    let sock = d.join("cdh.sock");
    let addr = format!("unix://{}", sock.display());
    let work = d.join("work");
    // CoCo's cdh.toml, plus the explicit allowance for this plain-HTTP trustee.
    let cdh_toml = write(
        d,
        "cdh.toml",
        format!(
            "[kbc]\nname = \"cc_kbc\"\nurl = \"{}\"\ninsecure_http = true\n",
            t.url
        )
        .as_bytes(),
    );
    let _cdh = Daemon::start(
        &[
            "guest",
            "cdh",
            "--socket",
            &addr,
            "--tee",
            "sample",
            "-c",
            cdh_toml.to_str().unwrap(),
            "--insecure-registry",
            &a,
            "--image-policy",
            "kbs:///default/security-policy/hub",
            "--image-work-dir",
            work.to_str().unwrap(),
        ],
        d.join("cdh.log"),
        || std::os::unix::net::UnixStream::connect(&sock).is_ok(),
    );
    let bundle = d.join("bundle");
    let out = ok(&cocoon(
        &[
            "guest",
            "pull-image",
            "--cdh-socket",
            &addr,
            &format!("{a}/busybox:hub"),
            "--bundle",
            bundle.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(out.trim().starts_with("sha256:"), "{out}");
    assert_bundle(&bundle);
    assert_eq!(runc(&bundle, "cocoon-hub"), GREETING);
    // The cache holds only what the registry served: ciphertext.
    let cached: Vec<_> = std::fs::read_dir(work.join("layers/blobs/sha256"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(cached.len(), 3);
    for f in cached {
        let bytes = std::fs::read(f.path()).unwrap();
        assert_ne!(
            &bytes[..2],
            &[0x1f, 0x8b],
            "a cached layer is not plain gzip"
        );
    }
    // The KBS policy refuses another repository; a relative bundle is refused.
    push_busybox(&reg, "other:v1");
    let o = cocoon(
        &[
            "guest",
            "pull-image",
            "--cdh-socket",
            &addr,
            &format!("{a}/other:v1"),
            "--bundle",
            d.join("b2").to_str().unwrap(),
        ],
        &[],
    );
    let err = fails(&o);
    assert!(err.contains("rejects this scope"), "{err}");
    assert_nothing_left(&d.join("b2"));
    let o = cocoon(
        &[
            "guest",
            "pull-image",
            "--cdh-socket",
            &addr,
            &format!("{a}/busybox:hub"),
            "--bundle",
            "rel",
        ],
        &[],
    );
    assert!(fails(&o).contains("must be absolute"));
}

/// A token service for the registry's bearer auth (what Docker Hub's
/// auth.docker.io does): checks a basic login and issues ES256 JWTs whose
/// `x5c` certificate the registry trusts. Returns the realm URL and the
/// certificate file for the registry's `rootcertbundle`.
fn token_service(dir: &Path, user: &'static str, pass: &'static str) -> (String, PathBuf) {
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::DecodePrivateKey;
    use std::io::{BufRead, BufReader, Write};
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["cocoon-token".into()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let cert_file = write(dir, "token-cert.pem", cert.pem().as_bytes());
    let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
    let signer =
        p256::ecdsa::SigningKey::from_pkcs8_der(&key.serialize_der()).expect("signing key");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let realm = format!("http://{}/token", listener.local_addr().unwrap());
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    );
    std::thread::spawn(move || {
        let b64u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let mut authorized = false;
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                if request.is_empty() {
                    request = line.clone();
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("authorization")
                {
                    authorized = v.trim() == expected;
                }
                line.clear();
            }
            let mut out = stream;
            if !authorized {
                let _ = out.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            let query = request
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .split_once('?')
                .map(|(_, q)| q.to_string())
                .unwrap_or_default();
            let scope = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("scope="))
                .map(|s| {
                    s.replace("%3A", ":")
                        .replace("%2C", ",")
                        .replace("%2F", "/")
                })
                .unwrap_or_default();
            let mut parts = scope.splitn(3, ':');
            let (_, name, actions) = (
                parts.next(),
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "x5c": [x5c]});
            let claims = serde_json::json!({
                "iss": "cocoon-test", "sub": user, "aud": "cocoon-registry",
                "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{name}"),
                "access": [{"type": "repository", "name": name, "actions": actions.split(',').collect::<Vec<_>>()}],
            });
            let signing_input = format!(
                "{}.{}",
                b64u.encode(header.to_string()),
                b64u.encode(claims.to_string())
            );
            let sig: p256::ecdsa::Signature = signer.sign(signing_input.as_bytes());
            let jwt = format!("{signing_input}.{}", b64u.encode(sig.to_bytes()));
            let body = serde_json::json!({"token": jwt}).to_string();
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (realm, cert_file)
}

fn auth_json(dir: &Path, name: &str, registry: &str, user: &str, pass: &str) -> PathBuf {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    write(
        dir,
        name,
        serde_json::json!({"auths": {registry: {"auth": auth}}})
            .to_string()
            .as_bytes(),
    )
}

/// A client logging in to `reg`; `also_insecure` are other plain-HTTP
/// hosts (a token service) the login may go to.
fn client_with_login(
    reg: &Registry,
    also_insecure: &[&str],
    user: &str,
    pass: &str,
) -> RegistryClient {
    cocoon_kbs_client::install_crypto_provider();
    let mut insecure: std::collections::HashSet<String> =
        also_insecure.iter().map(|h| h.to_string()).collect();
    insecure.insert(reg.addr.clone());
    RegistryClient::new(RegistryConfig {
        insecure,
        credentials: [(
            reg.addr.clone(),
            cocoon_image::registry::Credential {
                username: user.into(),
                password: zeroize::Zeroizing::new(pass.into()),
            },
        )]
        .into(),
        ..Default::default()
    })
    .expect("client")
}

/// Registry logins: HTTP basic (htpasswd) and bearer tokens from a token
/// service, with the login read from a file or fetched from the KBS.
#[test]
fn registry_logins_basic_and_bearer() {
    need("htpasswd");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = |reg: &Registry, also_insecure: &[&str]| {
        let mut l = LayerBuilder::default();
        l.file("etc/greeting", 0o644, GREETING.as_bytes()).unwrap();
        let r = Reference::parse(&format!("{}/private/app:v1", reg.addr)).unwrap();
        rt().block_on(push_image(
            &client_with_login(reg, also_insecure, "alice", "s3cret"),
            &r,
            &[l.finish().unwrap()],
            &["/bin/true"],
        ))
        .expect("push with a login");
        r.to_string()
    };

    // HTTP basic.
    let o = Command::new("htpasswd")
        .args(["-Bbn", "alice", "s3cret"])
        .output()
        .unwrap();
    let htpasswd = write(d, "htpasswd", &o.stdout);
    let basic_dir = d.join("basic");
    std::fs::create_dir_all(&basic_dir).unwrap();
    let reg = Registry::start_with(
        &basic_dir,
        &format!(
            "auth:\n  htpasswd:\n    realm: cocoon\n    path: {}\n",
            htpasswd.display()
        ),
    );
    let img = image(&reg, &[]);
    let (o, dest) = pull(&reg, d, &img, "basic-anon", &[]);
    let err = fails(&o);
    assert!(err.contains("wants a login"), "{err}");
    assert_nothing_left(&dest);
    let good = auth_json(d, "auth.json", &reg.addr, "alice", "s3cret");
    let (o, dest) = pull(&reg, d, &img, "basic", &["--auth", good.to_str().unwrap()]);
    ok(&o);
    assert_eq!(
        std::fs::read_to_string(dest.join("rootfs/etc/greeting")).unwrap(),
        GREETING
    );
    let bad = auth_json(d, "bad.json", &reg.addr, "alice", "wrong");
    let (o, _) = pull(
        &reg,
        d,
        &img,
        "basic-bad",
        &["--auth", bad.to_str().unwrap()],
    );
    assert!(fails(&o).contains("credentials refused"));
    drop(reg);

    // Bearer tokens; the login comes from the KBS after attestation.
    let (realm, cert) = token_service(d, "alice", "s3cret");
    let token_dir = d.join("token");
    std::fs::create_dir_all(&token_dir).unwrap();
    let reg = Registry::start_with(
        &token_dir,
        &format!(
            "auth:\n  token:\n    realm: {realm}\n    service: cocoon-registry\n    issuer: cocoon-test\n    rootcertbundle: {}\n",
            cert.display()
        ),
    );
    // The token service is plain HTTP on another port: the login goes
    // there only once that host is marked insecure too.
    let token_host = realm
        .trim_start_matches("http://")
        .trim_end_matches("/token")
        .to_string();
    let img = image(&reg, &[&token_host]);
    let t = TrusteeProc::start(&d.join("trustee"), &[]);
    let login = auth_json(d, "token-auth.json", &reg.addr, "alice", "s3cret");
    ok(&t.admin(&[
        "set-resource",
        "kbs:///default/credential/registry",
        "--file",
        login.to_str().unwrap(),
    ]));
    let from_kbs: [&str; 7] = [
        "--auth",
        "kbs:///default/credential/registry",
        "--kbs",
        &t.url,
        "--insecure-http-kbs",
        "--tee",
        "sample",
    ];
    let (o, dest) = pull(&reg, d, &img, "bearer-clear", &from_kbs);
    let err = fails(&o);
    assert!(
        err.contains(&format!("asks for the login at {realm}"))
            && err.contains(&format!("--insecure-registry {token_host}")),
        "{err}"
    );
    assert_nothing_left(&dest);
    let (o, dest) = pull(
        &reg,
        d,
        &img,
        "bearer",
        &[&from_kbs[..], &["--insecure-registry", token_host.as_str()]].concat(),
    );
    ok(&o);
    assert_eq!(
        std::fs::read_to_string(dest.join("rootfs/etc/greeting")).unwrap(),
        GREETING
    );
    let (o, dest) = pull(&reg, d, &img, "bearer-anon", &[]);
    let err = fails(&o);
    assert!(err.contains("token service answered 401"), "{err}");
    assert_nothing_left(&dest);
}

/// A pull that must resolve to the digest the image was judged as (the pod
/// agent's policy check) stops at the manifest when it resolves to another:
/// the image's layers are gone from the registry, and the error is the
/// digest's, not a failed download.
#[test]
fn a_pull_expecting_another_digest_stops_at_the_manifest() {
    use cocoon_image::pull::{ImagePuller, NoProgress, PullConfig};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let reg = Registry::start(d);
    let digest = push_busybox(&reg, "busybox:judged");
    let image = Reference::parse(&format!("{}/busybox:judged", reg.addr)).unwrap();
    let mut cfg = PullConfig::new(d.join("cache"));
    cfg.registry.insecure = [reg.addr.clone()].into();
    let puller = ImagePuller::new(cfg).unwrap();
    let runtime = rt();
    let (top, _, _) = runtime.block_on(puller.resolve(&image)).unwrap();
    assert_eq!(top, digest, "resolve gives the digest a pull reports");
    assert_eq!(reg.drop_layers("busybox", "judged"), digest);
    let other = format!("sha256:{}", "0".repeat(64));
    let bundle = d.join("bundle");
    let fails_expecting = |expected: &str| {
        let e = runtime
            .block_on(puller.pull_expecting(
                &image,
                &bundle,
                std::sync::Arc::new(NoProgress),
                Some(expected),
            ))
            .unwrap_err()
            .to_string();
        assert_nothing_left(&bundle);
        e
    };
    let e = fails_expecting(&other);
    assert!(
        e.contains(&format!("it now resolves to {digest}, not the {other}")),
        "{e}"
    );
    // Expecting the right digest goes on to the layers (gone here).
    let e = fails_expecting(&digest);
    assert!(!e.contains("resolves to"), "{e}");
}
