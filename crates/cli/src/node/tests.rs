//! containerd configuration edits against the stock configurations of
//! each release (`fixtures/`: `containerd config default` output and the
//! files distribution packages ship).

use super::containerd::*;
use toml_edit::DocumentMut;

const DEBIAN_16: &str = include_str!("fixtures/1.6-debian-package.toml");
const DEFAULT_16: &str = include_str!("fixtures/1.6-default.toml");
const DEFAULT_17: &str = include_str!("fixtures/1.7-default.toml");
const DEFAULT_20: &str = include_str!("fixtures/2.0-default.toml");
const DEFAULT_21: &str = include_str!("fixtures/2.1-default.toml");
const DEFAULT_22: &str = include_str!("fixtures/2.2-default.toml");
const DOCKER_21: &str = include_str!("fixtures/2.1-containerd.io-package.toml");

fn settings(snapshotter: bool, per_runtime: bool) -> Settings {
    Settings {
        shim_path: "/opt/cocoon/bin/containerd-shim-cocoon-v2".into(),
        handlers: ["cocoon", "cocoon-tdx"]
            .iter()
            .map(|h| Handler {
                name: h.to_string(),
                config_path: format!("/opt/cocoon/etc/{h}.toml"),
            })
            .collect(),
        snapshotter: snapshotter.then(|| ("cocoon".into(), "/run/cocoon/snapshotter.sock".into())),
        per_runtime_snapshotter: per_runtime,
    }
}

fn doc(t: &str) -> DocumentMut {
    t.parse().unwrap()
}

/// The runtime table of `handler` under the CRI plugin `cri`.
fn runtime<'a>(d: &'a DocumentMut, cri: &str, handler: &str) -> &'a toml_edit::Item {
    &d["plugins"][cri]["containerd"]["runtimes"][handler]
}

/// Every key of `a` is in `b` with the same value (tables compared deep),
/// but the top-level `imports`.
fn contained(a: &toml_edit::Table, b: &toml_edit::Table, path: &str) {
    for (k, v) in a.iter() {
        if k == "imports" && !path.contains('/') {
            continue;
        }
        let w = b.get(k).unwrap_or_else(|| panic!("{path}/{k} was lost"));
        match (v.as_table_like(), w.as_table_like()) {
            (Some(_), Some(_)) => {
                let (Some(x), Some(y)) = (v.as_table(), w.as_table()) else {
                    continue;
                };
                contained(x, y, &format!("{path}/{k}"));
            }
            _ => assert_eq!(
                v.as_value().map(|x| x.to_string().trim().to_string()),
                w.as_value().map(|x| x.to_string().trim().to_string()),
                "{path}/{k} changed"
            ),
        }
    }
}

#[test]
fn versions_are_read_from_what_containerd_reports() {
    assert_eq!(
        Version::parse("1.6.20~ds1").unwrap(),
        Version { major: 1, minor: 6 }
    );
    assert_eq!(
        Version::parse("v2.1.4").unwrap(),
        Version { major: 2, minor: 1 }
    );
    assert_eq!(
        Version::parse("2.2.0-rc.1").unwrap(),
        Version { major: 2, minor: 2 }
    );
    assert!(Version::parse("containerd").is_err());
    assert!(!Version::parse("1.6.20").unwrap().per_runtime_snapshotter());
    assert!(Version::parse("1.7.0").unwrap().per_runtime_snapshotter());
}

#[test]
fn version_2_configs_get_the_handlers_and_keep_everything_else() {
    for (name, stock, per_runtime) in [
        ("debian 1.6", DEBIAN_16, false),
        ("1.6 default", DEFAULT_16, false),
        ("1.7 default", DEFAULT_17, true),
    ] {
        let s = settings(per_runtime, per_runtime);
        let out = add_v2(stock, &s).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let d = doc(&out);
        contained(doc(stock).as_table(), d.as_table(), name);
        let r = runtime(&d, "io.containerd.grpc.v1.cri", "cocoon");
        assert_eq!(
            r["runtime_type"].as_str(),
            Some("io.containerd.cocoon.v2"),
            "{name}"
        );
        assert_eq!(
            r["runtime_path"].as_str(),
            Some("/opt/cocoon/bin/containerd-shim-cocoon-v2"),
            "{name}"
        );
        assert_eq!(
            r["options"]["ConfigPath"].as_str(),
            Some("/opt/cocoon/etc/cocoon.toml")
        );
        assert_eq!(r["pod_annotations"].as_array().unwrap().len(), 1);
        assert_eq!(r["privileged_without_host_devices"].as_bool(), Some(true));
        assert!(runtime(&d, "io.containerd.grpc.v1.cri", "cocoon-tdx").is_table());
        // runc is named (added where the file relied on the built-in one)
        // and is still the default.
        assert_eq!(
            runtime(&d, "io.containerd.grpc.v1.cri", "runc")["runtime_type"].as_str(),
            Some("io.containerd.runc.v2"),
            "{name}"
        );
        let cri = |d: &DocumentMut| {
            d["plugins"]["io.containerd.grpc.v1.cri"]
                .get("containerd")
                .cloned()
        };
        if let Some(before) = cri(&doc(stock)) {
            let after = cri(&d).unwrap();
            assert!(after["runtimes"]["runc"].is_table(), "{name}");
            assert_eq!(
                before["default_runtime_name"].as_str(),
                after["default_runtime_name"].as_str()
            );
        }
        // 1.7 names the snapshotter on the handler and registers it.
        assert_eq!(
            r.get("snapshotter").and_then(|x| x.as_str()),
            per_runtime.then_some("cocoon")
        );
        assert_eq!(
            d.get("proxy_plugins")
                .and_then(|p| p.get("cocoon"))
                .is_some(),
            per_runtime,
            "{name}"
        );
        // The edit is only additions: the original's lines all remain, in order.
        let mut lines = out.lines();
        for l in stock.lines() {
            assert!(lines.any(|o| o == l), "{name}: line {l:?} lost or moved");
        }
        // Taking the entries out again gives the stock file back, byte for byte.
        let back = remove_v2(
            &out,
            &["cocoon".into(), "cocoon-tdx".into()],
            per_runtime.then_some("cocoon"),
        )
        .unwrap();
        assert_eq!(
            back, stock,
            "{name}: removal is not the inverse of the edit"
        );
    }
}

