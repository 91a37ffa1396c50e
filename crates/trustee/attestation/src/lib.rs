//! The built-in Attestation Service: verifies evidence with the registered
//! verifier for its TEE, appraises the claims with the attestation policy
//! (Rego) against RVPS reference values, and issues an EAR token.

pub mod policy;
pub mod token;

use cocoon_rvps::Rvps;
use cocoon_store::{Kek, Store};
use cocoon_types::initdata::{InitData, InitDataError};
use cocoon_types::{Attestation, HashAlgorithm, Tee, TeePubKey, binding};
use cocoon_verifier::{VerifierRegistry, VerifyError, VerifyInput};
use ear::{TrustTier, TrustVector};
use policy::{PolicyError, PolicyStore, RegoPolicy};
use serde_json::{Map, Value, json};
use sha2::Digest;
use std::collections::HashMap;
use std::sync::Arc;
use token::{TokenError, TokenSigner};

/// Id of the default attestation policy for CPU TEEs, as the KBS looks it up.
pub const DEFAULT_CPU_POLICY: &str = "default_cpu";
/// The built-in attestation policy.
pub const DEFAULT_CPU_POLICY_TEXT: &str = include_str!("../policies/default_cpu.rego");
/// Id of the resource policy.
pub const RESOURCE_POLICY: &str = "resource-policy";
/// The built-in resource policy.
pub const RESOURCE_POLICY_TEXT: &str = include_str!("../policies/resource.rego");
/// EAT profile of the tokens, as CoCo's AS writes it.
pub const EAT_PROFILE: &str = "tag:github.com,2024:confidential-containers/Trustee";

/// Attestation errors: each says what the guest or the admin should do.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The verifier refused the evidence.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The init data is malformed.
    #[error(transparent)]
    InitData(#[from] InitDataError),
    /// The runtime data nonce is not the session nonce.
    #[error(
        "runtime-data nonce does not match the session nonce: the evidence was made for another session"
    )]
    NonceMismatch,
    /// Additional (device) evidence was sent but no device verifier exists.
    #[error("additional evidence is not supported yet: send an empty additional_evidence")]
    AdditionalEvidence,
    /// The binding could not be computed.
    #[error("cannot compute report data binding: {0}")]
    Binding(String),
    /// The attestation policy is broken.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Signing failed.
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl AttestError {
    /// Whether the trustee could not decide (storage or reference values
    /// unavailable): the guest should retry, the admin should look.
    pub fn is_unavailable(&self) -> bool {
        match self {
            AttestError::Policy(p) => p.is_unavailable(),
            AttestError::Verify(VerifyError::Backend(_)) => true,
            _ => false,
        }
    }

    /// What the guest is told: the reason, except for a policy that failed
    /// to evaluate, whose engine message may quote the policy's source
    /// (the admin finds it in the denial log).
    pub fn guest_message(&self) -> String {
        match self {
            AttestError::Policy(PolicyError::Invalid { id, .. } | PolicyError::Eval { id, .. }) => {
                format!(
                    "attestation policy '{id}' failed to evaluate; the trustee admin can run `cocoon explain` for the reason"
                )
            }
            e => e.to_string(),
        }
    }
}

/// Settings of the attestation service.
#[derive(Debug, Clone)]
pub struct AsConfig {
    /// Token lifetime in seconds (CoCo default: 5 minutes).
    pub token_lifetime_secs: i64,
    /// `iss` claim.
    pub issuer: String,
}

impl Default for AsConfig {
    fn default() -> Self {
        Self {
            token_lifetime_secs: 300,
            issuer: "cocoon-trustee".into(),
        }
    }
}

