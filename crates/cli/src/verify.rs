//! `cocoon verify`: verify one piece of evidence offline, the way the
//! trustee would, and print its claims. An admin's tool for debugging
//! evidence.

use anyhow::{Context, Result, bail};
use clap::Args;
use cocoon_verifier::VerifyInput;
use cocoon_verifier::snp::{self, SnpVerifier};
use std::path::PathBuf;

/// `cocoon verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// TEE of the evidence: snp, tdx, sgx, az-snp-vtpm, az-tdx-vtpm, cca, tpm.
    #[arg(long)]
    tee: String,
    /// Evidence: the raw report/quote bytes, or the JSON evidence document a guest sends.
    #[arg(long)]
    evidence: PathBuf,
    /// Collateral: the VCEK/VLEK (DER or PEM) for snp; the DCAP collateral JSON (a file, or a directory of them) for tdx, sgx and az-tdx-vtpm; the platform's CPAK (PEM public key or JWK, file or directory) for cca; the AK public key (PEM) to require for tpm.
    #[arg(long)]
    collateral: Option<PathBuf>,
    /// Expected report data (hex); without it the session binding is not checked.
    #[arg(long)]
    report_data: Option<String>,
    /// Expected initdata digest (hex), compared with HOSTDATA (snp), MRCONFIGID (tdx) or CONFIGID (sgx).
    #[arg(long)]
    init_data_digest: Option<String>,
    /// Verification time (RFC 3339), for evidence whose certificates are no longer (or not yet) valid.
    #[arg(long)]
    at: Option<String>,
}

/// A certificate given as DER or PEM.
fn der_or_pem(bytes: Vec<u8>) -> Result<Vec<u8>> {
    match std::str::from_utf8(&bytes) {
        Ok(text) if text.contains("-----BEGIN") => cocoon_verifier::x509::pem_ders(text)
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .next()
            .context("PEM without a CERTIFICATE block"),
        _ => Ok(bytes),
    }
}

/// Verifies and prints the claims.
pub fn run(a: VerifyArgs) -> Result<()> {
    let now = match &a.at {
        Some(t) => time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .with_context(|| format!("--at {t:?} is not an RFC 3339 time"))?
            .unix_timestamp() as u64,
        None => time::OffsetDateTime::now_utc().unix_timestamp() as u64,
    };
    let bytes = std::fs::read(&a.evidence)
        .with_context(|| format!("cannot read {}", a.evidence.display()))?;
    match a.tee.as_str() {
        "snp" => {
            let (raw, table_vcek) = match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(json) => (
                    snp::report_from_evidence(&json)?,
                    snp::vcek_from_evidence(&json)?,
                ),
                Err(_) => (bytes, None),
            };
            let vcek = match (&a.collateral, table_vcek) {
                (Some(p), _) => der_or_pem(
                    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
                )?,
                (None, Some(v)) => v,
                (None, None) => bail!(
                    "the report's signature needs its VCEK (or VLEK): pass --collateral vcek.der (AMD KDS serves it at https://kdsintf.amd.com/vcek/v1/<Milan|Genoa|Turin>/<chip id hex>?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..)"
                ),
            };
            let verifier = SnpVerifier::new().map_err(anyhow::Error::msg)?;
            let claims = verifier.verify_report(&raw, &vcek, now)?;
            match &a.report_data {
                Some(h) => snp::check_report_data(
                    &claims.report,
                    &hex::decode(h).context("--report-data is not hex")?,
                )?,
                None => eprintln!("note: report data binding NOT checked (pass --report-data HEX)"),
            }
            snp::check_host_data(&claims.report, &binding_input(&[], &init_digest(&a)?))?;
            eprintln!(
                "verified: SEV-SNP report signed by a {} {} chaining to AMD's ARK; TCB status unknown (no TCB collateral for SNP)",
                claims.product, claims.signing_key
            );
            outln!("{}", serde_json::to_string_pretty(&claims.to_json())?);
            Ok(())
        }
        "tdx" => verify_tdx(&a, bytes, now),
        "sgx" => verify_sgx(&a, bytes, now),
        "az-snp-vtpm" | "az-tdx-vtpm" => verify_az(&a, &bytes, now),
        "cca" => verify_cca(&a, bytes),
        "tpm" => verify_tpm(&a, &bytes),
        other => bail!(
            "verify --tee {other} is not supported yet (supported: snp, tdx, sgx, az-snp-vtpm, az-tdx-vtpm, cca, tpm)"
        ),
    }
}

