//! The `tpm` TEE: a TPM 2.0 quote over SHA-256 PCRs 0-23, signed by an
//! attestation key (AK) the trustee has been told to trust
//! (`cocoon admin add-tpm-ak`). Checks, in order: the AK is trusted, the
//! quote signature, the PCR values against the signed digest, the report
//! data in extraData, and PCR 8 against the initdata digest.
//!
//! Claims, as CoCo's TPM verifier names them: `report_data` and `init_data`
//! (PCR 8) in hex, `pcr00`..`pcr23` in hex; plus `reset_count`,
//! `restart_count`, `ak_fingerprint` (SHA-256 of the AK's DER SPKI),
//! `ak_trusted_by` (`admin`, or `ek:<CA>` for an AK enrolled by EK
//! certificate), `ak_hardware_backed` (whether the admin declared the AK,
//! or the EK CA that enrolled it, hardware) and,
//! when the evidence carries the agent's runtime event log (`aa_eventlog`,
//! one `<domain> <operation> <content>` line per event), `runtime_events`:
//! the log is replayed (SHA-256 of each line extended from zero) and must
//! equal PCR 23, the register the agent extends on vTPMs. When the evidence
//! carries the firmware's TCG event log (`eventlog`, b64), it is replayed
//! (SHA-256 bank, honouring a StartupLocality event) and every PCR it
//! extends must equal the quoted value (but PCRs 8 and 23, which also take
//! the agent's extends); its events become `uefi_event_logs`.

pub mod ek;

use crate::{TeeClaims, TeeClass, TrustedKeys, Verifier, VerifyError, VerifyInput, hex_short};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cocoon_tpm::{AkPublicKey, TpmError, extend_sha256, verify_quote};
use cocoon_types::Tee;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

const TEE: &str = "tpm";
/// PCR holding the initdata digest.
pub const INITDATA_PCR: usize = 8;
/// PCR the attestation agent extends with runtime events on vTPMs.
pub const RUNTIME_PCR: usize = 23;

/// TPM evidence as CoCo's TPM attester sends it.
#[derive(Debug, Deserialize)]
struct TpmEvidence {
    ak_public: String,
    tpm_quote: QuoteJson,
    #[serde(default)]
    aa_eventlog: Option<String>,
    /// The firmware's TCG event log (b64), replayed against the PCRs.
    #[serde(default)]
    eventlog: Option<String>,
}

/// SHA-256 PCR values sent as hex strings.
pub(crate) fn parse_pcrs(hex_pcrs: &[String]) -> Result<Vec<[u8; 32]>, String> {
    hex_pcrs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            hex::decode(p)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| format!("pcrs[{i}] is not 32 bytes of hex"))
        })
        .collect()
}

/// Whether the firmware log's events at PCR `index` are replayed against
/// the quote (PCRs 8 and 23 also take the agent's extends).
pub fn firmware_pcr_checked(index: u32) -> bool {
    index as usize != INITDATA_PCR && index as usize != RUNTIME_PCR && (index as usize) < 24
}

/// Replays the firmware's TCG event log (SHA-256 bank) against the quoted
/// PCRs: PCRs 0-7 (the firmware's) and every other PCR the log extends
/// (but 8 and 23) must hold exactly the replayed value; a firmware PCR the
/// log has no events for must be unextended.
pub fn check_firmware_log(
    log: &crate::eventlog::TcgEventLog,
    pcrs: &[[u8; 32]],
) -> Result<(), VerifyError> {
    if !log
        .algorithms
        .iter()
        .any(|(a, _)| *a == crate::eventlog::AlgId::SHA256)
    {
        return Err(VerifyError::Invalid {
            tee: TEE,
            reason: "the firmware event log has no SHA-256 bank to replay".into(),
        });
    }
    if let Some(e) = log.events.iter().find(|e| e.index as usize >= pcrs.len()) {
        return Err(VerifyError::Invalid {
            tee: TEE,
            reason: format!(
                "the firmware event log extends PCR {}, which does not exist",
                e.index
            ),
        });
    }
    let regs = log.replay(crate::eventlog::AlgId::SHA256);
    let indices: std::collections::BTreeSet<u32> = (0..8).chain(regs.keys().copied()).collect();
    for index in indices.into_iter().filter(|i| firmware_pcr_checked(*i)) {
        // A register the log never touches is still zero (PCR 0 too: a
        // StartupLocality event puts it in `regs`).
        let expected = regs.get(&index).cloned().unwrap_or_else(|| vec![0u8; 32]);
        if pcrs[index as usize].as_slice() != expected.as_slice() {
            return Err(VerifyError::Invalid {
                tee: TEE,
                reason: format!(
                    "the firmware event log does not replay to PCR {index}: events were added, removed or changed"
                ),
            });
        }
    }
    Ok(())
}

