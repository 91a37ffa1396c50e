//! `cocoon-snapshotter`: a containerd proxy snapshotter for nodes that run
//! confidential pods. It keeps overlay snapshots like containerd's own
//! `overlayfs` snapshotter, so other runtimes (runc) work unchanged; for
//! images pulled inside the pod VM (encrypted layers, or listed prefixes)
//! it answers layer unpacks with an empty committed snapshot, so the host
//! neither downloads nor unpacks their layers. containerd 1.6 has one
//! snapshotter for all of CRI, which is why both halves live here.

pub mod policy;
pub mod service;
pub mod store;

/// Labels from pairs, for tests.
#[cfg(test)]
pub(crate) fn labels(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
