//! Every captured hardware fixture, end to end through the trustee's
//! appraisal: the verifier's claims (with the verification time pinned
//! inside the collateral's validity) become the policy input exactly as
//! `attest` builds it, and the default attestation policy must refuse them
//! with no reference values registered (saying which to register), and
//! give the expected appraisal once the right ones are. Drift between what
//! a verifier emits and what the policy reads fails here, and so does any
//! difference between regorus's virtual machine, which evaluates the
//! policy, and its interpreter.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cocoon_attestation::policy::RegoPolicy;
use cocoon_attestation::{DEFAULT_CPU_POLICY_TEXT, Verdict, annotated_evidence, appraise};
use cocoon_rvps::Rvps;
use cocoon_types::Tee;
use cocoon_verifier::{KeyTrust, TeeClaims, TrustedKeys, Verifier, VerifyInput};
use ear::TrustTier;
use serde_json::{Value, json};
use std::sync::Arc;

/// 2025-06-01: inside the Azure VCEK's and every PCK chain's validity.
const AZ_AT: u64 = 1_748_736_000;

fn json_fixture(rel: &str) -> Value {
    serde_json::from_slice(&cocoon_fixtures::read(rel)).unwrap()
}

/// A default policy over a fresh RVPS holding `rvs`.
fn policy(rvs: &[(String, Value)]) -> (tempfile::TempDir, RegoPolicy) {
    let dir = tempfile::tempdir().unwrap();
    let store = cocoon_store::SqliteStore::open(&dir.path().join("db")).unwrap();
    let rvps = Rvps::new(Arc::new(store));
    for (name, value) in rvs {
        rvps.add(name, value.clone(), None).unwrap();
    }
    let p = RegoPolicy::compile("default_cpu", DEFAULT_CPU_POLICY_TEXT, Some(&rvps)).unwrap();
    (dir, p)
}

/// The appraisal of `claims`; the policy's rules on the virtual machine
/// must give what regorus's interpreter gives on the same input.
fn verdict(tee: Tee, claims: TeeClaims, rvs: &[(String, Value)]) -> Verdict {
    let input = annotated_evidence(tee, claims, json!({}), None);
    let (_d, p) = policy(rvs);
    for rule in ["trust_claims", "explain"] {
        assert!(p.on_vm(rule), "{rule} is not on the VM");
        assert_eq!(
            p.eval(rule, &input, None).unwrap(),
            p.eval_on_interpreter(rule, &input, None).unwrap(),
            "{tee:?}: the VM and the interpreter differ on {rule}"
        );
    }
    appraise(&p, &input).unwrap()
}

/// (executables, hardware, configuration) of a verdict.
fn vector(v: &Verdict) -> (i64, i64, i64) {
    let get = |k: &str| v.vector[k].as_i64().unwrap();
    (get("executables"), get("hardware"), get("configuration"))
}

fn rv(name: &str, value: Value) -> (String, Value) {
    (name.to_string(), value)
}

fn list(v: &Value) -> Value {
    json!([v.as_str().unwrap()])
}

/// Refused without reference values, each missing one named.
fn refused_naming(tee: Tee, claims: &TeeClaims, names: &[&str]) {
    let v = verdict(tee, claims.clone(), &[]);
    assert_ne!(v.status, TrustTier::Affirming, "{tee:?}: {:?}", v.vector);
    let text = v.explain.join("\n");
    for n in names {
        assert!(
            text.contains(&format!("'{n}'")),
            "{tee:?}: {n} not named in:\n{text}"
        );
    }
}

fn input<'a>(ev: &'a Value, rd: &'a [u8]) -> VerifyInput<'a> {
    VerifyInput {
        evidence: ev,
        expected_report_data: rd,
        init_data_digest: None,
    }
}

/// The boot PCRs the default policy requires.
const BOOT_PCRS: [usize; 9] = [0, 1, 2, 3, 4, 5, 6, 7, 9];

fn init_none() -> (String, Value) {
    rv("init_data", json!(["none"]))
}

