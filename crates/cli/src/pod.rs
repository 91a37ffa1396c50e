//! `cocoon pod`: a kubelet-less CRI client. It takes a Kubernetes Pod
//! manifest and performs kubelet's sequence against a CRI runtime
//! (containerd): PullImage, RunPodSandbox with the runtime handler,
//! CreateContainer and StartContainer for each container; then it follows
//! the containers' CRI log files, and with `--rm` stops and removes the
//! pod. `exec`, `logs`, `ls` and `rm` work on pods it (or kubelet) made.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use cocoon_host_grpc::cri;
use cri::image_service_client::ImageServiceClient;
use cri::runtime_service_client::RuntimeServiceClient;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::Channel;

/// containerd's CRI socket, where `--runtime-endpoint` and
/// `CONTAINER_RUNTIME_ENDPOINT` point when not given (as crictl takes them).
pub const DEFAULT_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";

#[derive(Args, Clone)]
pub struct Endpoint {
    /// The CRI socket (`unix:///path`).
    #[arg(long, global = true, env = "CONTAINER_RUNTIME_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    runtime_endpoint: String,
}

#[derive(Subcommand)]
pub enum PodCommand {
    /// Run a Pod manifest: pull, sandbox, containers; follow the logs.
    Run(RunArgs),
    /// Run a command in a container of a pod and print its output.
    Exec(ExecArgs),
    /// Print a container's log.
    Logs(LogsArgs),
    /// List pods: id, name, state, runtime handler, IP.
    Ls(Endpoint),
    /// Stop and remove pods (by id, id prefix or name).
    Rm(RmArgs),
    /// Pull an image through the runtime's CRI image service, as kubelet
    /// does before it starts a pod.
    Pull(PullArgs),
}

#[derive(Args)]
pub struct PullArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// The image reference.
    image: String,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// The runtime handler (RuntimeClass handler); default: the
    /// manifest's `runtimeClassName`, else the runtime's default.
    #[arg(long)]
    runtime_handler: Option<String>,
    /// Return once the containers run, printing the pod id.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Stop and remove the pod when its containers have exited.
    #[arg(long, conflicts_with = "detach")]
    rm: bool,
    /// Where pod log directories go (kubelet: /var/log/pods).
    #[arg(long, default_value = "/var/log/pods")]
    log_root: PathBuf,
    /// The Pod manifest (YAML or JSON).
    manifest: PathBuf,
}

#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// Seconds before the command is stopped (0: no limit).
    #[arg(long, default_value_t = 0)]
    timeout: i64,
    /// The pod (id, id prefix or name).
    pod: String,
    /// The container's name in the pod.
    container: String,
    /// The command.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

#[derive(Args)]
pub struct LogsArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// The pod (id, id prefix or name).
    pod: String,
    /// The container's name in the pod.
    container: String,
}

#[derive(Args)]
pub struct RmArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// Pods (id, id prefix or name).
    #[arg(required = true)]
    pods: Vec<String>,
}

