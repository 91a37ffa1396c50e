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
    let io = |e: std::io::Error| TpmError::Io(e.to_string());
    std::fs::create_dir_all(ca_dir).map_err(io)?;
    let conf_dir = ca_dir.join("conf");
    std::fs::create_dir_all(&conf_dir).map_err(io)?;
    let ca = ca_dir.display();
    std::fs::write(
        conf_dir.join("localca.conf"),
        format!(
            "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n"
        ),
    )
    .map_err(io)?;
    std::fs::write(
        conf_dir.join("localca.options"),
        "--platform-manufacturer Cocoon\n--platform-version 2.1\n--platform-model QEMU\n",
    )
    .map_err(io)?;
    let conf = conf_dir.display();
    std::fs::write(
        conf_dir.join("swtpm_setup.conf"),
        format!(
            "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {conf}/localca.conf\ncreate_certs_tool_options = {conf}/localca.options\nactive_pcr_banks = sha256\n"
        ),
    )
    .map_err(io)?;
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
        if std::fs::read(certs.join(to)).ok().as_deref() != Some(&pem[..]) {
            // Whole files only: trustees may read them while VMs start.
            let tmp = certs.join(format!(".{to}.{}", std::process::id()));
            std::fs::write(&tmp, pem).map_err(io)?;
            std::fs::rename(&tmp, certs.join(to)).map_err(io)?;
        }
    }
    Ok(())
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
