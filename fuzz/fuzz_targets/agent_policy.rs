//! Arbitrary bytes as agent requests decided by a generated-style agent
//! policy: the request becomes the policy's JSON input and the rules run
//! on it (including state kept between requests); allowed or refused,
//! never a panic.
#![no_main]

use cocoon_guest::pod::policy::Gate;
use cocoon_guest_protos::kata::agent::{
    CreateContainerRequest, ExecProcessRequest, ReadStreamRequest, SetPolicyRequest,
};
use cocoon_guest_protos::protobuf::Message;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const POLICY: &str = r#"package agent_policy
import rego.v1
default CreateContainerRequest := false
default ExecProcessRequest := false
default ReadStreamRequest := false
default SetPolicyRequest := false
CreateContainerRequest := {"allowed": true, "ops": [{"op": "add", "path": concat("/", ["/pstate", input.container_id]), "value": 0}]} if {
    input.OCI.Process.Args == ["/app"]
    every e in input.OCI.Process.Env { startswith(e, "A=") }
}
ExecProcessRequest if {
    data.pstate[input.container_id] == 0
    input.process.Args == ["probe"]
}
reasons.ExecProcessRequest contains sprintf("process.Args: %v", [input.process.Args])
ReadStreamRequest if regex.match("^[a-z0-9]{1,64}$", input.container_id)
"#;

fn gate() -> &'static Gate {
    static G: OnceLock<Gate> = OnceLock::new();
    G.get_or_init(|| Gate::with_policy(POLICY).expect("the fuzz policy loads"))
}

fuzz_target!(|data: &[u8]| {
    let g = gate();
    if let Ok(r) = CreateContainerRequest::parse_from_bytes(data) {
        let _ = g.check(&r);
    }
    if let Ok(r) = ExecProcessRequest::parse_from_bytes(data) {
        let _ = g.check(&r);
    }
    if let Ok(r) = ReadStreamRequest::parse_from_bytes(data) {
        let _ = g.check(&r);
    }
    if let Ok(r) = SetPolicyRequest::parse_from_bytes(data) {
        let _ = g.set_policy(&r.policy);
    }
});
