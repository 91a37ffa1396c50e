//! Runs a software TPM (`swtpm`) on 127.0.0.1 for tests and benchmarks:
//! started with its PID kept, waited for until it answers, killed on drop.

use crate::{Tcti, Tpm, TpmError};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running swtpm process.
pub struct Swtpm {
    child: Child,
    port: u16,
}

fn free_port_pair() -> Result<u16, TpmError> {
    // swtpm needs two adjacent ports (data, control); probe for a pair.
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.1:0").map_err(|e| TpmError::Io(e.to_string()))?;
        let port = a
            .local_addr()
            .map_err(|e| TpmError::Io(e.to_string()))?
            .port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err(TpmError::Io("no free port pair for swtpm".into()))
}

/// NV index of the RSA 2048 EK certificate (TCG EK Credential Profile).
pub const EK_CERT_NV_INDEX: u32 = 0x01c0_0002;

/// The directory under a CA directory of [`manufacture_with_ek_cert`] that
/// holds its public certificates only (`root.pem`, `issuer.pem`): what a
/// trustee is given (`--tpm-ek-ca DIR`) to enroll these TPMs' keys.
pub fn ca_certs_dir(ca_dir: &Path) -> std::path::PathBuf {
    ca_dir.join("certs")
}

/// Manufactures a TPM state in `state_dir` as a vendor would: an EK and its
/// certificate (in NV at [`EK_CERT_NV_INDEX`]) issued by a local CA whose
/// files live in `ca_dir` (created on first use: `swtpm-localca-rootca-cert.pem`
/// is the root, `issuercert.pem` the issuing CA; both are copied to
/// [`ca_certs_dir`]). Uses `swtpm_setup` and `swtpm_localca` from swtpm-tools.
pub fn manufacture_with_ek_cert(state_dir: &Path, ca_dir: &Path) -> Result<(), TpmError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |e: std::io::Error| TpmError::Io(e.to_string());
    // The CA's signing keys live here: its owner only.
    std::fs::create_dir_all(ca_dir).map_err(io)?;
    std::fs::set_permissions(ca_dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    let conf_dir = ca_dir.join("conf");
    std::fs::create_dir_all(&conf_dir).map_err(io)?;
    let ca = ca_dir.display();
    let conf = conf_dir.display();
    for (name, text) in [
        (
            "localca.conf",
            format!(
                "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n"
            ),
        ),
        (
            "localca.options",
            "--platform-manufacturer Cocoon\n--platform-version 2.1\n--platform-model QEMU\n"
                .to_string(),
        ),
        (
            "swtpm_setup.conf",
            format!(
                "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {conf}/localca.conf\ncreate_certs_tool_options = {conf}/localca.options\nactive_pcr_banks = sha256\n"
            ),
        ),
    ] {
        replace_if_changed(&conf_dir.join(name), text.as_bytes()).map_err(io)?;
    }
    let out = Command::new("swtpm_setup")
        .args(["--tpm2", "--create-ek-cert", "--overwrite", "--tpmstate"])
        .arg(state_dir)
        .arg("--config")
        .arg(conf_dir.join("swtpm_setup.conf"))
        .output()
        .map_err(|e| {
            TpmError::Io(format!(
                "cannot run swtpm_setup ({e}): install swtpm-tools (scripts/test does)"
            ))
        })?;
    if !out.status.success() {
        return Err(TpmError::Io(format!(
            "swtpm_setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let certs = ca_certs_dir(ca_dir);
    std::fs::create_dir_all(&certs).map_err(io)?;
    for (from, to) in [
        ("swtpm-localca-rootca-cert.pem", "root.pem"),
        ("issuercert.pem", "issuer.pem"),
    ] {
        let pem = std::fs::read(ca_dir.join(from)).map_err(io)?;
        replace_if_changed(&certs.join(to), &pem).map_err(io)?;
    }
    Ok(())
}

/// Where a CA directory keeps vTPM states manufactured ahead of use.
const POOL: &str = "pool";
/// States kept ready per CA.
pub const POOL_SIZE: usize = 2;
/// A pool entry still being made after this long was abandoned.
const STALE: Duration = Duration::from_secs(600);

/// A manufactured vTPM state (EK and certificate from the CA in `ca_dir`,
/// as [`manufacture_with_ek_cert`] makes them) for a new VM at
/// `state_dir`, which must not exist or be empty. Manufacturing takes
/// most of a second (an RSA key and a certificate), so states are made
/// ahead: one is taken from the CA's pool (claimed with an atomic rename,
/// so two VMs never share one), or made now when the pool is empty; then the pool
/// is refilled to [`POOL_SIZE`] in the background (by `sh`, so a refill
/// started by a short-lived process still completes after it exits).
pub fn provision(state_dir: &Path, ca_dir: &Path) -> Result<(), TpmError> {
    let io = |e: std::io::Error| TpmError::Io(e.to_string());
    let pool = ca_dir.join(POOL);
    let taken = take_from_pool(&pool, state_dir).map_err(io)?;
    if !taken {
        std::fs::create_dir_all(state_dir).map_err(io)?;
        manufacture_with_ek_cert(state_dir, ca_dir)?;
    }
    refill(&pool, ca_dir);
    Ok(())
}

/// Names of pool entries claimed by a VM start and being moved out.
const TAKEN: &str = ".taken-";

/// Moves a ready state from the pool to `state_dir`; false when none is.
/// The state is first claimed by a rename inside the pool (atomic: two VM
/// starts never take the same one), then moved. Where the pool and
/// `state_dir` are on different file systems (the shim's CA on disk under
/// /var/lib, its VMs' states on the tmpfs /run), it is copied and the
/// claimed one removed.
fn take_from_pool(pool: &Path, state_dir: &Path) -> std::io::Result<bool> {
    let Ok(entries) = std::fs::read_dir(pool) else {
        return Ok(false);
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue; // being made, or taken
        }
        // The claim's time is in its name: a refill removes claims a
        // process that died left behind, never one being moved.
        let claimed = pool.join(format!(
            "{TAKEN}{}-{}-{:016x}",
            unix_now(),
            std::process::id(),
            rand_core::RngCore::next_u64(&mut rand_core::OsRng)
        ));
        match std::fs::rename(e.path(), &claimed) {
            Ok(()) => {}
            // Taken by another VM start: try the next one.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        }
        let moved = match std::fs::rename(&claimed, state_dir) {
            Err(err) if err.kind() == std::io::ErrorKind::CrossesDevices => {
                copy_state(&claimed, state_dir)
            }
            r => r,
        };
        // After a copy or a failed move: a claimed state is never used twice.
        if claimed.exists() {
            let _ = std::fs::remove_dir_all(&claimed);
        }
        return moved.map(|()| true);
    }
    Ok(false)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether `name` is a claim made more than [`STALE`] ago.
fn stale_claim(name: &str) -> bool {
    name.strip_prefix(TAKEN)
        .and_then(|r| r.split('-').next())
        .and_then(|t| t.parse::<u64>().ok())
        .is_some_and(|t| unix_now().saturating_sub(t) > STALE.as_secs())
}

/// Copies the files of a vTPM state directory (swtpm keeps plain files
/// only) into `to`, which is made when missing.
fn copy_state(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if !e.file_type()?.is_file() {
            return Err(std::io::Error::other(format!(
                "{} in a vTPM state is not a plain file",
                e.path().display()
            )));
        }
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

/// Starts making states until the pool (ready and being made) holds
/// [`POOL_SIZE`]; removes abandoned ones. Best effort: a VM start never
/// fails for it.
fn refill(pool: &Path, ca_dir: &Path) {
    if std::fs::create_dir_all(pool).is_err() {
        return;
    }
    let mut count = 0;
    for e in std::fs::read_dir(pool).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE);
        if (name.starts_with(".tmp-") && stale) || stale_claim(&name) {
            let _ = std::fs::remove_dir_all(e.path());
            continue;
        }
        if !name.starts_with(TAKEN) {
            count += 1;
        }
    }
    let config = ca_dir.join("conf").join("swtpm_setup.conf");
    for _ in count..POOL_SIZE {
        let id = format!(
            "{}-{:016x}",
            std::process::id(),
            rand_core::RngCore::next_u64(&mut rand_core::OsRng)
        );
        let tmp = pool.join(format!(".tmp-{id}"));
        if std::fs::create_dir(&tmp).is_err() {
            return;
        }
        // Made under a hidden name, renamed once complete: a state is never
        // taken half-made.
        let child = Command::new("sh")
            .arg("-c")
            .arg(
                "swtpm_setup --tpm2 --create-ek-cert --overwrite --tpmstate \"$1\" --config \"$2\" \
                 >/dev/null 2>&1 && mv -T \"$1\" \"$3\" || rm -rf \"$1\"",
            )
            .arg("sh")
            .arg(&tmp)
            .arg(&config)
            .arg(pool.join(&id))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            // Reaped by a thread while this process lives; if it exits
            // first, the refill goes on without it.
            Ok(mut c) => {
                std::thread::spawn(move || c.wait());
            }
            Err(_) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return;
            }
        }
    }
}

/// The names of the entries in a CA's pool.
fn pool_names(ca_dir: &Path) -> impl Iterator<Item = String> {
    std::fs::read_dir(ca_dir.join(POOL))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// The states being made for a CA's pool.
pub fn pool_making(ca_dir: &Path) -> usize {
    pool_names(ca_dir)
        .filter(|n| n.starts_with(".tmp-"))
        .count()
}

/// The states ready in a CA's pool.
pub fn pool_ready(ca_dir: &Path) -> usize {
    pool_names(ca_dir).filter(|n| !n.starts_with('.')).count()
}

/// Writes `bytes` to `path` unless it holds them already, as a whole file
/// (a temporary beside it, renamed): other VM starts and trustees may read
/// it at the same time.
fn replace_if_changed(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("a file path without a directory"))?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

impl Swtpm {
    /// Starts swtpm with its state in `state_dir` and waits until it answers.
    pub fn start(state_dir: &Path) -> Result<Self, TpmError> {
        let port = free_port_pair()?;
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", state_dir.display()))
            .arg("--server")
            .arg(format!("type=tcp,bindaddr=127.0.0.1,port={port}"))
            .arg("--ctrl")
            .arg(format!("type=tcp,bindaddr=127.0.0.1,port={}", port + 1))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                TpmError::Io(format!(
                    "cannot start swtpm ({e}): install it with `apt-get install swtpm` (scripts/test does)"
                ))
            })?;
        let mut me = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = me.child.try_wait() {
                return Err(TpmError::Io(format!("swtpm exited at start: {status}")));
            }
            if let Ok(mut tpm) = Tpm::open(&me.tcti())
                && tpm.startup().is_ok()
            {
                return Ok(me);
            }
            if Instant::now() > deadline {
                let _ = me.child.kill();
                return Err(TpmError::Io("swtpm did not answer within 20 s".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The TCTI to reach it.
    pub fn tcti(&self) -> Tcti {
        Tcti::Swtpm {
            host: "127.0.0.1".into(),
            port: self.port,
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claim is stale by the time in its name, and only a claim is.
    #[test]
    fn claims_are_stale_by_the_time_in_their_name() {
        let now = unix_now();
        assert!(!stale_claim(&format!("{TAKEN}{now}-12-00ff")));
        assert!(!stale_claim(&format!("{TAKEN}{}-12-00ff", now - 60)));
        assert!(stale_claim(&format!("{TAKEN}{}-12-00ff", now - 3600)));
        for other in [".tmp-1-2", "1234-00ff", ".taken-x-1-2", ".taken-"] {
            assert!(!stale_claim(other), "{other}");
        }
    }
}
