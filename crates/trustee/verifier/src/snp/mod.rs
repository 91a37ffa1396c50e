//! AMD SEV-SNP: the attestation report, signed by a VCEK (or VLEK) that
//! chains to AMD's ARK for Milan, Genoa or Turin (embedded), validated by
//! [`crate::x509::verify_path`] at the verifier's clock; then the VCEK's
//! TCB and hwID extensions against the report.
//!
//! Evidence is CoCo's: `{"attestation_report": <report as the sev crate
//! serializes it>, "cert_chain": [{"cert_type": "VCEK", "data": [..]}] | null}`.
//! The VCEK (or VLEK) comes from the certificate table, or else from the
//! trustee's [`VcekSource`]: a directory (`--snp-vcek-dir`), then AMD KDS
//! (`--snp-kds-url`).

pub mod report;
pub mod vcek;

use crate::x509::{ChainError, Purpose, TrustAnchors, X509Cert, verify_path};
use crate::{TeeClaims, TeeClass, VerifyError, VerifyInput};
use cocoon_types::Tee;
use report::{SnpReport, TcbParts};
use serde_json::{Value, json};
use std::sync::Arc;
use vcek::Spl;

const TEE: &str = "snp";

/// AMD's chains: the ARKs are the trust anchors, the ASKs issue VCEKs and
/// the ASVKs VLEKs.
struct AmdChains {
    /// The product line of each ARK, in the anchors' order.
    products: Vec<&'static str>,
    arks: TrustAnchors,
    asks: Vec<X509Cert>,
    asvks: Vec<X509Cert>,
}

/// AMD's public ARK/ASK/ASVK chains (from AMD KDS), per product line.
const AMD_CHAINS: [(&str, &str); 3] = [
    ("Milan", include_str!("amd/milan.pem")),
    ("Genoa", include_str!("amd/genoa.pem")),
    ("Turin", include_str!("amd/turin.pem")),
];

/// Verifies SNP reports against AMD's roots.
pub struct SnpVerifier {
    chains: AmdChains,
    /// VCEKs/VLEKs whose chain already validated, by SHA-256 of their DER
    /// and whether it was validated as a VLEK, with the window in which the
    /// whole chain is valid: a guest keeps its VCEK until a TCB update, so
    /// the RSA chain check runs once per key, not once per report.
    verified: std::sync::Mutex<std::collections::HashMap<([u8; 32], bool), VerifiedKey>>,
    /// Where to find a VCEK the evidence does not carry.
    pub vcek_source: Option<Arc<VcekSource>>,
}

/// Where VCEKs come from when the evidence's certificate table has none:
/// a directory of VCEKs (DER or PEM), then AMD's Key Distribution Service
/// (or a caching proxy of it), whose answers are kept.
#[derive(Default)]
pub struct VcekSource {
    /// VCEKs from the directory, with their hwID.
    certs: Vec<(Option<Vec<u8>>, Vec<u8>)>,
    /// KDS base URL (`https://kdsintf.amd.com`) and the client to reach it.
    kds: Option<(String, Arc<dyn crate::fetch::HttpGet>)>,
    /// Fetched VCEKs by chip id and reported TCB.
    fetched: std::sync::Mutex<FetchedVceks>,
    /// Chip id and TCB pairs the KDS had no VCEK for, and when (Unix
    /// seconds): not asked again for a while. Reports are unauthenticated
    /// before their VCEK is known, so anyone can make the trustee ask.
    failed: std::sync::Mutex<std::collections::HashMap<(Vec<u8>, u64), u64>>,
    /// KDS requests in flight.
    in_flight: std::sync::atomic::AtomicUsize,
}

/// How long a KDS miss is remembered, seconds.
const KDS_MISS_SECS: u64 = 300;
/// KDS requests at once.
const KDS_MAX_IN_FLIGHT: usize = 4;

