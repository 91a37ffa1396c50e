//! End to end with a real software TPM: swtpm, `cocoon tpm enroll`, a
//! trustee that trusts the AK and holds PCR reference values, and the guest
//! services (attestation agent, data hub, REST API) as real processes
//! talking ttrpc over Unix sockets. Then the failure paths: a changed PCR,
//! other initdata, a wrong KBS certificate, an unreachable KBS.

mod common;

use cocoon_tpm::swtpm::Swtpm;
use common::*;
use serde_json::Value;
use std::path::Path;

const INITDATA: &str = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"policy.rego\" = \"package agent_policy\"\n";
const OTHER_INITDATA: &str =
    "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"policy.rego\" = \"package other\"\n";

struct Env<'a> {
    t: &'a TrusteeProc,
    cert: String,
    tcti: String,
}

impl Env<'_> {
    fn admin(&self, args: &[&str]) -> String {
        let mut a = vec![
            "admin",
            "--url",
            &self.t.url,
            "--kbs-cert",
            &self.cert,
            "--admin-key",
        ];
        let key = self.t.admin_key();
        let key = key.to_str().unwrap();
        a.push(key);
        a.extend_from_slice(args);
        ok(&cocoon(&a, &[]))
    }

    fn get_resource(&self, extra: &[&str]) -> std::process::Output {
        let mut a = vec![
            "get-resource",
            "kbs:///default/key/db",
            "--tee",
            "tpm",
            "--tpm",
            &self.tcti,
        ];
        a.extend_from_slice(extra);
        cocoon(&a, &[])
    }
}

fn register_pcrs(env: &Env<'_>, which: &[usize]) {
    let pcrs: Value =
        serde_json::from_str(&ok(&cocoon(&["tpm", "pcrs", "--tpm", &env.tcti], &[]))).unwrap();
    for i in which {
        let name = format!("tpm_pcr{i}");
        let v = pcrs[&name].as_str().unwrap().to_string();
        env.admin(&["add-reference-value", &name, &v]);
    }
}

/// Whether a service accepts connections on the Unix socket `p` (a stale
/// socket file from a killed process does not count).
fn answers(p: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(p).is_ok()
}

