//! `cocoon policy generate`: the agent policy of a pod from its manifest.
//!
//! Each image is resolved to its manifest digest and its config is read
//! from the registry; the container's process (args, env, working
//! directory, user) is computed the way kubelet and containerd compute it;
//! the result is written as genpolicy-layout `policy_data` behind our rules
//! ([`RULES`]), put into initdata (with the trustee's `aa.toml` and
//! `cdh.toml` when `--kbs` is given) and into the pod's
//! `io.katacontainers.config.hypervisor.cc_init_data` annotation.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use cocoon_types::container::CAPABILITIES as DEFAULT_CAPS;
use serde_json::{Value, json};
use serde_yaml_ng::Value as Yaml;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// The rules every generated policy carries.
pub const RULES: &str = include_str!("rules.rego");
/// The pod annotation that carries initdata.
pub const INITDATA_ANNOTATION: &str = "io.katacontainers.config.hypervisor.cc_init_data";

/// Agent policies.
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Pin a workload manifest: resolve its images, write the agent policy and initdata, and annotate the pod.
    Generate(GenerateArgs),
}

/// `cocoon policy generate`.
#[derive(Args)]
pub struct GenerateArgs {
    /// The trustee the pod attests to (goes into aa.toml and cdh.toml).
    #[arg(long)]
    kbs: Option<String>,
    /// The trustee's HTTPS certificate (PEM), pinned in initdata.
    #[arg(long)]
    kbs_cert: Option<PathBuf>,
    /// A registry spoken to over plain HTTP (HOST:PORT), here and in the guest.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Rewrite the manifest file instead of printing it.
    #[arg(long)]
    in_place: bool,
    /// Refuse the host the containers' output (logs).
    #[arg(long)]
    deny_logs: bool,
    /// Also write each workload's policy (rules and data) to this file.
    #[arg(long)]
    policy_out: Option<PathBuf>,
    /// The manifest: Pod, Deployment, StatefulSet, Job, DaemonSet, ReplicaSet or CronJob (several documents allowed).
    manifest: PathBuf,
}

/// Runs `cocoon policy`.
pub async fn run(cmd: PolicyCommand) -> Result<()> {
    match cmd {
        PolicyCommand::Generate(a) => generate(a).await,
    }
}

async fn generate(a: GenerateArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.manifest)
        .with_context(|| format!("reading {}", a.manifest.display()))?;
    let cert = match &a.kbs_cert {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading --kbs-cert {}", p.display()))?,
        ),
        None => None,
    };
    let mut docs = Vec::new();
    for d in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = <Yaml as serde::Deserialize>::deserialize(d).context("the manifest is not YAML")?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    let resolver = Resolver::new(&a.insecure_registries)?;
    let mut policies = Vec::new();
    let mut pinned = 0;
    for doc in &mut docs {
        let Some(w) = Workload::of(doc)? else {
            continue;
        };
        let containers = w.containers()?;
        let mut images = Vec::new();
        for c in &containers {
            images.push(resolver.image(&c.image).await?);
        }
        let opts = Options {
            deny_logs: a.deny_logs,
            kbs: a.kbs.as_deref(),
            insecure_registries: &a.insecure_registries,
        };
        let data = policy_data(&w, &images, &opts)?;
        let policy = policy_text(&data)?;
        let initdata = initdata(
            a.kbs.as_deref(),
            cert.clone(),
            &a.insecure_registries,
            &policy,
        )?;
        let doc_digest = cocoon_types::initdata::InitData::parse(&initdata)?.digest;
        eprintln!(
            "{} {}: initdata sha256 {} (vTPM PCR 8 {})",
            w.kind,
            w.name,
            hex::encode(&doc_digest),
            hex::encode(cocoon_guest_image::vtpm::replay(&[&doc_digest])),
        );
        for (c, img) in containers.iter().zip(&images) {
            eprintln!("  {}: {} pinned to {}", c.name, img.reference, img.digest);
        }
        set_annotation(doc, &w.kind, &gzip_b64(&initdata)?)?;
        policies.push(policy);
        pinned += 1;
    }
    if pinned == 0 {
        bail!(
            "{} holds no Pod, Deployment, StatefulSet, Job, DaemonSet, ReplicaSet or CronJob",
            a.manifest.display()
        );
    }
    if let Some(p) = &a.policy_out {
        std::fs::write(p, policies.join("\n"))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml_ng::to_string(d)?);
    }
    if a.in_place {
        let tmp = a.manifest.with_extension("cocoon-tmp");
        std::fs::write(&tmp, &out).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &a.manifest)
            .with_context(|| format!("replacing {}", a.manifest.display()))?;
    } else {
        out!("{out}");
    }
    Ok(())
}

