//! The trustee with its key-encryption key in a PKCS#11 token (SoftHSM2):
//! secrets are served, the data directory holds nothing that opens them,
//! and without the token the trustee does not start.

use super::*;
use cocoon_fixtures::softhsm::SoftHsm;

#[tokio::test(flavor = "multi_thread")]
async fn a_kek_in_a_token_serves_secrets_that_nothing_else_opens() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("t");
    let hsm = SoftHsm::new("trustee", "2468");
    let uri = hsm.uri("kek");
    // The trustee on `data`, with the token of `hsm` (`--kek`) or a key file.
    let start = |hsm: &SoftHsm, token: bool| {
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--insecure-http",
            "--allow-dev-tee",
        ];
        if token {
            args.extend(["--kek", uri.as_str()]);
        }
        TrusteeProc::try_start_env(&data, &args, &[("SOFTHSM2_CONF", hsm.conf.as_os_str())])
    };
    let t = start(&hsm, true).unwrap();
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
    assert_no_file_holds(&data, b"hsm-guarded-secret");

    // A restart with the token serves the same secret.
    let t = start(&hsm, true).unwrap();
    assert_eq!(ok(&get(&t)), "hsm-guarded-secret");
    drop(t);

    // Without the token: a token of the same labels but another key, or a
    // key file. The trustee cannot open what it stored, and says so.
    let impostor = SoftHsm::new("trustee", "2468");
    for token in [true, false] {
        let Err(log) = start(&impostor, token) else {
            panic!("the trustee started without the token that sealed its data");
        };
        assert!(log.contains("wrong key-encryption key"), "{log}");
    }
}