/// The DCAP collateral given with `--collateral` (a file or a directory).
fn dcap_collateral(
    a: &VerifyArgs,
) -> Result<Option<cocoon_verifier::tdx::collateral::CollateralSet>> {
    a.collateral
        .as_deref()
        .map(cocoon_verifier::tdx::collateral::CollateralSet::load)
        .transpose()
        .map_err(anyhow::Error::msg)
}

/// What the collateral established, for the summary line.
fn dcap_tcb_note(checked: &Option<cocoon_verifier::tdx::collateral::CollateralResult>) -> String {
    match checked {
        Some(r) => format!(
            "collateral verified (TCB info for FMSPC {}, QE identity, CRLs: not revoked); TCB status {} (platform {}, TDX module {}, QE {})",
            r.fmspc,
            r.tcb_status(),
            r.platform_tcb_status,
            r.module_tcb_status.as_deref().unwrap_or("-"),
            r.qe_tcb_status
        ),
        None => {
            "TCB status unknown (no collateral: CRLs, TCB info and QE identity not checked)".into()
        }
    }
}

/// The expected report data (`--report-data`, or else the evidence's own,
/// from `own`, so that every other check still runs, said so) and the
/// initdata digest, to check the way the trustee does.
fn bindings(
    a: &VerifyArgs,
    own: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    let report_data = match &a.report_data {
        Some(h) => hex::decode(h).context("--report-data is not hex")?,
        None => {
            eprintln!("note: report data binding NOT checked (pass --report-data HEX)");
            own()?
        }
    };
    Ok((report_data, init_digest(a)?))
}

/// `--init-data-digest`, decoded.
fn init_digest(a: &VerifyArgs) -> Result<Option<Vec<u8>>> {
    a.init_data_digest
        .as_deref()
        .map(hex::decode)
        .transpose()
        .context("--init-data-digest is not hex")
}

/// The input the trustee's binding checks take.
fn binding_input<'a>(report_data: &'a [u8], init: &'a Option<Vec<u8>>) -> VerifyInput<'a> {
    VerifyInput {
        evidence: &serde_json::Value::Null,
        expected_report_data: report_data,
        init_data_digest: init.as_deref(),
    }
}

/// What a refused binding is compared with: the evidence's two fields.
fn bound(report_name: &str, report: &[u8], init_name: &str, init: &[u8]) -> String {
    format!(
        "the evidence binds {report_name} {} and {init_name} {}",
        hex::encode(report),
        hex::encode(init)
    )
}

/// The quote's own nonce (TPMS_ATTEST extraData) from its `message`.
fn vtpm_nonce(message: Option<Vec<u8>>) -> Result<Vec<u8>> {
    let m = message.context("evidence without a tpm_quote.message")?;
    Ok(cocoon_tpm::Attest::parse(&m)?.extra_data)
}

