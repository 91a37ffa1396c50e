//! Arbitrary bytes as what the host side reads from a pod's spec and from
//! the registry: the bundle's OCI spec, an exec's process and resources
//! (containerd's JSON, built from the pod), Kata's hypervisor annotations
//! (`cc_init_data` is base64 of gzipped TOML) and an image manifest in
//! containerd's content store. Refused or converted, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

fuzz_target!(|data: &[u8]| {
    let _ = cocoon_shim::spec::from_json(data);
    let _ = cocoon_shim::spec::process_from_json(data);
    let _ = cocoon_shim::spec::resources_from_json(data);
    let _ = cocoon_snapshotter::policy::has_encrypted_layers(data);
    let _ = cocoon_shim::shim::grouping_id("c1", data);
    let text = String::from_utf8_lossy(data);
    let cfg = cocoon_shim::config::Config::default();
    // The first line picks the annotation, the rest is its value.
    let (key, value) = text.split_once('\n').unwrap_or((&text, ""));
    let mut ann = HashMap::new();
    ann.insert(
        format!("{}{}", cocoon_shim::config::HYPERVISOR_ANNOTATION, key.trim()),
        value.to_string(),
    );
    let _ = cfg.pod(&ann);
    let mut ann = HashMap::new();
    ann.insert("io.kubernetes.cri.sandbox-memory".to_string(), key.to_string());
    ann.insert("io.kubernetes.cri.sandbox-cpu-quota".to_string(), value.to_string());
    ann.insert("io.kubernetes.cri.sandbox-cpu-period".to_string(), key.to_string());
    let _ = cfg.pod(&ann);
    let _ = cocoon_shim::config::decode_initdata("k", &text);
});