/// The part of a Kubernetes Pod manifest this client runs.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    #[serde(default)]
    kind: Option<String>,
    metadata: Meta,
    spec: PodSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Meta {
    name: String,
    namespace: Option<String>,
    uid: Option<String>,
    labels: HashMap<String, String>,
    annotations: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct PodSpec {
    runtime_class_name: Option<String>,
    hostname: Option<String>,
    containers: Vec<ContainerSpec>,
    security_context: SecurityContext,
    volumes: Vec<serde_yaml_ng::Value>,
    share_process_namespace: bool,
    #[serde(rename = "hostPID")]
    host_pid: bool,
    #[serde(rename = "hostIPC")]
    host_ipc: bool,
    host_network: bool,
}

/// A pod's or a container's `securityContext` (the pod's holds the
/// groups; the container's alone the privilege settings).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct SecurityContext {
    run_as_user: Option<i64>,
    run_as_group: Option<i64>,
    run_as_non_root: Option<bool>,
    seccomp_profile: Option<SeccompProfile>,
    privileged: Option<bool>,
    read_only_root_filesystem: Option<bool>,
    allow_privilege_escalation: Option<bool>,
    capabilities: Capabilities,
    proc_mount: Option<String>,
    supplemental_groups: Vec<i64>,
    fs_group: Option<i64>,
    sysctls: Vec<Sysctl>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Sysctl {
    name: String,
    value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Capabilities {
    add: Vec<String>,
    drop: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct SeccompProfile {
    #[serde(rename = "type")]
    typ: String,
    localhost_profile: Option<String>,
}

/// Where kubelet keeps `Localhost` seccomp profiles.
const SECCOMP_ROOT: &str = "/var/lib/kubelet/seccomp";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ContainerSpec {
    name: String,
    image: String,
    command: Vec<String>,
    args: Vec<String>,
    working_dir: Option<String>,
    env: Vec<EnvVar>,
    ports: Vec<Port>,
    stdin: bool,
    tty: bool,
    resources: Resources,
    security_context: SecurityContext,
    volume_mounts: Vec<serde_yaml_ng::Value>,
}

/// `resources` of a container: Kubernetes quantities.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Resources {
    limits: HashMap<String, serde_yaml_ng::Value>,
    requests: HashMap<String, serde_yaml_ng::Value>,
}

/// CFS period kubelet uses, microseconds.
const CPU_PERIOD: i64 = 100_000;

impl Resources {
    /// As kubelet passes them: memory limit in bytes; CPU limit as a CFS
    /// quota over a 100 ms period; CPU request as shares (1024 a core,
    /// at least 2).
    fn to_cri(&self, container: &str) -> Result<cri::LinuxContainerResources> {
        let get = |m: &HashMap<String, serde_yaml_ng::Value>, k: &str| -> Result<Option<String>> {
            Ok(match m.get(k) {
                None => None,
                Some(serde_yaml_ng::Value::String(s)) => Some(s.clone()),
                Some(serde_yaml_ng::Value::Number(n)) => Some(n.to_string()),
                Some(other) => {
                    bail!("container {container:?}: resources {k} {other:?} is not a quantity")
                }
            })
        };
        let mut r = cri::LinuxContainerResources::default();
        if let Some(q) = get(&self.limits, "memory")? {
            r.memory_limit_in_bytes = quantity(&q, 1)
                .with_context(|| format!("container {container:?}: limits.memory"))?;
        }
        let cpu_limit = get(&self.limits, "cpu")?
            .map(|q| {
                quantity(&q, 1000).with_context(|| format!("container {container:?}: limits.cpu"))
            })
            .transpose()?;
        // No limit (or 0): no quota, as kubelet.
        if let Some(milli) = cpu_limit.filter(|m| *m > 0) {
            r.cpu_period = CPU_PERIOD;
            r.cpu_quota = (milli * CPU_PERIOD / 1000).max(1000);
        }
        // A request defaults to the limit, as Kubernetes fills it in.
        let cpu_request = get(&self.requests, "cpu")?
            .map(|q| {
                quantity(&q, 1000).with_context(|| format!("container {container:?}: requests.cpu"))
            })
            .transpose()?
            .or(cpu_limit);
        if let Some(milli) = cpu_request {
            r.cpu_shares = (milli * 1024 / 1000).clamp(2, 262_144);
        }
        Ok(r)
    }
}

/// A Kubernetes quantity (`128Mi`, `1G`, `500m`, `0.5`, `2e3`) times
/// `scale`, rounded up: bytes with scale 1, millicores with 1000. Exact
/// decimal arithmetic: `700m` is 700 millicores, not 701.
fn quantity(q: &str, scale: i64) -> Result<i64> {
    let bad = || anyhow::anyhow!("{q:?} is not a Kubernetes quantity");
    let q = q.trim();
    // (suffix, numerator, denominator)
    const SUFFIXES: [(&str, i128, i128); 13] = [
        ("Ki", 1 << 10, 1),
        ("Mi", 1 << 20, 1),
        ("Gi", 1 << 30, 1),
        ("Ti", 1 << 40, 1),
        ("Pi", 1 << 50, 1),
        ("Ei", 1 << 60, 1),
        ("m", 1, 1000),
        ("k", 1_000, 1),
        ("M", 1_000_000, 1),
        ("G", 1_000_000_000, 1),
        ("T", 1_000_000_000_000, 1),
        ("P", 1_000_000_000_000_000, 1),
        ("E", 1_000_000_000_000_000_000, 1),
    ];
    let (mut body, mut num, mut den) = SUFFIXES
        .iter()
        .find_map(|(s, n, d)| q.strip_suffix(s).map(|b| (b, *n, *d)))
        .unwrap_or((q, 1, 1));
    // A decimal exponent stands in for a suffix, never beside one.
    if (num, den) == (1, 1)
        && let Some((m, e)) = body.split_once(['e', 'E'])
    {
        let e: u32 = e
            .strip_prefix('+')
            .unwrap_or(e)
            .parse()
            .map_err(|_| bad())?;
        num = 10i128.checked_pow(e).filter(|_| e <= 18).ok_or_else(bad)?;
        den = 1;
        body = m;
    }
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || int.len() + frac.len() > 30
    {
        return Err(bad());
    }
    let digits: i128 = format!("{int}{frac}").parse().map_err(|_| bad())?;
    den = den
        .checked_mul(10i128.checked_pow(frac.len() as u32).ok_or_else(bad)?)
        .ok_or_else(bad)?;
    let top = digits
        .checked_mul(num)
        .and_then(|v| v.checked_mul(i128::from(scale)))
        .ok_or_else(|| anyhow::anyhow!("{q:?} is out of range"))?;
    let v = (top + den - 1) / den;
    i64::try_from(v)
        .ok()
        .filter(|v| *v <= i64::MAX / 1024 / 1024)
        .ok_or_else(|| anyhow::anyhow!("{q:?} is out of range"))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct EnvVar {
    name: String,
    value: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Port {
    container_port: i32,
    host_port: Option<i32>,
    host_ip: Option<String>,
    protocol: Option<String>,
}

impl Pod {
    /// Parses a manifest: a `kind: Pod` document (YAML or JSON).
    pub fn parse(text: &str) -> Result<Self> {
        let pod: Pod =
            serde_yaml_ng::from_str(text).context("the manifest is not a Kubernetes Pod")?;
        if let Some(k) = &pod.kind
            && k != "Pod"
        {
            bail!("the manifest is a {k}, not a Pod");
        }
        if pod.metadata.name.is_empty() {
            bail!("the Pod has no metadata.name");
        }
        if pod.spec.containers.is_empty() {
            bail!("the Pod has no containers");
        }
        for (set, what) in [
            (pod.spec.host_network, "hostNetwork"),
            (pod.spec.host_pid, "hostPID"),
            (pod.spec.host_ipc, "hostIPC"),
        ] {
            if set {
                bail!("{what}: cocoon pod run does not share the node's namespaces with a pod");
            }
        }
        if !pod.spec.volumes.is_empty()
            || pod
                .spec
                .containers
                .iter()
                .any(|c| !c.volume_mounts.is_empty())
        {
            bail!(
                "volumes: cocoon pod run mounts no volumes (a confidential pod's VM shares no host directory); remove volumes and volumeMounts"
            );
        }
        pod.spec.seccomp(None)?;
        for s in &pod.spec.security_context.sysctls {
            if s.name.is_empty()
                || !s
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
            {
                bail!("securityContext.sysctls: {:?} is not a sysctl name", s.name);
            }
        }
        // Names become paths (the pod's log directory) and CRI metadata:
        // Kubernetes' own rules keep them plain.
        check_name("metadata.name", &pod.metadata.name, 253)?;
        if let Some(ns) = &pod.metadata.namespace {
            check_name("metadata.namespace", ns, 63)?;
        }
        if let Some(uid) = &pod.metadata.uid
            && (uid.is_empty()
                || uid.len() > 64
                || !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            bail!("metadata.uid {uid:?} is not a UID (letters, digits and '-')");
        }
        for c in &pod.spec.containers {
            if c.image.is_empty() {
                bail!("container {:?} has no image", c.name);
            }
            check_name("a container name", &c.name, 63)?;
            c.resources.to_cri(&c.name)?;
            // What can be checked before the image is known.
            pod.spec.seccomp(Some(c))?;
            pod.spec.check_non_root(c, None)?;
        }
        Ok(pod)
    }

    fn namespace(&self) -> String {
        self.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())
    }

    /// The sandbox config kubelet would send.
    fn sandbox_config(&self, uid: &str, log_root: &Path) -> cri::PodSandboxConfig {
        let ns = self.namespace();
        let name = &self.metadata.name;
        let mut ports = Vec::new();
        for c in &self.spec.containers {
            for p in &c.ports {
                ports.push(cri::PortMapping {
                    protocol: match p.protocol.as_deref() {
                        Some("UDP") => cri::Protocol::Udp as i32,
                        Some("SCTP") => cri::Protocol::Sctp as i32,
                        _ => cri::Protocol::Tcp as i32,
                    },
                    container_port: p.container_port,
                    host_port: p.host_port.unwrap_or_default(),
                    host_ip: p.host_ip.clone().unwrap_or_default(),
                });
            }
        }
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.clone(),
                uid: uid.into(),
                namespace: ns.clone(),
                attempt: 0,
            }),
            hostname: self.spec.hostname.clone().unwrap_or_else(|| name.clone()),
            log_directory: log_root
                .join(format!("{ns}_{name}_{uid}"))
                .display()
                .to_string(),
            port_mappings: ports,
            labels: self.metadata.labels.clone(),
            annotations: self.metadata.annotations.clone(),
            // The pod's security settings and sysctls, as kubelet passes
            // them (a privileged container needs a privileged sandbox).
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(self.spec.sandbox_security_context()),
                sysctls: (self.spec.security_context.sysctls.iter())
                    .map(|s| (s.name.clone(), s.value.clone()))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn container_config(
    pod: &PodSpec,
    c: &ContainerSpec,
    user: &ImageUser,
) -> Result<cri::ContainerConfig> {
    Ok(cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.clone(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: c.image.clone(),
            ..Default::default()
        }),
        command: c.command.clone(),
        args: c.args.clone(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: c
            .env
            .iter()
            .map(|e| cri::KeyValue {
                key: e.name.clone(),
                value: e.value.clone().unwrap_or_default(),
            })
            .collect(),
        log_path: format!("{}/0.log", c.name),
        stdin: c.stdin,
        tty: c.tty,
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(c.resources.to_cri(&c.name)?),
            security_context: Some(pod.security_context(c, user)?),
        }),
        ..Default::default()
    })
}

