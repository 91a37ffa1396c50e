//! containerd's configuration as the node installer edits it: the runtime
//! handlers and the proxy snapshotter, in the version 2 schema of
//! containerd 1.6/1.7 (an edit of `config.toml`) and the version 3 schema
//! of containerd 2.x (a file of ours, reached through an `imports` entry
//! or the drop-in directory). Pure text in, text out: the caller does the
//! files, the backup and the restart.

use anyhow::{Context, Result, bail};
use std::path::Path;
use toml_edit::{Array, DocumentMut, Item, Table, Value, value};

/// The CRI plugin of the version 2 schema (containerd 1.x).
const CRI_V2: &str = "io.containerd.grpc.v1.cri";
/// The CRI runtime plugin of the version 3 schema (containerd 2.x).
const CRI_V3_RUNTIME: &str = "io.containerd.cri.v1.runtime";
/// The CRI image plugin of the version 3 schema.
const CRI_V3_IMAGES: &str = "io.containerd.cri.v1.images";

/// The containerd release a node runs, as far as its configuration cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
}

impl Version {
    /// Parses `1.6.20~ds1`, `v2.1.4`, `2.2.0-rc.1` and the like.
    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim().trim_start_matches('v');
        let mut parts = t.split(|c: char| !c.is_ascii_digit());
        let major = parts.next().and_then(|p| p.parse().ok());
        let minor = parts.next().and_then(|p| p.parse().ok());
        match (major, minor) {
            (Some(major), Some(minor)) => Ok(Self { major, minor }),
            _ => bail!("cannot read a containerd version from {text:?}"),
        }
    }

    /// Whether CRI takes a snapshotter per runtime handler (1.7 and later).
    pub fn per_runtime_snapshotter(self) -> bool {
        self >= Self { major: 1, minor: 7 }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Where the handlers are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// containerd 1.x: `config.toml` itself, after a backup (its imports
    /// replace whole plugin tables, so a drop-in would wipe the CRI
    /// settings the node has).
    EditV2,
    /// containerd 2.x: a file of ours named in `config.toml`'s `imports`.
    Import,
    /// containerd 2.x whose `config.toml` already imports a drop-in
    /// directory (2.2's default `/etc/containerd/conf.d/*.toml`): a file
    /// there, and `config.toml` untouched.
    DropIn,
}

/// How the handlers reach a containerd of `version` whose `config.toml`
/// is `main` (none: no file). containerd follows only the `imports` of the
/// files it reads, so the drop-in directory counts only where the main
/// file lists it.
pub fn layout(version: Version, main: Option<&str>, dropin_file: &str) -> Result<Layout> {
    if version.major < 2 {
        return Ok(Layout::EditV2);
    }
    let Some(main) = main else {
        return Ok(Layout::Import);
    };
    let doc = parse(main, "containerd's config.toml")?;
    let covered = imports(&doc)
        .iter()
        .any(|e| is_glob(e) && glob_matches(e, dropin_file));
    Ok(if covered {
        Layout::DropIn
    } else {
        Layout::Import
    })
}

/// `pattern` (containerd's `filepath.Glob`: `*`, `?` within one path
/// component) against `path`. Brackets are taken literally.
fn glob_matches(pattern: &str, path: &str) -> bool {
    fn m(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => m(&p[1..], s) || (!s.is_empty() && s[0] != b'/' && m(p, &s[1..])),
            (Some(b'?'), Some(c)) if *c != b'/' => m(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => m(&p[1..], &s[1..]),
            _ => false,
        }
    }
    m(pattern.as_bytes(), path.as_bytes())
}

/// One runtime handler (a RuntimeClass's `handler`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    pub name: String,
    /// The shim configuration it passes as the `ConfigPath` option.
    pub config_path: String,
}

/// What the installer adds to containerd's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The shim binary on the host (`runtime_path`).
    pub shim_path: String,
    pub handlers: Vec<Handler>,
    /// The guest-pull proxy snapshotter: its name and socket.
    pub snapshotter: Option<(String, String)>,
    /// Whether the handlers name the snapshotter (CRI 1.7+).
    pub per_runtime_snapshotter: bool,
}

