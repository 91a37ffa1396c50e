//! The `tpm` verifier replays a firmware TCG event log against a real
//! quote: a swtpm's PCRs are extended the way firmware would, the log
//! records the same events, and tampering with the log is caught.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cocoon_tpm::swtpm::Swtpm;
use cocoon_tpm::{DEFAULT_AK_HANDLE, KeyAlgorithm, Tpm};
use cocoon_verifier::tpm::TpmVerifier;
use cocoon_verifier::{KeyTrust, TrustedKeys, Verifier, VerifyError, VerifyInput};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;

struct One(Vec<u8>);
impl TrustedKeys for One {
    fn trusted_by(&self, spki: &[u8]) -> Result<Option<KeyTrust>, String> {
        Ok((spki == self.0.as_slice()).then(|| KeyTrust {
            by: "test".into(),
            hardware_backed: true,
        }))
    }
}

/// A crypto-agile log: the Spec ID header (SHA-256 only), an optional
/// StartupLocality event, then `events` (PCR, type, data).
fn tcg_log(locality: Option<u8>, events: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
    let mut spec = b"Spec ID Event03\0".to_vec();
    spec.extend(0u32.to_le_bytes()); // platform class
    spec.extend([0, 2, 0, 2]); // minor, major, errata, uintn size
    spec.extend(1u32.to_le_bytes());
    spec.extend(0x000bu16.to_le_bytes());
    spec.extend(32u16.to_le_bytes());
    spec.push(0); // vendor info size
    let mut out = Vec::new();
    out.extend(0u32.to_le_bytes());
    out.extend(3u32.to_le_bytes());
    out.extend([0u8; 20]);
    out.extend((spec.len() as u32).to_le_bytes());
    out.extend(spec);
    let mut event2 = |index: u32, ty: u32, digest: [u8; 32], data: &[u8]| {
        out.extend(index.to_le_bytes());
        out.extend(ty.to_le_bytes());
        out.extend(1u32.to_le_bytes());
        out.extend(0x000bu16.to_le_bytes());
        out.extend(digest);
        out.extend((data.len() as u32).to_le_bytes());
        out.extend(data);
    };
    if let Some(l) = locality {
        let mut d = b"StartupLocality\0".to_vec();
        d.push(l);
        event2(0, 3, [0; 32], &d);
    }
    for (index, ty, data) in events {
        event2(*index, *ty, Sha256::digest(data).into(), data);
    }
    out
}

/// A swtpm whose PCRs were extended with `events` as firmware would, and
/// its quote over them: (evidence builder taking a log, AK SPKI, nonce).
struct Quoted {
    _dir: tempfile::TempDir,
    _sw: Swtpm,
    quote: cocoon_tpm::Quote,
    pcrs: Vec<[u8; 32]>,
    spki: Vec<u8>,
    nonce: [u8; 32],
}

impl Quoted {
    fn new(events: &[(u32, u32, Vec<u8>)], nonce: [u8; 32]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sw = Swtpm::start(dir.path()).expect("swtpm (scripts/test installs it)");
        let mut tpm = Tpm::open(&sw.tcti()).unwrap();
        let (ak, _) = tpm
            .ensure_ak(DEFAULT_AK_HANDLE, KeyAlgorithm::EccP256)
            .unwrap();
        for (index, _, data) in events {
            tpm.pcr_extend_sha256(*index, &Sha256::digest(data).into())
                .unwrap();
        }
        let quote = tpm.quote(DEFAULT_AK_HANDLE, &nonce).unwrap();
        let pcrs = tpm.pcr_read_sha256().unwrap();
        let spki = ak.to_spki_der().unwrap();
        Self {
            _dir: dir,
            _sw: sw,
            quote,
            pcrs,
            spki,
            nonce,
        }
    }

    fn evidence(&self, log: &[u8]) -> Value {
        json!({
            "tpm_quote": {
                "signature": B64.encode(&self.quote.signature),
                "message": B64.encode(&self.quote.attest),
                "pcrs": self.pcrs.iter().map(hex::encode).collect::<Vec<_>>(),
            },
            "ak_public": B64.encode(&self.spki),
            "eventlog": B64.encode(log),
        })
    }

    fn verify(&self, ev: &Value) -> Result<cocoon_verifier::TeeClaims, VerifyError> {
        self.verify_with(ev, None)
    }

    fn verify_with(
        &self,
        ev: &Value,
        init_data_digest: Option<&[u8]>,
    ) -> Result<cocoon_verifier::TeeClaims, VerifyError> {
        TpmVerifier::new(Arc::new(One(self.spki.clone()))).verify(&VerifyInput {
            evidence: ev,
            expected_report_data: &self.nonce,
            init_data_digest,
        })
    }
}