/// The user an image runs as, as the runtime's ImageStatus gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ImageUser {
    /// A UID (root when the image names no user, as kubelet takes it).
    Uid(i64),
    /// A user name, resolved in the container.
    Name(String),
}

impl PodSpec {
    /// The security context kubelet sends for container `c` of this pod
    /// whose image runs as `image`: the container's settings over the
    /// pod's, the pod's groups, the image's user unless the manifest names
    /// one, and `runAsNonRoot` checked as kubelet checks it.
    fn security_context(
        &self,
        c: &ContainerSpec,
        image: &ImageUser,
    ) -> Result<cri::LinuxContainerSecurityContext> {
        let (own, pod) = (&c.security_context, &self.security_context);
        let run_as_user = own.run_as_user.or(pod.run_as_user);
        let run_as_group = own.run_as_group.or(pod.run_as_group);
        self.check_non_root(c, Some(image))?;
        let mut sc = kubelet_security_context();
        if own.proc_mount.as_deref() == Some("Unmasked") {
            sc.masked_paths.clear();
            sc.readonly_paths.clear();
        }
        sc.privileged = own.privileged == Some(true);
        sc.readonly_rootfs = own.read_only_root_filesystem == Some(true);
        sc.no_new_privs = own.allow_privilege_escalation == Some(false);
        if !own.capabilities.add.is_empty() || !own.capabilities.drop.is_empty() {
            sc.capabilities = Some(cri::Capability {
                add_capabilities: own.capabilities.add.clone(),
                drop_capabilities: own.capabilities.drop.clone(),
                add_ambient_capabilities: vec![],
            });
        }
        // The manifest's user, else the image's (kubelet sends it either way).
        match (run_as_user, image) {
            (Some(value), _) | (None, &ImageUser::Uid(value)) => {
                sc.run_as_user = Some(cri::Int64Value { value })
            }
            (None, ImageUser::Name(n)) => sc.run_as_username = n.clone(),
        }
        sc.run_as_group = run_as_group.map(|value| cri::Int64Value { value });
        sc.supplemental_groups = self.groups();
        sc.namespace_options = Some(self.namespace_options());
        sc.seccomp = Some(self.seccomp(Some(c))?);
        Ok(sc)
    }

    /// The sandbox's: the pod's user, groups, namespaces and seccomp
    /// profile, privileged when a container is.
    fn sandbox_security_context(&self) -> cri::LinuxSandboxSecurityContext {
        let sc = &self.security_context;
        cri::LinuxSandboxSecurityContext {
            namespace_options: Some(self.namespace_options()),
            run_as_user: sc.run_as_user.map(|value| cri::Int64Value { value }),
            run_as_group: sc.run_as_group.map(|value| cri::Int64Value { value }),
            supplemental_groups: self.groups(),
            privileged: (self.containers.iter())
                .any(|c| c.security_context.privileged == Some(true)),
            // Checked when the manifest was read.
            seccomp: self.seccomp(None).ok(),
            readonly_rootfs: false,
        }
    }

    /// The pod's `fsGroup` and `supplementalGroups`.
    fn groups(&self) -> Vec<i64> {
        let sc = &self.security_context;
        sc.fs_group
            .into_iter()
            .chain(sc.supplemental_groups.iter().copied())
            .collect()
    }

