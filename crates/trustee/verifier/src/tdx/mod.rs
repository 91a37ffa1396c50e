//! Intel TDX: DCAP quotes. This part checks what the quote itself proves:
//! the attestation key's signature over header and body, the QE report's
//! binding of that key (SHA-256 of key and QE auth data), the QE report's
//! signature by the PCK certificate, and replays the CC event log (CCEL)
//! against the RTMRs, and the PCK chain to Intel's SGX Root CA (embedded).
//! With collateral (sent with the evidence, or configured on the trustee)
//! it also checks CRLs, TCB info, QE identity and the TCB level; without,
//! the `tcb_status` claim is `unknown` and policies decide.

pub mod collateral;
pub mod pccs;
pub mod quote;

use crate::eventlog::{AlgId, TcgEventLog};
use crate::x509::{ChainError, Crl, Purpose, TrustAnchors, X509Cert, verify_path};
use crate::{TeeClaims, TeeClass, VerifyError, VerifyInput};
use cocoon_types::Tee;
use quote::{Quote, QuoteBody, TdxQuote};
use serde_json::{Value, json};

const TEE: &str = "tdx";

fn invalid(reason: impl Into<String>) -> VerifyError {
    VerifyError::Invalid {
        tee: TEE,
        reason: reason.into(),
    }
}

/// Checks the signatures inside a quote: attestation key over header and
/// body, QE report binding of the attestation key, PCK over the QE report.
pub fn verify_quote_signatures<B: QuoteBody>(q: &Quote<B>) -> Result<(), VerifyError> {
    verify_attestation_key(q)?;
    verify_qe_report(q)
}

/// The per-quote part: the attestation key's signature over header and
/// body, and the QE report's binding of that key.
fn verify_attestation_key<B: QuoteBody>(q: &Quote<B>) -> Result<(), VerifyError> {
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
    let mut ak = Vec::with_capacity(65);
    ak.push(4);
    ak.extend_from_slice(&q.attestation_key);
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &ak)
        .verify(&q.signed, &q.signature)
        .map_err(|_| invalid("the quote signature does not verify with its attestation key"))?;
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    h.update(&q.attestation_key);
    h.update(&q.qe.qe_auth_data);
    let binding = h.finish();
    let rd = q.qe_report_data();
    if rd[..32] != *binding.as_ref() || rd[32..].iter().any(|b| *b != 0) {
        return Err(invalid(
            "the QE report does not bind the attestation key (SHA-256 of key and QE auth data)",
        ));
    }
    Ok(())
}

/// The PCK certificate's signature over the QE report.
fn verify_qe_report<B: QuoteBody>(q: &Quote<B>) -> Result<(), VerifyError> {
    verify_qe_report_with(q, &pck_chain(q)?[0])
}

fn verify_qe_report_with<B: QuoteBody>(q: &Quote<B>, leaf: &X509Cert) -> Result<(), VerifyError> {
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, leaf.ec_point())
        .verify(&q.qe.qe_report, &q.qe.qe_report_signature)
        .map_err(|_| invalid("the QE report signature does not verify with the PCK certificate"))?;
    Ok(())
}

/// Verified platform results, by the digest of everything they depend on
/// (PCK chain, QE report and its signature, TEE_TCB_SVN, collateral),
/// kept until the earliest `nextUpdate` or certificate expiry. A platform's
/// quotes then cost one ECDSA verification and a hash each.
#[derive(Default)]
pub struct TdxCache(std::sync::Mutex<std::collections::HashMap<[u8; 32], CachedResult>>);

/// Valid until (Unix seconds), and the collateral result if any.
type CachedResult = (u64, Option<collateral::CollateralResult>);

/// Entries kept at most.
const CACHE_ENTRIES: usize = 4096;