/// PCR 8 against the initdata digest: one SHA-256 extend of the digest
/// from reset. Without a digest PCR 8 must be unextended: a guest that
/// extended it bound an initdata it now keeps back.
pub fn check_init_data_pcr(
    tee: &'static str,
    pcr8: &[u8; 32],
    input: &VerifyInput<'_>,
) -> Result<(), VerifyError> {
    match input.init_data_digest {
        Some(digest) => {
            let d: [u8; 32] = digest
                .try_into()
                .map_err(|_| VerifyError::InitDataMismatch)?;
            if extend_sha256(&[0; 32], &d) == *pcr8 {
                Ok(())
            } else {
                Err(VerifyError::InitDataMismatch)
            }
        }
        None => crate::check_init_data_field(tee, "PCR 8", pcr8, input, true),
    }
}

/// Replays the agent's runtime event log against `pcr`; returns the events.
fn replay_runtime_log(log: &str, pcr: &[u8; 32]) -> Result<Value, VerifyError> {
    let mut acc = [0u8; 32];
    let mut events = Vec::new();
    for line in log.lines() {
        let d: [u8; 32] = Sha256::digest(line.as_bytes()).into();
        acc = extend_sha256(&acc, &d);
        let mut parts = line.splitn(3, ' ');
        events.push(serde_json::json!({
            "domain": parts.next().unwrap_or_default(),
            "operation": parts.next().unwrap_or_default(),
            "content": parts.next().unwrap_or_default(),
        }));
    }
    if &acc != pcr {
        return Err(VerifyError::Invalid {
            tee: TEE,
            reason: format!(
                "the runtime event log ({} events) does not replay to PCR {RUNTIME_PCR}: events were added, removed or changed",
                events.len()
            ),
        });
    }
    Ok(Value::Array(events))
}

#[derive(Debug, Deserialize)]
struct QuoteJson {
    signature: String,
    message: String,
    pcrs: Vec<String>,
}

fn malformed(detail: impl Into<String>) -> VerifyError {
    VerifyError::Malformed {
        tee: TEE,
        detail: detail.into(),
    }
}

fn tpm_error(e: TpmError) -> VerifyError {
    match e {
        TpmError::Parse { .. } => malformed(e.to_string()),
        other => VerifyError::Invalid {
            tee: TEE,
            reason: other.to_string(),
        },
    }
}

/// Whether `extra` carries `expected`: equal, or `expected` zero-padded to
/// 64 bytes (the quote's extraData is a fixed 64-byte field for CoCo).
fn report_data_matches(extra: &[u8], expected: &[u8]) -> bool {
    if extra.len() == expected.len() {
        return extra == expected;
    }
    extra.len() == cocoon_tpm::structs::MAX_DIGEST
        && extra.starts_with(expected)
        && extra[expected.len()..].iter().all(|b| *b == 0)
}

/// The fingerprint the trustee lists AKs by: SHA-256 of the DER SPKI, hex.
pub fn ak_fingerprint(spki_der: &[u8]) -> String {
    hex::encode(Sha256::digest(spki_der))
}

/// Verifier for the `tpm` TEE.
pub struct TpmVerifier {
    trusted: Arc<dyn TrustedKeys>,
}

impl TpmVerifier {
    /// A verifier trusting the AKs in `trusted`.
    pub fn new(trusted: Arc<dyn TrustedKeys>) -> Self {
        Self { trusted }
    }
}

impl Verifier for TpmVerifier {
    fn tee(&self) -> Tee {
        Tee::Tpm
    }

