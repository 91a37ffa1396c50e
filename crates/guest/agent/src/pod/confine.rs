//! What the untrusted host may ask of a container until the owner's agent
//! policy says more: the guest's secrets (the data hub's and attestation
//! agent's sockets, PID 1's memory, TEE and TPM devices, configfs reports)
//! stay out of every container. A spec that asks for more is refused with
//! the reason; what a container always gets (its own PID, mount, IPC, UTS
//! and cgroup namespaces, masked kernel files) is added.

use super::sandbox::SandboxError;
use cocoon_types::container::{CAPABILITIES, MASKED_PATHS as MASKED, READONLY_PATHS as READONLY};
use libcontainer::oci_spec::runtime as oci;
use std::path::{Path, PathBuf};

/// Mount types a container may ask for (besides binds of its own files).
const MOUNT_TYPES: &[&str] = &[
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
];

/// Character devices a container may be allowed: null, zero, full,
/// random, urandom, tty, ptmx and the pty slaves. Not the guest's console
/// (5:1, which the host reads); a container's own console is a pty slave.
const DEVICES: &[(i64, Option<i64>)] = &[
    (1, Some(3)),
    (1, Some(5)),
    (1, Some(7)),
    (1, Some(8)),
    (1, Some(9)),
    (5, Some(0)),
    (5, Some(2)),
    (136, None),
];

fn refuse(what: String) -> SandboxError {
    SandboxError::Invalid(format!("{what} is not allowed without an agent policy"))
}

fn check_caps(set: &Option<oci::Capabilities>) -> Result<(), SandboxError> {
    for c in set.iter().flatten() {
        let name = c.to_string();
        let name = if name.starts_with("CAP_") {
            name
        } else {
            format!("CAP_{name}")
        };
        if !CAPABILITIES.contains(&name.as_str()) {
            return Err(refuse(format!("capability {name}")));
        }
    }
    Ok(())
}

/// A process (a container's init or an exec'd one) within the default
/// capability set.
pub fn process(p: &oci::Process) -> Result<(), SandboxError> {
    if let Some(c) = p.capabilities() {
        check_caps(c.bounding())?;
        check_caps(c.effective())?;
        check_caps(c.permitted())?;
        check_caps(c.inheritable())?;
        check_caps(c.ambient())?;
    }
    Ok(())
}

