//! The agent policy: a Rego document (package `agent_policy`) that decides
//! every request the host sends the agent before the agent acts on it.
//!
//! It follows Kata's agent, so policies written for it (genpolicy's
//! output, hand-written ones) work unchanged:
//!
//! - the policy is initdata's `policy.rego`, loaded before the agent
//!   serves; without one every request is allowed (there is nothing the
//!   owner pinned), and `SetPolicy` is refused;
//! - a request is decided by the rule named after its message
//!   (`CreateContainerRequest`, `ReadStreamRequest`, ...), with the request
//!   as `input` (see [`cocoon_guest_protos::json`]);
//! - a rule gives a boolean, or `{"allowed": bool, "ops": [...]}` whose
//!   JSON-patch operations on `/pstate/...` keep state between requests
//!   (genpolicy remembers which container an id is);
//! - `AllowRequestsFailingPolicy := true` turns denials into warnings
//!   (debugging only; logged loudly);
//! - `SetPolicy` is decided by the current policy's `SetPolicyRequest`
//!   (`input.policy` is the new text) and replaces the policy and its state.
//!
//! Beyond Kata:
//!
//! - what the guest pulls is decided too: `PullImageRequest` with
//!   `input.image` (the reference asked for), `input.manifest_digest`
//!   (what the guest resolved it to, from the manifest alone) and
//!   `input.container_id`, before any layer is fetched; the image is then
//!   pulled only as long as it still resolves to that digest. A policy without that rule does not bind
//!   images (as with Kata).
//! - a denial says why: the strings of `reasons.<Rule>` when the policy
//!   defines them (a set evaluated on the same input), else what the
//!   policy printed, else that no rule allowed it. An undefined rule is a
//!   denial naming the rule.

use protobuf::MessageDyn;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Mutex;

/// The Rego package of agent policies.
pub const PACKAGE: &str = "agent_policy";
/// The initdata entry that holds the policy.
pub const INITDATA_ENTRY: &str = "policy.rego";
/// The rule that decides what the guest pulled (ours; Kata has no such
/// check).
pub const PULL_RULE: &str = "PullImageRequest";
/// Longest reason returned to the host.
const MAX_REASON: usize = 2048;
/// Largest policy accepted (initdata is bounded too; SetPolicy is not).
const MAX_POLICY: usize = 4 << 20;

/// A policy that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("agent policy: {0}")]
pub struct PolicyError(String);

/// A request the policy refused. The text names the rule and why; it is
/// built from the request and the policy, both of which come from outside
/// the guest, so it holds no secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{rule} is blocked by policy: {reason}")]
pub struct Denial {
    /// The rule that refused.
    pub rule: String,
    /// Why.
    pub reason: String,
}

struct Loaded {
    engine: regorus::Engine,
    pstate: Value,
    allow_failures: bool,
}