/// The cache key of a quote's platform checks: every input the checks
/// after the attestation-key signature read (the PCK chain, the QE report
/// and its signature, the QE vendor, the TEE TCB SVN, the TDX module's
/// signer and attributes, the TEE) and the collateral they are judged by.
fn cache_key<B: QuoteBody>(
    q: &Quote<B>,
    sent: Option<&collateral::Collateral>,
    configured: bool,
) -> [u8; 32] {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    let (seam_signer, seam_attributes) = q
        .body
        .seam()
        .map_or((&[][..], &[][..]), |(s, a)| (&s[..], &a[..]));
    for part in [
        &q.qe.pck_chain_pem[..],
        &q.qe.qe_report,
        &q.qe.qe_report_signature,
        &q.header.vendor_id,
        q.body.tee_tcb_svn().map_or(&[][..], |s| &s[..]),
        seam_signer,
        seam_attributes,
        B::NAME.as_bytes(),
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    if configured {
        // Files do not change while the verifier lives; fetched collateral
        // is kept until its nextUpdate, which also bounds the entry.
        h.update(b"configured collateral");
    }
    if let Some(c) = sent {
        for part in [
            &c.pck_crl_issuer_chain,
            &c.root_ca_crl,
            &c.pck_crl,
            &c.tcb_info_issuer_chain,
            &c.tcb_info,
            &c.tcb_info_signature,
            &c.qe_identity_issuer_chain,
            &c.qe_identity,
            &c.qe_identity_signature,
        ] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(h.finish().as_ref());
    key
}

/// Verifies a quote (everything but the report-data and initdata binding),
/// with `collateral` when given; results are cached in `cache`.
pub fn verify_quote<B: QuoteBody>(
    q: &Quote<B>,
    collateral: Option<&collateral::Collateral>,
    now: u64,
    cache: &TdxCache,
) -> Result<Option<collateral::CollateralResult>, VerifyError> {
    verify_quote_with(q, collateral, None, now, cache)
}

/// [`verify_quote`] with the collateral the evidence carries (`sent`), or
/// else the configured collateral for the quote's platform (`configured`,
/// looked up by the PCK's FMSPC). Without either, no TCB result.
pub fn verify_quote_with<B: QuoteBody>(
    q: &Quote<B>,
    sent: Option<&collateral::Collateral>,
    configured: Option<&collateral::CollateralSet>,
    now: u64,
    cache: &TdxCache,
) -> Result<Option<collateral::CollateralResult>, VerifyError> {
    verify_attestation_key(q)?;
    let key = cache_key(q, sent, configured.is_some());
    if let Some((until, result)) = cache.0.lock().ok().and_then(|c| c.get(&key).cloned())
        && now <= until
    {
        return Ok(result);
    }
    // Parsed once for every check below.
    let chain = pck_chain(q)?;
    verify_qe_report_with(q, &chain[0])?;
    check_intel_qe(q)?;
    // The trustee's own collateral comes first: collateral a guest sends
    // is used only for platforms the trustee has none for (a guest could
    // otherwise send older, still-valid documents from before a TCB
    // recovery or a revocation), and then its verdict is only the lower
    // `evidence_collateral_tcb_status` claim, never `tcb_status`.
    let lookup = match configured {
        Some(set) => {
            let fmspc = collateral::PckTcb::from_pck(&chain[0])?.fmspc;
            let ca = if chain[1].cn.contains("Processor") {
                "processor"
            } else {
                "platform"
            };
            Some((set, fmspc, ca))
        }
        None => None,
    };
    let found = match &lookup {
        Some((set, fmspc, ca)) => match set.kept(B::TCB_INFO_ID, fmspc, ca, now) {
            Some(c) => Some(c),
            None if set.fetches() => {
                // Only a PCK that chains to Intel's root makes the trustee
                // ask its PCCS.
                verify_pck_chain_parsed(&chain, now)?;
                Some(set.fetch(B::TCB_INFO_ID, fmspc, ca)?)
            }
            None => None,
        },
        None => None,
    };
    // With collateral, the PCK chain is validated once, with its CRLs.
    let result = match found.as_deref().or(sent) {
        Some(c) => match collateral::verify_with_chain(q, &chain, c, now) {
            Ok(r) => Some(collateral::CollateralResult {
                from_evidence: found.is_none(),
                ..r
            }),
            Err(refusal) => {
                // Fetched collateral that does not verify is not kept.
                if let (true, Some(_), Some((set, fmspc, ca))) =
                    (refusal.collateral_at_fault, &found, &lookup)
                {
                    set.forget(B::TCB_INFO_ID, fmspc, ca);
                }
                return Err(refusal.error);
            }
        },
        None => {
            verify_pck_chain_parsed(&chain, now)?;
            None
        }
    };
    let chain_until = chain.iter().map(|c| c.not_after()).min().unwrap_or(0);
    let until = result
        .as_ref()
        .map_or(chain_until, |r| r.valid_until.min(chain_until));
    if let Ok(mut c) = cache.0.lock() {
        if c.len() >= CACHE_ENTRIES {
            c.clear();
        }
        c.insert(key, (until, result.clone()));
    }
    Ok(result)
}

/// Intel's QE vendor id in the quote header.
const INTEL_QE_VENDOR: [u8; 16] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
];

/// The QE that certified the attestation key is Intel's, whatever the
/// collateral: its report (signed by the PCK) names Intel's signer, the
/// QE product for this TEE, and no DEBUG attribute. Without this, an
/// enclave of the host's own could have the PCE certify it and vouch for
/// any attestation key. The QE identity, with collateral, adds its TCB.
fn check_intel_qe<B: QuoteBody>(q: &Quote<B>) -> Result<(), VerifyError> {
    let r = q.qe.report().map_err(|e| invalid(e.to_string()))?;
    if q.header.vendor_id != INTEL_QE_VENDOR {
        return Err(invalid("the quote's QE vendor is not Intel"));
    }
    if r.mr_signer != B::QE_MRSIGNER {
        return Err(invalid(
            "the QE report's MRSIGNER is not Intel's: the attestation key was not certified by Intel's quoting enclave",
        ));
    }
    let prodid = u16::from_le_bytes(r.isv_prod_id);
    if prodid != B::QE_PROD_ID {
        return Err(invalid(format!(
            "the QE report is from ISVPRODID {prodid}, not Intel's {} QE ({})",
            B::NAME,
            B::QE_PROD_ID
        )));
    }
    // ATTRIBUTES.FLAGS bit 1: DEBUG.
    if r.attributes_flags[0] & 0x02 != 0 {
        return Err(invalid("the QE is a debug enclave"));
    }
    Ok(())
}

/// Intel's SGX Root CA, the anchor of every PCK chain (valid 2018-05-21 to
/// 2049-12-31, SHA-256 fingerprint 44a0196b…fab674d3).
const INTEL_SGX_ROOT_CA: &str = include_str!("intel/sgx_root_ca.pem");

/// The PCK chain in the quote (PCK → Platform/Processor CA → root)
/// validated at `now` against the embedded Intel root: signatures,
/// validity windows, CA constraints. The chain's own root must be Intel's.
/// Revocation needs the CRLs of the collateral ([`collateral::verify`]).
pub fn verify_pck_chain<B: QuoteBody>(q: &Quote<B>, now: u64) -> Result<(), VerifyError> {
    verify_pck_chain_parsed(&pck_chain(q)?, now)
}

fn verify_pck_chain_parsed(chain: &[X509Cert; 3], now: u64) -> Result<(), VerifyError> {
    check_pck_chain(chain, intel_anchors()?, &[], now)
}

/// The PCK chain validated at `now` against `anchors` (Intel's root), with
/// `crls` (the root CA CRL and the PCK CRL) when there is collateral: one
/// validation decides the chain's trust, validity and revocation.
pub(crate) fn check_pck_chain(
    chain: &[X509Cert; 3],
    anchors: &TrustAnchors,
    crls: &[&Crl<'_>],
    now: u64,
) -> Result<(), VerifyError> {
    pck_path(chain, anchors, crls, now).map_err(|r| r.error)
}

/// [`check_pck_chain`], saying whether a CRL or the chain was at fault.
pub(crate) fn pck_path(
    chain: &[X509Cert; 3],
    anchors: &TrustAnchors,
    crls: &[&Crl<'_>],
    now: u64,
) -> Result<(), collateral::Refusal> {
    let [pck, ca, chain_root] = chain;
    // Trust comes from the anchor, whatever the chain carries; a chain
    // that names another root is refused all the same.
    if !anchors.certs().iter().any(|a| a.der == chain_root.der) {
        return Err(collateral::Refusal {
            error: VerifyError::UntrustedKey {
                tee: TEE,
                detail: format!(
                    "the PCK chain ends in {}, not Intel's SGX Root CA",
                    chain_root.cn
                ),
            },
            collateral_at_fault: false,
        });
    }
    verify_path(pck, &[ca], anchors, now, Purpose::IntelSgx, crls)
        .map(|_| ())
        .map_err(|e| collateral::Refusal {
            collateral_at_fault: e.concerns_a_crl(),
            error: chain_refused(e, "PCK"),
        })
}

/// A refused Intel chain (`what`: `PCK`, `TCB info signing`, …).
pub(crate) fn chain_refused(e: ChainError, what: &str) -> VerifyError {
    if e.is_untrusted() {
        VerifyError::UntrustedKey {
            tee: TEE,
            detail: format!("the {what} certificate does not chain to Intel's SGX Root CA: {e}"),
        }
    } else {
        invalid(format!("the {what} certificate chain: {e}"))
    }
}

/// The embedded Intel SGX Root CA, parsed once.
pub(crate) fn intel_root() -> Result<&'static X509Cert, VerifyError> {
    static ROOT: std::sync::OnceLock<Option<X509Cert>> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        X509Cert::from_pem_bundle(INTEL_SGX_ROOT_CA)
            .ok()
            .and_then(|mut v| v.pop())
    })
    .as_ref()
    .ok_or_else(|| invalid("the embedded Intel root does not parse"))
}