/// The AK set of `cocoon verify --tee tpm`: the one given, or else the
/// evidence's own (said so), and how it is trusted for the claims.
struct OneAk(Vec<u8>, &'static str);

impl cocoon_verifier::TrustedKeys for OneAk {
    fn trusted_by(&self, spki: &[u8]) -> Result<Option<cocoon_verifier::KeyTrust>, String> {
        // Offline, nothing says whether the AK is in hardware.
        Ok(
            (spki == self.0.as_slice()).then(|| cocoon_verifier::KeyTrust {
                by: self.1.to_string(),
                hardware_backed: false,
            }),
        )
    }
}

/// TPM evidence (CoCo's JSON): everything the trustee checks; the AK is
/// required to be the one in `--collateral` when given.
fn verify_tpm(a: &VerifyArgs, bytes: &[u8]) -> Result<()> {
    use base64::Engine;
    use cocoon_verifier::{Verifier, tpm::TpmVerifier};
    let ev: serde_json::Value =
        serde_json::from_slice(bytes).context("TPM evidence is a JSON document")?;
    let evidence_ak = base64::engine::general_purpose::STANDARD
        .decode(ev["ak_public"].as_str().unwrap_or_default())
        .context("evidence without a base64 ak_public")?;
    let (trusted, note) = match &a.collateral {
        Some(p) => (
            cocoon_kbs::tpm_aks::parse_ak(
                &std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
            )
            .map_err(anyhow::Error::msg)?,
            "signed by the AK given",
        ),
        None => (
            evidence_ak,
            "AK trust NOT checked (pass --collateral ak.pem to require an AK)",
        ),
    };
    let (report_data, init) = bindings(a, || {
        vtpm_nonce(
            base64::engine::general_purpose::STANDARD
                .decode(ev["tpm_quote"]["message"].as_str().unwrap_or_default())
                .ok(),
        )
    })?;
    let how = if a.collateral.is_some() {
        "collateral"
    } else {
        "not checked"
    };
    let c = TpmVerifier::new(std::sync::Arc::new(OneAk(trusted, how))).verify(&VerifyInput {
        evidence: &ev,
        expected_report_data: &report_data,
        init_data_digest: init.as_deref(),
    })?;
    eprintln!("verified: TPM quote over PCRs 0-23 (SHA-256), {note}");
    outln!("{}", serde_json::to_string_pretty(&c.claims)?);
    Ok(())
}

/// An Arm CCA token: raw CBOR, or the JSON evidence `{"token": …}`.
fn verify_cca(a: &VerifyArgs, bytes: Vec<u8>) -> Result<()> {
    use cocoon_verifier::cca::{self, Cpaks, token::CcaToken};
    let raw = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(json) => cca::token_from_evidence(&json)?,
        Err(_) => bytes,
    };
    let t = CcaToken::parse(&raw)?;
    cca::verify_realm(&t)?;
    let platform = match &a.collateral {
        Some(p) => {
            cca::verify_platform(&t, &Cpaks::load(p).map_err(anyhow::Error::msg)?)?;
            "platform token signed by a trusted CPAK"
        }
        None => {
            "platform token signature NOT checked (pass --collateral CPAK; the trustee always requires one)"
        }
    };
    let (report_data, init) = bindings(a, || Ok(t.realm.challenge.clone()))?;
    cca::check_bindings(&t, &binding_input(&report_data, &init)).with_context(|| {
        bound(
            "the realm challenge",
            &t.realm.challenge,
            "the personalization value (the whole 64-byte initdata digest)",
            &t.realm.personalization_value,
        )
    })?;
    eprintln!(
        "verified: realm token signed by its RAK, the platform challenge binds the RAK; {platform}"
    );
    outln!("{}", serde_json::to_string_pretty(&cca::claims(&t))?);
    Ok(())
}

/// Azure vTPM evidence (the JSON document the guest sends).
fn verify_az(a: &VerifyArgs, bytes: &[u8], now: u64) -> Result<()> {
    use cocoon_verifier::az::{AzSnpVtpmVerifier, AzTdxVtpmVerifier};
    let ev: serde_json::Value =
        serde_json::from_slice(bytes).context("Azure evidence is a JSON document")?;
    let (report_data, init) = bindings(a, || {
        vtpm_nonce(
            ev["tpm_quote"]["message"]
                .as_str()
                .and_then(|m| hex::decode(m).ok()),
        )
    })?;
    let input = VerifyInput {
        evidence: &ev,
        expected_report_data: &report_data,
        init_data_digest: init.as_deref(),
    };
    let claims = if a.tee == "az-snp-vtpm" {
        let snp = std::sync::Arc::new(SnpVerifier::new().map_err(anyhow::Error::msg)?);
        let c = AzSnpVtpmVerifier::new(snp).verify_at(&input, now)?;
        eprintln!(
            "verified: vTPM quote signed by the HCL's AK, bound by the SNP report (VCEK chain to AMD's ARK, VMPL 0)"
        );
        c
    } else {
        let v = AzTdxVtpmVerifier {
            collateral: dcap_collateral(a)?.map(std::sync::Arc::new),
            ..Default::default()
        };
        let c = v.verify_at(&input, now)?;
        eprintln!(
            "verified: vTPM quote signed by the HCL's AK, bound by the TD quote (PCK chain to Intel's SGX Root CA); TCB status {}",
            c.claims["tcb_status"].as_str().unwrap_or("unknown")
        );
        c
    };
    outln!("{}", serde_json::to_string_pretty(&claims.claims)?);
    Ok(())
}