/// gzip, then base64: the `cc_init_data` encoding.
pub fn gzip_b64(text: &str) -> Result<String> {
    use base64::Engine;
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes())?;
    Ok(base64::engine::general_purpose::STANDARD.encode(gz.finish()?))
}

/// The policy document: our rules, then `policy_data`.
pub fn policy_text(data: &Value) -> Result<String> {
    Ok(format!(
        "{RULES}\npolicy_data := {}\n",
        serde_json::to_string_pretty(data)?
    ))
}

/// The initdata document: `policy.rego`, and the trustee and registry
/// settings `cocoon run` would give the guest.
pub fn initdata(
    kbs: Option<&str>,
    cert: Option<String>,
    insecure_registries: &[String],
    policy: &str,
) -> Result<String> {
    let mut doc = crate::run::initdata_doc(kbs, cert, insecure_registries)?;
    let data = doc
        .get_mut("data")
        .and_then(toml::Value::as_table_mut)
        .context("initdata without [data]")?;
    data.insert("policy.rego".into(), policy.into());
    Ok(toml::to_string(&doc)?)
}

/// A workload and where its pod template is.
pub struct Workload {
    kind: String,
    name: String,
    namespace: Option<String>,
    /// The pod (template) object: metadata and spec.
    pod: Yaml,
}

/// One container of the pod spec.
pub struct Container {
    name: String,
    image: String,
    spec: Yaml,
}

impl Workload {
    /// The workload in `doc`, or None for kinds without pods (a Service).
    pub fn of(doc: &Yaml) -> Result<Option<Self>> {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let name = doc["metadata"]["name"]
            .as_str()
            .or_else(|| doc["metadata"]["generateName"].as_str())
            .unwrap_or_default()
            .trim_end_matches('-')
            .to_string();
        let namespace = doc["metadata"]["namespace"].as_str().map(str::to_string);
        let Some(path) = template_path(&kind) else {
            return Ok(None);
        };
        let pod = path.iter().fold(doc, |v, k| &v[*k]);
        if !pod["spec"]["containers"].is_sequence() {
            bail!("{kind} {name}: no pod spec with containers");
        }
        if name.is_empty() {
            bail!("{kind} without metadata.name");
        }
        Ok(Some(Self {
            kind,
            name,
            namespace,
            pod: pod.clone(),
        }))
    }

    /// Init containers, then containers.
    pub fn containers(&self) -> Result<Vec<Container>> {
        let mut out = Vec::new();
        for list in ["initContainers", "containers"] {
            let Some(cs) = self.pod["spec"][list].as_sequence() else {
                continue;
            };
            for c in cs {
                let name = c["name"]
                    .as_str()
                    .context("a container without a name")?
                    .to_string();
                let image = c["image"]
                    .as_str()
                    .with_context(|| format!("container {name} has no image"))?
                    .to_string();
                out.push(Container {
                    name,
                    image,
                    spec: c.clone(),
                });
            }
        }
        Ok(out)
    }
}

/// Where a workload kind keeps its pod (template).
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &[],
        "Deployment" | "StatefulSet" | "Job" | "DaemonSet" | "ReplicaSet" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    })
}