/// The embedded Intel SGX Root CA as the one trust anchor of Intel chains.
pub(crate) fn intel_anchors() -> Result<&'static TrustAnchors, VerifyError> {
    static ANCHORS: std::sync::OnceLock<Option<TrustAnchors>> = std::sync::OnceLock::new();
    ANCHORS
        .get_or_init(|| {
            let root = intel_root().ok()?.clone();
            TrustAnchors::new(vec![root]).ok()
        })
        .as_ref()
        .ok_or_else(|| invalid("the embedded Intel root is not a usable trust anchor"))
}

/// The quote's PCK chain: PCK, its CA, the chain's root (not yet trusted).
pub(crate) fn pck_chain<B: QuoteBody>(q: &Quote<B>) -> Result<[X509Cert; 3], VerifyError> {
    let pem = std::str::from_utf8(&q.qe.pck_chain_pem)
        .map_err(|_| invalid("the PCK chain is not PEM"))?;
    let ders = crate::x509::pem_ders(pem.trim_end_matches('\0'))
        .map_err(|e| invalid(format!("PCK chain: {e}")))?;
    let [pck, ca, root] = <[Vec<u8>; 3]>::try_from(ders).map_err(|c| {
        invalid(format!(
            "the PCK chain has {} certificates, expected 3",
            c.len()
        ))
    })?;
    let parse = |d: &[u8]| X509Cert::from_der(d).map_err(|e| invalid(format!("PCK chain: {e}")));
    // The chain's root is almost always Intel's, byte for byte: reuse the
    // embedded one, parsed once, rather than parse it again.
    let intel = intel_root()?;
    let root = if root == intel.der {
        intel.clone()
    } else {
        parse(&root)?
    };
    Ok([parse(&pck)?, parse(&ca)?, root])
}

