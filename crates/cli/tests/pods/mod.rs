//! Helpers of the pod VM tests: the guest image, a busybox image pushed
//! to the test registry, and a search of host directories for bytes that
//! must never reach them.
#![allow(dead_code)]

use super::common::*;
use cocoon_image::owner::{LayerBuilder, push_image};
use cocoon_image::reference::Reference;
use cocoon_image::registry::{RegistryClient, RegistryConfig};
use std::path::{Path, PathBuf};

pub const GREETING: &str = "hello from inside the pod\n";
/// Content only the image holds: it must never land in the host's run
/// state or logs (the image is pulled and unpacked in the guest).
pub const MARKER: &str = "cocoon-layer-marker-6b1f0e";

/// What runs left in the run state directory, but the KVM probe's cache.
pub fn run_state(xdg: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(xdg.join("cocoon/run"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            !p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".kvm-probe")
        })
        .collect()
}

/// Files under `dir` whose bytes contain `needle`.
pub fn grep(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return hits;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            hits.extend(grep(&p, needle));
        } else if std::fs::read(&p)
            .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            hits.push(p);
        }
    }
    hits
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn guest_image() -> PathBuf {
    let dir = std::env::var_os("COCOON_GUEST_IMAGE")
        .map(PathBuf::from)
        .expect("COCOON_GUEST_IMAGE is not set: run scripts/test, which builds the guest image");
    assert!(
        dir.join("vmlinuz").is_file(),
        "{} holds no guest image: run scripts/test",
        dir.display()
    );
    dir
}

/// A busybox image whose default command prints [`GREETING`].
pub fn push_busybox(reg: &Registry, repo_tag: &str) -> String {
    push_busybox_cmd(reg, repo_tag, &["/bin/sh", "-c", "cat /etc/greeting"])
}

/// A busybox image with `cmd` as its default command.
pub fn push_busybox_cmd(reg: &Registry, repo_tag: &str, cmd: &[&str]) -> String {
    push_busybox_salted(reg, repo_tag, cmd, "")
}

/// Like [`push_busybox_cmd`], with `salt` in a file of the first layer so
/// no layer is shared with the other busybox images (`""`: shared).
pub fn push_busybox_salted(reg: &Registry, repo_tag: &str, cmd: &[&str], salt: &str) -> String {
    need("busybox");
    cocoon_kbs_client::install_crypto_provider();
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
    let mut l1 = LayerBuilder::default();
    l1.dir("bin")
        .unwrap()
        .dir("etc")
        .unwrap()
        .dir("tmp")
        .unwrap();
    l1.file("bin/busybox", 0o755, &busybox).unwrap();
    if !salt.is_empty() {
        l1.file("etc/salt", 0o644, salt.as_bytes()).unwrap();
    }
    for applet in [
        "sh",
        "cat",
        "echo",
        "sleep",
        "ls",
        "id",
        "hostname",
        "wc",
        "wget",
        "sha256sum",
        "httpd",
    ] {
        l1.symlink(&format!("bin/{applet}"), "busybox").unwrap();
    }
    let mut l2 = LayerBuilder::default();
    l2.file("etc/greeting", 0o644, GREETING.as_bytes()).unwrap();
    l2.file("etc/marker", 0o644, MARKER.as_bytes()).unwrap();
    let layers = vec![l1.finish().unwrap(), l2.finish().unwrap()];
    let client = RegistryClient::new(RegistryConfig {
        insecure: [reg.addr.clone()].into(),
        ..Default::default()
    })
    .expect("client");
    let image = format!("{}/{repo_tag}", reg.addr);
    rt().block_on(push_image(
        &client,
        &Reference::parse(&image).unwrap(),
        &layers,
        cmd,
    ))
    .expect("push busybox");
    image
}

/// Initdata an owner writes for a pod: the trustee (pinned certificate), a
/// plain-HTTP registry and, if given, an agent policy.
pub fn owner_initdata(reg: &Registry, t: &TrusteeProc, policy: Option<&str>) -> String {
    let cert = std::fs::read_to_string(t.cert_path()).unwrap();
    let aa = format!(
        "[token_configs.kbs]\nurl = \"{}\"\ncert = \"\"\"\n{cert}\"\"\"\n",
        t.url
    );
    let cdh = format!(
        "[kbc]\nname = \"cc_kbc\"\nurl = \"{}\"\nkbs_cert = \"\"\"\n{cert}\"\"\"\n[image]\ninsecure_registries = [\"{}\"]\n",
        t.url, reg.addr
    );
    let mut data = toml::Table::new();
    data.insert("aa.toml".into(), aa.into());
    data.insert("cdh.toml".into(), cdh.into());
    if let Some(p) = policy {
        data.insert("policy.rego".into(), p.into());
    }
    let mut doc = toml::Table::new();
    doc.insert("version".into(), "0.1.0".into());
    doc.insert("algorithm".into(), "sha256".into());
    doc.insert("data".into(), data.into());
    toml::to_string(&doc).unwrap()
}

/// `cocoon image encrypt` of `plain` to `enc`, with a layer key the
/// trustee `t` holds as `kid` (its KEK from `kek_file`, uploaded with the
/// trustee's admin key).
pub fn encrypt_with_trustee_key(
    t: &TrusteeProc,
    registry: &str,
    plain: &str,
    enc: &str,
    kid: &str,
    kek_file: &Path,
) {
    let cert = t.cert_path();
    let key = t.admin_key();
    ok(&cocoon(
        &[
            "image",
            "encrypt",
            plain,
            enc,
            "--insecure-registry",
            registry,
            "--kbs-key",
            kid,
            "--kek-file",
            kek_file.to_str().unwrap(),
            "--url",
            &t.url,
            "--kbs-cert",
            &cert,
            "--admin-key",
            key.to_str().unwrap(),
        ],
        &[],
    ));
}

/// The shell command `line` on a terminal util-linux `script` makes; its
/// output. script's input stays open until the command is done: at the
/// end of its input script sends the terminal's end-of-file character,
/// which a terminal still in canonical mode keeps as a NUL byte that a
/// program making the terminal raw afterwards (ctr, `cocoon run -t`)
/// would read as input and pass to the container.
pub fn on_terminal(line: &str) -> std::process::Output {
    need("script");
    let mut child = std::process::Command::new("script")
        .args(["-q", "-e", "-c", line, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run script");
    let input = child.stdin.take();
    let out = child.wait_with_output().expect("wait for script");
    drop(input);
    out
}
