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
