//! The TPM client against a real software TPM (swtpm, installed by
//! scripts/test): AK creation and persistence, quotes that verify, PCR
//! extends that change what is quoted.

use cocoon_tpm::swtpm::Swtpm;
use cocoon_tpm::{
    AkPublicKey, DEFAULT_AK_HANDLE, KeyAlgorithm, Tcti, Tpm, TpmError, extend_sha256, verify_quote,
};

#[test]
fn enroll_quote_extend_against_swtpm() {
    let dir = tempfile::tempdir().unwrap();
    let sw = Swtpm::start(dir.path()).expect("swtpm must be installed (scripts/test installs it)");
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();

    // No AK yet: quoting says what to do.
    let err = tpm.quote(DEFAULT_AK_HANDLE, &[1; 32]).unwrap_err();
    assert!(matches!(err, TpmError::NoAk(_)), "{err}");
    assert!(err.to_string().contains("cocoon tpm enroll"));

    let (ak, created) = tpm
        .ensure_ak(DEFAULT_AK_HANDLE, KeyAlgorithm::Rsa2048)
        .unwrap();
    assert!(created);
    let (again, created) = tpm
        .ensure_ak(DEFAULT_AK_HANDLE, KeyAlgorithm::Rsa2048)
        .unwrap();
    assert!(!created, "second enroll loads the persistent AK");
    assert_eq!(ak, again);
    let (ecc, _) = tpm.ensure_ak(0x8101_0003, KeyAlgorithm::EccP256).unwrap();
    let (ek, _) = tpm.ensure_ek(cocoon_tpm::DEFAULT_EK_HANDLE).unwrap();
    assert!(!ek.is_restricted_signing());
    // The EK is not a signing key: it cannot serve as an AK.
    assert!(
        tpm.ensure_ak(cocoon_tpm::DEFAULT_EK_HANDLE, KeyAlgorithm::Rsa2048)
            .is_err()
    );

    let before = tpm.pcr_read_sha256().unwrap();
    assert_eq!(before.len(), 24);
    let digest = [0x42u8; 32];
    tpm.pcr_extend_sha256(8, &digest).unwrap();
    let after = tpm.pcr_read_sha256().unwrap();
    assert_eq!(after[8], extend_sha256(&before[8], &digest));
    assert_eq!(after[7], before[7]);

    for (handle, public) in [(DEFAULT_AK_HANDLE, &ak), (0x8101_0003, &ecc)] {
        let nonce = [7u8; 64];
        let q = tpm.quote(handle, &nonce).unwrap();
        let key = AkPublicKey::from_spki_der(&public.to_spki_der().unwrap()).unwrap();
        let v = verify_quote(&key, &q.attest, &q.signature, &after).unwrap();
        assert_eq!(v.attest.extra_data, nonce);
        // Quoted PCRs differ from the pre-extend values.
        assert!(matches!(
            verify_quote(&key, &q.attest, &q.signature, &before),
            Err(TpmError::PcrDigestMismatch)
        ));
    }
    // An RSA quote does not verify with the ECC key.
    let q = tpm.quote(DEFAULT_AK_HANDLE, &[0; 32]).unwrap();
    let key = AkPublicKey::from_spki_der(&ecc.to_spki_der().unwrap()).unwrap();
    assert!(matches!(
        verify_quote(&key, &q.attest, &q.signature, &after),
        Err(TpmError::KeySignatureMismatch)
    ));
    assert!(tpm.pcr_extend_sha256(24, &digest).is_err());

    // NV storage (how Azure's paravisor hands the HCL report to the guest).
    let blob: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(tpm.nv_size(0x0140_0001).unwrap(), None);
    tpm.nv_write(0x0140_0001, &blob).unwrap();
    assert_eq!(tpm.nv_size(0x0140_0001).unwrap(), Some(blob.len()));
    assert_eq!(tpm.nv_read(0x0140_0001).unwrap(), blob);
    assert!(tpm.nv_read(0x0140_0002).is_err());
    drop(tpm);

    // The AK survives a restart of the TPM (persistent handle, same state dir).
    drop(sw);
    let sw = Swtpm::start(dir.path()).unwrap();
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    assert_eq!(tpm.read_public(DEFAULT_AK_HANDLE).unwrap(), Some(ak));
}

