//! End to end: Debian's containerd (1.6) started with a private root,
//! state and socket runs containers with the runtime
//! `io.containerd.cocoon.v2`: our shim boots a pod VM (real QEMU, software
//! emulation) and the image is pulled inside it from the test registry.

mod common;
mod pods;

use common::*;
use pods::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The shim binary, built beside `cocoon` by the workspace build.
fn shim_bin() -> PathBuf {
    let p = Path::new(BIN).with_file_name("containerd-shim-cocoon-v2");
    assert!(
        p.is_file(),
        "{} is missing: build the workspace (cargo build --workspace, as scripts/test does)",
        p.display()
    );
    p
}

/// A containerd of its own: config, root, state and sockets under one
/// directory; the shim found through PATH; stopped by PID on drop.
struct Containerd {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
    log: PathBuf,
}

impl Containerd {
    fn start(dir: &Path, shim_config: &Path) -> Self {
        need("containerd");
        need("ctr");
        let sock = dir.join("c.sock");
        let cfg = dir.join("containerd.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "debug"
"#,
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = sock.display(),
            ),
        )
        .unwrap();
        let log = dir.join("containerd.log");
        let shim_dir = shim_bin().parent().unwrap().to_path_buf();
        let path = format!(
            "{}:{}",
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&cfg)
            .env("PATH", path)
            .env("COCOON_SHIM_CONFIG", shim_config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start containerd");
        let mut c = Self {
            child,
            dir: dir.to_path_buf(),
            sock,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if c.ctr(&["version"]).status.success() {
                return c;
            }
            if let Ok(Some(st)) = c.child.try_wait() {
                panic!("containerd exited ({st}):\n{}", c.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer in 30 s:\n{}",
                c.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Snapshots containerd left mounted (a failed test) would keep the
        // temporary directory from going away.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let root = self.dir.display().to_string();
            for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
                if m.starts_with(&root) {
                    let c = std::ffi::CString::new(m).unwrap();
                    // SAFETY: a plain umount of a path we own.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
            }
        }
    }
}

/// What the shim left in its state directory, but the KVM probe's cache.
fn shim_state(state: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(state)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    !p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(".kvm-probe")
                })
                .collect()
        })
        .unwrap_or_default()
}

/// QEMU processes whose command line mentions `needle`.
fn qemu_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.starts_with("qemu-system") && cmd.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// The initdata `cocoon run` would make for `image` with the registry
/// allowed over plain HTTP, as Kata's annotation carries it.
fn cc_init_data(reg: &Registry, image: &str) -> String {
    use base64::Engine;
    use std::io::Write;
    let o = Command::new(BIN)
        .args([
            "run",
            "--print-init-data",
            "--insecure-registry",
            &reg.addr,
            image,
        ])
        .output()
        .unwrap();
    let text = ok(&o);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())
}

#[test]
fn ctr_runs_a_guest_pulled_image_through_the_cocoon_runtime() {
    need("qemu-system-x86_64");
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path());
    let image = push_busybox(&reg, "busybox:ctr");
    let port: u16 = reg.addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let state = tmp.path().join("shim-state");
    let shim_cfg = write(
        tmp.path(),
        "shim.toml",
        format!(
            "guest_image = \"{}\"\nmode = \"none\"\ndefault_memory_mib = 512\nstate_dir = \"{}\"\nhost_ports = [{port}]\n",
            guest_image().display(),
            state.display()
        )
        .as_bytes(),
    );
    let ctd = Containerd::start(tmp.path(), &shim_cfg);
    ok(&ctd.ctr(&["images", "pull", "--plain-http", &image]));
    let initdata = cc_init_data(&reg, &image);
    let run = |id: &str, extra: &[&str], cmd: &[&str]| {
        let mut args = vec![
            "run".to_string(),
            "--rm".into(),
            "--runtime".into(),
            "io.containerd.cocoon.v2".into(),
            "--annotation".into(),
            format!("io.kubernetes.cri.image-name={image}"),
            "--annotation".into(),
            format!("io.katacontainers.config.hypervisor.cc_init_data={initdata}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(image.clone());
        args.push(id.into());
        args.extend(cmd.iter().map(|s| s.to_string()));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        ctd.ctr(&a)
    };
    // The image's own command, then a command with both streams and an
    // exit code.
    let o = run("greet", &[], &[]);
    assert!(
        o.status.success(),
        "ctr run failed: {}\n{}\ncontainerd log:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        ctd.log_text()
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), GREETING);
    let o = run(
        "streams",
        &[],
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    );
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("err\n"),
        "{o:?}"
    );
    // Nothing is left: no VM, no task, no container, no VM state.
    assert!(
        qemu_with(&state.display().to_string()).is_empty(),
        "a QEMU is left"
    );
    let tasks = ok(&ctd.ctr(&["tasks", "ls", "-q"]));
    assert!(tasks.trim().is_empty(), "tasks left: {tasks}");
    let left = shim_state(&state);
    assert!(left.is_empty(), "shim state left: {left:?}");
    // A container without an image reference is refused with the reason.
    let o = ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.cocoon.v2",
        &image,
        "noref",
        "true",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("io.kubernetes.cri.image-name"), "{err}");
    assert!(
        qemu_with(&state.display().to_string()).is_empty(),
        "a QEMU is left after a refused container"
    );
}