/// Replays a CCEL against the RTMRs (CCEL index 1..4 = RTMR0..3): every
/// RTMR must equal its replay (zero when the log has no events for it),
/// and a measured event at any other index (which no register vouches
/// for) is refused.
pub fn check_ccel(log: &TcgEventLog, q: &TdxQuote) -> Result<(), VerifyError> {
    if let Some(e) = log
        .events
        .iter()
        .find(|e| e.event_type != 0x3 && !(1..=4).contains(&e.index))
    {
        return Err(invalid(format!(
            "the CC event log has an event at index {}, which no RTMR measures",
            e.index
        )));
    }
    let regs = log.replay(AlgId::SHA384);
    for (i, rtmr) in q.body.rtmr.iter().enumerate() {
        let zero = [0u8; 48];
        let value = regs
            .get(&(i as u32 + 1))
            .map_or(&zero[..], |v| v.as_slice());
        if value != rtmr.as_slice() {
            return Err(invalid(format!(
                "the CC event log does not replay to RTMR{i}: events were added, removed or changed"
            )));
        }
    }
    Ok(())
}

/// Claims in CoCo's TDX shape (`quote.header`, `quote.body`, `td_attributes`, …).
pub fn claims(q: &TdxQuote, ccel: Option<&TcgEventLog>) -> Value {
    let h = &q.header;
    let b = &q.body;
    let attrs = u64::from_le_bytes(b.td_attributes);
    let mut body = json!({
        "tcb_svn": hex::encode(b.tcb_svn),
        "mr_seam": hex::encode(b.mr_seam),
        "mrsigner_seam": hex::encode(b.mrsigner_seam),
        "seam_attributes": hex::encode(b.seam_attributes),
        "td_attributes": hex::encode(b.td_attributes),
        "xfam": hex::encode(b.xfam),
        "mr_td": hex::encode(b.mr_td),
        "mr_config_id": hex::encode(b.mr_config_id),
        "mr_owner": hex::encode(b.mr_owner),
        "mr_owner_config": hex::encode(b.mr_owner_config),
        "rtmr_0": hex::encode(b.rtmr[0]),
        "rtmr_1": hex::encode(b.rtmr[1]),
        "rtmr_2": hex::encode(b.rtmr[2]),
        "rtmr_3": hex::encode(b.rtmr[3]),
        "report_data": hex::encode(b.report_data),
    });
    if let Some((svn2, servicetd)) = &b.td15 {
        body["tee_tcb_svn2"] = json!(hex::encode(svn2));
        body["mr_servicetd"] = json!(hex::encode(servicetd));
    }
    let mut c = json!({
        "quote": {
            "header": {
                "version": hex::encode(h.version.to_le_bytes()),
                "att_key_type": hex::encode(h.att_key_type.to_le_bytes()),
                "tee_type": hex::encode(h.tee_type.to_le_bytes()),
                "reserved": hex::encode(h.reserved),
                "vendor_id": hex::encode(h.vendor_id),
                "user_data": hex::encode(h.user_data),
            },
            "body": body,
        },
        "report_data": hex::encode(b.report_data),
        "init_data": hex::encode(b.mr_config_id),
        "td_attributes": {
            "debug": attrs & 1 == 1,
            "septve_disable": (attrs >> 28) & 1 == 1,
            "migratable": (attrs >> 29) & 1 == 1,
            "protection_keys": (attrs >> 30) & 1 == 1,
            "key_locker": (attrs >> 31) & 1 == 1,
            "perfmon": (attrs >> 63) & 1 == 1,
        },
    });
    if let Some(log) = ccel {
        c["uefi_event_logs"] = log.to_json()["uefi_event_logs"].clone();
        c["ccel"] = ccel_claims(log);
    }
    c
}

