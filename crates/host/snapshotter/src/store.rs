//! Snapshots on disk, with overlayfs semantics as containerd's own
//! `overlayfs` snapshotter has them: each snapshot is a directory `fs`
//! (plus `work` while active); an active snapshot mounts as an overlay of
//! its parents' `fs` under its own, a view as its parents read-only.
//! Metadata (names, kinds, parents, labels) is one JSON file, replaced
//! whole on every change.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A snapshot's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Read-only, not committable.
    View,
    /// Writable, committable.
    Active,
    /// Immutable, a parent for others.
    Committed,
}

/// One snapshot's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snap {
    /// Directory number under `snapshots/`.
    pub id: u64,
    /// Kind.
    pub kind: Kind,
    /// The parent's name ("" for none).
    pub parent: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Seconds since the epoch.
    pub created: i64,
    /// Seconds since the epoch.
    pub updated: i64,
}

/// A mount as containerd takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `bind` or `overlay`.
    pub typ: String,
    /// Source.
    pub source: String,
    /// Options.
    pub options: Vec<String>,
}

/// Why an operation failed (mapped to containerd's error codes).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such snapshot.
    #[error("snapshot {0}: not found")]
    NotFound(String),
    /// The name is taken.
    #[error("snapshot {0}: already exists")]
    AlreadyExists(String),
    /// The snapshot is in the wrong state for the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Bad arguments.
    #[error("{0}")]
    Invalid(String),
    /// The disk.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    next_id: u64,
    snaps: BTreeMap<String, Snap>,
}

/// The snapshots under one root directory.
pub struct Store {
    root: PathBuf,
    state: Mutex<State>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let w = what.into();
    move |e| StoreError::Io(w, e)
}

const METADATA: &str = "metadata.json";