/// VCEK DER by chip id and reported TCB.
type FetchedVceks = std::collections::HashMap<(Vec<u8>, u64), Vec<u8>>;

impl VcekSource {
    /// Loads every `*.der`, `*.pem`, `*.crt` or `*.cer` VCEK in `dir` (or
    /// the one file `dir` names).
    pub fn from_dir(dir: &std::path::Path) -> Result<Self, String> {
        let mut certs = Vec::new();
        for (p, bytes) in crate::read_file_or_dir(dir, &["der", "pem", "crt", "cer"])? {
            let parsed = match std::str::from_utf8(&bytes) {
                Ok(t) if t.contains("-----BEGIN") => X509Cert::from_pem_bundle(t),
                _ => X509Cert::from_der(&bytes).map(|c| vec![c]),
            }
            .map_err(|e| format!("{}: {e}", p.display()))?;
            for c in parsed {
                certs.push((vcek::hwid(&c).ok().flatten(), c.der.clone()));
            }
        }
        if certs.is_empty() {
            return Err(format!("no VCEK (*.der, *.pem) in {}", dir.display()));
        }
        Ok(Self {
            certs,
            ..Default::default()
        })
    }

    /// Also asks AMD KDS at `base` (e.g. `https://kdsintf.amd.com`).
    pub fn with_kds(mut self, base: &str, http: Arc<dyn crate::fetch::HttpGet>) -> Self {
        self.kds = Some((base.trim_end_matches('/').to_string(), http));
        self
    }

    /// Directory VCEKs that may be `report`'s: those with its chip id (or
    /// every one when the report masks it).
    fn local(&self, report: &SnpReport) -> impl Iterator<Item = &[u8]> {
        self.certs
            .iter()
            .filter(|(hwid, _)| {
                report.chip_id_masked() || hwid.as_deref().is_none_or(|h| h == report.chip_id)
            })
            .map(|(_, der)| der.as_slice())
    }

    /// The KDS's VCEK for `report`'s chip id and reported TCB, once
    /// `accept` (its chain to AMD's root) passes; `None` without a KDS or
    /// for a report it cannot serve (masked chip id, VLEK). Only accepted
    /// VCEKs are kept; a miss or a VCEK that was not accepted is
    /// remembered for [`KDS_MISS_SECS`] and not asked for again meanwhile.
    fn kds_vcek(
        &self,
        report: &SnpReport,
        accept: impl FnOnce(&[u8]) -> Result<(), VerifyError>,
    ) -> Option<Result<Vec<u8>, VerifyError>> {
        let (base, http) = self.kds.as_ref()?;
        if report.chip_id_masked() || report.signing_key() != 0 {
            return None;
        }
        let key = (report.chip_id.to_vec(), report.reported_tcb.0);
        if let Some(v) = self.fetched.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Some(Ok(v));
        }
        let now = crate::unix_now();
        if let Some(at) = self.failed.lock().ok().and_then(|m| m.get(&key).copied())
            && now < at + KDS_MISS_SECS
        {
            return Some(Err(VerifyError::Unavailable(
                "AMD KDS had no usable VCEK for this chip and TCB a moment ago; not asking again yet"
                    .into(),
            )));
        }
        if !crate::fetch::may_fetch() {
            return Some(Err(crate::fetch::deferred()));
        }
        let Some(_slot) = InFlight::take(&self.in_flight) else {
            return Some(Err(VerifyError::Unavailable(
                "too many VCEK requests to AMD KDS in flight; retry shortly".into(),
            )));
        };
        let result = self.fetch_from_kds(base, &**http, report).and_then(|der| {
            accept(&der)?;
            Ok(der)
        });
        Some(match result {
            Ok(der) => {
                remember(&self.fetched, key, der.clone());
                Ok(der)
            }
            Err(e) => {
                remember(&self.failed, key, now);
                Err(e)
            }
        })
    }

    fn fetch_from_kds(
        &self,
        base: &str,
        http: &dyn crate::fetch::HttpGet,
        report: &SnpReport,
    ) -> Result<Vec<u8>, VerifyError> {
        let (family, model, _) = report.cpuid;
        let products: &[&str] = match (family, model) {
            (0x19, 0x00..=0x0f) => &["Milan"],
            (0x19, 0x10..=0x1f) | (0x19, 0xa0..=0xaf) => &["Genoa"],
            (0x1a, _) => &["Turin"],
            // Version 2 reports carry no CPUID: ask for each product.
            _ => &["Milan", "Genoa"],
        };
        let mut last = String::new();
        for product in products {
            let turin = *product == "Turin";
            let t = report.reported_tcb.parts(turin);
            let url = if turin {
                format!(
                    "{base}/vcek/v1/{product}/{}?fmcSPL={}&blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
                    hex::encode(&report.chip_id[..8]),
                    t.fmc.unwrap_or(0),
                    t.bootloader,
                    t.tee,
                    t.snp,
                    t.microcode
                )
            } else {
                format!(
                    "{base}/vcek/v1/{product}/{}?blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
                    hex::encode(report.chip_id),
                    t.bootloader,
                    t.tee,
                    t.snp,
                    t.microcode
                )
            };
            match crate::fetch::get_ok(http, &url) {
                Ok(r) => return Ok(r.body),
                Err(e) => last = e,
            }
        }
        Err(VerifyError::Unavailable(format!(
            "the VCEK for this chip could not be fetched from AMD KDS: {last}"
        )))
    }
}