impl Loaded {
    fn new(text: &str) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY {
            return Err(PolicyError(format!(
                "{} bytes is larger than the {MAX_POLICY} allowed",
                text.len()
            )));
        }
        let mut engine = regorus::Engine::new();
        engine.set_gather_prints(true);
        let package = engine
            .add_policy(INITDATA_ENTRY.into(), text.into())
            .map_err(|e| PolicyError(e.to_string()))?;
        if package != format!("data.{PACKAGE}") {
            return Err(PolicyError(format!(
                "the policy's package is {}, not {PACKAGE}",
                package.trim_start_matches("data.")
            )));
        }
        let mut loaded = Self {
            engine,
            pstate: json!({}),
            allow_failures: false,
        };
        loaded.engine.set_input(regorus::Value::from(json!({})));
        loaded.allow_failures = matches!(
            loaded
                .engine
                .eval_rule(format!("data.{PACKAGE}.AllowRequestsFailingPolicy")),
            Ok(regorus::Value::Bool(true))
        );
        if loaded.allow_failures {
            tracing::warn!(
                "the agent policy sets AllowRequestsFailingPolicy: requests it refuses are \
                 allowed anyway (for debugging a policy, never for a workload)"
            );
        }
        Ok(loaded)
    }

    /// Decides `rule` for `input`: Ok(true) allowed, Ok(false) refused,
    /// Err when the policy cannot decide (undefined rule, wrong type).
    fn eval(&mut self, rule: &str, input: &Value) -> Result<bool, String> {
        self.engine.set_input(regorus::Value::from(input.clone()));
        let _ = self.engine.take_prints();
        let v = self
            .engine
            .eval_rule(format!("data.{PACKAGE}.{rule}"))
            .map_err(|e| format!("the policy defines no rule {rule} ({e})"))?;
        match v {
            regorus::Value::Bool(b) => Ok(b),
            regorus::Value::Undefined => Err(format!(
                "rule {rule} is undefined for this request (it has no default)"
            )),
            regorus::Value::Object(ref o) => {
                let json: Value = serde_json::from_str(&v.to_json_str().unwrap_or_default())
                    .map_err(|e| format!("rule {rule}: {e}"))?;
                let allowed = json
                    .get("allowed")
                    .and_then(Value::as_bool)
                    .ok_or_else(|| {
                        format!(
                            "rule {rule} gave an object without a boolean 'allowed' ({} keys)",
                            o.len()
                        )
                    })?;
                if let (true, Some(ops)) = (allowed, json.get("ops")) {
                    self.apply(ops)
                        .map_err(|e| format!("rule {rule}: state update: {e}"))?;
                }
                Ok(allowed)
            }
            other => Err(format!("rule {rule} gave {}, not a boolean", kind(&other))),
        }
    }

    /// JSON-patch operations on `/pstate/...` (add, replace, remove).
    fn apply(&mut self, ops: &Value) -> Result<(), String> {
        let ops = ops.as_array().ok_or("ops is not an array")?;
        let mut state = self.pstate.clone();
        for op in ops {
            let kind = op.get("op").and_then(Value::as_str).unwrap_or_default();
            let path = op.get("path").and_then(Value::as_str).unwrap_or_default();
            let Some(rest) = path.strip_prefix("/pstate/") else {
                return Err(format!("path '{path}' is outside /pstate"));
            };
            let keys: Vec<String> = rest
                .split('/')
                .map(|k| k.replace("~1", "/").replace("~0", "~"))
                .collect();
            let (last, parents) = keys.split_last().ok_or("empty path")?;
            let mut at = &mut state;
            for k in parents {
                at = at
                    .as_object_mut()
                    .ok_or_else(|| format!("'{path}' goes through a non-object"))?
                    .entry(k.clone())
                    .or_insert_with(|| json!({}));
            }
            let obj = at
                .as_object_mut()
                .ok_or_else(|| format!("'{path}' goes through a non-object"))?;
            match kind {
                "add" | "replace" => {
                    let value = op.get("value").cloned().unwrap_or(Value::Null);
                    obj.insert(last.clone(), value);
                }
                "remove" => {
                    obj.remove(last);
                }
                other => return Err(format!("operation '{other}' is not supported")),
            }
        }
        if state == self.pstate {
            // Re-adding data makes the engine prepare its rules again.
            return Ok(());
        }
        self.pstate = state;
        self.engine.clear_data();
        self.engine
            .add_data(regorus::Value::from(json!({ "pstate": self.pstate })))
            .map_err(|e| e.to_string())
    }

    /// Why `rule` refused `input`: the policy's `reasons.<rule>`, else its
    /// prints, else a generic line.
    fn reason(&mut self, rule: &str, input: &Value) -> String {
        let prints = self.engine.take_prints().unwrap_or_default();
        self.engine.set_input(regorus::Value::from(input.clone()));
        let reasons = self
            .engine
            .eval_rule(format!("data.{PACKAGE}.reasons.{rule}"))
            .ok()
            .and_then(|v| v.to_json_str().ok())
            .and_then(|s| serde_json::from_str::<Vec<String>>(&s).ok())
            .filter(|r| !r.is_empty());
        let _ = self.engine.take_prints();
        let text = match reasons {
            Some(r) => r.join("; "),
            None if !prints.is_empty() => prints.join("; "),
            None => format!("no rule allows this {rule}"),
        };
        clip(text)
    }
}