/// The runtime type containerd derives the shim's name from.
pub const RUNTIME_TYPE: &str = "io.containerd.cocoon.v2";

/// Marks the comment over each table the installer adds.
const MARK: &str = "# added by cocoon node install; cocoon node uninstall removes it\n";

fn parse(text: &str, what: &str) -> Result<DocumentMut> {
    text.parse::<DocumentMut>()
        .with_context(|| format!("{what} is not valid TOML"))
}

/// The schema version a configuration declares (1 when it declares none,
/// as containerd reads it).
pub fn schema(doc: &DocumentMut) -> Result<i64> {
    match doc.get("version") {
        None => Ok(1),
        Some(v) => v
            .as_integer()
            .context("containerd's `version` is not an integer"),
    }
}

/// Refuses a configuration that switches CRI off (as the `containerd.io`
/// package ships it for Docker): kubelet could not use its handlers.
pub fn check_cri_enabled(doc: &DocumentMut) -> Result<()> {
    let disabled = doc
        .get("disabled_plugins")
        .and_then(Item::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .find(|p| {
            matches!(
                *p,
                "cri" | "io.containerd.grpc.v1.cri" | "io.containerd.cri.v1.runtime"
            )
        });
    if let Some(p) = disabled {
        bail!(
            "containerd's configuration disables CRI (disabled_plugins has {p:?}), so kubelet \
             cannot use it: enable CRI first"
        );
    }
    Ok(())
}

/// The table at `path`, made (implicit, so no empty header is printed)
/// where it is missing.
fn table_at<'a>(root: &'a mut Table, path: &[&str]) -> Result<&'a mut Table> {
    let mut t = root;
    for (i, key) in path.iter().enumerate() {
        let item = t.entry(key).or_insert_with(|| {
            let mut n = Table::new();
            n.set_implicit(true);
            Item::Table(n)
        });
        if let Item::Value(Value::InlineTable(_)) = item {
            // An inline table cannot take a sub-table header: turn it into
            // a regular table with the same keys.
            let inline = std::mem::take(item).into_table().expect("inline table");
            *item = Item::Table(inline);
        }
        t = item.as_table_mut().with_context(|| {
            format!(
                "`{}` in containerd's configuration is not a table",
                path[..=i].join(".")
            )
        })?;
    }
    Ok(t)
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().copied().collect::<Array>())
}

/// The runtime table of one handler.
fn runtime_table(s: &Settings, h: &Handler) -> Table {
    let mut t = Table::new();
    t.decor_mut().set_prefix(format!("\n{MARK}"));
    t.insert("runtime_type", value(RUNTIME_TYPE));
    t.insert("runtime_path", value(s.shim_path.as_str()));
    t.insert(
        "pod_annotations",
        Item::Value(strings(&["io.katacontainers.*"])),
    );
    // The VM shares no host devices: a privileged pod must not get them.
    t.insert("privileged_without_host_devices", value(true));
    if let (Some((name, _)), true) = (&s.snapshotter, s.per_runtime_snapshotter) {
        t.insert("snapshotter", value(name.as_str()));
    }
    let mut opts = Table::new();
    opts.insert("ConfigPath", value(h.config_path.as_str()));
    t.insert("options", Item::Table(opts));
    t
}

/// containerd's own default runtime, as its defaults define it: a
/// configuration that names any runtime replaces the whole default set,
/// so one that relied on the built-in `runc` must now name it too.
fn runc_table() -> Table {
    let mut t = Table::new();
    t.decor_mut().set_prefix(format!("\n{MARK}"));
    t.insert("runtime_type", value("io.containerd.runc.v2"));
    t
}