    /// The network and IPC namespaces are the pod's; the process
    /// namespace each container's own unless `shareProcessNamespace`.
    fn namespace_options(&self) -> cri::NamespaceOption {
        kubelet_namespaces(self.share_process_namespace)
    }

    /// `runAsNonRoot` as kubelet checks it, against the manifest's user or
    /// else the image's (`None`: not known yet, only the manifest checked).
    fn check_non_root(&self, c: &ContainerSpec, image: Option<&ImageUser>) -> Result<()> {
        let (own, pod) = (&c.security_context, &self.security_context);
        if own.run_as_non_root.or(pod.run_as_non_root) != Some(true) {
            return Ok(());
        }
        let why = match (own.run_as_user.or(pod.run_as_user), image) {
            (Some(0), _) => "runAsUser 0 breaks runAsNonRoot".to_string(),
            (Some(_), _) | (None, None) | (None, Some(ImageUser::Uid(1..))) => return Ok(()),
            (None, Some(ImageUser::Uid(_))) => {
                "runAsNonRoot is set and the image runs as root".into()
            }
            (None, Some(ImageUser::Name(n))) => format!(
                "runAsNonRoot is set and the image's user {n:?} is a name, so it cannot be \
                 verified to be non-root (set runAsUser)"
            ),
        };
        bail!("container {:?}: {why}", c.name)
    }

    /// The seccomp profile kubelet sends: the container's over the pod's
    /// (the pod's alone for the sandbox, `c` None), Unconfined when
    /// neither names one.
    fn seccomp(&self, c: Option<&ContainerSpec>) -> Result<cri::SecurityProfile> {
        use cri::security_profile::ProfileType;
        let profile = c
            .and_then(|c| c.security_context.seccomp_profile.as_ref())
            .or(self.security_context.seccomp_profile.as_ref());
        let name = c.map_or("the pod".to_string(), |c| format!("container {:?}", c.name));
        let (typ, localhost_ref) = match profile.map(|p| (p.typ.as_str(), p)) {
            None | Some(("Unconfined", _)) => (ProfileType::Unconfined, String::new()),
            Some(("RuntimeDefault", _)) => (ProfileType::RuntimeDefault, String::new()),
            Some(("Localhost", p)) => {
                let file = p
                    .localhost_profile
                    .as_deref()
                    .filter(|f| {
                        !f.is_empty() && !f.starts_with('/') && !f.split('/').any(|s| s == "..")
                    })
                    .with_context(|| {
                        format!(
                            "{name}: a Localhost seccompProfile needs a localhostProfile, \
                             a relative path within {SECCOMP_ROOT}"
                        )
                    })?;
                (ProfileType::Localhost, format!("{SECCOMP_ROOT}/{file}"))
            }
            Some((other, _)) => bail!(
                "{name}: seccompProfile type {other:?} is not RuntimeDefault, Unconfined or Localhost"
            ),
        };
        Ok(cri::SecurityProfile {
            profile_type: typ as i32,
            localhost_ref,
        })
    }
}

/// The security context kubelet sends for a container with the default
/// proc mount: its masked and read-only paths (ours, less the
/// `/sys/kernel` mount points kubelet leaves to the runtime), and its
/// namespaces for a pod that does not share its process namespace.
pub(crate) fn kubelet_security_context() -> cri::LinuxContainerSecurityContext {
    use cocoon_types::container::{MASKED_PATHS, READONLY_PATHS};
    cri::LinuxContainerSecurityContext {
        namespace_options: Some(kubelet_namespaces(false)),
        masked_paths: MASKED_PATHS
            .iter()
            .filter(|p| !p.starts_with("/sys/kernel/"))
            .map(|p| p.to_string())
            .collect(),
        readonly_paths: READONLY_PATHS.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    }
}

/// The namespaces kubelet asks for: the pod's network and IPC, and the
/// pod's process namespace or (CRI's zero value would share it) the
/// container's own.
fn kubelet_namespaces(share_pid: bool) -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: if share_pid {
            cri::NamespaceMode::Pod
        } else {
            cri::NamespaceMode::Container
        } as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        target_id: String::new(),
    }
}

/// A Kubernetes name: lower-case letters, digits, '-' and '.', starting
/// and ending with a letter or digit (RFC 1123).
fn check_name(what: &str, name: &str, max: usize) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if !ok {
        bail!(
            "{what} {name:?} is not a Kubernetes name (lower-case letters, digits, '-' and '.', at most {max})"
        );
    }
    Ok(())
}

/// An exit code as this process's status: an unknown (negative) code is
/// a failure, not success.
fn exit_status(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(255)
}