/// Entries a VCEK source's maps keep at most.
const SOURCE_ENTRIES: usize = 4096;

/// Inserts into a bounded map (cleared when full).
fn remember<K: std::hash::Hash + Eq, V>(
    map: &std::sync::Mutex<std::collections::HashMap<K, V>>,
    key: K,
    value: V,
) {
    if let Ok(mut m) = map.lock() {
        if m.len() >= SOURCE_ENTRIES {
            m.clear();
        }
        m.insert(key, value);
    }
}

/// One KDS request slot, given back when dropped (also on a panic).
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn take(count: &'a std::sync::atomic::AtomicUsize) -> Option<Self> {
        let before = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Given back on drop, taken or not.
        let slot = Self(count);
        (before < KDS_MAX_IN_FLIGHT).then_some(slot)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A signing key whose chain validated.
#[derive(Clone)]
struct VerifiedKey {
    cert: Arc<X509Cert>,
    /// Milan, Genoa or Turin: the ARK the chain ended in.
    product: &'static str,
    /// When every certificate of the chain is valid (Unix seconds).
    valid: std::ops::RangeInclusive<u64>,
}

/// Verified keys kept at most.
const VERIFIED_CACHE: usize = 4096;

fn invalid(reason: impl Into<String>) -> VerifyError {
    VerifyError::Invalid {
        tee: TEE,
        reason: reason.into(),
    }
}

/// A refused VCEK/VLEK chain: untrusted, or out of its time window.
fn chain_refused(e: ChainError, signing_key: &str) -> VerifyError {
    if e.is_untrusted() {
        VerifyError::UntrustedKey {
            tee: TEE,
            detail: format!(
                "the {signing_key} does not chain to AMD's Milan, Genoa or Turin ARK: {e}"
            ),
        }
    } else {
        invalid(format!("the {signing_key} chain: {e}"))
    }
}

/// What a verified report says, before it becomes JSON.
#[derive(Debug, Clone)]
pub struct SnpClaims {
    /// The verified report.
    pub report: SnpReport,
    /// Milan, Genoa or Turin.
    pub product: &'static str,
    /// `VCEK` or `VLEK`.
    pub signing_key: &'static str,
    /// The reported TCB, split per the product's layout.
    pub reported_tcb: TcbParts,
}

impl SnpVerifier {
    /// A verifier with the embedded AMD chains (their signatures are
    /// checked with each chain that goes through them).
    pub fn new() -> Result<Self, String> {
        let (mut products, mut arks, mut asks, mut asvks) = (vec![], vec![], vec![], vec![]);
        for (product, pem) in AMD_CHAINS {
            let mut certs = X509Cert::from_pem_bundle(pem)?.into_iter();
            let (Some(ask), Some(ark), Some(asvk)) = (certs.next(), certs.next(), certs.next())
            else {
                return Err(format!("the embedded {product} chain is incomplete"));
            };
            products.push(product);
            arks.push(ark);
            asks.push(ask);
            asvks.push(asvk);
        }
        let arks = TrustAnchors::new(arks).map_err(|e| format!("the embedded AMD ARKs: {e}"))?;
        Ok(Self {
            chains: AmdChains {
                products,
                arks,
                asks,
                asvks,
            },
            verified: Default::default(),
            vcek_source: None,
        })
    }

    /// The signing key, its chain to an ARK validated at `now` (or found
    /// in the cache with `now` inside the chain's validity).
    fn signing_cert(&self, der: &[u8], vlek: bool, now: u64) -> Result<VerifiedKey, VerifyError> {
        let id = (<sha2::Sha256 as sha2::Digest>::digest(der).into(), vlek);
        if let Some(hit) = self.verified.lock().ok().and_then(|c| c.get(&id).cloned())
            && hit.valid.contains(&now)
        {
            return Ok(hit);
        }
        let signing_key = if vlek { "VLEK" } else { "VCEK" };
        let cert = X509Cert::from_der(der).map_err(|e| VerifyError::Malformed {
            tee: TEE,
            detail: format!("{signing_key}: {e}"),
        })?;
        let issuers: Vec<&X509Cert> = if vlek {
            self.chains.asvks.iter().collect()
        } else {
            self.chains.asks.iter().collect()
        };
        let path = verify_path(
            &cert,
            &issuers,
            &self.chains.arks,
            now,
            Purpose::AmdSev,
            &[],
        )
        .map_err(|e| chain_refused(e, signing_key))?;
        let entry = VerifiedKey {
            product: self.chains.products[path.anchor_index],
            valid: path.valid_from..=path.valid_until,
            cert: Arc::new(cert),
        };
        if let Ok(mut c) = self.verified.lock() {
            if c.len() >= VERIFIED_CACHE {
                c.clear();
            }
            c.insert(id, entry.clone());
        }
        Ok(entry)
    }

    /// Verifies `report` (raw bytes) signed by `vcek_der` at `now` (Unix
    /// seconds): the chain to AMD's root, the VCEK's TCB/hwID extensions,
    /// and the report signature.
    pub fn verify_report(
        &self,
        report_bytes: &[u8],
        vcek_der: &[u8],
        now: u64,
    ) -> Result<SnpClaims, VerifyError> {
        let report = SnpReport::parse(report_bytes).map_err(|e| VerifyError::Malformed {
            tee: TEE,
            detail: e.to_string(),
        })?;
        let (vlek, signing_key) = match report.signing_key() {
            0 => (false, "VCEK"),
            1 => (true, "VLEK"),
            k => {
                return Err(invalid(format!(
                    "report signing key {k} is neither VCEK (0) nor VLEK (1)"
                )));
            }
        };
        let key = self.signing_cert(vcek_der, vlek, now)?;
        let cert = key.cert.as_ref();
        let turin = key.product == "Turin";
        let reported = report.reported_tcb.parts(turin);
        // VCEKs and VLEKs are both issued for one TCB: the host chooses
        // REPORTED_TCB, the key's SPL extensions are what vouch for it.
        let checks = [
            (Spl::Bootloader, Some(reported.bootloader), "boot loader"),
            (Spl::Tee, Some(reported.tee), "TEE"),
            (Spl::Snp, Some(reported.snp), "SNP"),
            (Spl::Microcode, Some(reported.microcode), "microcode"),
            (Spl::Fmc, reported.fmc, "FMC"),
        ];
        for (spl, want, name) in checks {
            let got = vcek::spl(cert, spl).map_err(invalid)?;
            if let Some(want) = want
                && got != Some(want)
            {
                return Err(invalid(format!(
                    "the {signing_key} is for {name} SPL {}, the report's reported TCB has {want}",
                    got.map_or("(none)".to_string(), |g| g.to_string())
                )));
            }
        }
        // A VLEK belongs to a cloud provider, not to one chip: no hwID.
        if !vlek && !report.chip_id_masked() {
            match vcek::hwid(cert).map_err(invalid)? {
                Some(h) if h == report.chip_id => {}
                Some(_) => {
                    return Err(invalid(
                        "the VCEK is for another chip (hwID differs from the report's chip ID)",
                    ));
                }
                None => return Err(invalid("the VCEK has no hwID extension")),
            }
        }
        let mut sig = [0u8; 96];
        sig[..48].copy_from_slice(&report.sig_r);
        sig[48..].copy_from_slice(&report.sig_s);
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P384_SHA384_FIXED,
            cert.ec_point(),
        )
        .verify(&report_bytes[..report::SIGNED_LEN], &sig)
        .map_err(|_| {
            invalid(format!(
                "the report signature does not verify with the {signing_key}"
            ))
        })?;
        Ok(SnpClaims {
            report,
            product: key.product,
            signing_key,
            reported_tcb: reported,
        })
    }
}

