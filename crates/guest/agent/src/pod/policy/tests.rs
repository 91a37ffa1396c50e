use super::*;
use cocoon_guest_protos::kata::{agent, oci};

/// A policy in genpolicy's shape, written by hand: Kata's rule names,
/// `policy_data` with `containers` / `common` / `request_defaults`, and
/// container state kept in `pstate` by the CreateContainerRequest result.
const GENPOLICY_STYLE: &str = r#"package agent_policy

import future.keywords.in
import future.keywords.if
import future.keywords.every

default CreateContainerRequest := {"allowed": false}
default ExecProcessRequest := false
default ReadStreamRequest := false
default WriteStreamRequest := false
default SetPolicyRequest := false
default StartContainerRequest := true
default WaitProcessRequest := true
default RemoveContainerRequest := true

CreateContainerRequest := {"allowed": true, "ops": ops} if {
    some i, c in policy_data.containers
    input.OCI.Process.Args == c.OCI.Process.Args
    every e in input.OCI.Process.Env { e in c.OCI.Process.Env }
    ops := [{"op": "add", "path": concat("", ["/pstate/", input.container_id]), "value": i}]
}

ExecProcessRequest if {
    i := data.pstate[input.container_id]
    input.process.Args in policy_data.containers[i].exec_commands
}

ExecProcessRequest if {
    input.process.Args in policy_data.request_defaults.ExecProcessRequest.allowed_commands
}

ReadStreamRequest if { policy_data.request_defaults.ReadStreamRequest }

policy_data := {
    "containers": [
        {"OCI": {"Process": {"Args": ["/pause"], "Env": []}}, "exec_commands": []},
        {"OCI": {"Process": {"Args": ["/app", "--serve"], "Env": ["A=1", "PATH=/bin"]}},
         "exec_commands": [["/bin/probe"]]}
    ],
    "common": {"cpath": "/run/kata-containers/shared/containers"},
    "request_defaults": {
        "ExecProcessRequest": {"allowed_commands": [["/bin/date"]], "regex": []},
        "ReadStreamRequest": true,
        "WriteStreamRequest": false
    }
}
"#;

fn create(id: &str, args: &[&str], env: &[&str]) -> agent::CreateContainerRequest {
    let mut process = oci::Process::new();
    process.Args = args.iter().map(|s| s.to_string()).collect();
    process.Env = env.iter().map(|s| s.to_string()).collect();
    let mut spec = oci::Spec::new();
    spec.Process = Some(process).into();
    agent::CreateContainerRequest {
        container_id: id.into(),
        OCI: Some(spec).into(),
        ..Default::default()
    }
}

fn exec(id: &str, args: &[&str]) -> agent::ExecProcessRequest {
    let mut process = oci::Process::new();
    process.Args = args.iter().map(|s| s.to_string()).collect();
    agent::ExecProcessRequest {
        container_id: id.into(),
        exec_id: "e".into(),
        process: Some(process).into(),
        ..Default::default()
    }
}

#[test]
fn a_genpolicy_style_policy_decides_requests_and_keeps_state() {
    let gate = Gate::with_policy(GENPOLICY_STYLE).unwrap();
    assert!(gate.enforcing());
    gate.check(&create("app", &["/app", "--serve"], &["A=1"]))
        .unwrap();
    gate.check(&create("pause", &["/pause"], &[])).unwrap();

    let d = gate.check(&create("evil", &["/bin/sh"], &[])).unwrap_err();
    assert_eq!(d.rule, "CreateContainerRequest");
    assert!(
        d.to_string()
            .starts_with("CreateContainerRequest is blocked by policy: "),
        "{d}"
    );
    // An env var the pod spec does not have.
    gate.check(&create(
        "x",
        &["/app", "--serve"],
        &["A=1", "LD_PRELOAD=/x.so"],
    ))
    .unwrap_err();

    // Exec: the probe command of the container the id was created as
    // (found through pstate), or a command allowed everywhere.
    gate.check(&exec("app", &["/bin/probe"])).unwrap();
    gate.check(&exec("pause", &["/bin/date"])).unwrap();
    let d = gate.check(&exec("pause", &["/bin/probe"])).unwrap_err();
    assert_eq!(d.rule, "ExecProcessRequest");
    gate.check(&exec("app", &["/bin/sh"])).unwrap_err();
    // A refused create left no state: its id has no commands.
    gate.check(&exec("evil", &["/bin/probe"])).unwrap_err();

    gate.check(&agent::ReadStreamRequest::default()).unwrap();
    gate.check(&agent::WriteStreamRequest::default())
        .unwrap_err();
    gate.check(&agent::StartContainerRequest::default())
        .unwrap();
}