/// Clients of a CRI runtime.
#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects to `endpoint` (`unix:///path`, or a bare path).
    pub async fn connect(endpoint: &str) -> Result<Self> {
        let path = endpoint
            .strip_prefix("unix://")
            .unwrap_or(endpoint)
            .to_string();
        if endpoint.contains("://") && !endpoint.starts_with("unix://") {
            bail!("runtime endpoint {endpoint}: only unix:// sockets are supported");
        }
        let p = path.clone();
        let channel = tonic::transport::Endpoint::try_from("http://cri.local")?
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(p).await?,
                    ))
                }
            }))
            .await
            .with_context(|| format!("connecting to the CRI runtime at {path}"))?;
        let c = Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        };
        c.runtime
            .clone()
            .version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await
            .map_err(status)
            .with_context(|| format!("the CRI runtime at {path} does not answer runtime.v1"))?;
        Ok(c)
    }

    /// The user `image` runs as, from the runtime's ImageStatus, as
    /// kubelet reads it: its UID, else its user name, else root.
    async fn image_user(&self, image: &str) -> Result<ImageUser> {
        let status = self
            .images
            .clone()
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .map_err(status)
            .with_context(|| format!("reading the status of image {image}"))?
            .into_inner();
        let Some(i) = status.image else {
            bail!("the runtime does not have image {image} (pull it first)");
        };
        Ok(match (i.uid, i.username) {
            (Some(u), _) => ImageUser::Uid(u.value),
            (None, n) if !n.is_empty() => ImageUser::Name(n),
            _ => ImageUser::Uid(0),
        })
    }

    /// Every pod sandbox.
    pub async fn pods(&self) -> Result<Vec<cri::PodSandbox>> {
        Ok(self
            .runtime
            .clone()
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
            .map_err(status)?
            .into_inner()
            .items)
    }

    /// The pod `key` names: its id, a unique id prefix, or its name.
    pub async fn find_pod(&self, key: &str) -> Result<cri::PodSandbox> {
        let pods = self.pods().await?;
        if let Some(p) = pods.iter().find(|p| p.id == key) {
            return Ok(p.clone());
        }
        let hits: Vec<&cri::PodSandbox> = pods
            .iter()
            .filter(|p| p.id.starts_with(key) || p.metadata.as_ref().is_some_and(|m| m.name == key))
            .collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => bail!("no pod is named or has the id {key}"),
            _ => bail!("{key} names {} pods: give the full id", hits.len()),
        }
    }

    /// The containers of a pod.
    pub async fn containers(&self, pod_id: &str) -> Result<Vec<cri::Container>> {
        Ok(self
            .runtime
            .clone()
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    pod_sandbox_id: pod_id.into(),
                    ..Default::default()
                }),
            })
            .await
            .map_err(status)?
            .into_inner()
            .containers)
    }

    /// The container named `name` in pod `pod`.
    pub async fn find_container(&self, pod: &str, name: &str) -> Result<cri::Container> {
        let p = self.find_pod(pod).await?;
        self.containers(&p.id)
            .await?
            .into_iter()
            .filter(|c| c.metadata.as_ref().is_some_and(|m| m.name == name))
            .max_by_key(|c| c.created_at)
            .with_context(|| format!("pod {pod} has no container named {name}"))
    }

    /// Stops and removes a pod.
    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        let mut rt = self.runtime.clone();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .map_err(status)
        .with_context(|| format!("stopping pod {id}"))?;
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .map_err(status)
        .with_context(|| format!("removing pod {id}"))?;
        Ok(())
    }
}

/// A gRPC status as the error a user reads: the runtime's message.
fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

/// One line of a CRI log file: `<RFC 3339 time> <stream> <P|F> <text>`.
pub fn parse_log_line(line: &str) -> Option<(&str, bool, &str)> {
    let mut it = line.splitn(4, ' ');
    let _time = it.next()?;
    let stream = it.next()?;
    let tag = it.next()?;
    let text = it.next().unwrap_or("");
    Some((stream, tag.split(':').next() == Some("F"), text))
}

/// Copies new lines of a CRI log file from `offset` to our stdout/stderr.
fn print_log(path: &Path, offset: &mut u64) -> Result<()> {
    use std::io::{Read, Seek, Write};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Ok(());
    };
    f.seek(std::io::SeekFrom::Start(*offset))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    // Only whole lines; a partial last line waits for the next round.
    let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(&buf[..=end]);
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    for line in text.lines() {
        if let Some((stream, full, msg)) = parse_log_line(line) {
            let w: &mut dyn Write = if stream == "stderr" {
                &mut err
            } else {
                &mut out
            };
            let _ = w.write_all(msg.as_bytes());
            if full {
                let _ = w.write_all(b"\n");
            }
        }
    }
    let _ = out.flush();
    *offset += end as u64 + 1;
    Ok(())
}

pub async fn run(cmd: PodCommand) -> Result<u8> {
    match cmd {
        PodCommand::Run(a) => run_pod(a).await,
        PodCommand::Exec(a) => {
            let cri = Cri::connect(&a.endpoint.runtime_endpoint).await?;
            let c = cri.find_container(&a.pod, &a.container).await?;
            let r = cri
                .runtime
                .clone()
                .exec_sync(cri::ExecSyncRequest {
                    container_id: c.id.clone(),
                    cmd: a.cmd.clone(),
                    timeout: a.timeout,
                })
                .await
                .map_err(status)
                .with_context(|| format!("exec in {}", a.container))?
                .into_inner();
            use std::io::Write;
            std::io::stdout().write_all(&r.stdout)?;
            std::io::stderr().write_all(&r.stderr)?;
            Ok(exit_status(r.exit_code))
        }
        PodCommand::Logs(a) => {
            let cri = Cri::connect(&a.endpoint.runtime_endpoint).await?;
            let c = cri.find_container(&a.pod, &a.container).await?;
            let st = cri
                .runtime
                .clone()
                .container_status(cri::ContainerStatusRequest {
                    container_id: c.id.clone(),
                    verbose: false,
                })
                .await
                .map_err(status)?
                .into_inner();
            let log = st.status.map(|s| s.log_path).unwrap_or_default();
            if log.is_empty() {
                bail!("container {} has no log file", a.container);
            }
            print_log(Path::new(&log), &mut 0)?;
            Ok(0)
        }
        PodCommand::Ls(e) => {
            let cri = Cri::connect(&e.runtime_endpoint).await?;
            outln!(
                "{:<13}  {:<24}  {:<8}  {:<10}  IP",
                "POD ID",
                "NAME",
                "STATE",
                "HANDLER"
            );
            for p in cri.pods().await? {
                let st = cri
                    .runtime
                    .clone()
                    .pod_sandbox_status(cri::PodSandboxStatusRequest {
                        pod_sandbox_id: p.id.clone(),
                        verbose: false,
                    })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().status);
                let ip = st.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default();
                let state = if p.state == cri::PodSandboxState::SandboxReady as i32 {
                    "Ready"
                } else {
                    "NotReady"
                };
                outln!(
                    "{:<13}  {:<24}  {:<8}  {:<10}  {}",
                    p.id.chars().take(13).collect::<String>(),
                    p.metadata.map(|m| m.name).unwrap_or_default(),
                    state,
                    if p.runtime_handler.is_empty() {
                        "(default)"
                    } else {
                        &p.runtime_handler
                    },
                    if ip.is_empty() { "-" } else { &ip }
                );
            }
            Ok(0)
        }
        PodCommand::Pull(a) => {
            let cri = Cri::connect(&a.endpoint.runtime_endpoint).await?;
            let r = cri
                .images
                .clone()
                .pull_image(cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image: a.image.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .map_err(status)
                .with_context(|| format!("pulling {}", a.image))?
                .into_inner();
            outln!("{}", r.image_ref);
            Ok(0)
        }
        PodCommand::Rm(a) => {
            let cri = Cri::connect(&a.endpoint.runtime_endpoint).await?;
            for key in &a.pods {
                let p = cri.find_pod(key).await?;
                cri.remove_pod(&p.id).await?;
                outln!("{}", p.id);
            }
            Ok(0)
        }
    }
}