fn verify_sgx(a: &VerifyArgs, bytes: Vec<u8>, now: u64) -> Result<()> {
    use base64::Engine;
    use cocoon_verifier::sgx;
    use cocoon_verifier::tdx::{TdxCache, quote::SgxQuote};
    let raw = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(json) => base64::engine::general_purpose::STANDARD
            .decode(
                json["quote"]
                    .as_str()
                    .context("SGX evidence JSON without \"quote\"")?,
            )
            .context("quote is not base64")?,
        Err(_) => bytes,
    };
    let q = SgxQuote::parse(&raw)?;
    let set = dcap_collateral(a)?;
    let checked = sgx::verify_quote_with(&q, None, set.as_ref(), now, &TdxCache::default())?;
    if set.is_some() && checked.is_none() {
        bail!("no collateral in --collateral is for this quote's platform (SGX, its PCK's FMSPC)");
    }
    let (report_data, init) = bindings(a, || Ok(q.body.report_data.to_vec()))?;
    sgx::check_bindings(&q, &binding_input(&report_data, &init)).with_context(|| {
        bound(
            "REPORTDATA",
            &q.body.report_data,
            "CONFIGID",
            &q.body.config_id,
        )
    })?;
    eprintln!(
        "verified: SGX quote v{} signed by its attestation key, certified by the QE, PCK chain to Intel's SGX Root CA; {}",
        q.header.version,
        dcap_tcb_note(&checked)
    );
    let mut claims = sgx::claims(&q);
    cocoon_verifier::tdx::collateral::CollateralResult::set_claims(checked.as_ref(), &mut claims);
    outln!("{}", serde_json::to_string_pretty(&claims)?);
    Ok(())
}

fn verify_tdx(a: &VerifyArgs, bytes: Vec<u8>, now: u64) -> Result<()> {
    use base64::Engine;
    use cocoon_verifier::eventlog::TcgEventLog;
    use cocoon_verifier::tdx::{self, quote::TdxQuote};
    let b64 = base64::engine::general_purpose::STANDARD;
    let (raw, ccel) = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(json) => {
            let quote = json["quote"]
                .as_str()
                .context("TDX evidence JSON without \"quote\"")?;
            // As the trustee: an empty log is no log.
            let ccel = match json
                .get("cc_eventlog")
                .and_then(|c| c.as_str())
                .filter(|c| !c.is_empty())
            {
                Some(c) => Some(b64.decode(c).context("cc_eventlog is not base64")?),
                None => None,
            };
            (b64.decode(quote).context("quote is not base64")?, ccel)
        }
        Err(_) => (bytes, None),
    };
    let q = TdxQuote::parse(&raw)?;
    // The trustee's path: signatures, PCK chain and collateral, parsed once.
    let set = dcap_collateral(a)?;
    let checked = tdx::verify_quote_with(&q, None, set.as_ref(), now, &tdx::TdxCache::default())?;
    if set.is_some() && checked.is_none() {
        bail!("no collateral in --collateral is for this quote's platform (TDX, its PCK's FMSPC)");
    }
    let log = match &ccel {
        Some(c) => {
            let log = TcgEventLog::parse(c)?;
            tdx::check_ccel(&log, &q)?;
            Some(log)
        }
        None => None,
    };
    let (report_data, init) = bindings(a, || Ok(q.body.report_data.to_vec()))?;
    tdx::check_bindings(
        "tdx",
        &q.body.report_data,
        ("MRCONFIGID", &q.body.mr_config_id),
        &binding_input(&report_data, &init),
    )
    .with_context(|| {
        bound(
            "REPORTDATA",
            &q.body.report_data,
            "MRCONFIGID",
            &q.body.mr_config_id,
        )
    })?;
    let tcb = dcap_tcb_note(&checked);
    let ccel_note = if log.is_some() {
        ", CC event log replays to the RTMRs"
    } else {
        ""
    };
    eprintln!(
        "verified: TDX quote v{} signed by its attestation key, certified by the QE, PCK chain to Intel's SGX Root CA{ccel_note}; {tcb}",
        q.header.version
    );
    let mut claims = tdx::claims(&q, log.as_ref());
    cocoon_verifier::tdx::collateral::CollateralResult::set_claims(checked.as_ref(), &mut claims);
    outln!("{}", serde_json::to_string_pretty(&claims)?);
    Ok(())
}