/// The outcome of one attestation.
#[derive(Debug, Clone)]
pub struct Appraisal {
    /// The signed EAR token.
    pub token: String,
    /// The token's claims.
    pub claims: Value,
    /// Worst tier over the trust vector.
    pub status: TrustTier,
    /// Trust-vector claims that are not affirming, with EAR's description.
    pub failed_claims: Vec<String>,
    /// The policy's explanation of failures (for the admin only).
    pub explain: Vec<String>,
    /// The TEE key resources are sealed to.
    pub tee_pubkey: TeePubKey,
    /// Token expiry, Unix seconds.
    pub exp: i64,
}

/// The attestation service.
pub struct AttestationService {
    verifiers: VerifierRegistry,
    policies: Arc<PolicyStore>,
    signer: TokenSigner,
    config: AsConfig,
}

/// The built-in policies, by id.
pub fn default_policies() -> HashMap<String, String> {
    HashMap::from([
        (
            DEFAULT_CPU_POLICY.to_string(),
            DEFAULT_CPU_POLICY_TEXT.to_string(),
        ),
        (
            RESOURCE_POLICY.to_string(),
            RESOURCE_POLICY_TEXT.to_string(),
        ),
    ])
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl AttestationService {
    /// Builds the service over a shared store.
    pub fn new(
        store: Arc<dyn Store>,
        kek: &Kek,
        rvps: Rvps,
        verifiers: VerifierRegistry,
        config: AsConfig,
    ) -> Result<Self, AttestError> {
        let policies = Arc::new(PolicyStore::new(store.clone(), rvps, default_policies()));
        let signer = TokenSigner::load_or_create(&store, kek)?;
        Ok(Self {
            verifiers,
            policies,
            signer,
            config,
        })
    }

    /// The policy store (attestation and resource policies).
    pub fn policies(&self) -> &Arc<PolicyStore> {
        &self.policies
    }

    /// The token signer (JWKS, verification).
    pub fn signer(&self) -> &TokenSigner {
        &self.signer
    }

    /// The verifier registry.
    pub fn verifiers(&self) -> &VerifierRegistry {
        &self.verifiers
    }

    /// Verifies and appraises an Attestation made for `session_nonce`.
    pub fn attest(
        &self,
        tee: Tee,
        session_nonce: &str,
        att: &Attestation,
    ) -> Result<Appraisal, AttestError> {
        let (input, class) = self.verify_evidence(tee, session_nonce, att)?;
        let policy_id = format!("default_{}", class.as_str());
        let verdict = appraise(&*self.policies.get(&policy_id)?, &input)?;

        let iat = now();
        let exp = iat + self.config.token_lifetime_secs;
        let token_claims = ear_claims(EarParts {
            iat,
            exp,
            issuer: &self.config.issuer,
            submod: format!("{}0", class.as_str()),
            status: verdict.status,
            vector: verdict.vector,
            evidence: token_view(input),
        });
        let token = self.signer.sign(&token_claims)?;
        Ok(Appraisal {
            token,
            claims: token_claims,
            status: verdict.status,
            failed_claims: verdict.failed,
            explain: verdict.explain,
            tee_pubkey: att.runtime_data.tee_pubkey.clone(),
            exp,
        })
    }

    /// Checks the session binding and the evidence, and builds the policy
    /// input (the annotated evidence, as CoCo's AS shapes it).
    fn verify_evidence(
        &self,
        tee: Tee,
        session_nonce: &str,
        att: &Attestation,
    ) -> Result<(Value, cocoon_verifier::TeeClass), AttestError> {
        let verifier = self.verifiers.get(tee)?;
        if att.runtime_data.nonce != session_nonce {
            return Err(AttestError::NonceMismatch);
        }
        let additional = &att.tee_evidence.additional_evidence;
        if !additional.is_empty() {
            return Err(AttestError::AdditionalEvidence);
        }
        let init_data = match &att.init_data {
            Some(i) => Some(InitData::from_payload(&i.format, &i.body)?),
            None => None,
        };
        let hash = if tee == Tee::Se {
            HashAlgorithm::Sha512
        } else {
            HashAlgorithm::Sha384
        };
        let rd_obj =
            binding::runtime_data_object(session_nonce, &att.runtime_data.tee_pubkey, additional);
        let expected = binding::digest_canonical(hash, &rd_obj)
            .map_err(|e| AttestError::Binding(e.to_string()))?;
        let claims = verifier.verify(&VerifyInput {
            evidence: &att.tee_evidence.primary_evidence,
            expected_report_data: &expected,
            init_data_digest: init_data.as_ref().map(|i| i.digest.as_slice()),
        })?;

        let class = claims.class;
        Ok((
            annotated_evidence(tee, claims, rd_obj, init_data.as_ref()),
            class,
        ))
    }
}

/// What a token's claims are made of.
struct EarParts<'a> {
    iat: i64,
    exp: i64,
    issuer: &'a str,
    /// The submodule's name: the TEE class and `0`.
    submod: String,
    status: TrustTier,
    vector: Map<String, Value>,
    /// The annotated evidence as the token carries it ([`token_view`]).
    evidence: Value,
}