#[test]
fn tcti_strings() {
    assert_eq!(
        "device:/dev/tpm0".parse::<Tcti>().unwrap(),
        Tcti::Device("/dev/tpm0".into())
    );
    assert_eq!("device".parse::<Tcti>().unwrap(), Tcti::default());
    assert_eq!(
        "swtpm:host=127.0.0.1,port=4000".parse::<Tcti>().unwrap(),
        Tcti::Swtpm {
            host: "127.0.0.1".into(),
            port: 4000
        }
    );
    assert_eq!(
        "swtpm:port=1".parse::<Tcti>().unwrap().to_string(),
        "swtpm:host=localhost,port=1"
    );
    assert!("mssim:port=1".parse::<Tcti>().is_err());
    assert!("swtpm:port=x".parse::<Tcti>().is_err());
    assert!("swtpm:color=red".parse::<Tcti>().is_err());
    let err = Tpm::open(&Tcti::Device("/nonexistent/tpm".into()))
        .err()
        .unwrap();
    assert!(err.to_string().contains("/nonexistent/tpm"));
}

/// Credential activation against a manufactured swtpm (EK certificate from
/// swtpm_localca): the secret bound to the AK's name and encrypted to the
/// EK comes back; bound to another name, or to another key, it does not.
#[test]
fn credential_activation_against_swtpm() {
    use cocoon_tpm::credential::{make_credential, name_sha256};
    use cocoon_tpm::{DEFAULT_EK_HANDLE, Public};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    cocoon_tpm::swtpm::manufacture_with_ek_cert(&state, &dir.path().join("ca"))
        .expect("swtpm_setup (swtpm-tools, installed by scripts/test)");
    let sw = Swtpm::start(&state).unwrap();
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    let cert = tpm.nv_read(cocoon_tpm::swtpm::EK_CERT_NV_INDEX).unwrap();
    assert_eq!(cert[0], 0x30, "a DER certificate");
    let (ek, _) = tpm.ensure_ek(DEFAULT_EK_HANDLE).unwrap();
    let Public::Rsa { n, e, .. } = ek else {
        panic!("RSA EK expected")
    };
    tpm.ensure_ak(DEFAULT_AK_HANDLE, KeyAlgorithm::EccP256)
        .unwrap();
    let ak_public = tpm.read_public_bytes(DEFAULT_AK_HANDLE).unwrap().unwrap();
    let name = name_sha256(&ak_public);
    let secret = [0x42u8; 32];
    let c = make_credential(&n, e, &name, &secret).unwrap();
    let got = tpm
        .activate_credential(
            DEFAULT_AK_HANDLE,
            DEFAULT_EK_HANDLE,
            &c.id_object,
            &c.encrypted_secret,
        )
        .unwrap();
    assert_eq!(got, secret);
    // Bound to another object's name: the TPM refuses (integrity check).
    let mut other = name.clone();
    other[5] ^= 1;
    let c = make_credential(&n, e, &other, &secret).unwrap();
    let err = tpm
        .activate_credential(
            DEFAULT_AK_HANDLE,
            DEFAULT_EK_HANDLE,
            &c.id_object,
            &c.encrypted_secret,
        )
        .unwrap_err();
    assert!(matches!(err, TpmError::Response { .. }), "{err}");
    // Encrypted to another RSA key: the TPM cannot recover the seed.
    let mut n2 = n.clone();
    n2[100] ^= 0x10;
    if let Ok(c) = make_credential(&n2, e, &name, &secret) {
        assert!(
            tpm.activate_credential(
                DEFAULT_AK_HANDLE,
                DEFAULT_EK_HANDLE,
                &c.id_object,
                &c.encrypted_secret
            )
            .is_err()
        );
    }
    // The session of a failed activation is not leaked: it still works.
    let c = make_credential(&n, e, &name, &[7; 16]).unwrap();
    assert_eq!(
        tpm.activate_credential(
            DEFAULT_AK_HANDLE,
            DEFAULT_EK_HANDLE,
            &c.id_object,
            &c.encrypted_secret
        )
        .unwrap(),
        vec![7; 16]
    );
}

