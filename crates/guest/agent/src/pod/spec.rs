//! Turns the OCI spec the host sends over the Kata agent API (protobuf,
//! [`pb::Spec`]) into the runtime spec youki's libcontainer runs (the
//! container's `config.json`), and merges the pulled image's config into it.
//!
//! The host is not trusted by a confidential guest, so every field is
//! checked and an unusable one is refused with a [`SpecError`]. What the
//! guest cannot or will not honour is dropped on purpose:
//! - hooks are refused: they would run programs the host chose in the guest;
//! - seccomp is dropped with a warning: containers run without a filter in
//!   the guest, as with Kata's default `disable_guest_seccomp`;
//! - AppArmor profiles and SELinux labels: the guest kernel has neither LSM;
//! - the host's cgroupsPath: replaced by `{cgroup_parent}/{container_id}`;
//! - block IO, net_cls/net_prio, kernel memory limits and Intel RDT: they
//!   name host devices or need controllers cgroup v2 in the VM lacks;
//! - network sysctls of a container without its own network namespace
//!   (every CRI container: the VM is the pod's network namespace) are the
//!   pod's: [`take_pod_sysctls`] takes them out for the agent to set in the
//!   VM, Kubernetes' safe ones only.
//!
//! Proto3 cannot tell an unset scalar from zero: as Kata does, a zero limit
//! means "not set", and -1 keeps its OCI meaning "unlimited".

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use cocoon_guest_protos::kata::oci as pb;
use libcontainer::oci_spec::runtime as oci;

/// Where a container lives in the guest: the values the host's spec does
/// not get to choose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestPaths {
    /// Absolute path of the container's root filesystem in the guest.
    pub rootfs: PathBuf,
    /// Absolute cgroup (v2) path under which each container gets its own
    /// cgroup, e.g. `/cocoon`.
    pub cgroup_parent: String,
}

/// `PATH` given to a process whose environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Longest piece of a host-supplied string quoted in an error.
const MAX_SHOWN: usize = 128;

/// Why the host's spec cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A network sysctl for the pod that Kubernetes does not count safe.
    #[error(
        "sysctl {0:?} would change the pod VM's network; only Kubernetes' safe network sysctls are set there ({1})"
    )]
    UnsafePodSysctl(String, String),
    /// The spec has no process to run.
    #[error("the container spec has no process")]
    MissingProcess,
    /// The spec asks for lifecycle hooks.
    #[error(
        "the container spec has {0} hooks; hooks would run programs chosen by the host in the guest and are refused"
    )]
    Hooks(&'static str),
    /// The container id cannot name a cgroup or a container directory.
    #[error(
        "container id {0:?} is invalid: use 1 to 128 characters from A-Z a-z 0-9 _ . - starting with a letter or digit"
    )]
    ContainerId(String),
    /// A path that must be absolute is not.
    #[error("{what} {path:?} must be an absolute path")]
    RelativePath {
        /// Which field.
        what: &'static str,
        /// The value given (clipped).
        path: String,
    },
    /// A path climbs out with `..`.
    #[error("{what} {path:?} must not contain '..'")]
    ParentDir {
        /// Which field.
        what: &'static str,
        /// The value given (clipped).
        path: String,
    },
    /// A string holds a NUL byte, which no system call can take.
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    /// An environment entry is not `KEY=VALUE`.
    #[error("environment entry {0:?} is not KEY=VALUE")]
    Env(String),
    /// A capability name is malformed or unknown.
    #[error("capability {name:?} in the {set} set is not a known Linux capability (CAP_NAME)")]
    Capability {
        /// Which of the five sets.
        set: &'static str,
        /// The name given (clipped).
        name: String,
    },
    /// An rlimit type is malformed or unknown.
    #[error("rlimit type {0:?} is not a known RLIMIT_* type")]
    RlimitType(String),
    /// An rlimit type appears twice.
    #[error("rlimit {0} is given more than once")]
    RlimitDuplicate(String),
    /// An rlimit's soft limit is above its hard limit.
    #[error("rlimit {name}: soft limit {soft} is above hard limit {hard}")]
    RlimitOrder {
        /// The rlimit type.
        name: String,
        /// Soft limit.
        soft: u64,
        /// Hard limit.
        hard: u64,
    },
    /// oomScoreAdj is outside the kernel's range.
    #[error("oomScoreAdj {0} is outside -1000..=1000")]
    OomScoreAdj(i64),
    /// A namespace type is unknown.
    #[error("namespace type {0:?} is not one of pid, network, mount, ipc, uts, user, cgroup, time")]
    NamespaceType(String),
    /// A namespace type appears twice.
    #[error("namespace {0} is listed more than once")]
    NamespaceDuplicate(String),
    /// One sysctl given twice (`net.a.b` and `net/a/b`).
    #[error("sysctl {0:?} is given twice (with dots and with slashes)")]
    DuplicateSysctl(String),
    /// A sysctl name is malformed.
    #[error("sysctl {0:?} is not a kernel parameter name (like net.ipv4.ip_forward)")]
    Sysctl(String),
    /// A resource limit is out of range or inconsistent.
    #[error("{what} {value} {why}")]
    Resource {
        /// Which limit.
        what: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A device or device cgroup rule is malformed.
    #[error("{what} {value:?} is invalid")]
    Device {
        /// Which part of the device or rule.
        what: &'static str,
        /// The value given (clipped).
        value: String,
    },
    /// oci-spec refused a value it was built from (every field is set, so
    /// this is not expected).
    #[error("cannot build the runtime spec: {0}")]
    Build(String),
    /// rootfsPropagation is not a propagation mode.
    #[error(
        "rootfsPropagation {0:?} is not one of shared, rshared, slave, rslave, private, rprivate, unbindable, runbindable"
    )]
    RootfsPropagation(String),
}

/// Converts the host's spec for container `container_id` into the runtime
/// spec the guest runs. The rootfs and cgroup come from `paths`, not from
/// the host; process args may be empty (see [`merge_image_config`]).
pub fn to_oci(
    spec: &pb::Spec,
    container_id: &str,
    paths: &GuestPaths,
) -> Result<oci::Spec, SpecError> {
    check_container_id(container_id)?;
    let cgroups_path = cgroups_path(&paths.cgroup_parent, container_id)?;
    if !paths.rootfs.is_absolute() {
        return Err(SpecError::RelativePath {
            what: "guest rootfs",
            path: clip(&paths.rootfs.to_string_lossy()),
        });
    }
    refuse_hooks(spec.Hooks.as_ref())?;
    no_nul("hostname", &spec.Hostname)?;
    let process = spec.Process.as_ref().ok_or(SpecError::MissingProcess)?;
    let mut root = oci::Root::default();
    root.set_path(paths.rootfs.clone())
        .set_readonly(Some(spec.Root.as_ref().is_some_and(|r| r.Readonly)));
    let no_linux = pb::Linux::default();
    let linux = spec.Linux.as_ref().unwrap_or(&no_linux);
    let mut out = oci::Spec::default();
    if !spec.Version.is_empty() {
        out.set_version(spec.Version.clone());
    }
    out.set_process(Some(process_to_oci(process)?))
        .set_root(Some(root))
        .set_hostname(non_empty(&spec.Hostname))
        .set_mounts(Some(
            spec.Mounts
                .iter()
                .map(mount_to_oci)
                .collect::<Result<_, _>>()?,
        ))
        .set_annotations((!spec.Annotations.is_empty()).then(|| spec.Annotations.clone()))
        .set_linux(Some(linux_to_oci(linux, cgroups_path)?));
    Ok(out)
}

/// The network sysctls Kubernetes counts safe (namespaced, and harmless to
/// anything outside the pod): the only ones set in the pod VM, whose
/// network namespace also holds the guest's own services.
pub const SAFE_NET_SYSCTLS: &[&str] = &[
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ping_group_range",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_wmem",
];

/// Takes the `net.*` sysctls out of a spec whose container has no network
/// namespace of its own (they are the pod's, to be set in the VM's), as
/// dotted names with their values. Any that is not in
/// [`SAFE_NET_SYSCTLS`] refuses the container: the host could otherwise
/// route to the guest's loopback services (`route_localnet`) or forward
/// through the VM.
pub fn take_pod_sysctls(spec: &mut oci::Spec) -> Result<Vec<(String, String)>, SpecError> {
    let Some(linux) = spec.linux_mut() else {
        return Ok(vec![]);
    };
    // A network namespace of its own, or one joined by path (which the
    // guest refuses later): not the pod's.
    let own_netns = linux.namespaces().as_ref().is_some_and(|ns| {
        ns.iter()
            .any(|n| n.typ() == oci::LinuxNamespaceType::Network)
    });
    let Some(sysctls) = linux.sysctl().clone() else {
        return Ok(vec![]);
    };
    if own_netns {
        return Ok(vec![]);
    }
    let (net, rest): (HashMap<String, String>, HashMap<String, String>) = sysctls
        .into_iter()
        .partition(|(k, _)| k.replace('/', ".").starts_with("net."));
    let mut out = Vec::with_capacity(net.len());
    for (k, v) in net {
        let name = k.replace('/', ".");
        if !SAFE_NET_SYSCTLS.contains(&name.as_str()) {
            return Err(SpecError::UnsafePodSysctl(
                clip(&k),
                SAFE_NET_SYSCTLS.join(", "),
            ));
        }
        out.push((name, v));
    }
    out.sort();
    // `net.ipv4.x` and `net/ipv4/x` name one file: one value each.
    if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(SpecError::DuplicateSysctl(clip(&w[0].0)));
    }
    linux.set_sysctl((!rest.is_empty()).then_some(rest));
    Ok(out)
}