    fn verify(&self, input: &VerifyInput<'_>) -> Result<TeeClaims, VerifyError> {
        let ev: TpmEvidence = serde::Deserialize::deserialize(input.evidence).map_err(|e| {
            malformed(format!(
                "expected {{\"ak_public\", \"tpm_quote\": {{\"signature\", \"message\", \"pcrs\"}}}}: {e}"
            ))
        })?;
        let b64 = |field: &str, s: &str| {
            B64.decode(s)
                .map_err(|_| malformed(format!("{field} is not base64")))
        };
        let ak_der = b64("ak_public", &ev.ak_public)?;
        let attest = b64("tpm_quote.message", &ev.tpm_quote.message)?;
        let signature = b64("tpm_quote.signature", &ev.tpm_quote.signature)?;
        let pcrs = parse_pcrs(&ev.tpm_quote.pcrs).map_err(malformed)?;

        let fingerprint = ak_fingerprint(&ak_der);
        let trusted_by = self
            .trusted
            .trusted_by(&ak_der)
            .map_err(VerifyError::Backend)?;
        let Some(trusted_by) = trusted_by else {
            return Err(VerifyError::UntrustedKey {
                tee: TEE,
                detail: format!(
                    "AK {fingerprint} is not registered: run `cocoon tpm enroll` on the guest and `cocoon admin add-tpm-ak --file ak.pem` on the trustee"
                ),
            });
        };
        let ak = AkPublicKey::from_spki_der(&ak_der).map_err(tpm_error)?;
        let quote = verify_quote(&ak, &attest, &signature, &pcrs).map_err(tpm_error)?;

        let extra = &quote.attest.extra_data;
        if !report_data_matches(extra, input.expected_report_data) {
            return Err(VerifyError::ReportDataMismatch {
                expected: hex_short(input.expected_report_data),
                found: hex_short(extra),
            });
        }
        let pcr8 = quote.pcrs[INITDATA_PCR];
        check_init_data_pcr(TEE, &pcr8, input)?;

        let mut claims = Map::new();
        claims.insert("report_data".into(), Value::String(hex::encode(extra)));
        claims.insert("init_data".into(), Value::String(hex::encode(pcr8)));
        for (i, p) in quote.pcrs.iter().enumerate() {
            claims.insert(format!("pcr{i:02}"), Value::String(hex::encode(p)));
        }
        claims.insert("reset_count".into(), quote.attest.reset_count.into());
        claims.insert("restart_count".into(), quote.attest.restart_count.into());
        claims.insert("ak_fingerprint".into(), Value::String(fingerprint));
        claims.insert("ak_trusted_by".into(), Value::String(trusted_by.by));
        claims.insert(
            "ak_hardware_backed".into(),
            Value::Bool(trusted_by.hardware_backed),
        );
        if let Some(log) = ev.eventlog.as_deref().filter(|l| !l.is_empty()) {
            let bytes = B64
                .decode(log)
                .map_err(|_| malformed("eventlog is not base64"))?;
            let log = crate::eventlog::TcgEventLog::parse(&bytes)
                .map_err(|e| malformed(format!("eventlog: {e}")))?;
            check_firmware_log(&log, &quote.pcrs)?;
            // Only events the quote vouches for become claims: measured
            // (EV_NO_ACTION events are never extended) into a PCR compared
            // above.
            let measured = |e: &crate::eventlog::TcgEvent| {
                e.event_type != crate::eventlog::EV_NO_ACTION && firmware_pcr_checked(e.index)
            };
            claims.insert(
                "uefi_event_logs".into(),
                log.to_json_where(measured)["uefi_event_logs"].clone(),
            );
        }
        if let Some(log) = ev.aa_eventlog.as_deref().filter(|l| !l.is_empty()) {
            let events = replay_runtime_log(log, &quote.pcrs[RUNTIME_PCR])?;
            claims.insert("runtime_events".into(), events);
        }
        Ok(TeeClaims {
            class: TeeClass::Cpu,
            claims: Value::Object(claims),
            report_data: hex::encode(extra),
            init_data: input.init_data_digest.map(hex::encode),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyTrust;

    struct Keys(Vec<Vec<u8>>);
    impl TrustedKeys for Keys {
        fn trusted_by(&self, spki: &[u8]) -> Result<Option<KeyTrust>, String> {
            Ok(self.0.iter().any(|k| k == spki).then(|| KeyTrust {
                by: "test".into(),
                hardware_backed: false,
            }))
        }
    }

    fn fixture() -> Value {
        serde_json::from_slice(&cocoon_fixtures::read("tpm/trustee_tpm_evidence.json")).unwrap()
    }

    fn verifier_trusting(ev: &Value) -> TpmVerifier {
        let ak = B64.decode(ev["ak_public"].as_str().unwrap()).unwrap();
        TpmVerifier::new(Arc::new(Keys(vec![ak])))
    }

    fn extra_data(ev: &Value) -> Vec<u8> {
        let attest = B64
            .decode(ev["tpm_quote"]["message"].as_str().unwrap())
            .unwrap();
        cocoon_tpm::Attest::parse(&attest).unwrap().extra_data
    }

    #[test]
    fn real_evidence_gives_coco_claims() {
        let ev = fixture();
        let rd = extra_data(&ev);
        let v = verifier_trusting(&ev);
        let c = v
            .verify(&VerifyInput {
                evidence: &ev,
                expected_report_data: &rd,
                init_data_digest: None,
            })
            .unwrap();
        assert_eq!(c.claims["report_data"], hex::encode(&rd));
        assert_eq!(c.claims["pcr08"], ev["tpm_quote"]["pcrs"][8]);
        assert_eq!(c.claims["init_data"], ev["tpm_quote"]["pcrs"][8]);
        assert_eq!(c.claims["pcr23"], ev["tpm_quote"]["pcrs"][23]);
        assert_eq!(c.claims["ak_trusted_by"], "test");
        assert_eq!(c.claims["ak_hardware_backed"], false);
    }

    #[test]
    fn refusals_are_specific() {
        let ev = fixture();
        let rd = extra_data(&ev);
        let v = verifier_trusting(&ev);
        let input = |e: &Value, r: &[u8], i: Option<&[u8]>| {
            v.verify(&VerifyInput {
                evidence: e,
                expected_report_data: r,
                init_data_digest: i,
            })
            .map(|_| ())
            .unwrap_err()
        };
        // untrusted AK
        let other = TpmVerifier::new(Arc::new(Keys(vec![])));
        let err = other
            .verify(&VerifyInput {
                evidence: &ev,
                expected_report_data: &rd,
                init_data_digest: None,
            })
            .unwrap_err();
        assert!(matches!(err, VerifyError::UntrustedKey { .. }), "{err}");
        assert!(err.to_string().contains("cocoon admin add-tpm-ak"));
        // wrong nonce
        let mut wrong = rd.clone();
        wrong[0] ^= 1;
        assert!(matches!(
            input(&ev, &wrong, None),
            VerifyError::ReportDataMismatch { .. }
        ));
        // initdata the PCR does not hold
        assert!(matches!(
            input(&ev, &rd, Some(&[9u8; 32])),
            VerifyError::InitDataMismatch
        ));
        // a PCR value changed after quoting
        let mut t = ev.clone();
        t["tpm_quote"]["pcrs"][4] = Value::String("11".repeat(32));
        let err = input(&t, &rd, None);
        assert!(err.to_string().contains("PCR digest"), "{err}");
        // a flipped bit in the signed message
        let mut m = B64
            .decode(ev["tpm_quote"]["message"].as_str().unwrap())
            .unwrap();
        m[40] ^= 4;
        let mut t = ev.clone();
        t["tpm_quote"]["message"] = Value::String(B64.encode(&m));
        let err = input(&t, &rd, None);
        assert!(err.to_string().contains("signature"), "{err}");
        // malformed
        let mut t = ev.clone();
        t["tpm_quote"]["pcrs"][0] = Value::String("zz".into());
        assert!(matches!(
            input(&t, &rd, None),
            VerifyError::Malformed { .. }
        ));
        assert!(matches!(
            input(&serde_json::json!({"svn": "1"}), &rd, None),
            VerifyError::Malformed { .. }
        ));
    }

    #[test]
    fn runtime_log_replays_against_pcr23() {
        let lines = "github.com/x load image-a\ngithub.com/x load image-b";
        let mut pcr = [0u8; 32];
        for l in lines.lines() {
            pcr = extend_sha256(&pcr, &Sha256::digest(l.as_bytes()).into());
        }
        let ev = replay_runtime_log(lines, &pcr).unwrap();
        assert_eq!(ev[1]["content"], "image-b");
        assert_eq!(ev[0]["domain"], "github.com/x");
        let err = replay_runtime_log("github.com/x load image-a", &pcr).unwrap_err();
        assert!(err.to_string().contains("does not replay"), "{err}");
        assert!(
            replay_runtime_log("github.com/x load image-c\ngithub.com/x load image-b", &pcr)
                .is_err()
        );
    }

    #[test]
    fn report_data_padding_is_exact() {
        let exp = [1u8; 48];
        let mut padded = exp.to_vec();
        padded.resize(64, 0);
        assert!(report_data_matches(&padded, &exp));
        assert!(report_data_matches(&exp, &exp));
        padded[60] = 1;
        assert!(!report_data_matches(&padded, &exp));
        assert!(!report_data_matches(&exp[..32], &exp));
    }
}