fn kind(v: &regorus::Value) -> &'static str {
    match v {
        regorus::Value::Null => "null",
        regorus::Value::Number(_) => "a number",
        regorus::Value::String(_) => "a string",
        regorus::Value::Array(_) => "an array",
        regorus::Value::Set(_) => "a set",
        _ => "a non-boolean value",
    }
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(" ...");
    }
    s
}

/// The agent's policy gate: no policy (everything allowed) or a loaded
/// policy every request goes through.
pub struct Gate {
    policy: Mutex<Slot>,
}

/// What the gate holds.
enum Slot {
    /// No policy.
    Open,
    /// A policy being loaded in the background; the first request waits.
    Loading(std::thread::JoinHandle<Result<Loaded, PolicyError>>),
    /// The policy.
    Ready(Box<Loaded>),
    /// The policy did not load: every request is refused.
    Failed(String),
}

impl Slot {
    /// Waits for a background load.
    fn settle(&mut self) {
        if matches!(self, Slot::Loading(_)) {
            let Slot::Loading(h) = std::mem::replace(self, Slot::Failed(String::new())) else {
                return;
            };
            *self = match h.join() {
                Ok(Ok(l)) => Slot::Ready(Box::new(l)),
                Ok(Err(e)) => Slot::Failed(e.0),
                Err(_) => Slot::Failed("loading it panicked".into()),
            };
        }
    }
}

/// What a request meets at the gate.
enum Verdict<'a> {
    Open,
    Policy(&'a mut Loaded),
    Failed(&'a str),
}

impl Gate {
    /// No policy: every request is allowed, SetPolicy refused.
    pub fn open() -> Self {
        Self {
            policy: Mutex::new(Slot::Open),
        }
    }

    /// A gate enforcing `text`.
    pub fn with_policy(text: &str) -> Result<Self, PolicyError> {
        Ok(Self {
            policy: Mutex::new(Slot::Ready(Box::new(Loaded::new(text)?))),
        })
    }

    /// A gate enforcing `text` once it has loaded, in the background: the
    /// agent starts serving meanwhile and the first decision waits for it.
    /// A policy that does not load refuses every request
    /// ([`Gate::wait`] says why).
    pub fn loading(text: String) -> Self {
        let h = std::thread::spawn(move || {
            let l = Loaded::new(&text);
            if l.is_ok() {
                tracing::info!(bytes = text.len(), "agent policy loaded from initdata");
            }
            l
        });
        Self {
            policy: Mutex::new(Slot::Loading(h)),
        }
    }

    /// The policy in initdata's `policy.rego` under `dir` (as written at
    /// boot), loading in the background, or an open gate when initdata has
    /// none.
    pub fn from_initdata(dir: &Path) -> Result<Self, PolicyError> {
        let path = dir.join(INITDATA_ENTRY);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Self::loading(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!("no agent policy in initdata: every agent request is allowed");
                Ok(Self::open())
            }
            Err(e) => Err(PolicyError(format!("{}: {e}", path.display()))),
        }
    }

    /// Waits for the policy to load: an error if it did not (the guest
    /// must not serve without it).
    pub fn wait(&self) -> Result<(), PolicyError> {
        match &*self.lock() {
            Slot::Failed(e) => Err(PolicyError(e.clone())),
            _ => Ok(()),
        }
    }

    /// Whether a policy is enforced (one that failed to load counts: it
    /// refuses everything).
    pub fn enforcing(&self) -> bool {
        !matches!(&*self.lock(), Slot::Open)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        let mut g = self.policy.lock().unwrap_or_else(|p| p.into_inner());
        g.settle();
        g
    }

    /// Decides `req` by the rule named after its message.
    pub fn check(&self, req: &dyn MessageDyn) -> Result<(), Denial> {
        // The name comes from the message's descriptor, which protobuf
        // builds (its whole .proto file) on first use: not without a policy.
        let rule = || req.descriptor_dyn().name().to_string();
        let mut guard = self.lock();
        match verdict(&mut guard) {
            Verdict::Open => Ok(()),
            Verdict::Failed(e) => Err(failed(&rule(), e)),
            Verdict::Policy(policy) => {
                let input = cocoon_guest_protos::json::to_value(req);
                decide(policy, &rule(), &input, false)
            }
        }
    }

    /// Decides `rule` for `input` (requests that are not one agent
    /// message: the image a guest pull resolved). With `undefined_allows`,
    /// a policy without the rule allows it.
    pub fn check_input(
        &self,
        rule: &str,
        input: &Value,
        undefined_allows: bool,
    ) -> Result<(), Denial> {
        let mut guard = self.lock();
        match verdict(&mut guard) {
            Verdict::Open => Ok(()),
            Verdict::Failed(e) => Err(failed(rule, e)),
            Verdict::Policy(policy) => decide(policy, rule, input, undefined_allows),
        }
    }

    /// SetPolicy: allowed only by the current policy's `SetPolicyRequest`;
    /// then `text` replaces it (and its state).
    pub fn set_policy(&self, text: &str) -> Result<(), SetPolicyError> {
        let mut guard = self.lock();
        let policy = match verdict(&mut guard) {
            Verdict::Policy(p) => p,
            Verdict::Failed(e) => {
                return Err(SetPolicyError::Denied(failed("SetPolicyRequest", e)));
            }
            Verdict::Open => {
                return Err(SetPolicyError::Denied(Denial {
                    rule: "SetPolicyRequest".into(),
                    reason: "the pod has no initdata policy, and only one may allow replacing it"
                        .into(),
                }));
            }
        };
        decide(
            policy,
            "SetPolicyRequest",
            &json!({ "policy": text }),
            false,
        )
        .map_err(SetPolicyError::Denied)?;
        let new = Loaded::new(text).map_err(SetPolicyError::Invalid)?;
        *guard = Slot::Ready(Box::new(new));
        tracing::info!(bytes = text.len(), "agent policy replaced by SetPolicy");
        Ok(())
    }
}

