//! DCAP collateral from an Intel PCCS (or Intel PCS) over its v4 API: the
//! PCK CRL for the quote's PCK CA, the TCB info for its FMSPC, the QE
//! identity, and the root CA CRL, with the issuer chains the responses
//! carry in headers. The documents keep the exact bytes Intel signed.

use super::collateral::Collateral;
use crate::fetch::{HttpGet, get_ok};
use cocoon_types::percent::percent_decode;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;

/// Where Intel publishes the root CA CRL (the PCS has no `rootcacrl`).
const INTEL_ROOT_CRL_URL: &str =
    "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der";

/// A PCCS (or the PCS) at `base`, e.g. `https://pccs.example:8081`.
#[derive(Clone)]
pub struct Pccs {
    base: String,
    http: Arc<dyn HttpGet>,
}

impl std::fmt::Debug for Pccs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pccs").field("base", &self.base).finish()
    }
}

#[derive(Deserialize)]
struct Signed<'a> {
    #[serde(borrow, alias = "tcbInfo", alias = "enclaveIdentity")]
    body: &'a RawValue,
    signature: String,
}

fn chain(r: &crate::fetch::HttpResponse, names: &[&str], what: &str) -> Result<String, String> {
    let raw = names
        .iter()
        .find_map(|n| r.header(n))
        .ok_or_else(|| format!("{what}: no issuer chain header ({})", names.join(" or ")))?;
    percent_decode(raw)
}

/// A DER body, or the hex of one (PCCS serves CRLs either way).
fn der_hex(body: &[u8]) -> String {
    let text = std::str::from_utf8(body).map(str::trim).unwrap_or_default();
    if !text.is_empty()
        && text.len().is_multiple_of(2)
        && text.bytes().all(|b| b.is_ascii_hexdigit())
    {
        text.to_ascii_lowercase()
    } else {
        hex::encode(body)
    }
}

/// A PCS/PCCS signed document (`{"tcbInfo"|"enclaveIdentity": {…},
/// "signature": hex}`) as the exact bytes of the signed object and the
/// signature.
pub fn split_signed(body: &[u8], what: &str) -> Result<(String, String), String> {
    let doc: Signed<'_> =
        serde_json::from_slice(body).map_err(|e| format!("{what} response: {e}"))?;
    Ok((doc.body.get().to_string(), doc.signature))
}

impl Pccs {
    /// A PCCS at `base`, reached with `http`.
    pub fn new(base: &str, http: Arc<dyn HttpGet>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            http,
        }
    }

    /// Fetches the collateral for a `tee` (`TDX`, `SGX`) platform with
    /// `fmspc`, whose PCK was issued by the `ca` (`platform`, `processor`).
    pub fn fetch(&self, tee: &str, fmspc: &str, ca: &str) -> Result<Collateral, String> {
        let b = &self.base;
        let kind = if tee == "TDX" { "tdx" } else { "sgx" };
        let crl = get_ok(
            &*self.http,
            &format!("{b}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der"),
        )?;
        let tcb = get_ok(
            &*self.http,
            &format!("{b}/{kind}/certification/v4/tcb?fmspc={fmspc}"),
        )?;
        let qe = get_ok(
            &*self.http,
            &format!("{b}/{kind}/certification/v4/qe/identity"),
        )?;
        let root = match get_ok(&*self.http, &format!("{b}/sgx/certification/v4/rootcacrl")) {
            Ok(r) => r,
            Err(_) => get_ok(&*self.http, INTEL_ROOT_CRL_URL)?,
        };
        let (tcb_info, tcb_info_signature) = split_signed(&tcb.body, "TCB info")?;
        let (qe_identity, qe_identity_signature) = split_signed(&qe.body, "QE identity")?;
        Ok(Collateral {
            pck_crl_issuer_chain: chain(&crl, &["SGX-PCK-CRL-Issuer-Chain"], "PCK CRL")?,
            root_ca_crl: der_hex(&root.body),
            pck_crl: der_hex(&crl.body),
            tcb_info_issuer_chain: chain(
                &tcb,
                &["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"],
                "TCB info",
            )?,
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain: chain(
                &qe,
                &["SGX-Enclave-Identity-Issuer-Chain"],
                "QE identity",
            )?,
            qe_identity,
            qe_identity_signature,
        })
    }
}