fn set_annotation(doc: &mut Yaml, kind: &str, value: &str) -> Result<()> {
    let path = template_path(kind).with_context(|| format!("{kind} has no pod template"))?;
    let pod = path.iter().fold(doc, |v, k| &mut v[*k]);
    let meta = pod
        .as_mapping_mut()
        .context("the pod template is not a mapping")?
        .entry("metadata".into())
        .or_insert_with(|| Yaml::Mapping(Default::default()));
    let ann = meta
        .as_mapping_mut()
        .context("metadata is not a mapping")?
        .entry("annotations".into())
        .or_insert_with(|| Yaml::Mapping(Default::default()));
    ann.as_mapping_mut()
        .context("annotations is not a mapping")?
        .insert(INITDATA_ANNOTATION.into(), value.into());
    Ok(())
}

/// An image as resolved from its registry.
#[derive(Debug, Clone)]
pub struct Image {
    /// The reference, normalized as containerd names it.
    pub reference: String,
    /// The manifest digest the guest's pull resolves it to.
    pub digest: String,
    /// The image config's `config` (Entrypoint, Cmd, Env, User, WorkingDir).
    pub config: Value,
}

/// Resolves images from their registries (plain HTTP for the insecure ones).
pub(crate) struct Resolver {
    puller: cocoon_image::pull::ImagePuller,
    _dir: tempfile::TempDir,
}

impl Resolver {
    /// A resolver; `insecure` registries are spoken to over plain HTTP.
    pub(crate) fn new(insecure: &[String]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut cfg = cocoon_image::pull::PullConfig::new(dir.path().to_path_buf());
        cfg.registry.insecure = insecure.iter().cloned().collect();
        Ok(Self {
            puller: cocoon_image::pull::ImagePuller::new(cfg)?,
            _dir: dir,
        })
    }

    /// `name` resolved to its digest and config.
    pub(crate) async fn image(&self, name: &str) -> Result<Image> {
        let r = cocoon_image::reference::Reference::parse(name)
            .with_context(|| format!("image '{name}'"))?;
        let (digest, manifest, _) = self
            .puller
            .resolve(&r)
            .await
            .with_context(|| format!("resolving {r}"))?;
        let blob = self
            .puller
            .client()
            .small_blob(&r, manifest.config().digest().as_ref())
            .await
            .with_context(|| format!("reading the config of {r}"))?;
        let config: Value = serde_json::from_slice(&blob)
            .with_context(|| format!("the config of {r} is not JSON"))?;
        Ok(Image {
            reference: r.to_string(),
            digest,
            config: config.get("config").cloned().unwrap_or(json!({})),
        })
    }
}

/// What shapes the policy beyond the manifest.
pub struct Options<'a> {
    /// Refuse the host the containers' output.
    pub deny_logs: bool,
    /// The trustee, when the guest reaches it on the host's loopback.
    pub kbs: Option<&'a str>,
    /// Plain-HTTP registries.
    pub insecure_registries: &'a [String],
}

