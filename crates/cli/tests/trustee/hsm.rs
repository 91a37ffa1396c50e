//! The trustee with its key-encryption key in a PKCS#11 token (SoftHSM2):
//! secrets are served, the data directory holds nothing that opens them,
//! and without the token the trustee does not start.

use super::*;
use cocoon_fixtures::softhsm::SoftHsm;
use std::ffi::OsStr;

#[tokio::test(flavor = "multi_thread")]
async fn a_kek_in_a_token_serves_secrets_that_nothing_else_opens() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("t");
    let hsm = SoftHsm::new("trustee", "2468");
    let uri = hsm.uri("kek");
    let env = [("SOFTHSM2_CONF", hsm.conf.as_os_str())];
    let t = TrusteeProc::try_start_env(
        &data,
        &[
            "--listen",
            "127.0.0.1:0",
            "--insecure-http",
            "--allow-dev-tee",
            "--kek",
            &uri,
        ],
        &env,
    )
    .unwrap();
    let secret = write(dir.path(), "s", b"hsm-guarded-secret");
    ok(&t.admin(&[
        "set-resource",
        "kbs:///default/key/h",
        "--file",
        secret.to_str().unwrap(),
    ]));
    let get = |t: &TrusteeProc| {
        t.guest(
            "get-resource",
            &["--insecure-http-kbs", "kbs:///default/key/h"],
        )
    };
    assert_eq!(ok(&get(&t)), "hsm-guarded-secret");
    let log = t.stop();
    assert!(log.contains("in the PKCS#11 token"), "{log}");
    assert!(!log.contains("2468") && !log.contains("hsm-guarded-secret"));
    // No key file was made, and nothing on disk holds the secret.
    assert!(!data.join("kek.key").exists());
    for entry in std::fs::read_dir(&data).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !bytes.windows(18).any(|w| w == b"hsm-guarded-secret"),
                "{}",
                p.display()
            );
        }
    }

    // A restart with the token serves the same secret.
    let t = TrusteeProc::try_start_env(
        &data,
        &[
            "--listen",
            "127.0.0.1:0",
            "--insecure-http",
            "--allow-dev-tee",
            "--kek",
            &uri,
        ],
        &env,
    )
    .unwrap();
    assert_eq!(ok(&get(&t)), "hsm-guarded-secret");
    drop(t);

    // Without the token: a token of the same labels but another key, or a
    // key file. The trustee cannot open what it stored, and says so.
    let impostor = SoftHsm::new("trustee", "2468");
    let env2 = [("SOFTHSM2_CONF", impostor.conf.as_os_str())];
    for (args, env) in [
        (vec!["--kek", uri.as_str()], &env2[..]),
        (vec![], &[][..] as &[(&str, &OsStr)]),
    ] {
        let mut all = vec![
            "--listen",
            "127.0.0.1:0",
            "--insecure-http",
            "--allow-dev-tee",
        ];
        all.extend(args);
        let Err(log) = TrusteeProc::try_start_env(&data, &all, env) else {
            panic!("the trustee started without the token that sealed its data");
        };
        assert!(log.contains("wrong key-encryption key"), "{log}");
    }
}