/// What the replayed CCEL says was measured into RTMR0-2, as the SHA-384
/// digest of every measured event per register (`rtmr0`, `rtmr1`,
/// `rtmr2`), in order, for policies that pin known-good measurements
/// instead of whole register values. Only the digests are claims: the
/// registers vouch for each event's index and digest, not for its type or
/// data, which whoever hands the log over could relabel (a "kernel" event
/// listed as an action would drop out of a list filtered by type). Pinning
/// every digest of a register, whatever its label, leaves nothing to hide
/// behind. Only called on a log that replayed to the RTMRs.
pub fn ccel_claims(log: &TcgEventLog) -> Value {
    let digests = |index: u32| -> Vec<String> {
        log.events
            .iter()
            .filter(|e| e.index == index && e.event_type != crate::eventlog::EV_NO_ACTION)
            .filter_map(|e| {
                e.digests
                    .iter()
                    .find(|(a, _)| *a == AlgId::SHA384)
                    .map(|(_, d)| hex::encode(d))
            })
            .collect()
    };
    // CCEL index i + 1 is RTMR i.
    json!({"rtmr0": digests(1), "rtmr1": digests(2), "rtmr2": digests(3)})
}

#[cfg(test)]
mod tests;

/// CoCo's DCAP evidence `{"quote": b64, "collateral"?}`: the quote parsed
/// and verified (everything but the bindings), with the evidence's or the
/// configured collateral. Errors name TDX; the SGX verifier renames them.
pub(crate) fn verify_dcap_evidence<B: QuoteBody>(
    ev: &Value,
    configured: Option<&collateral::CollateralSet>,
    cache: &TdxCache,
    now: u64,
) -> Result<(Quote<B>, Option<collateral::CollateralResult>), VerifyError> {
    use base64::Engine;
    let malformed = |detail: String| VerifyError::Malformed { tee: TEE, detail };
    let raw = ev["quote"]
        .as_str()
        .and_then(|q| base64::engine::general_purpose::STANDARD.decode(q).ok())
        .ok_or_else(|| malformed("no base64 \"quote\"".into()))?;
    let q = Quote::<B>::parse(&raw).map_err(|e| malformed(e.to_string()))?;
    let sent = sent_collateral(ev)?;
    let checked = verify_quote_with(&q, sent.as_ref(), configured, now, cache)?;
    Ok((q, checked))
}