/// The token's claims (an EAR). The trust vector and the evidence are
/// moved in: `json!` would copy each through `Serialize`, a few percent
/// of a flow's CPU. Keys go in `json!`'s order, so the claims are the same
/// with or without serde_json's `preserve_order`.
fn ear_claims(p: EarParts<'_>) -> Value {
    let mut sub = Map::new();
    sub.insert("ear.status".into(), p.status.as_str().into());
    sub.insert("ear.trustworthiness-vector".into(), Value::Object(p.vector));
    sub.insert("ear.appraisal-policy-id".into(), "default".into());
    sub.insert("ear.veraison.annotated-evidence".into(), p.evidence);
    sub.insert("ear.trustee.identifiers".into(), json!({"validated": {}}));
    let mut submods = Map::new();
    submods.insert(p.submod, Value::Object(sub));
    let mut c = Map::new();
    c.insert("eat_profile".into(), EAT_PROFILE.into());
    c.insert("iat".into(), p.iat.into());
    c.insert(
        "ear.verifier-id".into(),
        json!({"developer": "cocoon", "build": concat!("cocoon-trustee ", env!("CARGO_PKG_VERSION"))}),
    );
    c.insert("submods".into(), Value::Object(submods));
    c.insert("exp".into(), p.exp.into());
    c.insert("iss".into(), p.issuer.into());
    Value::Object(c)
}

/// The attestation policy's input: a verifier's claims under the TEE name,
/// the bindings lifted to the top, the hashed runtime data and the initdata
/// claims, as CoCo's AS shapes its annotated evidence.
pub fn annotated_evidence(
    tee: Tee,
    claims: cocoon_verifier::TeeClaims,
    runtime_data_claims: Value,
    init_data: Option<&InitData>,
) -> Value {
    let mut annotated = Map::new();
    annotated.insert(cocoon_types::tee_name(tee), claims.claims);
    annotated.insert("report_data".into(), Value::String(claims.report_data));
    if let Some(i) = claims.init_data {
        annotated.insert("init_data".into(), Value::String(i));
    }
    annotated.insert("runtime_data_claims".into(), runtime_data_claims);
    annotated.insert(
        "init_data_claims".into(),
        init_data.map(InitData::claims).unwrap_or(Value::Null),
    );
    Value::Object(annotated)
}

/// What the attestation policy concluded.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Worst tier over the claims the policy set.
    pub status: TrustTier,
    /// The trust vector as token claims (every claim, set or not).
    pub vector: Map<String, Value>,
    /// Claims that are not affirming, with EAR's description.
    pub failed: Vec<String>,
    /// Why, when not affirming (admin eyes only).
    pub explain: Vec<String>,
}

