//! Helpers: start the real `cocoon trustee` binary on a free loopback port
//! and run `cocoon` commands against it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_cocoon");

pub struct TrusteeProc {
    child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl TrusteeProc {
    /// Starts a trustee serving plain HTTP with the sample TEE enabled.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with(data_dir, &["--insecure-http", "--allow-dev-tee"], extra)
    }

    pub fn start_with(data_dir: &Path, mode: &[&str], extra: &[&str]) -> Self {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        args.extend_from_slice(mode);
        args.extend_from_slice(extra);
        Self::try_start(data_dir, &args)
            .unwrap_or_else(|log| panic!("trustee did not start:\n{log}"))
    }

    /// Runs `cocoon trustee --data-dir DIR <args>`. Returns the running
    /// trustee once it prints its banner, or its log if it exits first.
    pub fn try_start(data_dir: &Path, args: &[&str]) -> Result<Self, String> {
        Self::try_start_env(data_dir, args, &[])
    }

    /// [`Self::try_start`] with extra environment.
    pub fn try_start_env(
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Self, String> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = data_dir.with_file_name(format!(
            "{}-trustee-{n}.log",
            data_dir.file_name().and_then(|f| f.to_str()).unwrap_or("t")
        ));
        let mut child = Command::new(BIN)
            .arg("trustee")
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("COCOON_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start cocoon trustee");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("read banner");
        let Some(url) = line.trim().strip_prefix("cocoon trustee listening on ") else {
            // No banner: the trustee exited (stdout closed) or misbehaves.
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("{line}{log}"));
        };
        let url = url.to_string();
        // Keep draining stdout so the trustee never writes to a closed pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        Ok(Self {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
            log,
        })
    }

    /// The trustee's self-signed TLS certificate, for `--kbs-cert`.
    pub fn cert_path(&self) -> String {
        let p = self.data_dir.join("tls/cert.pem");
        p.to_str().expect("UTF-8 data dir").to_string()
    }

    pub fn admin_key(&self) -> PathBuf {
        self.data_dir.join("admin-key.pem")
    }

    /// `cocoon admin --url U [--kbs-cert C] --admin-key K <args>` (the
    /// certificate for an HTTPS trustee).
    pub fn admin(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(["admin", "--url", &self.url]);
        if self.url.starts_with("https://") {
            cmd.args(["--kbs-cert", &self.cert_path()]);
        }
        cmd.arg("--admin-key")
            .arg(self.admin_key())
            .args(args)
            .output()
            .expect("run cocoon admin")
    }

    /// `cocoon explain` against this trustee: its recent denials.
    pub fn explain(&self) -> String {
        self.explain_recent(10)
    }

    /// `cocoon explain --limit N`: the newest `limit` denials.
    pub fn explain_recent(&self, limit: usize) -> String {
        let mut cmd = Command::new(BIN);
        cmd.args(["explain", "--url", &self.url, "--limit", &limit.to_string()]);
        if self.url.starts_with("https://") {
            cmd.args(["--kbs-cert", &self.cert_path()]);
        }
        let out = cmd
            .arg("--admin-key")
            .arg(self.admin_key())
            .output()
            .expect("run cocoon explain");
        ok(&out)
    }

    /// The newest `limit` denials once they satisfy `done` (denials are
    /// recorded off the request path), waiting at most 10 s; the last
    /// output either way.
    pub fn explain_until(&self, limit: usize, done: impl Fn(&str) -> bool) -> String {
        let mut out = self.explain_recent(limit);
        for _ in 0..100 {
            if done(&out) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            out = self.explain_recent(limit);
        }
        out
    }

    /// `cocoon <cmd> --url U <args>`.
    pub fn guest(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .args([cmd, "--url", &self.url])
            .args(args)
            .output()
            .expect("run cocoon")
    }

    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TrusteeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn ok(o: &Output) -> String {
    cocoon_fixtures::stdout_ok(o, "command")
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write file");
    p
}

/// Runs `cocoon <args>` with extra environment.
pub fn cocoon(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run cocoon")
}

/// Runs `cocoon <args>`, expecting failure; returns stderr.
pub fn fails(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "command unexpectedly succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A `cocoon` background service (guest services), killed on drop.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `cocoon <args>` with stderr to `log`, and waits until
    /// `ready` holds (a socket file exists, a port answers).
    pub fn start(args: &[&str], log: PathBuf, ready: impl Fn() -> bool) -> Self {
        let child = Command::new(BIN)
            .args(args)
            .env("COCOON_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start cocoon service");
        let mut d = Self { child, log };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !ready() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!(
                    "cocoon {args:?} exited ({status}):\n{}",
                    std::fs::read_to_string(&d.log).unwrap_or_default()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "cocoon {args:?} not ready in 30 s:\n{}",
                std::fs::read_to_string(&d.log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        d
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails when any file directly in `dir` holds `secret`.
pub fn assert_no_file_holds(dir: &Path, secret: &[u8]) {
    for entry in std::fs::read_dir(dir).expect("read directory") {
        let p = entry.expect("directory entry").path();
        if p.is_file() {
            let bytes = std::fs::read(&p).expect("read file");
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "plaintext secret found in {}",
                p.display()
            );
        }
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Fails with a message naming the tool when it is missing.
pub fn need(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: run scripts/test, which installs it (apt-get)"
    );
}

/// Debian's `docker-registry` (the CNCF distribution registry) on a free
/// loopback port, storing under `dir`; killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Storage root (tests tamper with blobs here).
    pub storage: PathBuf,
}

impl Registry {
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, "")
    }

    /// With extra top-level configuration (an `auth:` section).
    pub fn start_with(dir: &Path, extra_yaml: &str) -> Self {
        need("docker-registry");
        let port = free_port();
        let storage = dir.join("registry-data");
        let cfg = dir.join("registry.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{extra_yaml}",
                storage.display()
            ),
        )
        .expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).expect("log"))
            .spawn()
            .expect("start docker-registry");
        let mut r = Self {
            child,
            addr: format!("127.0.0.1:{port}"),
            storage,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(&r.addr) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok()
                    && (&buf[9..12] == b"200" || &buf[9..12] == b"401")
                {
                    return r;
                }
            }
            if let Ok(Some(st)) = r.child.try_wait() {
                panic!(
                    "docker-registry exited ({st}): {}",
                    std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "docker-registry did not answer in 20 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Deletes the layer blobs of `repo:tag` from the storage (the
    /// manifest and config stay), so that a pull going past the manifest
    /// fails; returns the manifest's digest.
    pub fn drop_layers(&self, repo: &str, tag: &str) -> String {
        let link = self
            .storage
            .join("docker/registry/v2/repositories")
            .join(repo)
            .join("_manifests/tags")
            .join(tag)
            .join("current/link");
        let top = std::fs::read_to_string(link).unwrap().trim().to_string();
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.blob_file(&top)).unwrap()).unwrap();
        for l in manifest["layers"].as_array().unwrap() {
            std::fs::remove_file(self.blob_file(l["digest"].as_str().unwrap())).unwrap();
        }
        top
    }

    /// The file holding a blob in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(unused_imports)]
pub use cocoon_fixtures::Dir as FixtureDir;
