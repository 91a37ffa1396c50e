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

/// How often a cached policy is compared with the stored one: a policy
/// changed on one replica is enforced by the others within this (plus the
/// store's own propagation: none for a shared SQLite file, a notification's
/// delivery for PostgreSQL). A recheck is one store read, served from the
/// PostgreSQL store's cache until a change arrives.
pub const RECHECK: Duration = Duration::from_millis(250);

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
    /// A reference value the policy asked for could not be read: the
    /// evaluation has no answer (it is never taken for "absent").
    #[error("policy '{id}' could not read its reference values: {detail}")]
    ReferenceValues {
        /// Policy id.
        id: String,
        /// What failed.
        detail: String,
    },
}

impl PolicyError {
    /// Whether the trustee, not the request, is at fault and a retry may
    /// succeed (storage or reference values unavailable).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            PolicyError::Store(_) | PolicyError::ReferenceValues { .. }
        )
    }
}

/// Reference values an evaluation asked for that were not plain values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lookups {
    /// Expired ones, with their expiry (Unix seconds).
    pub expired: std::collections::BTreeMap<String, i64>,
    /// Failures to read one (store down, unreadable record).
    pub errors: Vec<String>,
    /// How many lookups the evaluation made (a decision that made any
    /// depends on reference values, not only on its input).
    pub count: usize,
}

thread_local! {
    /// What the evaluation running on this thread looked up. Evaluation is
    /// synchronous, so a thread runs one at a time.
    static LOOKUPS: std::cell::RefCell<Option<Lookups>> = const { std::cell::RefCell::new(None) };
}

/// Records one lookup in the evaluation running on this thread.
fn note_lookup(name: &str, outcome: &Result<cocoon_rvps::Lookup, cocoon_rvps::RvpsError>) {
    LOOKUPS.with(|l| {
        if let Some(l) = l.borrow_mut().as_mut() {
            l.count += 1;
            match outcome {
                Ok(cocoon_rvps::Lookup::Expired { at }) => {
                    l.expired.insert(name.to_string(), *at);
                }
                Err(e) => l.errors.push(e.to_string()),
                Ok(_) => {}
            }
        }
    });
}

/// Collects the lookups of one evaluation. Scopes nest (an evaluation
/// started inside another hands its record back to the outer one, errors
/// included), and a scope dropped early (a panic, an early return) still
/// restores the outer record, so no failure to read a reference value can
/// go unnoticed.
struct LookupScope {
    outer: Option<Option<Lookups>>,
}

impl LookupScope {
    fn start() -> Self {
        let outer = LOOKUPS.with(|l| l.borrow_mut().replace(Lookups::default()));
        LookupScope { outer: Some(outer) }
    }

    fn finish(mut self) -> Lookups {
        let mine = LOOKUPS.with(|l| l.borrow_mut().take().unwrap_or_default());
        self.restore(Some(&mine));
        mine
    }

    /// Puts the outer record back, with `inner`'s lookups added to it.
    fn restore(&mut self, inner: Option<&Lookups>) {
        let Some(mut outer) = self.outer.take() else {
            return;
        };
        if let (Some(o), Some(i)) = (outer.as_mut(), inner) {
            o.count += i.count;
            o.errors.extend(i.errors.iter().cloned());
            o.expired
                .extend(i.expired.iter().map(|(k, v)| (k.clone(), *v)));
        }
        LOOKUPS.with(|l| *l.borrow_mut() = outer);
    }
}

impl Drop for LookupScope {
    fn drop(&mut self) {
        // Not yet finished (an early return or a panic).
        if self.outer.is_some() {
            let mine = LOOKUPS.with(|l| l.borrow_mut().take());
            self.restore(mine.as_ref());
        }
    }
}

/// Rules evaluated on every request, compiled once per policy so that an
/// evaluation does not re-analyse the whole policy (its cost would grow
/// with every TEE section added to it).
const HOT_RULES: [&str; 4] = ["trust_claims", "explain", "allow", "deny_reasons"];

/// The reference-value lookup policies call.
const QUERY_REFERENCE_VALUE: &str = "query_reference_value";

/// At most this many VM instructions per evaluation: far above what any
/// policy here needs, it stops a runaway loop over a hostile input.
const MAX_INSTRUCTIONS: usize = 10_000_000;

/// How a hot rule is evaluated.
enum Hot {
    /// Compiled to regorus's virtual machine (about five times faster than
    /// the tree-walking interpreter on the default policies); reference
    /// values are looked up when the program suspends on the call.
    Vm(Arc<regorus::rvm::Program>),
    /// On the interpreter, for a policy the VM compiler does not take.
    Interpreted(regorus::CompiledPolicy),
}

/// A compiled Rego policy (package `policy`).
pub struct RegoPolicy {
    id: String,
    engine: regorus::Engine,
    hot: HashMap<&'static str, Hot>,
    rvps: Option<Rvps>,
    digest: [u8; 32],
}

