//! End-to-end tests of the trustee: the real `cocoon` binary on 127.0.0.1,
//! driven by the `cocoon` CLI and by raw HTTP.

mod common;
#[path = "trustee/hsm.rs"]
mod hsm;
#[path = "trustee/replicas.rs"]
mod replicas;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use cocoon_types::jwe::{FlattenedJwe, TeeKeyPair};
use cocoon_types::{HashAlgorithm, binding};
use common::*;
use serde_json::{Value, json};

struct Raw {
    http: reqwest::Client,
    url: String,
}

struct Resp {
    status: u16,
    cookie: Option<String>,
    body: Value,
}

impl Raw {
    fn new(url: &str) -> Self {
        cocoon_kbs_client::install_crypto_provider();
        Self {
            http: reqwest::Client::new(),
            url: url.to_string(),
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        let r = rb.send().await.expect("request");
        let status = r.status().as_u16();
        let cookie = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .and_then(|kv| kv.strip_prefix("kbs-session-id="))
            .map(String::from);
        let text = r.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp {
            status,
            cookie,
            body,
        }
    }

    async fn post(&self, path: &str, body: &Value, cookie: Option<&str>) -> Resp {
        let mut rb = self
            .http
            .post(format!("{}/kbs/v0/{path}", self.url))
            .json(body);
        if let Some(c) = cookie {
            rb = rb.header("cookie", format!("kbs-session-id={c}"));
        }
        self.send(rb).await
    }

    async fn get(&self, path: &str, cookie: Option<&str>, bearer: Option<&str>) -> Resp {
        let mut rb = self.http.get(format!("{}/kbs/v0/{path}", self.url));
        if let Some(c) = cookie {
            rb = rb.header("cookie", format!("kbs-session-id={c}"));
        }
        if let Some(b) = bearer {
            rb = rb.bearer_auth(b);
        }
        self.send(rb).await
    }

    async fn auth(&self) -> (String, String) {
        let r = self
            .post(
                "auth",
                &json!({"version": "0.4.0", "tee": "sample", "extra-params": ""}),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let nonce = r.body["nonce"].as_str().expect("nonce").to_string();
        assert_eq!(B64.decode(&nonce).unwrap().len(), 32);
        assert_eq!(r.body["extra-params"], json!(""));
        (r.cookie.expect("cookie"), nonce)
    }

    fn attestation(nonce: &str, key: &TeeKeyPair) -> Value {
        let pk = key.public_jwk();
        let rd = binding::primary_report_data(HashAlgorithm::Sha384, nonce, &pk, "").unwrap();
        json!({
            "init-data": null,
            "runtime-data": {"nonce": nonce, "tee-pubkey": pk},
            "tee-evidence": {"primary_evidence": {"svn": "1", "report_data": B64.encode(rd)}, "additional_evidence": ""},
        })
    }

    /// auth for `tee`, then attest with `evidence` as primary evidence.
    async fn attest_evidence(&self, tee: &str, key: &TeeKeyPair, evidence: Value) -> Resp {
        let r = self
            .post(
                "auth",
                &json!({"version": "0.4.0", "tee": tee, "extra-params": ""}),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let (cookie, nonce) = (
            r.cookie.unwrap(),
            r.body["nonce"].as_str().unwrap().to_string(),
        );
        let att = json!({
            "init-data": null,
            "runtime-data": {"nonce": nonce, "tee-pubkey": key.public_jwk()},
            "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
        });
        self.post("attest", &att, Some(&cookie)).await
    }

    /// auth + attest; returns (cookie, token).
    async fn attest(&self, key: &TeeKeyPair) -> (String, String) {
        let (cookie, nonce) = self.auth().await;
        let r = self
            .post("attest", &Self::attestation(&nonce, key), Some(&cookie))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        (
            r.cookie.unwrap_or(cookie),
            r.body["token"].as_str().unwrap().to_string(),
        )
    }
}

fn assert_error(r: &Resp, status: u16, variant: &str, detail_has: &str) {
    assert_eq!(r.status, status, "{:?}", r.body);
    let t = r.body["type"].as_str().unwrap_or_default();
    assert!(
        t.ends_with(&format!("/{variant}")),
        "type {t} should be {variant}"
    );
    let d = r.body["detail"].as_str().unwrap_or_default();
    assert!(
        d.contains(detail_has),
        "detail {d:?} should mention {detail_has:?}"
    );
}

fn jwt_claims(token: &str) -> Value {
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64URL.decode(p).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_flow_over_self_signed_https() {
    let dir = tempfile::tempdir().unwrap();
    let t = TrusteeProc::start_with(&dir.path().join("data"), &["--allow-dev-tee"], &[]);
    assert!(t.url.starts_with("https://"), "{}", t.url);
    let cert = t.data_dir.join("tls/cert.pem");
    let cert = cert.to_str().unwrap();
    let secret = write(dir.path(), "s", b"the-owner-secret\x00\x01");
    // (TrusteeProc::admin passes the trustee's certificate.)
    ok(&t.admin(&[
        "set-resource",
        "kbs:///default/key/1",
        "--file",
        secret.to_str().unwrap(),
    ]));
    let out = t.guest(
        "get-resource",
        &[
            "--kbs-cert",
            cert,
            "kbs:///default/key/1",
            "--tee",
            "sample",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"the-owner-secret\x00\x01");
    // The token printed by `cocoon attest` is an EAR with an affirming sample appraisal.
    let token = ok(&t.guest("attest", &["--kbs-cert", cert]));
    let claims = jwt_claims(token.trim());
    assert_eq!(claims["submods"]["cpu0"]["ear.status"], "affirming");
    assert_eq!(
        claims["eat_profile"],
        "tag:github.com,2024:confidential-containers/Trustee"
    );
    let ev = &claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"];
    assert_eq!(ev["sample"]["launch_digest"], "abcde");
    assert_eq!(ev["runtime_data_claims"]["additional-evidence"], "");
    // Without the pinned certificate, an https trustee is refused.
    let other = write(dir.path(), "other.pem", rcgen_like_cert().as_bytes());
    let out = t.guest(
        "get-resource",
        &[
            "--kbs-cert",
            other.to_str().unwrap(),
            "kbs:///default/key/1",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the KBS"));
}

/// A certificate that is not the trustee's: another trustee's self-signed one.
fn rcgen_like_cert() -> String {
    let dir = tempfile::tempdir().unwrap();
    let t = TrusteeProc::start_with(&dir.path().join("d2"), &[], &[]);
    let pem = std::fs::read_to_string(t.data_dir.join("tls/cert.pem")).unwrap();
    drop(t);
    pem
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_http_flow_with_ec_and_rsa_keys_and_bearer_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let t = TrusteeProc::start(&dir.path().join("data"), &[]);
    let secret = write(dir.path(), "s", b"raw-secret");
    ok(&t.admin(&[
        "set-resource",
        "kbs:///default/key/raw",
        "--file",
        secret.to_str().unwrap(),
    ]));
    let raw = Raw::new(&t.url);
    for key in [
        TeeKeyPair::generate_ec(),
        TeeKeyPair::generate_rsa(2048).unwrap(),
    ] {
        let (cookie, token) = raw.attest(&key).await;
        let r = raw
            .get("resource/default/key/raw", Some(&cookie), None)
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let jwe: FlattenedJwe = serde_json::from_value(r.body).unwrap();
        assert_eq!(&*key.decrypt(&jwe).unwrap(), b"raw-secret");
        // The same token as Bearer, without the cookie.
        let r = raw
            .get("resource/default/key/raw", None, Some(&token))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let jwe: FlattenedJwe = serde_json::from_value(r.body).unwrap();
        assert_eq!(&*key.decrypt(&jwe).unwrap(), b"raw-secret");
        // Another key cannot open it.
        assert!(TeeKeyPair::generate_ec().decrypt(&jwe).is_err());
        // A repeated attest on an attested session returns the same token.
        let (c2, nonce) = raw.auth().await;
        let r1 = raw
            .post("attest", &Raw::attestation(&nonce, &key), Some(&c2))
            .await;
        let c3 = r1.cookie.clone().unwrap();
        let r2 = raw
            .post("attest", &Raw::attestation(&nonce, &key), Some(&c3))
            .await;
        assert_eq!(r1.body["token"], r2.body["token"]);
    }
    // A forged Bearer token (payload swapped) is refused.
    let key = TeeKeyPair::generate_ec();
    let (_, token) = raw.attest(&key).await;
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut claims = jwt_claims(&token);
    claims["submods"]["cpu0"]["ear.status"] = json!("affirming");
    claims["exp"] = json!(claims["exp"].as_i64().unwrap() + 3600);
    let forged_payload = B64URL.encode(claims.to_string());
    parts[1] = &forged_payload;
    let r = raw
        .get("resource/default/key/raw", None, Some(&parts.join(".")))
        .await;
    assert_error(&r, 401, "TokenVerifierError", "signature");
    // The JWKS publishes the token key.
    let jwks: Value = reqwest::get(format!("{}/.well-known/jwks.json", t.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["crv"], "P-256");
    let metrics = reqwest::get(format!("{}/metrics", t.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kbs_attestations_total{tee=\"sample\",result=\"affirming\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kbs_resource_releases_total{result=\"released\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kbs_http_request_duration_seconds"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_client_mistake_gets_a_clear_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let t = TrusteeProc::start(&dir.path().join("data"), &["--session-timeout", "2"]);
    let raw = Raw::new(&t.url);
    // malformed JSON
    let r = raw
        .send(
            raw.http
                .post(format!("{}/kbs/v0/auth", t.url))
                .body("{not json"),
        )
        .await;
    assert_error(&r, 400, "SerdeError", "expected a KBS Request");
    // unknown TEE, unsupported TEE, unsupported version
    let r = raw
        .post(
            "auth",
            &json!({"version": "0.4.0", "tee": "quantum", "extra-params": ""}),
            None,
        )
        .await;
    assert_error(&r, 400, "AttestationError", "unknown TEE 'quantum'");
    let r = raw
        .post(
            "auth",
            &json!({"version": "0.4.0", "tee": "se", "extra-params": ""}),
            None,
        )
        .await;
    assert_error(&r, 400, "AttestationError", "not supported");
    let r = raw
        .post(
            "auth",
            &json!({"version": "0.1.1", "tee": "sample", "extra-params": ""}),
            None,
        )
        .await;
    assert_error(&r, 400, "AttestationError", "0.4.0");
    // missing, forged and expired cookies
    let key = TeeKeyPair::generate_ec();
    let r = raw.post("attest", &Raw::attestation("x", &key), None).await;
    assert_error(&r, 401, "TokenNotFound", "POST /kbs/v0/auth");
    let (cookie, nonce) = raw.auth().await;
    let (head, body) = cookie.rsplit_once('.').expect("2.<key id>.<sealed>");
    let mut forged = B64URL.decode(body).unwrap();
    forged[15] ^= 0x40;
    let r = raw
        .post(
            "attest",
            &Raw::attestation(&nonce, &key),
            Some(&format!("{head}.{}", B64URL.encode(forged))),
        )
        .await;
    assert_error(&r, 401, "TokenNotFound", "not valid");
    let r = raw.get("resource/default/key/1", Some(&cookie), None).await;
    assert_error(&r, 401, "TokenNotFound", "not attested");
    // replayed evidence: made for one session's nonce, sent with another session
    let (other_cookie, _) = raw.auth().await;
    let r = raw
        .post(
            "attest",
            &Raw::attestation(&nonce, &key),
            Some(&other_cookie),
        )
        .await;
    assert_error(&r, 401, "AttestationError", "nonce");
    // evidence whose report data binds another key
    let mut att = Raw::attestation(&nonce, &key);
    att["runtime-data"]["tee-pubkey"] =
        serde_json::to_value(TeeKeyPair::generate_ec().public_jwk()).unwrap();
    let r = raw.post("attest", &att, Some(&cookie)).await;
    assert_error(&r, 401, "AttestationError", "report data does not match");
    // oversized body
    // The server answers 413 before reading the whole body and may close the
    // connection while the client still writes; retry until the answer is read.
    let big = "x".repeat(3 * 1024 * 1024);
    let mut answered = None;
    for _ in 0..10 {
        // A client of its own: the connection the server closes must not go
        // back into the pool the other requests use.
        let client = reqwest::Client::new();
        let rb = client
            .post(format!("{}/kbs/v0/auth", t.url))
            .body(big.clone());
        if let Ok(resp) = rb.send().await {
            let status = resp.status().as_u16();
            let body = resp.json::<Value>().await.unwrap_or(Value::Null);
            answered = Some(Resp {
                status,
                cookie: None,
                body,
            });
            break;
        }
    }
    assert_error(
        &answered.expect("a 413 answer"),
        413,
        "PayloadTooLarge",
        "larger than",
    );
    // unknown resource (attested session), invalid path, unknown endpoint
    let (cookie, _) = raw.attest(&key).await;
    let r = raw
        .get("resource/default/key/nope", Some(&cookie), None)
        .await;
    assert_error(&r, 404, "PluginInternalError", "does not exist");
    let r = raw.get("resource/default/key", Some(&cookie), None).await;
    assert_error(&r, 400, "InvalidRequestPath", "three segments");
    let r = raw.get("nope", None, None).await;
    assert_error(&r, 404, "InvalidRequestPath", "no such endpoint");
    // expired session cookie
    tokio::time::sleep(std::time::Duration::from_millis(2300)).await;
    let r = raw
        .get("resource/default/key/nope", Some(&cookie), None)
        .await;
    assert_error(&r, 401, "TokenNotFound", "expired");
    // admin endpoints refuse missing and foreign admin tokens
    let r = raw.get("resources", None, None).await;
    assert_error(&r, 401, "AdminAuthAccess", "Bearer");
    let foreign = dir.path().join("foreign.pem");
    let out = std::process::Command::new(BIN)
        .args(["admin", "--url", &t.url, "--admin-key"])
        .arg(&foreign)
        .arg("list-resources")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not verify with any trusted admin key")
    );
    // an invalid policy is refused and the old one stays
    let bad = write(dir.path(), "bad.rego", b"package policy\nallow if {");
    let out = t.admin(&["set-policy", "resource", "--file", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid Rego"));
    let log = t.stop();
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn denials_are_explained_to_the_admin_only() {
    let dir = tempfile::tempdir().unwrap();
    let t = TrusteeProc::start(&dir.path().join("data"), &[]);
    let secret = write(dir.path(), "s", b"deny-me");
    ok(&t.admin(&[
        "set-resource",
        "kbs:///default/key/1",
        "--file",
        secret.to_str().unwrap(),
    ]));
    // A reference value the sample TEE does not match: appraisal becomes a warning.
    ok(&t.admin(&["add-reference-value", "launch_digest", "fffff"]));
    let listed = ok(&t.admin(&["list-reference-values"]));
    assert!(listed.contains("launch_digest\t[\"fffff\"]"), "{listed}");
    // This trustee speaks plain HTTP: a guest refuses it unless told otherwise.
    let out = t.guest("get-resource", &["kbs:///default/key/1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("refusing the plain-HTTP KBS")
            && err.contains("Use an https:// URL")
            && err.contains("--insecure-http-kbs"),
        "{err}"
    );
    let out = t.guest(
        "get-resource",
        &["--insecure-http-kbs", "kbs:///default/key/1"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("403") && err.contains("resource policy denied"),
        "{err}"
    );
    assert!(
        !err.contains("launch_digest"),
        "the guest must not see the reason: {err}"
    );
    // Denials are recorded off the request path: wait for this one.
    let explain = t.explain_until(10, |e| e.contains("resource kbs:///default/key/1"));
    assert!(
        explain.contains("resource kbs:///default/key/1"),
        "{explain}"
    );
    assert!(explain.contains("appraisal cpu0 is 'warning'"), "{explain}");
    assert!(explain.contains("executables=33"), "{explain}");
    assert!(
        explain.contains("sample.launch_digest=abcde is not in reference value 'launch_digest'"),
        "{explain}"
    );
    // Expiring the bad value and restoring the right one makes it affirming again.
    ok(&t.admin(&[
        "add-reference-value",
        "launch_digest",
        "abcde",
        "--expires",
        "1h",
    ]));
    assert_eq!(
        ok(&t.guest(
            "get-resource",
            &["--insecure-http-kbs", "kbs:///default/key/1"]
        )),
        "deny-me"
    );
    ok(&t.admin(&["expire-reference-value", "launch_digest"]));
    assert!(
        !t.guest(
            "get-resource",
            &["--insecure-http-kbs", "kbs:///default/key/1"]
        )
        .status
        .success()
    );
    // A custom resource policy that allows only one repository.
    ok(&t.admin(&["add-reference-value", "launch_digest", "abcde"]));
    let policy = write(
        dir.path(),
        "p.rego",
        b"package policy\nimport rego.v1\ndefault allow := false\nallow if data[\"resource-path\"][0] == \"open\"\n",
    );
    ok(&t.admin(&["set-policy", "resource", "--file", policy.to_str().unwrap()]));
    assert!(ok(&t.admin(&["get-policy", "resource"])).contains("\"open\""));
    ok(&t.admin(&[
        "set-resource",
        "kbs:///open/key/1",
        "--file",
        secret.to_str().unwrap(),
    ]));
    assert_eq!(
        ok(&t.guest(
            "get-resource",
            &["--insecure-http-kbs", "kbs:///open/key/1"]
        )),
        "deny-me"
    );
    assert!(
        !t.guest(
            "get-resource",
            &["--insecure-http-kbs", "kbs:///default/key/1"]
        )
        .status
        .success()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_continue_on_a_second_replica_and_secrets_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shared");
    let a = TrusteeProc::start(&data, &[]);
    let b = TrusteeProc::start(&data, &[]);
    let secret = write(dir.path(), "s", b"replicated-secret");
    ok(&a.admin(&[
        "set-resource",
        "kbs:///default/key/r",
        "--file",
        secret.to_str().unwrap(),
    ]));
    let (ra, rb) = (Raw::new(&a.url), Raw::new(&b.url));
    let key = TeeKeyPair::generate_ec();
    let (cookie, nonce) = ra.auth().await;
    let r = rb
        .post("attest", &Raw::attestation(&nonce, &key), Some(&cookie))
        .await;
    assert_eq!(
        r.status, 200,
        "attest on replica B of a session from A: {:?}",
        r.body
    );
    let cookie = r.cookie.unwrap();
    for raw in [&ra, &rb] {
        let r = raw.get("resource/default/key/r", Some(&cookie), None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let jwe: FlattenedJwe = serde_json::from_value(r.body).unwrap();
        assert_eq!(&*key.decrypt(&jwe).unwrap(), b"replicated-secret");
    }
    let log_a = a.stop();
    let log_b = b.stop();
    // Restart: the stored secret is still served.
    let c = TrusteeProc::start(&data, &[]);
    assert_eq!(
        ok(&c.guest(
            "get-resource",
            &["--insecure-http-kbs", "kbs:///default/key/r"]
        )),
        "replicated-secret"
    );
    let log_c = c.stop();
    // Nothing on disk or in the logs holds the plaintext.
    assert_no_file_holds(&data, b"replicated-secret");
    // The logs were captured (replica A logged the store), and hold no plaintext.
    assert!(log_a.contains("resource stored"), "{log_a}");
    for log in [log_a, log_b, log_c] {
        assert!(!log.contains("replicated-secret"), "secret in logs");
    }
}

/// Real SEV-SNP evidence through `/kbs/v0/attest`: the trustee verifies
/// the AMD chain and the report signature, then refuses the binding (the
/// captured report was not made for this session), and names a tampered
/// report or a missing VCEK as such.
#[tokio::test(flavor = "multi_thread")]
async fn snp_fixture_evidence_through_attest() {
    use sev::parser::ByteParser;
    let dir = tempfile::tempdir().unwrap();
    let t = TrusteeProc::start(&dir.path().join("t"), &[]);
    let raw = Raw::new(&t.url);
    let fixtures = FixtureDir("snp");
    let bytes = std::fs::read(format!("{fixtures}/trustee_snp_report.bin")).unwrap();
    let vcek = std::fs::read(format!("{fixtures}/trustee_snp_vcek.der")).unwrap();
    let key = TeeKeyPair::generate_ec();
    let evidence = |report: &[u8], with_vcek: bool| {
        let report = sev::firmware::guest::AttestationReport::from_bytes(report).unwrap();
        let chain = if with_vcek {
            json!([{"cert_type": "VCEK", "data": vcek}])
        } else {
            json!(null)
        };
        json!({"attestation_report": report, "cert_chain": chain})
    };
    let mut tampered = bytes.clone();
    tampered[0x90] ^= 0x01; // one bit of the measurement
    for (ev, expect) in [
        (evidence(&bytes, true), "report data does not match"),
        (
            evidence(&tampered, true),
            "report signature does not verify",
        ),
        (evidence(&bytes, false), "certificate table"),
    ] {
        let r = raw.attest_evidence("snp", &key, ev).await;
        assert_error(&r, 401, "AttestationError", expect);
    }
    // A trustee with a VCEK directory verifies evidence that carries none.
    let vceks = dir.path().join("vceks");
    std::fs::create_dir(&vceks).unwrap();
    std::fs::write(vceks.join("chip.der"), &vcek).unwrap();
    let t2 = TrusteeProc::start(
        &dir.path().join("t2"),
        &["--snp-vcek-dir", vceks.to_str().unwrap()],
    );
    let r = Raw::new(&t2.url)
        .attest_evidence("snp", &key, evidence(&bytes, false))
        .await;
    assert_error(&r, 401, "AttestationError", "report data does not match");
}

/// A real TDX quote through `/kbs/v0/attest`: signatures, QE binding and
/// the PCK chain to Intel's root verify, then the binding is refused (the
/// captured quote was not made for this session); a tampered quote is named.
#[tokio::test(flavor = "multi_thread")]
async fn tdx_fixture_evidence_through_attest() {
    let dir = tempfile::tempdir().unwrap();
    let t = TrusteeProc::start(&dir.path().join("t"), &[]);
    let raw = Raw::new(&t.url);
    let fixtures = FixtureDir("tdx");
    let quote = std::fs::read(format!("{fixtures}/trustee_tdx_quote_v4.dat")).unwrap();
    let mut tampered = quote.clone();
    tampered[48 + 200] ^= 0x01; // one bit of the TD body
    let key = TeeKeyPair::generate_ec();
    for (q, expect) in [
        (&quote, "report data does not match"),
        (&tampered, "quote signature does not verify"),
    ] {
        let r = raw
            .attest_evidence(
                "tdx",
                &key,
                json!({"quote": B64.encode(q), "cc_eventlog": null}),
            )
            .await;
        assert_error(&r, 401, "AttestationError", expect);
    }
}

/// Real SGX quotes through `/kbs/v0/attest`: the SGX verifier is reached,
/// checks the quote (a flipped body bit is caught) and then refuses the
/// captured report data, which cannot carry this session's binding.
#[tokio::test]
async fn sgx_fixture_evidence_through_attest() {
    let dir = tempfile::tempdir().unwrap();
    let t = TrusteeProc::start(&dir.path().join("t"), &[]);
    let raw = Raw::new(&t.url);
    let fixtures = FixtureDir("sgx");
    let quote = std::fs::read(format!("{fixtures}/dcapqvl_sgx_quote.bin")).unwrap();
    let mut tampered = quote.clone();
    tampered[48 + 64] ^= 0x01; // one bit of MRENCLAVE
    let key = TeeKeyPair::generate_ec();
    for (q, expect) in [
        (&quote, "report data does not match"),
        (
            &tampered,
            "sgx evidence rejected: the quote signature does not verify",
        ),
    ] {
        let r = raw
            .attest_evidence("sgx", &key, json!({"quote": B64.encode(q)}))
            .await;
        assert_error(&r, 401, "AttestationError", expect);
    }
}

/// Real Azure vTPM evidence through `/kbs/v0/attest`: every hardware and
/// vTPM check passes, then the captured nonce is refused for this session;
/// a changed PCR value is caught by the quote's PCR digest.
#[tokio::test]
async fn azure_vtpm_fixture_evidence_through_attest() {
    let dir = tempfile::tempdir().unwrap();
    let t = TrusteeProc::start(&dir.path().join("t"), &[]);
    let raw = Raw::new(&t.url);
    let fixtures = FixtureDir("");
    let key = TeeKeyPair::generate_ec();
    for (tee, file) in [
        ("az-snp-vtpm", "az-snp-vtpm/trustee_evidence_v2.json"),
        ("az-tdx-vtpm", "az-tdx-vtpm/trustee_evidence_v1.json"),
    ] {
        let ev: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{fixtures}/{file}")).unwrap()).unwrap();
        let mut tampered = ev.clone();
        tampered["tpm_quote"]["pcrs"][0] = json!("00".repeat(32));
        for (e, expect) in [(ev, "report data does not match"), (tampered, "PCR digest")] {
            let r = raw.attest_evidence(tee, &key, e).await;
            assert_error(&r, 401, "AttestationError", expect);
        }
    }
}

/// The real CCA token through `/kbs/v0/attest`: parsed, its realm token
/// verified and bound, then refused because its platform's CPAK is not one
/// the trustee was given.
#[tokio::test]
async fn cca_fixture_evidence_through_attest() {
    let dir = tempfile::tempdir().unwrap();
    let t = TrusteeProc::start(&dir.path().join("t"), &[]);
    let raw = Raw::new(&t.url);
    let token = cocoon_fixtures::read("cca/trustee_cca_example_token.cbor");
    let key = TeeKeyPair::generate_ec();
    let r = raw
        .attest_evidence("cca", &key, json!({"token": B64.encode(&token)}))
        .await;
    assert_error(
        &r,
        401,
        "AttestationError",
        "not signed by any of the 0 trusted CPAKs",
    );
    let r = raw
        .attest_evidence("cca", &key, json!({"token": B64.encode(&token[..100])}))
        .await;
    assert_error(&r, 401, "AttestationError", "malformed cca evidence");
}

/// Session keys rotate without breaking sessions in flight: a cookie
/// sealed before a rotation still fetches; new sessions use the new key;
/// dropping the old keys ends their sessions at once.
#[tokio::test(flavor = "multi_thread")]
async fn session_key_rotation_keeps_sessions_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let t = TrusteeProc::start(&dir.path().join("t"), &[]);
    let raw = Raw::new(&t.url);
    let secret = write(dir.path(), "s", b"rotated-secret");
    ok(&t.admin(&[
        "set-resource",
        "kbs:///default/key/r",
        "--file",
        secret.to_str().unwrap(),
    ]));
    let key = TeeKeyPair::generate_ec();
    let (before, _) = raw.attest(&key).await;
    let key_id = |cookie: &str| cookie.split('.').nth(1).unwrap().to_string();
    let first = key_id(&before);
    let listed = ok(&t.admin(&["list-session-keys"]));
    assert!(
        listed.contains(&format!("{first}  created")) && listed.contains("current"),
        "{listed}"
    );

    let out = t.admin(&["rotate-session-key"]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("keep working until they expire"));
    let r = raw.get("resource/default/key/r", Some(&before), None).await;
    assert_eq!(
        r.status, 200,
        "a session sealed before the rotation: {:?}",
        r.body
    );
    let (after, _) = raw.attest(&key).await;
    assert_ne!(key_id(&after), first, "new sessions use the new key");
    let listed = ok(&t.admin(&["list-session-keys"]));
    assert!(
        listed.contains(&format!("{first}  created")) && listed.contains("retired"),
        "{listed}"
    );

    ok(&t.admin(&["rotate-session-key", "--drop-old"]));
    for cookie in [&before, &after] {
        let r = raw.get("resource/default/key/r", Some(cookie), None).await;
        assert_error(&r, 401, "TokenNotFound", "not valid");
    }
    assert_eq!(ok(&t.admin(&["list-session-keys"])).lines().count(), 1);
}

/// A reference value the trustee cannot read is never taken as absent:
/// attestation answers 503 (retry later, no reason leaked to the guest),
/// and `cocoon explain` gives the admin the reason.
#[tokio::test(flavor = "multi_thread")]
async fn unreadable_reference_value_is_unavailable_not_a_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let t = TrusteeProc::start(&dir.path().join("t"), &[]);
    let raw = Raw::new(&t.url);
    let key = TeeKeyPair::generate_ec();
    raw.attest(&key).await;
    let db = rusqlite::Connection::open(t.data_dir.join("trustee.db")).unwrap();
    db.execute(
        "UPDATE kv SET value = x'7b6e6f74206a736f6e' WHERE ns = 'reference_values' AND key = 'launch_digest'",
        [],
    )
    .unwrap();
    drop(db);
    // A change made behind the trustee's back, as by another replica, is
    // read once its in-memory copy (250 ms) has aged out.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (cookie, nonce) = raw.auth().await;
    let r = raw
        .post("attest", &Raw::attestation(&nonce, &key), Some(&cookie))
        .await;
    assert_error(&r, 503, "RvpsError", "retry later");
    assert!(
        !r.body.to_string().contains("launch_digest"),
        "{:?}",
        r.body
    );
    let explain = t.explain_until(10, |e| e.contains("'launch_digest' is unreadable"));
    assert!(
        explain.contains("'launch_digest' is unreadable"),
        "{explain}"
    );
}

/// The session cookie stays small whatever the evidence: a 1 MiB initdata
/// document is appraised whole, but the token (and so the cookie) carries
/// only its digest and size.
#[tokio::test(flavor = "multi_thread")]
async fn cookie_stays_bounded_with_a_large_initdata() {
    let dir = tempfile::tempdir().unwrap();
    let t = TrusteeProc::start(&dir.path().join("t"), &[]);
    let raw = Raw::new(&t.url);
    let key = TeeKeyPair::generate_ec();
    let (cookie, nonce) = raw.auth().await;
    let mut att = Raw::attestation(&nonce, &key);
    // A large agent policy, and many small documents besides.
    let rego = format!(
        "package agent_policy\npolicy_data := {{\"blob\": \"{}\"}}\n",
        "x".repeat(1 << 20)
    );
    let mut toml = format!(
        "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"policy.rego\" = '''\n{rego}'''\n"
    );
    for i in 0..300 {
        toml.push_str(&format!("\"extra-{i}\" = \"{}\"\n", "y".repeat(1000)));
    }
    att["init-data"] = json!({"format": "toml", "body": toml});
    let r = raw.post("attest", &att, Some(&cookie)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let sealed = r.cookie.expect("attested cookie");
    assert!(sealed.len() < 4096, "cookie of {} bytes", sealed.len());
    let claims = jwt_claims(r.body["token"].as_str().unwrap());
    let init = &claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["init_data_claims"];
    // The agent policy went first (over 4 KiB), then the rest (300 kB).
    assert!(
        init["omitted_bytes"].as_u64().is_some_and(|n| n > 300_000),
        "{init}"
    );
    assert_eq!(init["sha256"].as_str().map(str::len), Some(64), "{init}");
    // The session it carries still fetches.
    let secret = write(dir.path(), "s", b"bounded");
    ok(&t.admin(&[
        "set-resource",
        "kbs:///default/key/b",
        "--file",
        secret.to_str().unwrap(),
    ]));
    let r = raw.get("resource/default/key/b", Some(&sealed), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

/// Runs `openssl <args>`, which must succeed.
fn openssl(args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An admin JWT signed by OpenSSL itself (Ed25519 over the signing input),
/// with the given claims: a signer this code base did not write.
fn openssl_ed25519_token(dir: &std::path::Path, key: &str, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        B64URL.encode(r#"{"typ":"JWT","alg":"EdDSA"}"#),
        B64URL.encode(claims.to_string())
    );
    let input_file = write(dir, "jwt-input", input.as_bytes());
    let sig = openssl(&[
        "pkeyutl",
        "-sign",
        "-rawin",
        "-inkey",
        key,
        "-in",
        input_file.to_str().unwrap(),
    ]);
    format!("{input}.{}", B64URL.encode(sig))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Keys made by OpenSSL, the way CoCo's tooling documents it, administer a
/// trustee through `cocoon admin`; the trustee refuses admin tokens without
/// `iat` or with an unbounded lifetime, and accepts kbs-client's two hours.
#[tokio::test(flavor = "multi_thread")]
async fn openssl_admin_keys_administer_the_trustee() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |name: &str| d.join(name).to_str().unwrap().to_string();
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", &p("ed.pem")]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &p("p256.pem"),
    ]);
    openssl(&[
        "ecparam",
        "-genkey",
        "-name",
        "prime256v1",
        "-out",
        &p("p256-sec1.pem"),
    ]);
    let sec1 = std::fs::read_to_string(p("p256-sec1.pem")).unwrap();
    assert!(sec1.starts_with("-----BEGIN EC PARAMETERS-----"), "{sec1}");
    assert!(sec1.contains("-----BEGIN EC PRIVATE KEY-----"), "{sec1}");
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        &p("stranger.pem"),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        &p("auditor.pem"),
    ]);
    let mut trust = Vec::new();
    for k in ["ed", "p256", "p256-sec1", "auditor"] {
        let public = format!("{}.pub", p(k));
        openssl(&[
            "pkey",
            "-in",
            &p(&format!("{k}.pem")),
            "-pubout",
            "-out",
            &public,
        ]);
        if k == "auditor" {
            trust.push("--auditor-public-key".to_string());
        } else {
            trust.push("--admin-public-key".to_string());
        }
        trust.push(public);
    }
    let trust: Vec<&str> = trust.iter().map(String::as_str).collect();
    let t = TrusteeProc::start(&d.join("data"), &trust);
    let secret = write(d, "s", b"owner-secret");
    let admin = |key: &str, args: &[&str]| {
        std::process::Command::new(BIN)
            .args(["admin", "--url", &t.url, "--admin-key", key])
            .args(args)
            .output()
            .unwrap()
    };
    let before: Vec<Vec<u8>> = ["ed", "p256", "p256-sec1"]
        .iter()
        .map(|k| std::fs::read(p(&format!("{k}.pem"))).unwrap())
        .collect();
    for (n, k) in ["ed", "p256", "p256-sec1"].iter().enumerate() {
        let key = p(&format!("{k}.pem"));
        let uri = format!("kbs:///default/key/{n}");
        ok(&admin(
            &key,
            &["set-resource", &uri, "--file", secret.to_str().unwrap()],
        ));
        assert!(ok(&admin(&key, &["list-resources"])).contains(&uri));
        // The key file is used as it is, never rewritten.
        assert_eq!(std::fs::read(&key).unwrap(), before[n], "{k}");
    }
    assert_eq!(
        ok(&t.guest(
            "get-resource",
            &[
                "kbs:///default/key/2",
                "--tee",
                "sample",
                "--insecure-http-kbs"
            ]
        )),
        "owner-secret"
    );
    let out = admin(&p("stranger.pem"), &["list-resources"]);
    assert!(
        fails(&out).contains("does not verify with any trusted admin key"),
        "{out:?}"
    );
    // An auditor reads and verifies the audit log, and changes nothing
    // (nor reads anything else); a stranger does not read the log.
    let audit = |key: &str, args: &[&str]| {
        std::process::Command::new(BIN)
            .args(["audit", args[0], "--url", &t.url, "--admin-key", key])
            .args(&args[1..])
            .output()
            .unwrap()
    };
    let auditor = p("auditor.pem");
    let tail = ok(&audit(&auditor, &["tail", "-n", "50"]));
    assert!(tail.contains("\"kind\":\"start\""), "{tail}");
    assert!(ok(&audit(&auditor, &["verify"])).contains("audit log verifies"));
    let s = secret.to_str().unwrap();
    for args in [
        &["list-resources"][..],
        &["set-resource", "kbs:///default/key/9", "--file", s],
    ] {
        let out = fails(&admin(&auditor, args));
        assert!(out.contains("an auditor's key"), "{args:?}: {out}");
    }
    let out = fails(&audit(&p("stranger.pem"), &["tail"]));
    assert!(out.contains("does not verify with any trusted"), "{out}");
    // The auditor's refused write is in the log, by the auditor's key.
    let mut refused = String::new();
    for _ in 0..100 {
        refused = ok(&audit(&auditor, &["tail", "-n", "5"]));
        if refused.contains("/resource/default/key/9") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        refused.contains("\"auditor_key\":\"") && refused.contains("\"status\":401"),
        "{refused}"
    );

    // Tokens signed by OpenSSL with the Ed25519 key: kbs-client's shape
    // (iat, exp = iat + 7200) passes; no iat, no exp, a longer lifetime or
    // an iat in the future are refused with a reason.
    let raw = Raw::new(&t.url);
    let now = unix_now();
    let ed = p("ed.pem");
    let token = |claims: Value| openssl_ed25519_token(d, &ed, &claims);
    let r = raw
        .get(
            "resources",
            None,
            Some(&token(json!({"iat": now, "exp": now + 7200}))),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    for (claims, says) in [
        (json!({"exp": now + 60}), "no iat"),
        (json!({"iat": now}), "no exp"),
        (json!({"iat": now, "exp": now + 7201}), "7200"),
        (
            json!({"iat": now + 3600, "exp": now + 3700}),
            "in the future",
        ),
    ] {
        let r = raw.get("resources", None, Some(&token(claims))).await;
        assert_error(&r, 401, "AdminAuthAccess", says);
    }
    let log = t.stop();
    assert!(!log.contains("panicked"), "{log}");
}

/// The key files a trustee creates on first start: the admin key reads in
/// OpenSSL (and Python's `cryptography`, when installed), every private
/// file is 0600; a key-encryption key others can read stops the start; one
/// beside the database is warned about, one elsewhere is not.
#[test]
fn first_start_key_files_work_elsewhere_and_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t = TrusteeProc::start_with(&data, &[], &[]);
    let log = t.stop();
    let key = data.join("admin-key.pem");
    let key_s = key.to_str().unwrap();
    openssl(&["pkey", "-in", key_s, "-noout"]);
    let public = openssl(&["pkey", "-in", key_s, "-pubout"]);
    assert_eq!(
        public,
        std::fs::read(data.join("admin-key.pub.pem")).unwrap()
    );
    let has_cryptography = std::process::Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    if has_cryptography {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys; from cryptography.hazmat.primitives.serialization import load_pem_private_key as l; l(open(sys.argv[1], 'rb').read(), None)",
                key_s,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for f in ["admin-key.pem", "kek.key", "tls/key.pem"] {
        let mode = std::fs::metadata(data.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    assert!(
        log.contains("same directory as the database") && log.contains("--kek-file"),
        "{log}"
    );

    // A key-encryption key group or others can read: no start, and the fix.
    let kek = data.join("kek.key");
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o644)).unwrap();
    let Err(log) = TrusteeProc::try_start(&data, &["--listen", "127.0.0.1:0"]) else {
        panic!("started with a world-readable key-encryption key");
    };
    assert!(
        log.contains(&format!("chmod 600 {}", kek.display())),
        "{log}"
    );
    assert!(log.contains("0644"), "{log}");

    // The key on another volume (here: another directory): no warning.
    let elsewhere = dir.path().join("keys").join("kek.key");
    let t = TrusteeProc::start_with(
        &dir.path().join("data2"),
        &[],
        &["--kek-file", elsewhere.to_str().unwrap()],
    );
    let log = t.stop();
    assert!(!log.contains("same directory as the database"), "{log}");
    assert!(elsewhere.exists());
}

/// `--insecure-admin` and `--insecure-http` are refused on an address other
/// hosts can reach, unless forced.
#[test]
fn insecure_flags_stay_on_loopback_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    for (n, flag) in ["--insecure-admin", "--insecure-http"].iter().enumerate() {
        let data = dir.path().join(format!("d{n}"));
        let Err(log) = TrusteeProc::try_start(&data, &["--listen", "0.0.0.0:0", flag]) else {
            panic!("{flag} started on 0.0.0.0");
        };
        assert!(log.contains("not a loopback address"), "{log}");
        assert!(log.contains(flag), "{log}");
        assert!(log.contains("--allow-insecure-on-network"), "{log}");
        assert!(!data.exists(), "refused before touching the data directory");
        let t = TrusteeProc::try_start(
            &data,
            &["--listen", "0.0.0.0:0", flag, "--allow-insecure-on-network"],
        )
        .unwrap_or_else(|log| panic!("forced {flag} did not start: {log}"));
        t.stop();
    }
}

/// A cookie is only as trustworthy as the session key: one sealed with the
/// real key (here by a process sharing the trustee's store and KEK, as a
/// replica would) but carrying a token whose claims were altered after
/// signing is refused, not released.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_token_inside_a_genuine_cookie_is_refused() {
    use cocoon_kbs::session::{Session, SessionSealer};
    let dir = tempfile::tempdir().unwrap();
    let t = TrusteeProc::start(&dir.path().join("t"), &[]);
    let raw = Raw::new(&t.url);
    let secret = write(dir.path(), "s", b"only-for-affirming");
    ok(&t.admin(&[
        "set-resource",
        "kbs:///default/key/f",
        "--file",
        secret.to_str().unwrap(),
    ]));
    // A session whose appraisal is not affirming: its resource is refused.
    ok(&t.admin(&["add-reference-value", "launch_digest", "fffff"]));
    let key = TeeKeyPair::generate_ec();
    let (cookie, token) = raw.attest(&key).await;
    let r = raw.get("resource/default/key/f", Some(&cookie), None).await;
    assert_error(&r, 403, "PolicyDeny", "default/key/f");

    // Re-seal the same session with "affirming" claims and the old signature.
    let store: std::sync::Arc<dyn cocoon_store::Store> = std::sync::Arc::new(
        cocoon_store::SqliteStore::open(&t.data_dir.join("trustee.db")).unwrap(),
    );
    let kek = std::sync::Arc::new(cocoon_store::Kek::load(&t.data_dir.join("kek.key")).unwrap());
    let sealer = SessionSealer::load_or_create(&store, kek, 300).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut session: Session = sealer.open(&cookie, now).unwrap();
    let mut claims = jwt_claims(&token);
    claims["submods"]["cpu0"]["ear.status"] = json!("affirming");
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        B64URL.encode(claims.to_string()),
        parts[2]
    );
    session.attested.as_mut().unwrap().token = forged;
    let resealed = sealer.seal(&session);
    let r = raw
        .get("resource/default/key/f", Some(&resealed), None)
        .await;
    assert_error(&r, 401, "TokenVerifierError", "signature");
    // The genuine cookie, resealed unchanged, is still only refused by policy.
    let same = sealer.seal(&sealer.open(&cookie, now).unwrap());
    let r = raw.get("resource/default/key/f", Some(&same), None).await;
    assert_error(&r, 403, "PolicyDeny", "default/key/f");
}

/// `cocoon measure snp|tdx --register` computes from Debian's OVMF and
/// stores the values under the names the attestation policy pins.
#[test]
fn measurements_are_registered_under_the_policy_names() {
    let dir = tempfile::tempdir().unwrap();
    let t = TrusteeProc::start(&dir.path().join("t"), &[]);
    let register = |args: &[&str]| {
        let o = std::process::Command::new(BIN)
            .arg("measure")
            .args(args)
            .args(["--register", &t.url, "--admin-key"])
            .arg(t.admin_key())
            .output()
            .unwrap();
        ok(&o)
    };
    let snp = register(&[
        "snp",
        "--ovmf",
        "/usr/share/ovmf/OVMF.fd",
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-v4",
    ]);
    let snp = snp.trim();
    assert_eq!(snp.len(), 96, "{snp}");
    // A kernel the firmware has no hashes page for: refused, not guessed.
    let o = std::process::Command::new(BIN)
        .args([
            "measure",
            "snp",
            "--ovmf",
            "/usr/share/ovmf/OVMF.fd",
            "--vcpus",
            "1",
        ])
        .args([
            "--vcpu-type",
            "EPYC-v4",
            "--kernel",
            "/usr/share/ovmf/OVMF.fd",
        ])
        .output()
        .unwrap();
    assert!(fails(&o).contains("no kernel hashes section"));
    let listed = ok(&t.admin(&["list-reference-values"]));
    assert!(
        listed.contains("snp_launch_measurement") && listed.contains(snp),
        "{listed}"
    );
}

/// Start-up content laid out as Kubernetes mounts ConfigMap and Secret
/// volumes: the files are links through `..data` into a timestamped
/// directory.
fn kube_volume(root: &std::path::Path, files: &[(&str, &[u8])]) -> std::path::PathBuf {
    let stamp = root.join("..2026_12_01_00_00_00.000000001");
    for (rel, bytes) in files {
        let p = stamp.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
    }
    std::os::unix::fs::symlink(stamp.file_name().unwrap(), root.join("..data")).unwrap();
    let mut tops: Vec<&str> = files
        .iter()
        .map(|(r, _)| r.split('/').next().unwrap())
        .collect();
    tops.dedup();
    for t in tops {
        std::os::unix::fs::symlink(std::path::Path::new("..data").join(t), root.join(t)).unwrap();
    }
    root.to_path_buf()
}

#[test]
fn policies_resources_and_reference_values_are_applied_from_mounted_directories() {
    let dir = tempfile::tempdir().unwrap();
    let policies = kube_volume(
        &dir.path().join("policies"),
        &[(
            "resource.rego",
            b"package policy\nimport rego.v1\ndefault allow := false\nallow if data[\"resource-path\"][0] == \"mounted\"\n",
        )],
    );
    let resources = kube_volume(
        &dir.path().join("resources"),
        &[
            ("mounted/key/1", b"from-a-secret-volume"),
            ("other/key/2", b"not-released"),
        ],
    );
    let refs = kube_volume(
        &dir.path().join("refs"),
        &[(
            "values.json",
            br#"{"version":"0.1.0","type":"sample","payload":"eyJtb3VudGVkX3ZhbHVlIjpbImFiYyJdfQ=="}"#,
        )],
    );
    let flags = [
        "--policy-dir",
        policies.to_str().unwrap(),
        "--resource-dir",
        resources.to_str().unwrap(),
        "--reference-value-dir",
        refs.to_str().unwrap(),
    ];
    let t = TrusteeProc::start(&dir.path().join("data"), &flags);
    assert!(ok(&t.admin(&["get-policy", "resource"])).contains("\"mounted\""));
    let listed = ok(&t.admin(&["list-resources"]));
    assert!(
        listed.contains("mounted/key/1") && listed.contains("other/key/2"),
        "{listed}"
    );
    assert!(ok(&t.admin(&["list-reference-values"])).contains("mounted_value"));
    // What was applied is an admin change in the audit log, by name.
    let tail = audit_tail_until(&t, 10, "start-up directories");
    assert_in_audit_log(
        &tail,
        &[
            "\"route\":\"start-up directories\"",
            "\"policies\":[\"resource-policy\"]",
            "\"resources\":[\"mounted/key/1\",\"other/key/2\"]",
            "\"reference_values\":[\"mounted_value\"]",
            "\"complete\":true",
        ],
    );
    assert!(!tail.contains("from-a-secret-volume"), "{tail}");
    let get = |uri: &str| t.guest("get-resource", &["--insecure-http-kbs", uri]);
    assert_eq!(ok(&get("kbs:///mounted/key/1")), "from-a-secret-volume");
    assert!(
        !get("kbs:///other/key/2").status.success(),
        "the mounted policy was not applied"
    );
    // Nothing of the secrets in the log.
    let log = t.stop();
    assert!(
        !log.contains("from-a-secret-volume"),
        "a secret reached the log"
    );

    // A link out of the directory (here to the trustee's own key) is no
    // resource.
    let escape = dir.path().join("escape");
    std::fs::create_dir_all(escape.join("default/key")).unwrap();
    std::os::unix::fs::symlink(
        dir.path().join("data/kek.key"),
        escape.join("default/key/kek"),
    )
    .unwrap();
    let e = TrusteeProc::try_start(
        &dir.path().join("data"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--insecure-http",
            "--resource-dir",
            escape.to_str().unwrap(),
        ],
    )
    .err()
    .expect("a resource linking out of its directory was accepted");
    assert!(e.contains("leads out of"), "{e}");
    // A file that is not what its directory holds stops the start, named.
    for (flag, bad, want) in [
        (
            "--policy-dir",
            kube_volume(
                &dir.path().join("bad-policy"),
                &[("resource.rego", b"package policy\nallow if {")],
            ),
            "resource.rego",
        ),
        (
            "--resource-dir",
            kube_volume(&dir.path().join("bad-res"), &[("toplevel", b"x")]),
            "<repo>/<type>/<tag>",
        ),
        (
            "--reference-value-dir",
            kube_volume(&dir.path().join("bad-refs"), &[("v.json", b"{}")]),
            "v.json",
        ),
        (
            "--resource-dir",
            kube_volume(
                &dir.path().join("big"),
                &[("default/key/big", &vec![0u8; 3 << 20])],
            ),
            "over the 2097152",
        ),
    ] {
        let e = TrusteeProc::try_start(
            &dir.path().join("data"),
            &[
                "--listen",
                "127.0.0.1:0",
                "--insecure-http",
                flag,
                bad.to_str().unwrap(),
            ],
        )
        .err()
        .unwrap_or_else(|| panic!("{flag} with a bad file started"));
        assert!(e.contains(want), "{flag}: {e}");
    }
}

/// `cocoon audit <cmd> --url U --admin-key K <args>`.
fn audit(t: &TrusteeProc, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(["audit", args[0], "--url", &t.url, "--admin-key"])
        .arg(t.admin_key())
        .args(&args[1..])
        .output()
        .unwrap()
}

/// The last `n` audit records once one holds `needle` (records are written
/// off the request path), or after 5 s whatever they are.
fn audit_tail_until(t: &TrusteeProc, n: usize, needle: &str) -> String {
    let n = n.to_string();
    let mut tail = String::new();
    for _ in 0..100 {
        tail = ok(&audit(t, &["tail", "-n", &n]));
        if tail.contains(needle) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    tail
}

fn assert_in_audit_log(tail: &str, wanted: &[&str]) {
    for want in wanted {
        assert!(tail.contains(want), "{want} not in the audit log:\n{tail}");
    }
}

#[test]
fn the_audit_log_records_what_happened_and_every_tampering_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let every = ["--audit-checkpoint-every", "3"];
    let t = TrusteeProc::start(&data, &every);
    let secret = write(dir.path(), "s", b"audit-secret-93c1");
    let policy = write(
        dir.path(),
        "p.rego",
        b"package policy\nimport rego.v1\ndefault allow := false\nallow if data[\"resource-path\"][0] == \"open\"\n",
    );
    ok(&t.admin(&["set-policy", "resource", "--file", policy.to_str().unwrap()]));
    for uri in ["kbs:///open/key/1", "kbs:///closed/key/1"] {
        ok(&t.admin(&["set-resource", uri, "--file", secret.to_str().unwrap()]));
    }
    let get = |uri: &str| {
        t.guest(
            "get-resource",
            &["--insecure-http-kbs", "--tee", "sample", uri],
        )
    };
    assert_eq!(ok(&get("kbs:///open/key/1")), "audit-secret-93c1");
    assert!(!get("kbs:///closed/key/1").status.success());
    // A refused admin write is recorded too.
    let stranger = dir.path().join("stranger.pem");
    let out = std::process::Command::new(BIN)
        .args(["admin", "--url", &t.url, "--admin-key"])
        .arg(&stranger)
        .args(["delete-resource", "kbs:///open/key/1"])
        .output()
        .unwrap();
    assert!(!out.status.success());

    // Records are written off the request path: wait for the last one.
    let tail = audit_tail_until(&t, 100, "\"status\":401");
    // The admin's own writes name its key's fingerprint (the SHA-256 of
    // its public key PEM).
    let fp = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            std::fs::read(data.join("admin-key.pub.pem")).unwrap(),
        ))
    };
    assert_in_audit_log(
        &tail,
        &[
            "\"kind\":\"start\"",
            "\"route\":\"/kbs/v0/resource-policy\"",
            "\"kind\":\"token\"",
            "\"kind\":\"release\"",
            "\"resource\":\"open/key/1\"",
            "\"kind\":\"denial\"",
            "\"resource\":\"closed/key/1\"",
            "\"status\":401",
            "\"checkpoint\":true",
            // Which admin acted: the refused stranger is no known key.
            "\"admin_key\":null",
            &format!("\"admin_key\":\"{fp}\""),
        ],
    );
    assert!(
        !tail.contains("audit-secret-93c1"),
        "a secret in the audit log"
    );
    let state = dir.path().join("audit.state");
    let pubkey = data.join("audit-key.pub.pem");
    // A whole verification, or (`--incremental`) one from the checkpoint
    // the state holds on.
    let verify_as = |t: &TrusteeProc, state: &std::path::Path, incremental: bool| {
        let mut args = vec![
            "verify",
            "--public-key",
            pubkey.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
        ];
        if incremental {
            args.push("--incremental");
        }
        audit(t, &args)
    };
    let verify = |t: &TrusteeProc, state: &std::path::Path| verify_as(t, state, false);
    // Incremental needs a state to continue from.
    let out = verify_as(&t, &state, true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("run once without --incremental"),
        "{err}"
    );
    let out = ok(&verify(&t, &state));
    assert!(out.contains("audit log verifies"), "{out}");
    let anchor: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let checkpoint = anchor["checkpoint"].as_i64().unwrap();
    assert!(checkpoint > 3, "{anchor}");
    // The state names the log: another log (signed with the same key) is
    // not taken for it.
    let log_id = anchor["log_id"].as_str().unwrap().to_string();
    let other = dir.path().join("other.state");
    std::fs::write(&other, anchor.to_string().replace(&log_id, "0123abcd")).unwrap();
    let out = verify(&t, &other);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && err.contains(&format!("this is log {log_id}, and")),
        "{err}"
    );
    // The next one, incremental, reads from that checkpoint on only (on a
    // copy of the state: the cases below start from `checkpoint`).
    ok(&t.admin(&[
        "set-resource",
        "kbs:///open/key/2",
        "--file",
        secret.to_str().unwrap(),
    ]));
    std::fs::copy(&state, state.with_extension("inc")).unwrap();
    let out = ok(&verify_as(&t, &state.with_extension("inc"), true));
    assert!(
        out.contains(&format!("records {checkpoint}-")) && out.contains("from the checkpoint"),
        "{out}"
    );
    drop(t);

    // Each tampering, on a copy of the stopped trustee's data, is found by
    // the next verification (the trustee restarted on it appends its own
    // signed start checkpoint, which must not hide anything).
    let release_seq: i64 = {
        let db = rusqlite::Connection::open(data.join("trustee.db")).unwrap();
        db.query_row(
            "SELECT seq FROM audit WHERE value LIKE '%\"kind\":\"release\"%'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let rewritten = format!("record {checkpoint} is not in canonical form");
    let cases: [(&str, String, &str); 6] = [
        (
            "modified",
            format!("UPDATE audit SET value = CAST(replace(CAST(value AS TEXT), 'open/key/1', 'open/key/9') AS BLOB) WHERE seq = {release_seq}"),
            "does not follow",
        ),
        ("deleted", "DELETE FROM audit WHERE seq = 3".into(), "missing or out of order"),
        (
            "inserted",
            "UPDATE audit SET seq = seq + 1000 WHERE seq >= 4; UPDATE audit SET seq = seq - 999 WHERE seq >= 1004; \
             INSERT INTO audit (seq, value) SELECT 4, value FROM audit WHERE seq = 3"
                .into(),
            "record 4",
        ),
        (
            "reordered",
            "UPDATE audit SET seq = -1 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 4; UPDATE audit SET seq = 4 WHERE seq = -1"
                .into(),
            "record 3 is missing or out of order",
        ),
        ("cut back", format!("DELETE FROM audit WHERE seq >= {checkpoint}"), "cut back"),
        (
            "checkpoint rewritten",
            format!("UPDATE audit SET value = CAST(replace(CAST(value AS TEXT), '\"seq\":{checkpoint},', '\"seq\":{checkpoint},\"seq\":{checkpoint},') AS BLOB) WHERE seq = {checkpoint}"),
            &rewritten,
        ),
    ];
    for (name, sql, want) in cases {
        let copy = dir.path().join(format!("copy-{}", name.replace(' ', "-")));
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(&data)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(st.success());
        let db = rusqlite::Connection::open(copy.join("trustee.db")).unwrap();
        db.execute_batch(&sql).unwrap();
        drop(db);
        // A tail that no longer verifies stops the start; accepting it
        // records the problem, and the log still does not verify.
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--insecure-http",
            "--allow-dev-tee",
        ];
        args.extend(every);
        let t = match TrusteeProc::try_start(&copy, &args) {
            Ok(t) => t,
            Err(log) => {
                assert!(
                    log.contains("the audit log does not verify"),
                    "{name}: {log}"
                );
                let t = TrusteeProc::start(&copy, &[every[0], every[1], "--audit-accept-tampered"]);
                let tail = ok(&audit(&t, &["tail", "-n", "3"]));
                assert!(tail.contains("\"kind\":\"tamper\""), "{name}: {tail}");
                t
            }
        };
        // Every change is found by a whole verification; a change at or
        // after the checkpoint in the state also by an incremental one.
        let runs: &[bool] = match name {
            "cut back" | "checkpoint rewritten" => &[false, true],
            _ => &[false],
        };
        for &inc in runs {
            let state_copy = dir.path().join(format!("{name}-{inc}.state"));
            std::fs::copy(&state, &state_copy).unwrap();
            let out = verify_as(&t, &state_copy, inc);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{name} (incremental: {inc}): not detected: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            assert!(
                err.contains("does NOT verify") && err.contains(want),
                "{name} (incremental: {inc}): {err}"
            );
        }
    }
    // Pruned before the checkpoint in the state: the log starts with it, a
    // signed prune record says so, and it verifies, with the state too.
    // Cut further by hand, it does not.
    let t = TrusteeProc::start(&data, &every);
    let cp = checkpoint.to_string();
    // A copy kept first verifies without the trustee; changed, it does not.
    let copy = ok(&audit(&t, &["tail", "--from", "1", "-n", "100000"]));
    let by_file = |text: &str| {
        let f = write(dir.path(), "audit-copy.jsonl", text.as_bytes());
        std::process::Command::new(BIN)
            .args(["audit", "verify", "--file", f.to_str().unwrap()])
            .args(["--public-key", pubkey.to_str().unwrap()])
            .env("COCOON_ADMIN_KEY", dir.path().join("no-such-key.pem"))
            .output()
            .unwrap()
    };
    let out = ok(&by_file(&copy));
    assert!(out.contains("audit log verifies"), "{out}");
    assert!(!dir.path().join("no-such-key.pem").exists());
    let out = by_file(&copy.replacen("open/key/1", "open/key/7", 1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does NOT verify"),
        "{out:?}"
    );
    let out = ok(&audit(&t, &["prune", "--before", &cp]));
    assert!(
        out.contains(&format!("{} record(s) removed", checkpoint - 1))
            && out.contains(&format!("starts with checkpoint {cp}")),
        "{out}"
    );
    let first = ok(&audit(&t, &["tail", "--from", "1", "-n", "1"]));
    assert!(first.contains(&format!("\"seq\":{cp},")), "{first}");
    let out = ok(&verify(&t, &state));
    assert!(out.contains("were pruned"), "{out}");
    let out = fails(&audit(&t, &["prune", "--before", &cp]));
    assert!(out.contains("starts at record"), "{out}");
    drop(t);
    let db = rusqlite::Connection::open(data.join("trustee.db")).unwrap();
    db.execute(&format!("DELETE FROM audit WHERE seq = {cp}"), [])
        .unwrap();
    drop(db);
    let t = TrusteeProc::start(&data, &every);
    let out = verify(&t, &dir.path().join("fresh.state"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1)
            && err.contains(&format!(
                "record {} should be a signed checkpoint",
                checkpoint + 1
            )),
        "{err}"
    );
}

/// One HTTP/1.1 request on a new connection: the status and the headers.
fn http1(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, out) = http1_behind(addr, b"", method, path, body);
    let head = out
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    (status, head)
}

#[test]
fn a_body_sent_too_slowly_is_refused_and_its_connection_closed() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let t = TrusteeProc::start(&dir.path().join("data"), &["--request-read-timeout", "1"]);
    let addr = t.url.trim_start_matches("http://").to_string();
    let auth = r#"{"version":"0.4.0","tee":"sample","extra-params":""}"#;
    let head = |len: usize| {
        format!(
            "POST /kbs/v0/auth HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
    };
    let answer = |s: &mut std::net::TcpStream| {
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut out = Vec::new();
        // The server closes the connection after its answer.
        s.read_to_end(&mut out).unwrap();
        String::from_utf8_lossy(&out).into_owned()
    };

    // Headers, then a third of the body, then nothing.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(head(auth.len()).as_bytes()).unwrap();
    s.write_all(&auth.as_bytes()[..auth.len() / 3]).unwrap();
    let text = answer(&mut s);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("the request body did not arrive within 1 s"),
        "{text}"
    );

    // A body in pieces that all come in time is served.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(head(auth.len()).as_bytes()).unwrap();
    s.write_all(&auth.as_bytes()[..10]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    s.write_all(&auth.as_bytes()[10..]).unwrap();
    let text = answer(&mut s);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    // Not JSON, in time: the route's own refusal, as before.
    assert_eq!(http1(&addr, "POST", "/kbs/v0/auth", "{").0, 400);

    // A GET's body is never read, so never waited for.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(
        b"GET /kbs/v0/resource/a/b/c HTTP/1.1\r\nHost: t\r\nContent-Length: 64\r\nConnection: close\r\n\r\nab",
    )
    .unwrap();
    let text = answer(&mut s);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");

    // An admin write refused for a slow body is in the audit log.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(
        b"POST /kbs/v0/resource/slow/body/x HTTP/1.1\r\nHost: t\r\nContent-Length: 64\r\nConnection: close\r\n\r\nabc",
    )
    .unwrap();
    assert!(answer(&mut s).starts_with("HTTP/1.1 408"));
    let tail = audit_tail_until(&t, 20, "\"path\":\"/resource/slow/body/x\"");
    let line = tail
        .lines()
        .find(|l| l.contains("\"path\":\"/resource/slow/body/x\""))
        .unwrap_or_else(|| panic!("no audit record of the slow write:\n{tail}"));
    assert!(line.contains("\"status\":408"), "{line}");
}

/// Sends `GET /healthz` on an open connection; whether an answer came.
fn answered(s: &mut std::net::TcpStream) -> bool {
    use std::io::{Read, Write};
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 256];
    matches!(s.read(&mut buf), Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 200"))
}

#[test]
fn connections_past_the_limit_are_closed_and_clients_over_their_rate_wait() {
    let dir = tempfile::tempdir().unwrap();
    let t = TrusteeProc::start(
        &dir.path().join("data"),
        &[
            "--max-connections",
            "40",
            "--unauthenticated-rate",
            "2",
            "--unauthenticated-burst",
            "5",
            "--rate-limit-loopback",
        ],
    );
    let addr = t.url.trim_start_matches("http://").to_string();
    // 60 connections held open: 40 are served, 20 closed unanswered.
    let mut conns: Vec<std::net::TcpStream> = (0..60)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let served = conns.iter_mut().map(answered).filter(|a| *a).count();
    assert_eq!(served, 40, "connections served with a limit of 40");
    // Closing them frees their permits.
    drop(conns);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut again = std::net::TcpStream::connect(&addr).unwrap();
    assert!(
        answered(&mut again),
        "a connection after the others closed was not served"
    );
    drop(again);

    // One client cannot hold them all: a per-client cap of 10.
    let per = TrusteeProc::start(
        &dir.path().join("data-per-client"),
        &[
            "--max-connections-per-client",
            "10",
            "--rate-limit-loopback",
        ],
    );
    let per_addr = per.url.trim_start_matches("http://").to_string();
    let mut mine: Vec<std::net::TcpStream> = (0..15)
        .map(|_| std::net::TcpStream::connect(&per_addr).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(mine.iter_mut().map(answered).filter(|a| *a).count(), 10);
    drop(mine);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut next = std::net::TcpStream::connect(&per_addr).unwrap();
    assert!(answered(&mut next), "the client's slots did not come back");
    drop(next);
    drop(per);

    // Ready: the store answers.
    assert_eq!(http1(&addr, "GET", "/readyz", "").0, 200);

    // Unauthenticated work: a burst of 5, then 429 with Retry-After; the
    // health check is not limited.
    let auth = r#"{"version":"0.4.0","tee":"sample","extra-params":""}"#;
    let statuses: Vec<(u16, bool)> = (0..12)
        .map(|_| {
            let (st, head) = http1(&addr, "POST", "/kbs/v0/auth", auth);
            (st, head.contains("retry-after:"))
        })
        .collect();
    let ok_count = statuses.iter().filter(|(s, _)| *s == 200).count();
    let limited: Vec<_> = statuses.iter().filter(|(s, _)| *s == 429).collect();
    assert!((5..=6).contains(&ok_count), "{statuses:?}");
    assert!(
        !limited.is_empty() && limited.iter().all(|(_, r)| *r),
        "{statuses:?}"
    );
    for _ in 0..20 {
        assert_eq!(http1(&addr, "GET", "/healthz", "").0, 200);
    }
}

/// A PROXY protocol v2 header naming `client` (IPv4, TCP) to port 443.
fn proxy_v2_for(client: [u8; 4]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11, 0, 12]);
    h.extend(client);
    h.extend([127, 0, 0, 1, 0xc3, 0x50, 0x01, 0xbb]);
    h
}

/// `header`, then one HTTP/1.1 request on the same new connection: the
/// status (0: closed unanswered) and the whole answer.
fn http1_behind(addr: &str, header: &[u8], method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let _ = s.write_all(header);
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    (
        out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0),
        out,
    )
}

#[test]
fn clients_behind_a_trusted_proxy_are_counted_by_the_address_it_names() {
    let dir = tempfile::tempdir().unwrap();
    // Loopback is the balancer here; the clients it names are not
    // loopback, so the limits apply to them.
    let t = TrusteeProc::start(
        &dir.path().join("data"),
        &[
            "--trusted-proxy",
            "127.0.0.1",
            "--unauthenticated-rate",
            "0.2",
            "--unauthenticated-burst",
            "2",
            "--max-connections-per-client",
            "3",
        ],
    );
    let addr = t.url.trim_start_matches("http://").to_string();
    let auth = r#"{"version":"0.4.0","tee":"sample","extra-params":""}"#;
    let a = proxy_v2_for([203, 0, 113, 7]);
    // Client A: its burst of 2, then 429 naming A.
    let statuses: Vec<(u16, String)> = (0..4)
        .map(|_| http1_behind(&addr, &a, "POST", "/kbs/v0/auth", auth))
        .collect();
    assert_eq!(statuses[0].0, 200, "{}", statuses[0].1);
    assert_eq!(statuses[1].0, 200, "{}", statuses[1].1);
    let limited = statuses.iter().find(|(s, _)| *s == 429);
    let (_, text) = limited.unwrap_or_else(|| panic!("client A never limited: {statuses:?}"));
    assert!(
        text.contains("too many unauthenticated requests from 203.0.113.7"),
        "{text}"
    );
    // Client B, behind the same balancer, has its own budget (v1 header).
    let b = b"PROXY TCP4 198.51.100.4 127.0.0.1 50000 443\r\n";
    assert_eq!(
        http1_behind(&addr, b, "POST", "/kbs/v0/auth", auth).0,
        200,
        "client B was limited with A"
    );
    // A named loopback address is not exempt: anyone in a trusted network
    // could name one.
    let lo = b"PROXY TCP4 127.0.0.1 127.0.0.1 50000 443\r\n";
    let named_lo: Vec<u16> = (0..4)
        .map(|_| http1_behind(&addr, lo, "POST", "/kbs/v0/auth", auth).0)
        .collect();
    assert!(
        named_lo.contains(&429),
        "a named loopback client was exempt: {named_lo:?}"
    );
    // The balancer's own connections (LOCAL, UNKNOWN) are loopback: exempt.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend([0x20, 0x00, 0, 0]);
    for _ in 0..4 {
        assert_eq!(
            http1_behind(&addr, &local, "POST", "/kbs/v0/auth", auth).0,
            200
        );
    }
    assert_eq!(
        http1_behind(&addr, b"PROXY UNKNOWN\r\n", "GET", "/healthz", "").0,
        200
    );
    // From the trusted address, no header or a bad one: closed unanswered.
    assert_eq!(http1_behind(&addr, b"", "GET", "/healthz", "").0, 0);
    assert_eq!(
        http1_behind(&addr, b"PROXY TCP4 nonsense\r\n", "GET", "/healthz", "").0,
        0
    );
    let mut long = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    long.extend([0x21, 0x11, 0xff, 0xff]);
    assert_eq!(http1_behind(&addr, &long, "GET", "/healthz", "").0, 0);

    // The per-client connection cap counts the named client too: C holds
    // 3, its 4th is closed, while D still gets in.
    let open_as = |client: [u8; 4]| {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(&proxy_v2_for(client)).unwrap();
        s
    };
    let mut c: Vec<_> = (0..4).map(|_| open_as([192, 0, 2, 30])).collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(c.iter_mut().map(answered).filter(|a| *a).count(), 3);
    let mut d = open_as([192, 0, 2, 31]);
    assert!(
        answered(&mut d),
        "client D was refused with C's connections"
    );
    drop(c);
    drop(d);

    // A peer that is not a trusted proxy cannot name a client: its header
    // is not read (the request after it is not understood).
    let other = TrusteeProc::start(
        &dir.path().join("data-other"),
        &["--trusted-proxy", "192.0.2.0/24", "--rate-limit-loopback"],
    );
    let other_addr = other.url.trim_start_matches("http://").to_string();
    let (status, text) = http1_behind(&other_addr, &a, "POST", "/kbs/v0/auth", auth);
    assert_ne!(status, 200, "a forged header was taken: {text}");
    assert!(!text.contains("203.0.113.7"), "{text}");
    assert_eq!(http1(&other_addr, "POST", "/kbs/v0/auth", auth).0, 200);
    drop(other);

    // A bad flag value is refused with a readable reason.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .args([
            "trustee",
            "--insecure-http",
            "--trusted-proxy",
            "10.0.0.0/33",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is neither an address nor a network"), "{err}");
}