/// Whether the configuration relies on containerd's built-in `runc` (no
/// runtime table of the default runtime's name); a default runtime other
/// than `runc` that has no table is an error containerd would report too.
fn missing_default_runtime(doc: &DocumentMut, cri: &str) -> Result<bool> {
    let containerd = doc
        .get("plugins")
        .and_then(|p| p.get(cri))
        .and_then(|c| c.get("containerd"));
    let default = containerd
        .and_then(|c| c.get("default_runtime_name"))
        .and_then(Item::as_str)
        .unwrap_or("runc");
    let has = containerd
        .and_then(|c| c.get("runtimes"))
        .and_then(|r| r.get(default))
        .is_some();
    match (has, default) {
        (true, _) => Ok(false),
        (false, "runc") => Ok(true),
        (false, other) => bail!(
            "containerd's default runtime {other:?} has no entry under `containerd.runtimes`: \
             containerd would not start CRI with it"
        ),
    }
}

fn proxy_table(address: &str) -> Table {
    let mut t = Table::new();
    t.decor_mut().set_prefix(format!("\n{MARK}"));
    t.insert("type", value("snapshot"));
    t.insert("address", value(address));
    t
}

/// Puts the handlers into a `runtimes` table (and `runc`, where the file
/// relied on the built-in one). A handler of the same name already there
/// is someone else's: a conflict, not something to overwrite.
fn put_runtimes(runtimes: &mut Table, s: &Settings, runc: bool) -> Result<()> {
    if runc {
        runtimes.insert("runc", Item::Table(runc_table()));
    }
    for h in &s.handlers {
        if runtimes.contains_key(&h.name) {
            bail!(
                "containerd already has a runtime handler named {:?} that cocoon did not install: \
                 remove it or choose other handler names",
                h.name
            );
        }
        runtimes.insert(&h.name, Item::Table(runtime_table(s, h)));
    }
    Ok(())
}

/// Registers the proxy snapshotter, where the handlers name it.
fn put_proxy(root: &mut Table, s: &Settings) -> Result<()> {
    if let (Some((name, address)), true) = (&s.snapshotter, s.per_runtime_snapshotter) {
        let proxies = table_at(root, &["proxy_plugins"])?;
        if proxies.contains_key(name) {
            bail!(
                "containerd already has a proxy plugin named {name:?} that cocoon did not install"
            );
        }
        proxies.insert(name, Item::Table(proxy_table(address)));
    }
    Ok(())
}

/// Adds the handlers (and the snapshotter) to a version 2 `config.toml`
/// without them. A handler of the same name already there is someone
/// else's: a conflict, not something to overwrite.
pub fn add_v2(original: &str, s: &Settings) -> Result<String> {
    let mut doc = parse(original, "containerd's config.toml")?;
    match schema(&doc)? {
        2 => {}
        1 => bail!(
            "containerd's config.toml uses the version 1 schema (no `version = 2`): \
             convert it to version 2 first (`containerd config migrate` or by hand)"
        ),
        n => bail!(
            "containerd's config.toml declares version {n}, which containerd 1.x does not read"
        ),
    }
    let runc = missing_default_runtime(&doc, CRI_V2)?;
    let runtimes = table_at(
        doc.as_table_mut(),
        &["plugins", CRI_V2, "containerd", "runtimes"],
    )?;
    put_runtimes(runtimes, s, runc)?;
    put_proxy(doc.as_table_mut(), s)?;
    let out = doc.to_string();
    // What containerd will parse must parse.
    parse(&out, "the edited config.toml").map(|_| out)
}

/// Removes what [`add_v2`] added (for a configuration edited since, so the
/// backup cannot simply be put back), leaving everything else as it is.
pub fn remove_v2(current: &str, handlers: &[String], snapshotter: Option<&str>) -> Result<String> {
    let mut doc = parse(current, "containerd's config.toml")?;
    let root = doc.as_table_mut();
    let path = ["plugins", CRI_V2, "containerd", "runtimes"];
    if let Some(runtimes) = get_table(root, &path) {
        for h in handlers {
            runtimes.remove(h);
        }
        let added_runc = runtimes
            .get("runc")
            .and_then(Item::as_table)
            .and_then(|t| t.decor().prefix())
            .and_then(|p| p.as_str())
            .is_some_and(|p| p.contains(MARK.trim_end()));
        if added_runc {
            runtimes.remove("runc");
        }
    }
    prune_empty_implicit(root, &path);
    if let Some(name) = snapshotter {
        if let Some(p) = get_table(root, &["proxy_plugins"]) {
            p.remove(name);
        }
        prune_empty_implicit(root, &["proxy_plugins"]);
    }
    Ok(doc.to_string())
}