/// `v` as a Rego value, read in place: what regorus's own conversion gives
/// (it deserializes a moved copy, which cost a policy input's size in
/// copies and allocations on every evaluation).
fn rego_value(v: &Value) -> regorus::Value {
    match v {
        Value::Null => regorus::Value::Null,
        Value::Bool(b) => regorus::Value::from(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => regorus::Value::from(u),
            (None, Some(i), _) => regorus::Value::from(i),
            (None, None, Some(f)) => regorus::Value::from(f),
            (None, None, None) => regorus::Value::Null,
        },
        Value::String(s) => regorus::Value::from(s.as_str()),
        Value::Array(a) => regorus::Value::from(a.iter().map(rego_value).collect::<Vec<_>>()),
        Value::Object(m) => regorus::Value::from(
            m.iter()
                .map(|(k, v)| (regorus::Value::from(k.as_str()), rego_value(v)))
                .collect::<std::collections::BTreeMap<_, _>>(),
        ),
    }
}

/// Looks up `name` for a policy, noting the lookup in the evaluation
/// running on this thread; anything but a plain value is null to Rego.
fn query_reference_value(rvps: &Rvps, name: &str) -> regorus::Value {
    let outcome = rvps.lookup(name);
    note_lookup(name, &outcome);
    match outcome {
        Ok(cocoon_rvps::Lookup::Value(v)) => rego_value(&v),
        _ => regorus::Value::Null,
    }
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
                    QUERY_REFERENCE_VALUE.to_string(),
                    1,
                    Box::new(move |args: Vec<regorus::Value>| {
                        let name = args
                            .first()
                            .and_then(|a| a.as_string().ok())
                            .map(|s| s.to_string())
                            .unwrap_or_default();
                        Ok(query_reference_value(&rvps, &name))
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
        let host: &[(&str, usize)] = if rvps.is_some() {
            &[(QUERY_REFERENCE_VALUE, 1)]
        } else {
            &[]
        };
        // The VM is used for the built-in policies only: on the same input
        // it gives the interpreter's answers (the tests check every hot
        // rule on both), but it handles failures differently (an error
        // inside a rule body makes that body not match, conflicting values
        // make a rule undefined, where the interpreter fails the whole
        // evaluation). A policy written to rely on an error failing closed,
        // as `count(deny_reasons) == 0` does, could then release on the VM,
        // so an owner's own policy runs on the interpreter.
        let vm = text == crate::DEFAULT_CPU_POLICY_TEXT || text == crate::RESOURCE_POLICY_TEXT;
        let mut hot = HashMap::new();
        for rule in HOT_RULES {
            let entry = format!("data.policy.{rule}");
            // A policy need not define every hot rule: those it lacks stay
            // on the general path (and evaluate to undefined there).
            let Ok(c) = engine
                .clone()
                .compile_with_entrypoint(&entry.as_str().into())
            else {
                continue;
            };
            let program = vm.then(|| {
                regorus::languages::rego::compiler::Compiler::compile_from_policy_with_host_await(
                    &c,
                    &[entry.as_str()],
                    host,
                )
            });
            let how = match program {
                Some(Ok(program)) => Hot::Vm(program),
                Some(Err(e)) => {
                    tracing::warn!(policy = id, rule, reason = %e, "built-in rule evaluated by the interpreter");
                    Hot::Interpreted(c)
                }
                None => Hot::Interpreted(c),
            };
            hot.insert(rule, how);
        }
        Ok(Self {
            id: id.to_string(),
            engine,
            hot,
            rvps: rvps.cloned(),
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
    /// Returns `None` when the rule is undefined. A reference value that
    /// could not be read fails the evaluation.
    pub fn eval(
        &self,
        rule: &str,
        input: &Value,
        data: Option<&Value>,
    ) -> Result<Option<Value>, PolicyError> {
        self.eval_with_lookups(rule, input, data).map(|(v, _)| v)
    }

    /// [`Self::eval`], also returning the reference values it found expired.
    pub fn eval_with_lookups(
        &self,
        rule: &str,
        input: &Value,
        data: Option<&Value>,
    ) -> Result<(Option<Value>, Lookups), PolicyError> {
        self.recording(|| self.eval_rule(rule, input, data))
    }

    /// Runs an evaluation, collecting its lookups; one that could not read
    /// a reference value fails, whatever it returned.
    fn recording<T>(
        &self,
        eval: impl FnOnce() -> Result<T, PolicyError>,
    ) -> Result<(T, Lookups), PolicyError> {
        let scope = LookupScope::start();
        let v = eval();
        let lookups = scope.finish();
        if !lookups.errors.is_empty() {
            return Err(PolicyError::ReferenceValues {
                id: self.id.clone(),
                detail: lookups.errors.join("; "),
            });
        }
        Ok((v?, lookups))
    }

    /// A result as JSON; `None` when undefined.
    fn json(&self, v: regorus::Value) -> Result<Option<Value>, PolicyError> {
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

    fn eval_rule(
        &self,
        rule: &str,
        input: &Value,
        data: Option<&Value>,
    ) -> Result<Option<Value>, PolicyError> {
        let err = |e: anyhow::Error| PolicyError::Eval {
            id: self.id.clone(),
            detail: e.to_string(),
        };
        let v = match (self.hot.get(rule), data) {
            (Some(Hot::Vm(program)), _) => {
                let v = self.run(program, input, data).map_err(err)?;
                #[cfg(test)]
                self.same_as_interpreter(rule, input, data, &v);
                v
            }
            (Some(Hot::Interpreted(c)), None) => {
                c.eval_with_input(rego_value(input)).map_err(err)?
            }
            _ => self.eval_general(rule, input, data).map_err(err)?,
        };
        self.json(v)
    }

    /// Runs a hot rule's program; each reference-value lookup suspends it
    /// and is answered here.
    fn run(
        &self,
        program: &Arc<regorus::rvm::Program>,
        input: &Value,
        data: Option<&Value>,
    ) -> anyhow::Result<regorus::Value> {
        let mut vm = IdleVm::take(program);
        vm.set_data(data.map_or(regorus::Value::Null, rego_value))?;
        vm.set_input(rego_value(input));
        let mut v = vm.execute()?;
        while let Some(arg) = vm.get_host_await_argument().cloned() {
            let answer = match (&self.rvps, vm.get_host_await_identifier().cloned()) {
                (Some(rvps), Some(id))
                    if id
                        .as_string()
                        .is_ok_and(|s| s.as_ref() == QUERY_REFERENCE_VALUE) =>
                {
                    // The call's arguments, as an array.
                    let name = match &arg {
                        regorus::Value::Array(a) => a.first().cloned(),
                        other => Some(other.clone()),
                    };
                    match name.as_ref().map(|n| n.as_string()) {
                        Some(Ok(n)) => query_reference_value(rvps, n),
                        _ => regorus::Value::Null,
                    }
                }
                (_, id) => anyhow::bail!("the policy called an unknown host function {id:?}"),
            };
            v = vm.resume(Some(answer))?;
        }
        vm.put_back();
        Ok(v)
    }

    /// Tests hold the VM to the interpreter's answer on every hot rule they
    /// evaluate (lookups made again here are not counted twice).
    #[cfg(test)]
    fn same_as_interpreter(
        &self,
        rule: &str,
        input: &Value,
        data: Option<&Value>,
        vm: &regorus::Value,
    ) {
        let saved = LOOKUPS.with(|l| l.borrow_mut().replace(Lookups::default()));
        let interp = self.eval_general(rule, input, data);
        LOOKUPS.with(|l| *l.borrow_mut() = saved);
        match interp {
            Ok(i) => assert_eq!(
                &i, vm,
                "VM and interpreter differ on {}.{rule} for {input}",
                self.id
            ),
            Err(e) => panic!(
                "the interpreter failed where the VM did not on {}.{rule}: {e}",
                self.id
            ),
        }
    }

    /// [`Self::eval`] on regorus's tree-walking interpreter, the reference
    /// the virtual machine is held to (tests compare the two).
    pub fn eval_on_interpreter(
        &self,
        rule: &str,
        input: &Value,
        data: Option<&Value>,
    ) -> Result<Option<Value>, PolicyError> {
        let (v, _) = self.recording(|| {
            self.eval_general(rule, input, data)
                .map_err(|e| PolicyError::Eval {
                    id: self.id.clone(),
                    detail: e.to_string(),
                })
        })?;
        self.json(v)
    }

    /// Whether `rule` runs on the virtual machine.
    pub fn on_vm(&self, rule: &str) -> bool {
        matches!(self.hot.get(rule), Some(Hot::Vm(_)))
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

/// Virtual machines kept per thread, each loaded with one program: a VM
/// resets its execution state at every run (registers, rule cache, stacks),
/// and setting one up and freeing it cost as much as a short rule's run.
const IDLE_VMS: usize = 8;

thread_local! {
    static IDLE: std::cell::RefCell<Vec<(Arc<regorus::rvm::Program>, regorus::rvm::vm::RegoVM)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A VM taken from this thread's idle ones (or a new one), loaded with a
/// program. A run that fails drops it; one that ends is put back, emptied
/// of its input and data.
struct IdleVm(Arc<regorus::rvm::Program>, regorus::rvm::vm::RegoVM);

impl IdleVm {
    fn take(program: &Arc<regorus::rvm::Program>) -> Self {
        use regorus::rvm::vm::{ExecutionMode, RegoVM};
        let idle = IDLE.with(|i| {
            let mut i = i.borrow_mut();
            let at = i.iter().position(|(p, _)| Arc::ptr_eq(p, program))?;
            Some(i.swap_remove(at).1)
        });
        Self(
            program.clone(),
            idle.unwrap_or_else(|| {
                let mut vm = RegoVM::new();
                vm.set_execution_mode(ExecutionMode::Suspendable);
                vm.set_strict_builtin_errors(false);
                vm.set_max_instructions(MAX_INSTRUCTIONS);
                vm.load_program(program.clone());
                vm
            }),
        )
    }

    fn put_back(self) {
        let Self(program, mut vm) = self;
        vm.set_input(regorus::Value::Null);
        if vm.set_data(regorus::Value::Null).is_err() {
            return;
        }
        IDLE.with(|i| {
            let mut i = i.borrow_mut();
            if i.len() >= IDLE_VMS {
                i.remove(0);
            }
            i.push((program, vm));
        });
    }
}

impl std::ops::Deref for IdleVm {
    type Target = regorus::rvm::vm::RegoVM;
    fn deref(&self) -> &Self::Target {
        &self.1
    }
}

impl std::ops::DerefMut for IdleVm {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.1
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

    /// Where nothing may block, a cached policy is served and one due for
    /// a re-read asks to run again elsewhere.
    #[test]
    fn only_cached_policies_run_where_nothing_may_block() {
        use cocoon_types::inline::without_blocking;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(cocoon_store::SqliteStore::open(&dir.path().join("db.sqlite")).unwrap());
        let defaults = HashMap::from([(
            "p".to_string(),
            "package policy\ndefault allow := true".to_string(),
        )]);
        let ps = PolicyStore::new(store.clone(), Rvps::new(store), defaults);
        assert!(without_blocking(|| ps.get("p").is_ok()).is_none());
        assert!(ps.get("p").is_ok());
        assert_eq!(without_blocking(|| ps.get("p").is_ok()), Some(true));
    }

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

    /// A reference value that cannot be read fails the evaluation rather
    /// than reading as absent (which some rules could take as "no
    /// requirement").
    /// The in-place conversion gives what regorus's own does.
    #[test]
    fn values_convert_as_regorus_converts_them() {
        let v = json!({
            "s": "x\u{1}é", "u": 18446744073709551615u64, "i": -9223372036854775808i64,
            "f": 1.5, "big": 1e300, "z": 0, "n": null, "b": [true, false, [], {}],
            "o": {"": {"k": [1, -1, 0.25, "v"]}}
        });
        assert_eq!(rego_value(&v), regorus::Value::from(v.clone()));
        for one in [json!(null), json!(1), json!("s"), json!([]), json!({})] {
            assert_eq!(rego_value(&one), regorus::Value::from(one.clone()));
        }
    }

    #[test]
    fn default_policies_run_on_the_vm() {
        let (_d, p) = policy(&[]);
        for rule in ["trust_claims", "explain"] {
            assert!(p.on_vm(rule), "default_cpu.{rule} is not on the VM");
        }
        let r = RegoPolicy::compile("resource-policy", crate::RESOURCE_POLICY_TEXT, None).unwrap();
        for rule in ["allow", "deny_reasons"] {
            assert!(r.on_vm(rule), "resource-policy.{rule} is not on the VM");
        }
    }

    /// An owner's policy runs on the interpreter, where a conflict or a
    /// type error fails the evaluation (so the request is refused) rather
    /// than making a rule quietly undefined or a body not match.
    #[test]
    fn owners_policies_fail_closed_on_the_interpreter() {
        let text = r#"package policy
import rego.v1
default allow := false
allow := true if input.a
allow := false if input.b
deny_reasons contains "too small" if input.n + 1 < 10
"#;
        let p = RegoPolicy::compile("custom", text, None).unwrap();
        assert!(!p.on_vm("allow") && !p.on_vm("deny_reasons"));
        assert_eq!(
            p.eval("allow", &json!({"a": true}), None).unwrap(),
            Some(json!(true))
        );
        let both = p.eval("allow", &json!({"a": true, "b": true}), None);
        assert!(both.is_err(), "conflicting values gave {both:?}");
        let typed = p.eval("deny_reasons", &json!({"n": "x"}), None);
        assert!(typed.is_err(), "a type error gave {typed:?}");
    }

    #[test]
    fn unreadable_reference_values_fail_the_evaluation() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(cocoon_store::SqliteStore::open(&dir.path().join("db")).unwrap());
        store
            .put(ns::REFERENCE_VALUES, "tdx_mr_td", b"\xff not json")
            .unwrap();
        let rvps = Rvps::new(store);
        let p = RegoPolicy::compile("default_cpu", crate::DEFAULT_CPU_POLICY_TEXT, Some(&rvps))
            .unwrap();
        let input = json!({"tdx": {"quote": {"body": {"mr_td": "aa", "rtmr_1": "", "rtmr_2": ""}}, "tcb_status": "UpToDate", "td_attributes": {"debug": false}}});
        let e = p.eval("trust_claims", &input, None).unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        assert!(e.to_string().contains("'tdx_mr_td' is unreadable"), "{e}");
        // An evaluation that never asks for it is unaffected.
        let sample = json!({"sample": {"svn": "1", "launch_digest": "x", "platform_version": {"major": 1, "minor": 0}, "debug": false}});
        assert!(p.eval("trust_claims", &sample, None).is_ok());
    }

    /// An evaluation nested in another hands its lookups (failures
    /// included) to the outer one.
    #[test]
    fn nested_lookup_scopes_keep_every_failure() {
        let outer = LookupScope::start();
        note_lookup("a", &Err(cocoon_rvps::RvpsError::Unreadable("a".into())));
        {
            let inner = LookupScope::start();
            note_lookup("b", &Err(cocoon_rvps::RvpsError::Unreadable("b".into())));
            let got = inner.finish();
            assert_eq!(got.errors.len(), 1);
        }
        {
            let _dropped = LookupScope::start();
            note_lookup("c", &Err(cocoon_rvps::RvpsError::Unreadable("c".into())));
        }
        let all = outer.finish();
        assert_eq!(all.errors.len(), 3, "{:?}", all.errors);
        assert_eq!(all.count, 3);
        assert!(LOOKUPS.with(|l| l.borrow().is_none()));
    }

    /// An expired reference value is a denial that names it.
    #[test]
    fn expired_reference_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = cocoon_store::SqliteStore::open(&dir.path().join("db")).unwrap();
        let rvps = Rvps::new(Arc::new(store));
        let past = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        rvps.add("snp_launch_measurement", json!(["aa"]), Some(past))
            .unwrap();
        let p = RegoPolicy::compile("default_cpu", crate::DEFAULT_CPU_POLICY_TEXT, Some(&rvps))
            .unwrap();
        let input = json!({"snp": {"measurement": "aa", "policy_debug_allowed": false}});
        let v = crate::appraise(&p, &input).unwrap();
        assert_eq!(v.vector["executables"], 33);
        let text = v.explain.join("\n");
        assert!(
            text.contains("reference value 'snp_launch_measurement' expired at"),
            "{text}"
        );
    }

    /// Initdata: a digest must be pinned; "none" accepts a guest without.
    #[test]
    fn initdata_is_appraised() {
        let snp = |init: Option<&str>| {
            let mut v = json!({"snp": {"measurement": "aa", "policy_debug_allowed": false, "policy_migrate_ma": false}});
            if let Some(i) = init {
                v["init_data"] = json!(i);
            }
            v
        };
        let (_d, p) = policy(&[]);
        assert_eq!(trust(&p, &snp(Some("abcd"))).2, json!(36));
        explains(
            &p,
            &snp(Some("abcd")),
            &["claim init_data=abcd is not in reference value 'init_data'"],
        );
        explains(&p, &snp(None), &["the guest sent no initdata"]);
        let (_d, p) = policy(&[("init_data", json!(["ABCD"]))]);
        assert_eq!(trust(&p, &snp(Some("abcd"))).2, json!(2));
        assert_eq!(trust(&p, &snp(None)).2, json!(36));
        let (_d, p) = policy(&[("init_data", json!(["none"]))]);
        assert_eq!(trust(&p, &snp(None)).2, json!(2));
        assert_eq!(trust(&p, &snp(Some("abcd"))).2, json!(36));
        // A reference value of the wrong shape pins nothing (and does not
        // break the evaluation).
        let (_d, p) = policy(&[("init_data", json!("abcd"))]);
        assert_eq!(trust(&p, &snp(Some("abcd"))).2, json!(36));
    }

    /// The TPM's hardware claim: warning tier unless hardware-backed.
    #[test]
    fn tpm_hardware_needs_a_hardware_backed_ak() {
        let names: Vec<String> = BOOT_PCRS.iter().map(|n| format!("tpm_pcr{n}")).collect();
        let mut rvs: Vec<(&str, Value)> = names
            .iter()
            .zip(BOOT_PCRS)
            .map(|(name, n)| (name.as_str(), json!([format!("{n}{n}")])))
            .collect();
        rvs.push(("init_data", json!(["none"])));
        let (_d, p) = policy(&rvs);
        let tpm = |hw: Option<bool>| {
            let mut t = boot_pcr_claims();
            t["ak_trusted_by"] = json!("admin");
            if let Some(hw) = hw {
                t["ak_hardware_backed"] = json!(hw);
            }
            json!({"tpm": t})
        };
        assert_eq!(trust(&p, &tpm(Some(true))), (json!(3), json!(2), json!(2)));
        for t in [tpm(Some(false)), tpm(None)] {
            assert_eq!(trust(&p, &t).1, json!(32));
            explains(
                &p,
                &t,
                &["not declared hardware-backed", "--hardware-backed"],
            );
        }
        // Each boot PCR without a reference value: executables not affirmed.
        for (missing, n) in BOOT_PCRS.into_iter().enumerate() {
            let mut some = rvs.clone();
            some.remove(missing);
            let (_d, p) = policy(&some);
            assert_eq!(trust(&p, &tpm(Some(true))).0, json!(33), "PCR {n}");
            explains(
                &p,
                &tpm(Some(true)),
                &[
                    &format!("boot PCR {n} is not pinned"),
                    &format!("tpm.pcr0{n}={n}{n}"),
                ],
            );
        }
        // A registered PCR whose claim is missing does not match.
        let (_d, p) = policy(&[rvs.clone(), vec![("tpm_pcr15", json!(["ff"]))]].concat());
        assert_eq!(trust(&p, &tpm(Some(true))).0, json!(33));
    }

    /// The resource policy refuses a token whose appraisal has no status.
    #[test]
    fn resource_policy_needs_a_status() {
        let p = RegoPolicy::compile("resource-policy", crate::RESOURCE_POLICY_TEXT, None).unwrap();
        let data = json!({"plugin": "resource", "resource-path": ["a", "b", "c"], "query": {}});
        let token = |submod: Value| json!({"submods": {"cpu0": submod}});
        let allow = |t: &Value| p.eval("allow", t, Some(&data)).unwrap();
        assert_eq!(
            allow(&token(json!({"ear.status": "affirming"}))),
            Some(json!(true))
        );
        for bad in [
            json!({}),
            json!({"ear.status": null}),
            json!({"ear.status": "warning"}),
        ] {
            assert_eq!(allow(&token(bad.clone())), Some(json!(false)), "{bad}");
            let reasons = p
                .eval("deny_reasons", &token(bad.clone()), Some(&data))
                .unwrap();
            assert!(
                reasons.unwrap().to_string().contains("not 'affirming'"),
                "{bad}"
            );
        }
        assert_eq!(allow(&json!({"submods": {}})), Some(json!(false)));
    }

    /// A custom policy that sets a claim the trust vector does not have, or
    /// a value that is not an integer, fails closed rather than passing the
    /// claim as "not set".
    #[test]
    fn malformed_trust_vectors_fail_closed() {
        for claims in [
            r#"{"executables": 3, "hardwre": 2}"#,
            r#"{"executables": 3, "hardware": "2"}"#,
            r#"[3]"#,
        ] {
            let text = format!("package policy\nimport rego.v1\ntrust_claims := {claims}\n");
            let p = RegoPolicy::compile("custom", &text, None).unwrap();
            let v = crate::appraise(&p, &json!({})).unwrap();
            assert_eq!(v.status, ear::TrustTier::Contraindicated, "{claims}");
            assert!(
                v.failed.join(" ").contains("the attestation policy"),
                "{claims}: {:?}",
                v.failed
            );
        }
        let ok = RegoPolicy::compile(
            "custom",
            "package policy\nimport rego.v1\ntrust_claims := {\"executables\": 3}\n",
            None,
        )
        .unwrap();
        assert_eq!(
            crate::appraise(&ok, &json!({})).unwrap().status,
            ear::TrustTier::Affirming
        );
    }

    /// What the token leaves out is listed, so a resource policy can deny
    /// on it; the trust vector and the TEE key are never left out.
    #[test]
    fn token_view_lists_what_it_omits() {
        let input = json!({
            "tdx": {"quote": {"body": {"mr_td": "aa"}}, "uefi_event_logs": [1, 2], "big": "x".repeat(5000)},
            "init_data_claims": {"a": "y".repeat(3000), "b": "y".repeat(3000), "c": "y".repeat(3000), "d": "y".repeat(3000), "e": "y".repeat(3000), "f": "y".repeat(3000)},
            "runtime_data_claims": {"nonce": "n", "tee-pubkey": {"kty": "EC"}},
        });
        let view = crate::token_view(input);
        assert_eq!(
            view["token_omitted"],
            json!(["init_data_claims", "tdx.big", "tdx.uefi_event_logs"])
        );
        assert_eq!(view["tdx"]["quote"]["body"]["mr_td"], "aa");
        assert!(view["init_data_claims"]["omitted_bytes"].as_u64().unwrap() > 16384);
        assert_eq!(view["runtime_data_claims"]["tee-pubkey"]["kty"], "EC");
        let small = crate::token_view(json!({"sample": {"svn": "1"}}));
        assert!(small.get("token_omitted").is_none());
        // The limit is on the claim's compact JSON: a string of 4094
        // characters (4096 bytes with its quotes) stays, one more goes.
        let max = crate::TOKEN_CLAIM_MAX;
        let edge = crate::token_view(json!({"sample": {
            "at": "a".repeat(max - 2), "over": "o".repeat(max - 1)}}));
        assert_eq!(edge["token_omitted"], json!(["sample.over"]));
        assert_eq!(edge["sample"]["at"].as_str().unwrap().len(), max - 2);
        assert_eq!(edge["sample"]["over"]["omitted_bytes"], max + 1);
    }

    /// The boot PCRs the default policy requires.
    const BOOT_PCRS: [usize; 9] = [0, 1, 2, 3, 4, 5, 6, 7, 9];

    /// Claims `pcrNN` = "NN" (the digit twice) for every boot PCR.
    fn boot_pcr_claims() -> Value {
        let mut m = serde_json::Map::new();
        for n in BOOT_PCRS {
            m.insert(format!("pcr0{n}"), json!(format!("{n}{n}")));
        }
        Value::Object(m)
    }

    /// The SNP section: measurement, TCB minimums and the debug bit.
    #[test]
    fn snp_claims() {
        let claims = |measurement: &str, snp_tcb: &str, debug: bool| {
            json!({"snp": {"measurement": measurement, "reported_tcb_bootloader": "3", "reported_tcb_tee": "0",
                           "reported_tcb_snp": snp_tcb, "reported_tcb_microcode": "209", "policy_debug_allowed": debug, "policy_migrate_ma": false}})
        };
        let (_d, p) = policy(&[]);
        assert_eq!(
            trust(&p, &claims("aa", "20", false)).0,
            33,
            "no reference measurement yet"
        );
        let minimums = [
            ("snp_min_tcb_bootloader", json!([3])),
            ("snp_min_tcb_tee", json!([0])),
            ("snp_min_tcb_snp", json!([8])),
            ("snp_min_tcb_microcode", json!([200])),
        ];
        let pinned: Vec<(&str, Value)> = [
            ("snp_launch_measurement", json!(["aa"])),
            ("init_data", json!(["none"])),
        ]
        .into_iter()
        .chain(minimums.clone())
        .collect();
        let (_d, p) = policy(&pinned);
        assert_eq!(
            trust(&p, &claims("aa", "20", false)),
            (json!(3), json!(2), json!(2))
        );
        // Every TCB minimum must be registered before hardware is affirmed.
        for (missing, (name, _)) in minimums.iter().enumerate() {
            let mut rvs = pinned.clone();
            rvs.remove(2 + missing);
            let (_d, p) = policy(&rvs);
            assert_eq!(trust(&p, &claims("aa", "20", false)).1, json!(97));
            explains(
                &p,
                &claims("aa", "20", false),
                &[name, "register the lowest you accept"],
            );
        }
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
            let mut rvs = pinned.clone();
            rvs[4] = ("snp_min_tcb_snp", odd.clone());
            let (_d, p) = policy(&rvs);
            let c = claims("aa", "20", false);
            assert_eq!(trust(&p, &c).1, json!(97), "{odd}");
            explains(&p, &c, &["cannot be compared with"]);
        }
    }

    /// The TDX section: MRTD, TCB status and the debug attribute.
    #[test]
    fn tdx_claims() {
        let rvs = [
            ("tdx_mr_td", json!(["aa"])),
            ("tdx_rtmr_0", json!(["r0"])),
            ("tdx_rtmr_1", json!(["r1"])),
            ("tdx_rtmr_2", json!(["R2"])),
            ("init_data", json!(["1d"])),
        ];
        let (_d, p) = policy(&rvs);
        let claims = |mr_td: &str, tcb: &str, debug: bool| json!({"tdx": {"quote": {"body": {"mr_td": mr_td, "rtmr_0": "r0", "rtmr_1": "r1", "rtmr_2": "r2"}}, "tcb_status": tcb, "td_attributes": {"debug": debug, "migratable": false}}, "init_data": "1D"});
        let good = claims("aa", "UpToDate", false);
        assert_eq!(trust(&p, &good), (json!(3), json!(2), json!(2)));
        // The firmware alone is not the executables; initdata must be pinned.
        for drop in 0..rvs.len() {
            let mut some = rvs.to_vec();
            let (name, _) = some.remove(drop);
            let (_d, p) = policy(&some);
            let t = trust(&p, &good);
            if name == "init_data" {
                assert_eq!(t, (json!(3), json!(2), json!(36)), "{name}");
                explains(
                    &p,
                    &good,
                    &["claim init_data=1D is not in reference value 'init_data'"],
                );
            } else {
                assert_eq!(t.0, json!(33), "{name}");
                explains(&p, &good, &[&format!("'{name}'=null")]);
            }
        }
        // A migratable TD, or one bound to an unpinned service TD: not affirmed.
        let mut migratable = good.clone();
        migratable["tdx"]["td_attributes"]["migratable"] = json!(true);
        assert_eq!(trust(&p, &migratable).2, json!(36));
        explains(&p, &migratable, &["td_attributes.migratable is true"]);
        let mut servicetd = good.clone();
        servicetd["tdx"]["quote"]["body"]["mr_servicetd"] = json!("5e");
        assert_eq!(trust(&p, &servicetd).2, json!(36));
        explains(&p, &servicetd, &["'tdx_mr_servicetd'"]);
        servicetd["tdx"]["quote"]["body"]["mr_servicetd"] = json!("0000");
        assert_eq!(trust(&p, &servicetd).2, json!(2));
        // TCB status judged only by collateral the guest sent: not affirmed.
        let mut guest = claims("aa", "unknown", false);
        guest["tdx"]["evidence_collateral_tcb_status"] = json!("UpToDate");
        assert_eq!(trust(&p, &guest).1, json!(97));
        explains(&p, &guest, &["comes only from collateral the guest sent"]);
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

    /// The CC event log route: every digest measured into a register must
    /// be pinned, whatever the event is labelled; a register is pinned by
    /// its value or by its events.
    #[test]
    fn tdx_ccel_digests_pin_registers() {
        let rvs = [
            ("tdx_mr_td", json!(["aa"])),
            ("tdx_rtmr_0", json!(["r0"])),
            ("tdx_ccel_rtmr_1", json!(["k1", "k2"])),
            ("tdx_ccel_rtmr_2", json!(["c1"])),
            ("init_data", json!(["none"])),
        ];
        let (_d, p) = policy(&rvs);
        let claims = |r1: Value, r2: Value| json!({"tdx": {"quote": {"body": {"mr_td": "aa", "rtmr_0": "r0", "rtmr_1": "x", "rtmr_2": "y"}}, "tcb_status": "UpToDate", "td_attributes": {"debug": false, "migratable": false}, "ccel": {"rtmr0": ["z"], "rtmr1": r1, "rtmr2": r2}}});
        assert_eq!(
            trust(&p, &claims(json!(["k1", "k2", "k1"]), json!(["c1"]))).0,
            json!(3)
        );
        for (r1, r2) in [
            (json!(["k1", "evil"]), json!(["c1"])),
            (json!(["k1"]), json!([])),
            (json!(["k1"]), json!(["c1", "c2"])),
        ] {
            let c = claims(r1.clone(), r2.clone());
            assert_eq!(trust(&p, &c).0, json!(33), "{r1} {r2}");
            explains(&p, &c, &["'tdx_ccel_rtmr_"]);
        }
    }

    /// The SGX section: MRENCLAVE, optional MRSIGNER, TCB status, DEBUG.
    #[test]
    fn sgx_claims() {
        let claims = |enclave: &str, signer: &str, tcb: &str, flags: &str| json!({"sgx": {"body": {"mr_enclave": enclave, "mr_signer": signer, "attributes.flags": flags}, "tcb_status": tcb}});
        // MRENCLAVE alone is not enough: MRSIGNER must be pinned too.
        let (_d, p) = policy(&[
            ("sgx_mr_enclave", json!(["aa"])),
            ("init_data", json!(["none"])),
        ]);
        assert_eq!(
            trust(&p, &claims("aa", "ss", "UpToDate", "0500000000000000")).0,
            33
        );
        explains(
            &p,
            &claims("aa", "ss", "UpToDate", "0500000000000000"),
            &["'sgx_mr_signer'"],
        );
        let (_d, p) = policy(&[
            ("sgx_mr_enclave", json!(["aa"])),
            ("sgx_mr_signer", json!(["ss"])),
            ("init_data", json!(["none"])),
        ]);
        assert_eq!(
            trust(&p, &claims("aa", "ss", "UpToDate", "0500000000000000")),
            (json!(3), json!(2), json!(2))
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
        let names: Vec<String> = BOOT_PCRS.iter().map(|n| format!("tpm_pcr{n}")).collect();
        let mut base: Vec<(&str, Value)> = names
            .iter()
            .zip(BOOT_PCRS)
            .map(|(name, n)| (name.as_str(), json!([format!("{n}{n}")])))
            .collect();
        base.extend([
            ("init_data", json!(["none"])),
            ("snp_min_tcb_bootloader", json!([3])),
            ("snp_min_tcb_tee", json!([0])),
            ("snp_min_tcb_snp", json!([8])),
            ("snp_min_tcb_microcode", json!([200])),
        ]);
        let all: Vec<(&str, Value)> = base
            .iter()
            .cloned()
            .chain([
                ("az_snp_hcl_measurement", json!(["m"])),
                ("az_tdx_hcl_mr_td", json!(["td"])),
            ])
            .collect();
        let (_d, p) = policy(&all);
        let pcrs = |pcr4: &str| {
            let mut m = boot_pcr_claims();
            m["pcr04"] = json!(pcr4);
            m
        };
        let snp = |pcr4: &str, snp_tcb: &str, debug: bool| {
            json!({"az-snp-vtpm": {"measurement": "m", "reported_tcb_bootloader": "3", "reported_tcb_tee": "0",
                "reported_tcb_snp": snp_tcb, "reported_tcb_microcode": "209", "policy_debug_allowed": debug,
                "policy_migrate_ma": false, "tpm": pcrs(pcr4)}})
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
        let tdx = |pcr4: &str, tcb: &str| json!({"az-tdx-vtpm": {"tcb_status": tcb, "quote": {"body": {"mr_td": "td"}}, "td_attributes": {"debug": false, "migratable": false}, "tpm": pcrs(pcr4)}});
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
        let (_d, unpinned) = policy(&base);
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
        let rvs = [
            ("cca_realm_initial_measurement", json!(["UklN"])),
            ("cca_realm_rem0", json!(["UkVNMA=="])),
            ("cca_realm_rem1", json!(["AAAA"])),
            ("init_data", json!(["none"])),
            ("cca_platform_sw_component", json!(["Qkwx", "Uk1N"])),
        ];
        let (_d, p) = policy(&rvs);
        let claims = |rim: &str, lifecycle: u64| json!({"cca": {"realm": {"cca-realm-initial-measurement": rim, "cca-realm-extensible-measurements": ["UkVNMA==", "AAAA"]}, "platform": {"cca-platform-lifecycle": lifecycle, "cca-platform-sw-components": [{"measurement-value": "Qkwx"}, {"measurement-value": "Uk1N"}]}}});
        assert_eq!(
            trust(&p, &claims("UklN", 0x3003)),
            (json!(3), json!(2), json!(2))
        );
        // The platform's firmware must be pinned for hardware.
        let (_d, p4) = policy(&rvs[..4]);
        assert_eq!(trust(&p4, &claims("UklN", 0x3003)).1, json!(97));
        explains(
            &p4,
            &claims("UklN", 0x3003),
            &["'cca_platform_sw_component'", "Uk1N"],
        );
        // Every REM is pinned; base64 compares exactly.
        let (_d, p2) = policy(&rvs[..2]);
        assert_eq!(trust(&p2, &claims("UklN", 0x3003)).0, json!(33));
        explains(&p2, &claims("UklN", 0x3003), &["'cca_realm_rem1'"]);
        let (_d, p3) = policy(&[
            rvs[0].clone(),
            ("cca_realm_rem0", json!(["ukvnma=="])),
            rvs[2].clone(),
            rvs[3].clone(),
        ]);
        assert_eq!(trust(&p3, &claims("UklN", 0x3003)).0, json!(33));
        let bad = claims("T1RI", 0x2000);
        assert_eq!(trust(&p, &bad), (json!(33), json!(2), json!(36)));
        explains(
            &p,
            &bad,
            &["cca-realm-initial-measurement=T1RI", "lifecycle=8192"],
        );
    }
}