/// Runs the attestation policy on `input`: the trust vector, its worst
/// tier, and (when not affirming) why, including every reference value the
/// policy found expired. A reference value that cannot be read fails the
/// appraisal (the caller answers "unavailable", never "not affirming").
pub fn appraise(policy: &RegoPolicy, input: &Value) -> Result<Verdict, AttestError> {
    let (trust_claims, lookups) = policy.eval_with_lookups("trust_claims", input, None)?;
    let mut tv = TrustVector::new();
    // A claim the trust vector does not have, or a value that is not an
    // integer, is a broken policy: it must not pass as "not set".
    let mut malformed = Vec::new();
    match &trust_claims {
        Some(Value::Object(m)) => {
            for (name, v) in m {
                match (tv.mut_by_name(name), v.as_i64()) {
                    (Ok(c), Some(v)) => c.set(v.clamp(i8::MIN as i64, i8::MAX as i64) as i8),
                    (Err(_), _) => malformed.push(format!(
                        "the attestation policy set '{name}', which is not an EAR trust claim"
                    )),
                    (Ok(_), None) => malformed.push(format!(
                        "the attestation policy set trust claim '{name}' to {v}, not an integer"
                    )),
                }
            }
        }
        None => {}
        Some(other) => malformed.push(format!(
            "the attestation policy's trust_claims is {other}, not an object"
        )),
    }
    // Worst tier over the claims the policy set; nothing set is a failure.
    let mut status = TrustTier::None;
    let mut failed = Vec::new();
    for c in tv.into_iter() {
        if !c.is_set() {
            continue;
        }
        let t = c.tier();
        if t != TrustTier::Affirming && t != TrustTier::None {
            failed.push(format!(
                "{}={} ({})",
                c.tag(),
                c.value(),
                c.value_short_desc()
            ));
        }
        if t > status {
            status = t;
        }
    }
    if !malformed.is_empty() {
        status = TrustTier::Contraindicated;
        failed.extend(malformed);
    } else if !tv.any_set() {
        status = TrustTier::Contraindicated;
        failed.push("the attestation policy set no trust claim".into());
    } else if status == TrustTier::None {
        failed.push("no trust claim reached the affirming tier".into());
    }
    let mut explain = Vec::new();
    if status != TrustTier::Affirming {
        // A policy need not define `explain`; only a failure to read
        // reference values is an error here.
        let mut expired = lookups.expired;
        match policy.eval_with_lookups("explain", input, None) {
            Ok((v, more)) => {
                if let Some(Value::Array(a)) = v {
                    explain.extend(a.into_iter().filter_map(|v| v.as_str().map(String::from)));
                }
                expired.extend(more.expired);
            }
            Err(e) if e.is_unavailable() => return Err(e.into()),
            Err(_) => {}
        }
        for (name, at) in expired {
            explain.push(format!(
                "reference value '{name}' expired at {}: it counts as not set; renew it with `cocoon admin add-reference-value {name} ... --expires ...`",
                cocoon_rvps::rfc3339(at)
            ));
        }
    }
    let mut vector = Map::new();
    for c in tv.into_iter() {
        vector.insert(c.tag().to_string(), json!(c.value()));
    }
    Ok(Verdict {
        status,
        vector,
        failed,
        explain,
    })
}

/// The largest claim (as compact JSON) a token carries whole.
pub const TOKEN_CLAIM_MAX: usize = 4096;
/// The largest top-level member of the annotated evidence (the TEE's
/// claims, the initdata claims, ...) a token carries whole.
pub const TOKEN_MEMBER_MAX: usize = 16384;