async fn run_pod(a: RunArgs) -> Result<u8> {
    let text = std::fs::read_to_string(&a.manifest)
        .with_context(|| format!("reading {}", a.manifest.display()))?;
    let pod = Pod::parse(&text).with_context(|| a.manifest.display().to_string())?;
    let cri = Cri::connect(&a.endpoint.runtime_endpoint).await?;
    let uid = pod
        .metadata
        .uid
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let handler = a
        .runtime_handler
        .clone()
        .or_else(|| pod.spec.runtime_class_name.clone())
        .unwrap_or_default();
    let sandbox = pod.sandbox_config(&uid, &a.log_root);
    std::fs::create_dir_all(&sandbox.log_directory)
        .with_context(|| format!("creating the pod log directory {}", sandbox.log_directory))?;
    let mut rt = cri.runtime.clone();
    let mut images = cri.images.clone();
    // kubelet pulls before it creates the sandbox's containers; the pull
    // carries the sandbox config (annotations included).
    for c in &pod.spec.containers {
        images
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: c.image.clone(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: Some(sandbox.clone()),
            })
            .await
            .map_err(status)
            .with_context(|| format!("pulling {}", c.image))?;
    }
    let pod_id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: handler.clone(),
        })
        .await
        .map_err(status)
        .with_context(|| {
            format!(
                "starting pod {} (runtime handler {})",
                pod.metadata.name,
                if handler.is_empty() {
                    "default"
                } else {
                    &handler
                }
            )
        })?
        .into_inner()
        .pod_sandbox_id;
    let started = start_containers(&cri, &pod, &pod_id, &sandbox).await;
    let ids = match started {
        Ok(ids) => ids,
        Err(e) => {
            if a.rm {
                let _ = cri.remove_pod(&pod_id).await;
            }
            return Err(e.context(format!("pod {pod_id}")));
        }
    };
    if a.detach {
        outln!("{pod_id}");
        return Ok(0);
    }
    // Follow the logs until every container has exited.
    let logs: Vec<PathBuf> = pod
        .spec
        .containers
        .iter()
        .map(|c| Path::new(&sandbox.log_directory).join(format!("{}/0.log", c.name)))
        .collect();
    let mut offsets = vec![0u64; logs.len()];
    let mut exit = 0u8;
    let mut reported = std::collections::HashSet::new();
    loop {
        for (l, o) in logs.iter().zip(offsets.iter_mut()) {
            print_log(l, o)?;
        }
        let mut running = false;
        for id in &ids {
            let st = rt
                .container_status(cri::ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                })
                .await
                .map_err(status)?
                .into_inner()
                .status
                .unwrap_or_default();
            if st.state == cri::ContainerState::ContainerExited as i32 {
                if exit == 0 && st.exit_code != 0 {
                    exit = exit_status(st.exit_code);
                }
                if st.exit_code != 0 && reported.insert(id.clone()) {
                    let name = st.metadata.as_ref().map_or("", |m| m.name.as_str());
                    // containerd's reason: OOMKilled, Error, ...
                    eprintln!(
                        "container {name} exited with {}{}",
                        st.exit_code,
                        if st.reason.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", st.reason)
                        }
                    );
                }
            } else {
                running = true;
            }
        }
        if !running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (l, o) in logs.iter().zip(offsets.iter_mut()) {
        print_log(l, o)?;
    }
    if a.rm {
        cri.remove_pod(&pod_id).await?;
        let _ = std::fs::remove_dir_all(&sandbox.log_directory);
    } else {
        eprintln!("pod {pod_id} kept (cocoon pod rm {pod_id})");
    }
    Ok(exit)
}