impl Store {
    /// Opens (creating) the store under `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root.join("snapshots"))
            .map_err(io(format!("creating {}", root.display())))?;
        let meta = root.join(METADATA);
        let state = match std::fs::read(&meta) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| StoreError::Invalid(format!("{} is damaged: {e}", meta.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io(format!("reading {}", meta.display()))(e)),
        };
        Ok(Self {
            root: root.to_path_buf(),
            state: Mutex::new(state),
        })
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn save(&self, st: &State) -> Result<(), StoreError> {
        let tmp = self.root.join(format!("{METADATA}.tmp"));
        let bytes = serde_json::to_vec(st).map_err(|e| StoreError::Invalid(e.to_string()))?;
        std::fs::write(&tmp, bytes).map_err(io("writing the metadata"))?;
        std::fs::rename(&tmp, self.root.join(METADATA)).map_err(io("replacing the metadata"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `fs` directories of `parent` and its ancestors, nearest first.
    fn chain(st: &State, parent: &str) -> Result<Vec<u64>, StoreError> {
        let mut ids = Vec::new();
        let mut p = parent.to_string();
        while !p.is_empty() {
            let s = st
                .snaps
                .get(&p)
                .ok_or_else(|| StoreError::NotFound(p.clone()))?;
            ids.push(s.id);
            p = s.parent.clone();
            if ids.len() > 4096 {
                return Err(StoreError::Invalid("parent chain too long".into()));
            }
        }
        Ok(ids)
    }

    fn mounts_of(&self, st: &State, s: &Snap) -> Result<Vec<Mount>, StoreError> {
        let parents = Self::chain(st, &s.parent)?;
        let fs = |id: u64| self.dir(id).join("fs").display().to_string();
        let bind = |src: String, ro: bool| Mount {
            typ: "bind".into(),
            source: src,
            options: vec!["rbind".into(), if ro { "ro" } else { "rw" }.into()],
        };
        let lower = parents
            .iter()
            .map(|id| fs(*id))
            .collect::<Vec<_>>()
            .join(":");
        Ok(match (s.kind, parents.len()) {
            (Kind::Active, 0) => vec![bind(fs(s.id), false)],
            (Kind::Active, _) => vec![Mount {
                typ: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    format!("workdir={}", self.dir(s.id).join("work").display()),
                    format!("upperdir={}", fs(s.id)),
                    format!("lowerdir={lower}"),
                ],
            }],
            (_, 0) => vec![bind(fs(s.id), true)],
            (_, 1) => vec![bind(fs(parents[0]), true)],
            (_, _) => vec![Mount {
                typ: "overlay".into(),
                source: "overlay".into(),
                options: vec![format!("lowerdir={lower}")],
            }],
        })
    }

    /// Prepare (`Active`) or View: a new snapshot on `parent`.
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, StoreError> {
        if key.is_empty() {
            return Err(StoreError::Invalid("a snapshot needs a key".into()));
        }
        let mut st = self.lock();
        if st.snaps.contains_key(key) {
            return Err(StoreError::AlreadyExists(key.into()));
        }
        if !parent.is_empty() {
            match st.snaps.get(parent) {
                None => return Err(StoreError::NotFound(parent.into())),
                Some(p) if p.kind != Kind::Committed => {
                    return Err(StoreError::FailedPrecondition(format!(
                        "parent {parent} is not committed"
                    )));
                }
                _ => {}
            }
        }
        st.next_id += 1;
        let id = st.next_id;
        let dir = self.dir(id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("fs"))
            .map_err(io(format!("creating {}", dir.display())))?;
        if kind == Kind::Active {
            std::fs::create_dir_all(dir.join("work")).map_err(io("creating the work dir"))?;
        }
        let t = now();
        let snap = Snap {
            id,
            kind,
            parent: parent.into(),
            labels,
            created: t,
            updated: t,
        };
        let mounts = self.mounts_of(&st, &snap)?;
        st.snaps.insert(key.into(), snap);
        if let Err(e) = self.save(&st) {
            st.snaps.remove(key);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(mounts)
    }

    /// A committed snapshot whose content lives elsewhere (the layers of
    /// an image pulled inside the pod VM): an empty directory.
    pub fn commit_remote(
        &self,
        name: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        self.create(Kind::Committed, name, parent, labels)
            .map(|_| ())
    }

    /// The mounts of `key`.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>, StoreError> {
        let st = self.lock();
        let s = st
            .snaps
            .get(key)
            .ok_or_else(|| StoreError::NotFound(key.into()))?;
        self.mounts_of(&st, s)
    }

    /// Commits active `key` as `name`.
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let mut st = self.lock();
        if st.snaps.contains_key(name) {
            return Err(StoreError::AlreadyExists(name.into()));
        }
        let mut s = st
            .snaps
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(key.into()))?;
        if s.kind != Kind::Active {
            return Err(StoreError::FailedPrecondition(format!(
                "snapshot {key} is not active"
            )));
        }
        s.kind = Kind::Committed;
        s.updated = now();
        s.labels.extend(labels);
        st.snaps.remove(key);
        st.snaps.insert(name.into(), s);
        self.save(&st)?;
        Ok(())
    }