fn sock(dir: &Path, name: &str) -> (String, std::path::PathBuf) {
    let p = dir.join(name);
    (format!("unix://{}", p.display()), p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vtpm_guest_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tpm_dir = d.join("tpm");
    std::fs::create_dir_all(&tpm_dir).unwrap();
    let sw = Swtpm::start(&tpm_dir).expect("swtpm must be installed (scripts/test installs it)");
    let tcti = sw.tcti().to_string();

    // Provision the TPM and measure a "boot".
    let ak = d.join("ak.pem");
    let out = cocoon(
        &[
            "tpm",
            "enroll",
            "--tpm",
            &tcti,
            "--out",
            ak.to_str().unwrap(),
        ],
        &[],
    );
    ok(&out);
    assert!(
        std::fs::read_to_string(&ak)
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    for (pcr, what) in [("0", "firmware"), ("4", "kernel"), ("9", "initrd")] {
        ok(&cocoon(
            &["tpm", "extend", "--tpm", &tcti, "--pcr", pcr, what],
            &[],
        ));
    }

    let t = TrusteeProc::start_with(&d.join("trustee"), &[], &[]);
    let cert = t.cert_path();
    let env = Env {
        t: &t,
        cert: cert.clone(),
        tcti: tcti.clone(),
    };
    env.admin(&["add-tpm-ak", "--file", ak.to_str().unwrap()]);
    assert!(env.admin(&["list-tpm-aks"]).contains("added"));
    write(d, "secret", b"tpm-released-secret");
    env.admin(&[
        "set-resource",
        "kbs:///default/key/db",
        "--file",
        d.join("secret").to_str().unwrap(),
    ]);

    // Guest services. The agent binds initdata (PCR 8) at start.
    let init = write(d, "initdata.toml", INITDATA.as_bytes());
    let (aa_addr, aa_path) = sock(d, "aa.sock");
    let (cdh_addr, cdh_path) = sock(d, "cdh.sock");
    let init_s = init.to_str().unwrap();
    let aa = Daemon::start(
        &[
            "guest",
            "aa",
            "--socket",
            &aa_addr,
            "--tee",
            "tpm",
            "--tpm",
            &tcti,
            "--kbs-url",
            &t.url,
            "--kbs-cert",
            &cert,
            "--initdata-toml",
            init_s,
        ],
        d.join("aa.log"),
        || answers(&aa_path),
    );
    let cdh_args = [
        "guest",
        "cdh",
        "--socket",
        &cdh_addr,
        "--aa-socket",
        &aa_addr,
        "--kbs-url",
        &t.url,
        "--kbs-cert",
        &cert,
        "--initdata-toml",
        init_s,
    ];
    let cdh = Daemon::start(&cdh_args, d.join("cdh.log"), || answers(&cdh_path));
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let _rest = Daemon::start(
        &[
            "guest",
            "api-server",
            "--bind",
            &bind,
            "--aa-socket",
            &aa_addr,
            "--cdh-socket",
            &cdh_addr,
            "--features",
            "all",
        ],
        d.join("rest.log"),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );

    // Without reference values the appraisal is not affirming: refused,
    // and the explanation names each value to register, with this guest's.
    let fetch = || {
        cocoon(
            &[
                "guest",
                "get-resource",
                "--cdh-socket",
                &cdh_addr,
                "kbs:///default/key/db",
            ],
            &[],
        )
    };
    let err = fails(&fetch());
    assert!(err.contains("refused") || err.contains("denied"), "{err}");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(INITDATA.as_bytes()));
    let init_needle = format!("claim init_data={digest} is not in reference value 'init_data'");
    let needles = [
        "boot PCR 0 is not pinned",
        "'tpm_pcr2'",
        "'tpm_pcr9'",
        &init_needle,
        "not declared hardware-backed",
    ];
    let explain = t.explain_until(2, |e| needles.iter().all(|n| e.contains(n)));
    for needle in needles {
        assert!(explain.contains(needle), "{needle} in {explain}");
    }

    // The boot PCRs and the initdata pinned: the AK, an admin's word only,
    // still holds hardware at the warning tier.
    register_pcrs(&env, &[0, 1, 2, 3, 4, 5, 6, 7, 9]);
    env.admin(&["add-reference-value", "init_data", &digest]);
    let err = fails(&fetch());
    assert!(err.contains("refused") || err.contains("denied"), "{err}");
    // The newest appraisal names only the hardware claim now.
    let explain = t.explain_until(2, |e| {
        e.contains("--hardware-backed") && !e.contains("not pinned")
    });
    assert!(explain.contains("--hardware-backed"), "{explain}");
    assert!(!explain.contains("not pinned"), "{explain}");

    // Declared hardware-backed (a vTPM the owner accepts): released.
    env.admin(&[
        "add-tpm-ak",
        "--file",
        ak.to_str().unwrap(),
        "--hardware-backed",
    ]);
    assert!(env.admin(&["list-tpm-aks"]).contains("hardware-backed"));
    let o = fetch();
    if !o.status.success() {
        let explain = t.explain();
        panic!(
            "{}\n{explain}\n{}",
            String::from_utf8_lossy(&o.stderr),
            env.admin(&["list-reference-values"])
        );
    }
    let out = ok(&o);
    assert_eq!(out, "tpm-released-secret");

    // A local workload over REST.
    cocoon_kbs_client::install_crypto_provider();
    let http = reqwest::Client::new();
    let base = format!("http://{bind}");
    let r = http
        .get(format!("{base}/cdh/resource/default/key/db"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"tpm-released-secret");
    let tok: Value = http
        .get(format!("{base}/aa/token?token_type=kbs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(tok["token"].as_str().unwrap().split('.').count() == 3);
    assert!(tok["tee_keypair"].as_str().unwrap().contains("PRIVATE KEY"));
    let ev: Value = http
        .get(format!("{base}/aa/evidence?runtime_data=hello"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ev["tpm_quote"]["pcrs"].as_array().unwrap().len(), 24);
    let r = http.get(format!("{base}/aa/token")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .get(format!("{base}/cdh/resource/default/key/missing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let info: Value = http
        .get(format!("{base}/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["tee"], "tpm");

    // Runtime measurement: PCR 23 (the vTPM default) changes and the event shows in the evidence.
    let before: Value =
        serde_json::from_str(&ok(&cocoon(&["tpm", "pcrs", "--tpm", &tcti], &[]))).unwrap();
    let r: Value = http
        .post(format!("{base}/aa/aael"))
        .body(r#"{"domain":"github.com/cocoon","operation":"load","content":"image sha256:abc"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["success"], "true", "{r}");
    let after: Value =
        serde_json::from_str(&ok(&cocoon(&["tpm", "pcrs", "--tpm", &tcti], &[]))).unwrap();
    assert_ne!(before["tpm_pcr23"], after["tpm_pcr23"]);
    let ev: Value = http
        .get(format!("{base}/aa/evidence?runtime_data=x"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ev["aa_eventlog"], "github.com/cocoon load image sha256:abc");
    // A fresh data hub attests with that log; the trustee replays it against PCR 23.
    drop(cdh);
    let _cdh = Daemon::start(&cdh_args, d.join("cdh2.log"), || answers(&cdh_path));
    let r = http
        .get(format!("{base}/cdh/resource/default/key/db"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());

    // Sealed secrets made with `cocoon secret`, unsealed by the data hub.
    let sk = d.join("seal.pem");
    let jwk = d.join("seal.jwk");
    ok(&cocoon(
        &[
            "secret",
            "keygen",
            "--out",
            sk.to_str().unwrap(),
            "--jwk-out",
            jwk.to_str().unwrap(),
        ],
        &[],
    ));
    env.admin(&[
        "set-resource",
        "kbs:///default/sealing/pub",
        "--file",
        jwk.to_str().unwrap(),
    ]);
    let kek = write(d, "kek", &[0x5a; 32]);
    env.admin(&[
        "set-resource",
        "kbs:///default/key/kek",
        "--file",
        kek.to_str().unwrap(),
    ]);
    let plain = write(d, "envelope-plain", b"envelope-secret-value");
    let seal = |kind: &[&str]| {
        let mut a = vec![
            "secret",
            "seal",
            "--signing-key",
            sk.to_str().unwrap(),
            "--kid",
            "kbs:///default/sealing/pub",
        ];
        a.extend_from_slice(kind);
        ok(&cocoon(&a, &[])).trim().to_string()
    };
    let vault = seal(&["vault", "--name", "kbs:///default/key/db"]);
    let envelope = seal(&[
        "envelope",
        "--key-id",
        "kbs:///default/key/kek",
        "--kek-file",
        kek.to_str().unwrap(),
        "--file",
        plain.to_str().unwrap(),
    ]);
    assert!(vault.starts_with("sealed.") && !vault.contains("tpm-released-secret"));
    assert!(!envelope.contains("envelope-secret-value"));
    for (sealed, want) in [
        (&vault, "tpm-released-secret"),
        (&envelope, "envelope-secret-value"),
    ] {
        let f = write(d, "sealed", sealed.as_bytes());
        let out = ok(&cocoon(
            &[
                "guest",
                "unseal",
                "--cdh-socket",
                &cdh_addr,
                f.to_str().unwrap(),
            ],
            &[],
        ));
        assert_eq!(out, want);
    }
    // A sealed secret whose payload was swapped fails its signature.
    let parts: Vec<&str> = vault.split('.').collect();
    let other: Vec<&str> = envelope.split('.').collect();
    let forged = write(
        d,
        "forged",
        format!("sealed.{}.{}.{}", parts[1], other[2], parts[3]).as_bytes(),
    );
    let err = fails(&cocoon(
        &[
            "guest",
            "unseal",
            "--cdh-socket",
            &cdh_addr,
            forged.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(err.contains("signature does not verify"), "{err}");

    // The CLI as a vTPM guest, with the initdata already bound in PCR 8.
    let out = ok(&env.get_resource(&["--url", &t.url, "--kbs-cert", &cert, "--init-data", init_s]));
    assert_eq!(out, "tpm-released-secret");

    // Other initdata: refused on the guest before the KBS is contacted
    // (the KBS URL here is closed, so any contact would fail differently).
    let other_init = write(d, "other.toml", OTHER_INITDATA.as_bytes());
    let closed = format!("https://127.0.0.1:{}", free_port());
    let err = fails(&env.get_resource(&[
        "--url",
        &closed,
        "--kbs-cert",
        &cert,
        "--init-data",
        other_init.to_str().unwrap(),
    ]));
    assert!(err.contains("binds other initdata"), "{err}");
    assert!(!err.contains("cannot reach"), "{err}");

    // Wrong KBS certificate: refused, not retried.
    let other_trustee = TrusteeProc::start_with(&d.join("other-trustee"), &[], &[]);
    let wrong = other_trustee.cert_path();
    let err = fails(&env.get_resource(&["--url", &t.url, "--kbs-cert", &wrong]));
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!err.contains("retrying"), "{err}");

    // Unreachable KBS: retried with backoff, then a clear error.
    let err = fails(&env.get_resource(&["--url", &closed, "--kbs-cert", &cert]));
    assert!(err.contains("retrying"), "{err}");
    assert!(err.contains("cannot reach the KBS"), "{err}");

    // PCR 8 binds initdata: a guest that keeps it back is refused at attest.
    let err = fails(&env.get_resource(&["--url", &t.url, "--kbs-cert", &cert]));
    assert!(err.contains("binds initdata (PCR 8"), "{err}");
    let explain = t.explain_until(2, |e| e.contains("but the guest sent none"));
    assert!(explain.contains("but the guest sent none"), "{explain}");

    // A changed PCR: the next attestation is refused with a readable reason.
    ok(&cocoon(
        &[
            "tpm",
            "extend",
            "--tpm",
            &tcti,
            "--pcr",
            "9",
            "unexpected-module",
        ],
        &[],
    ));
    let err =
        fails(&env.get_resource(&["--url", &t.url, "--kbs-cert", &cert, "--init-data", init_s]));
    assert!(err.contains("refused") || err.contains("denied"), "{err}");
    let explain = t.explain_until(2, |e| e.contains("tpm.pcr09") && e.contains("tpm_pcr9"));
    assert!(
        explain.contains("tpm.pcr09") && explain.contains("tpm_pcr9"),
        "{explain}"
    );

    // Nothing secret in any guest-service log.
    for log in ["aa.log", "cdh.log", "cdh2.log", "rest.log"] {
        let text = std::fs::read_to_string(d.join(log)).unwrap();
        assert!(
            !text.contains("tpm-released-secret") && !text.contains("envelope-secret-value"),
            "{log}"
        );
    }
    drop(aa);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_renewed_and_kbs_comes_from_initdata() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cocoon_kbs_client::install_crypto_provider();
    // HTTPS trustee; the agent learns its URL and certificate only from initdata.
    let t = TrusteeProc::start_with(
        &d.join("trustee"),
        &["--allow-dev-tee"],
        &["--token-lifetime", "2"],
    );
    let cert = std::fs::read_to_string(t.data_dir.join("tls/cert.pem")).unwrap();
    let init = format!(
        "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"aa.toml\" = \'\'\'\n[token_configs.kbs]\nurl = \"{}\"\ncert = \"\"\"\n{}\"\"\"\n\'\'\'\n",
        t.url, cert
    );
    let init = write(d, "initdata.toml", init.as_bytes());
    let (aa_addr, aa_path) = sock(d, "aa.sock");
    let aa = Daemon::start(
        &[
            "guest",
            "aa",
            "--socket",
            &aa_addr,
            "--tee",
            "sample",
            "--initdata-toml",
            init.to_str().unwrap(),
        ],
        d.join("aa.log"),
        || answers(&aa_path),
    );
    let token = || -> Value {
        serde_json::from_str(&ok(&cocoon(
            &["guest", "token", "--aa-socket", &aa_addr],
            &[],
        )))
        .unwrap()
    };
    let a = token();
    let b = token();
    assert_eq!(a["token"], b["token"], "a valid token is reused");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let c = token();
    assert_ne!(a["token"], c["token"], "an expired token is replaced");
    // The token carries the initdata the agent sent.
    let claims = c["token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap()
        .to_string();
    use base64::Engine;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    let annotated = &claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"];
    assert!(
        annotated["init_data_claims"]["aa.toml"]["token_configs"]["kbs"]["url"] == t.url.as_str(),
        "{annotated}"
    );
    // The trustee counted exactly two attestations: one per token.
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(cocoon_kbs_client::pinned_client_config(cert.as_bytes()).unwrap())
        .build()
        .unwrap();
    let metrics = http
        .get(format!("{}/metrics", t.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let attests: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("kbs_attestations_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(attests, 2.0, "{metrics}");
    drop(aa);
}

/// A TPM whose EK certificate chains to a TPM manufacturer CA the trustee
/// was given enrolls its own AK by credential activation, then gets a
/// secret; TPMs of another manufacturer, and a trustee without the
/// intermediate CA, are refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ek_certified_tpm_enrolls_its_own_ak() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A "manufactured" TPM: EK and EK certificate from a local CA.
    let state = d.join("tpm");
    std::fs::create_dir_all(&state).unwrap();
    let ca = d.join("vendor-ca");
    cocoon_tpm::swtpm::manufacture_with_ek_cert(&state, &ca)
        .expect("swtpm_setup (swtpm-tools, installed by scripts/test)");
    let sw = Swtpm::start(&state).unwrap();
    let tcti = sw.tcti().to_string();
    // The trustee trusts the vendor's root and issuing CA.
    let cas = d.join("tpm-cas");
    std::fs::create_dir_all(&cas).unwrap();
    std::fs::copy(
        ca.join("swtpm-localca-rootca-cert.pem"),
        cas.join("root.pem"),
    )
    .unwrap();
    std::fs::copy(ca.join("issuercert.pem"), cas.join("issuer.pem")).unwrap();
    // The test's local CA stands in for a hardware TPM maker's.
    let t = TrusteeProc::start_with(
        &d.join("trustee"),
        &[],
        &["--tpm-hardware-ek-ca", cas.to_str().unwrap()],
    );
    let cert = t.cert_path();
    let env = Env {
        t: &t,
        cert: cert.clone(),
        tcti: tcti.clone(),
    };
    let enroll = |tcti: &str, t: &TrusteeProc| {
        let cert = t.cert_path();
        let args = ["tpm", "enroll", "--tpm", tcti, "--ek-enroll"];
        cocoon(
            &[&args[..], &["--url", &t.url, "--kbs-cert", &cert]].concat(),
            &[],
        )
    };
    let o = enroll(&tcti, &t);
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("enrolled") && stderr.contains("swtpm-localca"),
        "{stderr}"
    );
    let listed = env.admin(&["list-tpm-aks"]);
    assert!(
        listed.contains("by EK certificate under swtpm-localca, hardware-backed"),
        "{listed}"
    );

    // The enrolled AK is trusted: with the boot PCRs pinned (and no
    // initdata, which this guest does not use), a secret is released.
    ok(&cocoon(
        &["tpm", "extend", "--tpm", &tcti, "--pcr", "4", "kernel"],
        &[],
    ));
    register_pcrs(&env, &[0, 1, 2, 3, 4, 5, 6, 7, 9]);
    env.admin(&["add-reference-value", "init_data", "none"]);
    write(d, "secret", b"ek-enrolled-secret");
    env.admin(&[
        "set-resource",
        "kbs:///default/key/db",
        "--file",
        d.join("secret").to_str().unwrap(),
    ]);
    let out = ok(&env.get_resource(&["--url", &t.url, "--kbs-cert", &cert]));
    assert_eq!(out, "ek-enrolled-secret");

    // The challenge endpoint is open, EK certificates are public: a few
    // open challenges per EK (a new one replaces the oldest, so nobody can
    // lock a TPM out), and a bounded chain.
    {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut tpm = cocoon_tpm::Tpm::open(&sw.tcti()).unwrap();
        let ek = tpm.nv_read(cocoon_tpm::swtpm::EK_CERT_NV_INDEX).unwrap();
        let ak = tpm
            .read_public_bytes(cocoon_tpm::DEFAULT_AK_HANDLE)
            .unwrap()
            .unwrap();
        drop(tpm);
        cocoon_kbs_client::install_crypto_provider();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(
                cocoon_kbs_client::pinned_client_config(&std::fs::read(&cert).unwrap()).unwrap(),
            )
            .build()
            .unwrap();
        let url = format!("{}/kbs/v0/tpm/ek-challenge", t.url);
        let ask = |chain: Vec<String>| {
            let body = serde_json::json!({"ek_cert": b64.encode(&ek), "ak_public": b64.encode(&ak), "ek_chain": chain});
            let req = http.post(&url).json(&body);
            async move {
                let r = req.send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        let mut ids = Vec::new();
        for _ in 0..5 {
            let (status, body) = ask(vec![]).await;
            assert_eq!(status, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            ids.push(v["challenge_id"].as_str().unwrap().to_string());
        }
        let act = format!("{}/kbs/v0/tpm/ek-activate", t.url);
        let answer = |id: &str| {
            let req = http
                .post(&act)
                .json(&serde_json::json!({"challenge_id": id, "secret": b64.encode([0u8; 32])}));
            async move {
                let r = req.send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        // The oldest was replaced; the newest is open (and a wrong answer
        // to it is refused as such).
        let (status, body) = answer(&ids[0]).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("replaced EK challenge"), "{body}");
        let (status, body) = answer(&ids[4]).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("not the activated secret"), "{body}");
        let (status, body) = ask(vec![b64.encode(&ek); 5]).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("at most 4"), "{body}");
        // The challenge is gone after one answer, right or wrong; an
        // unknown id is refused alike.
        for id in [ids[4].as_str(), "00"] {
            let (status, body) = answer(id).await;
            assert_eq!(status, 401, "{body}");
            assert!(body.contains("unknown, expired or replaced"), "{body}");
        }
    }

    // Another manufacturer's TPM: its EK certificate does not chain.
    let other_state = d.join("other-tpm");
    std::fs::create_dir_all(&other_state).unwrap();
    cocoon_tpm::swtpm::manufacture_with_ek_cert(&other_state, &d.join("other-ca")).unwrap();
    let other = Swtpm::start(&other_state).unwrap();
    let err = fails(&enroll(&other.tcti().to_string(), &t));
    assert!(
        err.contains("does not chain to a trusted TPM manufacturer CA"),
        "{err}"
    );

    // A trustee with only the root: the guest did not send the intermediate.
    let t2 = TrusteeProc::start_with(
        &d.join("trustee2"),
        &[],
        &["--tpm-ek-ca", cas.join("root.pem").to_str().unwrap()],
    );
    let err = fails(&enroll(&tcti, &t2));
    assert!(err.contains("does not chain"), "{err}");
    // A trustee without --tpm-ek-ca says how to trust the AK instead.
    let t3 = TrusteeProc::start_with(&d.join("trustee3"), &[], &[]);
    let err = fails(&enroll(&tcti, &t3));
    assert!(
        err.contains("--tpm-ek-ca") && err.contains("add-tpm-ak"),
        "{err}"
    );

    // Under a CA given with --tpm-ek-ca (not declared a hardware maker's),
    // an enrolled AK holds hardware at the warning tier: refused, explained.
    let t5 = TrusteeProc::start_with(
        &d.join("trustee5"),
        &[],
        &["--tpm-ek-ca", cas.to_str().unwrap()],
    );
    ok(&enroll(&tcti, &t5));
    let env5 = Env {
        t: &t5,
        cert: t5.cert_path(),
        tcti: tcti.clone(),
    };
    register_pcrs(&env5, &[0, 1, 2, 3, 4, 5, 6, 7, 9]);
    env5.admin(&["add-reference-value", "init_data", "none"]);
    env5.admin(&[
        "set-resource",
        "kbs:///default/key/db",
        "--file",
        d.join("secret").to_str().unwrap(),
    ]);
    let cert5 = t5.cert_path();
    let err = fails(&env5.get_resource(&["--url", &t5.url, "--kbs-cert", &cert5]));
    assert!(err.contains("refused") || err.contains("denied"), "{err}");
    let explain = t5.explain_until(2, |e| {
        e.contains("not declared hardware-backed") && e.contains("--tpm-hardware-ek-ca")
    });
    assert!(
        explain.contains("not declared hardware-backed")
            && explain.contains("--tpm-hardware-ek-ca"),
        "{explain}"
    );

    // An AK an admin already added keeps that record when it also enrolls
    // by EK certificate.
    let t4 = TrusteeProc::start_with(
        &d.join("trustee4"),
        &[],
        &["--tpm-ek-ca", cas.to_str().unwrap()],
    );
    let ak_pem = d.join("ak.pem");
    let out = ak_pem.to_str().unwrap();
    ok(&cocoon(
        &["tpm", "enroll", "--tpm", &tcti, "--out", out],
        &[],
    ));
    let env4 = Env {
        t: &t4,
        cert: t4.cert_path(),
        tcti: tcti.clone(),
    };
    env4.admin(&["add-tpm-ak", "--file", out]);
    let o = enroll(&tcti, &t4);
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("already trusted it"), "{stderr}");
    let listed = env4.admin(&["list-tpm-aks"]);
    assert!(
        listed.contains("by an admin") && !listed.contains("by EK certificate"),
        "{listed}"
    );
}