impl SnpVerifier {
    /// Verifies a report whose evidence carried no VCEK, with the keys the
    /// configured source offers: the first that verifies wins.
    pub fn verify_with_source(&self, raw: &[u8], now: u64) -> Result<SnpClaims, VerifyError> {
        let none = || {
            VerifyError::Unavailable(
                "SNP evidence carries no VCEK/VLEK in its certificate table (cert_chain), and no VCEK source has one for this chip: start the trustee with --snp-vcek-dir DIR or --snp-kds-url https://kdsintf.amd.com".into(),
            )
        };
        let source = self.vcek_source.as_ref().ok_or_else(none)?;
        let report = SnpReport::parse(raw).map_err(|e| VerifyError::Malformed {
            tee: TEE,
            detail: e.to_string(),
        })?;
        // The directory first: a KDS that is down or refusing does not
        // hide a VCEK the trustee already has.
        let mut last = None;
        for der in source.local(&report) {
            match self.verify_report(raw, der, now) {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        let accept = |der: &[u8]| self.signing_cert(der, false, now).map(|_| ());
        match source.kds_vcek(&report, accept) {
            Some(fetched) => self.verify_report(raw, &fetched?, now),
            None => Err(last.unwrap_or_else(none)),
        }
    }
}

/// The raw report bytes from CoCo's evidence JSON.
pub fn report_from_evidence(evidence: &Value) -> Result<Vec<u8>, VerifyError> {
    use sev::parser::Encoder;
    let malformed = |detail: String| VerifyError::Malformed { tee: TEE, detail };
    let report = evidence
        .get("attestation_report")
        .ok_or_else(|| malformed("no attestation_report".into()))?;
    let report: sev::firmware::guest::AttestationReport =
        serde::Deserialize::deserialize(report)
            .map_err(|e| malformed(format!("attestation_report: {e}")))?;
    let mut raw = Vec::with_capacity(report::REPORT_LEN);
    report
        .encode(&mut raw, ())
        .map_err(|e| malformed(format!("attestation_report: {e}")))?;
    Ok(raw)
}

/// The VCEK/VLEK (DER) from the evidence's certificate table, if any.
pub fn vcek_from_evidence(evidence: &Value) -> Result<Option<Vec<u8>>, VerifyError> {
    let malformed = |detail: &str| VerifyError::Malformed {
        tee: TEE,
        detail: detail.to_string(),
    };
    let entries = evidence
        .get("cert_chain")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for e in &entries {
        let kind = e
            .get("cert_type")
            .map(|t| t.to_string().to_ascii_uppercase())
            .unwrap_or_default();
        if !(kind.contains("VCEK") || kind.contains("VLEK")) {
            continue;
        }
        let data: Vec<u8> = match e.get("data") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| malformed("cert_chain data is not a byte array"))?,
            Some(Value::String(s)) => {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s)
                    .map_err(|_| malformed("cert_chain data is not base64"))?
            }
            _ => return Err(malformed("cert_chain entry without data")),
        };
        return Ok(Some(data));
    }
    Ok(None)
}