#[test]
fn an_undefined_rule_is_a_denial_that_names_it() {
    let gate = Gate::with_policy(GENPOLICY_STYLE).unwrap();
    let d = gate.check(&agent::CopyFileRequest::default()).unwrap_err();
    assert_eq!(d.rule, "CopyFileRequest");
    assert!(d.reason.contains("defines no rule CopyFileRequest"), "{d}");
    // The pull check is ours: a Kata policy without it does not bind images.
    gate.check_input(PULL_RULE, &json!({"image": "x"}), true)
        .unwrap();
    gate.check_input("NoSuchCheck", &json!({}), false)
        .unwrap_err();
}

#[test]
fn a_rule_calling_a_missing_builtin_refuses() {
    // The guest's Rego has no time builtins (the guest clock is the host's);
    // a function it lacks is an error, never an allow, also under `not`
    // and for a check that a policy may leave out.
    let gate = Gate::with_policy(
        r#"package agent_policy
import rego.v1
default ExecProcessRequest := true
default PullImageRequest := true
expired if { no_such.builtin(1) > 0 }
ExecProcessRequest if { not expired }
PullImageRequest if { not expired }
"#,
    )
    .unwrap();
    let d = gate.check(&exec("c", &["/bin/date"])).unwrap_err();
    assert_eq!(d.rule, "ExecProcessRequest");
    assert!(
        d.reason.contains("could not find function no_such.builtin"),
        "{d}"
    );
    gate.check_input(PULL_RULE, &json!({"image": "x"}), true)
        .unwrap_err();
}

#[test]
fn reasons_name_the_failing_field() {
    let gate = Gate::with_policy(
        r#"package agent_policy
import rego.v1
default PullImageRequest := false
PullImageRequest if { input.manifest_digest == "sha256:aa" }
reasons.PullImageRequest contains msg if {
    input.manifest_digest != "sha256:aa"
    msg := sprintf("manifest_digest: %s is not the pinned sha256:aa", [input.manifest_digest])
}
"#,
    )
    .unwrap();
    gate.check_input(PULL_RULE, &json!({"manifest_digest": "sha256:aa"}), true)
        .unwrap();
    let d = gate
        .check_input(PULL_RULE, &json!({"manifest_digest": "sha256:bb"}), true)
        .unwrap_err();
    assert_eq!(
        d.to_string(),
        "PullImageRequest is blocked by policy: manifest_digest: sha256:bb is not the pinned sha256:aa"
    );
}

#[test]
fn without_a_policy_everything_is_allowed_but_set_policy() {
    let gate = Gate::open();
    assert!(!gate.enforcing());
    gate.check(&create("x", &["/bin/sh"], &[])).unwrap();
    let e = gate
        .set_policy("package agent_policy\ndefault A := true\n")
        .unwrap_err();
    assert!(e.to_string().contains("no initdata policy"), "{e}");
    assert!(!gate.enforcing());
}