#[test]
fn a_handler_of_someone_else_or_an_old_schema_is_refused() {
    let once = add_v2(DEBIAN_16, &settings(false, false)).unwrap();
    let e = add_v2(&once, &settings(false, false))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("already has a runtime handler named \"cocoon\""),
        "{e}"
    );
    let v1 = "[plugins.cri]\n  sandbox_image = \"x\"\n";
    let e = add_v2(v1, &settings(false, false)).unwrap_err().to_string();
    assert!(e.contains("version 1 schema"), "{e}");
    let e = add_v2("version = 2\n[plugins\n", &settings(false, false)).unwrap_err();
    assert!(format!("{e:#}").contains("not valid TOML"), "{e:#}");
    // A CRI table written inline cannot be nested into by accident: it
    // becomes a regular table with the same keys.
    let inline =
        "version = 2\n[plugins]\n  \"io.containerd.grpc.v1.cri\" = { sandbox_image = \"p\" }\n";
    let out = add_v2(inline, &settings(false, false)).unwrap();
    let d = doc(&out);
    assert_eq!(
        d["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"].as_str(),
        Some("p")
    );
    assert!(runtime(&d, "io.containerd.grpc.v1.cri", "cocoon").is_table());
    // CRI switched off: nothing to add handlers to.
    let e = check_cri_enabled(&doc(DOCKER_21)).unwrap_err().to_string();
    assert!(e.contains("disables CRI"), "{e}");
    check_cri_enabled(&doc(DEFAULT_21)).unwrap();
}

#[test]
fn containerd_2_reaches_the_handlers_as_its_main_file_allows() {
    let v = |s| Version::parse(s).unwrap();
    let dropin = "/etc/containerd/conf.d/cocoon.toml";
    assert_eq!(
        layout(v("1.7.2"), Some(DEFAULT_17), dropin).unwrap(),
        Layout::EditV2
    );
    assert_eq!(
        layout(v("2.0.0"), Some(DEFAULT_20), dropin).unwrap(),
        Layout::Import
    );
    assert_eq!(
        layout(v("2.1.5"), Some(DEFAULT_21), dropin).unwrap(),
        Layout::Import
    );
    assert_eq!(
        layout(v("2.2.1"), Some(DEFAULT_22), dropin).unwrap(),
        Layout::DropIn
    );
    // 2.2 reads conf.d only where the main file lists it.
    assert_eq!(
        layout(v("2.2.1"), Some(DEFAULT_21), dropin).unwrap(),
        Layout::Import
    );
    assert_eq!(layout(v("2.2.1"), None, dropin).unwrap(), Layout::Import);
    assert_eq!(
        layout(
            v("2.2.1"),
            Some(DEFAULT_22),
            "/etc/containerd/other/cocoon.toml"
        )
        .unwrap(),
        Layout::Import
    );
}

