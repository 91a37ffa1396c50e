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
use policy::{PolicyError, PolicyStore};
use serde_json::{Map, Value, json};
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

        let tee_name = cocoon_types::tee_name(tee);
        let mut annotated = Map::new();
        annotated.insert(tee_name, claims.claims);
        annotated.insert("report_data".into(), Value::String(claims.report_data));
        if let Some(i) = claims.init_data {
            annotated.insert("init_data".into(), Value::String(i));
        }
        annotated.insert("runtime_data_claims".into(), rd_obj);
        annotated.insert(
            "init_data_claims".into(),
            init_data
                .as_ref()
                .map(InitData::claims)
                .unwrap_or(Value::Null),
        );
        let input = Value::Object(annotated);

        let policy_id = format!("default_{}", claims.class.as_str());
        let policy = self.policies.get(&policy_id)?;
        let trust_claims = policy
            .eval("trust_claims", &input, None)?
            .unwrap_or(Value::Null);
        let mut tv = TrustVector::new();
        if let Value::Object(m) = &trust_claims {
            for (name, v) in m {
                let Some(v) = v.as_i64() else { continue };
                if let Ok(c) = tv.mut_by_name(name) {
                    c.set(v.clamp(i8::MIN as i64, i8::MAX as i64) as i8);
                }
            }
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
        if !tv.any_set() {
            status = TrustTier::Contraindicated;
            failed.push("the attestation policy set no trust claim".into());
        } else if status == TrustTier::None {
            failed.push("no trust claim reached the affirming tier".into());
        }
        let explain = if status == TrustTier::Affirming {
            Vec::new()
        } else {
            match policy.eval("explain", &input, None) {
                Ok(Some(Value::Array(a))) => a
                    .into_iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect(),
                _ => Vec::new(),
            }
        };
        let mut tv_json = Map::new();
        for c in tv.into_iter() {
            tv_json.insert(c.tag().to_string(), json!(c.value()));
        }

        let iat = now();
        let exp = iat + self.config.token_lifetime_secs;
        let submod = format!("{}0", claims.class.as_str());
        let token_claims = json!({
            "eat_profile": EAT_PROFILE,
            "iat": iat,
            "ear.verifier-id": {"developer": "cocoon", "build": concat!("cocoon-trustee ", env!("CARGO_PKG_VERSION"))},
            "submods": { submod: {
                "ear.status": status.as_str(),
                "ear.trustworthiness-vector": tv_json,
                "ear.appraisal-policy-id": "default",
                "ear.veraison.annotated-evidence": input,
                "ear.trustee.identifiers": {"validated": {}},
            }},
            "exp": exp,
            "iss": self.config.issuer,
        });
        let token = self.signer.sign(&token_claims)?;
        Ok(Appraisal {
            token,
            claims: token_claims,
            status,
            failed_claims: failed,
            explain,
            tee_pubkey: att.runtime_data.tee_pubkey.clone(),
            exp,
        })
    }
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