#[test]
fn snp_report_appraisal() {
    use sev::parser::ByteParser;
    let raw = cocoon_fixtures::read("snp/trustee_snp_report.bin");
    let vcek = cocoon_fixtures::read("snp/trustee_snp_vcek.der");
    let report = sev::firmware::guest::AttestationReport::from_bytes(&raw).unwrap();
    let ev =
        json!({"attestation_report": report, "cert_chain": [{"cert_type": "VCEK", "data": vcek}]});
    let rd = raw[0x50..0x90].to_vec();
    let v = cocoon_verifier::snp::SnpVerifier::new().unwrap();
    let c = v.verify(&input(&ev, &rd)).unwrap();
    refused_naming(
        Tee::Snp,
        &c,
        &[
            "snp_launch_measurement",
            "snp_min_tcb_bootloader",
            "snp_min_tcb_tee",
            "snp_min_tcb_snp",
            "snp_min_tcb_microcode",
            "init_data",
        ],
    );
    let s = &c.claims;
    let mut rvs = vec![
        rv("snp_launch_measurement", list(&s["measurement"])),
        init_none(),
    ];
    for part in ["bootloader", "tee", "snp", "microcode"] {
        rvs.push(rv(
            &format!("snp_min_tcb_{part}"),
            list(&s[format!("reported_tcb_{part}")]),
        ));
    }
    let v = verdict(Tee::Snp, c.clone(), &rvs);
    let movable = s["policy_migrate_ma"] == true || s["policy_debug_allowed"] == true;
    assert_eq!(
        vector(&v),
        (3, 2, if movable { 36 } else { 2 }),
        "{:?}",
        v.explain
    );
    // One TCB minimum short: hardware is not affirmed.
    rvs.pop();
    let v = verdict(Tee::Snp, c, &rvs);
    assert_eq!(vector(&v).1, 97);
    assert!(v.explain.join("\n").contains("'snp_min_tcb_microcode'"));
}

#[test]
fn tdx_quote_with_trustee_collateral_appraisal() {
    let quote = cocoon_fixtures::read("tdx/dcapqvl_tdx_quote.bin");
    let q = cocoon_verifier::tdx::quote::TdxQuote::parse(&quote).unwrap();
    let collateral = cocoon_fixtures::path("tdx/dcapqvl_tdx_quote_collateral.json");
    let set = cocoon_verifier::tdx::collateral::CollateralSet::load(&collateral).unwrap();
    let v = cocoon_verifier::tdx::TdxVerifier {
        collateral: Some(Arc::new(set)),
        ..Default::default()
    };
    let ev = json!({"quote": B64.encode(&quote)});
    let c = v
        .verify_at(&input(&ev, &q.body.report_data), dcap_time())
        .unwrap();
    refused_naming(
        Tee::Tdx,
        &c,
        &[
            "tdx_mr_td",
            "tdx_rtmr_0",
            "tdx_rtmr_1",
            "tdx_rtmr_2",
            "init_data",
        ],
    );
    let b = &c.claims["quote"]["body"];
    let rvs = [
        rv("tdx_mr_td", list(&b["mr_td"])),
        rv("tdx_rtmr_0", list(&b["rtmr_0"])),
        rv("tdx_rtmr_1", list(&b["rtmr_1"])),
        rv("tdx_rtmr_2", list(&b["rtmr_2"])),
        init_none(),
    ];
    let verdict_all = verdict(Tee::Tdx, c.clone(), &rvs);
    let tcb = c.claims["tcb_status"].as_str().unwrap();
    let attrs = &c.claims["td_attributes"];
    let debug = attrs["debug"] == true || attrs["migratable"] == true;
    let want_hw = if tcb == "UpToDate" { 2 } else { 97 };
    let want_cfg = if debug { 36 } else { 2 };
    assert_eq!(
        vector(&verdict_all),
        (3, want_hw, want_cfg),
        "{tcb} debug={debug}: {:?}",
        verdict_all.explain
    );
    // MRTD alone (the firmware) never affirms executables.
    let v = verdict(Tee::Tdx, c, &rvs[..1]);
    assert_eq!(vector(&v).0, 33);
    assert!(v.explain.join("\n").contains("RTMR1 is not pinned"));
}