#[test]
fn set_policy_needs_the_current_policy_to_allow_it() {
    let gate = Gate::with_policy(GENPOLICY_STYLE).unwrap();
    let e = gate.set_policy("package agent_policy\ndefault CreateContainerRequest := true\n");
    assert!(
        e.unwrap_err()
            .to_string()
            .starts_with("SetPolicyRequest is blocked")
    );
    gate.check(&create("y", &["/bin/sh"], &[])).unwrap_err();

    let first = r#"package agent_policy
import rego.v1
default SetPolicyRequest := false
SetPolicyRequest if { startswith(input.policy, "package agent_policy\n# v2") }
"#;
    let gate = Gate::with_policy(first).unwrap();
    let e = gate.set_policy("package agent_policy\n# v3\ndefault CreateContainerRequest := true\n");
    assert!(matches!(e, Err(SetPolicyError::Denied(_))));
    // Allowed but unusable: the old policy stays.
    let e = gate.set_policy("package agent_policy\n# v2\nthis is not rego");
    assert!(matches!(e, Err(SetPolicyError::Invalid(_))), "{e:?}");
    gate.check(&create("y", &["/bin/sh"], &[])).unwrap_err();
    gate.set_policy("package agent_policy\n# v2\ndefault CreateContainerRequest := true\n")
        .unwrap();
    gate.check(&create("y", &["/bin/sh"], &[])).unwrap();
    // The new policy has no SetPolicyRequest: no further replacement.
    gate.set_policy("package agent_policy\n# v2\n").unwrap_err();
}

#[test]
fn allow_requests_failing_policy_turns_denials_into_warnings() {
    let gate = Gate::with_policy(
        "package agent_policy\ndefault AllowRequestsFailingPolicy := true\ndefault CreateContainerRequest := false\n",
    )
    .unwrap();
    gate.check(&create("y", &["/bin/sh"], &[])).unwrap();
    gate.check(&agent::CopyFileRequest::default()).unwrap();
    // Debugging a policy never lets the host replace it.
    let e = gate.set_policy("package agent_policy\n").unwrap_err();
    assert!(matches!(e, SetPolicyError::Denied(_)), "{e}");
}

#[test]
fn unusable_policies_are_refused() {
    for (text, want) in [
        ("package other\ndefault A := true\n", "not agent_policy"),
        ("package agent_policy\nA if {", ""),
        ("", ""),
    ] {
        let e = Gate::with_policy(text).err().expect(text).to_string();
        assert!(e.starts_with("agent policy: "), "{e}");
        assert!(e.contains(want), "{e}");
    }
    // Not a boolean, and state written outside pstate.
    let gate = Gate::with_policy(
        r#"package agent_policy
CreateContainerRequest := "yes"
StartContainerRequest := {"allowed": true, "ops": [{"op": "add", "path": "/policy_data/x", "value": 1}]}
"#,
    )
    .unwrap();
    let d = gate.check(&create("y", &[], &[])).unwrap_err();
    assert!(d.reason.contains("gave a string, not a boolean"), "{d}");
    let d = gate
        .check(&agent::StartContainerRequest::default())
        .unwrap_err();
    assert!(d.reason.contains("outside /pstate"), "{d}");
}

#[test]
fn initdata_without_a_policy_opens_the_gate_and_a_bad_one_fails() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!Gate::from_initdata(dir.path()).unwrap().enforcing());
    std::fs::write(dir.path().join(INITDATA_ENTRY), GENPOLICY_STYLE).unwrap();
    let gate = Gate::from_initdata(dir.path()).unwrap();
    gate.wait().unwrap();
    assert!(gate.enforcing());
    gate.check(&create("evil", &["/bin/sh"], &[])).unwrap_err();
    // A policy that does not load refuses everything, and says why.
    std::fs::write(
        dir.path().join(INITDATA_ENTRY),
        "package agent_policy\nx if {",
    )
    .unwrap();
    let gate = Gate::from_initdata(dir.path()).unwrap();
    let d = gate
        .check(&agent::StartContainerRequest::default())
        .unwrap_err();
    assert!(
        d.reason
            .starts_with("the pod's agent policy did not load ("),
        "{d}"
    );
    let e = gate.wait().unwrap_err().to_string();
    assert!(
        e.starts_with("agent policy: ") && !e.contains("agent policy: agent policy"),
        "{e}"
    );
    assert!(gate.set_policy("package agent_policy\n").is_err());
}