fn get_table<'a>(root: &'a mut Table, path: &[&str]) -> Option<&'a mut Table> {
    let mut t = root;
    for key in path {
        t = t.get_mut(key)?.as_table_mut()?;
    }
    Some(t)
}

/// Drops the tables along `path` that are empty and were never written
/// out by a header of their own (the ones [`table_at`] made).
fn prune_empty_implicit(root: &mut Table, path: &[&str]) {
    for depth in (1..=path.len()).rev() {
        let (parent_path, last) = path[..depth].split_at(depth - 1);
        let Some(parent) = get_table(root, parent_path) else {
            continue;
        };
        let empty_implicit = parent
            .get(last[0])
            .and_then(Item::as_table)
            .is_some_and(|t| t.is_empty() && t.is_implicit());
        if empty_implicit {
            parent.remove(last[0]);
        }
    }
}

/// The file of ours containerd 2.x imports, in the schema of the main
/// file: containerd 2.0-2.2 migrate the merged configuration once, by the
/// last file's version, so a version 3 import under a version 2 main file
/// would leave the main file's settings unmigrated (and ignored).
pub fn handler_file(s: &Settings, schema: i64, main: Option<&str>) -> Result<String> {
    let mut doc = DocumentMut::new();
    doc.decor_mut()
        .set_prefix("# Written by cocoon node install; cocoon node uninstall removes it.\n");
    doc.insert("version", value(schema));
    let root = doc.as_table_mut();
    let cri = if schema >= 3 { CRI_V3_RUNTIME } else { CRI_V2 };
    let runc = match main {
        Some(m) => missing_default_runtime(&parse(m, "containerd's config.toml")?, cri)?,
        None => true,
    };
    put_runtimes(
        table_at(root, &["plugins", cri, "containerd", "runtimes"])?,
        s,
        runc,
    )?;
    if let (Some((name, _)), true, true) = (&s.snapshotter, s.per_runtime_snapshotter, schema >= 3)
    {
        // containerd 2.0-2.2 pull with the image plugin's platform entry of
        // the handler, not the runtime's `snapshotter`.
        let platforms = table_at(root, &["plugins", CRI_V3_IMAGES, "runtime_platforms"])?;
        for h in &s.handlers {
            let mut t = Table::new();
            t.insert("platform", value("linux/amd64"));
            t.insert("snapshotter", value(name.as_str()));
            platforms.insert(&h.name, Item::Table(t));
        }
    }
    put_proxy(root, s)?;
    Ok(doc.to_string())
}

/// What an `imports` entry check found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Imports {
    /// The new configuration text.
    pub text: String,
    /// Entries of an earlier install whose file is gone: removed.
    pub repaired: Vec<String>,
}

