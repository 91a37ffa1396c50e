use super::sample::*;
use super::*;

const OTHER: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
use cocoon_guest::pod::policy::Gate;
use cocoon_guest_protos::kata::{agent, oci};

fn policy(yaml: &str, deny_logs: bool) -> (Gate, Value) {
    let doc: Yaml = serde_yaml_ng::from_str(yaml).unwrap();
    let w = Workload::of(&doc).unwrap().unwrap();
    let regs = ["127.0.0.1:5000".to_string()];
    let opts = Options {
        deny_logs,
        kbs: Some("http://127.0.0.1:8080"),
        insecure_registries: &regs,
    };
    let data = policy_data(&w, &[image()], &opts).unwrap();
    let text = policy_text(&data).unwrap();
    (Gate::with_policy(&text).unwrap(), data)
}

fn pause() -> agent::CreateContainerRequest {
    let mut s = spec("sandbox", "");
    s.Annotations.remove("io.kubernetes.cri.container-name");
    let p = s.Process.as_mut().unwrap();
    p.Args = vec!["/pause".into()];
    p.User = Some(oci::User {
        UID: 65535,
        ..Default::default()
    })
    .into();
    create("pod1", s)
}

/// `s` without a PID namespace entry.
fn without_pid(mut s: oci::Spec) -> oci::Spec {
    s.Linux
        .as_mut()
        .unwrap()
        .Namespaces
        .retain(|n| n.Type != "pid");
    s
}

fn denied(gate: &Gate, req: &dyn protobuf::MessageDyn, want: &str) -> String {
    let d = gate.check(req).expect_err(want).to_string();
    assert!(d.contains(want), "{d}\n(wanted {want})");
    d
}

#[test]
fn the_pod_as_kubelet_runs_it_is_allowed() {
    let (gate, data) = policy(POD, false);
    let app = &data["containers"][1];
    assert_eq!(
        app["OCI"]["Process"]["Args"],
        json!(["/bin/server", "--port", "8080"])
    );
    assert_eq!(app["OCI"]["Process"]["Cwd"], "/srv");
    assert_eq!(app["OCI"]["Process"]["User"]["UID"], 1000);
    // The manifest's MODE and POD_IP replace the image's.
    assert_eq!(
        app["OCI"]["Process"]["Env"],
        json!(["PATH=/usr/bin:/bin", "MODE=prod"])
    );
    assert_eq!(app["exec_commands"], json!([["cat", "/tmp/ready"]]));
    assert_eq!(data["common"]["loopback_ports"], json!([5000, 8080]));

    gate.check(&pause()).unwrap();
    gate.check(&create("c1", spec("container", "app"))).unwrap();
    gate.check_input(
        "PullImageRequest",
        &json!({"image": "127.0.0.1:5000/app:1", "manifest_digest": DIGEST, "container_id": "c1"}),
        true,
    )
    .unwrap();
    gate.check(&exec("c1", &["cat", "/tmp/ready"])).unwrap();
    gate.check(&agent::ReadStreamRequest {
        container_id: "c1".into(),
        ..Default::default()
    })
    .unwrap();
    gate.check(&agent::StartContainerRequest::default())
        .unwrap();
    gate.check(&agent::CreateSandboxRequest::default()).unwrap();
    gate.check(&pod_forward(&[5000, 8080])).unwrap();

    // Stopping signals only: SIGTERM, SIGKILL and the image's STOPSIGNAL.
    let signal = |id: &str, signal: u32| agent::SignalProcessRequest {
        container_id: id.into(),
        signal,
        ..Default::default()
    };
    for s in [3, 9, 15] {
        gate.check(&signal("c1", s)).unwrap();
    }
    gate.check(&signal("pod1", 9)).unwrap();
    denied(
        &gate,
        &signal("c1", 10),
        "signal: 10 is not one that stops the container ([3, 9, 15])",
    );
    denied(&gate, &signal("pod1", 3), "signal: 3");
}

