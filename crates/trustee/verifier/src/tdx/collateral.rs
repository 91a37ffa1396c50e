//! DCAP collateral (as Intel PCS/PCCS serve it, in dcap-qvl's JSON
//! layout): TCB info and QE identity with their signatures and issuer
//! chain, and the root CA and PCK CRLs. Checked here: the PCK chain with
//! both CRLs (one path validation, [`crate::x509::verify_path`]: the PCK
//! CA must not be on the root CA CRL nor the PCK on the PCK CRL, and
//! neither CRL past its `nextUpdate`), the TCB signing certificate to the
//! embedded Intel root, the documents' signatures and windows (`issueDate`
//! .. `nextUpdate`), the QE report against the QE identity, and the TCB
//! level: the PCK's SGX extension (component SVNs, PCE SVN, FMSPC) and the
//! TD's TEE_TCB_SVN against `tcbLevels`, the TDX module against its
//! identity.

use super::quote::{Quote, QuoteBody};
use crate::VerifyError;
use crate::x509::{Crl, Purpose, X509Cert, verify_path};
use serde::Deserialize;

const TEE: &str = "tdx";

fn invalid(reason: impl Into<String>) -> VerifyError {
    VerifyError::Invalid {
        tee: TEE,
        reason: reason.into(),
    }
}

/// The collateral document.
#[derive(Debug, Clone, Deserialize)]
pub struct Collateral {
    /// PEM chain that issued the PCK CRL.
    pub pck_crl_issuer_chain: String,
    /// Root CA CRL, hex DER.
    pub root_ca_crl: String,
    /// PCK CRL, hex DER.
    pub pck_crl: String,
    /// PEM chain of the TCB signing certificate.
    pub tcb_info_issuer_chain: String,
    /// The TCB info JSON, exactly as signed.
    pub tcb_info: String,
    /// ECDSA P-256 signature (r‖s, hex) over `tcb_info`.
    pub tcb_info_signature: String,
    /// PEM chain of the QE identity signer.
    pub qe_identity_issuer_chain: String,
    /// The QE identity JSON, exactly as signed.
    pub qe_identity: String,
    /// ECDSA P-256 signature (r‖s, hex) over `qe_identity`.
    pub qe_identity_signature: String,
}

/// Collateral configured on the trustee: one collateral file, or every
/// `*.json` collateral file in a directory, looked up by the TEE its TCB
/// info judges (`TDX`, `SGX`) and the platform's FMSPC.
#[derive(Debug, Default)]
pub struct CollateralSet {
    by_platform: std::collections::HashMap<(String, String), std::sync::Arc<Collateral>>,
    /// A PCCS to fetch collateral for platforms the files do not cover.
    pccs: Option<super::pccs::Pccs>,
    /// Fetched collateral and until when it holds (its earliest `nextUpdate`).
    fetched: std::sync::Mutex<FetchedCollateral>,
}

type FetchedCollateral =
    std::collections::HashMap<(String, String, String), (std::sync::Arc<Collateral>, u64)>;

#[derive(Deserialize)]
struct TcbInfoKey {
    id: String,
    fmspc: String,
}