/// The annotated evidence as the token carries it. The attestation policy
/// saw all of it; the token, which travels in every session cookie and
/// resource request, keeps what resource policies need and stays bounded
/// whatever the evidence: event logs go (the replayed registers and the
/// verifier's digest summaries stay), any other claim larger than
/// [`TOKEN_CLAIM_MAX`] and any member still larger than
/// [`TOKEN_MEMBER_MAX`] is replaced by its size and SHA-256.
pub fn token_view(mut input: Value) -> Value {
    /// Replaces `v` by its size and digest when larger than `max`; whether it did.
    fn shrink(v: &mut Value, max: usize) -> bool {
        // Most claims are small: count their compact JSON without building
        // it, and stop counting past `max`.
        struct Count(usize, usize);
        impl std::io::Write for Count {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0 += b.len();
                if self.0 > self.1 {
                    return Err(std::io::Error::other("over the limit"));
                }
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        if serde_json::to_writer(Count(0, max), v).is_ok() {
            return false;
        }
        let text = v.to_string();
        *v = json!({
            "omitted_bytes": text.len(),
            "sha256": hex::encode(sha2::Sha256::digest(text.as_bytes())),
        });
        true
    }
    let mut omitted = Vec::new();
    if let Value::Object(top) = &mut input {
        for (name, v) in top.iter_mut() {
            if let Value::Object(inner) = v {
                if inner.remove("uefi_event_logs").is_some() {
                    omitted.push(format!("{name}.uefi_event_logs"));
                }
                for (child, c) in inner.iter_mut() {
                    if shrink(c, TOKEN_CLAIM_MAX) {
                        omitted.push(format!("{name}.{child}"));
                    }
                }
            }
            if shrink(v, TOKEN_MEMBER_MAX) {
                let prefix = format!("{name}.");
                omitted.retain(|o| !o.starts_with(&prefix));
                omitted.push(name.clone());
            }
        }
        // A resource policy that denies on some claim's content must also
        // deny when that claim is listed here: the guest can make a claim
        // of its own (initdata, runtime events) large enough to be left out.
        if !omitted.is_empty() {
            omitted.sort();
            top.insert("token_omitted".into(), json!(omitted));
        }
    }
    input
}

/// The TEE public key inside verified token claims, at the JSON pointers the
/// stock KBS tries.
pub fn tee_pubkey_from_claims(claims: &Value) -> Option<TeePubKey> {
    const PATHS: [&str; 5] = [
        "/submods/cpu0/ear.veraison.annotated-evidence/runtime_data_claims/tee-pubkey",
        "/tdx/attester_runtime_data/tee-pubkey",
        "/tdx/attester_user_data/tee-pubkey",
        "/customized_claims/runtime_data/tee-pubkey",
        "/tee-pubkey",
    ];
    PATHS
        .iter()
        .find_map(|p| claims.pointer(p))
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claims built by moving the parts in are what `json!` makes of
    /// the same parts.
    #[test]
    fn ear_claims_are_the_json_macros() {
        let vector: Map<String, Value> = [("executables", 3), ("hardware", 2)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let evidence = json!({"sample": {"svn": "1", "debug": false}, "report_data": "abc",
            "runtime_data_claims": {"nonce": "n", "tee-pubkey": {"kty": "EC", "x": "x"}},
            "init_data_claims": null, "list": [1, "two", {"three": 3.5}]});
        let built = ear_claims(EarParts {
            iat: 1_764_600_000,
            exp: 1_764_600_300,
            issuer: "issuer-x",
            submod: "cpu0".into(),
            status: TrustTier::Warning,
            vector: vector.clone(),
            evidence: evidence.clone(),
        });
        let expected = json!({
            "eat_profile": EAT_PROFILE,
            "iat": 1_764_600_000i64,
            "ear.verifier-id": {"developer": "cocoon", "build": concat!("cocoon-trustee ", env!("CARGO_PKG_VERSION"))},
            "submods": { "cpu0": {
                "ear.status": "warning",
                "ear.trustworthiness-vector": vector,
                "ear.appraisal-policy-id": "default",
                "ear.veraison.annotated-evidence": evidence,
                "ear.trustee.identifiers": {"validated": {}},
            }},
            "exp": 1_764_600_300i64,
            "iss": "issuer-x",
        });
        assert_eq!(built, expected);
        // Same bytes when signed, too.
        assert_eq!(
            serde_json::to_string(&built).unwrap(),
            serde_json::to_string(&expected).unwrap()
        );
    }
}