/// The capabilities containerd grants, in its order: "ALL" added, "ALL"
/// dropped, the named ones added, the named ones dropped.
#[test]
fn capabilities_follow_containerds_order() {
    let caps = |sc: &str| {
        let c: Yaml =
            serde_yaml_ng::from_str(&format!("securityContext: {{capabilities: {sc}}}")).unwrap();
        capabilities(&c, false)
    };
    let all_but_chown = caps("{add: [ALL], drop: [CHOWN]}");
    assert_eq!(all_but_chown.len(), ALL_CAPS.len() - 1);
    assert!(!all_but_chown.contains(&"CAP_CHOWN".to_string()));
    // Added and dropped: not there.
    assert!(!caps("{add: [NET_ADMIN], drop: [NET_ADMIN]}").contains(&"CAP_NET_ADMIN".to_string()));
    assert_eq!(caps("{add: [net_admin], drop: [ALL]}"), ["CAP_NET_ADMIN"]);
    let defaults = caps("{}");
    assert_eq!(defaults.len(), DEFAULT_CAPS.len());
    assert!(!caps("{drop: [cap_chown]}").contains(&"CAP_CHOWN".to_string()));
    assert_eq!(capabilities(&Yaml::Null, true).len(), ALL_CAPS.len());
}

#[test]
fn stop_signals_are_read_as_docker_writes_them() {
    for (s, n) in [
        ("SIGQUIT", 3),
        ("QUIT", 3),
        ("sigquit", 3),
        ("Quit", 3),
        ("3", 3),
        ("SIGRTMIN", libc::SIGRTMIN()),
        ("SIGRTMIN+3", libc::SIGRTMIN() + 3),
        ("RTMAX-1", libc::SIGRTMAX() - 1),
    ] {
        assert_eq!(signal_number(s), Some(n), "{s}");
    }
    for bad in ["SIGNOPE", "0", "65", "RTMIN+99", "RTMIN-1", "-9", ""] {
        assert_eq!(signal_number(bad), None, "{bad}");
    }
    let e = stop_signals(&json!({"StopSignal": "SIGBOGUS"})).unwrap_err();
    assert!(format!("{e:#}").contains("SIGBOGUS"), "{e:#}");
    assert_eq!(stop_signals(&json!({})).unwrap(), vec![9, 15]);
}