fn verdict(slot: &mut Slot) -> Verdict<'_> {
    match slot {
        Slot::Open => Verdict::Open,
        Slot::Ready(p) => Verdict::Policy(p),
        Slot::Failed(e) => Verdict::Failed(e),
        // Settled by `Gate::lock`.
        Slot::Loading(_) => Verdict::Failed("still loading"),
    }
}

fn failed(rule: &str, why: &str) -> Denial {
    Denial {
        rule: rule.into(),
        reason: format!("the pod's agent policy did not load ({why})"),
    }
}

/// Why SetPolicy failed.
#[derive(Debug, thiserror::Error)]
pub enum SetPolicyError {
    /// The current policy refuses it.
    #[error(transparent)]
    Denied(Denial),
    /// The new policy does not load.
    #[error(transparent)]
    Invalid(PolicyError),
}

fn decide(
    policy: &mut Loaded,
    rule: &str,
    input: &Value,
    undefined_allows: bool,
) -> Result<(), Denial> {
    let denial = match policy.eval(rule, input) {
        Ok(true) => return Ok(()),
        Ok(false) => Denial {
            rule: rule.into(),
            reason: policy.reason(rule, input),
        },
        Err(_) if undefined_allows && !rule_declared(policy, rule) => {
            tracing::debug!(rule, "the agent policy has no rule for this check");
            return Ok(());
        }
        Err(e) => Denial {
            rule: rule.into(),
            reason: clip(e),
        },
    };
    // Debugging a policy never lets the host replace it.
    if policy.allow_failures && rule != "SetPolicyRequest" {
        tracing::warn!(rule, reason = %denial.reason, "allowed despite the agent policy (AllowRequestsFailingPolicy)");
        return Ok(());
    }
    tracing::warn!(rule, reason = %denial.reason, "request refused by the agent policy");
    Err(denial)
}

fn rule_declared(policy: &Loaded, rule: &str) -> bool {
    policy
        .engine
        .has_declared_rule_rooted_at(INITDATA_ENTRY, rule)
        .unwrap_or(true)
}

#[cfg(test)]
mod tests;
