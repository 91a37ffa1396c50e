//! The OCI runtime `config.json` of an unpacked image: runc's default
//! spec with the image's entrypoint, command, environment, working
//! directory and user filled in (as `umoci unpack` does).

use crate::unpack::Rootfs;
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{Process, Root, Spec, User};

/// Why a runtime spec could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot build config.json: {0}")]
pub struct SpecError(String);

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds the runtime spec; `rootfs` is read (inside its root) to resolve
/// a user name to ids.
pub fn runtime_spec(image: &ImageConfiguration, rootfs: &Rootfs) -> Result<Spec, SpecError> {
    let cfg = image.config().clone().unwrap_or_default();
    let mut args: Vec<String> = cfg.entrypoint().clone().unwrap_or_default();
    args.extend(cfg.cmd().clone().unwrap_or_default());
    if args.is_empty() {
        args.push("sh".into());
    }
    let mut env = cfg.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.into());
    }
    let user = resolve_user(cfg.user().as_deref().unwrap_or(""), rootfs)?;
    let mut process = Process::default();
    process
        .set_terminal(Some(false))
        .set_args(Some(args))
        .set_env(Some(env))
        .set_cwd(
            cfg.working_dir()
                .clone()
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into())
                .into(),
        )
        .set_user(user);
    let mut root = Root::default();
    root.set_path("rootfs".into()).set_readonly(Some(false));
    let mut spec = Spec::default();
    spec.set_process(Some(process))
        .set_root(Some(root))
        .set_hostname(Some("cocoon".into()));
    Ok(spec)
}

/// `user`, `uid`, `user:group`, `uid:gid` → numeric ids via the rootfs's
/// `/etc/passwd` and `/etc/group`.
fn resolve_user(spec: &str, rootfs: &Rootfs) -> Result<User, SpecError> {
    let mut u = User::default();
    if spec.is_empty() {
        return Ok(u);
    }
    let (name, group) = match spec.split_once(':') {
        Some((n, g)) => (n, Some(g)),
        None => (spec, None),
    };
    let lookup = |file: &str, key: &str| -> Option<(u32, u32)> {
        let data = rootfs.read_small(file, 1 << 20)?;
        String::from_utf8_lossy(&data).lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && f[0] == key).then(|| {
                let id = f[2].parse().ok()?;
                let gid = f.get(3).and_then(|g| g.parse().ok()).unwrap_or(id);
                Some((id, gid))
            })?
        })
    };
    let (uid, mut gid) = match name.parse::<u32>() {
        Ok(id) => (id, lookup_by_uid(rootfs, id).unwrap_or(id)),
        Err(_) => lookup("etc/passwd", name)
            .ok_or_else(|| SpecError(format!("user {name:?} is not in the image's /etc/passwd")))?,
    };
    if let Some(g) = group {
        gid = match g.parse::<u32>() {
            Ok(id) => id,
            Err(_) => lookup("etc/group", g).map(|(id, _)| id).ok_or_else(|| {
                SpecError(format!("group {g:?} is not in the image's /etc/group"))
            })?,
        };
    }
    u.set_uid(uid).set_gid(gid);
    Ok(u)
}

fn lookup_by_uid(rootfs: &Rootfs, uid: u32) -> Option<u32> {
    let data = rootfs.read_small("etc/passwd", 1 << 20)?;
    String::from_utf8_lossy(&data).lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2].parse() == Ok(uid)).then(|| f[3].parse().ok())?
    })
}