/// The `imports` entries of a configuration.
pub fn imports(doc: &DocumentMut) -> Vec<String> {
    doc.get("imports")
        .and_then(Item::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether an import entry is a glob (containerd expands those, and a glob
/// matching nothing is fine; a plain path must exist).
fn is_glob(entry: &str) -> bool {
    entry.contains(['*', '?', '['])
}

/// Puts `ours` (if any) last in `imports` (containerd 2.0/2.1). Entries of
/// an earlier install (`is_ours`) whose file is gone are removed rather
/// than left to stop containerd; anyone else's missing file is an error,
/// since containerd would not start with it either. `original` is `None`
/// for a node without a `config.toml` (one is made that only imports ours).
pub fn set_imports(
    original: Option<&str>,
    ours: Option<&str>,
    is_ours: impl Fn(&str) -> bool,
    exists: impl Fn(&str) -> bool,
) -> Result<Imports> {
    let Some(original) = original else {
        let text = match ours {
            Some(o) => format!("version = 3\n{MARK}imports = [\"{o}\"]\n"),
            None => "version = 3\n".into(),
        };
        return Ok(Imports {
            text,
            repaired: vec![],
        });
    };
    let mut doc = parse(original, "containerd's config.toml")?;
    let mut repaired = vec![];
    for entry in imports(&doc) {
        if Some(entry.as_str()) != ours && !is_glob(&entry) && !exists(&entry) {
            if !is_ours(&entry) {
                bail!(
                    "containerd's config.toml imports {entry}, which does not exist: containerd \
                     would not start with it. Remove the entry (or restore the file) and install again"
                );
            }
            repaired.push(entry);
        }
    }
    // Edited in place, so the other entries keep their quoting and layout.
    let drop = |v: &Value| {
        v.as_str()
            .is_some_and(|e| Some(e) == ours || repaired.iter().any(|r| r == e))
    };
    match doc.get_mut("imports") {
        Some(Item::Value(Value::Array(a))) => {
            a.retain(|v| !drop(v));
            if let Some(o) = ours {
                a.push(o);
            }
        }
        Some(_) => bail!("containerd's `imports` is not an array of paths"),
        None => {
            if let Some(o) = ours {
                // A top-level key must come before the first table: rebuild
                // the document with `imports` first.
                let mut fresh = DocumentMut::new();
                fresh.insert("imports", Item::Value(strings(&[o])));
                if let Some(mut k) = fresh.key_mut("imports") {
                    k.leaf_decor_mut().set_prefix(MARK);
                }
                for (k, item) in doc.as_table().iter() {
                    fresh.insert(k, item.clone());
                }
                *fresh.decor_mut() = doc.decor().clone();
                doc = fresh;
            }
        }
    }
    let out = doc.to_string();
    parse(&out, "the edited config.toml").map(|_| Imports {
        text: out,
        repaired,
    })
}

/// Removes the `imports` entry `ours` (and an `imports` array that only
/// held it when it was the installer that added the key).
pub fn remove_import(current: &str, ours: &str) -> Result<String> {
    let mut doc = parse(current, "containerd's config.toml")?;
    let mut drop_key = false;
    if let Some(Item::Value(Value::Array(a))) = doc.get_mut("imports") {
        a.retain(|v| v.as_str() != Some(ours));
        drop_key = a.is_empty();
    }
    if drop_key
        && doc
            .key("imports")
            .and_then(|k| k.leaf_decor().prefix())
            .and_then(|p| p.as_str())
            .is_some_and(|p| p.contains(MARK.trim_end()))
    {
        doc.remove("imports");
    }
    Ok(doc.to_string())
}

/// The runtimes a containerd configuration (as CRI reports it in its
/// verbose status, JSON) offers, with their runtime types.
pub fn cri_runtimes(status_config: &str) -> Result<Vec<(String, String)>> {
    let v: serde_json::Value =
        serde_json::from_str(status_config).context("CRI's status config is not JSON")?;
    let runtimes = v
        .pointer("/containerd/runtimes")
        .and_then(|r| r.as_object())
        .context("CRI's status config lists no runtimes")?;
    Ok(runtimes
        .iter()
        .map(|(k, r)| {
            let ty = r
                .get("runtimeType")
                .or_else(|| r.get("runtime_type"))
                .and_then(|t| t.as_str())
                .unwrap_or_default();
            (k.clone(), ty.to_string())
        })
        .collect())
}

/// The files a configuration's imports resolve to that are missing (plain
/// paths only), for `status`.
pub fn missing_imports(text: &str, exists: impl Fn(&str) -> bool) -> Vec<String> {
    parse(text, "containerd's config.toml")
        .map(|d| imports(&d))
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !is_glob(e) && !exists(e))
        .collect()
}

/// Whether an `imports` entry is a file an install of ours made (under
/// this prefix, or a `cocoon*` file of an install with another prefix).
pub fn is_our_import(prefix: &Path, entry: &str) -> bool {
    Path::new(entry).starts_with(prefix)
        || Path::new(entry)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("cocoon"))
}