impl crate::Verifier for SnpVerifier {
    fn tee(&self) -> Tee {
        Tee::Snp
    }

    fn verify(&self, input: &VerifyInput<'_>) -> Result<TeeClaims, VerifyError> {
        let raw = report_from_evidence(input.evidence)?;
        let now = crate::unix_now();
        let claims = match vcek_from_evidence(input.evidence)? {
            Some(vcek) => self.verify_report(&raw, &vcek, now)?,
            None => self.verify_with_source(&raw, now)?,
        };
        check_report_data(&claims.report, input.expected_report_data)?;
        check_host_data(&claims.report, input)?;
        Ok(TeeClaims {
            class: TeeClass::Cpu,
            report_data: hex::encode(claims.report.report_data),
            init_data: input.init_data_digest.map(hex::encode),
            claims: claims.to_json(),
        })
    }
}

/// Checks the session binding: REPORT_DATA must be `expected` followed by zeros.
pub fn check_report_data(report: &SnpReport, expected: &[u8]) -> Result<(), VerifyError> {
    if crate::tdx::padded_equal(&report.report_data, expected) {
        Ok(())
    } else {
        Err(VerifyError::ReportDataMismatch {
            expected: crate::hex_short(expected),
            found: crate::hex_short(&report.report_data),
        })
    }
}