/// Fills what the request leaves to the image from `image`, the
/// `config.json` the image pipeline wrote into the pulled bundle: args when
/// the request has none; the image's environment under the request's (the
/// request wins on the same key); the image's working directory when the
/// request's is `/` or empty; the image's user when the request runs as
/// root (an image may lower privileges, never raise them). `PATH` and
/// `HOME` are added when still missing. A spec without a process (never
/// one from [`to_oci`]) is left alone.
pub fn merge_image_config(spec: &mut oci::Spec, image: &oci::Spec) {
    let Some(process) = spec.process_mut().as_mut() else {
        return;
    };
    if let Some(img) = image.process() {
        if process.args().as_ref().is_none_or(Vec::is_empty) {
            process.set_args(img.args().clone());
        }
        let env = overlay_env(
            img.env().as_deref().unwrap_or_default(),
            process.env().as_deref().unwrap_or_default(),
        );
        process.set_env(Some(env));
        let cwd = process.cwd();
        if (cwd.as_os_str().is_empty() || cwd == Path::new("/")) && img.cwd().is_absolute() {
            process.set_cwd(img.cwd().clone());
        }
        let user = process.user();
        if user.uid() == 0 && user.gid() == 0 {
            process
                .user_mut()
                .set_uid(img.user().uid())
                .set_gid(img.user().gid());
        }
    }
    let home = if process.user().uid() == 0 {
        "/root"
    } else {
        "/"
    };
    let env = process.env_mut().get_or_insert_with(Vec::new);
    if !env.iter().any(|e| env_key(e) == "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !env.iter().any(|e| env_key(e) == "HOME") {
        env.push(format!("HOME={home}"));
    }
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// `base` with each entry of `over` replacing the one of the same key in
/// place, or appended.
pub fn overlay_env(base: &[String], over: &[String]) -> Vec<String> {
    let mut out = base.to_vec();
    let mut at: HashMap<String, usize> = HashMap::new();
    for (i, e) in out.iter().enumerate() {
        at.insert(env_key(e).to_string(), i);
    }
    for e in over {
        match at.get(env_key(e)) {
            Some(&i) => out[i] = e.clone(),
            None => {
                at.insert(env_key(e).to_string(), out.len());
                out.push(e.clone());
            }
        }
    }
    out
}

/// A container or exec id: a letter or digit, then up to 127 of
/// `[A-Za-z0-9_.-]` (it names directories and cgroups in the guest).
pub fn check_container_id(id: &str) -> Result<(), SpecError> {
    let b = id.as_bytes();
    let ok = (1..=128).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SpecError::ContainerId(clip(id)))
    }
}

fn cgroups_path(parent: &str, id: &str) -> Result<PathBuf, SpecError> {
    if !parent.starts_with('/') {
        return Err(SpecError::RelativePath {
            what: "cgroup parent",
            path: clip(parent),
        });
    }
    Ok(PathBuf::from(format!(
        "{}/{id}",
        parent.trim_end_matches('/')
    )))
}

fn refuse_hooks(hooks: Option<&pb::Hooks>) -> Result<(), SpecError> {
    let Some(h) = hooks else { return Ok(()) };
    let lists = [
        ("prestart", &h.Prestart),
        ("poststart", &h.Poststart),
        ("poststop", &h.Poststop),
        ("createRuntime", &h.CreateRuntime),
        ("createContainer", &h.CreateContainer),
        ("startContainer", &h.StartContainer),
    ];
    match lists.iter().find(|(_, l)| !l.is_empty()) {
        Some((name, _)) => Err(SpecError::Hooks(name)),
        None => Ok(()),
    }
}

/// One process (a container's or an exec'd one) as OCI's `process`.
pub fn process_to_oci(p: &pb::Process) -> Result<oci::Process, SpecError> {
    for a in &p.Args {
        no_nul("a process argument", a)?;
    }
    for e in &p.Env {
        no_nul("a process environment entry", e)?;
        if env_key(e).is_empty() || !e.contains('=') {
            return Err(SpecError::Env(clip(e)));
        }
    }
    let cwd = if p.Cwd.is_empty() { "/" } else { &p.Cwd };
    no_nul("process cwd", cwd)?;
    if !cwd.starts_with('/') {
        return Err(SpecError::RelativePath {
            what: "process cwd",
            path: clip(cwd),
        });
    }
    let console = p
        .ConsoleSize
        .as_ref()
        .map(|b| {
            oci::BoxBuilder::default()
                .height(b.Height)
                .width(b.Width)
                .build()
                .map_err(built)
        })
        .transpose()?;
    let mut out = oci::Process::default();
    // Every field is set: the defaults (a shell, runc's capabilities and
    // rlimits) must not leak into what the host asked for.
    out.set_terminal(Some(p.Terminal))
        .set_console_size(console)
        .set_user(user_to_oci(p.User.as_ref()))
        .set_args(Some(p.Args.clone()))
        .set_command_line(None)
        .set_env(Some(p.Env.clone()))
        .set_cwd(cwd.into())
        .set_capabilities(
            p.Capabilities
                .as_ref()
                .map(capabilities_to_oci)
                .transpose()?,
        )
        .set_rlimits(rlimits_to_oci(&p.Rlimits)?)
        .set_no_new_privileges(Some(p.NoNewPrivileges))
        // The guest kernel has no AppArmor or SELinux to apply these with.
        .set_apparmor_profile(None)
        .set_selinux_label(None)
        .set_oom_score_adj(oom_score_adj(p.OOMScoreAdj)?)
        .set_io_priority(None)
        .set_scheduler(None)
        .set_exec_cpu_affinity(None);
    Ok(out)
}

/// The host's user name is dropped: only ids count, and names would be
/// looked up in the host's idea of the image.
fn user_to_oci(u: Option<&pb::User>) -> oci::User {
    let mut out = oci::User::default();
    if let Some(u) = u {
        out.set_uid(u.UID)
            .set_gid(u.GID)
            .set_additional_gids((!u.AdditionalGids.is_empty()).then(|| u.AdditionalGids.clone()));
    }
    out
}

fn capabilities_to_oci(c: &pb::LinuxCapabilities) -> Result<oci::LinuxCapabilities, SpecError> {
    let mut out = oci::LinuxCapabilities::default();
    out.set_bounding(Some(capability_set("bounding", &c.Bounding)?))
        .set_effective(Some(capability_set("effective", &c.Effective)?))
        .set_inheritable(Some(capability_set("inheritable", &c.Inheritable)?))
        .set_permitted(Some(capability_set("permitted", &c.Permitted)?))
        .set_ambient(Some(capability_set("ambient", &c.Ambient)?));
    Ok(out)
}

fn capability_set(set: &'static str, names: &[String]) -> Result<oci::Capabilities, SpecError> {
    names
        .iter()
        .map(|n| capability(n).ok_or_else(|| SpecError::Capability { set, name: clip(n) }))
        .collect()
}

/// Exactly `CAP_` + an upper-case kernel name: no lower case, no doubled
/// prefix (which oci-spec's deserializer would accept).
fn capability(name: &str) -> Option<oci::Capability> {
    let rest = name.strip_prefix("CAP_")?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
        return None;
    }
    oci::Capability::from_str(rest).ok()
}

fn rlimits_to_oci(limits: &[pb::POSIXRlimit]) -> Result<Option<Vec<oci::PosixRlimit>>, SpecError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(limits.len());
    for r in limits {
        let typ = r
            .Type
            .starts_with("RLIMIT_")
            .then(|| oci::PosixRlimitType::from_str(&r.Type).ok())
            .flatten()
            .ok_or_else(|| SpecError::RlimitType(clip(&r.Type)))?;
        if !seen.insert(r.Type.as_str()) {
            return Err(SpecError::RlimitDuplicate(r.Type.clone()));
        }
        if r.Soft > r.Hard {
            return Err(SpecError::RlimitOrder {
                name: r.Type.clone(),
                soft: r.Soft,
                hard: r.Hard,
            });
        }
        out.push(
            oci::PosixRlimitBuilder::default()
                .typ(typ)
                .hard(r.Hard)
                .soft(r.Soft)
                .build()
                .map_err(built)?,
        );
    }
    Ok((!out.is_empty()).then_some(out))
}

fn oom_score_adj(v: i64) -> Result<Option<i32>, SpecError> {
    match v {
        0 => Ok(None),
        -1000..=1000 => Ok(i32::try_from(v).ok()),
        _ => Err(SpecError::OomScoreAdj(v)),
    }
}