/// 2024-12-01, inside the dcap-qvl collateral's window.
fn dcap_time() -> u64 {
    let c = json_fixture("tdx/dcapqvl_tdx_quote_collateral.json");
    let info: Value = serde_json::from_str(c["tcb_info"].as_str().unwrap()).unwrap();
    let issued = info["issueDate"].as_str().unwrap();
    time::OffsetDateTime::parse(issued, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp() as u64
        + 3600
}

/// Collateral the guest sends is reported separately and never makes the
/// TCB status UpToDate: the hardware claim is not affirmed, and the
/// appraisal says why.
#[test]
fn tdx_quote_with_guest_collateral_is_not_up_to_date() {
    let quote = cocoon_fixtures::read("tdx/dcapqvl_tdx_quote.bin");
    let q = cocoon_verifier::tdx::quote::TdxQuote::parse(&quote).unwrap();
    let ev = json!({
        "quote": B64.encode(&quote),
        "collateral": json_fixture("tdx/dcapqvl_tdx_quote_collateral.json"),
    });
    let v = cocoon_verifier::tdx::TdxVerifier::default();
    let c = v
        .verify_at(&input(&ev, &q.body.report_data), dcap_time())
        .unwrap();
    assert_eq!(c.claims["tcb_status"], "unknown");
    let judged = c.claims["evidence_collateral_tcb_status"].as_str().unwrap();
    assert!(!judged.is_empty());
    let b = &c.claims["quote"]["body"];
    let rvs = [
        rv("tdx_mr_td", list(&b["mr_td"])),
        rv("tdx_rtmr_0", list(&b["rtmr_0"])),
        rv("tdx_rtmr_1", list(&b["rtmr_1"])),
        rv("tdx_rtmr_2", list(&b["rtmr_2"])),
        init_none(),
    ];
    let v = verdict(Tee::Tdx, c, &rvs);
    assert_eq!(vector(&v).1, 97);
    assert!(
        v.explain
            .join("\n")
            .contains("comes only from collateral the guest sent"),
        "{:?}",
        v.explain
    );
}

/// The CC event log route: a captured OVMF CCEL's per-register digests
/// (the claims a replayed log yields; no captured quote shares its RTMRs,
/// so the replay itself is tested in the verifier) pin RTMR0-2 in place of
/// their values, each digest whatever its event is labelled. The quote is
/// a debug TD, which configuration names.
#[test]
fn tdx_ccel_digests_pin_the_registers() {
    use cocoon_verifier::eventlog::TcgEventLog;
    let q = cocoon_verifier::tdx::quote::TdxQuote::parse(&cocoon_fixtures::read(
        "tdx/trustee_tdx_quote_v4.dat",
    ))
    .unwrap();
    let log = TcgEventLog::parse(&cocoon_fixtures::read("eventlog/trustee_ccel_ovmf.bin")).unwrap();
    let mut tdx = cocoon_verifier::tdx::claims(&q, Some(&log));
    tdx["tcb_status"] = json!("UpToDate");
    let claims = TeeClaims {
        class: cocoon_verifier::TeeClass::Cpu,
        claims: tdx.clone(),
        report_data: hex::encode(q.body.report_data),
        init_data: None,
    };
    let ccel = &tdx["ccel"];
    let rvs = [
        rv("tdx_mr_td", list(&tdx["quote"]["body"]["mr_td"])),
        rv("tdx_ccel_rtmr_0", ccel["rtmr0"].clone()),
        rv("tdx_ccel_rtmr_1", ccel["rtmr1"].clone()),
        rv("tdx_ccel_rtmr_2", ccel["rtmr2"].clone()),
        init_none(),
    ];
    let v = verdict(Tee::Tdx, claims.clone(), &rvs);
    assert_eq!(vector(&v), (3, 2, 36), "{:?}", v.explain);
    assert!(v.explain.join("\n").contains("a debug TD"));
    // Each register's digests must all be pinned: one left out and the
    // register is not pinned.
    for reg in 0..3 {
        let mut some = rvs.to_vec();
        let all = ccel[format!("rtmr{reg}")].as_array().unwrap().clone();
        let left_out = &all[all.len() - 1];
        let rest: Vec<&Value> = all.iter().filter(|d| *d != left_out).collect();
        some[1 + reg].1 = json!(rest);
        let v = verdict(Tee::Tdx, claims.clone(), &some);
        assert_eq!(vector(&v).0, 33, "RTMR{reg}");
        let text = v.explain.join("\n");
        assert!(
            text.contains(&format!("'tdx_ccel_rtmr_{reg}'")),
            "RTMR{reg}: {text}"
        );
    }
}

#[test]
fn sgx_quote_appraisal() {
    let quote = cocoon_fixtures::read("sgx/dcapqvl_sgx_quote.bin");
    let q = cocoon_verifier::tdx::quote::SgxQuote::parse(&quote).unwrap();
    let collateral = cocoon_fixtures::path("sgx/dcapqvl_sgx_quote_collateral.json");
    let set = cocoon_verifier::tdx::collateral::CollateralSet::load(&collateral).unwrap();
    let v = cocoon_verifier::sgx::SgxVerifier {
        collateral: Some(Arc::new(set)),
        ..Default::default()
    };
    let c = json_fixture("sgx/dcapqvl_sgx_quote_collateral.json");
    let info: Value = serde_json::from_str(c["tcb_info"].as_str().unwrap()).unwrap();
    let at = time::OffsetDateTime::parse(
        info["issueDate"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp() as u64
        + 3600;
    let ev = json!({"quote": B64.encode(&quote)});
    let c = v.verify_at(&input(&ev, &q.body.report_data), at).unwrap();
    refused_naming(
        Tee::Sgx,
        &c,
        &["sgx_mr_enclave", "sgx_mr_signer", "init_data"],
    );
    let b = &c.claims["body"];
    let rvs = [
        rv("sgx_mr_enclave", list(&b["mr_enclave"])),
        rv("sgx_mr_signer", list(&b["mr_signer"])),
        init_none(),
    ];
    let v = verdict(Tee::Sgx, c.clone(), &rvs);
    let tcb = c.claims["tcb_status"].as_str().unwrap();
    let want_hw = if tcb == "UpToDate" { 2 } else { 97 };
    let flags = b["attributes.flags"].as_str().unwrap();
    let debug = u8::from_str_radix(&flags[..2], 16).unwrap() & 2 != 0;
    assert_eq!(
        vector(&v),
        (3, want_hw, if debug { 36 } else { 2 }),
        "{tcb} {flags}: {:?}",
        v.explain
    );
    // MRENCLAVE without MRSIGNER is not enough.
    assert_eq!(vector(&verdict(Tee::Sgx, c, &rvs[..1])).0, 33);
}

struct Aks(Vec<u8>, bool);

impl TrustedKeys for Aks {
    fn trusted_by(&self, spki: &[u8]) -> Result<Option<KeyTrust>, String> {
        Ok((spki == self.0.as_slice()).then(|| KeyTrust {
            by: "admin".into(),
            hardware_backed: self.1,
        }))
    }
}

/// The TPM quote: boot PCRs must be pinned, and the hardware claim is only
/// affirmed for an AK the admin declared hardware-backed.
#[test]
fn tpm_quote_appraisal() {
    let ev = json_fixture("tpm/trustee_tpm_evidence.json");
    let ak = B64.decode(ev["ak_public"].as_str().unwrap()).unwrap();
    let attest = B64
        .decode(ev["tpm_quote"]["message"].as_str().unwrap())
        .unwrap();
    let rd = cocoon_tpm::Attest::parse(&attest).unwrap().extra_data;
    let verify = |hw: bool| {
        cocoon_verifier::tpm::TpmVerifier::new(Arc::new(Aks(ak.clone(), hw)))
            .verify(&input(&ev, &rd))
            .unwrap()
    };
    let c = verify(false);
    refused_naming(
        Tee::Tpm,
        &c,
        &["tpm_pcr0", "tpm_pcr1", "tpm_pcr7", "tpm_pcr9", "init_data"],
    );
    let pcrs: Vec<(String, Value)> = BOOT_PCRS
        .iter()
        .map(|n| {
            rv(
                &format!("tpm_pcr{n}"),
                list(&c.claims[format!("pcr{n:02}")]),
            )
        })
        .chain([init_none()])
        .collect();
    let v = verdict(Tee::Tpm, c, &pcrs);
    assert_eq!(vector(&v), (3, 32, 2), "{:?}", v.explain);
    assert_eq!(v.status, TrustTier::Warning);
    assert!(v.explain.join("\n").contains("--hardware-backed"));
    let v = verdict(Tee::Tpm, verify(true), &pcrs);
    assert_eq!(vector(&v), (3, 2, 2), "{:?}", v.explain);
    assert_eq!(v.status, TrustTier::Affirming);
    // Every boot PCR is needed.
    let v = verdict(Tee::Tpm, verify(true), &pcrs[1..]);
    assert_eq!(vector(&v).0, 33);
}

/// Azure SNP and TDX vTPM evidence: the vTPM's boot PCRs, the paravisor's
/// launch measurement or MRTD, the TCB.
#[test]
fn azure_vtpm_appraisal() {
    let nonce = |ev: &Value| {
        let m = hex::decode(ev["tpm_quote"]["message"].as_str().unwrap()).unwrap();
        cocoon_tpm::Attest::parse(&m).unwrap().extra_data
    };
    let snp = Arc::new(cocoon_verifier::snp::SnpVerifier::new().unwrap());
    for file in [
        "az-snp-vtpm/trustee_evidence_v1.json",
        "az-snp-vtpm/trustee_evidence_v2.json",
    ] {
        let ev = json_fixture(file);
        let rd = nonce(&ev);
        let c = cocoon_verifier::az::AzSnpVtpmVerifier::new(snp.clone())
            .verify_at(&input(&ev, &rd), AZ_AT)
            .unwrap();
        refused_naming(
            Tee::AzSnpVtpm,
            &c,
            &[
                "tpm_pcr4",
                "az_snp_hcl_measurement",
                "snp_min_tcb_snp",
                "init_data",
            ],
        );
        let mut rvs: Vec<(String, Value)> = BOOT_PCRS
            .iter()
            .map(|n| {
                rv(
                    &format!("tpm_pcr{n}"),
                    list(&c.claims["tpm"][format!("pcr{n:02}")]),
                )
            })
            .collect();
        rvs.push(rv("az_snp_hcl_measurement", list(&c.claims["measurement"])));
        for part in ["bootloader", "tee", "snp", "microcode"] {
            rvs.push(rv(
                &format!("snp_min_tcb_{part}"),
                list(&c.claims[format!("reported_tcb_{part}")]),
            ));
        }
        rvs.push(init_none());
        let movable =
            c.claims["policy_migrate_ma"] == true || c.claims["policy_debug_allowed"] == true;
        let v = verdict(Tee::AzSnpVtpm, c, &rvs);
        assert_eq!(
            vector(&v),
            (3, 2, if movable { 36 } else { 2 }),
            "{file}: {:?}",
            v.explain
        );
    }
    let ev = json_fixture("az-tdx-vtpm/trustee_evidence_v1.json");
    let rd = nonce(&ev);
    let c = cocoon_verifier::az::AzTdxVtpmVerifier::default()
        .verify_at(&input(&ev, &rd), AZ_AT)
        .unwrap();
    let mut rvs: Vec<(String, Value)> = BOOT_PCRS
        .iter()
        .map(|n| {
            rv(
                &format!("tpm_pcr{n}"),
                list(&c.claims["tpm"][format!("pcr{n:02}")]),
            )
        })
        .collect();
    rvs.push(rv(
        "az_tdx_hcl_mr_td",
        list(&c.claims["quote"]["body"]["mr_td"]),
    ));
    rvs.push(init_none());
    let attrs = &c.claims["td_attributes"];
    let movable = attrs["debug"] == true || attrs["migratable"] == true;
    let v = verdict(Tee::AzTdxVtpm, c, &rvs);
    // No DCAP collateral for this platform: the TCB stays unknown.
    assert_eq!(
        vector(&v),
        (3, 97, if movable { 36 } else { 2 }),
        "{:?}",
        v.explain
    );
    assert!(
        v.explain
            .join("\n")
            .contains("az-tdx-vtpm.tcb_status=unknown")
    );
}

/// The CCA token: its realm verifies (its platform's CPAK was not
/// published with it, so the platform signature is not checked here); RIM
/// and every REM must be pinned.
#[test]
fn cca_token_appraisal() {
    use cocoon_verifier::cca;
    let raw = cocoon_fixtures::read("cca/trustee_cca_example_token.cbor");
    let t = cca::token::CcaToken::parse(&raw).unwrap();
    cca::verify_realm(&t).unwrap();
    let claims = TeeClaims {
        class: cocoon_verifier::TeeClass::Cpu,
        claims: cca::claims(&t),
        report_data: hex::encode(&t.realm.challenge),
        init_data: None,
    };
    let realm = &claims.claims["realm"];
    let rems = realm["cca-realm-extensible-measurements"]
        .as_array()
        .unwrap()
        .clone();
    refused_naming(
        Tee::Cca,
        &claims,
        &[
            "cca_realm_initial_measurement",
            "cca_realm_rem0",
            "init_data",
        ],
    );
    let mut rvs = vec![
        rv(
            "cca_realm_initial_measurement",
            list(&realm["cca-realm-initial-measurement"]),
        ),
        init_none(),
    ];
    for (i, m) in rems.iter().enumerate() {
        rvs.push(rv(&format!("cca_realm_rem{i}"), list(m)));
    }
    // Without its firmware pinned, the platform is not affirmed.
    let v = verdict(Tee::Cca, claims.clone(), &rvs);
    assert_eq!(vector(&v).1, 97);
    assert!(v.explain.join("\n").contains("'cca_platform_sw_component'"));
    let sw: Vec<Value> = claims.claims["platform"]["cca-platform-sw-components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["measurement-value"].clone())
        .collect();
    rvs.push(rv("cca_platform_sw_component", json!(sw)));
    let v = verdict(Tee::Cca, claims.clone(), &rvs);
    let lifecycle = claims.claims["platform"]["cca-platform-lifecycle"]
        .as_u64()
        .unwrap();
    let secured = (0x3000..=0x30ff).contains(&lifecycle);
    assert_eq!(
        vector(&v),
        (3, 2, if secured { 2 } else { 36 }),
        "{:?}",
        v.explain
    );
    // The RIM alone is not enough.
    let v = verdict(Tee::Cca, claims, &rvs[..2]);
    assert_eq!(vector(&v).0, 33);
}