fn pod_forward(ports: &[u32]) -> cocoon_guest_protos::pod::ForwardLoopbackRequest {
    cocoon_guest_protos::pod::ForwardLoopbackRequest {
        forwards: ports
            .iter()
            .map(|p| cocoon_guest_protos::pod::LoopbackForward {
                port: *p,
                target: format!("10.0.2.2:{p}"),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn each_tampering_is_refused_with_its_reason() {
    let (gate, _) = policy(POD, false);
    gate.check(&pause()).unwrap();

    let mut s = spec("container", "app");
    s.Process
        .as_mut()
        .unwrap()
        .Env
        .push("LD_PRELOAD=/tmp/x.so".into());
    denied(
        &gate,
        &create("c", s),
        "OCI.Process.Env: LD_PRELOAD is not in the pod spec",
    );

    let mut s = spec("container", "app");
    s.Process.as_mut().unwrap().Args = vec!["/bin/sh".into()];
    denied(&gate, &create("c", s), "OCI.Process.Args: [\"/bin/sh\"]");

    let mut s = spec("container", "app");
    s.Mounts.push(mount("/host", "bind", "/", &["rbind", "rw"]));
    denied(&gate, &create("c", s), "OCI.Mounts: /host (bind from /");

    // A standard mount that lost its read-only flag.
    let mut s = spec("container", "app");
    s.Mounts[2].options.retain(|o| o != "ro");
    denied(&gate, &create("c", s), "OCI.Mounts: /sys (sysfs from sysfs");

    let mut s = spec("container", "app");
    s.Linux.as_mut().unwrap().Devices.push(oci::LinuxDevice {
        Path: "/dev/vda".into(),
        Type: "b".into(),
        ..Default::default()
    });
    denied(
        &gate,
        &create("c", s),
        "devices: the pod spec gives the container no devices",
    );
    let mut req = create("c", spec("container", "app"));
    req.devices.push(agent::Device {
        container_path: "/dev/mem".into(),
        ..Default::default()
    });
    denied(&gate, &req, "devices:");

    let mut s = spec("container", "app");
    s.Process
        .as_mut()
        .unwrap()
        .Capabilities
        .as_mut()
        .unwrap()
        .Effective
        .push("CAP_SYS_ADMIN".into());
    denied(
        &gate,
        &create("c", s),
        "OCI.Process.Capabilities.Effective: CAP_SYS_ADMIN",
    );

    let mut s = spec("container", "app");
    s.Process.as_mut().unwrap().NoNewPrivileges = false;
    denied(&gate, &create("c", s), "OCI.Process.NoNewPrivileges");

    let mut s = spec("container", "app");
    s.Process.as_mut().unwrap().User.as_mut().unwrap().UID = 0;
    denied(
        &gate,
        &create("c", s),
        "OCI.Process.User.UID: 0 is not the pod spec's 1000",
    );

    // A pinned variable dropped (the image's value would come back in the
    // guest), and one whose value is known only when the pod runs.
    let mut s = spec("container", "app");
    s.Process.as_mut().unwrap().Env.retain(|e| e != "MODE=prod");
    denied(
        &gate,
        &create("c", s),
        "OCI.Process.Env: MODE is missing (the pod spec sets it)",
    );
    let mut s = spec("container", "app");
    s.Process
        .as_mut()
        .unwrap()
        .Env
        .retain(|e| !e.starts_with("POD_IP="));
    denied(
        &gate,
        &create("c", s),
        "OCI.Process.Env: no variable matches ^POD_IP=",
    );
    // A supplementary group the pod spec does not give (the GID itself
    // is not pinned here: runAsUser without runAsGroup).
    let mut s = spec("container", "app");
    s.Process
        .as_mut()
        .unwrap()
        .User
        .as_mut()
        .unwrap()
        .AdditionalGids = vec![1000, 6];
    denied(
        &gate,
        &create("c", s),
        "OCI.Process.User.AdditionalGids: 6 is not a group of the pod spec",
    );

    let mut s = spec("container", "app");
    s.Linux.as_mut().unwrap().MaskedPaths.clear();
    denied(
        &gate,
        &create("c", s),
        "OCI.Linux.MaskedPaths: /proc/kcore must stay masked",
    );

    denied(
        &gate,
        &create("c", without_pid(spec("container", "app"))),
        "own pid namespace",
    );

    let mut s = spec("container", "app");
    s.Annotations
        .insert("io.kubernetes.cri.sandbox-name".into(), "other".into());
    denied(
        &gate,
        &create("c", s),
        "OCI.Annotations[io.kubernetes.cri.sandbox-name]",
    );

    let s = spec("container", "sidecar");
    denied(
        &gate,
        &create("c", s),
        "\"sidecar\" is not a container of the pod spec",
    );

    let mut req = create("c", spec("container", "app"));
    req.storages[0].source = "127.0.0.1:5000/evil:1".into();
    denied(&gate, &req, "storages:");
    let mut req = create("c", spec("container", "app"));
    req.storages.push(req.storages[0].clone());
    denied(&gate, &req, "storages:");

    // Unset capabilities would leave the agent's own: refused.
    let mut s = spec("container", "app");
    s.Process.as_mut().unwrap().Capabilities = protobuf::MessageField::none();
    denied(&gate, &create("c", s), "OCI.Process.Capabilities: unset");
    // A pinned variable set again later (the last one wins in the guest).
    let mut s = spec("container", "app");
    s.Process.as_mut().unwrap().Env.push("HOSTNAME=evil".into());
    denied(
        &gate,
        &create("c", s),
        "OCI.Process.Env: a variable is set twice",
    );
    // A restrictive mount option undone by a later one.
    let mut s = spec("container", "app");
    s.Mounts[0].options.push("exec".into());
    denied(&gate, &create("c", s), "OCI.Mounts: /proc");

    // A request with no process at all is refused, not waved through.
    let mut s = spec("container", "app");
    s.Process = protobuf::MessageField::none();
    denied(
        &gate,
        &create("c", s),
        "OCI.Process: the request has no process",
    );

    // The image: the same name resolved to another manifest.
    gate.check(&create("c1", spec("container", "app"))).unwrap();
    let d = gate
        .check_input(
            "PullImageRequest",
            &json!({"image": "127.0.0.1:5000/app:1", "manifest_digest": OTHER, "container_id": "c1"}),
            true,
        )
        .unwrap_err()
        .to_string();
    assert!(d.contains(&format!("manifest_digest: {OTHER}")), "{d}");

    // The same id again (as another container of the spec) is refused:
    // its state stays what the first create made it.
    denied(
        &gate,
        &create("c1", spec("container", "app")),
        "container_id: c1 was already created",
    );
    // The probe command with another environment, directory, privileges or
    // no capabilities.
    let mut e = exec("c1", &["cat", "/tmp/ready"]);
    e.process
        .as_mut()
        .unwrap()
        .Env
        .push("BASH_ENV=/tmp/x".into());
    denied(&gate, &e, "process.Env: not the container's environment");
    let mut e = exec("c1", &["cat", "/tmp/ready"]);
    e.process.as_mut().unwrap().Cwd = "/tmp".into();
    denied(&gate, &e, "process.Cwd");
    let mut e = exec("c1", &["cat", "/tmp/ready"]);
    e.process
        .as_mut()
        .unwrap()
        .User
        .as_mut()
        .unwrap()
        .AdditionalGids = vec![0];
    denied(
        &gate,
        &e,
        "process.User.AdditionalGids: 0 is not a group of the container",
    );
    let mut e = exec("c1", &["cat", "/tmp/ready"]);
    e.process.as_mut().unwrap().NoNewPrivileges = false;
    denied(&gate, &e, "process.NoNewPrivileges");
    let mut e = exec("c1", &["cat", "/tmp/ready"]);
    e.process.as_mut().unwrap().Capabilities = protobuf::MessageField::none();
    denied(&gate, &e, "process.Capabilities: unset");

    // Exec beyond the probe command, in a container or in the pause.
    denied(
        &gate,
        &exec("c1", &["/bin/sh"]),
        "process.Args: [\"/bin/sh\"] is not a command",
    );
    denied(&gate, &exec("pod1", &["cat", "/tmp/ready"]), "process.Args");
    denied(
        &gate,
        &exec("nope", &["cat", "/tmp/ready"]),
        "was not created under this policy",
    );

    // Input, policy replacement, file copies, forwarding other ports.
    denied(
        &gate,
        &agent::WriteStreamRequest {
            container_id: "c1".into(),
            ..Default::default()
        },
        "takes no input",
    );
    // Closing it gives the container end-of-file, as runc's /dev/null does.
    gate.check(&agent::CloseStdinRequest {
        container_id: "c1".into(),
        ..Default::default()
    })
    .unwrap();
    let e = gate.set_policy("package agent_policy\n").unwrap_err();
    assert!(e.to_string().contains("cannot be replaced"), "{e}");
    denied(
        &gate,
        &agent::CopyFileRequest::default(),
        "CopyFileRequest is blocked",
    );
    denied(&gate, &pod_forward(&[5000, 22]), "guest port 22");
    denied(
        &gate,
        &agent::CreateSandboxRequest {
            kernel_modules: vec![agent::KernelModule {
                name: "evil".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
        "CreateSandboxRequest is blocked",
    );
}

#[test]
fn logs_can_be_refused() {
    let (gate, _) = policy(POD, true);
    denied(
        &gate,
        &agent::ReadStreamRequest::default(),
        "the pod's output is not readable from the host",
    );
}

#[test]
fn workloads_carry_the_annotation_on_their_pod_template() {
    let deploy = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 0 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          containers: [{name: job, image: "127.0.0.1:5000/app:1", stdin: true}]
"#;
    let mut doc: Yaml = serde_yaml_ng::from_str(deploy).unwrap();
    let w = Workload::of(&doc).unwrap().unwrap();
    let opts = Options {
        deny_logs: false,
        kbs: None,
        insecure_registries: &[],
    };
    let data = policy_data(&w, &[image()], &opts).unwrap();
    assert_eq!(
        data["containers"][0]["OCI"]["Annotations"]["io.kubernetes.cri.sandbox-name"],
        "^nightly(-[a-z0-9]+)+$"
    );
    assert_eq!(
        data["containers"][1]["OCI"]["Annotations"]["io.kubernetes.cri.sandbox-namespace"],
        "^default$"
    );
    // The image's entrypoint and cmd, the image's env.
    assert_eq!(
        data["containers"][1]["OCI"]["Process"]["Args"],
        json!(["/bin/server", "--port", "80"])
    );
    let policy = policy_text(&data).unwrap();
    let gate = Gate::with_policy(&policy).unwrap();
    let mut s = spec("container", "job");
    s.Annotations.insert(
        "io.kubernetes.cri.sandbox-name".into(),
        "nightly-29110-abcde".into(),
    );
    s.Annotations.insert(
        "io.kubernetes.cri.sandbox-namespace".into(),
        "default".into(),
    );
    s.Process.as_mut().unwrap().Args = ["/bin/server", "--port", "80"].map(String::from).to_vec();
    // Stdin is open in the spec: input is allowed for that container.
    let mut s2 = s.clone();
    s2.Process.as_mut().unwrap().Env = image().config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    s2.Process.as_mut().unwrap().User = Some(oci::User::default()).into();
    s2.Process.as_mut().unwrap().Capabilities = Some(oci::LinuxCapabilities::default()).into();
    s2.Process.as_mut().unwrap().NoNewPrivileges = false;
    gate.check(&create("j1", s2)).unwrap();
    gate.check(&agent::WriteStreamRequest {
        container_id: "j1".into(),
        ..Default::default()
    })
    .unwrap();

    let text = initdata(None, None, &[], &policy).unwrap();
    let parsed = cocoon_types::initdata::InitData::parse(&text).unwrap();
    assert_eq!(parsed.data["policy.rego"], policy);
    assert!(!parsed.data.contains_key("aa.toml"));
    let with_kbs = initdata(
        Some("https://kbs.example:8080"),
        Some("PEM".into()),
        &[],
        &policy,
    )
    .unwrap();
    let parsed = cocoon_types::initdata::InitData::parse(&with_kbs).unwrap();
    assert!(parsed.data["aa.toml"].contains("https://kbs.example:8080"));
    assert!(parsed.data["cdh.toml"].contains("PEM"));

    set_annotation(&mut doc, "CronJob", "X").unwrap();
    assert_eq!(
        doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["annotations"]
            [INITDATA_ANNOTATION],
        "X"
    );
}

#[test]
fn manifests_without_pods_or_with_unknowable_env_are_refused() {
    let svc: Yaml = serde_yaml_ng::from_str("kind: Service\nmetadata: {name: s}\n").unwrap();
    assert!(Workload::of(&svc).unwrap().is_none());
    let bad: Yaml = serde_yaml_ng::from_str("kind: Pod\nmetadata: {name: p}\nspec: {}\n").unwrap();
    assert!(Workload::of(&bad).is_err());
    let with_env_from = POD.replace(
        "    env:\n",
        "    envFrom: [{configMapRef: {name: cfg}}]\n    env:\n",
    );
    let doc: Yaml = serde_yaml_ng::from_str(&with_env_from).unwrap();
    let w = Workload::of(&doc).unwrap().unwrap();
    let opts = Options {
        deny_logs: false,
        kbs: None,
        insecure_registries: &[],
    };
    let e = policy_data(&w, &[image()], &opts).unwrap_err().to_string();
    assert!(e.contains("envFrom"), "{e}");
}

#[test]
fn groups_are_pinned_where_the_pod_spec_names_them() {
    let pod = POD.replace(
        "  runtimeClassName: cocoon\n",
        "  runtimeClassName: cocoon\n  securityContext:\n    runAsGroup: 3000\n    supplementalGroups: [4000]\n    fsGroup: 2000\n",
    );
    let (gate, data) = policy(&pod, false);
    let user = &data["containers"][1]["OCI"]["Process"]["User"];
    assert_eq!(user["GID"], 3000);
    assert_eq!(user["AdditionalGids"], json!([2000, 4000]));
    // The pause container gets the pod's groups too, and no other.
    let mut p = pause();
    let u = p.OCI.as_mut().unwrap().Process.as_mut().unwrap();
    u.User.as_mut().unwrap().AdditionalGids = vec![6];
    denied(
        &gate,
        &p,
        "OCI.Process.User.AdditionalGids: 6 is not a group of the pod spec",
    );
    let mut p = pause();
    let u = p.OCI.as_mut().unwrap().Process.as_mut().unwrap();
    u.User.as_mut().unwrap().AdditionalGids = vec![4000, 2000];
    gate.check(&p).unwrap();
    let with = |gid: u32, groups: &[u32]| {
        let mut s = spec("container", "app");
        let u = s.Process.as_mut().unwrap().User.as_mut().unwrap();
        u.GID = gid;
        u.AdditionalGids = groups.to_vec();
        s
    };
    denied(
        &gate,
        &create("c", with(0, &[0, 2000, 4000])),
        "OCI.Process.User.GID: 0 is not the pod spec's 3000",
    );
    denied(
        &gate,
        &create("c", with(3000, &[3000, 2000, 4000, 0])),
        "OCI.Process.User.AdditionalGids: 0 is not a group",
    );
    gate.check(&create("c", with(3000, &[3000, 2000, 4000])))
        .unwrap();

    // Neither the manifest nor the image names a user: root's group.
    let bare = POD.replace("      runAsUser: 1000\n", "");
    let (_, data) = policy(&bare, false);
    let user = &data["containers"][1]["OCI"]["Process"]["User"];
    assert_eq!((&user["UID"], &user["GID"]), (&json!(0), &json!(0)));
    assert_eq!(user["AdditionalGids"], json!([]));
}

/// Sysctls: the pod spec's on its sandbox, where the runtime puts them,
/// and containerd's own for every pod where the pod spec sets none of
/// that name; nothing on a container, nothing else.
#[test]
fn sysctls_are_the_pod_specs_on_its_sandbox() {
    let pod = POD.replace(
        "  runtimeClassName: cocoon\n",
        "  runtimeClassName: cocoon\n  securityContext:\n    sysctls:\n    - {name: net.ipv4.ip_unprivileged_port_start, value: \"80\"}\n    - {name: kernel.shm_rmid_forced, value: \"1\"}\n",
    );
    let (gate, data) = policy(&pod, false);
    assert_eq!(
        data["containers"][0]["OCI"]["Linux"]["Sysctl"],
        json!({"net.ipv4.ip_unprivileged_port_start": "80", "kernel.shm_rmid_forced": "1"})
    );
    let n = std::cell::Cell::new(0);
    let pause_with = |sysctls: &[(&str, &str)]| {
        let mut p = pause();
        // Each one a new sandbox: the gate takes a container id once.
        n.set(n.get() + 1);
        p.container_id = format!("pod{}", n.get());
        p.OCI.as_mut().unwrap().Linux.as_mut().unwrap().Sysctl = sysctls
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        p
    };
    gate.check(&pause_with(&[])).unwrap();
    gate.check(&pause_with(&[
        ("net.ipv4.ip_unprivileged_port_start", "80"),
        ("kernel.shm_rmid_forced", "1"),
        // containerd's enable_unprivileged_icmp.
        ("net.ipv4.ping_group_range", "0 2147483647"),
    ]))
    .unwrap();
    // Another value than the pod spec's (containerd's default for that
    // name included), or one the pod spec does not name.
    for (k, v) in [
        ("net.ipv4.ip_unprivileged_port_start", "0"),
        ("net.ipv4.tcp_syncookies", "0"),
        ("net.ipv4.ping_group_range", "0 1"),
    ] {
        denied(
            &gate,
            &pause_with(&[(k, v)]),
            &format!("OCI.Linux.Sysctl: {k}={v} is not one of the pod spec's"),
        );
    }
    // A container of the pod takes none.
    let mut s = spec("container", "app");
    s.Linux
        .as_mut()
        .unwrap()
        .Sysctl
        .insert("kernel.shm_rmid_forced".into(), "1".into());
    denied(
        &gate,
        &create("c1", s),
        "OCI.Linux.Sysctl: kernel.shm_rmid_forced=1 is not one of the pod spec's",
    );
    // Without sysctls in the pod spec, containerd's own still pass.
    let (gate, _) = policy(POD, false);
    gate.check(&pause_with(&[("net.ipv4.ip_unprivileged_port_start", "0")]))
        .unwrap();
}

#[test]
fn the_process_namespace_is_shared_only_where_the_pod_spec_shares_it() {
    let shared_pod = POD.replace(
        "  runtimeClassName: cocoon\n",
        "  runtimeClassName: cocoon\n  shareProcessNamespace: true\n",
    );
    // As the shim sends a container of a pod that shares it: no pid
    // namespace of its own, and `sandbox_pidns`.
    let joining = |id: &str| {
        let mut r = create(id, without_pid(spec("container", "app")));
        r.sandbox_pidns = true;
        r
    };
    let (gate, data) = policy(&shared_pod, false);
    assert_eq!(data["containers"][0]["sandbox_pidns"], false);
    assert_eq!(data["containers"][1]["sandbox_pidns"], true);
    gate.check(&pause()).unwrap();
    gate.check(&joining("c1")).unwrap();
    denied(
        &gate,
        &create("c2", spec("container", "app")),
        "sandbox_pidns: the pod spec shares its process namespace, and the container does not join it",
    );
    // A pod that does not share it: each container keeps its own, and a
    // host that asks to join (with or without a pid entry) is refused.
    let (gate, data) = policy(POD, false);
    assert_eq!(data["containers"][1]["sandbox_pidns"], false);
    gate.check(&pause()).unwrap();
    gate.check(&create("c1", spec("container", "app"))).unwrap();
    let mut with_pid = create("c2", spec("container", "app"));
    with_pid.sandbox_pidns = true;
    denied(
        &gate,
        &with_pid,
        "sandbox_pidns: the pod spec does not share its process namespace",
    );
    denied(
        &gate,
        &joining("c3"),
        "sandbox_pidns: the pod spec does not share its process namespace",
    );
    // hostPID wins, as kubelet has it: the container's own namespace in
    // the guest, never the pod's.
    let both = shared_pod.replace(
        "  shareProcessNamespace: true\n",
        "  shareProcessNamespace: true\n  hostPID: true\n",
    );
    let (gate, data) = policy(&both, false);
    assert_eq!(data["containers"][1]["sandbox_pidns"], false);
    // containerd sends a hostPID container no pid namespace at all.
    gate.check(&create("c1", without_pid(spec("container", "app"))))
        .unwrap();
    denied(
        &gate,
        &joining("c2"),
        "sandbox_pidns: the pod spec does not share its process namespace",
    );
    // The pause container joins nothing, shared pod or not.
    let (gate, _) = policy(&shared_pod, false);
    let mut p = pause();
    p.sandbox_pidns = true;
    denied(
        &gate,
        &p,
        "sandbox_pidns: the pod spec does not share its process namespace",
    );
}