impl CollateralSet {
    /// Loads `path`: a collateral JSON file, or a directory of them.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let mut set = Self::default();
        for (f, bytes) in crate::read_file_or_dir(path, &["json"])? {
            let c: Collateral = serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{} is not DCAP collateral JSON (tcb_info, qe_identity, CRLs and issuer chains): {e}",
                    f.display()
                )
            })?;
            set.insert(c).map_err(|e| format!("{}: {e}", f.display()))?;
        }
        if set.by_platform.is_empty() {
            return Err(format!("no collateral (*.json) in {}", path.display()));
        }
        Ok(set)
    }

    /// Fetches collateral the files do not have from `pccs`, keeping it
    /// until its `nextUpdate`.
    pub fn with_pccs(mut self, pccs: super::pccs::Pccs) -> Self {
        self.pccs = Some(pccs);
        self
    }

    /// Adds `c` under its TCB info's TEE and FMSPC (replacing an older one).
    pub fn insert(&mut self, c: Collateral) -> Result<(), String> {
        let key: TcbInfoKey = serde_json::from_str(&c.tcb_info)
            .map_err(|e| format!("tcb_info has no id/fmspc: {e}"))?;
        self.by_platform.insert(
            (key.id, key.fmspc.to_ascii_uppercase()),
            std::sync::Arc::new(c),
        );
        Ok(())
    }

    /// The collateral for `tee` (TCB info id) and `fmspc` from the files
    /// (whatever their dates: an expired file is refused as expired, not
    /// replaced), or one fetched for a PCK issued by `ca` (`platform` or
    /// `processor`) that is still valid at `now`; the PCCS is not asked.
    pub fn kept(
        &self,
        tee: &str,
        fmspc: &str,
        ca: &str,
        now: u64,
    ) -> Option<std::sync::Arc<Collateral>> {
        let fmspc = fmspc.to_ascii_uppercase();
        if let Some(c) = self.by_platform.get(&(tee.to_string(), fmspc.clone())) {
            return Some(c.clone());
        }
        let key = (tee.to_string(), fmspc, ca.to_string());
        self.fetched
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned())
            .and_then(|(c, until)| (now < until).then_some(c))
    }

    /// Whether collateral the files lack is fetched from a PCCS.
    pub fn fetches(&self) -> bool {
        self.pccs.is_some()
    }

    /// Fetches the collateral for `tee`, `fmspc` and `ca` from the PCCS
    /// and keeps it until its earliest `nextUpdate`.
    pub fn fetch(
        &self,
        tee: &str,
        fmspc: &str,
        ca: &str,
    ) -> Result<std::sync::Arc<Collateral>, VerifyError> {
        let pccs = self
            .pccs
            .as_ref()
            .ok_or_else(|| invalid("no PCCS to fetch DCAP collateral from (--pccs-url)"))?;
        if !crate::fetch::may_fetch() {
            return Err(crate::fetch::deferred());
        }
        let fmspc = fmspc.to_ascii_uppercase();
        let key = (tee.to_string(), fmspc.clone(), ca.to_string());
        let c = pccs
            .fetch(tee, &fmspc, ca)
            .map_err(|e| invalid(format!("DCAP collateral from the PCCS: {e}")))?;
        // Kept until the first of its documents needs an update: the TCB
        // info, the QE identity or either CRL.
        let documents = [&c.tcb_info, &c.qe_identity]
            .into_iter()
            .filter_map(|doc| serde_json::from_str::<Window>(doc).ok())
            .filter_map(|w| rfc3339(&w.next_update).ok());
        let crls = [&c.root_ca_crl, &c.pck_crl]
            .into_iter()
            .filter_map(|h| crl_next_update(&unhex(h)?));
        let until = documents.chain(crls).min().unwrap_or(0);
        let c = std::sync::Arc::new(c);
        if let Ok(mut m) = self.fetched.lock() {
            if m.len() >= 1024 {
                m.clear();
            }
            m.insert(key, (c.clone(), until));
        }
        Ok(c)
    }

    /// Drops fetched collateral for `tee`, `fmspc` and `ca` (it did not
    /// verify): the next quote from that platform fetches it again.
    pub(crate) fn forget(&self, tee: &str, fmspc: &str, ca: &str) {
        let key = (tee.to_string(), fmspc.to_ascii_uppercase(), ca.to_string());
        if let Ok(mut m) = self.fetched.lock() {
            m.remove(&key);
        }
    }

    /// How many platforms have collateral.
    pub fn len(&self) -> usize {
        self.by_platform.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.by_platform.is_empty()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Window {
    next_update: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QeIdentity {
    issue_date: String,
    next_update: String,
    id: String,
    miscselect: String,
    miscselect_mask: String,
    attributes: String,
    attributes_mask: String,
    mrsigner: String,
    isvprodid: u16,
    tcb_levels: Vec<QeTcbLevel>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QeTcbLevel {
    tcb: QeTcb,
    tcb_status: String,
}

#[derive(Deserialize)]
struct QeTcb {
    isvsvn: u16,
}

/// What the collateral established.
#[derive(Debug, Clone)]
pub struct CollateralResult {
    /// FMSPC the TCB info is for.
    pub fmspc: String,
    /// The QE's TCB status from the QE identity (`UpToDate`, …).
    pub qe_tcb_status: String,
    /// The platform's TCB status from the TCB info levels.
    pub platform_tcb_status: String,
    /// The TDX module's status from its identity, when it reports a version.
    pub module_tcb_status: Option<String>,
    /// Until when this result holds: the earliest `nextUpdate` or
    /// certificate expiry among the collateral and the PCK chain.
    pub valid_until: u64,
    /// Whether the collateral came with the evidence rather than from the
    /// trustee (its files or its PCCS).
    pub from_evidence: bool,
}

/// Claim for the TCB status judged by collateral the guest sent.
pub const EVIDENCE_TCB_STATUS_CLAIM: &str = "evidence_collateral_tcb_status";

impl CollateralResult {
    /// The `tcb_status` claim: the status judged by the trustee's own
    /// collateral, else `unknown`. Collateral the guest sent is signed by
    /// Intel but may be old (from before a TCB recovery or a revocation),
    /// and freshness is the trustee's call: its verdict goes only into the
    /// separate, lower [`EVIDENCE_TCB_STATUS_CLAIM`].
    pub fn claim(checked: Option<&Self>) -> &str {
        checked
            .filter(|c| !c.from_evidence)
            .map_or("unknown", Self::tcb_status)
    }

    /// Sets `tcb_status` (and, for collateral from the evidence,
    /// [`EVIDENCE_TCB_STATUS_CLAIM`]) in `claims`.
    pub fn set_claims(checked: Option<&Self>, claims: &mut serde_json::Value) {
        claims["tcb_status"] = Self::claim(checked).into();
        if let Some(c) = checked.filter(|c| c.from_evidence) {
            claims[EVIDENCE_TCB_STATUS_CLAIM] = c.tcb_status().into();
        }
    }

    /// The overall status: the worst of the platform's, the QE's and the
    /// TDX module's (a revoked or out-of-date QE is never hidden behind a
    /// milder platform status).
    pub fn tcb_status(&self) -> &str {
        [
            Some(&self.platform_tcb_status),
            Some(&self.qe_tcb_status),
            self.module_tcb_status.as_ref(),
        ]
        .into_iter()
        .flatten()
        .max_by_key(|s| status_severity(s))
        .map_or("UpToDate", |s| s.as_str())
    }
}

/// How bad a TCB status is, for picking the worst of several; a status
/// this code does not know counts as the worst.
fn status_severity(s: &str) -> u8 {
    match s {
        "UpToDate" => 0,
        "SWHardeningNeeded" => 1,
        "ConfigurationNeeded" => 2,
        "ConfigurationAndSWHardeningNeeded" => 3,
        "OutOfDate" => 4,
        "OutOfDateConfigurationNeeded" => 5,
        "Revoked" => 6,
        _ => 7,
    }
}

fn rfc3339(s: &str) -> Result<u64, VerifyError> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp().max(0) as u64)
        .map_err(|_| invalid(format!("collateral time {s:?} is not RFC 3339")))
}

/// The signer of a signing chain `[signer, root]`, validated at `now`
/// against the embedded Intel root (whatever the chain's own copy of the
/// root says).
fn signer(chain_pem: &str, now: u64, what: &str) -> Result<X509Cert, VerifyError> {
    let first = crate::x509::pem_ders(chain_pem)
        .map_err(|e| invalid(format!("{what} issuer chain: {e}")))?
        .into_iter()
        .next()
        .ok_or_else(|| invalid(format!("{what} issuer chain is empty")))?;
    let signer =
        X509Cert::from_der(&first).map_err(|e| invalid(format!("{what} issuer chain: {e}")))?;
    verify_path(
        &signer,
        &[],
        super::intel_anchors()?,
        now,
        Purpose::IntelSgx,
        &[],
    )
    .map_err(|e| super::chain_refused(e, &format!("{what} signing")))?;
    Ok(signer)
}

fn check_signed_json(
    json: &str,
    sig_hex: &str,
    signer: &X509Cert,
    what: &str,
) -> Result<(), VerifyError> {
    let sig = unhex(sig_hex).ok_or_else(|| invalid(format!("{what} signature is not hex")))?;
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        signer.ec_point(),
    )
    .verify(json.as_bytes(), &sig)
    .map_err(|_| {
        invalid(format!(
            "the {what} signature does not verify (tampered collateral)"
        ))
    })
}

