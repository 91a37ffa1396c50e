//! A pod spec and the agent requests the shim sends for it under CRI
//! (containerd 1.6, host binds left out): what the tests and `cocoon bench
//! policy` evaluate the generated policy against.

use super::Image;
use cocoon_guest_protos::kata::{agent, oci};
use serde_json::json;

pub const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
spec:
  runtimeClassName: cocoon
  containers:
  - name: app
    image: 127.0.0.1:5000/app:1
    args: ["--port", "8080"]
    env:
    - name: MODE
      value: prod
    - name: POD_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
    securityContext:
      allowPrivilegeEscalation: false
      runAsUser: 1000
      capabilities:
        drop: ["ALL"]
        add: ["NET_BIND_SERVICE"]
    readinessProbe:
      exec:
        command: ["cat", "/tmp/ready"]
"#;

pub const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

pub fn image() -> Image {
    Image {
        reference: "127.0.0.1:5000/app:1".into(),
        digest: DIGEST.into(),
        config: json!({
            "Entrypoint": ["/bin/server"],
            "Cmd": ["--port", "80"],
            // The manifest sets MODE and POD_IP over these.
            "Env": ["PATH=/usr/bin:/bin", "MODE=dev", "POD_IP=none"],
            "WorkingDir": "/srv",
            "StopSignal": "SIGQUIT",
        }),
    }
}

pub fn mount(dest: &str, ty: &str, src: &str, opts: &[&str]) -> oci::Mount {
    oci::Mount {
        destination: dest.into(),
        type_: ty.into(),
        source: src.into(),
        options: opts.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// The spec the shim sends for a CRI container (host binds left out).
pub fn spec(kind: &str, name: &str) -> oci::Spec {
    let caps = vec!["CAP_NET_BIND_SERVICE".to_string()];
    let mut s = oci::Spec::new();
    s.Process = Some(oci::Process {
        Args: ["/bin/server", "--port", "8080"].map(String::from).to_vec(),
        Env: [
            "PATH=/usr/bin:/bin",
            "HOSTNAME=web",
            "MODE=prod",
            "POD_IP=10.88.0.4",
        ]
        .map(String::from)
        .to_vec(),
        Cwd: "/srv".into(),
        User: Some(oci::User {
            UID: 1000,
            GID: 1000,
            ..Default::default()
        })
        .into(),
        Capabilities: Some(oci::LinuxCapabilities {
            Bounding: caps.clone(),
            Effective: caps.clone(),
            Permitted: caps,
            ..Default::default()
        })
        .into(),
        NoNewPrivileges: true,
        ..Default::default()
    })
    .into();
    s.Mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
    ];
    s.Linux = Some(oci::Linux {
        Namespaces: ["pid", "ipc", "uts", "mount"]
            .iter()
            .map(|t| oci::LinuxNamespace {
                Type: t.to_string(),
                ..Default::default()
            })
            .collect(),
        MaskedPaths: ["/proc/acpi", "/proc/kcore", "/proc/keys", "/sys/firmware"]
            .map(String::from)
            .to_vec(),
        ReadonlyPaths: ["/proc/bus", "/proc/sys", "/proc/sysrq-trigger"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
    .into();
    for (k, v) in [
        ("io.kubernetes.cri.container-type", kind),
        ("io.kubernetes.cri.container-name", name),
        ("io.kubernetes.cri.sandbox-name", "web"),
        ("io.kubernetes.cri.sandbox-namespace", "shop"),
        ("io.kubernetes.cri.image-name", "127.0.0.1:5000/app:1"),
    ] {
        s.Annotations.insert(k.into(), v.into());
    }
    s
}

pub fn create(id: &str, s: oci::Spec) -> agent::CreateContainerRequest {
    let sandbox = s.Annotations["io.kubernetes.cri.container-type"] == "sandbox";
    agent::CreateContainerRequest {
        container_id: id.into(),
        OCI: Some(s).into(),
        storages: if sandbox {
            vec![]
        } else {
            vec![agent::Storage {
                driver: "image_guest_pull".into(),
                source: "127.0.0.1:5000/app:1".into(),
                fstype: "overlay".into(),
                mount_point: format!("/run/kata-containers/{id}/rootfs"),
                ..Default::default()
            }]
        },
        ..Default::default()
    }
}

pub fn exec(id: &str, args: &[&str]) -> agent::ExecProcessRequest {
    // containerd gives an exec the container's process, with its args.
    let mut process = spec("container", "app").Process.unwrap();
    process.Args = args.iter().map(|s| s.to_string()).collect();
    agent::ExecProcessRequest {
        container_id: id.into(),
        exec_id: "x".into(),
        process: Some(process).into(),
        ..Default::default()
    }
}
