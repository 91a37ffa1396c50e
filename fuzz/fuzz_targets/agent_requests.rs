//! Arbitrary bytes as the host's CreateContainer and ExecProcess requests
//! (Kata agent API protobuf), through the guest's spec conversion and
//! default confinement: refused or converted, never a panic.
#![no_main]

use cocoon_guest::pod::{confine, spec};
use cocoon_guest_protos::kata::agent::{CreateContainerRequest, ExecProcessRequest};
use cocoon_guest_protos::protobuf::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bundle = std::env::temp_dir().join("cocoon-fuzz-bundle");
    let _ = std::fs::create_dir_all(bundle.join("rootfs"));
    if let Ok(req) = CreateContainerRequest::parse_from_bytes(data)
        && let Some(k) = req.OCI.as_ref()
    {
        let paths = spec::GuestPaths {
            rootfs: bundle.join("rootfs"),
            cgroup_parent: "/cocoon".into(),
        };
        if let Ok(mut s) = spec::to_oci(k, "c1", &paths) {
            let _ = confine::container(&mut s, &bundle);
            let _ = serde_json::to_vec(&s);
        }
    }
    if let Ok(req) = ExecProcessRequest::parse_from_bytes(data)
        && let Some(p) = req.process.as_ref()
        && let Ok(p) = spec::process_to_oci(p)
    {
        let _ = confine::process(&p);
    }
});
