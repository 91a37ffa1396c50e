//! Declarative start-up content: policies, resources and reference values
//! read from directories (in Kubernetes, ConfigMap and Secret volumes) and
//! stored as the admin API would store them. Applied at every start, so
//! the mounted files are the truth for what they name; what they do not
//! name is left as it is.

use crate::api::KbsState;
use anyhow::{Context, Result, bail};
use cocoon_attestation::RESOURCE_POLICY;
use cocoon_store::ns;
use cocoon_types::resource::ResourcePath;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Files larger than this are refused (the admin API's body limit).
const MAX_FILE: u64 = 2 * 1024 * 1024;

/// Where the start-up content comes from.
#[derive(Debug, Clone, Default)]
pub struct SeedDirs {
    /// `resource.rego` (the resource policy) and `<id>.rego` (attestation
    /// policies, e.g. `default_cpu.rego`).
    pub policies: Option<PathBuf>,
    /// `<repo>/<type>/<tag>` files, each a secret's bytes.
    pub resources: Option<PathBuf>,
    /// CoCo RVPS messages (`*.json`).
    pub reference_values: Option<PathBuf>,
}

/// What was applied (names only, never values).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seeded {
    pub policies: Vec<String>,
    pub resources: Vec<String>,
    pub reference_values: Vec<String>,
}

/// The regular files under `dir` (following links, as Kubernetes volumes
/// are links into a timestamped directory, but never out of `dir`: a link
/// to the key-encryption key must not become a resource), relative paths
/// sorted; entries starting with `.` (the volume's `..data` bookkeeping)
/// skipped.
fn files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let root = std::fs::canonicalize(dir).with_context(|| format!("reading {}", dir.display()))?;
    fn walk(root: &Path, rel: &Path, out: &mut Vec<(String, PathBuf)>, depth: usize) -> Result<()> {
        if depth > 8 {
            bail!("{} nests too deep", root.join(rel).display());
        }
        let here = root.join(rel);
        for e in std::fs::read_dir(&here).with_context(|| format!("reading {}", here.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = e.path();
            let meta =
                std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
            if meta.is_dir() {
                walk(root, &rel.join(&name), out, depth + 1)?;
            } else if meta.is_file() {
                out.push((rel.join(&name).display().to_string(), path));
            }
        }
        Ok(())
    }
    let mut out = vec![];
    walk(dir, Path::new(""), &mut out, 0)?;
    for (_, path) in out.iter_mut() {
        let real =
            std::fs::canonicalize(&*path).with_context(|| format!("reading {}", path.display()))?;
        if !real.starts_with(&root) {
            bail!(
                "{} leads out of {} (to {})",
                path.display(),
                dir.display(),
                real.display()
            );
        }
        // Read what was checked, not the link again (which could change).
        let len = std::fs::metadata(&real)?.len();
        if len > MAX_FILE {
            bail!(
                "{} is {len} bytes, over the {MAX_FILE} a start applies",
                path.display()
            );
        }
        *path = real;
    }
    out.sort();
    Ok(out)
}

/// Applies the directories' content to the trustee's state. Any invalid
/// file stops the start, naming the file: a trustee must not come up with
/// half of its owner's policy.
pub fn apply(state: &KbsState, dirs: &SeedDirs) -> Result<Seeded> {
    let mut done = Seeded::default();
    let r = apply_into(state, dirs, &mut done);
    // An admin change like any other: in the audit log, by name (a
    // start that failed half-way says what it had applied).
    if done != Seeded::default() {
        state.audit.record(crate::audit::Entry::new(
            "admin",
            serde_json::json!({
                "route": "start-up directories",
                "policies": done.policies,
                "resources": done.resources,
                "reference_values": done.reference_values,
                "complete": r.is_ok(),
            }),
        ));
    }
    r.map(|()| done)
}

fn apply_into(state: &KbsState, dirs: &SeedDirs, done: &mut Seeded) -> Result<()> {
    if let Some(d) = &dirs.policies {
        for (rel, path) in files(d)? {
            let Some(id) = rel.strip_suffix(".rego").filter(|id| !id.contains('/')) else {
                bail!(
                    "{}: policies are <id>.rego files (resource.rego, default_cpu.rego)",
                    path.display()
                );
            };
            let id = if id == "resource" {
                RESOURCE_POLICY
            } else {
                id
            };
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            state
                .attestation
                .policies()
                .set(id, &text)
                .with_context(|| format!("policy {}", path.display()))?;
            done.policies.push(id.to_string());
        }
    }
    if let Some(d) = &dirs.resources {
        for (rel, path) in files(d)? {
            let rpath = ResourcePath::parse(&rel).with_context(|| {
                format!(
                    "{}: resources are <repo>/<type>/<tag> files",
                    path.display()
                )
            })?;
            let key = rpath.to_string();
            let bytes = Zeroizing::new(
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            );
            let sealed = state.kek.seal(ns::RESOURCES, &key, &bytes)?;
            state.store.put(ns::RESOURCES, &key, &sealed)?;
            done.resources.push(key);
        }
    }
    if let Some(d) = &dirs.reference_values {
        for (rel, path) in files(d)? {
            let body =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let names = state
                .rvps
                .register_message(&body)
                .with_context(|| format!("reference values {rel}"))?;
            done.reference_values.extend(names);
        }
    }
    Ok(())
}