    /// Removes `key` (not while it has children).
    pub fn remove(&self, key: &str) -> Result<(), StoreError> {
        let mut st = self.lock();
        let s = st
            .snaps
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(key.into()))?;
        if st.snaps.values().any(|c| c.parent == key) {
            return Err(StoreError::FailedPrecondition(format!(
                "snapshot {key} has children"
            )));
        }
        st.snaps.remove(key);
        self.save(&st)?;
        drop(st);
        let _ = std::fs::remove_dir_all(self.dir(s.id));
        Ok(())
    }

    /// The metadata of `key`.
    pub fn stat(&self, key: &str) -> Result<Snap, StoreError> {
        self.lock()
            .snaps
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(key.into()))
    }

    /// Replaces labels: all of them (`paths` empty or `labels`), or the
    /// ones named `labels.KEY`.
    pub fn update_labels(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Snap, StoreError> {
        let mut st = self.lock();
        let s = st
            .snaps
            .get_mut(key)
            .ok_or_else(|| StoreError::NotFound(key.into()))?;
        if paths.is_empty() || paths.iter().any(|p| p == "labels") {
            s.labels = labels;
        } else {
            for p in paths {
                let Some(k) = p.strip_prefix("labels.") else {
                    return Err(StoreError::Invalid(format!("cannot update field {p}")));
                };
                match labels.get(k) {
                    Some(v) => {
                        s.labels.insert(k.into(), v.clone());
                    }
                    None => {
                        s.labels.remove(k);
                    }
                }
            }
        }
        s.updated = now();
        let out = s.clone();
        self.save(&st)?;
        Ok(out)
    }

    /// Every snapshot.
    pub fn list(&self) -> Vec<(String, Snap)> {
        self.lock()
            .snaps
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Bytes and inodes used by `key`'s own directory.
    pub fn usage(&self, key: &str) -> Result<(i64, i64), StoreError> {
        let id = self.stat(key)?.id;
        let mut size = 0i64;
        let mut inodes = 0i64;
        let mut stack = vec![self.dir(id).join("fs")];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                inodes += 1;
                if let Ok(m) = e.path().symlink_metadata() {
                    if m.is_dir() {
                        stack.push(e.path());
                    } else {
                        size += m.len() as i64;
                    }
                }
            }
        }
        Ok((size, inodes))
    }

    /// Removes directories no snapshot owns (left by a crash).
    pub fn cleanup(&self) -> Result<(), StoreError> {
        let st = self.lock();
        let owned: std::collections::HashSet<String> =
            st.snaps.values().map(|s| s.id.to_string()).collect();
        let rd = std::fs::read_dir(self.root.join("snapshots")).map_err(io("listing snapshots"))?;
        for e in rd.flatten() {
            if !owned.contains(&e.file_name().to_string_lossy().to_string()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::labels;

    #[test]
    fn layers_stack_as_overlays_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let m = s.create(Kind::Active, "x1", "", BTreeMap::new()).unwrap();
        assert_eq!(m[0].typ, "bind");
        assert!(m[0].options.contains(&"rw".to_string()));
        s.commit("l1", "x1", labels(&[("a", "b")])).unwrap();
        s.create(Kind::Active, "x2", "l1", BTreeMap::new()).unwrap();
        s.commit("l2", "x2", BTreeMap::new()).unwrap();
        let m = s.create(Kind::Active, "c", "l2", BTreeMap::new()).unwrap();
        assert_eq!(m[0].typ, "overlay");
        let lower = m[0]
            .options
            .iter()
            .find(|o| o.starts_with("lowerdir="))
            .unwrap();
        // Nearest parent first.
        let snaps = dir.path().join("snapshots");
        assert_eq!(
            lower,
            &format!(
                "lowerdir={}:{}",
                snaps.join("2/fs").display(),
                snaps.join("1/fs").display()
            )
        );
        let v = s.create(Kind::View, "v", "l1", BTreeMap::new()).unwrap();
        assert_eq!(
            (v[0].typ.as_str(), v[0].options[1].as_str()),
            ("bind", "ro")
        );
        // A committed parent with children cannot go; errors name the case.
        assert!(matches!(
            s.remove("l1"),
            Err(StoreError::FailedPrecondition(_))
        ));
        assert!(matches!(
            s.create(Kind::Active, "c", "l2", BTreeMap::new()),
            Err(StoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            s.create(Kind::Active, "d", "nope", BTreeMap::new()),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            s.create(Kind::Active, "d", "c", BTreeMap::new()),
            Err(StoreError::FailedPrecondition(_))
        ));
        assert!(matches!(
            s.commit("l3", "l2", BTreeMap::new()),
            Err(StoreError::FailedPrecondition(_))
        ));
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.stat("l1").unwrap().labels, labels(&[("a", "b")]));
        assert_eq!(s.mounts("c").unwrap(), m);
        s.remove("c").unwrap();
        s.remove("v").unwrap();
        s.remove("l2").unwrap();
        assert!(!dir.path().join("snapshots/2").exists());
        assert_eq!(s.list().len(), 1);
    }

    #[test]
    fn labels_update_by_field_path() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.create(Kind::Active, "a", "", labels(&[("x", "1"), ("y", "2")]))
            .unwrap();
        let out = s
            .update_labels(
                "a",
                labels(&[("y", "3")]),
                &["labels.y".into(), "labels.x".into()],
            )
            .unwrap();
        assert_eq!(out.labels, labels(&[("y", "3")]));
        assert!(
            s.update_labels("a", BTreeMap::new(), &["kind".into()])
                .is_err()
        );
        let out = s.update_labels("a", labels(&[("z", "9")]), &[]).unwrap();
        assert_eq!(out.labels, labels(&[("z", "9")]));
    }

    #[test]
    fn damaged_metadata_is_reported_not_discarded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(METADATA), b"{not json").unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(
            std::fs::read(dir.path().join(METADATA)).unwrap(),
            b"{not json"
        );
    }
}