/// The collateral the evidence carries in `"collateral"`, if any.
pub(crate) fn sent_collateral(ev: &Value) -> Result<Option<collateral::Collateral>, VerifyError> {
    match ev.get("collateral") {
        Some(c) if !c.is_null() => {
            serde::Deserialize::deserialize(c)
                .map(Some)
                .map_err(|e| VerifyError::Malformed {
                    tee: TEE,
                    detail: format!("collateral: {e}"),
                })
        }
        _ => Ok(None),
    }
}

/// The TDX verifier the trustee registers.
#[derive(Default)]
pub struct TdxVerifier {
    /// Collateral used when the evidence carries none.
    pub collateral: Option<std::sync::Arc<collateral::CollateralSet>>,
    /// Verified platform results.
    pub cache: TdxCache,
}

/// REPORTDATA against the session binding and the initdata field
/// (`field`: MRCONFIGID, CONFIGID) against the initdata digest, both
/// zero-padded; a non-zero initdata field without a digest is refused.
pub fn check_bindings(
    tee: &'static str,
    report_data: &[u8],
    (field, init_field): (&'static str, &[u8]),
    input: &VerifyInput<'_>,
) -> Result<(), VerifyError> {
    if !padded_equal(report_data, input.expected_report_data) {
        return Err(VerifyError::ReportDataMismatch {
            expected: crate::hex_short(input.expected_report_data),
            found: crate::hex_short(report_data),
        });
    }
    crate::check_init_data_field(tee, field, init_field, input, true)
}

/// Whether `field` is `expected` followed by zeros.
pub(crate) fn padded_equal(field: &[u8], expected: &[u8]) -> bool {
    expected.len() <= field.len()
        && field[..expected.len()] == *expected
        && field[expected.len()..].iter().all(|b| *b == 0)
}

impl crate::Verifier for TdxVerifier {
    fn tee(&self) -> Tee {
        Tee::Tdx
    }

    fn verify(&self, input: &VerifyInput<'_>) -> Result<TeeClaims, VerifyError> {
        self.verify_at(input, crate::unix_now())
    }
}

impl TdxVerifier {
    /// [`crate::Verifier::verify`] at `now` (Unix seconds).
    pub fn verify_at(&self, input: &VerifyInput<'_>, now: u64) -> Result<TeeClaims, VerifyError> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let malformed = |detail: String| VerifyError::Malformed { tee: TEE, detail };
        let ev = input.evidence;
        let (q, checked) = verify_dcap_evidence::<quote::TdBody>(
            ev,
            self.collateral.as_deref(),
            &self.cache,
            now,
        )?;
        // The cheap bindings before the event log is parsed.
        check_bindings(
            TEE,
            &q.body.report_data,
            ("MRCONFIGID", &q.body.mr_config_id),
            input,
        )?;
        let log = match ev
            .get("cc_eventlog")
            .and_then(|c| c.as_str())
            .filter(|c| !c.is_empty())
        {
            Some(c) => {
                let bytes = b64
                    .decode(c)
                    .map_err(|_| malformed("cc_eventlog is not base64".into()))?;
                let log = TcgEventLog::parse(&bytes).map_err(|e| malformed(e.to_string()))?;
                check_ccel(&log, &q)?;
                Some(log)
            }
            None => None,
        };
        let mut c = claims(&q, log.as_ref());
        collateral::CollateralResult::set_claims(checked.as_ref(), &mut c);
        Ok(TeeClaims {
            class: TeeClass::Cpu,
            claims: c,
            report_data: hex::encode(q.body.report_data),
            init_data: input.init_data_digest.map(hex::encode),
        })
    }
}