fn is_bind(m: &oci::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// The bind source, resolved, when it lies inside `own` (the container's
/// bundle).
fn own_source(m: &oci::Mount, own: &Path) -> Result<PathBuf, SandboxError> {
    let src = m.source().clone().unwrap_or_default();
    let resolved = std::fs::canonicalize(&src)
        .map_err(|_| refuse(format!("bind mount of {}", src.display())))?;
    if resolved.starts_with(own) {
        Ok(resolved)
    } else {
        Err(refuse(format!("bind mount of {}", src.display())))
    }
}

/// Confines a container spec (after conversion, before it is written):
/// refuses what would reach the guest's secrets, adds what every
/// container gets. `bundle` is the container's own directory.
pub fn container(spec: &mut oci::Spec, bundle: &Path) -> Result<(), SandboxError> {
    if let Some(p) = spec.process() {
        process(p)?;
    }
    let own = std::fs::canonicalize(bundle)
        .map_err(|e| SandboxError::Failed(format!("bundle {}: {e}", bundle.display())))?;
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for m in &mut mounts {
        if is_bind(m) {
            let src = own_source(m, &own)?;
            m.set_source(Some(src));
            continue;
        }
        let typ = m.typ().clone().unwrap_or_default();
        if !MOUNT_TYPES.contains(&typ.as_str()) {
            return Err(refuse(format!(
                "a {typ:?} mount at {}",
                m.destination().display()
            )));
        }
        // Kernel views stay read-only.
        if matches!(typ.as_str(), "sysfs" | "cgroup" | "cgroup2") {
            let mut opts = m.options().clone().unwrap_or_default();
            opts.retain(|o| o != "rw");
            if !opts.iter().any(|o| o == "ro") {
                opts.push("ro".into());
            }
            m.set_options(Some(opts));
        }
    }
    spec.set_mounts(Some(mounts));
    let Some(linux) = spec.linux_mut() else {
        return Err(SandboxError::Invalid(
            "the spec has no linux section".into(),
        ));
    };
    if linux.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(refuse("adding devices to a container".into()));
    }
    // Namespaces: never joined by path (a guest path such as
    // /proc/1/ns/mnt is PID 1's); the isolating ones always new.
    use oci::LinuxNamespaceType as T;
    let mut ns = linux.namespaces().clone().unwrap_or_default();
    if let Some(n) = ns.iter().find(|n| n.path().is_some()) {
        return Err(refuse(format!("joining a {:?} namespace by path", n.typ())));
    }
    for t in [T::Pid, T::Mount, T::Ipc, T::Uts, T::Cgroup] {
        if !ns.iter().any(|n| n.typ() == t) {
            let mut n = oci::LinuxNamespace::default();
            n.set_typ(t).set_path(None);
            ns.push(n);
        }
    }
    linux.set_namespaces(Some(ns));
    let mut masked = linux.masked_paths().clone().unwrap_or_default();
    for m in MASKED {
        if !masked.iter().any(|x| x == m) {
            masked.push((*m).into());
        }
    }
    linux.set_masked_paths(Some(masked));
    let mut ro = linux.readonly_paths().clone().unwrap_or_default();
    for r in READONLY {
        if !ro.iter().any(|x| x == r) {
            ro.push((*r).into());
        }
    }
    linux.set_readonly_paths(Some(ro));
    // Device access: deny all first, then only the standard devices. The
    // agent enforces these rules itself (`devcgroup`), always.
    {
        let res = linux.resources_mut().get_or_insert_with(Default::default);
        let rules = res.devices().clone().unwrap_or_default();
        for r in rules.iter().filter(|r| r.allow()) {
            let ok = r.typ() == Some(oci::LinuxDeviceType::C)
                && r.major().is_some_and(|maj| {
                    DEVICES
                        .iter()
                        .any(|(m, min)| *m == maj && (min.is_none() || *min == r.minor()))
                });
            if !ok {
                return Err(refuse(format!(
                    "device access {:?} {:?}:{:?}",
                    r.typ(),
                    r.major(),
                    r.minor()
                )));
            }
        }
        let mut deny = oci::LinuxDeviceCgroup::default();
        deny.set_allow(false).set_access(Some("rwm".into()));
        let mut all = vec![deny];
        all.extend(rules);
        // As runc does, the standard devices last: always usable, and any
        // device node may be created (opening one is what counts).
        let rule = |t, major: Option<i64>, minor: Option<i64>, access: &str| {
            let mut r = oci::LinuxDeviceCgroup::default();
            r.set_allow(true)
                .set_typ(Some(t))
                .set_major(major)
                .set_minor(minor)
                .set_access(Some(access.into()));
            r
        };
        for (major, minor) in DEVICES {
            all.push(rule(oci::LinuxDeviceType::C, Some(*major), *minor, "rwm"));
        }
        all.push(rule(oci::LinuxDeviceType::C, None, None, "m"));
        all.push(rule(oci::LinuxDeviceType::B, None, None, "m"));
        res.set_devices(Some(all));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(f: impl FnOnce(&mut oci::Spec)) -> oci::Spec {
        let mut s = oci::Spec::default();
        f(&mut s);
        s
    }

    fn bundle() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("rootfs")).unwrap();
        std::fs::write(d.path().join("hosts"), "127.0.0.1 localhost\n").unwrap();
        d
    }

    fn mount(typ: &str, src: &str, dst: &str, opts: &[&str]) -> oci::Mount {
        let mut m = oci::Mount::default();
        m.set_typ(Some(typ.into()))
            .set_source(Some(src.into()))
            .set_destination(dst.into())
            .set_options(Some(opts.iter().map(|s| s.to_string()).collect()));
        m
    }

    #[test]
    fn the_default_spec_passes_and_gains_isolation() {
        let b = bundle();
        // oci-spec's default: runc's mounts, namespaces and capabilities.
        let mut s = oci::Spec::default();
        container(&mut s, b.path()).unwrap();
        let linux = s.linux().clone().unwrap();
        let ns: Vec<_> = linux
            .namespaces()
            .clone()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        for t in [
            oci::LinuxNamespaceType::Pid,
            oci::LinuxNamespaceType::Mount,
            oci::LinuxNamespaceType::Cgroup,
        ] {
            assert!(ns.contains(&t), "{t:?}");
        }
        let masked = linux.masked_paths().clone().unwrap();
        assert!(masked.iter().any(|m| m == "/sys/kernel/config"));
        let sys = s
            .mounts()
            .clone()
            .unwrap()
            .into_iter()
            .find(|m| m.typ().as_deref() == Some("sysfs"))
            .unwrap();
        assert!(sys.options().clone().unwrap().contains(&"ro".to_string()));

        // Device rules even for a spec without any resources: the
        // standard devices and device creation, nothing else opened.
        let mut s = oci::Spec::default();
        s.linux_mut().as_mut().unwrap().set_resources(None);
        container(&mut s, b.path()).unwrap();
        let rules = crate::pod::devcgroup::rules_of(&s).unwrap();
        use crate::pod::devcgroup::tests::decide;
        assert!(decide(&rules, 'c', "rw", 1, 3), "/dev/null");
        assert!(decide(&rules, 'c', "rw", 136, 4), "a pty");
        assert!(decide(&rules, 'b', "m", 254, 0), "creating a node");
        assert!(!decide(&rules, 'b', "r", 254, 0), "a disk");
        assert!(!decide(&rules, 'c', "rw", 10, 224), "the TPM");
        assert!(!decide(&rules, 'c', "r", 1, 1), "/dev/mem");
        assert!(!decide(&rules, 'c', "w", 5, 1), "the guest's console");
    }

    #[test]
    fn paths_to_the_guest_secrets_are_refused() {
        let b = bundle();
        for (typ, src, opts) in [
            ("bind", "/run", vec!["rbind"]),
            ("none", "/", vec!["bind"]),
            ("bind", "/proc/1/root", vec!["rbind"]),
            ("configfs", "configfs", vec![]),
            ("securityfs", "securityfs", vec![]),
            ("debugfs", "debugfs", vec![]),
        ] {
            let mut s = spec_with(|s| {
                s.set_mounts(Some(vec![mount(typ, src, "/x", &opts)]));
            });
            let e = container(&mut s, b.path()).unwrap_err().to_string();
            assert!(e.contains("not allowed"), "{typ} {src}: {e}");
        }
        // A symlink in the bundle pointing out of it resolves outside.
        std::os::unix::fs::symlink("/run", b.path().join("escape")).unwrap();
        let src = b.path().join("escape").display().to_string();
        let mut s = spec_with(|s| {
            s.set_mounts(Some(vec![mount("bind", &src, "/x", &["rbind"])]));
        });
        assert!(container(&mut s, b.path()).is_err());
        // The container's own files may be bound.
        let own = b.path().join("hosts").display().to_string();
        let mut s = spec_with(|s| {
            s.set_mounts(Some(vec![mount(
                "bind",
                &own,
                "/etc/hosts",
                &["rbind", "ro"],
            )]));
        });
        container(&mut s, b.path()).unwrap();
    }

    #[test]
    fn namespaces_devices_and_capabilities_stay_confined() {
        let b = bundle();
        let mut s = oci::Spec::default();
        let linux = s.linux_mut().as_mut().unwrap();
        let mut n = oci::LinuxNamespace::default();
        n.set_typ(oci::LinuxNamespaceType::Mount)
            .set_path(Some("/proc/1/ns/mnt".into()));
        linux.set_namespaces(Some(vec![n]));
        assert!(
            container(&mut s, b.path())
                .unwrap_err()
                .to_string()
                .contains("namespace")
        );

        let mut s = oci::Spec::default();
        let mut d = oci::LinuxDevice::default();
        d.set_path("/dev/tpmrm0".into());
        s.linux_mut().as_mut().unwrap().set_devices(Some(vec![d]));
        assert!(container(&mut s, b.path()).is_err());

        let mut s = oci::Spec::default();
        let mut rule = oci::LinuxDeviceCgroup::default();
        rule.set_allow(true)
            .set_typ(Some(oci::LinuxDeviceType::C))
            .set_major(Some(10))
            .set_minor(Some(224));
        let mut res = oci::LinuxResources::default();
        res.set_devices(Some(vec![rule]));
        s.linux_mut().as_mut().unwrap().set_resources(Some(res));
        assert!(
            container(&mut s, b.path())
                .unwrap_err()
                .to_string()
                .contains("device")
        );

        let mut p = oci::Process::default();
        let mut caps = oci::LinuxCapabilities::default();
        caps.set_bounding(Some([oci::Capability::SysPtrace].into()));
        p.set_capabilities(Some(caps));
        assert!(
            process(&p)
                .unwrap_err()
                .to_string()
                .contains("CAP_SYS_PTRACE")
        );
        let mut p = oci::Process::default();
        let mut caps = oci::LinuxCapabilities::default();
        caps.set_bounding(Some([oci::Capability::Chown, oci::Capability::Kill].into()));
        p.set_capabilities(Some(caps));
        process(&p).unwrap();
    }
}