async fn start_containers(
    cri: &Cri,
    pod: &Pod,
    pod_id: &str,
    sandbox: &cri::PodSandboxConfig,
) -> Result<Vec<String>> {
    let mut rt = cri.runtime.clone();
    let mut ids = Vec::new();
    for c in &pod.spec.containers {
        let user = cri.image_user(&c.image).await?;
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.into(),
                config: Some(container_config(&pod.spec, c, &user)?),
                sandbox_config: Some(sandbox.clone()),
            })
            .await
            .map_err(status)
            .with_context(|| format!("creating container {}", c.name))?
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .map_err(status)
        .with_context(|| format!("starting container {}", c.name))?;
        ids.push(id);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_manifest_becomes_kubelets_sandbox_and_container_configs() {
        let pod = Pod::parse(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: demo
  annotations:
    io.katacontainers.config.hypervisor.default_memory: "512"
spec:
  runtimeClassName: cocoon
  containers:
  - name: httpd
    image: 127.0.0.1:5000/busybox:1
    command: ["httpd", "-f"]
    args: ["-p", "8080"]
    env:
    - name: A
      value: b
    ports:
    - containerPort: 8080
    resources:
      limits: {memory: 64Mi, cpu: 500m}
"#,
        )
        .unwrap();
        assert_eq!(pod.spec.runtime_class_name.as_deref(), Some("cocoon"));
        let s = pod.sandbox_config("u1", Path::new("/logs"));
        let m = s.metadata.as_ref().unwrap();
        assert_eq!(
            (m.name.as_str(), m.namespace.as_str(), m.uid.as_str()),
            ("web", "demo", "u1")
        );
        assert_eq!(s.log_directory, "/logs/demo_web_u1");
        assert_eq!(s.hostname, "web");
        assert_eq!(s.port_mappings[0].container_port, 8080);
        assert_eq!(
            s.annotations["io.katacontainers.config.hypervisor.default_memory"],
            "512"
        );
        let c = container_config(&pod.spec, &pod.spec.containers[0], &ImageUser::Uid(0)).unwrap();
        assert_eq!(c.command, ["httpd", "-f"]);
        // Resources as kubelet passes them (the request defaults to the
        // limit).
        let r = c.linux.unwrap().resources.unwrap();
        assert_eq!(r.memory_limit_in_bytes, 64 << 20);
        assert_eq!(
            (r.cpu_period, r.cpu_quota, r.cpu_shares),
            (100_000, 50_000, 512)
        );
        assert_eq!(c.args, ["-p", "8080"]);
        assert_eq!(c.envs[0].key, "A");
        assert_eq!(c.log_path, "httpd/0.log");
    }

    #[test]
    fn security_contexts_become_what_kubelet_sends() {
        let pod = Pod::parse(
            r#"
kind: Pod
metadata: {name: sec}
spec:
  securityContext:
    runAsUser: 1000
    runAsGroup: 3000
    supplementalGroups: [4000]
    fsGroup: 2000
    sysctls: [{name: kernel.shm_rmid_forced, value: "1"}]
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: app
    image: busybox
    securityContext:
      runAsUser: 1001
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
      capabilities: {add: [NET_ADMIN], drop: [ALL]}
      seccompProfile: {type: Localhost, localhostProfile: profiles/app.json}
  - name: plain
    image: busybox
"#,
        )
        .unwrap();
        let sc = |c: usize, user: ImageUser| {
            pod.spec
                .security_context(&pod.spec.containers[c], &user)
                .unwrap()
        };
        let app = sc(0, ImageUser::Uid(0));
        assert_eq!(app.run_as_user.unwrap().value, 1001);
        assert_eq!(app.run_as_group.unwrap().value, 3000);
        assert_eq!(app.supplemental_groups, [2000, 4000]);
        assert!(app.readonly_rootfs && app.no_new_privs && !app.privileged);
        let caps = app.capabilities.unwrap();
        assert_eq!(
            (caps.add_capabilities, caps.drop_capabilities),
            (vec!["NET_ADMIN".to_string()], vec!["ALL".to_string()])
        );
        let seccomp = app.seccomp.unwrap();
        assert_eq!(
            seccomp.profile_type,
            cri::security_profile::ProfileType::Localhost as i32
        );
        assert_eq!(
            seccomp.localhost_ref,
            "/var/lib/kubelet/seccomp/profiles/app.json"
        );
        let ns = app.namespace_options.unwrap();
        assert_eq!(ns.pid, cri::NamespaceMode::Container as i32);
        assert!(!app.masked_paths.is_empty());
        let sandbox = pod.sandbox_config("u", Path::new("/l")).linux.unwrap();
        assert_eq!(sandbox.sysctls["kernel.shm_rmid_forced"], "1");
        let ssc = sandbox.security_context.unwrap();
        assert_eq!(
            (
                ssc.run_as_user.unwrap().value,
                ssc.run_as_group.unwrap().value
            ),
            (1000, 3000)
        );
        assert_eq!(ssc.supplemental_groups, [2000, 4000]);
        assert!(!ssc.privileged);
        assert_eq!(
            ssc.seccomp.unwrap().profile_type,
            cri::security_profile::ProfileType::RuntimeDefault as i32
        );
        assert_eq!(
            ssc.namespace_options.unwrap().pid,
            cri::NamespaceMode::Container as i32
        );
        // The pod's settings where the container has none.
        let plain = sc(1, ImageUser::Name("nobody".into()));
        assert_eq!(plain.run_as_user.unwrap().value, 1000);
        assert!(plain.run_as_username.is_empty());
        assert!(!plain.readonly_rootfs && !plain.no_new_privs && plain.capabilities.is_none());
        assert_eq!(
            plain.seccomp.unwrap().profile_type,
            cri::security_profile::ProfileType::RuntimeDefault as i32
        );

        // No user in the manifest: the image's, a UID or a name.
        let bare = Pod::parse(
            "kind: Pod\nmetadata: {name: b}\nspec:\n  shareProcessNamespace: true\n  containers:\n  - {name: c, image: busybox, securityContext: {privileged: true, procMount: Unmasked}}\n",
        )
        .unwrap();
        let c = &bare.spec.containers[0];
        let s = bare
            .spec
            .security_context(c, &ImageUser::Uid(65534))
            .unwrap();
        // A privileged container makes a privileged sandbox.
        let ssc = bare
            .sandbox_config("u", Path::new("/l"))
            .linux
            .unwrap()
            .security_context
            .unwrap();
        assert!(ssc.privileged && ssc.run_as_user.is_none());
        assert_eq!(s.run_as_user.unwrap().value, 65534);
        assert!(s.privileged && s.masked_paths.is_empty() && s.readonly_paths.is_empty());
        assert_eq!(
            s.namespace_options.unwrap().pid,
            cri::NamespaceMode::Pod as i32
        );
        assert_eq!(
            s.seccomp.unwrap().profile_type,
            cri::security_profile::ProfileType::Unconfined as i32
        );
        let s = bare
            .spec
            .security_context(c, &ImageUser::Name("www".into()))
            .unwrap();
        assert!(s.run_as_user.is_none() && s.run_as_username == "www");

        // runAsNonRoot, as kubelet checks it.
        let non_root = |sc: &str| {
            Pod::parse(&format!(
                "kind: Pod\nmetadata: {{name: n}}\nspec:\n  securityContext: {{runAsNonRoot: true{sc}}}\n  containers:\n  - {{name: c, image: busybox}}\n"
            ))
        };
        let e = non_root(", runAsUser: 0").unwrap_err().to_string();
        assert!(e.contains("runAsUser 0 breaks runAsNonRoot"), "{e}");
        let p = non_root("").unwrap();
        let c = &p.spec.containers[0];
        for (user, says) in [
            (ImageUser::Uid(0), "the image runs as root"),
            (ImageUser::Name("app".into()), "is a name"),
        ] {
            let e = p.spec.security_context(c, &user).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        assert!(p.spec.security_context(c, &ImageUser::Uid(10)).is_ok());
        assert!(
            non_root(", runAsUser: 5")
                .unwrap()
                .spec
                .security_context(c, &ImageUser::Uid(0))
                .is_ok()
        );

        // Refused at once: an unknown or escaping seccomp profile, the
        // node's namespaces.
        for (spec, says) in [
            (
                "securityContext: {seccompProfile: {type: Bogus}}",
                "is not RuntimeDefault",
            ),
            (
                "securityContext: {seccompProfile: {type: Localhost, localhostProfile: ../../etc/x}}",
                "a relative path within",
            ),
            (
                "securityContext: {seccompProfile: {type: Localhost}}",
                "needs a localhostProfile",
            ),
            (
                "hostNetwork: true",
                "hostNetwork: cocoon pod run does not share",
            ),
            (
                "volumes: [{name: v, emptyDir: {}}]",
                "cocoon pod run mounts no volumes",
            ),
            (
                "securityContext: {sysctls: [{name: \"a b\", value: x}]}",
                "is not a sysctl name",
            ),
            ("hostPID: true", "hostPID"),
        ] {
            let e = Pod::parse(&format!(
                "kind: Pod\nmetadata: {{name: n}}\nspec:\n  {spec}\n  containers:\n  - {{name: c, image: busybox}}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains(says), "{spec}: {e}");
        }
    }

    #[test]
    fn kubernetes_quantities() {
        assert_eq!(quantity("128Mi", 1).unwrap(), 128 << 20);
        assert_eq!(quantity("1G", 1).unwrap(), 1_000_000_000);
        assert_eq!(quantity("1.5Gi", 1).unwrap(), 3 << 29);
        assert_eq!(quantity("2e3", 1).unwrap(), 2000);
        assert_eq!(quantity("500m", 1000).unwrap(), 500);
        assert_eq!(quantity("2", 1000).unwrap(), 2000);
        assert_eq!(quantity("0.1", 1000).unwrap(), 100);
        // Rounded up, as Kubernetes does for bytes.
        assert_eq!(quantity("100m", 1).unwrap(), 1);
        // Exact, where floating point would round 700m up to 701.
        for m in 1..=4000 {
            assert_eq!(quantity(&format!("{m}m"), 1000).unwrap(), m);
        }
        assert_eq!(quantity("16.1", 1000).unwrap(), 16_100);
        assert_eq!(quantity("1e+3", 1).unwrap(), 1000);
        for bad in [
            "",
            "Mi",
            "-1Gi",
            "12 Mi",
            "1Xi",
            "lots",
            "1e400",
            "0x10",
            "1e3Mi",
            ".",
            "1.2.3",
            "9999999999999999999999999999999",
            "1Ei",
            "1E",
        ] {
            assert!(quantity(bad, 1).is_err(), "{bad:?}");
        }
        // Huge CPU values are refused, not overflowed.
        assert!(quantity("1P", 1000).is_err());
        let err = Pod::parse(
            "kind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: a, image: b, resources: {limits: {memory: lots}}}]}",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("limits.memory"), "{err:#}");
        // A plain number is a quantity too.
        let pod = Pod::parse(
            "kind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: a, image: b, resources: {limits: {cpu: 2}, requests: {cpu: 250m}}}]}",
        )
        .unwrap();
        let r = pod.spec.containers[0].resources.to_cri("a").unwrap();
        assert_eq!((r.cpu_quota, r.cpu_shares), (200_000, 256));
        // cpu: 0 sets no quota; shares stay within the kernel's range.
        let pod = Pod::parse(
            "kind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: a, image: b, resources: {limits: {cpu: 0}, requests: {cpu: 1000}}}]}",
        )
        .unwrap();
        let r = pod.spec.containers[0].resources.to_cri("a").unwrap();
        assert_eq!((r.cpu_period, r.cpu_quota, r.cpu_shares), (0, 0, 262_144));
    }

    #[test]
    fn manifests_that_are_not_runnable_pods_are_refused() {
        assert!(
            Pod::parse(
                "kind: Deployment\nmetadata: {name: x}\nspec: {containers: [{name: a, image: b}]}"
            )
            .unwrap_err()
            .to_string()
            .contains("Deployment")
        );
        assert!(Pod::parse("kind: Pod\nmetadata: {name: x}\nspec: {containers: []}").is_err());
        assert!(
            Pod::parse("kind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: a}]}").is_err()
        );
        assert!(Pod::parse("not: [yaml").is_err());
        for bad in [
            "kind: Pod\nmetadata: {name: ../x}\nspec: {containers: [{name: a, image: b}]}",
            "kind: Pod\nmetadata: {name: x, namespace: Bad}\nspec: {containers: [{name: a, image: b}]}",
            "kind: Pod\nmetadata: {name: x, uid: /../../etc}\nspec: {containers: [{name: a, image: b}]}",
            "kind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: a/b, image: b}]}",
        ] {
            assert!(Pod::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(exit_status(-1), 255);
        assert_eq!(exit_status(300), 255);
        assert_eq!(exit_status(3), 3);
    }

    #[test]
    fn cri_log_lines_split_into_stream_and_text() {
        assert_eq!(
            parse_log_line("2026-12-01T10:00:00.1Z stdout F hello world"),
            Some(("stdout", true, "hello world"))
        );
        assert_eq!(
            parse_log_line("2026-12-01T10:00:00.1Z stderr P part"),
            Some(("stderr", false, "part"))
        );
        assert_eq!(parse_log_line("garbage"), None);
    }
}
