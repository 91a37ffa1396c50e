//! Rego policies, evaluated with `regorus`, and the policy store that keeps
//! them compiled. Policies live in the trustee [`Store`], so every replica
//! sees an update within [`RECHECK`].

use cocoon_rvps::Rvps;
use cocoon_store::{Store, StoreError, ns};
use parking_lot::RwLock;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a cached policy is compared with the stored one.
pub const RECHECK: Duration = Duration::from_secs(1);

/// Policy errors.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The Rego does not parse or compile.
    #[error("policy '{id}' is not valid Rego: {detail}")]
    Invalid {
        /// Policy id.
        id: String,
        /// The compiler's message.
        detail: String,
    },
    /// Evaluation failed at run time.
    #[error("policy '{id}' failed to evaluate: {detail}")]
    Eval {
        /// Policy id.
        id: String,
        /// The engine's message.
        detail: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Rules evaluated on every request, compiled once per policy so that an
/// evaluation does not re-analyse the whole policy (its cost would grow
/// with every TEE section added to it).
const HOT_RULES: [&str; 4] = ["trust_claims", "explain", "allow", "deny_reasons"];

/// A compiled Rego policy (package `policy`).
pub struct RegoPolicy {
    id: String,
    engine: regorus::Engine,
    compiled: HashMap<&'static str, regorus::CompiledPolicy>,
    digest: [u8; 32],
}

impl RegoPolicy {
    /// Compiles `text`. With `rvps`, the built-in `query_reference_value(name)`
    /// returns the RVPS value for `name`, or null.
    pub fn compile(id: &str, text: &str, rvps: Option<&Rvps>) -> Result<Self, PolicyError> {
        let invalid = |e: anyhow::Error| PolicyError::Invalid {
            id: id.to_string(),
            detail: e.to_string(),
        };
        let mut engine = regorus::Engine::new();
        engine.set_strict_builtin_errors(false);
        if let Some(rvps) = rvps {
            let rvps = rvps.clone();
            engine
                .add_extension(
                    "query_reference_value".to_string(),
                    1,
                    Box::new(move |args: Vec<regorus::Value>| {
                        let name = args
                            .first()
                            .and_then(|a| a.as_string().ok())
                            .map(|s| s.to_string())
                            .unwrap_or_default();
                        Ok(match rvps.query(&name) {
                            Ok(Some(v)) => regorus::Value::from(v),
                            _ => regorus::Value::Null,
                        })
                    }),
                )
                .map_err(invalid)?;
        }
        let package = engine
            .add_policy(format!("{id}.rego"), text.to_string())
            .map_err(invalid)?;
        if package != "data.policy" {
            return Err(PolicyError::Invalid {
                id: id.to_string(),
                detail: format!("the package must be 'policy', found '{package}'"),
            });
        }
        // Surface compile-time errors (unknown functions, bad references) now.
        engine.clone().eval_modules(false).map_err(invalid)?;
        let mut compiled = HashMap::new();
        for rule in HOT_RULES {
            let entry: regorus::Rc<str> = format!("data.policy.{rule}").into();
            // A policy need not define every hot rule: those it lacks stay
            // on the general path (and evaluate to undefined there).
            if let Ok(c) = engine.clone().compile_with_entrypoint(&entry) {
                compiled.insert(rule, c);
            }
        }
        Ok(Self {
            id: id.to_string(),
            engine,
            compiled,
            digest: Sha256::digest(text.as_bytes()).into(),
        })
    }

    /// The policy id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// SHA-256 of the policy text.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// Evaluates `data.policy.<rule>` with `input` (and `data` merged in).
    /// Returns `None` when the rule is undefined.
    pub fn eval(
        &self,
        rule: &str,
        input: &Value,
        data: Option<&Value>,
    ) -> Result<Option<Value>, PolicyError> {
        let err = |e: anyhow::Error| PolicyError::Eval {
            id: self.id.clone(),
            detail: e.to_string(),
        };
        let v = match (self.compiled.get(rule), data) {
            (Some(c), None) => c
                .eval_with_input(regorus::Value::from(input.clone()))
                .map_err(err)?,
            _ => self.eval_general(rule, input, data).map_err(err)?,
        };
        if v == regorus::Value::Undefined {
            return Ok(None);
        }
        serde_json::to_value(&v)
            .map(Some)
            .map_err(|e| PolicyError::Eval {
                id: self.id.clone(),
                detail: e.to_string(),
            })
    }

    /// Evaluates on a copy of the engine (needed when `data` is merged in).
    fn eval_general(
        &self,
        rule: &str,
        input: &Value,
        data: Option<&Value>,
    ) -> anyhow::Result<regorus::Value> {
        let mut engine = self.engine.clone();
        if let Some(d) = data {
            engine.add_data(regorus::Value::from(d.clone()))?;
        }
        engine.set_input(regorus::Value::from(input.clone()));
        engine.eval_rule(format!("data.policy.{rule}"))
    }
}

struct Cached {
    checked: Instant,
    policy: Arc<RegoPolicy>,
}

/// Stored policies by id, compiled once and rechecked against the store.
pub struct PolicyStore {
    store: Arc<dyn Store>,
    rvps: Rvps,
    defaults: HashMap<String, String>,
    cache: RwLock<HashMap<String, Cached>>,
}

impl PolicyStore {
    /// A policy store; `defaults` gives the text used when an id has never been set.
    pub fn new(store: Arc<dyn Store>, rvps: Rvps, defaults: HashMap<String, String>) -> Self {
        Self {
            store,
            rvps,
            defaults,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// The policy text for `id`: stored, else the default.
    pub fn text(&self, id: &str) -> Result<Option<String>, PolicyError> {
        Ok(match self.store.get(ns::POLICIES, id)? {
            Some(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            None => self.defaults.get(id).cloned(),
        })
    }

    /// The compiled policy for `id`.
    pub fn get(&self, id: &str) -> Result<Arc<RegoPolicy>, PolicyError> {
        if let Some(c) = self.cache.read().get(id)
            && c.checked.elapsed() < RECHECK
        {
            return Ok(c.policy.clone());
        }
        let text = self.text(id)?.ok_or_else(|| PolicyError::Invalid {
            id: id.to_string(),
            detail: "no such policy".into(),
        })?;
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        let mut cache = self.cache.write();
        if let Some(c) = cache.get_mut(id)
            && c.policy.digest() == &digest
        {
            c.checked = Instant::now();
            return Ok(c.policy.clone());
        }
        let policy = Arc::new(RegoPolicy::compile(id, &text, Some(&self.rvps))?);
        cache.insert(
            id.to_string(),
            Cached {
                checked: Instant::now(),
                policy: policy.clone(),
            },
        );
        Ok(policy)
    }

    /// Validates and stores a policy; it takes effect at once on this replica.
    pub fn set(&self, id: &str, text: &str) -> Result<(), PolicyError> {
        let policy = Arc::new(RegoPolicy::compile(id, text, Some(&self.rvps))?);
        self.store.put(ns::POLICIES, id, text.as_bytes())?;
        self.cache.write().insert(
            id.to_string(),
            Cached {
                checked: Instant::now(),
                policy,
            },
        );
        Ok(())
    }

    /// Ids of stored policies and defaults.
    pub fn ids(&self) -> Result<Vec<String>, PolicyError> {
        let mut ids = self.store.list(ns::POLICIES)?;
        for k in self.defaults.keys() {
            if !ids.contains(k) {
                ids.push(k.clone());
            }
        }
        ids.sort();
        Ok(ids)
    }
}

#[cfg(test)]
mod default_policy_tests {
    use super::*;
    use serde_json::{Value, json};

    /// The default policy with these reference values.
    fn policy(rvs: &[(&str, Value)]) -> (tempfile::TempDir, RegoPolicy) {
        let dir = tempfile::tempdir().unwrap();
        let store = cocoon_store::SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
        let rv = Rvps::new(Arc::new(store));
        for (name, value) in rvs {
            rv.add(name, value.clone(), None).unwrap();
        }
        let p =
            RegoPolicy::compile("default_cpu", crate::DEFAULT_CPU_POLICY_TEXT, Some(&rv)).unwrap();
        (dir, p)
    }

    /// (executables, hardware, configuration).
    fn trust(p: &RegoPolicy, input: &Value) -> (Value, Value, Value) {
        let t = p.eval("trust_claims", input, None).unwrap().unwrap();
        (
            t["executables"].clone(),
            t["hardware"].clone(),
            t["configuration"].clone(),
        )
    }

    fn explains(p: &RegoPolicy, input: &Value, needles: &[&str]) {
        let explain = p.eval("explain", input, None).unwrap().unwrap().to_string();
        for needle in needles {
            assert!(explain.contains(needle), "{needle} in {explain}");
        }
    }

    /// The SNP section: measurement, TCB minimums and the debug bit.
    #[test]
    fn snp_claims() {
        let claims = |measurement: &str, snp_tcb: &str, debug: bool| {
            json!({"snp": {"measurement": measurement, "reported_tcb_bootloader": "3", "reported_tcb_tee": "0",
                           "reported_tcb_snp": snp_tcb, "reported_tcb_microcode": "209", "policy_debug_allowed": debug}})
        };
        let (_d, p) = policy(&[]);
        assert_eq!(
            trust(&p, &claims("aa", "20", false)).0,
            33,
            "no reference measurement yet"
        );
        let (_d, p) = policy(&[
            ("snp_launch_measurement", json!(["aa"])),
            ("snp_min_tcb_snp", json!([8])),
        ]);
        assert_eq!(
            trust(&p, &claims("aa", "20", false)),
            (json!(3), json!(2), json!(2))
        );
        let bad = claims("bb", "7", true);
        assert_eq!(trust(&p, &bad), (json!(33), json!(97), json!(36)));
        explains(
            &p,
            &bad,
            &[
                "snp.measurement=bb",
                "snp.reported_tcb_snp=7",
                "policy_debug_allowed is true",
            ],
        );
        // A minimum that cannot be compared is not met.
        for odd in [json!("8"), json!([8, 9]), json!([])] {
            let (_d, p) = policy(&[
                ("snp_launch_measurement", json!(["aa"])),
                ("snp_min_tcb_snp", odd.clone()),
            ]);
            let c = claims("aa", "20", false);
            assert_eq!(trust(&p, &c).1, json!(97), "{odd}");
            explains(&p, &c, &["cannot be compared with"]);
        }
    }

    /// The TDX section: MRTD, TCB status and the debug attribute.
    #[test]
    fn tdx_claims() {
        let (_d, p) = policy(&[("tdx_mr_td", json!(["aa"]))]);
        let claims = |mr_td: &str, tcb: &str, debug: bool| json!({"tdx": {"quote": {"body": {"mr_td": mr_td}}, "tcb_status": tcb, "td_attributes": {"debug": debug}}});
        assert_eq!(
            trust(&p, &claims("aa", "UpToDate", false)),
            (json!(3), json!(2), json!(2))
        );
        let bad = claims("bb", "unknown", true);
        assert_eq!(trust(&p, &bad), (json!(33), json!(97), json!(36)));
        explains(
            &p,
            &bad,
            &[
                "tdx.quote.body.mr_td=bb",
                "tdx.tcb_status=unknown",
                "a debug TD",
            ],
        );
    }

    /// The SGX section: MRENCLAVE, optional MRSIGNER, TCB status, DEBUG.
    #[test]
    fn sgx_claims() {
        let claims = |enclave: &str, signer: &str, tcb: &str, flags: &str| json!({"sgx": {"body": {"mr_enclave": enclave, "mr_signer": signer, "attributes.flags": flags}, "tcb_status": tcb}});
        let (_d, p) = policy(&[("sgx_mr_enclave", json!(["aa"]))]);
        assert_eq!(
            trust(&p, &claims("aa", "ss", "UpToDate", "0500000000000000")),
            (json!(3), json!(2), json!(2))
        );
        let (_d, p) = policy(&[
            ("sgx_mr_enclave", json!(["aa"])),
            ("sgx_mr_signer", json!(["ss"])),
        ]);
        assert_eq!(
            trust(&p, &claims("aa", "ss", "UpToDate", "0500000000000000")).0,
            3
        );
        let bad = claims("aa", "tt", "OutOfDate", "0700000000000000");
        assert_eq!(trust(&p, &bad), (json!(33), json!(97), json!(36)));
        explains(
            &p,
            &bad,
            &[
                "sgx.body.mr_signer=tt",
                "sgx.tcb_status=OutOfDate",
                "a debug enclave",
            ],
        );
        // A flags claim that cannot be read is not taken for "no DEBUG".
        let odd = claims("aa", "ss", "UpToDate", "05");
        assert_eq!(trust(&p, &odd).2, json!(36));
        explains(&p, &odd, &["attributes.flags is missing"]);
    }

    /// Azure vTPM VMs: PCRs judge executables, the hardware report the rest.
    #[test]
    fn azure_vtpm_claims() {
        let (_d, p) = policy(&[
            ("tpm_pcr4", json!(["44"])),
            ("snp_min_tcb_snp", json!([8])),
            ("az_snp_hcl_measurement", json!(["m"])),
            ("az_tdx_hcl_mr_td", json!(["td"])),
        ]);
        let snp = |pcr4: &str, snp_tcb: &str, debug: bool| {
            json!({"az-snp-vtpm": {"measurement": "m", "reported_tcb_bootloader": "3", "reported_tcb_tee": "0",
                "reported_tcb_snp": snp_tcb, "reported_tcb_microcode": "209", "policy_debug_allowed": debug,
                "tpm": {"pcr04": pcr4}}})
        };
        assert_eq!(
            trust(&p, &snp("44", "20", false)),
            (json!(3), json!(2), json!(2))
        );
        let bad = snp("45", "7", true);
        assert_eq!(trust(&p, &bad), (json!(33), json!(97), json!(36)));
        explains(
            &p,
            &bad,
            &[
                "az-snp-vtpm.tpm.pcr04=45",
                "az-snp-vtpm.reported_tcb_snp=7",
                "az-snp-vtpm.policy_debug_allowed is true",
            ],
        );
        let tdx = |pcr4: &str, tcb: &str| json!({"az-tdx-vtpm": {"tcb_status": tcb, "quote": {"body": {"mr_td": "td"}}, "td_attributes": {"debug": false}, "tpm": {"pcr04": pcr4}}});
        assert_eq!(
            trust(&p, &tdx("44", "UpToDate")),
            (json!(3), json!(2), json!(2))
        );
        explains(
            &p,
            &tdx("45", "unknown"),
            &["az-tdx-vtpm.tpm.pcr04=45", "az-tdx-vtpm.tcb_status=unknown"],
        );
        let mut debug = tdx("44", "UpToDate");
        debug["az-tdx-vtpm"]["td_attributes"]["debug"] = json!(true);
        assert_eq!(trust(&p, &debug).2, json!(36));
        explains(&p, &debug, &["az-tdx-vtpm.td_attributes.debug is true"]);
        // Without the paravisor pinned, the hardware claim is not affirmed.
        let (_d, unpinned) = policy(&[("tpm_pcr4", json!(["44"]))]);
        assert_eq!(trust(&unpinned, &snp("44", "20", false)).1, json!(97));
        assert_eq!(trust(&unpinned, &tdx("44", "UpToDate")).1, json!(97));
        explains(
            &unpinned,
            &snp("44", "20", false),
            &["'az_snp_hcl_measurement'", "must be pinned"],
        );
        explains(&unpinned, &tdx("44", "UpToDate"), &["'az_tdx_hcl_mr_td'"]);
    }

    /// The CCA section: RIM, lifecycle.
    #[test]
    fn cca_claims() {
        let (_d, p) = policy(&[("cca_realm_initial_measurement", json!(["UklN"]))]);
        let claims = |rim: &str, lifecycle: u64| json!({"cca": {"realm": {"cca-realm-initial-measurement": rim}, "platform": {"cca-platform-lifecycle": lifecycle}}});
        assert_eq!(
            trust(&p, &claims("UklN", 0x3003)),
            (json!(3), json!(2), json!(2))
        );
        let bad = claims("T1RI", 0x2000);
        assert_eq!(trust(&p, &bad), (json!(33), json!(2), json!(36)));
        explains(
            &p,
            &bad,
            &["cca-realm-initial-measurement=T1RI", "lifecycle=8192"],
        );
    }
}