/// Checks HOSTDATA against the initdata digest (zero-padded to 32 bytes);
/// without a digest, HOSTDATA must be zero.
pub fn check_host_data(report: &SnpReport, input: &VerifyInput<'_>) -> Result<(), VerifyError> {
    crate::check_init_data_field("snp", "HOSTDATA", &report.host_data, input, true)
}

impl SnpClaims {
    /// Claims as CoCo's SNP verifier names them, plus a few more.
    pub fn to_json(&self) -> Value {
        let r = &self.report;
        let p = r.policy;
        json!({
            "measurement": hex::encode(r.measurement),
            "report_data": hex::encode(r.report_data),
            "init_data": hex::encode(r.host_data),
            "policy_abi_major": format!("{}", (p >> 8) & 0xff),
            "policy_abi_minor": format!("{}", p & 0xff),
            "policy_smt_allowed": (p >> 16) & 1 == 1,
            "policy_migrate_ma": (p >> 18) & 1 == 1,
            "policy_debug_allowed": (p >> 19) & 1 == 1,
            "policy_single_socket": (p >> 20) & 1 == 1,
            "reported_tcb_bootloader": format!("{}", self.reported_tcb.bootloader),
            "reported_tcb_tee": format!("{}", self.reported_tcb.tee),
            "reported_tcb_snp": format!("{}", self.reported_tcb.snp),
            "reported_tcb_microcode": format!("{}", self.reported_tcb.microcode),
            "platform_tsme_enabled": (r.platform_info >> 1) & 1 == 1,
            "platform_smt_enabled": r.platform_info & 1 == 1,
            "guest_svn": r.guest_svn,
            "vmpl": r.vmpl,
            "report_version": r.version,
            "family_id": hex::encode(r.family_id),
            "image_id": hex::encode(r.image_id),
            "chip_id": hex::encode(r.chip_id),
            "product": self.product,
            "signing_key": self.signing_key,
        })
    }
}

#[cfg(test)]
mod tests;