#[test]
fn containerd_2_imports_are_added_and_removed_exactly() {
    let ours = "/opt/cocoon/etc/cocoon-containerd.toml";
    let none_missing = |_: &str| true;
    for (name, stock) in [
        ("2.0", DEFAULT_20),
        ("2.1", DEFAULT_21),
        ("2.2", DEFAULT_22),
    ] {
        let out = set_imports(Some(stock), Some(ours), |_| false, none_missing).unwrap();
        assert!(out.repaired.is_empty());
        let d = doc(&out.text);
        let list = imports(&d);
        assert_eq!(list.last().map(String::as_str), Some(ours), "{name}");
        assert_eq!(
            list.len(),
            imports(&doc(stock)).len() + 1,
            "{name}: other imports kept"
        );
        contained(doc(stock).as_table(), d.as_table(), name);
        // Twice is once.
        let again = set_imports(Some(&out.text), Some(ours), |_| false, none_missing).unwrap();
        assert_eq!(again.text, out.text, "{name}");
        assert_eq!(remove_import(&out.text, ours).unwrap(), stock, "{name}");
    }
    // A version 3 file without `imports` gets it before its first table.
    let bare =
        "version = 3\n\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'overlayfs'\n";
    let out = set_imports(Some(bare), Some(ours), |_| false, none_missing).unwrap();
    let d = doc(&out.text);
    assert_eq!(imports(&d), vec![ours.to_string()]);
    assert_eq!(
        d["plugins"]["io.containerd.cri.v1.images"]["snapshotter"].as_str(),
        Some("overlayfs")
    );
    assert_eq!(
        remove_import(&out.text, ours)
            .unwrap()
            .parse::<DocumentMut>()
            .unwrap()
            .to_string(),
        doc(bare).to_string()
    );
    assert!(
        doc(&remove_import(&out.text, ours).unwrap())
            .get("imports")
            .is_none()
    );
    // No file at all: one that imports ours.
    let made = set_imports(None, Some(ours), |_| false, none_missing).unwrap();
    assert_eq!(imports(&doc(&made.text)), vec![ours.to_string()]);
}

#[test]
fn a_stale_import_of_an_older_install_is_repaired_and_anyone_elses_refused() {
    let ours = "/opt/cocoon/etc/cocoon-containerd.toml";
    let stale = "/opt/cocoon-0.0.9/etc/cocoon-containerd.toml";
    let theirs = "/etc/containerd/gpu.toml";
    let text = format!(
        "version = 3\nimports = [\"{stale}\", \"/etc/containerd/conf.d/*.toml\", \"{theirs}\"]\n"
    );
    let exists = |p: &str| p == theirs;
    let is_ours = |p: &str| is_our_import(std::path::Path::new("/opt/cocoon"), p);
    let out = set_imports(Some(&text), Some(ours), is_ours, exists).unwrap();
    assert_eq!(out.repaired, vec![stale.to_string()]);
    assert_eq!(
        imports(&doc(&out.text)),
        vec![
            "/etc/containerd/conf.d/*.toml".to_string(),
            theirs.into(),
            ours.into()
        ],
        "the glob (matching nothing is fine) and the live import stay"
    );
    assert_eq!(
        missing_imports(&out.text, |p| p == theirs || p == ours),
        Vec::<String>::new()
    );
    assert_eq!(missing_imports(&text, exists), vec![stale.to_string()]);
    // Someone else's missing file would stop containerd too: refuse to
    // restart into that, and say which.
    let e = set_imports(Some(&text), Some(ours), is_ours, |_| false)
        .unwrap_err()
        .to_string();
    assert!(e.contains(theirs) && e.contains("does not exist"), "{e}");
    // Repair without adding (the drop-in case).
    let out = set_imports(Some(&text), None, is_ours, exists).unwrap();
    assert_eq!(imports(&doc(&out.text)).len(), 2);
}

#[test]
fn the_handler_file_follows_the_main_files_schema() {
    let v3 = doc(&handler_file(&settings(true, true), 3, Some(DEFAULT_22)).unwrap());
    assert_eq!(v3["version"].as_integer(), Some(3));
    let r = runtime(&v3, "io.containerd.cri.v1.runtime", "cocoon");
    assert_eq!(r["runtime_type"].as_str(), Some("io.containerd.cocoon.v2"));
    assert_eq!(r["snapshotter"].as_str(), Some("cocoon"));
    assert_eq!(
        v3["plugins"]["io.containerd.cri.v1.images"]["runtime_platforms"]["cocoon-tdx"]["snapshotter"].as_str(),
        Some("cocoon")
    );
    assert_eq!(
        v3["proxy_plugins"]["cocoon"]["type"].as_str(),
        Some("snapshot")
    );
    let v2 = doc(&handler_file(&settings(false, true), 2, None).unwrap());
    assert_eq!(v2["version"].as_integer(), Some(2));
    assert!(runtime(&v2, "io.containerd.grpc.v1.cri", "cocoon").is_table());
    assert!(v2.get("proxy_plugins").is_none());
    // Without a main file (or one that relies on the built-in runc), the
    // file names runc too: naming any runtime replaces containerd's set.
    assert!(runtime(&v2, "io.containerd.grpc.v1.cri", "runc").is_table());
    assert!(
        v3["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]
            .get("runc")
            .is_none()
    );
}

#[test]
fn cri_status_lists_the_runtimes() {
    let status = r#"{"containerd":{"snapshotter":"overlayfs","defaultRuntimeName":"runc","runtimes":{"runc":{"runtimeType":"io.containerd.runc.v2"},"cocoon":{"runtimeType":"io.containerd.cocoon.v2"}}}}"#;
    let mut r = cri_runtimes(status).unwrap();
    r.sort();
    assert_eq!(
        r,
        vec![
            ("cocoon".into(), "io.containerd.cocoon.v2".into()),
            ("runc".into(), "io.containerd.runc.v2".into())
        ]
    );
    assert!(cri_runtimes("{}").is_err());
    assert!(cri_runtimes("not json").is_err());
}