/// vTPM states manufactured ahead: the first VM start manufactures its
/// own and fills the pool in the background; the next one takes a ready
/// state (atomically, its own), also into a directory on another file
/// system, the pool is topped up again, and abandoned half-made states are
/// removed.
#[test]
fn provisioned_states_come_from_the_pool_and_it_refills() {
    use cocoon_tpm::swtpm::{POOL_SIZE, pool_making, pool_ready, provision};
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let permall = |d: &std::path::Path| std::fs::read(d.join("tpm2-00.permall")).unwrap();
    // The TPM states ready in the pool (not being made, not claimed).
    let ready_states = || -> Vec<Vec<u8>> {
        std::fs::read_dir(ca.join("pool"))
            .unwrap()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| permall(&e.path()))
            .collect()
    };
    let wait_ready = || {
        let t = std::time::Instant::now();
        while pool_ready(&ca) < POOL_SIZE || pool_making(&ca) > 0 {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(120),
                "the pool was not refilled"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let s1 = dir.path().join("s1");
    provision(&s1, &ca).expect("swtpm_setup (swtpm-tools, installed by scripts/test)");
    assert!(!permall(&s1).is_empty());
    wait_ready();
    // A half-made state left by a process that died long ago.
    let stale = ca.join("pool").join(".tmp-dead");
    std::fs::create_dir(&stale).unwrap();
    std::fs::File::open(&stale)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
    let ready = ready_states();
    assert_eq!(ready.len(), POOL_SIZE);
    // An existing empty directory is fine, as the VM start makes it.
    let s2 = dir.path().join("s2");
    std::fs::create_dir(&s2).unwrap();
    provision(&s2, &ca).unwrap();
    let got = permall(&s2);
    assert!(ready.contains(&got), "s2 was not taken from the pool");
    assert_ne!(got, permall(&s1), "two VMs share a TPM state");
    assert!(!stale.exists(), "the abandoned state was not removed");
    wait_ready();
    // A VM state on another file system than the CA (the shim keeps its
    // CA under /var/lib and its VMs on the tmpfs /run): copied, and the
    // pool keeps no claimed leftover.
    let other =
        tempfile::tempdir_in("/dev/shm").expect("/dev/shm (a tmpfs) for a second file system");
    {
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &std::path::Path| std::fs::metadata(p).unwrap().dev();
        assert_ne!(
            dev(other.path()),
            dev(&ca),
            "this test needs /dev/shm on another file system than {}",
            ca.display()
        );
    }
    let ready = ready_states();
    let s3 = other.path().join("s3");
    std::fs::create_dir(&s3).unwrap();
    provision(&s3, &ca).expect("a state taken across file systems");
    assert!(
        ready.contains(&permall(&s3)),
        "s3 was not taken from the pool"
    );
    assert!(
        !std::fs::read_dir(ca.join("pool"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".taken-")),
        "a claimed state was left in the pool"
    );
    assert_eq!(
        ready_states().iter().filter(|s| ready.contains(s)).count(),
        ready.len() - 1,
        "the state taken is still in the pool"
    );
    wait_ready();
    // Every state is its own TPM: its EK certificate differs.
    let ek_cert = |d: &std::path::Path| {
        let sw = Swtpm::start(d).unwrap();
        let mut tpm = Tpm::open(&sw.tcti()).unwrap();
        tpm.nv_read(cocoon_tpm::swtpm::EK_CERT_NV_INDEX).unwrap()
    };
    assert_ne!(ek_cert(&s1), ek_cert(&s2));
}