fn mount_to_oci(m: &pb::Mount) -> Result<oci::Mount, SpecError> {
    let destination = container_path("mount destination", &m.destination)?;
    no_nul("mount source", &m.source)?;
    no_nul("mount type", &m.type_)?;
    for o in &m.options {
        no_nul("a mount option", o)?;
    }
    let mut out = oci::Mount::default();
    out.set_destination(destination)
        .set_typ(non_empty(&m.type_))
        .set_source(non_empty(&m.source).map(PathBuf::from))
        .set_options((!m.options.is_empty()).then(|| m.options.clone()));
    Ok(out)
}

fn linux_to_oci(l: &pb::Linux, cgroups_path: PathBuf) -> Result<oci::Linux, SpecError> {
    if l.Seccomp.is_some() {
        tracing::warn!(
            "the container's seccomp profile is not applied: containers run without seccomp in the guest"
        );
    }
    for (k, v) in &l.Sysctl {
        check_sysctl(k)?;
        no_nul("a sysctl value", v)?;
    }
    let devices = l
        .Devices
        .iter()
        .map(device_to_oci)
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = oci::Linux::default();
    out.set_net_devices(None)
        .set_uid_mappings(id_mappings(&l.UIDMappings)?)
        .set_gid_mappings(id_mappings(&l.GIDMappings)?)
        .set_sysctl((!l.Sysctl.is_empty()).then(|| l.Sysctl.clone()))
        .set_resources(l.Resources.as_ref().map(resources_to_oci).transpose()?)
        .set_cgroups_path(Some(cgroups_path))
        .set_namespaces(Some(namespaces_to_oci(&l.Namespaces)?))
        .set_devices((!devices.is_empty()).then_some(devices))
        .set_seccomp(None)
        .set_rootfs_propagation(rootfs_propagation(&l.RootfsPropagation)?)
        .set_masked_paths(path_list("masked path", &l.MaskedPaths)?)
        .set_readonly_paths(path_list("readonly path", &l.ReadonlyPaths)?)
        // No SELinux in the guest, and no Intel RDT in the VM.
        .set_mount_label(None)
        .set_intel_rdt(None)
        .set_memory_policy(None)
        .set_personality(None)
        .set_time_offsets(None);
    Ok(out)
}

