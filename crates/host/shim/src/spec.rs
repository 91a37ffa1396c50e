//! The bundle's OCI runtime spec (`config.json`, as containerd wrote it
//! for the host) turned into the protobuf spec of Kata's agent API for the
//! guest. What only makes sense on the host is left out here, not sent:
//! host namespace paths, the network namespace (the VM is the pod's
//! network), host devices, host bind mounts, cgroup paths, hooks (they
//! would run host-chosen programs), seccomp (as Kata's default
//! `disable_guest_seccomp`) and AppArmor/SELinux labels.

use cocoon_pod::kata::oci as pb;
use serde::Deserialize;
use std::collections::HashMap;

/// Why a bundle's spec cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// `config.json` is not an OCI runtime spec.
    #[error("the bundle's config.json is not a valid OCI runtime spec: {0}")]
    Parse(String),
    /// The spec has no process.
    #[error("the container spec has no process")]
    NoProcess,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Spec {
    oci_version: String,
    process: Option<Process>,
    root: Option<Root>,
    hostname: String,
    mounts: Vec<Mount>,
    annotations: HashMap<String, String>,
    linux: Option<Linux>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Process {
    terminal: bool,
    console_size: Option<ConsoleSize>,
    user: User,
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    capabilities: Option<Capabilities>,
    rlimits: Vec<Rlimit>,
    no_new_privileges: bool,
    oom_score_adj: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ConsoleSize {
    height: u32,
    width: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct User {
    uid: u32,
    gid: u32,
    additional_gids: Vec<u32>,
    username: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Capabilities {
    bounding: Vec<String>,
    effective: Vec<String>,
    inheritable: Vec<String>,
    permitted: Vec<String>,
    ambient: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Rlimit {
    #[serde(rename = "type")]
    typ: String,
    hard: u64,
    soft: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Root {
    readonly: bool,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(default)]
struct Mount {
    destination: String,
    source: String,
    #[serde(rename = "type")]
    typ: String,
    options: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Linux {
    uid_mappings: Vec<IdMapping>,
    gid_mappings: Vec<IdMapping>,
    sysctl: HashMap<String, String>,
    resources: Option<Resources>,
    namespaces: Vec<Namespace>,
    rootfs_propagation: String,
    masked_paths: Vec<String>,
    readonly_paths: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct IdMapping {
    #[serde(rename = "containerID")]
    container_id: u32,
    #[serde(rename = "hostID")]
    host_id: u32,
    size: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Namespace {
    #[serde(rename = "type")]
    typ: String,
    path: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Resources {
    memory: Option<Memory>,
    cpu: Option<Cpu>,
    pids: Option<Pids>,
    hugepage_limits: Vec<Hugepage>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Memory {
    limit: Option<i64>,
    reservation: Option<i64>,
    swap: Option<i64>,
    swappiness: Option<u64>,
    #[serde(rename = "disableOOMKiller")]
    disable_oom_killer: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Cpu {
    shares: Option<u64>,
    quota: Option<i64>,
    period: Option<u64>,
    cpus: String,
    mems: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Pids {
    limit: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Hugepage {
    #[serde(rename = "pageSize")]
    page_size: String,
    limit: u64,
}

/// What a container is to its pod (CRI's `io.kubernetes.cri.container-type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kind {
    /// The pod's sandbox (pause) container: it brings the VM up.
    Pause,
    /// A workload container of a pod whose VM runs.
    Container,
    /// Outside any CRI pod (`ctr run`): a pod of its own, VM and all.
    #[default]
    Standalone,
}

/// What the host needs to know about a container besides its guest spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// What the container is to its pod.
    pub kind: Kind,
    /// The pod's sandbox id (the shim's grouping id).
    pub sandbox_id: Option<String>,
    /// The image to pull in the guest.
    pub image: Option<String>,
    /// The network namespace the runtime made for the pod (CNI's), if any.
    pub netns: Option<String>,
    /// Whether the container shares its pod's process namespace
    /// (`shareProcessNamespace`: CRI names the sandbox's PID namespace by
    /// path). Sent as Kata's `sandbox_pidns`; the guest joins its pause
    /// container's.
    pub sandbox_pidns: bool,
}

/// CRI's annotation keys.
pub mod annotations {
    /// `sandbox` or `container`.
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    /// The pod's sandbox id.
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    /// The image reference.
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
    /// The pod's memory limit, bytes.
    pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
    /// The pod's CPU quota.
    pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
    /// The pod's CPU period.
    pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
}

/// Reads the container's metadata from a parsed spec.
fn meta(s: &Spec) -> Meta {
    let a = &s.annotations;
    let kind = match a.get(annotations::CONTAINER_TYPE).map(String::as_str) {
        Some("sandbox") => Kind::Pause,
        Some("container") => Kind::Container,
        _ => Kind::Standalone,
    };
    Meta {
        kind,
        sandbox_id: a.get(annotations::SANDBOX_ID).cloned(),
        image: a.get(annotations::IMAGE_NAME).cloned(),
        netns: s.linux.as_ref().and_then(|l| {
            l.namespaces
                .iter()
                .find(|n| n.typ == "network" && !n.path.is_empty())
                .map(|n| n.path.clone())
        }),
        // A host path means nothing in the guest: only that it is shared.
        // A sandbox or a container outside a pod has nothing to share with.
        sandbox_pidns: kind == Kind::Container
            && s.linux.as_ref().is_some_and(|l| {
                l.namespaces
                    .iter()
                    .any(|n| n.typ == "pid" && !n.path.is_empty())
            }),
    }
}

/// Kernel filesystems a container spec may mount in the guest; anything
/// else (a bind of a host path) exists on the host only.
const GUEST_FS: &[&str] = &[
    "proc", "tmpfs", "devpts", "mqueue", "sysfs", "cgroup", "cgroup2",
];

/// A bind of the host's per-pod shared memory becomes the guest's own.
fn guest_mount(m: &Mount) -> Option<pb::Mount> {
    let bind = m.typ == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind");
    let m = if bind && m.destination == "/dev/shm" {
        Mount {
            destination: "/dev/shm".into(),
            source: "shm".into(),
            typ: "tmpfs".into(),
            options: ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    } else if bind || !GUEST_FS.contains(&m.typ.as_str()) {
        tracing::warn!(
            destination = %m.destination,
            typ = %m.typ,
            "host mount left out: the pod VM shares no host files"
        );
        return None;
    } else {
        m.clone()
    };
    Some(pb::Mount {
        destination: m.destination,
        source: m.source,
        type_: m.typ,
        options: m.options,
        ..Default::default()
    })
}

fn process(p: Process) -> pb::Process {
    pb::Process {
        Terminal: p.terminal,
        ConsoleSize: p
            .console_size
            .map(|c| pb::Box {
                Height: c.height,
                Width: c.width,
                ..Default::default()
            })
            .into(),
        User: Some(pb::User {
            UID: p.user.uid,
            GID: p.user.gid,
            AdditionalGids: p.user.additional_gids,
            Username: p.user.username,
            ..Default::default()
        })
        .into(),
        Args: p.args,
        Env: p.env,
        Cwd: p.cwd,
        Capabilities: p
            .capabilities
            .map(|c| pb::LinuxCapabilities {
                Bounding: c.bounding,
                Effective: c.effective,
                Inheritable: c.inheritable,
                Permitted: c.permitted,
                Ambient: c.ambient,
                ..Default::default()
            })
            .into(),
        Rlimits: p
            .rlimits
            .into_iter()
            .map(|r| pb::POSIXRlimit {
                Type: r.typ,
                Hard: r.hard,
                Soft: r.soft,
                ..Default::default()
            })
            .collect(),
        NoNewPrivileges: p.no_new_privileges,
        OOMScoreAdj: p.oom_score_adj.unwrap_or_default(),
        ..Default::default()
    }
}

fn resources(r: Resources) -> pb::LinuxResources {
    pb::LinuxResources {
        Memory: r
            .memory
            .map(|m| pb::LinuxMemory {
                Limit: m.limit.unwrap_or_default(),
                Reservation: m.reservation.unwrap_or_default(),
                Swap: m.swap.unwrap_or_default(),
                Swappiness: m.swappiness.unwrap_or_default(),
                DisableOOMKiller: m.disable_oom_killer.unwrap_or_default(),
                ..Default::default()
            })
            .into(),
        CPU: r
            .cpu
            .map(|c| pb::LinuxCPU {
                Shares: c.shares.unwrap_or_default(),
                Quota: c.quota.unwrap_or_default(),
                Period: c.period.unwrap_or_default(),
                // Host CPU and memory-node numbers mean nothing in the VM.
                ..Default::default()
            })
            .into(),
        Pids: r
            .pids
            .map(|p| pb::LinuxPids {
                Limit: p.limit,
                ..Default::default()
            })
            .into(),
        HugepageLimits: r
            .hugepage_limits
            .into_iter()
            .map(|h| pb::LinuxHugepageLimit {
                Pagesize: h.page_size,
                Limit: h.limit,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn id_mappings(v: Vec<IdMapping>) -> Vec<pb::LinuxIDMapping> {
    v.into_iter()
        .map(|m| pb::LinuxIDMapping {
            HostID: m.host_id,
            ContainerID: m.container_id,
            Size: m.size,
            ..Default::default()
        })
        .collect()
}

fn linux(l: Linux, sandbox_pidns: bool) -> pb::Linux {
    pb::Linux {
        UIDMappings: id_mappings(l.uid_mappings),
        GIDMappings: id_mappings(l.gid_mappings),
        Sysctl: l.sysctl,
        Resources: l.resources.map(resources).into(),
        // Fresh namespaces in the guest; the VM itself is the pod's
        // network namespace, so none is made for the network. A shared
        // process namespace is `sandbox_pidns` (as Kata's runtime sends it).
        Namespaces: l
            .namespaces
            .into_iter()
            .filter(|n| n.typ != "network" && !(sandbox_pidns && n.typ == "pid"))
            .map(|n| pb::LinuxNamespace {
                Type: n.typ,
                ..Default::default()
            })
            .collect(),
        RootfsPropagation: l.rootfs_propagation,
        MaskedPaths: l.masked_paths,
        ReadonlyPaths: l.readonly_paths,
        ..Default::default()
    }
}

/// Parses a bundle's `config.json` into the guest spec and the host's
/// view of the container.
pub fn from_json(bytes: &[u8]) -> Result<(pb::Spec, Meta), SpecError> {
    let s: Spec = serde_json::from_slice(bytes).map_err(|e| SpecError::Parse(e.to_string()))?;
    let meta = meta(&s);
    let p = s.process.ok_or(SpecError::NoProcess)?;
    let root = s.root.unwrap_or_default();
    let spec = pb::Spec {
        Version: s.oci_version,
        Process: Some(process(p)).into(),
        Root: Some(pb::Root {
            // The guest mounts the rootfs at `<bundle>/rootfs`.
            Path: "rootfs".into(),
            Readonly: root.readonly,
            ..Default::default()
        })
        .into(),
        Hostname: s.hostname,
        Mounts: s.mounts.iter().filter_map(guest_mount).collect(),
        Annotations: s.annotations,
        Linux: s.linux.map(|l| linux(l, meta.sandbox_pidns)).into(),
        ..Default::default()
    };
    Ok((spec, meta))
}

/// Parses an exec's process (the runtime-spec `process` JSON containerd
/// sends in `Exec`).
pub fn process_from_json(bytes: &[u8]) -> Result<pb::Process, SpecError> {
    let p: Process = serde_json::from_slice(bytes).map_err(|e| SpecError::Parse(e.to_string()))?;
    Ok(process(p))
}

/// Parses the runtime-spec `linux.resources` JSON containerd sends in
/// `Update`.
pub fn resources_from_json(bytes: &[u8]) -> Result<pb::LinuxResources, SpecError> {
    let r: Resources =
        serde_json::from_slice(bytes).map_err(|e| SpecError::Parse(e.to_string()))?;
    Ok(resources(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sandbox spec the way containerd's CRI writes it (trimmed).
    const SANDBOX: &str = r#"{
      "ociVersion": "1.0.2-dev",
      "process": {"user": {"uid": 65535, "gid": 65535}, "args": ["/pause"], "cwd": "/",
        "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]},
        "noNewPrivileges": true, "oomScoreAdj": -998},
      "root": {"path": "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs", "readonly": true},
      "hostname": "web",
      "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev/shm", "type": "bind", "source": "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/abc/shm", "options": ["rbind", "ro"]},
        {"destination": "/etc/resolv.conf", "type": "bind", "source": "/var/lib/containerd/resolv.conf", "options": ["rbind"]},
        {"destination": "/data", "type": "nfs", "source": "server:/x"}
      ],
      "annotations": {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "abc"},
      "linux": {
        "resources": {"memory": {"limit": 1048576}, "cpu": {"shares": 2, "quota": 50000, "period": 100000, "cpus": "0-3"}, "pids": {"limit": 64}},
        "cgroupsPath": "/k8s.io/abc",
        "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                       {"type": "network", "path": "/var/run/netns/cni-1234"}],
        "seccomp": {"defaultAction": "SCMP_ACT_ERRNO"},
        "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]
      }
    }"#;

    #[test]
    fn a_cri_sandbox_spec_keeps_what_the_guest_can_use() {
        let (spec, meta) = from_json(SANDBOX.as_bytes()).unwrap();
        assert_eq!(meta.kind, Kind::Pause);
        assert_eq!(meta.sandbox_id.as_deref(), Some("abc"));
        assert_eq!(meta.netns.as_deref(), Some("/var/run/netns/cni-1234"));
        let p = spec.Process.as_ref().unwrap();
        assert_eq!(p.Args, ["/pause"]);
        assert_eq!(p.User.UID, 65535);
        assert_eq!(p.OOMScoreAdj, -998);
        assert!(p.NoNewPrivileges);
        assert_eq!(p.Capabilities.Bounding, ["CAP_CHOWN"]);
        // The guest mounts the pulled rootfs at <bundle>/rootfs.
        assert_eq!(spec.Root.Path, "rootfs");
        assert!(spec.Root.Readonly);
        assert_eq!(spec.Hostname, "web");
        // Host binds are left out; the host's pod shm becomes the guest's own.
        let dests: Vec<(&str, &str)> = spec
            .Mounts
            .iter()
            .map(|m| (m.destination.as_str(), m.type_.as_str()))
            .collect();
        assert_eq!(dests, [("/proc", "proc"), ("/dev/shm", "tmpfs")]);
        let l = spec.Linux.as_ref().unwrap();
        // No host paths: no network namespace, no cgroup path, no CPU set.
        assert!(
            l.Namespaces
                .iter()
                .all(|n| n.Type != "network" && n.Path.is_empty())
        );
        assert_eq!(l.Namespaces.len(), 4);
        assert!(l.CgroupsPath.is_empty());
        assert!(l.Seccomp.is_none());
        let r = l.Resources.as_ref().unwrap();
        assert_eq!(r.Memory.Limit, 1048576);
        assert_eq!(
            (r.CPU.Quota, r.CPU.Period, r.CPU.Shares),
            (50000, 100000, 2)
        );
        assert!(r.CPU.Cpus.is_empty());
        assert_eq!(r.Pids.Limit, 64);
        assert_eq!(l.MaskedPaths, ["/proc/kcore"]);
    }

    #[test]
    fn container_kinds_come_from_cri_annotations() {
        let c = r#"{"process": {"args": ["sh"]}, "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": "abc",
            "io.kubernetes.cri.image-name": "127.0.0.1:5000/app:1"}}"#;
        let (_, m) = from_json(c.as_bytes()).unwrap();
        assert_eq!(m.kind, Kind::Container);
        assert_eq!(m.image.as_deref(), Some("127.0.0.1:5000/app:1"));
        let (_, m) = from_json(br#"{"process": {"args": ["sh"]}}"#).unwrap();
        assert_eq!(m.kind, Kind::Standalone);
        assert_eq!(m.sandbox_id, None);
    }

    #[test]
    fn a_shared_process_namespace_becomes_sandbox_pidns() {
        let spec = |kind: &str, pid_path: &str| {
            format!(
                r#"{{"process": {{"args": ["sh"]}}, "annotations": {{"io.kubernetes.cri.container-type": "{kind}"}},
                "linux": {{"namespaces": [{{"type": "pid", "path": "{pid_path}"}}, {{"type": "ipc"}}, {{"type": "mount"}}]}}}}"#
            )
        };
        let types = |s: &pb::Spec| -> Vec<String> {
            s.Linux.Namespaces.iter().map(|n| n.Type.clone()).collect()
        };
        // CRI names the sandbox's PID namespace for shareProcessNamespace:
        // the guest joins its pause container's; no pid entry goes along.
        let (s, m) = from_json(spec("container", "/proc/42/ns/pid").as_bytes()).unwrap();
        assert!(m.sandbox_pidns);
        assert_eq!(types(&s), ["ipc", "mount"]);
        // A namespace of its own: a fresh one in the guest.
        let (s, m) = from_json(spec("container", "").as_bytes()).unwrap();
        assert!(!m.sandbox_pidns);
        assert_eq!(types(&s), ["pid", "ipc", "mount"]);
        // The sandbox itself, or a container outside a pod, shares nothing.
        for kind in ["sandbox", "none"] {
            let (s, m) = from_json(spec(kind, "/proc/42/ns/pid").as_bytes()).unwrap();
            assert!(!m.sandbox_pidns, "{kind}");
            assert!(s.Linux.Namespaces.iter().all(|n| n.Path.is_empty()));
            assert_eq!(types(&s), ["pid", "ipc", "mount"]);
        }
    }

    #[test]
    fn specs_that_are_not_runtime_specs_are_refused() {
        assert!(matches!(from_json(b"{}"), Err(SpecError::NoProcess)));
        assert!(matches!(from_json(b"[1]"), Err(SpecError::Parse(_))));
        assert!(matches!(from_json(b"\xff"), Err(SpecError::Parse(_))));
        assert!(matches!(
            from_json(br#"{"process": {"args": "not a list"}}"#),
            Err(SpecError::Parse(_))
        ));
    }

    #[test]
    fn exec_processes_and_resource_updates_parse() {
        let p = process_from_json(
            br#"{"args": ["ls", "-l"], "env": ["A=b"], "cwd": "/tmp", "terminal": true}"#,
        )
        .unwrap();
        assert_eq!(p.Args, ["ls", "-l"]);
        assert_eq!(p.Env, ["A=b"]);
        assert!(p.Terminal);
        let r = resources_from_json(br#"{"memory": {"limit": 4096}}"#).unwrap();
        assert_eq!(r.Memory.Limit, 4096);
        assert!(process_from_json(b"nope").is_err());
    }
}