/// Every capability (a privileged container).
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Paths every unprivileged container keeps masked / read-only (in both
/// containerd's and kubelet's defaults).
const MASKED: &[&str] = &["/proc/kcore", "/proc/keys", "/sys/firmware"];
const READONLY: &[&str] = &["/proc/sys", "/proc/sysrq-trigger"];

/// Environment the runtime adds that the pod spec does not show: the
/// hostname, a terminal's TERM, and Kubernetes service links (addresses
/// and ports only).
const RUNTIME_ENV: &[&str] = &[
    r"^HOSTNAME=[A-Za-z0-9.-]{0,253}$",
    r"^[A-Z0-9_]+_SERVICE_HOST=[0-9a-fA-F.:]+$",
    r"^[A-Z0-9_]+_SERVICE_PORT(_[A-Z0-9_]+)?=[0-9]+$",
    r"^[A-Z0-9_]+_PORT=(tcp|udp|sctp)://[0-9a-fA-F.:\[\]]+:[0-9]+$",
    r"^[A-Z0-9_]+_PORT_[0-9]+_(TCP|UDP|SCTP)=(tcp|udp|sctp)://[0-9a-fA-F.:\[\]]+:[0-9]+$",
    r"^[A-Z0-9_]+_PORT_[0-9]+_(TCP|UDP|SCTP)_(PROTO=(tcp|udp|sctp)|PORT=[0-9]+|ADDR=[0-9a-fA-F.:]+)$",
];

fn strings(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| match x {
                    Yaml::String(s) => Some(s.clone()),
                    Yaml::Number(n) => Some(n.to_string()),
                    Yaml::Bool(b) => Some(b.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn json_strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for ch in s.chars() {
        if "\\.+*?()|[]{}^$".contains(ch) {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// The process args kubelet and containerd give a container: the pod
/// spec's command replaces the image's entrypoint and cmd; its args alone
/// replace only the cmd.
fn process_args(c: &Yaml, image: &Value) -> Vec<String> {
    let command = strings(&c["command"]);
    let args = strings(&c["args"]);
    let entrypoint = json_strings(&image["Entrypoint"]);
    let cmd = json_strings(&image["Cmd"]);
    if !command.is_empty() {
        [command, args].concat()
    } else if !args.is_empty() {
        [entrypoint, args].concat()
    } else {
        [entrypoint, cmd].concat()
    }
}

/// The container's security settings, container over pod.
fn security<'y>(pod: &'y Yaml, c: &'y Yaml, key: &str) -> &'y Yaml {
    let own = &c["securityContext"][key];
    if own.is_null() {
        &pod["spec"]["securityContext"][key]
    } else {
        own
    }
}

fn capabilities(c: &Yaml, privileged: bool) -> Vec<String> {
    if privileged {
        return ALL_CAPS.iter().map(|s| s.to_string()).collect();
    }
    let norm = |s: String| {
        let s = s.to_ascii_uppercase();
        if s.starts_with("CAP_") || s == "ALL" {
            s
        } else {
            format!("CAP_{s}")
        }
    };
    let add: Vec<String> = strings(&c["securityContext"]["capabilities"]["add"])
        .into_iter()
        .map(norm)
        .collect();
    let drop: Vec<String> = strings(&c["securityContext"]["capabilities"]["drop"])
        .into_iter()
        .map(norm)
        .collect();
    // containerd's order: "ALL" added, "ALL" dropped, then the named ones
    // added, then the named ones dropped (add X and drop X leave no X).
    let all = |v: &[String]| v.iter().any(|c| c == "ALL");
    let mut caps: BTreeSet<String> = if all(&add) { ALL_CAPS } else { DEFAULT_CAPS }
        .iter()
        .map(|s| s.to_string())
        .collect();
    if all(&drop) {
        caps.clear();
    }
    caps.extend(add.into_iter().filter(|c| c != "ALL"));
    for d in &drop {
        caps.remove(d);
    }
    caps.into_iter().collect()
}

/// The mounts the guest gets for a CRI container (after the host's own
/// binds are left out), with the options that must stay.
fn mounts(privileged: bool) -> Value {
    let ro: &[&str] = if privileged { &[] } else { &["ro"] };
    let m = |dest: &str, ty: &str, src: &str, opts: &[&str]| json!({"destination": dest, "type_": ty, "source": src, "options": opts});
    json!([
        m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        m("/dev", "tmpfs", "tmpfs", &["nosuid"]),
        m("/dev/pts", "devpts", "devpts", &["nosuid", "noexec"]),
        m(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"]
        ),
        m("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev"]),
        m(
            "/sys",
            "sysfs",
            "sysfs",
            &[&["nosuid", "noexec", "nodev"][..], ro].concat()
        ),
        m(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &[&["nosuid", "noexec", "nodev"][..], ro].concat()
        ),
        m("/run", "tmpfs", "tmpfs", &["nosuid"]),
    ])
}

fn caps_object(caps: &[String]) -> Value {
    json!({
        "Ambient": caps, "Bounding": caps, "Effective": caps,
        "Inheritable": caps, "Permitted": caps,
    })
}

/// The UID the container runs as, when the manifest or the image says it
/// as a number (a user name is resolved in the guest; not pinned).
fn uid(pod: &Yaml, c: &Yaml, image: &Value) -> Value {
    if let Some(u) = security(pod, c, "runAsUser").as_u64() {
        return json!(u);
    }
    let user = image["User"].as_str().unwrap_or_default();
    if user.is_empty() {
        return json!(0);
    }
    match user.split(':').next().unwrap_or_default().parse::<u64>() {
        Ok(u) => json!(u),
        Err(_) => Value::Null,
    }
}

/// The group the container runs as, where it is certain before the pod
/// runs: the manifest's `runAsGroup`, or root's when neither the manifest
/// nor the image names a user. Otherwise the image's `/etc/passwd` decides
/// it in the guest (not pinned).
fn gid(pod: &Yaml, c: &Yaml, image: &Value) -> Value {
    if let Some(g) = security(pod, c, "runAsGroup").as_u64() {
        return json!(g);
    }
    let user = image["User"].as_str().unwrap_or_default();
    if security(pod, c, "runAsUser").is_null() && user.is_empty() {
        return json!(0);
    }
    Value::Null
}

/// The signals that stop a container: SIGKILL, SIGTERM and the image's
/// `StopSignal` (a number or a name, `SIGQUIT` or `QUIT`), which kubelet
/// sends first.
fn stop_signals(image: &Value) -> Result<Vec<i32>> {
    let mut set = BTreeSet::from([libc::SIGKILL, libc::SIGTERM]);
    if let Some(s) = image["StopSignal"].as_str().filter(|s| !s.is_empty()) {
        set.insert(
            signal_number(s)
                .with_context(|| format!("the image's StopSignal {s:?} is not a signal"))?,
        );
    }
    Ok(set.into_iter().collect())
}

fn signal_number(s: &str) -> Option<i32> {
    const NAMES: &[(&str, i32)] = &[
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("ABRT", libc::SIGABRT),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("USR2", libc::SIGUSR2),
        ("ALRM", libc::SIGALRM),
        ("TERM", libc::SIGTERM),
        ("CONT", libc::SIGCONT),
        ("STOP", libc::SIGSTOP),
        ("TSTP", libc::SIGTSTP),
        ("WINCH", libc::SIGWINCH),
        ("PWR", libc::SIGPWR),
    ];
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let rt = |rest: &str, base: i32, sign: i32| -> Option<i32> {
        let n = if rest.is_empty() {
            0
        } else {
            rest.strip_prefix(if sign > 0 { "+" } else { "-" })?
                .parse()
                .ok()?
        };
        let v = base + sign * n;
        (libc::SIGRTMIN()..=libc::SIGRTMAX())
            .contains(&v)
            .then_some(v)
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(rest, libc::SIGRTMIN(), 1);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(rest, libc::SIGRTMAX(), -1);
    }
    NAMES.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// The sysctls containerd sets for every pod when configured to
/// (`enable_unprivileged_ports`, `enable_unprivileged_icmp`: on by default
/// in containerd 2), unless the pod sets them: allowed on the sandbox.
const RUNTIME_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_unprivileged_port_start", "0"),
    ("net.ipv4.ping_group_range", "0 2147483647"),
];

/// The pod's `securityContext.sysctls`, which kubelet passes with its
/// sandbox: name to value.
fn pod_sysctls(pod: &Yaml) -> Value {
    let mut m = serde_json::Map::new();
    for s in pod["spec"]["securityContext"]["sysctls"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        if let (Some(k), Some(v)) = (s["name"].as_str(), s["value"].as_str()) {
            m.insert(k.to_string(), json!(v));
        }
    }
    Value::Object(m)
}

/// The pod's `supplementalGroups` and `fsGroup`: the only groups kubelet
/// adds to a container's own.
fn supplementary_groups(pod: &Yaml) -> Value {
    let sc = &pod["spec"]["securityContext"];
    let mut groups: BTreeSet<u64> = sc["supplementalGroups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(Yaml::as_u64)
        .collect();
    groups.extend(sc["fsGroup"].as_u64());
    json!(groups)
}

/// The host loopback ports the guest may forward: registries of the
/// images, plain-HTTP registries and the trustee, when on 127.0.0.1 or
/// localhost.
fn loopback_ports(images: &[Image], opts: &Options<'_>) -> Vec<u16> {
    use crate::run::{loopback_port, url_hostport};
    let mut ports = BTreeSet::new();
    for i in images {
        if let Ok(r) = cocoon_image::reference::Reference::parse(&i.reference) {
            ports.extend(loopback_port(&r.registry));
        }
    }
    ports.extend(
        opts.insecure_registries
            .iter()
            .filter_map(|r| loopback_port(r)),
    );
    ports.extend(
        opts.kbs
            .and_then(url_hostport)
            .and_then(|h| loopback_port(&h)),
    );
    ports.into_iter().collect()
}

/// The policy data (genpolicy's layout) of workload `w` whose containers'
/// images resolved to `images` (same order as [`Workload::containers`]).
pub fn policy_data(w: &Workload, images: &[Image], opts: &Options<'_>) -> Result<Value> {
    let pod = &w.pod;
    let namespace = w.namespace.clone().unwrap_or_else(|| "default".into());
    let sandbox_name = if w.kind == "Pod" {
        format!("^{}$", regex_escape(&w.name))
    } else {
        format!("^{}(-[a-z0-9]+)+$", regex_escape(&w.name))
    };
    let pod_annotations = json!({
        "io.kubernetes.cri.sandbox-name": sandbox_name,
        "io.kubernetes.cri.sandbox-namespace": format!("^{}$", regex_escape(&namespace)),
    });
    // The pod's process namespace: the node's (none in the spec; the
    // guest still gives the container its own), or the pod's shared one
    // (`sandbox_pidns`: the guest joins the pause container's). Kubelet
    // lets hostPID win over shareProcessNamespace.
    let node_pid = pod["spec"]["hostPID"].as_bool() == Some(true);
    let share_pid = !node_pid && pod["spec"]["shareProcessNamespace"].as_bool() == Some(true);
    let own_pid = !node_pid && !share_pid;
    let host_ipc = pod["spec"]["hostIPC"].as_bool() == Some(true);
    let namespaces = |own_pid: bool| {
        let mut n = vec![
            json!({"Type": "mount", "Path": ""}),
            json!({"Type": "uts", "Path": ""}),
        ];
        if !host_ipc {
            n.push(json!({"Type": "ipc", "Path": ""}));
        }
        if own_pid {
            n.push(json!({"Type": "pid", "Path": ""}));
        }
        Value::Array(n)
    };
    let default_caps: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
    let mut containers = vec![json!({
        "sandbox": true,
        "name": "",
        "image": "",
        "manifest_digest": "",
        "stdin": false,
        "OCI": {
            "Process": {
                "Args": ["/pause"], "Env": [], "Cwd": "/",
                "User": {"UID": null, "AdditionalGids": supplementary_groups(pod)},
                "Capabilities": caps_object(&default_caps),
                "NoNewPrivileges": false,
            },
            "Mounts": mounts(false),
            "Annotations": pod_annotations,
            "Linux": {
                "Namespaces": namespaces(own_pid), "MaskedPaths": [], "ReadonlyPaths": [],
                "Sysctl": pod_sysctls(pod),
            },
        },
        "storages": [],
        "devices": [],
        "sandbox_pidns": false,
        "exec_commands": [],
    })];
    let env_regex: Vec<String> = RUNTIME_ENV.iter().map(|s| s.to_string()).collect();
    for (c, img) in w.containers()?.iter().zip(images) {
        let spec = &c.spec;
        let privileged = spec["securityContext"]["privileged"].as_bool() == Some(true);
        // Kubelet sends no masked or read-only paths for an unmasked /proc,
        // and a privileged container gets none from containerd.
        let unmasked =
            privileged || spec["securityContext"]["procMount"].as_str() == Some("Unmasked");
        let mut env: Vec<String> = json_strings(&img.config["Env"]);
        let mut own_env_regex: Vec<String> = Vec::new();
        if let Some(list) = spec["env"].as_sequence() {
            for e in list {
                let name = e["name"].as_str().context("an env entry without a name")?;
                // The manifest's entry replaces the image's of that name.
                env.retain(|x| x.split_once('=').map(|p| p.0) != Some(name));
                if let Some(v) = e["value"].as_str() {
                    env.push(format!("{name}={v}"));
                } else if e["valueFrom"].is_mapping() {
                    // Known only when the pod runs (a field, a secret):
                    // any value, in this container only.
                    own_env_regex.push(format!("^{}=", regex_escape(name)));
                } else {
                    env.push(format!("{name}="));
                }
            }
        }
        if spec["envFrom"].is_sequence() {
            bail!(
                "container {}: envFrom is not supported (its variables are unknown until the pod runs); list them under env",
                c.name
            );
        }
        if spec["tty"].as_bool() == Some(true) {
            env.push("TERM=xterm".into());
        }
        let cwd = spec["workingDir"]
            .as_str()
            .filter(|s| !s.is_empty())
            .or_else(|| img.config["WorkingDir"].as_str().filter(|s| !s.is_empty()))
            .unwrap_or("/");
        let mut exec = Vec::new();
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            let cmd = strings(&spec[probe]["exec"]["command"]);
            if !cmd.is_empty() {
                exec.push(cmd);
            }
        }
        for hook in ["postStart", "preStop"] {
            let cmd = strings(&spec["lifecycle"][hook]["exec"]["command"]);
            if !cmd.is_empty() {
                exec.push(cmd);
            }
        }
        let no_new_privs =
            spec["securityContext"]["allowPrivilegeEscalation"].as_bool() == Some(false);
        let mut annotations = pod_annotations.clone();
        annotations["io.kubernetes.cri.container-name"] =
            json!(format!("^{}$", regex_escape(&c.name)));
        containers.push(json!({
            "sandbox": false,
            "name": c.name,
            "image": img.reference,
            "manifest_digest": img.digest,
            "stdin": spec["stdin"].as_bool() == Some(true),
            "env_regex": own_env_regex,
            "stop_signals": stop_signals(&img.config)?,
            "OCI": {
                "Process": {
                    "Args": process_args(spec, &img.config),
                    "Env": env,
                    "Cwd": cwd,
                    "User": {
                        "UID": uid(pod, spec, &img.config),
                        "GID": gid(pod, spec, &img.config),
                        "AdditionalGids": supplementary_groups(pod),
                    },
                    "Capabilities": caps_object(&capabilities(spec, privileged)),
                    "NoNewPrivileges": no_new_privs,
                },
                "Mounts": mounts(privileged),
                "Annotations": annotations,
                "Linux": {
                    "Namespaces": namespaces(own_pid),
                    "MaskedPaths": if unmasked { json!([]) } else { json!(MASKED) },
                    "ReadonlyPaths": if unmasked { json!([]) } else { json!(READONLY) },
                },
            },
            "storages": [],
            "devices": [],
            "sandbox_pidns": share_pid,
            "exec_commands": exec,
        }));
    }
    Ok(json!({
        "containers": containers,
        "common": {
            "loopback_ports": loopback_ports(images, opts),
        },
        "sandbox": {"storages": []},
        "request_defaults": {
            "CreateContainerRequest": {
                "allow_env_regex": env_regex,
                "allow_sysctls": RUNTIME_SYSCTLS.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            },
            "ExecProcessRequest": {"allowed_commands": [], "regex": []},
            "ReadStreamRequest": !opts.deny_logs,
            "WriteStreamRequest": false,
            "CopyFileRequest": [],
            "UpdateEphemeralMountsRequest": false,
        },
    }))
}

pub mod bench;
pub mod sample;
#[cfg(test)]
mod tests;