fn id_mappings(maps: &[pb::LinuxIDMapping]) -> Result<Option<Vec<oci::LinuxIdMapping>>, SpecError> {
    let out = maps
        .iter()
        .map(|m| {
            oci::LinuxIdMappingBuilder::default()
                .host_id(m.HostID)
                .container_id(m.ContainerID)
                .size(m.Size)
                .build()
                .map_err(built)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((!out.is_empty()).then_some(out))
}

/// Dotted (`net.ipv4.ip_forward`) or slashed names only: libcontainer
/// allows only namespaced ones, this refuses what cannot be a name at all.
fn check_sysctl(key: &str) -> Result<(), SpecError> {
    let ok = !key.is_empty()
        && key.split(['.', '/']).all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(SpecError::Sysctl(clip(key)))
    }
}

fn namespaces_to_oci(list: &[pb::LinuxNamespace]) -> Result<Vec<oci::LinuxNamespace>, SpecError> {
    use oci::LinuxNamespaceType as T;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for ns in list {
        let typ = match ns.Type.as_str() {
            "pid" => T::Pid,
            "network" => T::Network,
            "mount" => T::Mount,
            "ipc" => T::Ipc,
            "uts" => T::Uts,
            "user" => T::User,
            "cgroup" => T::Cgroup,
            "time" => T::Time,
            other => return Err(SpecError::NamespaceType(clip(other))),
        };
        if !seen.insert(typ) {
            return Err(SpecError::NamespaceDuplicate(ns.Type.clone()));
        }
        let path = match ns.Path.as_str() {
            "" => None,
            p => Some(container_path("namespace path", p)?),
        };
        let mut o = oci::LinuxNamespace::default();
        o.set_typ(typ).set_path(path);
        out.push(o);
    }
    Ok(out)
}

fn device_to_oci(d: &pb::LinuxDevice) -> Result<oci::LinuxDevice, SpecError> {
    use oci::LinuxDeviceType as T;
    let path = container_path("device path", &d.Path)?;
    let typ = match d.Type.as_str() {
        "c" => T::C,
        "b" => T::B,
        "u" => T::U,
        "p" => T::P,
        other => {
            return Err(SpecError::Device {
                what: "device type",
                value: clip(other),
            });
        }
    };
    for (what, n) in [("device major", d.Major), ("device minor", d.Minor)] {
        if n < 0 {
            return Err(SpecError::Device {
                what,
                value: n.to_string(),
            });
        }
    }
    if d.FileMode > 0o7777 {
        return Err(SpecError::Device {
            what: "device file mode",
            value: format!("{:o}", d.FileMode),
        });
    }
    let mut out = oci::LinuxDevice::default();
    out.set_path(path)
        .set_typ(typ)
        .set_major(d.Major)
        .set_minor(d.Minor)
        .set_file_mode((d.FileMode != 0).then_some(d.FileMode))
        .set_uid(Some(d.UID))
        .set_gid(Some(d.GID));
    Ok(out)
}

fn rootfs_propagation(mode: &str) -> Result<Option<String>, SpecError> {
    const MODES: [&str; 8] = [
        "shared",
        "rshared",
        "slave",
        "rslave",
        "private",
        "rprivate",
        "unbindable",
        "runbindable",
    ];
    match mode {
        "" => Ok(None),
        m if MODES.contains(&m) => Ok(Some(m.to_string())),
        m => Err(SpecError::RootfsPropagation(clip(m))),
    }
}

fn path_list(what: &'static str, paths: &[String]) -> Result<Option<Vec<String>>, SpecError> {
    for p in paths {
        container_path(what, p)?;
    }
    Ok((!paths.is_empty()).then(|| paths.to_vec()))
}

fn resources_to_oci(r: &pb::LinuxResources) -> Result<oci::LinuxResources, SpecError> {
    let devices = r
        .Devices
        .iter()
        .map(device_rule_to_oci)
        .collect::<Result<Vec<_>, _>>()?;
    let hugepages = r
        .HugepageLimits
        .iter()
        .map(hugepage_to_oci)
        .collect::<Result<Vec<_>, _>>()?;
    let pids = limit("pids limit", r.Pids.as_ref().map_or(0, |p| p.Limit))?.map(|n| {
        let mut p = oci::LinuxPids::default();
        p.set_limit(n);
        p
    });
    let mut out = oci::LinuxResources::default();
    out.set_devices((!devices.is_empty()).then_some(devices))
        .set_memory(r.Memory.as_ref().map(memory_to_oci).transpose()?.flatten())
        .set_cpu(r.CPU.as_ref().map(cpu_to_oci).transpose()?.flatten())
        .set_pids(pids)
        // Block IO weights and throttles name host block devices
        // (major:minor) that do not exist in the guest: not applied.
        .set_block_io(None)
        .set_hugepage_limits((!hugepages.is_empty()).then_some(hugepages))
        // net_cls and net_prio do not exist in cgroup v2.
        .set_network(None)
        .set_rdma(None)
        .set_unified(None);
    Ok(out)
}

/// 0 is unset (proto3), -1 unlimited, anything below is refused.
fn limit(what: &'static str, v: i64) -> Result<Option<i64>, SpecError> {
    match v {
        0 => Ok(None),
        -1.. => Ok(Some(v)),
        _ => Err(SpecError::Resource {
            what,
            value: v.to_string(),
            why: "is negative (only -1, unlimited, is allowed)",
        }),
    }
}

/// Kernel and KernelTCP are not carried over: kernel memory limits are
/// gone from cgroup v2 (and from the kernel since 5.4).
fn memory_to_oci(m: &pb::LinuxMemory) -> Result<Option<oci::LinuxMemory>, SpecError> {
    let max = limit("memory limit", m.Limit)?;
    let reservation = limit("memory reservation", m.Reservation)?;
    let swap = limit("memory swap", m.Swap)?;
    match (max, swap) {
        (None, Some(s)) => {
            return Err(SpecError::Resource {
                what: "memory swap",
                value: s.to_string(),
                why: "is set without a memory limit",
            });
        }
        (Some(l), Some(s)) if l > 0 && s > 0 && s < l => {
            return Err(SpecError::Resource {
                what: "memory swap",
                value: s.to_string(),
                why: "is below the memory limit (it counts memory plus swap)",
            });
        }
        _ => {}
    }
    if m.Swappiness > 100 {
        return Err(SpecError::Resource {
            what: "memory swappiness",
            value: m.Swappiness.to_string(),
            why: "is above 100",
        });
    }
    let swappiness = (m.Swappiness != 0).then_some(m.Swappiness);
    let no_oom_kill = m.DisableOOMKiller.then_some(true);
    if max.is_none() && reservation.is_none() && swappiness.is_none() && no_oom_kill.is_none() {
        return Ok(None);
    }
    let mut out = oci::LinuxMemory::default();
    out.set_limit(max)
        .set_reservation(reservation)
        .set_swap(swap)
        .set_swappiness(swappiness)
        .set_disable_oom_killer(no_oom_kill);
    Ok(Some(out))
}

fn cpu_to_oci(c: &pb::LinuxCPU) -> Result<Option<oci::LinuxCpu>, SpecError> {
    // cgroup v2 has no realtime scheduling controller; libcontainer would
    // fail later with a vaguer message.
    if c.RealtimeRuntime != 0 || c.RealtimePeriod != 0 {
        return Err(SpecError::Resource {
            what: "cpu realtime runtime/period",
            value: format!("{}/{}", c.RealtimeRuntime, c.RealtimePeriod),
            why: "cannot be applied: cgroup v2 has no realtime CPU controller",
        });
    }
    let quota = limit("cpu quota", c.Quota)?;
    let cpus = cpu_list("cpuset cpus", &c.Cpus)?;
    let mems = cpu_list("cpuset mems", &c.Mems)?;
    let shares = (c.Shares != 0).then_some(c.Shares);
    let period = (c.Period != 0).then_some(c.Period);
    if shares.is_none() && quota.is_none() && period.is_none() && cpus.is_none() && mems.is_none() {
        return Ok(None);
    }
    let mut out = oci::LinuxCpu::default();
    out.set_shares(shares)
        .set_quota(quota)
        .set_period(period)
        .set_cpus(cpus)
        .set_mems(mems);
    Ok(Some(out))
}

/// A cpuset list such as `0-3,6`.
fn cpu_list(what: &'static str, list: &str) -> Result<Option<String>, SpecError> {
    if list.is_empty() {
        return Ok(None);
    }
    let ok = list.split(',').all(|range| {
        let mut ends = range.splitn(2, '-');
        ends.all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    if ok {
        Ok(Some(list.to_string()))
    } else {
        Err(SpecError::Resource {
            what,
            value: format!("{:?}", clip(list)),
            why: "is not a list like 0-3,6",
        })
    }
}

/// A hugepage entry is kept even with limit 0: the kubelet sends 0 on
/// purpose to deny a page size.
fn hugepage_to_oci(h: &pb::LinuxHugepageLimit) -> Result<oci::LinuxHugepageLimit, SpecError> {
    let size_ok = h
        .Pagesize
        .strip_suffix("B")
        .and_then(|s| s.strip_suffix(['K', 'M', 'G']))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !size_ok {
        return Err(SpecError::Resource {
            what: "hugepage size",
            value: format!("{:?}", clip(&h.Pagesize)),
            why: "is not a size like 2MB or 1GB",
        });
    }
    let max = i64::try_from(h.Limit).map_err(|_| SpecError::Resource {
        what: "hugepage limit",
        value: h.Limit.to_string(),
        why: "is too large",
    })?;
    let mut out = oci::LinuxHugepageLimit::default();
    out.set_page_size(h.Pagesize.clone()).set_limit(max);
    Ok(out)
}

/// As in Kata, a major or minor of 0 or -1 is a wildcard: proto3 cannot
/// carry the Go runtime's nil.
fn device_rule_to_oci(d: &pb::LinuxDeviceCgroup) -> Result<oci::LinuxDeviceCgroup, SpecError> {
    use oci::LinuxDeviceType as T;
    let bad = |what, value: &str| SpecError::Device {
        what,
        value: clip(value),
    };
    let typ = match d.Type.as_str() {
        "" => None,
        "a" => Some(T::A),
        "b" => Some(T::B),
        "c" => Some(T::C),
        other => return Err(bad("device cgroup rule type", other)),
    };
    let number = |what, n: i64| match n {
        -1 | 0 => Ok(None),
        1.. => Ok(Some(n)),
        _ => Err(bad(what, &n.to_string())),
    };
    let major = number("device cgroup rule major", d.Major)?;
    let minor = number("device cgroup rule minor", d.Minor)?;
    if !d.Access.bytes().all(|b| matches!(b, b'r' | b'w' | b'm')) {
        return Err(bad("device cgroup rule access", &d.Access));
    }
    let mut out = oci::LinuxDeviceCgroup::default();
    out.set_allow(d.Allow)
        .set_typ(typ)
        .set_major(major)
        .set_minor(minor)
        .set_access(non_empty(&d.Access));
    Ok(out)
}

/// An absolute path inside the container, without `..`.
fn container_path(what: &'static str, p: &str) -> Result<PathBuf, SpecError> {
    no_nul(what, p)?;
    if !p.starts_with('/') {
        return Err(SpecError::RelativePath {
            what,
            path: clip(p),
        });
    }
    if Path::new(p).components().any(|c| c == Component::ParentDir) {
        return Err(SpecError::ParentDir {
            what,
            path: clip(p),
        });
    }
    Ok(PathBuf::from(p))
}

fn no_nul(what: &'static str, s: &str) -> Result<(), SpecError> {
    if s.contains('\0') {
        Err(SpecError::Nul(what))
    } else {
        Ok(())
    }
}

fn built(e: impl std::fmt::Display) -> SpecError {
    SpecError::Build(e.to_string())
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Host strings quoted in errors are clipped so a huge one cannot flood
/// the log.
fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_SHOWN) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_guest_protos::protobuf::MessageField;
    use oci::{Capability as Cap, LinuxNamespaceType as Ns};

    fn paths() -> GuestPaths {
        GuestPaths {
            rootfs: "/run/cocoon/containers/web/rootfs".into(),
            cgroup_parent: "/cocoon".into(),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> pb::Mount {
        pb::Mount {
            destination: destination.into(),
            type_: typ.into(),
            source: source.into(),
            options: strings(options),
            ..Default::default()
        }
    }

    fn namespace(typ: &str, path: &str) -> pb::LinuxNamespace {
        pb::LinuxNamespace {
            Type: typ.into(),
            Path: path.into(),
            ..Default::default()
        }
    }

    /// containerd's default capability set.
    const CRI_CAPS: &[&str] = cocoon_types::container::CAPABILITIES;

    const MASKED: [&str; 6] = [
        "/proc/acpi",
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/scsi",
        "/sys/firmware",
    ];
    const READONLY: [&str; 5] = [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ];

    fn cri_process() -> pb::Process {
        pb::Process {
            Terminal: false,
            ConsoleSize: MessageField::some(pb::Box {
                Height: 24,
                Width: 80,
                ..Default::default()
            }),
            User: MessageField::some(pb::User {
                UID: 1000,
                GID: 1000,
                AdditionalGids: vec![1000, 10],
                Username: "app".into(),
                ..Default::default()
            }),
            Args: strings(&["/bin/server", "--port", "8080"]),
            Env: strings(&["PATH=/usr/bin:/bin", "HOSTNAME=web-0"]),
            Cwd: "/srv".into(),
            Capabilities: MessageField::some(pb::LinuxCapabilities {
                Bounding: strings(CRI_CAPS),
                Effective: strings(CRI_CAPS),
                Permitted: strings(CRI_CAPS),
                Inheritable: vec![],
                Ambient: strings(&["CAP_NET_BIND_SERVICE"]),
                ..Default::default()
            }),
            Rlimits: vec![pb::POSIXRlimit {
                Type: "RLIMIT_NOFILE".into(),
                Hard: 1_048_576,
                Soft: 65_536,
                ..Default::default()
            }],
            NoNewPrivileges: true,
            ApparmorProfile: "cri-containerd.apparmor.d".into(),
            OOMScoreAdj: 1000,
            SelinuxLabel: "system_u:system_r:container_t:s0:c1,c2".into(),
            ..Default::default()
        }
    }

    fn cri_resources() -> pb::LinuxResources {
        pb::LinuxResources {
            Devices: vec![
                pb::LinuxDeviceCgroup {
                    Allow: false,
                    Access: "rwm".into(),
                    ..Default::default()
                },
                pb::LinuxDeviceCgroup {
                    Allow: true,
                    Type: "c".into(),
                    Major: 10,
                    Minor: 229,
                    Access: "rwm".into(),
                    ..Default::default()
                },
            ],
            Memory: MessageField::some(pb::LinuxMemory {
                Limit: 268_435_456,
                Swap: 268_435_456,
                Kernel: 1 << 20,
                ..Default::default()
            }),
            CPU: MessageField::some(pb::LinuxCPU {
                Shares: 512,
                Quota: 50_000,
                Period: 100_000,
                Cpus: "0-1".into(),
                ..Default::default()
            }),
            Pids: MessageField::some(pb::LinuxPids {
                Limit: 1024,
                ..Default::default()
            }),
            BlockIO: MessageField::some(pb::LinuxBlockIO {
                Weight: 500,
                ..Default::default()
            }),
            HugepageLimits: vec![pb::LinuxHugepageLimit {
                Pagesize: "2MB".into(),
                Limit: 0,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// A spec shaped like the one containerd's CRI plugin makes for a pod
    /// with user namespaces.
    fn cri_spec() -> pb::Spec {
        let mapping = |host, size| pb::LinuxIDMapping {
            HostID: host,
            ContainerID: 0,
            Size: size,
            ..Default::default()
        };
        let linux = pb::Linux {
            UIDMappings: vec![mapping(100_000, 65_536)],
            GIDMappings: vec![mapping(200_000, 65_536)],
            Sysctl: HashMap::from([("net.ipv4.ip_unprivileged_port_start".into(), "0".into())]),
            Resources: MessageField::some(cri_resources()),
            CgroupsPath: "/kubepods/besteffort/pod1234/abcd".into(),
            Namespaces: vec![
                namespace("pid", ""),
                namespace("ipc", ""),
                namespace("uts", ""),
                namespace("mount", ""),
                namespace("network", "/var/run/netns/cni-1234"),
                namespace("user", ""),
            ],
            Devices: vec![pb::LinuxDevice {
                Path: "/dev/fuse".into(),
                Type: "c".into(),
                Major: 10,
                Minor: 229,
                FileMode: 0o666,
                UID: 0,
                GID: 0,
                ..Default::default()
            }],
            Seccomp: MessageField::some(pb::LinuxSeccomp {
                DefaultAction: "SCMP_ACT_ERRNO".into(),
                ..Default::default()
            }),
            RootfsPropagation: "rslave".into(),
            MaskedPaths: strings(&MASKED),
            ReadonlyPaths: strings(&READONLY),
            MountLabel: "system_u:object_r:container_file_t:s0:c1,c2".into(),
            IntelRdt: MessageField::some(pb::LinuxIntelRdt {
                L3CacheSchema: "L3:0=ff".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        pb::Spec {
            Version: "1.1.0".into(),
            Process: MessageField::some(cri_process()),
            Root: MessageField::some(pb::Root {
                Path: "/run/kata-containers/shared/containers/abcd/rootfs".into(),
                Readonly: false,
                ..Default::default()
            }),
            Hostname: "web-0".into(),
            Mounts: vec![
                mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
                mount(
                    "/dev",
                    "tmpfs",
                    "tmpfs",
                    &["nosuid", "strictatime", "mode=755", "size=65536k"],
                ),
                mount(
                    "/dev/pts",
                    "devpts",
                    "devpts",
                    &[
                        "nosuid",
                        "noexec",
                        "newinstance",
                        "ptmxmode=0666",
                        "mode=0620",
                        "gid=5",
                    ],
                ),
                mount(
                    "/dev/mqueue",
                    "mqueue",
                    "mqueue",
                    &["nosuid", "noexec", "nodev"],
                ),
                mount(
                    "/sys",
                    "sysfs",
                    "sysfs",
                    &["nosuid", "noexec", "nodev", "ro"],
                ),
                mount(
                    "/sys/fs/cgroup",
                    "cgroup",
                    "cgroup",
                    &["nosuid", "noexec", "nodev", "relatime", "ro"],
                ),
                mount("/dev/shm", "bind", "/run/cocoon/sandbox/shm", &["rbind"]),
            ],
            Hooks: MessageField::some(pb::Hooks::default()),
            Annotations: HashMap::from([
                (
                    "io.kubernetes.cri.container-type".into(),
                    "container".into(),
                ),
                ("io.kubernetes.cri.sandbox-id".into(), "5678".into()),
            ]),
            Linux: MessageField::some(linux),
            ..Default::default()
        }
    }

    fn convert(spec: &pb::Spec) -> Result<oci::Spec, SpecError> {
        to_oci(spec, "web", &paths())
    }

    fn caps(names: &[&str]) -> oci::Capabilities {
        names.iter().map(|n| capability(n).expect(n)).collect()
    }

    /// The pod's network sysctls go to the VM (the pod's network
    /// namespace), the safe ones only; the others stay with the container.
    #[test]
    fn pod_network_sysctls_are_taken_out_and_only_safe_ones_allowed() {
        let spec_with = |sysctls: &[(&str, &str)], own_netns: bool| {
            let mut k = cri_spec();
            let l = k.Linux.as_mut().unwrap();
            l.Sysctl = sysctls
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            l.Namespaces.retain(|n| n.Type != "network");
            if own_netns {
                l.Namespaces.push(namespace("network", ""));
            }
            to_oci(&k, "web", &paths()).unwrap()
        };
        let mut s = spec_with(
            &[
                ("net/ipv4/ip_unprivileged_port_start", "80"),
                ("net.ipv4.tcp_syncookies", "1"),
                ("kernel.shm_rmid_forced", "1"),
            ],
            false,
        );
        let taken = take_pod_sysctls(&mut s).unwrap();
        assert_eq!(
            taken,
            [
                (
                    "net.ipv4.ip_unprivileged_port_start".to_string(),
                    "80".to_string()
                ),
                ("net.ipv4.tcp_syncookies".to_string(), "1".to_string()),
            ]
        );
        let left = s.linux().as_ref().unwrap().sysctl().clone().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left["kernel.shm_rmid_forced"], "1");
        // One the pod's network must not get: the container is refused.
        for bad in ["net.ipv4.conf.all.route_localnet", "net.ipv4.ip_forward"] {
            let mut s = spec_with(&[(bad, "1")], false);
            let e = take_pod_sysctls(&mut s).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("safe network sysctls"), "{e}");
        }
        // A container with a network namespace of its own keeps them all.
        let mut s = spec_with(&[("net.ipv4.ip_forward", "1")], true);
        assert!(take_pod_sysctls(&mut s).unwrap().is_empty());
        assert_eq!(
            s.linux().as_ref().unwrap().sysctl().as_ref().unwrap().len(),
            1
        );
        // One file named twice.
        let mut s = spec_with(
            &[
                ("net.ipv4.tcp_syncookies", "1"),
                ("net/ipv4/tcp_syncookies", "0"),
            ],
            false,
        );
        let e = take_pod_sysctls(&mut s).unwrap_err().to_string();
        assert!(e.contains("given twice"), "{e}");
        let mut none = spec_with(&[], false);
        assert!(take_pod_sysctls(&mut none).unwrap().is_empty());
    }

    #[test]
    fn cri_spec_converts_field_by_field() {
        let out = convert(&cri_spec()).expect("converts");
        assert_eq!(out.version(), "1.1.0");
        let root = out.root().as_ref().expect("root");
        assert_eq!(root.path(), &paths().rootfs);
        assert_eq!(root.readonly(), Some(false));
        assert_eq!(out.hostname().as_deref(), Some("web-0"));
        assert_eq!(out.domainname(), &None);
        assert_eq!(out.hooks(), &None);
        assert_eq!(out.annotations(), &Some(cri_spec().Annotations));

        let p = out.process().as_ref().expect("process");
        assert_eq!(p.terminal(), Some(false));
        let size = p.console_size().expect("console size");
        assert_eq!((size.height(), size.width()), (24, 80));
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
        assert_eq!(p.user().additional_gids(), &Some(vec![1000, 10]));
        assert_eq!(p.user().username(), &None);
        assert_eq!(p.args(), &Some(strings(&["/bin/server", "--port", "8080"])));
        assert_eq!(
            p.env(),
            &Some(strings(&["PATH=/usr/bin:/bin", "HOSTNAME=web-0"]))
        );
        assert_eq!(p.cwd(), Path::new("/srv"));
        let c = p.capabilities().as_ref().expect("capabilities");
        assert_eq!(c.bounding(), &Some(caps(CRI_CAPS)));
        assert_eq!(c.effective(), &Some(caps(CRI_CAPS)));
        assert_eq!(c.permitted(), &Some(caps(CRI_CAPS)));
        assert_eq!(c.inheritable(), &Some(caps(&[])));
        assert_eq!(c.ambient(), &Some(HashSet::from([Cap::NetBindService])));
        assert!(
            c.bounding()
                .as_ref()
                .is_some_and(|b| b.contains(&Cap::AuditWrite))
        );
        let rl = p.rlimits().as_ref().expect("rlimits");
        assert_eq!(rl.len(), 1);
        assert_eq!(rl[0].typ(), oci::PosixRlimitType::RlimitNofile);
        assert_eq!((rl[0].hard(), rl[0].soft()), (1_048_576, 65_536));
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.apparmor_profile(), &None);
        assert_eq!(p.selinux_label(), &None);
        assert_eq!(p.oom_score_adj(), Some(1000));

        let mounts = out.mounts().as_ref().expect("mounts");
        let want = cri_spec().Mounts;
        assert_eq!(mounts.len(), want.len());
        for (m, w) in mounts.iter().zip(&want) {
            assert_eq!(m.destination(), Path::new(&w.destination));
            assert_eq!(m.typ().as_deref(), Some(w.type_.as_str()));
            assert_eq!(m.source().as_deref(), Some(Path::new(&w.source)));
            assert_eq!(m.options(), &Some(w.options.clone()));
        }

        let l = out.linux().as_ref().expect("linux");
        let ids = |m: &Option<Vec<oci::LinuxIdMapping>>| {
            m.as_ref().map(|v| {
                v.iter()
                    .map(|x| (x.host_id(), x.container_id(), x.size()))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(ids(l.uid_mappings()), Some(vec![(100_000, 0, 65_536)]));
        assert_eq!(ids(l.gid_mappings()), Some(vec![(200_000, 0, 65_536)]));
        assert_eq!(
            l.sysctl()
                .as_ref()
                .and_then(|s| s.get("net.ipv4.ip_unprivileged_port_start")),
            Some(&"0".to_string())
        );
        assert_eq!(l.cgroups_path().as_deref(), Some(Path::new("/cocoon/web")));
        let ns: Vec<_> = l
            .namespaces()
            .as_ref()
            .expect("namespaces")
            .iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect();
        assert_eq!(
            ns,
            vec![
                (Ns::Pid, None),
                (Ns::Ipc, None),
                (Ns::Uts, None),
                (Ns::Mount, None),
                (Ns::Network, Some("/var/run/netns/cni-1234".into())),
                (Ns::User, None),
            ]
        );
        let dev = &l.devices().as_ref().expect("devices")[0];
        assert_eq!(dev.path(), Path::new("/dev/fuse"));
        assert_eq!(dev.typ(), oci::LinuxDeviceType::C);
        assert_eq!((dev.major(), dev.minor()), (10, 229));
        assert_eq!(dev.file_mode(), Some(0o666));
        assert_eq!((dev.uid(), dev.gid()), (Some(0), Some(0)));
        assert_eq!(l.seccomp(), &None);
        assert_eq!(l.rootfs_propagation().as_deref(), Some("rslave"));
        assert_eq!(l.masked_paths(), &Some(strings(&MASKED)));
        assert_eq!(l.readonly_paths(), &Some(strings(&READONLY)));
        assert_eq!(l.mount_label(), &None);
        assert_eq!(l.intel_rdt(), &None);

        let r = l.resources().as_ref().expect("resources");
        let rules: Vec<String> = r
            .devices()
            .as_ref()
            .expect("device rules")
            .iter()
            .map(|d| format!("{} {d}", d.allow()))
            .collect();
        assert_eq!(rules, ["false a *:* rwm", "true c 10:229 rwm"]);
        let mem = r.memory().expect("memory");
        assert_eq!(mem.limit(), Some(268_435_456));
        assert_eq!(mem.swap(), Some(268_435_456));
        assert_eq!(mem.reservation(), None);
        assert_eq!(mem.swappiness(), None);
        assert_eq!(mem.disable_oom_killer(), None);
        #[allow(deprecated)]
        let kernel = mem.kernel();
        assert_eq!(kernel, None);
        let cpu = r.cpu().as_ref().expect("cpu");
        assert_eq!(cpu.shares(), Some(512));
        assert_eq!(cpu.quota(), Some(50_000));
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(cpu.cpus().as_deref(), Some("0-1"));
        assert_eq!(cpu.mems(), &None);
        assert_eq!(r.pids().map(|p| p.limit()), Some(1024));
        let huge = r.hugepage_limits().as_ref().expect("hugepages");
        assert_eq!(huge.len(), 1);
        assert_eq!((huge[0].page_size().as_str(), huge[0].limit()), ("2MB", 0));
        assert_eq!(r.block_io(), &None);
        assert_eq!(r.network(), &None);
    }

    #[test]
    fn converted_spec_serialises_with_oci_keys() {
        let out = convert(&cri_spec()).expect("converts");
        let json = serde_json::to_value(&out).expect("serialises");
        let keys = |v: &serde_json::Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&json),
            [
                "annotations",
                "hostname",
                "linux",
                "mounts",
                "ociVersion",
                "process",
                "root"
            ]
        );
        assert_eq!(
            keys(&json["process"]),
            [
                "args",
                "capabilities",
                "consoleSize",
                "cwd",
                "env",
                "noNewPrivileges",
                "oomScoreAdj",
                "rlimits",
                "terminal",
                "user"
            ]
        );
        assert_eq!(
            keys(&json["process"]["user"]),
            ["additionalGids", "gid", "uid"]
        );
        assert_eq!(json["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
        assert!(
            json["process"]["capabilities"]["bounding"]
                .as_array()
                .expect("bounding")
                .contains(&serde_json::json!("CAP_SYS_CHROOT"))
        );
        assert_eq!(keys(&json["root"]), ["path", "readonly"]);
        assert_eq!(
            keys(&json["linux"]),
            [
                "cgroupsPath",
                "devices",
                "gidMappings",
                "maskedPaths",
                "namespaces",
                "readonlyPaths",
                "resources",
                "rootfsPropagation",
                "sysctl",
                "uidMappings"
            ]
        );
        assert_eq!(json["linux"]["uidMappings"][0]["hostID"], 100_000);
        assert_eq!(json["linux"]["namespaces"][4]["type"], "network");
        assert_eq!(json["linux"]["namespaces"][3]["type"], "mount");
        assert_eq!(
            keys(&json["linux"]["resources"]),
            ["cpu", "devices", "hugepageLimits", "memory", "pids"]
        );
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 268_435_456);
        // And libcontainer's own reader takes it back unchanged.
        let back: oci::Spec = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, out);
    }

    /// The runtime's defaults (a shell, runc's capabilities, mounts and
    /// namespaces) must not appear where the host sent nothing.
    #[test]
    fn minimal_spec_gets_no_runtime_defaults() {
        let spec = pb::Spec {
            Process: MessageField::some(pb::Process::default()),
            ..Default::default()
        };
        let out = convert(&spec).expect("converts");
        let p = out.process().as_ref().expect("process");
        assert_eq!(p.args(), &Some(vec![]));
        assert_eq!(p.env(), &Some(vec![]));
        assert_eq!(p.cwd(), Path::new("/"));
        assert_eq!((p.user().uid(), p.user().gid()), (0, 0));
        assert_eq!(p.capabilities(), &None);
        assert_eq!(p.rlimits(), &None);
        assert_eq!(p.no_new_privileges(), Some(false));
        assert_eq!(p.oom_score_adj(), None);
        assert_eq!(p.console_size(), None);
        assert_eq!(out.mounts(), &Some(vec![]));
        assert_eq!(out.hostname(), &None);
        assert_eq!(out.annotations(), &None);
        assert!(!out.version().is_empty());
        assert_eq!(out.root().as_ref().and_then(|r| r.readonly()), Some(false));
        let l = out.linux().as_ref().expect("linux");
        assert_eq!(l.namespaces(), &Some(vec![]));
        assert_eq!(l.masked_paths(), &None);
        assert_eq!(l.readonly_paths(), &None);
        assert_eq!(l.resources(), &None);
        assert_eq!(l.cgroups_path().as_deref(), Some(Path::new("/cocoon/web")));
    }

    #[test]
    fn zero_means_unset_and_minus_one_unlimited() {
        let mut spec = cri_spec();
        let r = spec
            .Linux
            .as_mut()
            .and_then(|l| l.Resources.as_mut())
            .expect("resources");
        r.Memory = MessageField::some(pb::LinuxMemory {
            Limit: -1,
            ..Default::default()
        });
        r.CPU = MessageField::some(pb::LinuxCPU::default());
        r.Pids = MessageField::some(pb::LinuxPids::default());
        let out = convert(&spec).expect("converts");
        let res = out
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .expect("resources");
        let mem = res.memory().expect("memory");
        assert_eq!(
            (mem.limit(), mem.swap(), mem.reservation()),
            (Some(-1), None, None)
        );
        assert_eq!(res.cpu(), &None);
        assert_eq!(res.pids(), &None);
    }

    #[test]
    fn hooks_are_refused() {
        let hook = || pb::Hook {
            Path: "/usr/bin/true".into(),
            ..Default::default()
        };
        type Pick = fn(&mut pb::Hooks) -> &mut Vec<pb::Hook>;
        let lists: [(&str, Pick); 6] = [
            ("prestart", |h| &mut h.Prestart),
            ("poststart", |h| &mut h.Poststart),
            ("poststop", |h| &mut h.Poststop),
            ("createRuntime", |h| &mut h.CreateRuntime),
            ("createContainer", |h| &mut h.CreateContainer),
            ("startContainer", |h| &mut h.StartContainer),
        ];
        for (name, pick) in lists {
            let mut hooks = pb::Hooks::default();
            pick(&mut hooks).push(hook());
            let mut spec = cri_spec();
            spec.Hooks = MessageField::some(hooks);
            assert_eq!(convert(&spec), Err(SpecError::Hooks(name)));
        }
    }

    #[test]
    fn relative_cwd_is_refused() {
        let mut spec = cri_spec();
        spec.Process.as_mut().expect("process").Cwd = "srv".into();
        assert!(matches!(
            convert(&spec),
            Err(SpecError::RelativePath {
                what: "process cwd",
                ..
            })
        ));
    }

    #[test]
    fn mount_destination_must_be_absolute_without_parent_dirs() {
        for (dest, parent) in [
            ("/proc/../etc", true),
            ("/..", true),
            ("/a/b/..", true),
            ("etc", false),
            ("", false),
        ] {
            let mut spec = cri_spec();
            spec.Mounts.push(mount(dest, "bind", "/x", &["rbind"]));
            let got = convert(&spec);
            if parent {
                assert!(
                    matches!(
                        got,
                        Err(SpecError::ParentDir {
                            what: "mount destination",
                            ..
                        })
                    ),
                    "{dest}: {got:?}"
                );
            } else {
                assert!(
                    matches!(
                        got,
                        Err(SpecError::RelativePath {
                            what: "mount destination",
                            ..
                        })
                    ),
                    "{dest}: {got:?}"
                );
            }
        }
        // A name that merely starts with two dots is not a parent directory.
        let mut spec = cri_spec();
        spec.Mounts
            .push(mount("/data/..cache", "tmpfs", "tmpfs", &[]));
        assert!(convert(&spec).is_ok());
    }

    #[test]
    fn bad_capability_names_are_refused() {
        for name in [
            "CAP_NOT_A_CAPABILITY",
            "SYS_ADMIN",
            "cap_sys_admin",
            "CAP_sys_admin",
            "CAP_CAP_SYS_ADMIN",
            "CAP_SYS_ADMIN ",
            "CAP_",
            "",
        ] {
            let mut spec = cri_spec();
            let c = spec
                .Process
                .as_mut()
                .and_then(|p| p.Capabilities.as_mut())
                .expect("capabilities");
            c.Inheritable.push(name.into());
            assert_eq!(
                convert(&spec),
                Err(SpecError::Capability {
                    set: "inheritable",
                    name: name.into()
                }),
                "{name:?}"
            );
        }
        let mut spec = cri_spec();
        let c = spec
            .Process
            .as_mut()
            .and_then(|p| p.Capabilities.as_mut())
            .expect("capabilities");
        c.Ambient.push("CAP_BOGUS".into());
        assert!(matches!(
            convert(&spec),
            Err(SpecError::Capability { set: "ambient", .. })
        ));
    }

    #[test]
    fn every_kernel_capability_name_is_known() {
        for name in [
            "CAP_AUDIT_CONTROL",
            "CAP_BPF",
            "CAP_CHECKPOINT_RESTORE",
            "CAP_PERFMON",
            "CAP_SYS_ADMIN",
            "CAP_SYS_TTY_CONFIG",
            "CAP_WAKE_ALARM",
            "CAP_SYSLOG",
        ] {
            assert!(capability(name).is_some(), "{name}");
        }
    }

    #[test]
    fn unknown_or_repeated_namespaces_are_refused() {
        for typ in ["net", "mnt", "bogus", "PID", ""] {
            let mut spec = cri_spec();
            let l = spec.Linux.as_mut().expect("linux");
            l.Namespaces.push(namespace(typ, ""));
            assert_eq!(
                convert(&spec),
                Err(SpecError::NamespaceType(typ.into())),
                "{typ:?}"
            );
        }
        let mut spec = cri_spec();
        spec.Linux
            .as_mut()
            .expect("linux")
            .Namespaces
            .push(namespace("time", ""));
        assert!(convert(&spec).is_ok());
        spec.Linux
            .as_mut()
            .expect("linux")
            .Namespaces
            .push(namespace("pid", ""));
        assert_eq!(
            convert(&spec),
            Err(SpecError::NamespaceDuplicate("pid".into()))
        );
        let mut spec = cri_spec();
        spec.Linux.as_mut().expect("linux").Namespaces[0].Path = "proc/1/ns/pid".into();
        assert!(matches!(
            convert(&spec),
            Err(SpecError::RelativePath {
                what: "namespace path",
                ..
            })
        ));
    }

    #[test]
    fn container_ids_are_checked() {
        let long_ok = "a".repeat(128);
        for id in ["a", "0", "web-0", "A_b.c-1", long_ok.as_str()] {
            assert!(to_oci(&cri_spec(), id, &paths()).is_ok(), "{id}");
        }
        let too_long = "a".repeat(129);
        for id in [
            "",
            "-a",
            ".a",
            "_a",
            "..",
            "a/b",
            "a b",
            "a\0",
            "café",
            too_long.as_str(),
        ] {
            assert!(
                matches!(
                    to_oci(&cri_spec(), id, &paths()),
                    Err(SpecError::ContainerId(_))
                ),
                "{id:?}"
            );
        }
    }

    #[test]
    fn missing_process_is_refused_but_empty_args_are_not() {
        let mut spec = cri_spec();
        spec.Process = MessageField::none();
        assert_eq!(convert(&spec), Err(SpecError::MissingProcess));
        let mut spec = cri_spec();
        spec.Process.as_mut().expect("process").Args.clear();
        let out = convert(&spec).expect("converts");
        assert_eq!(
            out.process().as_ref().and_then(|p| p.args().clone()),
            Some(vec![])
        );
    }

    #[test]
    fn bad_rlimits_are_refused() {
        let rl = |t: &str, hard, soft| pb::POSIXRlimit {
            Type: t.into(),
            Hard: hard,
            Soft: soft,
            ..Default::default()
        };
        let with = |limits: Vec<pb::POSIXRlimit>| {
            let mut spec = cri_spec();
            spec.Process.as_mut().expect("process").Rlimits = limits;
            convert(&spec)
        };
        for t in ["NOFILE", "RLIMIT_BOGUS", "rlimit_nofile", "RLIMIT_"] {
            assert_eq!(
                with(vec![rl(t, 1, 1)]),
                Err(SpecError::RlimitType(t.into()))
            );
        }
        assert_eq!(
            with(vec![rl("RLIMIT_CORE", 0, 0), rl("RLIMIT_CORE", 1, 1)]),
            Err(SpecError::RlimitDuplicate("RLIMIT_CORE".into()))
        );
        assert!(matches!(
            with(vec![rl("RLIMIT_NPROC", 10, 11)]),
            Err(SpecError::RlimitOrder {
                soft: 11,
                hard: 10,
                ..
            })
        ));
        let out =
            with(vec![rl("RLIMIT_RTTIME", 5, 5), rl("RLIMIT_MSGQUEUE", 7, 6)]).expect("converts");
        let got: Vec<_> = out
            .process()
            .as_ref()
            .and_then(|p| p.rlimits().clone())
            .expect("rlimits")
            .iter()
            .map(|r| (r.typ(), r.hard(), r.soft()))
            .collect();
        assert_eq!(
            got,
            [
                (oci::PosixRlimitType::RlimitRttime, 5, 5),
                (oci::PosixRlimitType::RlimitMsgqueue, 7, 6)
            ]
        );
    }

    #[test]
    fn process_strings_are_checked() {
        let mut spec = cri_spec();
        spec.Process.as_mut().expect("process").OOMScoreAdj = 1001;
        assert_eq!(convert(&spec), Err(SpecError::OomScoreAdj(1001)));
        let mut spec = cri_spec();
        spec.Process
            .as_mut()
            .expect("process")
            .Env
            .push("NOVALUE".into());
        assert_eq!(convert(&spec), Err(SpecError::Env("NOVALUE".into())));
        let mut spec = cri_spec();
        spec.Process
            .as_mut()
            .expect("process")
            .Env
            .push("=x".into());
        assert_eq!(convert(&spec), Err(SpecError::Env("=x".into())));
        let mut spec = cri_spec();
        spec.Process
            .as_mut()
            .expect("process")
            .Args
            .push("a\0b".into());
        assert_eq!(convert(&spec), Err(SpecError::Nul("a process argument")));
    }

    #[test]
    fn inconsistent_resources_are_refused() {
        let with = |edit: fn(&mut pb::LinuxResources)| {
            let mut spec = cri_spec();
            edit(
                spec.Linux
                    .as_mut()
                    .and_then(|l| l.Resources.as_mut())
                    .expect("resources"),
            );
            convert(&spec)
        };
        let what = |r: Result<oci::Spec, SpecError>| match r {
            Err(SpecError::Resource { what, .. }) => what,
            other => panic!("expected a resource error, got {other:?}"),
        };
        assert_eq!(
            what(with(|r| r.Memory.as_mut().expect("memory").Limit = 0)),
            "memory swap"
        );
        assert_eq!(
            what(with(|r| r.Memory.as_mut().expect("memory").Swap = 1024)),
            "memory swap"
        );
        assert_eq!(
            what(with(|r| r.Memory.as_mut().expect("memory").Limit = -2)),
            "memory limit"
        );
        assert_eq!(
            what(with(|r| r.Memory.as_mut().expect("memory").Swappiness = 101)),
            "memory swappiness"
        );
        assert_eq!(
            what(with(
                |r| r.CPU.as_mut().expect("cpu").RealtimeRuntime = 950_000
            )),
            "cpu realtime runtime/period"
        );
        assert_eq!(
            what(with(|r| r.CPU.as_mut().expect("cpu").Quota = -5)),
            "cpu quota"
        );
        assert_eq!(
            what(with(
                |r| r.CPU.as_mut().expect("cpu").Cpus = "0-1;reboot".into()
            )),
            "cpuset cpus"
        );
        assert_eq!(
            what(with(|r| r.HugepageLimits[0].Pagesize = "2M".into())),
            "hugepage size"
        );
        assert_eq!(
            what(with(|r| r.HugepageLimits[0].Limit = u64::MAX)),
            "hugepage limit"
        );
        assert!(matches!(
            with(|r| r.Devices[1].Type = "x".into()),
            Err(SpecError::Device {
                what: "device cgroup rule type",
                ..
            })
        ));
        assert!(matches!(
            with(|r| r.Devices[1].Access = "rwx".into()),
            Err(SpecError::Device {
                what: "device cgroup rule access",
                ..
            })
        ));
    }

    #[test]
    fn linux_fields_are_checked() {
        let with = |edit: fn(&mut pb::Linux)| {
            let mut spec = cri_spec();
            edit(spec.Linux.as_mut().expect("linux"));
            convert(&spec)
        };
        assert_eq!(
            with(|l| l.RootfsPropagation = "bogus".into()),
            Err(SpecError::RootfsPropagation("bogus".into()))
        );
        for key in ["/etc/passwd", "net..ipv4", "kernel.shm max", ""] {
            let mut spec = cri_spec();
            spec.Linux
                .as_mut()
                .expect("linux")
                .Sysctl
                .insert(key.into(), "1".into());
            assert_eq!(
                convert(&spec),
                Err(SpecError::Sysctl(key.into())),
                "{key:?}"
            );
        }
        assert!(matches!(
            with(|l| l.MaskedPaths.push("proc/kcore".into())),
            Err(SpecError::RelativePath {
                what: "masked path",
                ..
            })
        ));
        assert!(matches!(
            with(|l| l.ReadonlyPaths.push("/proc/../etc".into())),
            Err(SpecError::ParentDir {
                what: "readonly path",
                ..
            })
        ));
        assert!(matches!(
            with(|l| l.Devices[0].Type = "a".into()),
            Err(SpecError::Device {
                what: "device type",
                ..
            })
        ));
        assert!(matches!(
            with(|l| l.Devices[0].FileMode = 0o10666),
            Err(SpecError::Device {
                what: "device file mode",
                ..
            })
        ));
        assert!(matches!(
            with(|l| l.Devices[0].Path = "/dev/../etc/shadow".into()),
            Err(SpecError::ParentDir {
                what: "device path",
                ..
            })
        ));
    }

    #[test]
    fn guest_paths_must_be_absolute() {
        let mut p = paths();
        p.rootfs = "rootfs".into();
        assert!(matches!(
            to_oci(&cri_spec(), "web", &p),
            Err(SpecError::RelativePath {
                what: "guest rootfs",
                ..
            })
        ));
        let mut p = paths();
        p.cgroup_parent = "cocoon".into();
        assert!(matches!(
            to_oci(&cri_spec(), "web", &p),
            Err(SpecError::RelativePath {
                what: "cgroup parent",
                ..
            })
        ));
        let mut p = paths();
        p.cgroup_parent = "/".into();
        let out = to_oci(&cri_spec(), "web", &p).expect("converts");
        assert_eq!(
            out.linux().as_ref().and_then(|l| l.cgroups_path().clone()),
            Some(PathBuf::from("/web"))
        );
    }

    #[test]
    fn long_host_strings_are_clipped_in_errors() {
        let mut spec = cri_spec();
        spec.Process.as_mut().expect("process").Cwd = "x".repeat(100_000);
        let msg = convert(&spec).expect_err("refused").to_string();
        assert!(msg.len() < 300, "{} bytes", msg.len());
    }

    // merge_image_config

    fn image(args: &[&str], env: &[&str], cwd: &str, uid: u32, gid: u32) -> oci::Spec {
        let mut user = oci::User::default();
        user.set_uid(uid).set_gid(gid);
        let mut p = oci::Process::default();
        p.set_args(Some(strings(args)))
            .set_env(Some(strings(env)))
            .set_cwd(cwd.into())
            .set_user(user);
        let mut s = oci::Spec::default();
        s.set_process(Some(p));
        s
    }

    fn request(args: &[&str], env: &[&str], cwd: &str, uid: u32, gid: u32) -> oci::Spec {
        let spec = pb::Spec {
            Process: MessageField::some(pb::Process {
                Args: strings(args),
                Env: strings(env),
                Cwd: cwd.into(),
                User: MessageField::some(pb::User {
                    UID: uid,
                    GID: gid,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        convert(&spec).expect("converts")
    }

    fn process(s: &oci::Spec) -> &oci::Process {
        s.process().as_ref().expect("process")
    }

    #[test]
    fn merge_takes_args_only_when_the_request_has_none() {
        let img = image(&["/entry", "serve"], &[], "/", 0, 0);
        let mut spec = request(&[], &[], "", 0, 0);
        merge_image_config(&mut spec, &img);
        assert_eq!(process(&spec).args(), &Some(strings(&["/entry", "serve"])));
        let mut spec = request(&["/bin/sh", "-c", "date"], &[], "", 0, 0);
        merge_image_config(&mut spec, &img);
        assert_eq!(
            process(&spec).args(),
            &Some(strings(&["/bin/sh", "-c", "date"]))
        );
    }

    #[test]
    fn merge_overlays_the_request_env_on_the_image_env() {
        let img = image(&["x"], &["PATH=/img/bin", "A=1", "B=2"], "/", 0, 0);
        let mut spec = request(&[], &["B=3", "C=4", "HOME=/home/me"], "", 0, 0);
        merge_image_config(&mut spec, &img);
        assert_eq!(
            process(&spec).env(),
            &Some(strings(&[
                "PATH=/img/bin",
                "A=1",
                "B=3",
                "C=4",
                "HOME=/home/me"
            ]))
        );
    }

    #[test]
    fn merge_adds_path_and_home_when_missing() {
        let img = image(&["x"], &[], "/", 0, 0);
        let mut spec = request(&[], &["A=1"], "", 0, 0);
        merge_image_config(&mut spec, &img);
        assert_eq!(
            process(&spec).env(),
            &Some(strings(&[
                "A=1",
                &format!("PATH={DEFAULT_PATH}"),
                "HOME=/root"
            ]))
        );
        let mut spec = request(&[], &[], "", 1000, 1000);
        merge_image_config(&mut spec, &img);
        assert!(
            process(&spec)
                .env()
                .as_ref()
                .is_some_and(|e| e.contains(&"HOME=/".to_string()))
        );
    }

    #[test]
    fn merge_takes_the_image_cwd_only_for_the_default_one() {
        let img = image(&["x"], &[], "/app", 0, 0);
        let mut spec = request(&[], &[], "/", 0, 0);
        merge_image_config(&mut spec, &img);
        assert_eq!(process(&spec).cwd(), Path::new("/app"));
        let mut spec = request(&[], &[], "/srv", 0, 0);
        merge_image_config(&mut spec, &img);
        assert_eq!(process(&spec).cwd(), Path::new("/srv"));
        let img = image(&["x"], &[], "app", 0, 0);
        let mut spec = request(&[], &[], "/", 0, 0);
        merge_image_config(&mut spec, &img);
        assert_eq!(process(&spec).cwd(), Path::new("/"));
    }

    #[test]
    fn merge_lets_the_image_lower_the_user_but_never_raise_it() {
        let ids = |s: &oci::Spec| (process(s).user().uid(), process(s).user().gid());
        // Root request, non-root image: lowered.
        let mut spec = request(&[], &[], "", 0, 0);
        merge_image_config(&mut spec, &image(&["x"], &[], "/", 1000, 100));
        assert_eq!(ids(&spec), (1000, 100));
        // Non-root request, root image: kept.
        let mut spec = request(&[], &[], "", 1000, 1000);
        merge_image_config(&mut spec, &image(&["x"], &[], "/", 0, 0));
        assert_eq!(ids(&spec), (1000, 1000));
        // Non-root request, another non-root image user: the request wins.
        let mut spec = request(&[], &[], "", 1000, 1000);
        merge_image_config(&mut spec, &image(&["x"], &[], "/", 2000, 2000));
        assert_eq!(ids(&spec), (1000, 1000));
        // Root uid with a non-root group is not plain root: kept.
        let mut spec = request(&[], &[], "", 0, 5);
        merge_image_config(&mut spec, &image(&["x"], &[], "/", 1000, 1000));
        assert_eq!(ids(&spec), (0, 5));
    }

    /// The config.json the image pipeline writes (oci-spec 0.8) reads back
    /// with libcontainer's oci-spec and merges.
    #[test]
    fn merge_reads_the_image_pipelines_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("etc")).expect("etc");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1001:1002::/home/app:/bin/sh\n",
        )
        .expect("passwd");
        let rootfs =
            cocoon_image::unpack::Rootfs::open(dir.path(), Default::default()).expect("rootfs");
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": {
                "User": "app",
                "Entrypoint": ["/usr/bin/server"],
                "Cmd": ["--listen", ":80"],
                "Env": ["PATH=/usr/bin", "MODE=image"],
                "WorkingDir": "/srv/app"
            }
        });
        let written = cocoon_image::bundle::runtime_spec(
            &serde_json::from_value(config).expect("image config"),
            &rootfs,
        )
        .expect("runtime spec");
        let json = serde_json::to_string(&written).expect("config.json");
        let img: oci::Spec = serde_json::from_str(&json).expect("reads as oci-spec 0.10");
        let mut spec = request(&[], &["MODE=pod"], "", 0, 0);
        merge_image_config(&mut spec, &img);
        let p = process(&spec);
        assert_eq!(
            p.args(),
            &Some(strings(&["/usr/bin/server", "--listen", ":80"]))
        );
        assert_eq!(
            p.env(),
            &Some(strings(&["PATH=/usr/bin", "MODE=pod", "HOME=/"]))
        );
        assert_eq!(p.cwd(), Path::new("/srv/app"));
        assert_eq!((p.user().uid(), p.user().gid()), (1001, 1002));
    }
}