#[test]
fn firmware_log_replays_against_a_real_quote() {
    let events: Vec<(u32, u32, Vec<u8>)> = vec![
        (0, 0x8000_0008, b"platform firmware blob".to_vec()),
        (1, 0x8000_0001, b"SecureBoot=1".to_vec()),
        (4, 0x8000_0003, b"\\EFI\\BOOT\\BOOTX64.EFI".to_vec()),
        (7, 0x8000_00e0, b"db: Cocoon test CA".to_vec()),
        (4, 0x8000_0003, b"vmlinuz".to_vec()),
    ];
    let quoted = Quoted::new(&events, [5u8; 32]);
    let evidence = |log: &[u8]| quoted.evidence(log);
    let run = |ev: &Value| quoted.verify(ev);
    let c = run(&evidence(&tcg_log(None, &events))).unwrap();
    let logged = c.claims["uefi_event_logs"].as_array().unwrap();
    assert_eq!(logged.len(), events.len());
    assert_eq!(logged[3]["type_name"], "EV_EFI_VARIABLE_AUTHORITY");
    assert_eq!(logged[2]["index"], 4);
    assert!(logged.iter().all(|e| e["digest_matches_event"] == true));

    let refused = |log: Vec<u8>| -> String {
        match run(&evidence(&log)) {
            Err(e @ VerifyError::Invalid { .. }) => e.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    };
    // One event changed, one dropped, one added, two swapped.
    let mut changed = events.clone();
    changed[3].2 = b"db: another CA".to_vec();
    assert!(refused(tcg_log(None, &changed)).contains("does not replay to PCR 7"));
    let dropped: Vec<_> = events[..4].to_vec();
    assert!(refused(tcg_log(None, &dropped)).contains("PCR 4"));
    let mut added = events.clone();
    added.push((1, 0x8000_0001, b"extra".to_vec()));
    assert!(refused(tcg_log(None, &added)).contains("PCR 1"));
    let mut swapped = events.clone();
    swapped.swap(2, 4);
    assert!(refused(tcg_log(None, &swapped)).contains("PCR 4"));
    // A PCR's only event dropped: its register is still compared (to zero).
    let no_pcr1: Vec<_> = events.iter().filter(|e| e.0 != 1).cloned().collect();
    assert!(refused(tcg_log(None, &no_pcr1)).contains("PCR 1"));
    // PCR 0 started at locality 0 here: a log claiming locality 3 is wrong.
    assert!(refused(tcg_log(Some(3), &events)).contains("PCR 0"));
    // Not a log at all.
    let e = run(&evidence(b"not a log")).unwrap_err();
    assert!(matches!(e, VerifyError::Malformed { .. }), "{e}");
}

/// Events at PCR 8 (which the agent extends with initdata) are not
/// replayed, and EV_NO_ACTION events are never extended, so both are left
/// out of the claims; the rest are kept. An extended PCR 8 binds initdata:
/// without the document whose digest it holds, the evidence is refused.
#[test]
fn unverified_pcrs_are_left_out_of_the_claims() {
    let grub = b"grub_cmd: linux /vmlinuz".to_vec();
    let events: Vec<(u32, u32, Vec<u8>)> =
        vec![(4, 0x8000_0003, b"kernel".to_vec()), (8, 0xd, grub.clone())];
    let quoted = Quoted::new(&events, [6u8; 32]);
    let mut logged = events.clone();
    logged.insert(1, (4, 0x3, b"not measured".to_vec()));
    let ev = quoted.evidence(&tcg_log(None, &logged));
    let e = quoted.verify(&ev).unwrap_err();
    assert!(
        matches!(e, VerifyError::InitDataWithheld { field: "PCR 8", .. }),
        "{e}"
    );
    let pcr8_digest = Sha256::digest(&grub);
    let c = quoted.verify_with(&ev, Some(&pcr8_digest)).unwrap();
    let logged = c.claims["uefi_event_logs"].as_array().unwrap();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0]["index"], 4);
}

/// Every measured event must carry a digest for each bank the header lists.
#[test]
fn events_without_every_bank_are_refused() {
    let mut log = tcg_log(None, &[(4, 0x8000_0003, b"kernel".to_vec())]);
    // The header's bank count: 1 -> 2 (SHA-256 and SHA-384), sizes appended.
    let spec_start = 32;
    let banks_at = spec_start + 16 + 4 + 4;
    log[banks_at] = 2;
    let insert_at = banks_at + 4 + 4;
    log.splice(insert_at..insert_at, [0x0c, 0x00, 48, 0x00]);
    let size_at = spec_start - 4;
    let size = u32::from_le_bytes(log[size_at..size_at + 4].try_into().unwrap()) + 4;
    log[size_at..size_at + 4].copy_from_slice(&size.to_le_bytes());
    let e = cocoon_verifier::eventlog::TcgEventLog::parse(&log).unwrap_err();
    assert!(
        e.to_string()
            .contains("1 digests, the header lists 2 banks"),
        "{e}"
    );
}

#[test]
fn startup_locality_sets_pcr0s_start() {
    let log = tcg_log(Some(3), &[(0, 0x8, b"crtm".to_vec())]);
    let parsed = cocoon_verifier::eventlog::TcgEventLog::parse(&log).unwrap();
    let regs = parsed.replay(cocoon_verifier::eventlog::AlgId::SHA256);
    let mut start = [0u8; 32];
    start[31] = 3;
    let mut h = Sha256::new();
    h.update(start);
    h.update(Sha256::digest(b"crtm"));
    assert_eq!(regs[&0], h.finalize().to_vec());
}