fn check_window(
    issue_date: &str,
    next_update: &str,
    now: u64,
    what: &str,
) -> Result<u64, VerifyError> {
    let (issued, next) = (rfc3339(issue_date)?, rfc3339(next_update)?);
    if now < issued {
        return Err(invalid(format!(
            "{what} is not valid yet (issued {issue_date})"
        )));
    }
    if now > next {
        return Err(invalid(format!(
            "{what} expired: its nextUpdate was {next_update}; fetch fresh collateral"
        )));
    }
    Ok(next)
}

/// Hex to bytes through a table (collateral carries kilobytes of hex).
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    const fn table() -> [u8; 256] {
        let mut t = [0xffu8; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            t[b'A' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    }
    const T: [u8; 256] = table();
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / 2);
    for pair in b.chunks_exact(2) {
        let (h, l) = (T[pair[0] as usize], T[pair[1] as usize]);
        if h == 0xff || l == 0xff {
            return None;
        }
        out.push((h << 4) | l);
    }
    Some(out)
}

/// One TLV at the start of `b`: (tag, content, rest).
fn next_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let (hdr, len) = crate::x509::tlv(b)?;
    let end = hdr.checked_add(len)?;
    Some((tag, b.get(hdr..end)?, b.get(end..)?))
}

/// A DER UTCTime or GeneralizedTime (`Z` form) as Unix seconds.
fn der_time(tag: u8, v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?;
    let s = s.strip_suffix('Z')?;
    // Digits only, so that every slice below falls on a character boundary.
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, s.len()) {
        (0x17, 12) => {
            let yy: i32 = s[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        (0x18, 14) => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    let n = |i: usize| rest[i..i + 2].parse::<u8>().ok();
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(n(0)?).ok()?, n(2)?).ok()?;
    let t = time::Time::from_hms(n(4)?, n(6)?, n(8)?).ok()?;
    Some(date.with_time(t).assume_utc().unix_timestamp().max(0) as u64)
}

/// A DER CRL's nextUpdate (Unix seconds), read in place: how long fetched
/// collateral and a verification result may be kept. Whether a CRL is
/// valid, and what it revokes, is decided by the path validation.
fn crl_next_update(der: &[u8]) -> Option<u64> {
    let (0x30, outer, []) = next_tlv(der)? else {
        return None;
    };
    let (0x30, tbs, _) = next_tlv(outer)? else {
        return None;
    };
    let (mut tag, _, mut rest) = next_tlv(tbs)?;
    if tag == 0x02 {
        (tag, _, rest) = next_tlv(rest)?; // version
    }
    if tag != 0x30 {
        return None; // signature algorithm
    }
    let (0x30, _, rest) = next_tlv(rest)? else {
        return None; // issuer
    };
    let (0x17 | 0x18, _, rest) = next_tlv(rest)? else {
        return None; // thisUpdate
    };
    match next_tlv(rest)? {
        (t @ (0x17 | 0x18), v, _) => der_time(t, v),
        _ => None,
    }
}

/// Runs the CRL readers on arbitrary bytes (for the fuzzer): never panics.
#[doc(hidden)]
pub fn fuzz_crl(der: &[u8]) -> Option<u64> {
    let listed = Crl::from_der(der, "CRL").map(|c| c.lists_serial(&[1]));
    crl_next_update(der).filter(|_| listed.is_ok())
}

/// Checks `collateral` for quote `q` at `now`.
pub fn verify<B: QuoteBody>(
    q: &Quote<B>,
    c: &Collateral,
    now: u64,
) -> Result<CollateralResult, VerifyError> {
    verify_with_chain(q, &super::pck_chain(q)?, c, now).map_err(|r| r.error)
}

/// Why collateral did not verify for a quote, and whether the collateral
/// (a document, a CRL) is at fault rather than the quote's PCK chain:
/// fetched collateral is dropped, to be fetched again, only in the first
/// case (a quote with a bad chain cannot make the trustee refetch).
#[derive(Debug)]
pub(crate) struct Refusal {
    pub error: VerifyError,
    pub collateral_at_fault: bool,
}

impl From<VerifyError> for Refusal {
    fn from(error: VerifyError) -> Self {
        Self {
            error,
            collateral_at_fault: true,
        }
    }
}

/// [`verify`] with the quote's PCK chain already parsed.
pub(crate) fn verify_with_chain<B: QuoteBody>(
    q: &Quote<B>,
    chain: &[X509Cert; 3],
    c: &Collateral,
    now: u64,
) -> Result<CollateralResult, Refusal> {
    let tcb_signer = signer(&c.tcb_info_issuer_chain, now, "TCB info")?;
    check_signed_json(&c.tcb_info, &c.tcb_info_signature, &tcb_signer, "TCB info")?;
    // Each signed document is parsed once, after its signature holds.
    let info: TcbInfo =
        serde_json::from_str(&c.tcb_info).map_err(|e| invalid(format!("TCB info: {e}")))?;
    let tcb_next = check_window(&info.issue_date, &info.next_update, now, "TCB info")?;
    // Intel signs both documents with the same TCB signing certificate.
    let qe_signer = if c.qe_identity_issuer_chain == c.tcb_info_issuer_chain {
        tcb_signer.clone()
    } else {
        signer(&c.qe_identity_issuer_chain, now, "QE identity")?
    };
    check_signed_json(
        &c.qe_identity,
        &c.qe_identity_signature,
        &qe_signer,
        "QE identity",
    )?;
    let id: QeIdentity =
        serde_json::from_str(&c.qe_identity).map_err(|e| invalid(format!("QE identity: {e}")))?;
    let qe_next = check_window(&id.issue_date, &id.next_update, now, "QE identity")?;

    // The QE that certified the attestation key is Intel's QE for this TEE.
    if id.id != B::QE_IDENTITY_ID {
        return Err(invalid(format!(
            "the QE identity is for {}, a {} quote needs {}",
            id.id,
            B::NAME,
            B::QE_IDENTITY_ID
        ))
        .into());
    }
    // One validation of the PCK chain decides its trust, validity and
    // revocation: the PCK CA by the root CA CRL, the PCK by the PCK CRL.
    let root_crl_der =
        unhex(&c.root_ca_crl).ok_or_else(|| invalid("the root CA CRL is not hex"))?;
    let pck_crl_der = unhex(&c.pck_crl).ok_or_else(|| invalid("the PCK CRL is not hex"))?;
    let crls = [
        Crl::from_der(&root_crl_der, "root CA CRL").map_err(|e| invalid(e.to_string()))?,
        Crl::from_der(&pck_crl_der, "PCK CRL").map_err(|e| invalid(e.to_string()))?,
    ];
    super::pck_path(chain, super::intel_anchors()?, &[&crls[0], &crls[1]], now)?;

    let r = q.qe.report().map_err(|e| invalid(e.to_string()))?;
    let masked = |value: &[u8], want: &str, mask: &str| -> Result<bool, VerifyError> {
        let (w, m) = (
            unhex(want).ok_or_else(|| invalid("QE identity hex"))?,
            unhex(mask).ok_or_else(|| invalid("QE identity hex"))?,
        );
        Ok(w.len() == value.len()
            && m.len() == value.len()
            && value.iter().zip(&m).zip(&w).all(|((v, m), w)| v & m == *w))
    };
    let attributes = [r.attributes_flags, r.attributes_xfrm].concat();
    if !masked(&r.misc_select, &id.miscselect, &id.miscselect_mask)?
        || !masked(&attributes, &id.attributes, &id.attributes_mask)?
    {
        return Err(
            invalid("the QE report's MISCSELECT/ATTRIBUTES do not match the QE identity").into(),
        );
    }
    if !hex::encode(r.mr_signer).eq_ignore_ascii_case(&id.mrsigner) {
        return Err(
            invalid("the QE report's MRSIGNER is not the QE identity's (not Intel's QE)").into(),
        );
    }
    let prodid = u16::from_le_bytes(r.isv_prod_id);
    if prodid != id.isvprodid {
        return Err(invalid(format!(
            "QE ISVPRODID {prodid}, the QE identity says {}",
            id.isvprodid
        ))
        .into());
    }
    let isvsvn = u16::from_le_bytes(r.isv_svn);
    let qe_tcb_status = id
        .tcb_levels
        .iter()
        .find(|l| isvsvn >= l.tcb.isvsvn)
        .map(|l| l.tcb_status.clone())
        .unwrap_or_else(|| "Revoked".into());
    let (platform_tcb_status, module_tcb_status) = platform_tcb_status_of(q, chain, &info)?;
    let fmspc = info.fmspc;
    // A CRL counts as expired from its nextUpdate on.
    let crl_until = |der: &[u8]| crl_next_update(der).map_or(u64::MAX, |t| t.saturating_sub(1));
    let valid_until = [
        tcb_next,
        qe_next,
        crl_until(&root_crl_der),
        crl_until(&pck_crl_der),
        tcb_signer.not_after(),
        qe_signer.not_after(),
        chain[0].not_after(),
        chain[1].not_after(),
    ]
    .into_iter()
    .min()
    .unwrap_or(0);
    Ok(CollateralResult {
        fmspc,
        qe_tcb_status,
        platform_tcb_status,
        module_tcb_status,
        valid_until,
        from_evidence: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// dcap-qvl's TDX quote and its collateral.
    fn dcapqvl_tdx() -> (super::super::quote::TdxQuote, Collateral) {
        let dir = cocoon_fixtures::Dir("tdx");
        let q = super::super::quote::TdxQuote::parse(
            &std::fs::read(format!("{dir}/dcapqvl_tdx_quote.bin")).unwrap(),
        )
        .unwrap();
        let c: Collateral = serde_json::from_slice(
            &std::fs::read(format!("{dir}/dcapqvl_tdx_quote_collateral.json")).unwrap(),
        )
        .unwrap();
        (q, c)
    }

    /// The overall TCB status is the worst of the three, whichever it is.
    #[test]
    fn overall_tcb_status_is_the_worst() {
        let r = |platform: &str, qe: &str, module: Option<&str>| CollateralResult {
            fmspc: String::new(),
            qe_tcb_status: qe.into(),
            platform_tcb_status: platform.into(),
            module_tcb_status: module.map(Into::into),
            valid_until: 0,
            from_evidence: false,
        };
        assert_eq!(r("UpToDate", "UpToDate", None).tcb_status(), "UpToDate");
        assert_eq!(
            r("SWHardeningNeeded", "Revoked", Some("UpToDate")).tcb_status(),
            "Revoked"
        );
        assert_eq!(
            r("SWHardeningNeeded", "OutOfDate", None).tcb_status(),
            "OutOfDate"
        );
        assert_eq!(
            r("OutOfDate", "UpToDate", Some("SWHardeningNeeded")).tcb_status(),
            "OutOfDate"
        );
        assert_eq!(
            r("UpToDate", "UpToDate", Some("ConfigurationNeeded")).tcb_status(),
            "ConfigurationNeeded"
        );
        assert_eq!(
            r("UpToDate", "SomethingNew", None).tcb_status(),
            "SomethingNew"
        );
    }

    /// The captured PCK CRL (signed by the quote's PCK CA) lists revoked
    /// serials, as a full X.509 CRL decoder reads them; the quote's PCK is
    /// not among them, and its chain validates with both captured CRLs.
    #[test]
    fn pck_crl_revocation_lookup() {
        use x509_cert::der::Decode;
        let (q, c) = dcapqvl_tdx();
        let chain = super::super::pck_chain(&q).unwrap();
        let (root_der, pck_der) = (unhex(&c.root_ca_crl).unwrap(), unhex(&c.pck_crl).unwrap());
        let root_crl = Crl::from_der(&root_der, "root CA CRL").unwrap();
        let pck_crl = Crl::from_der(&pck_der, "PCK CRL").unwrap();
        let full = x509_cert::crl::CertificateList::from_der(&pck_der).unwrap();
        let serials = full.tbs_cert_list.revoked_certificates.unwrap_or_default();
        assert!(!serials.is_empty(), "the captured CRL revokes certificates");
        for r in &serials {
            assert!(pck_crl.lists_serial(r.serial_number.as_bytes()));
        }
        let pck_serial = chain[0].cert.tbs_certificate.serial_number.as_bytes();
        assert!(!pck_crl.lists_serial(pck_serial));
        let anchors = super::super::intel_anchors().unwrap();
        super::super::check_pck_chain(&chain, anchors, &[&root_crl, &pck_crl], 1_750_809_600)
            .unwrap();
        // Without a CRL for the PCK's issuer, its status is unknown: refused.
        let e = super::super::check_pck_chain(&chain, anchors, &[&root_crl], 1_750_809_600)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no CRL covers Intel SGX PCK Certificate"), "{e}");
    }

    /// Intel PCS responses as served (`{"tcbInfo": …, "signature": …}`):
    /// the exact signed bytes are recovered and verify with Intel's TCB
    /// signing certificate, within their window; one changed byte fails.
    #[test]
    fn pcs_documents_verify_as_served() {
        let fixtures = cocoon_fixtures::Dir("tdx");
        let c: Collateral = serde_json::from_slice(
            &std::fs::read(format!("{fixtures}/dcapqvl_tdx_quote_collateral.json")).unwrap(),
        )
        .unwrap();
        // 2025-11-01, inside both documents' windows.
        let at = 1_761_955_200;
        let signer = signer(&c.tcb_info_issuer_chain, at, "TCB info").unwrap();
        for (file, id) in [
            ("trustee_tcbInfo.json", "TDX"),
            ("trustee_enclaveIdentity.json", "TD_QE"),
        ] {
            let body = std::fs::read(format!("{fixtures}/{file}")).unwrap();
            let (doc, sig) = super::super::pccs::split_signed(&body, file).unwrap();
            check_signed_json(&doc, &sig, &signer, file).unwrap();
            let w: serde_json::Value = serde_json::from_str(&doc).unwrap();
            let (issued, next) = (
                w["issueDate"].as_str().unwrap(),
                w["nextUpdate"].as_str().unwrap(),
            );
            check_window(issued, next, at, file).unwrap();
            let e = check_window(issued, next, at + 40 * 86_400, file)
                .unwrap_err()
                .to_string();
            assert!(e.contains("expired"), "{e}");
            assert!(doc.contains(&format!("\"id\":\"{id}\"")));
            let tampered = doc.replacen("\"version\":", "\"version\" :", 1);
            assert!(check_signed_json(&tampered, &sig, &signer, file).is_err());
        }
        let info: TcbInfo = serde_json::from_str(
            &super::super::pccs::split_signed(
                &std::fs::read(format!("{fixtures}/trustee_tcbInfo.json")).unwrap(),
                "TCB info",
            )
            .unwrap()
            .0,
        )
        .unwrap();
        assert_eq!(info.fmspc, "00A06D080000");
        assert!(!info.tcb_levels.is_empty());
    }

    /// DER times: both forms, and no panic on non-digits (multi-byte
    /// characters included).
    #[test]
    fn der_times() {
        assert_eq!(der_time(0x17, b"250619105611Z"), Some(1_750_330_571));
        assert_eq!(der_time(0x18, b"20250619105611Z"), Some(1_750_330_571));
        assert_eq!(der_time(0x17, "€€€€Z".as_bytes()), None);
        assert_eq!(der_time(0x17, b"2506191056a1Z"), None);
        assert_eq!(der_time(0x17, b"250619105611"), None);
        assert_eq!(der_time(0x17, b"251319105611Z"), None);
    }

    /// A PCK chain of Intel's shape (a test PKI: Intel's keys are not
    /// ours): its PCK CA listed on the root CA CRL, or its PCK on the PCK
    /// CRL, is refused, naming the certificate and the CRL; an expired CRL
    /// too; with neither listed it validates.
    #[test]
    fn revoked_pck_and_pck_ca_are_refused() {
        use crate::x509::tests::{Kind, TestPki};
        let root = TestPki::root("Test SGX Root CA");
        let ca = root.issue("Test SGX PCK Platform CA", Kind::Ca);
        let pck = ca.issue("Test SGX PCK Certificate", Kind::Leaf);
        let chain = [pck.x509.clone(), ca.x509.clone(), root.x509.clone()];
        let anchors = crate::x509::TrustAnchors::new(vec![root.x509.clone()]).unwrap();
        let now = TestPki::NOW;
        let check = |root_crl: &[u8], pck_crl: &[u8], at: u64| {
            let root_crl = Crl::from_der(root_crl, "root CA CRL").unwrap();
            let pck_crl = Crl::from_der(pck_crl, "PCK CRL").unwrap();
            super::super::check_pck_chain(&chain, &anchors, &[&root_crl, &pck_crl], at)
                .map_err(|e| e.to_string())
        };
        let (root_clean, pck_clean) = (root.crl(&[]), ca.crl(&[]));
        check(&root_clean, &pck_clean, now).unwrap();
        let e = check(&root_clean, &ca.crl(&[&pck]), now).unwrap_err();
        assert!(
            e.contains("Test SGX PCK Certificate is revoked (PCK CRL)"),
            "{e}"
        );
        let e = check(&root.crl(&[&ca]), &pck_clean, now).unwrap_err();
        assert!(
            e.contains("Test SGX PCK Platform CA is revoked (root CA CRL)"),
            "{e}"
        );
        // Past the CRLs' nextUpdate (the certificates still valid).
        let e = check(&root_clean, &pck_clean, now + 40 * 86_400).unwrap_err();
        assert!(e.contains("root CA CRL expired (nextUpdate"), "{e}");
        // A CRL signed by another key than its issuer's.
        let impostor = TestPki::root("Test SGX PCK Platform CA");
        let e = check(&root_clean, &impostor.crl(&[]), now).unwrap_err();
        assert!(e.contains("PCK CRL signature does not verify"), "{e}");
    }

    /// The in-place nextUpdate reader agrees with a full X.509 CRL decoder
    /// on every captured CRL, webpki finds every serial the decoder lists,
    /// and both refuse truncations and trailing bytes.
    #[test]
    fn crl_readers_agree_with_x509_cert() {
        use x509_cert::der::Decode;
        let fixtures = cocoon_fixtures::Dir("");
        for f in [
            "tdx/dcapqvl_tdx_quote_collateral.json",
            "sgx/dcapqvl_sgx_quote_collateral.json",
        ] {
            let c: Collateral =
                serde_json::from_slice(&std::fs::read(format!("{fixtures}/{f}")).unwrap()).unwrap();
            for hexed in [&c.pck_crl, &c.root_ca_crl] {
                let der = unhex(hexed).unwrap();
                assert_eq!(der, hex::decode(hexed).unwrap());
                let full = x509_cert::crl::CertificateList::from_der(&der).unwrap();
                assert_eq!(
                    crl_next_update(&der),
                    full.tbs_cert_list
                        .next_update
                        .map(|t| t.to_unix_duration().as_secs())
                );
                let list = Crl::from_der(&der, f).unwrap();
                for r in full.tbs_cert_list.revoked_certificates.unwrap_or_default() {
                    assert!(list.lists_serial(r.serial_number.as_bytes()), "{f}");
                }
                for cut in [1, der.len() / 2, der.len() - 1] {
                    assert!(crl_next_update(&der[..cut]).is_none());
                    assert!(Crl::from_der(&der[..cut], f).is_err());
                }
                let mut long = der.clone();
                long.push(0);
                assert!(crl_next_update(&long).is_none());
                assert!(Crl::from_der(&long, f).is_err());
            }
        }
        assert!(unhex("0g").is_none() && unhex("abc").is_none());
    }
}

/// The Intel SGX extension of a PCK certificate: the platform's TCB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PckTcb {
    /// SGX TCB component SVNs 1..16.
    pub sgx_components: [u8; 16],
    /// PCE SVN.
    pub pcesvn: u16,
    /// FMSPC (hex, uppercase as in TCB info).
    pub fmspc: String,
}

/// DER-encoded OID arcs of `1.2.840.113741.1.13.1`.
const SGX_EXT: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf8, 0x4d, 0x01, 0x0d, 0x01];

/// The children (header + content slices) of a DER SEQUENCE's content.
fn children(mut content: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !content.is_empty() {
        let tag = content[0];
        let (hdr, len) = crate::x509::tlv(content)?;
        let end = hdr.checked_add(len)?;
        out.push((tag, content.get(hdr..end)?));
        content = content.get(end..)?;
    }
    Some(out)
}

fn der_uint(b: &[u8]) -> Option<u16> {
    if b.is_empty() || b.len() > 3 || (b.len() == 3 && b[0] != 0) {
        return None;
    }
    Some(b.iter().fold(0u16, |acc, x| (acc << 8) | u16::from(*x)))
}

impl PckTcb {
    /// Reads the SGX extension of the PCK certificate.
    pub fn from_pck(pck: &X509Cert) -> Result<Self, VerifyError> {
        let bad = || invalid("the PCK certificate's SGX extension is malformed");
        let ext = pck
            .cert
            .tbs_certificate
            .extensions
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|e| e.extn_id.as_bytes() == SGX_EXT)
            .ok_or_else(|| invalid("the PCK certificate has no SGX extension"))?;
        let v = ext.extn_value.as_bytes();
        let (hdr, len) = crate::x509::tlv(v).ok_or_else(bad)?;
        let items = children(v.get(hdr..hdr + len).ok_or_else(bad)?).ok_or_else(bad)?;
        let mut tcb = None;
        let mut fmspc = None;
        for (_, item) in items {
            let kv = children(item).ok_or_else(bad)?;
            let [(0x06, oid), (_, value)] = kv.as_slice() else {
                return Err(bad());
            };
            match oid.strip_prefix(&SGX_EXT[..]) {
                Some([0x02]) => tcb = Some(children(value).ok_or_else(bad)?),
                Some([0x04]) => fmspc = Some(hex::encode_upper(value)),
                _ => {}
            }
        }
        let mut sgx_components = [0u8; 16];
        let mut pcesvn = None;
        for (_, comp) in tcb.ok_or_else(bad)? {
            let kv = children(comp).ok_or_else(bad)?;
            let [(0x06, oid), (tag, value)] = kv.as_slice() else {
                return Err(bad());
            };
            match oid.strip_prefix(&SGX_EXT[..]) {
                Some([0x02, n @ 1..=16]) if *tag == 0x02 => {
                    sgx_components[*n as usize - 1] =
                        u8::try_from(der_uint(value).ok_or_else(bad)?).map_err(|_| bad())?
                }
                Some([0x02, 17]) if *tag == 0x02 => pcesvn = der_uint(value),
                _ => {}
            }
        }
        Ok(Self {
            sgx_components,
            pcesvn: pcesvn.ok_or_else(bad)?,
            fmspc: fmspc.ok_or_else(bad)?,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TcbInfo {
    issue_date: String,
    next_update: String,
    id: String,
    fmspc: String,
    #[serde(default)]
    tdx_module: Option<ModuleSigner>,
    #[serde(default)]
    tdx_module_identities: Vec<ModuleIdentity>,
    tcb_levels: Vec<TcbLevel>,
}

/// Who signs a TDX module and which SEAM attributes it may have.
#[derive(Deserialize)]
struct ModuleSigner {
    mrsigner: String,
    attributes: String,
    #[serde(rename = "attributesMask")]
    attributes_mask: String,
}

impl ModuleSigner {
    /// Whether MRSIGNERSEAM and SEAMATTRIBUTES match.
    fn matches(&self, mrsigner: &[u8; 48], attributes: &[u8; 8]) -> bool {
        let (Some(signer), Some(want), Some(mask)) = (
            unhex(&self.mrsigner),
            unhex(&self.attributes),
            unhex(&self.attributes_mask),
        ) else {
            return false;
        };
        signer == mrsigner
            && want.len() == 8
            && mask.len() == 8
            && attributes
                .iter()
                .zip(&mask)
                .zip(&want)
                .all(|((a, m), w)| a & m == *w)
    }
}

#[derive(Deserialize)]
struct ModuleIdentity {
    id: String,
    #[serde(flatten)]
    signer: ModuleSigner,
    #[serde(rename = "tcbLevels")]
    tcb_levels: Vec<QeTcbLevel>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TcbLevel {
    tcb: LevelTcb,
    tcb_status: String,
}

#[derive(Deserialize)]
struct LevelTcb {
    sgxtcbcomponents: Vec<Svn>,
    pcesvn: u16,
    #[serde(default)]
    tdxtcbcomponents: Vec<Svn>,
}

#[derive(Deserialize)]
struct Svn {
    svn: u8,
}

/// The platform's TCB status: the first TCB info level (Intel lists them
/// newest first) that the PCK's SGX components and PCE SVN and the TD's
/// TEE_TCB_SVN all meet; plus the TDX module's status from its identity.
pub fn platform_tcb_status<B: QuoteBody>(
    q: &Quote<B>,
    c: &Collateral,
) -> Result<(String, Option<String>), VerifyError> {
    platform_tcb_status_with_chain(q, &super::pck_chain(q)?, c)
}

fn platform_tcb_status_with_chain<B: QuoteBody>(
    q: &Quote<B>,
    chain: &[X509Cert; 3],
    c: &Collateral,
) -> Result<(String, Option<String>), VerifyError> {
    let info: TcbInfo =
        serde_json::from_str(&c.tcb_info).map_err(|e| invalid(format!("TCB info: {e}")))?;
    platform_tcb_status_of(q, chain, &info)
}

fn platform_tcb_status_of<B: QuoteBody>(
    q: &Quote<B>,
    chain: &[X509Cert; 3],
    info: &TcbInfo,
) -> Result<(String, Option<String>), VerifyError> {
    let pck = PckTcb::from_pck(&chain[0])?;
    if info.id != B::TCB_INFO_ID {
        return Err(invalid(format!(
            "the TCB info is for {}, a {} quote needs {}",
            info.id,
            B::NAME,
            B::TCB_INFO_ID
        )));
    }
    if !info.fmspc.eq_ignore_ascii_case(&pck.fmspc) {
        return Err(invalid(format!(
            "the TCB info is for FMSPC {}, the PCK for {}",
            info.fmspc, pck.fmspc
        )));
    }
    let tee = q.body.tee_tcb_svn();
    // With a TDX module version (TEE_TCB_SVN[1] > 0) the first two bytes
    // are the module's SVN and version, judged by the module identity.
    let from = match tee {
        Some(t) if t[1] > 0 => 2,
        _ => 0,
    };
    let level = info.tcb_levels.iter().find(|l| {
        l.tcb.sgxtcbcomponents.len() == 16
            && l.tcb
                .sgxtcbcomponents
                .iter()
                .zip(pck.sgx_components)
                .all(|(want, have)| have >= want.svn)
            && pck.pcesvn >= l.tcb.pcesvn
            && tee.is_none_or(|tee| {
                l.tcb.tdxtcbcomponents.len() == 16
                    && l.tcb
                        .tdxtcbcomponents
                        .iter()
                        .zip(tee)
                        .skip(from)
                        .all(|(want, have)| *have >= want.svn)
            })
    });
    let status = level.map_or_else(|| "OutOfDate".to_string(), |l| l.tcb_status.clone());
    // The TDX module must be one Intel signed: MRSIGNERSEAM and
    // SEAMATTRIBUTES against the module identity for its version, or
    // against `tdxModule` for a module that reports none.
    if let (Some(tee), Some((mrsigner, attributes))) = (tee, q.body.seam()) {
        let signer = if tee[1] > 0 {
            let id = format!("TDX_{:02X}", tee[1]);
            info.tdx_module_identities
                .iter()
                .find(|m| m.id == id)
                .map(|m| &m.signer)
                .ok_or_else(|| {
                    invalid(format!("the TCB info has no identity for TDX module {id}"))
                })?
        } else {
            info.tdx_module
                .as_ref()
                .ok_or_else(|| invalid("the TCB info has no tdxModule"))?
        };
        if !signer.matches(mrsigner, attributes) {
            return Err(invalid(
                "the TDX module's MRSIGNERSEAM/SEAMATTRIBUTES do not match the TCB info's module identity (not a module Intel signed)",
            ));
        }
    }
    let module = tee.filter(|t| t[1] > 0).map(|tee| {
        let id = format!("TDX_{:02X}", tee[1]);
        info.tdx_module_identities
            .iter()
            .find(|m| m.id == id)
            .and_then(|m| {
                m.tcb_levels
                    .iter()
                    .find(|l| u16::from(tee[0]) >= l.tcb.isvsvn)
            })
            .map_or_else(|| "OutOfDate".to_string(), |l| l.tcb_status.clone())
    });
    Ok((status, module))
}
