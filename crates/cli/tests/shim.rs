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
    /// Our child, or (`None`) a containerd the script `dir/ctd.sh` starts
    /// and stops by the PID it records, as a node's service manager would.
    child: Option<Child>,
    dir: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    cmd: Vec<(String, String)>,
    cfg: PathBuf,
    /// The CNI bridge it made (CRI), removed on drop.
    bridge: Option<String>,
}

/// CRI settings of a test containerd.
struct CriSetup<'a> {
    /// The sandbox (pause) image.
    pause: &'a str,
    /// A plain-HTTP registry on loopback.
    registry: &'a str,
    /// The shim configuration of the `cocoon` handler.
    shim_config: &'a Path,
    /// The CNI bridge's name and subnet.
    bridge: &'a str,
    subnet: &'a str,
    /// Our proxy snapshotter's socket, as CRI's snapshotter.
    snapshotter: Option<&'a Path>,
}

impl Containerd {
    fn start(dir: &Path, shim_config: &Path) -> Self {
        Self::start_with(dir, shim_config, None)
    }

    fn start_with(dir: &Path, shim_config: &Path, cri: Option<CriSetup>) -> Self {
        need("containerd");
        need("ctr");
        let sock = dir.join("c.sock");
        let cfg = dir.join("containerd.toml");
        let cri_section = match &cri {
            None => "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n".to_string(),
            Some(c) => {
                let cni = dir.join("cni");
                std::fs::create_dir_all(&cni).unwrap();
                std::fs::write(
                    cni.join("10-cocoon-test.conflist"),
                    format!(
                        r#"{{"cniVersion":"1.0.0","name":"cocoon-test","plugins":[{{"type":"bridge","bridge":"{}","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"{}"}}]],"dataDir":"{}"}}}},{{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}"#,
                        c.bridge,
                        c.subnet,
                        dir.join("cni-ipam").display()
                    ),
                )
                .unwrap();
                let snap = match c.snapshotter {
                    Some(sock) => format!(
                        "[proxy_plugins.cocoon]\n  type = \"snapshot\"\n  address = \"{}\"\n",
                        sock.display()
                    ),
                    None => String::new(),
                };
                let cri_snap = if c.snapshotter.is_some() {
                    "    snapshotter = \"cocoon\"\n    disable_snapshot_annotations = false\n"
                } else {
                    ""
                };
                format!(
                    r#"{snap}[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  stream_server_address = "127.0.0.1"
  # Lowering a process's OOM score needs a privilege this machine's
  # containers lack: keep sandboxes at containerd's own score.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{reg}"]
    endpoint = ["http://{reg}"]
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
{cri_snap}    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cocoon]
      runtime_type = "io.containerd.cocoon.v2"
      pod_annotations = ["io.katacontainers.*"]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cocoon.options]
        ConfigPath = "{shim}"
"#,
                    pause = c.pause,
                    cni = cni.display(),
                    reg = c.registry,
                    shim = c.shim_config.display(),
                )
            }
        };
        std::fs::write(
            &cfg,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
{cri_section}
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
        let env = vec![
            ("PATH".to_string(), path),
            (
                "COCOON_SHIM_CONFIG".to_string(),
                shim_config.display().to_string(),
            ),
        ];
        let child = Self::spawn(&cfg, &env, &log);
        let mut c = Self {
            child: Some(child),
            dir: dir.to_path_buf(),
            sock,
            log,
            cmd: env,
            cfg,
            bridge: cri.as_ref().map(|c| c.bridge.to_string()),
        };
        c.wait_ready();
        c
    }

    fn spawn(cfg: &Path, env: &[(String, String)], log: &Path) -> Child {
        Command::new("containerd")
            .arg("--config")
            .arg(cfg)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap(),
            )
            .spawn()
            .expect("start containerd")
    }

    /// A containerd with the configuration `config` (its root, state and
    /// sockets under `dir`), run by a script that starts it with `$!` into
    /// a PID file and stops it by that PID: `sh dir/ctd.sh restart` is
    /// what a node installer may call.
    fn start_scripted(dir: &Path, config: &str, bridge: &str) -> Self {
        need("containerd");
        need("ctr");
        let cfg = write(dir, "containerd.toml", config.as_bytes());
        write(
            dir,
            "ctd.sh",
            br#"#!/bin/sh
# Starts, stops and restarts the test's containerd by the PID it recorded.
dir=$(cd "$(dirname "$0")" && pwd)
pidfile=$dir/containerd.pid
stop() {
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -TERM "$pid" 2>/dev/null; then
    i=0
    while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$pidfile"
}
start() {
  # A node's PATH directory (as /usr/local/bin), the installer's link to the shim goes there.
  PATH=$dir/usr-local-bin:$PATH containerd --config "$dir/containerd.toml" >>"$dir/containerd.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
}
case "$1" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  *) echo "usage: $0 start|stop|restart" >&2; exit 2 ;;
esac
"#,
        );
        let mut c = Self {
            child: None,
            dir: dir.to_path_buf(),
            sock: dir.join("c.sock"),
            log: dir.join("containerd.log"),
            cmd: vec![],
            cfg,
            bridge: Some(bridge.to_string()),
        };
        c.script("start");
        c.wait_ready();
        c
    }

    fn script(&self, verb: &str) {
        let st = Command::new("sh")
            .arg(self.dir.join("ctd.sh"))
            .arg(verb)
            .status()
            .unwrap();
        assert!(st.success(), "ctd.sh {verb} failed");
    }

    /// The running containerd's PID.
    fn pid(&self) -> u32 {
        match &self.child {
            Some(c) => c.id(),
            None => std::fs::read_to_string(self.dir.join("containerd.pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0),
        }
    }

    /// Stops containerd (SIGTERM, as systemd does) and starts it again.
    fn restart(&mut self) {
        self.stop();
        self.child = Some(Self::spawn(&self.cfg, &self.cmd, &self.log));
        self.wait_ready();
    }

    fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            self.script("stop");
            return;
        };
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn wait_ready(&mut self) {
        let c = self;
        let deadline = Instant::now() + Duration::from_secs(30);
        // With CRI, ready is when CRI answers too: containerd serves its
        // own API before the CRI plugin has initialized.
        let answers = |c: &Containerd| {
            c.ctr(&["version"]).status.success()
                && (c.bridge.is_none()
                    || Command::new(BIN)
                        .args(["pod", "ls", "--runtime-endpoint"])
                        .arg(format!("unix://{}", c.sock.display()))
                        .output()
                        .is_ok_and(|o| o.status.success()))
        };
        loop {
            if answers(c) {
                return;
            }
            let exited = match c.child.as_mut() {
                Some(ch) => ch.try_wait().ok().flatten().map(|st| st.to_string()),
                // SAFETY: probing a PID for existence (signal 0).
                None => (unsafe { libc::kill(c.pid() as i32, 0) } != 0).then(|| "gone".to_string()),
            };
            if let Some(st) = exited {
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

    /// `ctr` on a terminal of `rows` x `cols` (util-linux `script` makes
    /// the pty), as a user at a console runs it.
    fn ctr_on_terminal(&self, rows: u16, cols: u16, args: &[&str]) -> Output {
        let quote = |a: &str| format!("'{}'", a.replace('\'', "'\\''"));
        let mut line = format!(
            "stty rows {rows} cols {cols}; exec ctr --address {}",
            quote(&self.sock.display().to_string())
        );
        for a in args {
            line.push(' ');
            line.push_str(&quote(a));
        }
        on_terminal(&line)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Pods a failed test left: removed through CRI, so their network
        // namespaces and VMs go as kubelet would make them go.
        if self.bridge.is_some() {
            let ls = Command::new(BIN)
                .args(["pod", "ls", "--runtime-endpoint"])
                .arg(format!("unix://{}", self.sock.display()))
                .output();
            if let Ok(o) = ls {
                for id in String::from_utf8_lossy(&o.stdout).lines().skip(1) {
                    if let Some(id) = id.split_whitespace().next() {
                        let _ = Command::new(BIN)
                            .args(["pod", "rm", "--runtime-endpoint"])
                            .arg(format!("unix://{}", self.sock.display()))
                            .arg(id)
                            .output();
                    }
                }
            }
        }
        self.stop();
        // Shims (and their VMs) outlive containerd by design: end ours,
        // and the sockets they would have removed.
        for (pid, socket) in shims_of(&self.sock) {
            // SAFETY: killing a shim this test's containerd started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            if let Some(p) = socket {
                let _ = std::fs::remove_file(p);
            }
        }
        if let Some(b) = &self.bridge {
            let _ = Command::new("ip").args(["link", "del", b]).output();
        }
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

/// Processes whose argv[0] and NUL-separated command line match.
fn processes_matching(matches: impl Fn(&str, &str) -> bool) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if matches(cmd.split('\0').next().unwrap_or_default(), &cmd) {
            pids.push(pid);
        }
    }
    pids
}

/// QEMU processes whose command line mentions `needle`.
fn qemu_with(needle: &str) -> Vec<u32> {
    processes_matching(|argv0, cmd| {
        argv0
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .starts_with("qemu-system")
            && cmd.contains(needle)
    })
}

/// The initdata `cocoon run` would make for `image` with the registry
/// allowed over plain HTTP, as Kata's annotation carries it.
fn cc_init_data(reg: &Registry, image: &str) -> String {
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
    gz_b64(&ok(&o))
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
    let ctr_args = |id: &str, extra: &[&str], cmd: &[&str]| {
        let mut args = vec![
            "run".to_string(),
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
        args
    };
    let run = |id: &str, extra: &[&str], cmd: &[&str]| {
        let mut extra = extra.to_vec();
        extra.push("--rm");
        let args = ctr_args(id, &extra, cmd);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        ctd.ctr(&a)
    };
    // containerd's event stream, to check the order of the task events.
    let events_file = tmp.path().join("events.txt");
    let mut events = Command::new("ctr")
        .arg("--address")
        .arg(&ctd.sock)
        .arg("events")
        .stdout(std::fs::File::create(&events_file).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("ctr events");
    std::thread::sleep(Duration::from_millis(300));
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
    // A memory limit holds in the guest: the container's cgroup kills the
    // process (137), and containerd hears of the OOM kill.
    let o = run(
        "hog",
        &["--memory-limit", "33554432"],
        &["sh", "-c", "x=a; while :; do x=$x$x; done"],
    );
    assert_eq!(o.status.code(), Some(137), "{o:?}");
    // A terminal: the process's streams are a pty in the guest, sized
    // from ctr's terminal through ResizePty (which ctr sends just after
    // the start: the command waits for it). Busybox's `stty size` fails
    // and prints nothing while the size is unset (0 rows).
    let wait_size = "i=0; while s=$(stty size 2>/dev/null); [ -z \"$s\" ] || [ \"$s\" = '0 0' ]; do \
         [ $i -lt 100 ] || break; sleep 0.1; i=$((i+1)); done";
    let tty_cmd = format!("{wait_size}; stty size; tty; [ -t 0 ] && echo stdin-is-a-tty; exit 4");
    let args = ctr_args("tty", &["--rm", "-t"], &["sh", "-c", &tty_cmd]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = ctd.ctr_on_terminal(33, 101, &a);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(4), "{o:?}\n{}", ctd.log_text());
    assert!(out.contains("33 101\r"), "{out:?}");
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(out.contains("stdin-is-a-tty"), "{out:?}");
    // A terminal for a process exec'd into a running container.
    let args = ctr_args("long", &["-d"], &["sleep", "600"]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&ctd.ctr(&a));
    let exec_cmd = format!("{wait_size}; stty size; tty; echo exec-done");
    let o = ctd.ctr_on_terminal(
        20,
        70,
        &[
            "tasks",
            "exec",
            "-t",
            "--exec-id",
            "sh1",
            "long",
            "sh",
            "-c",
            &exec_cmd,
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{o:?}\n{}", ctd.log_text());
    assert!(out.contains("20 70\r"), "{out:?}");
    assert!(
        out.contains("/dev/pts/") && out.contains("exec-done"),
        "{out:?}"
    );
    // An exec without -t still gets pipes.
    let o = ctd.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "plain",
        "long",
        "sh",
        "-c",
        "[ -t 0 ] || echo no-tty; read p </proc/self/personality; echo persona=$p",
    ]);
    // ... and, exec'd by a runtime helper, a layout at random (no
    // ADDR_NO_RANDOMIZE) like the container's init.
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "no-tty\npersona=00000000\n",
        "{o:?}"
    );
    ok(&ctd.ctr(&["tasks", "kill", "-s", "SIGKILL", "long"]));
    let t = Instant::now();
    while !ok(&ctd.ctr(&["tasks", "ls"])).contains("STOPPED")
        && t.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    ok(&ctd.ctr(&["tasks", "delete", "long"]));
    ok(&ctd.ctr(&["containers", "delete", "long"]));
    std::thread::sleep(Duration::from_millis(300));
    let _ = events.kill();
    let _ = events.wait();
    // Per task: create, start, exit, delete, in that order.
    let log = std::fs::read_to_string(&events_file).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("/tasks/oom") && l.contains("\"hog\"")),
        "no OOM event for hog:\n{log}"
    );
    for id in ["greet", "streams"] {
        let order: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("\"{id}\"")) && l.contains("/tasks/"))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")))
            .collect();
        assert_eq!(
            order,
            [
                "/tasks/create",
                "/tasks/start",
                "/tasks/exit",
                "/tasks/delete"
            ],
            "events of {id}:\n{log}"
        );
    }
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

/// Processes of our shim serving the containerd at `sock`.
/// Our shims serving the containerd at `sock`, with their own sockets.
fn shims_of(sock: &Path) -> Vec<(u32, Option<PathBuf>)> {
    let needle = sock.display().to_string();
    processes_matching(|_, cmd| {
        cmd.contains("containerd-shim-cocoon-v2")
            && cmd.contains(&needle)
            && !cmd.contains("\0__guard\0")
    })
    .into_iter()
    .map(|pid| {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).into_owned();
        let args: Vec<&str> = cmd.split('\0').collect();
        let socket = args
            .iter()
            .position(|a| *a == "-socket")
            .and_then(|i| args.get(i + 1))
            .and_then(|a| a.strip_prefix("unix://"))
            .map(PathBuf::from);
        (pid, socket)
    })
    .collect()
}

/// The guards of the shims of the containerd at `sock` (each shim's
/// child that cleans up if the shim is killed).
fn guards_of(sock: &Path) -> Vec<u32> {
    let needle = sock.display().to_string();
    processes_matching(|_, cmd| cmd.contains("\0__guard\0") && cmd.contains(&needle))
}

/// Waits (10 s at most) for the shims of the containerd at `sock` and
/// their guards to be gone: a shim leaves after answering containerd's
/// Shutdown, once its last events are delivered.
fn assert_shims_gone(sock: &Path, after: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (shims, guards) = (shims_of(sock), guards_of(sock));
        if shims.is_empty() && guards.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left after {after}: shims {shims:?}, guards {guards:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The response to `GET path` from `addr`, retried until `within`.
fn http_get(addr: &str, path: &str, within: Duration) -> String {
    use std::io::{Read, Write};
    let deadline = Instant::now() + within;
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(
                &addr.parse().unwrap(),
                Duration::from_secs(3),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        match attempt {
            Ok(r) if r.starts_with("HTTP/1.") => return r,
            other => assert!(
                Instant::now() < deadline,
                "GET http://{addr}{path}: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `cocoon pod ...` against the test containerd's CRI socket.
fn pod_cmd(ctd: &Containerd, logs: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("pod").args(&args[..1]);
    cmd.arg("--runtime-endpoint")
        .arg(format!("unix://{}", ctd.sock.display()));
    if args[0] == "run" {
        cmd.arg("--log-root").arg(logs);
    }
    cmd.args(&args[1..]).stdin(Stdio::null()).output().unwrap()
}

/// `cocoon-snapshotter` for a test containerd (its content store under
/// `dir/root`), killed on drop.
struct Snapshotter {
    child: Child,
    sock: PathBuf,
    root: PathBuf,
}

impl Snapshotter {
    fn start(dir: &Path) -> Self {
        let bin = Path::new(BIN).with_file_name("cocoon-snapshotter");
        assert!(
            bin.is_file(),
            "{} is missing: build the workspace (scripts/test does)",
            bin.display()
        );
        let sock = dir.join("snap.sock");
        let root = dir.join("snap-root");
        let child = Command::new(bin)
            .arg("--root")
            .arg(&root)
            .arg("--address")
            .arg(&sock)
            .arg("--content-root")
            .arg(dir.join("root/io.containerd.content.v1.content"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("snapshotter.log")).unwrap())
            .spawn()
            .expect("start cocoon-snapshotter");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "cocoon-snapshotter did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, sock, root }
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test containerd with CRI, a registry holding busybox and a pause
/// image, and the `cocoon` handler configured in `none` mode.
struct CriEnv {
    /// The `cocoon` handler's configuration (read anew for each pod).
    shim_cfg: PathBuf,
    state_dir: PathBuf,
    // Dropped in this order: containerd before the snapshotter, the
    // registry and the dir.
    ctd: Containerd,
    _snap: Option<Snapshotter>,
    reg: Registry,
    image: String,
    state: PathBuf,
    logs: PathBuf,
    initdata: String,
    tmp: tempfile::TempDir,
}

impl CriEnv {
    fn start(bridge: &str, subnet: &str) -> Self {
        Self::start_with(bridge, subnet, false)
    }

    fn start_with(bridge: &str, subnet: &str, snapshotter: bool) -> Self {
        need("qemu-system-x86_64");
        need("runc");
        assert!(
            Path::new("/usr/lib/cni/bridge").is_file(),
            "the CNI bridge plugin is missing: run scripts/test, which installs containernetworking-plugins"
        );
        let tmp = tempfile::tempdir().unwrap();
        let reg = Registry::start(tmp.path());
        let image = push_busybox(&reg, "busybox:cri");
        let pause = push_busybox_cmd(&reg, "pause:1", &["/bin/sleep", "2147483647"]);
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
        let snap = snapshotter.then(|| Snapshotter::start(tmp.path()));
        let ctd = Containerd::start_with(
            tmp.path(),
            &shim_cfg,
            Some(CriSetup {
                pause: &pause,
                registry: &reg.addr,
                shim_config: &shim_cfg,
                bridge,
                subnet,
                snapshotter: snap.as_ref().map(|s| s.sock.as_path()),
            }),
        );
        let logs = tmp.path().join("pod-logs");
        let initdata = cc_init_data(&reg, &image);
        Self {
            shim_cfg,
            state_dir: state.clone(),
            ctd,
            _snap: snap,
            reg,
            image,
            state,
            logs,
            initdata,
            tmp,
        }
    }

    /// A Pod manifest with the registry's initdata annotation.
    fn manifest(
        &self,
        name: &str,
        handler: Option<&str>,
        extra_annotation: &str,
        containers: &str,
    ) -> PathBuf {
        let rc = handler
            .map(|h| format!("  runtimeClassName: {h}\n"))
            .unwrap_or_default();
        write(
            self.tmp.path(),
            &format!("{name}.yaml"),
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations:\n    io.katacontainers.config.hypervisor.cc_init_data: \"{}\"\n{extra_annotation}spec:\n{rc}  containers:\n{containers}",
                self.initdata
            )
            .as_bytes(),
        )
    }

    fn pod(&self, args: &[&str]) -> Output {
        pod_cmd(&self.ctd, &self.logs, args)
    }

    fn vms(&self) -> Vec<u32> {
        qemu_with(&self.state.display().to_string())
    }

    /// Asserts no VM, vTPM, shim, mount or shim state is left.
    fn assert_clean(&self, after: &str) {
        assert!(self.vms().is_empty(), "a QEMU is left after {after}");
        let state = self.state.display().to_string();
        let swtpms =
            processes_matching(|argv0, cmd| argv0.ends_with("swtpm") && cmd.contains(&state));
        assert!(
            swtpms.is_empty(),
            "a swtpm is left after {after}: {swtpms:?}"
        );
        let root = self.tmp.path().display().to_string();
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&root))
            .map(String::from)
            .collect();
        assert!(mounts.is_empty(), "mounts left after {after}: {mounts:?}");
        assert_shims_gone(&self.ctd.sock, after);
        let left = shim_state(&self.state);
        let log = self.ctd.log_text();
        let shim_lines: Vec<&str> = log.lines().filter(|l| l.contains("shim")).collect();
        assert!(
            left.is_empty(),
            "shim state left after {after}: {left:?}\ncontainerd's shim log:\n{}",
            shim_lines[shim_lines.len().saturating_sub(30)..].join("\n")
        );
    }
}

#[test]
fn cri_runs_pods_with_the_cocoon_handler_beside_runc() {
    let env = CriEnv::start("cocoontest0", "10.88.77.0/24");
    let (ctd, image, logs, state) = (
        &env.ctd,
        env.image.clone(),
        env.logs.clone(),
        env.state.clone(),
    );
    let manifest = |name: &str, handler: Option<&str>, extra: &str, containers: &str| {
        env.manifest(name, handler, extra, containers)
    };
    let sock = ctd.sock.clone();
    let vms = || qemu_with(&state.display().to_string());

    // A confidential pod through CRI, as kubelet drives it: the image's
    // own command prints through the CRI log file; --rm leaves nothing.
    let m = manifest(
        "greeter",
        Some("cocoon"),
        "",
        &format!("  - name: greet\n    image: {image}\n"),
    );
    // `pod run --rm` of manifest `m`, which must succeed: its output.
    let run_rm = |m: &Path| {
        let o = pod_cmd(ctd, &logs, &["run", "--rm", m.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "pod run: {}\n{}\ncontainerd log:\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            ctd.log_text()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(run_rm(&m), GREETING);
    assert!(vms().is_empty(), "a QEMU is left after --rm");
    assert_shims_gone(&sock, "--rm");
    assert!(
        shim_state(&state).is_empty(),
        "shim state left: {:?}",
        shim_state(&state)
    );

    // The pod's sysctls (kubelet passes them with the sandbox): a network
    // one holds in the VM, which is the pod's network namespace.
    let m = manifest(
        "tuned",
        Some("cocoon"),
        "",
        &format!(
            "  - name: show\n    image: {image}\n    command: [\"cat\", \"/proc/sys/net/ipv4/ip_unprivileged_port_start\"]\n  securityContext:\n    sysctls: [{{name: net.ipv4.ip_unprivileged_port_start, value: \"80\"}}]\n"
        ),
    );
    assert_eq!(run_rm(&m), "80\n");
    // One that would open the guest's loopback services to the host: refused.
    let m = manifest(
        "opened",
        Some("cocoon"),
        "",
        &format!(
            "  - name: show\n    image: {image}\n  securityContext:\n    sysctls: [{{name: net.ipv4.conf.all.route_localnet, value: \"1\"}}]\n"
        ),
    );
    let err = fails(&pod_cmd(ctd, &logs, &["run", "--rm", m.to_str().unwrap()]));
    assert!(
        err.contains(
            "sysctl \"net.ipv4.conf.all.route_localnet\" would change the pod VM's network"
        ),
        "{err}"
    );
    assert!(vms().is_empty(), "a QEMU is left after a refused pod");

    // A container's memory limit holds inside the VM: the cgroup there
    // kills it, and containerd records why.
    let m = manifest(
        "hog",
        Some("cocoon"),
        "",
        &format!(
            "  - name: hog\n    image: {image}\n    command: [\"sh\", \"-c\", \"x=a; while :; do x=$x$x; done\"]\n    resources:\n      limits: {{memory: 32Mi}}\n"
        ),
    );
    let o = pod_cmd(ctd, &logs, &["run", "--rm", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(137), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("container hog exited with 137 (OOMKilled)"),
        "{err}"
    );
    assert!(vms().is_empty(), "a QEMU is left after --rm");

    // Containers of one pod share one VM; exec, logs and ls work on it;
    // a container with `tty: true` writes through a terminal. The pod
    // shares its process namespace.
    let m = manifest(
        "pair",
        Some("cocoon"),
        "",
        &format!(
            "  - name: sleeper\n    image: {image}\n    command: [\"sleep\", \"600\"]\n  - name: talker\n    image: {image}\n    command: [\"sh\", \"-c\", \"echo two; echo err >&2; sleep 600\"]\n  - name: term\n    image: {image}\n    tty: true\n    command: [\"sh\", \"-c\", \"tty; [ -t 1 ] && echo on-a-tty; sleep 600\"]\n  - name: brief\n    image: {image}\n    command: [\"sh\", \"-c\", \"sleep 300 & until [ -e /dev/shm/end ]; do sleep 0.2; done\"]\n  shareProcessNamespace: true\n"
        ),
    );
    let o = pod_cmd(ctd, &logs, &["run", "-d", m.to_str().unwrap()]);
    let pod_id = ok(&o).trim().to_string();
    assert_eq!(
        vms().len(),
        1,
        "the containers of one pod must share one VM"
    );
    let o = pod_cmd(
        ctd,
        &logs,
        &[
            "exec",
            "pair",
            "sleeper",
            "--",
            "sh",
            "-c",
            "cat /etc/greeting; echo e >&2; exit 4",
        ],
    );
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), GREETING);
    assert_eq!(String::from_utf8_lossy(&o.stderr), "e\n");
    // The pod's IPC namespace and /dev/shm are one, as in Kubernetes:
    // what one container puts there, another reads.
    let in_pod = |c: &str, cmd: &str| {
        ok(&pod_cmd(
            ctd,
            &logs,
            &["exec", "pair", c, "--", "sh", "-c", cmd],
        ))
    };
    let ipc = in_pod(
        "sleeper",
        "readlink /proc/self/ns/ipc; echo shared > /dev/shm/note",
    );
    let seen = in_pod("talker", "readlink /proc/self/ns/ipc; cat /dev/shm/note");
    let (ns, note) = seen.split_once('\n').unwrap_or_default();
    assert!(
        ipc.starts_with("ipc:[") && ipc.trim() == ns,
        "{ipc:?} {seen:?}"
    );
    assert_eq!(note, "shared\n");
    // shareProcessNamespace: one PID namespace for the pod, whose PID 1
    // is the pause process; each container sees the others' processes.
    let procs = in_pod(
        "talker",
        "tr '\\0' ' ' </proc/1/cmdline; echo; for p in /proc/[0-9]*; do tr '\\0' ' ' <$p/cmdline; echo; done 2>/dev/null; true",
    );
    assert!(procs.starts_with("/pause \n"), "{procs}");
    // Each container's shell ends in `sleep 600`: three, one of them the
    // talker's own; and brief's background sleep.
    assert_eq!(
        procs.lines().filter(|l| *l == "sleep 600 ").count(),
        3,
        "{procs}"
    );
    assert!(procs.contains("\nsleep 300 \n"), "{procs}");
    // The pause process reaps what the pod orphans: no zombie is left.
    let zombies = in_pod(
        "talker",
        "(sleep 0.3 &); sleep 2; grep -l 'State:.*Z' /proc/[0-9]*/status; echo done",
    );
    assert_eq!(zombies, "done\n");
    // When brief's first process ends, so does the rest of it (its
    // background sleep), as in a namespace of its own: containerd kills
    // what is left when it handles the exit, and the agent kills the
    // container's cgroup as soon as it reaps it.
    in_pod("talker", "touch /dev/shm/end");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = in_pod(
            "talker",
            "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '",
        );
        if !left.contains("sleep 300") && !left.contains("/dev/shm/end") {
            break;
        }
        assert!(Instant::now() < deadline, "brief lives on: {left}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = pod_cmd(ctd, &logs, &["logs", &pod_id, "talker"]);
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        if out == "two\n" && err == "err\n" {
            break;
        }
        assert!(Instant::now() < deadline, "talker's log: {out:?} {err:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = pod_cmd(ctd, &logs, &["logs", &pod_id, "term"]);
        let out = String::from_utf8_lossy(&o.stdout);
        if out.contains("on-a-tty") {
            assert!(out.contains("/dev/pts/"), "term's log: {out:?}");
            break;
        }
        assert!(Instant::now() < deadline, "term's log: {out:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let ls = ok(&pod_cmd(ctd, &logs, &["ls"]));
    let line = ls
        .lines()
        .find(|l| l.contains("pair"))
        .unwrap_or_else(|| panic!("{ls}"));
    assert!(line.contains("Ready") && line.contains("cocoon"), "{ls}");
    assert!(line.starts_with(&pod_id[..13]), "{ls}");
    ok(&pod_cmd(ctd, &logs, &["rm", "pair"]));
    assert!(vms().is_empty(), "a QEMU is left after rm");
    assert_shims_gone(&sock, "rm");
    assert!(
        shim_state(&state).is_empty(),
        "shim state left: {:?}",
        shim_state(&state)
    );

    // The pod's network (CNI's namespace) is the VM's: a server in the
    // container answers on the pod IP from the host.
    let m = manifest(
        "web",
        Some("cocoon"),
        "",
        &format!(
            "  - name: httpd\n    image: {image}\n    command: [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/etc\"]\n    ports:\n    - containerPort: 8080\n"
        ),
    );
    let web = ok(&pod_cmd(ctd, &logs, &["run", "-d", m.to_str().unwrap()]))
        .trim()
        .to_string();
    let ls = ok(&pod_cmd(ctd, &logs, &["ls"]));
    let ip = ls
        .lines()
        .find(|l| l.starts_with(&web[..13]))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("{ls}"))
        .to_string();
    assert!(ip.starts_with("10.88.77."), "pod IP {ip}: {ls}");
    let body = http_get(&format!("{ip}:8080"), "/greeting", Duration::from_secs(30));
    assert!(body.ends_with(GREETING), "{body}");
    // Without shareProcessNamespace the container's process namespace is
    // its own: its command is PID 1 there, and the pause is not to be seen.
    let own = ok(&pod_cmd(
        ctd,
        &logs,
        &[
            "exec",
            "web",
            "httpd",
            "--",
            "sh",
            "-c",
            "tr '\\0' ' ' </proc/1/cmdline; echo; cat /proc/[0-9]*/cmdline | tr '\\0' ' '",
        ],
    ));
    assert!(own.starts_with("httpd -f -p 8080 -h /etc \n"), "{own}");
    assert!(!own.contains("/pause"), "{own}");
    ok(&pod_cmd(ctd, &logs, &["rm", &web]));
    assert!(vms().is_empty(), "a QEMU is left after rm");

    // A runc pod on the same containerd, with a CNI pod network.
    let m = manifest(
        "plain",
        None,
        "",
        &format!(
            "  - name: hi\n    image: {image}\n    command: [\"sh\", \"-c\", \"echo runc-ok; exit 5\"]\n"
        ),
    );
    let o = pod_cmd(ctd, &logs, &["run", "--rm", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(5), "{o:?}\n{}", ctd.log_text());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "runc-ok\n");

    // A hypervisor annotation the configuration does not enable, and a
    // size that is not a number, fail the pod with the reason; no VM.
    let m = manifest(
        "iommu",
        Some("cocoon"),
        "    io.katacontainers.config.hypervisor.enable_iommu: \"true\"\n",
        &format!("  - name: x\n    image: {image}\n"),
    );
    let o = pod_cmd(ctd, &logs, &["run", "--rm", m.to_str().unwrap()]);
    let err = fails(&o);
    assert!(
        err.contains("io.katacontainers.config.hypervisor.enable_iommu is not enabled"),
        "{err}"
    );
    let m = manifest(
        "badmem",
        Some("cocoon"),
        "    io.katacontainers.config.hypervisor.default_memory: \"lots\"\n",
        &format!("  - name: x\n    image: {image}\n"),
    );
    let err = fails(&pod_cmd(ctd, &logs, &["run", "--rm", m.to_str().unwrap()]));
    assert!(err.contains("'lots' is not a number"), "{err}");
    assert!(vms().is_empty());
}

#[test]
fn cri_pod_failures_leave_nothing_behind() {
    let mut env = CriEnv::start("cocoontest1", "10.88.78.0/24");
    let image = env.image.clone();
    let sleeper = format!("  - name: c\n    image: {image}\n    command: [\"sleep\", \"600\"]\n");

    // A VM that cannot boot fails RunPodSandbox with the guest's last
    // words, and leaves nothing behind.
    let m = env.manifest(
        "panics",
        Some("cocoon"),
        "    io.katacontainers.config.hypervisor.kernel_params: \"rdinit=/no-such-init\"\n",
        &sleeper,
    );
    let err = fails(&env.pod(&["run", "--rm", m.to_str().unwrap()]));
    assert!(err.contains("the pod VM did not start"), "{err}");
    assert!(err.contains("Kernel panic"), "{err}");
    env.assert_clean("a VM that did not boot");

    // A configuration without host ports gives the VM no user network:
    // its one NIC is the pod's. Here the registry is only on the host's
    // loopback, so the guest's pull fails, saying so, and nothing is left.
    let with_ports = std::fs::read_to_string(&env.shim_cfg).unwrap();
    let without: String = with_ports
        .lines()
        .filter(|l| !l.starts_with("host_ports"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(
        without, with_ports,
        "the test configuration lists host ports"
    );
    std::fs::write(&env.shim_cfg, &without).unwrap();
    let m = env.manifest("portless", Some("cocoon"), "", &sleeper);
    let state = env.state.display().to_string();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (seen, done) = (seen.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for pid in qemu_with(&state) {
                    if let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) {
                        let c = String::from_utf8_lossy(&c).replace('\0', " ");
                        let mut seen = seen.lock().unwrap();
                        if !seen.contains(&c) {
                            seen.push(c);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let err = fails(&env.pod(&["run", "--rm", m.to_str().unwrap()]));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    assert!(
        err.contains(&format!("pulling {image}"))
            && err.contains(&format!("cannot reach registry {}", env.reg.addr)),
        "{err}"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "one VM: {seen:?}");
    assert!(seen[0].contains("tap,id=pod0"), "{}", seen[0]);
    assert!(!seen[0].contains("-netdev user"), "{}", seen[0]);
    assert_eq!(seen[0].matches("virtio-net-pci").count(), 1, "{}", seen[0]);
    std::fs::write(&env.shim_cfg, &with_ports).unwrap();
    env.assert_clean("a pod without host ports");

    // containerd restarting does not lose the pod: the shim and its VM
    // carry on, and removing the pod afterwards still cleans up.
    let m = env.manifest("survivor", Some("cocoon"), "", &sleeper);
    let id = ok(&env.pod(&["run", "-d", m.to_str().unwrap()]))
        .trim()
        .to_string();
    assert_eq!(env.vms().len(), 1);
    env.ctd.restart();
    assert_eq!(
        env.vms().len(),
        1,
        "the VM must outlive a containerd restart"
    );
    let o = env.pod(&["exec", &id, "c", "--", "cat", "/etc/greeting"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), GREETING, "{o:?}");
    ok(&env.pod(&["rm", &id]));
    env.assert_clean("removing a pod across a containerd restart");

    // A shim killed with SIGKILL takes its VM with it, and containerd
    // sees the pod's tasks end.
    let m = env.manifest("victim", Some("cocoon"), "", &sleeper);
    let id = ok(&env.pod(&["run", "-d", m.to_str().unwrap()]))
        .trim()
        .to_string();
    let shims = shims_of(&env.ctd.sock);
    assert_eq!(shims.len(), 1, "one shim per pod");
    let socket = shims[0].1.clone().expect("the shim's socket");
    assert_eq!(guards_of(&env.ctd.sock).len(), 1, "the shim's guard");
    // SAFETY: killing the shim this test's containerd started.
    unsafe { libc::kill(shims[0].0 as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ls = ok(&env.pod(&["ls"]));
        // The VM, the shim's socket and the VM's state go with the shim,
        // before the pod is removed.
        let gone = env.vms().is_empty() && !socket.exists() && shim_state(&env.state).is_empty();
        let not_ready = ls
            .lines()
            .any(|l| l.starts_with(&id[..13]) && l.contains("NotReady"));
        if gone && not_ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the shim died: VMs {:?}, socket left: {}, state left: {:?}\n{ls}",
            env.vms(),
            socket.exists(),
            shim_state(&env.state)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    ok(&env.pod(&["rm", &id]));
    env.assert_clean("a killed shim");
    assert!(!socket.exists(), "{} is left", socket.display());
}

/// `cocoon policy generate --in-place` on `manifest` (`extra` flags).
fn pin(env: &CriEnv, manifest: &Path, extra: &[&str]) -> String {
    let o = Command::new(BIN)
        .args([
            "policy",
            "generate",
            "--insecure-registry",
            &env.reg.addr,
            "--in-place",
        ])
        .args(extra)
        .arg(manifest)
        .output()
        .unwrap();
    ok(&o);
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn cri_enforces_the_agent_policy_generated_from_the_manifest() {
    let env = CriEnv::start("cocoontest4", "10.88.81.0/24");
    let image = env.image.clone();
    // Its user and privileges pinned too: what kubelet sends for its
    // securityContext (and `cocoon pod run` with it) is what the policy says.
    let container = format!(
        "  - name: app\n    image: {image}\n    command: [\"sh\", \"-c\", \"cat; echo pinned-output $(id -u):$(id -g); sleep 600\"]\n    securityContext:\n      runAsUser: 1000\n      runAsGroup: 1001\n      allowPrivilegeEscalation: false\n      capabilities: {{drop: [ALL]}}\n    readinessProbe:\n      exec:\n        command: [\"cat\", \"/etc/greeting\"]\n  securityContext:\n    sysctls: [{{name: net.ipv4.ip_unprivileged_port_start, value: \"80\"}}]\n"
    );

    // Pinned: the pod runs, its output is readable, the probe command
    // runs through CRI, anything else is refused with the rule and field.
    // Its `cat` ends: the input the pod spec never opened reads
    // end-of-file, as under runc.
    let m = env.manifest("pinned", Some("cocoon"), "", &container);
    let said = pin(&env, &m, &[]);
    assert!(said.contains("Pod pinned: initdata sha256 "), "{said}");
    assert!(
        said.contains("app: ") && said.contains(" pinned to sha256:"),
        "{said}"
    );
    let pinned = std::fs::read_to_string(&m).unwrap();
    let id = ok(&env.pod(&["run", "-d", m.to_str().unwrap()]))
        .trim()
        .to_string();
    let o = env.pod(&["exec", &id, "app", "--", "cat", "/etc/greeting"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), GREETING, "{o:?}");
    let err = fails(&env.pod(&["exec", &id, "app", "--", "sh", "-c", "id"]));
    assert!(
        err.contains(
            "ExecProcessRequest is blocked by policy: process.Args: [\"sh\", \"-c\", \"id\"]"
        ),
        "{err}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = ok(&env.pod(&["logs", &id, "app"]));
        if out == "pinned-output 1000:1001\n" {
            break;
        }
        assert!(Instant::now() < deadline, "app's log: {out:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    ok(&env.pod(&["rm", &id]));
    env.assert_clean("a pinned pod");

    // The pinned manifest changed by the host (`from` replaced by `to`):
    // the pod does not start, and `says` is why.
    let refused = |name: &str, from: &str, to: &str, says: &str| {
        let changed = pinned.replace(from, to);
        assert_ne!(changed, pinned, "{name}: {from:?} is not in the manifest");
        let m = write(env.tmp.path(), &format!("{name}.yaml"), changed.as_bytes());
        let err = fails(&env.pod(&["run", "--rm", m.to_str().unwrap()]));
        assert!(err.contains(says), "{name}: {err}");
        env.assert_clean(name);
    };
    // What runs under the same initdata: refused when the container is
    // created, with the field that differs.
    refused(
        "tampered",
        "echo pinned-output",
        "echo tampered",
        "CreateContainerRequest is blocked by policy: OCI.Process.Args",
    );
    // Or the pod's sysctls the sandbox gets.
    refused(
        "sysctl",
        "value: '80'",
        "value: '81'",
        "CreateContainerRequest is blocked by policy: OCI.Linux.Sysctl: net.ipv4.ip_unprivileged_port_start=81 is not one of the pod spec's",
    );
    // Or who it runs as: the image's user (root) instead of the pinned one.
    refused(
        "as-root",
        "      runAsUser: 1000\n",
        "",
        "CreateContainerRequest is blocked by policy: OCI.Process.User",
    );
    // Or a process namespace shared where the manifest keeps each
    // container's own: the container would see the pod's processes.
    refused(
        "shared-pid",
        "spec:\n",
        "spec:\n  shareProcessNamespace: true\n",
        "CreateContainerRequest is blocked by policy: OCI.Linux.Namespaces: the container must have its own pid namespace; sandbox_pidns: the pod spec does not share its process namespace",
    );
    // The legacy policy annotation: the shim sends it with SetPolicy, and
    // the pinned policy refuses to be replaced; the pod does not start.
    use base64::Engine;
    let allow_all = base64::engine::general_purpose::STANDARD
        .encode("package agent_policy\ndefault AllowRequestsFailingPolicy := true\n");
    refused(
        "replaced",
        "annotations:\n",
        &format!("annotations:\n    io.katacontainers.config.agent.policy: {allow_all}\n"),
        "SetPolicyRequest is blocked by policy: the policy in initdata cannot be replaced",
    );

    // Logs refused: the container runs (its probe command succeeds) but
    // the host reads none of its output, nor the probe's.
    let m = env.manifest("quiet", Some("cocoon"), "", &container);
    pin(&env, &m, &["--deny-logs"]);
    let id = ok(&env.pod(&["run", "-d", m.to_str().unwrap()]))
        .trim()
        .to_string();
    let o = env.pod(&["exec", &id, "app", "--", "cat", "/etc/greeting"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "", "{o:?}");
    std::thread::sleep(Duration::from_secs(2));
    let out = ok(&env.pod(&["logs", &id, "app"]));
    assert!(!out.contains("pinned-output"), "output leaked: {out:?}");
    ok(&env.pod(&["rm", &id]));
    env.assert_clean("a pod with logs refused");

    // Another image under the pinned name: the guest resolves it, sees its
    // digest is not the pinned one, and pulls and creates nothing (that no
    // layer is fetched is shown by `cocoon run` in tests/run.rs: here the
    // host pulls plain images itself).
    let m = write(env.tmp.path(), "swapped.yaml", pinned.as_bytes());
    push_busybox_salted(&env.reg, "busybox:cri", &["sh"], "swapped");
    let err = fails(&env.pod(&["run", "--rm", m.to_str().unwrap()]));
    assert!(
        err.contains("PullImageRequest is blocked by policy: manifest_digest: sha256:"),
        "{err}"
    );
    assert!(err.contains("is not the pinned sha256:"), "{err}");
    env.assert_clean("a swapped image");
}

/// The JWE recipient key pair of an owner (openssl RSA), as paths.
fn rsa_keypair(dir: &Path) -> (PathBuf, PathBuf) {
    need("openssl");
    let (private, public) = (dir.join("owner.key"), dir.join("owner.pub"));
    let st = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&private)
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(st.success());
    (private, public)
}

/// Text only the encrypted image of the pull test holds.
const SECRET_SALT: &str = "secret-layer-salt-3f0b7d";

#[test]
fn cri_pulls_encrypted_images_without_their_layers_reaching_the_host() {
    let env = CriEnv::start_with("cocoontest2", "10.88.79.0/24", true);
    let (plain, reg) = (
        env.image.clone(),
        env.image.rsplit_once('/').unwrap().0.to_string(),
    );
    let (_key, public) = rsa_keypair(env.tmp.path());
    // Its own layers: on containerd 1.6, with one snapshotter for all of
    // CRI, a layer shared with a host-pulled image is one snapshot (the
    // chain id is the plaintext's); see docs/kubernetes.md.
    let secret = push_busybox_salted(
        &env.reg,
        "busybox:secret",
        &["/bin/sh", "-c", "cat /etc/greeting"],
        SECRET_SALT,
    );
    let enc = format!("{reg}/busybox:encrypted");
    ok(&Command::new(BIN)
        .args([
            "image",
            "encrypt",
            &secret,
            &enc,
            "--insecure-registry",
            &reg,
        ])
        .arg("--recipient")
        .arg(format!("jwe:{}", public.display()))
        .output()
        .unwrap());
    // kubelet's PullImage succeeds, yet no layer of the image was
    // downloaded: containerd holds its manifest and config only.
    let image_ref = ok(&env.pod(&["pull", &enc]));
    assert!(image_ref.trim().starts_with("sha256:"), "{image_ref}");
    let content = env
        .tmp
        .path()
        .join("root/io.containerd.content.v1.content/blobs/sha256");
    let blobs: Vec<String> = std::fs::read_dir(&content)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let manifest = blobs
        .iter()
        .map(|b| std::fs::read(content.join(b)).unwrap())
        .find(|m| m.windows(10).any(|w| w == b"+encrypted"))
        .expect("the encrypted image's manifest is in the content store");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for l in layers {
        let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        assert!(
            !blobs.iter().any(|b| b == hex),
            "layer {hex} was downloaded to the host"
        );
    }
    // Nothing of the image's content is anywhere on the host.
    for dir in [
        env.tmp.path().join("root"),
        env.tmp.path().join("snap-root"),
    ] {
        for needle in [MARKER, SECRET_SALT] {
            let hits = grep(&dir, needle);
            assert!(
                hits.is_empty(),
                "the image's content reached the host: {hits:?}"
            );
        }
    }
    // Plain images still unpack on the host through the same snapshotter:
    // a runc pod runs, and so does a cocoon pod.
    let m = env.manifest(
        "plain-runc",
        None,
        "",
        &format!("  - name: hi\n    image: {plain}\n    command: [\"sh\", \"-c\", \"cat /etc/greeting\"]\n"),
    );
    let o = env.pod(&["run", "--rm", m.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        GREETING,
        "{o:?}\n{}",
        env.ctd.log_text()
    );
    let m = env.manifest(
        "plain-cocoon",
        Some("cocoon"),
        "",
        &format!("  - name: hi\n    image: {plain}\n"),
    );
    let o = env.pod(&["run", "--rm", m.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), GREETING, "{o:?}");
    env.assert_clean("pods on the proxy snapshotter");
    let snaps = env._snap.as_ref().unwrap().root.join("metadata.json");
    assert!(snaps.is_file(), "the snapshotter kept no metadata");
}

/// base64 of the gzipped text, as Kata's `cc_init_data` annotation holds it.
fn gz_b64(text: &str) -> String {
    use base64::Engine;
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())
}

/// Text only the owner's image holds (in a layer no other image shares).
const OWNER_SALT: &str = "owner-layer-salt-8d2c41";

#[test]
fn cri_runs_an_encrypted_image_only_after_vtpm_attestation() {
    need("swtpm");
    need("swtpm_setup");
    let mut env = CriEnv::start_with("cocoontest3", "10.88.80.0/24", true);
    let d = env.tmp.path().to_path_buf();
    let img = guest_image();
    // The owner's image, with layers of its own (see the snapshotter's
    // shared-layer note), encrypted with a key the trustee holds.
    let plain = push_busybox_salted(
        &env.reg,
        "busybox:owner",
        &["/bin/sh", "-c", "cat /etc/greeting"],
        OWNER_SALT,
    );
    let ca = d.join("vtpm-ca");
    let certs = ok(&cocoon(
        &["tpm", "vtpm-ca", "--dir", ca.to_str().unwrap()],
        &[],
    ));
    let t = TrusteeProc::start_with(
        &d.join("trustee"),
        &[],
        &["--tpm-hardware-ek-ca", certs.trim()],
    );
    let admin = |args: &[&str]| ok(&t.admin(args));
    let kek: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(31).wrapping_add(3))
        .collect();
    let kek_file = write(&d, "kek.bin", &kek);
    let enc = format!("{}/busybox:owner-enc", env.reg.addr);
    encrypt_with_trustee_key(
        &t,
        &env.reg.addr,
        &plain,
        &enc,
        "kbs:///default/image-key/cri",
        &kek_file,
    );
    // Reference values from the guest image build, and the pod's initdata.
    let init = owner_initdata(&env.reg, &t, None);
    let digest = cocoon_types::initdata::InitData::from_payload("toml", &init)
        .unwrap()
        .digest;
    admin(&["add-reference-value", "init_data", &hex::encode(&digest)]);
    let rv = img.join(cocoon_guest_image::reference_values_file(512));
    admin(&["register-reference-values", "--file", rv.to_str().unwrap()]);
    // The handler in vtpm mode: the node's registry and trustee ports.
    let port = |addr: &str| {
        addr.rsplit_once(':')
            .unwrap()
            .1
            .trim_end_matches('/')
            .parse::<u16>()
            .unwrap()
    };
    std::fs::write(
        &env.shim_cfg,
        format!(
            "guest_image = \"{}\"\nmode = \"vtpm\"\ndefault_memory_mib = 512\nstate_dir = \"{}\"\nvtpm_ca = \"{}\"\nhost_ports = [{}, {}]\n",
            img.display(),
            env.state_dir.display(),
            ca.display(),
            port(&env.reg.addr),
            port(&t.url)
        ),
    )
    .unwrap();
    env.initdata = gz_b64(&init);
    let m = env.manifest(
        "owner",
        Some("cocoon"),
        "",
        &format!("  - name: app\n    image: {enc}\n"),
    );
    // kubelet's pull: no layer reaches the host.
    ok(&env.pod(&["pull", &enc]));
    // The platform's PCRs (firmware, VMM) are not pinned yet: the key is
    // refused, and the pod fails with the reason.
    let err = fails(&env.pod(&["run", "--rm", m.to_str().unwrap()]));
    assert!(err.contains("denied"), "{err}");
    let why = t.explain_until(10, |e| e.contains("boot PCR 0 is not pinned"));
    for n in [0, 1] {
        let needle = format!("this guest has tpm.pcr0{n}=");
        let at = why
            .find(&needle)
            .unwrap_or_else(|| panic!("PCR {n} not named: {why}"));
        admin(&[
            "add-reference-value",
            &format!("tpm_pcr{n}"),
            &why[at + needle.len()..at + needle.len() + 64],
        ]);
    }
    // Pinned: the pod VM attests, the guest gets the key, pulls and
    // decrypts the image inside the VM, and the container runs.
    let o = env.pod(&["run", "--rm", m.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), GREETING, "{o:?}");
    env.assert_clean("an attested pod");
    // The owner pins the pod with a generated agent policy: its initdata
    // (trustee settings and policy) is what the trustee now accepts, and
    // the pod runs under that policy in the vTPM VM.
    let o = std::process::Command::new(BIN)
        .args([
            "policy",
            "generate",
            "--kbs",
            &t.url,
            "--kbs-cert",
            &t.cert_path(),
        ])
        .args(["--insecure-registry", &env.reg.addr, "--in-place"])
        .arg(&m)
        .output()
        .unwrap();
    ok(&o);
    let said = String::from_utf8_lossy(&o.stderr).into_owned();
    let at = said
        .find("initdata sha256 ")
        .expect("the digest is printed")
        + 16;
    admin(&["add-reference-value", "init_data", &said[at..at + 64]]);
    let o = env.pod(&["run", "--rm", m.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), GREETING, "{o:?}");
    env.assert_clean("a pinned, attested pod");
    // No plaintext of the image and no key anywhere on the host side.
    let kek_hex = hex::encode(&kek);
    let host = ["root", "state", "snap-root", "shim-state", "pod-logs"];
    // (The other images of the test, unpacked on the host for the pause
    // container, hold the shared busybox layers; the owner's own layer
    // holds the salt.)
    for needle in [OWNER_SALT, kek_hex.as_str()] {
        for dir in host {
            let hits = grep(&d.join(dir), needle);
            assert!(hits.is_empty(), "{needle} found on the host: {hits:?}");
        }
        for log in ["containerd.log", "snapshotter.log"] {
            let text = std::fs::read_to_string(d.join(log)).unwrap_or_default();
            assert!(!text.contains(needle), "{needle} in {log}");
        }
    }
}

/// `cocoon node install|status|uninstall` against a containerd 1.6 run
/// from a stock configuration (Debian's `/etc/containerd/config.toml` plus
/// what a private instance and the test registry need), restarted by a
/// script as a service manager would.
#[test]
fn node_install_adds_the_cocoon_handler_and_uninstall_puts_the_node_back() {
    need("qemu-system-x86_64");
    need("runc");
    assert!(
        Path::new("/usr/lib/cni/bridge").is_file(),
        "the CNI bridge plugin is missing: run scripts/test, which installs containernetworking-plugins"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let reg = Registry::start(dir);
    let image = push_busybox(&reg, "busybox:node");
    let pause = push_busybox_cmd(&reg, "pause:1", &["/bin/sleep", "2147483647"]);
    let port: u16 = reg.addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let config = debian_stock_config(dir, &reg.addr, &pause, "cocoonnode0", "10.88.79.0/24");
    let ctd = Containerd::start_scripted(dir, &config, "cocoonnode0");
    let cfg = ctd.cfg.clone();
    let original = std::fs::read(&cfg).unwrap();
    let logs = dir.join("pod-logs");
    let prefix = dir.join("opt-cocoon");
    let state = dir.join("shim-state");
    let shim_cfg = write(
        dir,
        "shim.toml",
        format!(
            "guest_image = \"{}/share/guest-image\"\nmode = \"none\"\ndefault_memory_mib = 512\nstate_dir = \"{}\"\nhost_ports = [{port}]\n",
            prefix.display(),
            state.display()
        )
        .as_bytes(),
    );
    let restart = script_restart(&ctd);
    let node = |verb: &str, extra: &[&str]| {
        node_cmd(&ctd, &prefix, verb, &restart)
            .args(extra)
            .output()
            .unwrap()
    };
    let bin_dir = Path::new(BIN).parent().unwrap().display().to_string();
    let gi = guest_image().display().to_string();
    let link_dir = dir.join("usr-local-bin").display().to_string();
    let install_args = [
        "--shim-link-dir",
        link_dir.as_str(),
        "--bin-dir",
        bin_dir.as_str(),
        "--guest-image",
        gi.as_str(),
        "--shim-config",
        shim_cfg.to_str().unwrap(),
    ];
    let manifest = |name: &str, handler: Option<&str>, cmd: &str| {
        let rc = handler
            .map(|h| format!("  runtimeClassName: {h}\n"))
            .unwrap_or_default();
        write(
            dir,
            &format!("{name}.yaml"),
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations:\n    io.katacontainers.config.hypervisor.cc_init_data: \"{}\"\nspec:\n{rc}  containers:\n  - name: main\n    image: {image}\n    command: [\"/bin/sh\", \"-c\", \"{cmd}\"]\n",
                cc_init_data(&reg, &image)
            )
            .as_bytes(),
        )
    };
    let pod = |args: &[&str]| pod_cmd(&ctd, &logs, args);
    // A runc pod that prints and exits with `code`.
    let runc_exits = |name: &str, code: i32| {
        let m = manifest(name, None, &format!("echo {name}; exit {code}"));
        let r = pod(&["run", "--rm", m.to_str().unwrap()]);
        assert_eq!(
            r.status.code(),
            Some(code),
            "{name}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
    };

    // Before: runc works, a long-running runc pod stays up through it all,
    // and nothing of ours is installed.
    runc_exits("runc-before", 5);
    let keep = pod(&[
        "run",
        "-d",
        manifest("runc-keep", None, "sleep 3600").to_str().unwrap(),
    ]);
    let keep_id = ok(&keep).trim().to_string();
    let st = node("status", &[]);
    assert!(
        String::from_utf8_lossy(&st.stdout).contains("not installed"),
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );

    // A restart that fails (after containerd did restart with the new
    // configuration) puts the configuration back and restarts containerd
    // with it.
    let pid_before = ctd.pid();
    let failing = format!("{restart}; exit 3");
    let bad = node_cmd(&ctd, &prefix, "install", &failing)
        .args(install_args)
        .output()
        .unwrap();
    let e = fails(&bad);
    assert!(
        e.contains("exit 3\" failed") && e.contains("put back"),
        "{e}"
    );
    assert_ne!(ctd.pid(), pid_before, "the failing restart did not restart");
    assert!(
        ctd.ctr(&["version"]).status.success(),
        "containerd is down after the rollback"
    );
    let st = String::from_utf8_lossy(&node("status", &[]).stdout).into_owned();
    assert!(st.contains("handler cocoon is not served"), "{st}");
    assert_eq!(
        std::fs::read(&cfg).unwrap(),
        original,
        "a failed install left containerd's configuration changed"
    );

    // Install: CRI serves the handler after the restart.
    let pid_before = ctd.pid();
    let inst = node("install", &install_args);
    if !inst.status.success() {
        let log = ctd.log_text();
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("level=error") || l.contains("level=warn"))
            .collect();
        panic!(
            "install failed: {}\ncontainerd's errors:\n{}",
            String::from_utf8_lossy(&inst.stderr),
            tail[tail.len().saturating_sub(20)..].join("\n")
        );
    }
    let out = ok(&inst);
    assert!(
        out.contains("installed: handlers cocoon on containerd 1.6"),
        "{out}"
    );
    assert_ne!(ctd.pid(), pid_before, "containerd was not restarted");
    let edited = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        edited.contains("runtime_type = \"io.containerd.cocoon.v2\""),
        "{edited}"
    );
    assert_eq!(
        std::fs::read(prefix.join("backup/containerd.toml")).unwrap(),
        original
    );
    let record = std::fs::read(prefix.join("install.json")).unwrap();

    // Twice is once: nothing rewritten, containerd not restarted.
    let pid = ctd.pid();
    let again = ok(&node("install", &install_args));
    assert!(again.contains("not restarted"), "{again}");
    assert_eq!(ctd.pid(), pid);
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), edited);
    assert_eq!(std::fs::read(prefix.join("install.json")).unwrap(), record);
    let st = ok(&node("status", &[]));
    assert!(
        st.contains("handler cocoon: served") && st.contains("as the install left it"),
        "{st}"
    );
    // The readiness probe's check: presence only, the same verdict.
    let quick = ok(&node("status", &["--quick"]));
    assert!(
        quick.contains("present") && quick.contains("handler cocoon: served"),
        "{quick}"
    );

    // A cocoon pod runs through CRI with only what the install put there
    // (the shim by runtime_path, the guest image under the prefix).
    let vm = pod(&[
        "run",
        "-d",
        manifest(
            "confidential",
            Some("cocoon"),
            "echo from the node install; sleep 3600",
        )
        .to_str()
        .unwrap(),
    ]);
    let vm_id = ok(&vm).trim().to_string();
    assert_eq!(
        qemu_with(&state.display().to_string()).len(),
        1,
        "no pod VM"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let l = pod(&["logs", &vm_id, "main"]);
        if String::from_utf8_lossy(&l.stdout).contains("from the node install") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cocoon pod printed nothing: {}",
            String::from_utf8_lossy(&l.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The runc pod lived through the restart.
    let x = pod(&["exec", &keep_id, "main", "--", "echo", "still here"]);
    assert_eq!(ok(&x).trim(), "still here");
    runc_exits("runc-during", 6);

    // Uninstall refuses while a pod of the handler runs.
    let e = fails(&node("uninstall", &[]));
    assert!(
        e.contains("pods still run") && e.contains("confidential"),
        "{e}"
    );
    ok(&pod(&["rm", &vm_id]));
    let out = ok(&node("uninstall", &[]));
    assert!(
        out.contains("restored") && out.contains("no longer offers cocoon"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&cfg).unwrap(),
        original,
        "uninstall did not restore the configuration byte for byte"
    );
    assert!(!prefix.exists(), "uninstall left {}", prefix.display());
    assert!(
        !Path::new(&link_dir).exists(),
        "uninstall left the shim's link"
    );
    let st = node("status", &[]);
    let st_out = String::from_utf8_lossy(&st.stdout);
    assert!(
        st_out.contains("not installed") && !st_out.contains("problem"),
        "{st_out}"
    );
    let e = fails(&pod(&[
        "run",
        "--rm",
        manifest("after", Some("cocoon"), "true").to_str().unwrap(),
    ]));
    assert!(e.contains("cocoon"), "{e}");

    // After: runc as before, and the long-running pod still there.
    let x = pod(&["exec", &keep_id, "main", "--", "echo", "still here"]);
    assert_eq!(ok(&x).trim(), "still here");
    runc_exits("runc-after", 7);
    ok(&pod(&["rm", &keep_id]));
    assert!(
        qemu_with(&state.display().to_string()).is_empty(),
        "a QEMU is left"
    );
    assert_shims_gone(&ctd.sock, "removing the pod");
}

/// `cocoon node VERB` against a script-run test containerd, with the
/// runtime under `prefix` (and, but for `status`, `restart` as the
/// restart command); the caller adds the verb's own flags.
fn node_cmd(ctd: &Containerd, prefix: &Path, verb: &str, restart: &str) -> Command {
    let mut c = Command::new(BIN);
    c.args(["node", verb, "--containerd-config"])
        .arg(&ctd.cfg)
        .arg("--prefix")
        .arg(prefix)
        .arg("--runtime-endpoint")
        .arg(format!("unix://{}", ctd.sock.display()))
        .args(["--timeout", "60s"]);
    if verb != "status" {
        c.args(["--restart-command", restart]);
    }
    c.env_remove("NODE_NAME").stdin(Stdio::null());
    c
}

/// The restart a script-run test containerd takes.
fn script_restart(ctd: &Containerd) -> String {
    format!("sh {} restart", ctd.dir.join("ctd.sh").display())
}

/// Debian's stock `/etc/containerd/config.toml`, plus what a private
/// instance under `dir` (root, state, sockets, CNI) and a plain-HTTP
/// registry on loopback need.
fn debian_stock_config(
    dir: &Path,
    registry: &str,
    pause: &str,
    bridge: &str,
    subnet: &str,
) -> String {
    let cni = dir.join("cni");
    std::fs::create_dir_all(&cni).unwrap();
    std::fs::write(
        cni.join("10-node.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"node-test","plugins":[{{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"{subnet}"}}]],"dataDir":"{}"}}}}]}}"#,
            dir.join("cni-ipam").display()
        ),
    )
    .unwrap();
    let stock = include_str!("../src/node/fixtures/1.6-debian-package.toml");
    assert!(
        stock.contains("conf_dir = \"/etc/cni/net.d\"")
            && stock.contains("/var/lib/containerd/opt")
    );
    stock
        .replace("version = 2\n", &format!("version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n", dir.display()))
        .replace("\"/etc/cni/net.d\"", &format!("\"{}\"", cni.display()))
        .replace("/var/lib/containerd/opt", &dir.join("opt").display().to_string())
        .replace(
            "  [plugins.\"io.containerd.grpc.v1.cri\"]\n",
            &format!(
                "  [plugins.\"io.containerd.grpc.v1.cri\"]\n    sandbox_image = \"{pause}\"\n    restrict_oom_score_adj = true\n    [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{registry}\"]\n      endpoint = [\"http://{registry}\"]\n"
            ),
        )
        + &format!(
            "\n[grpc]\n  address = \"{0}/c.sock\"\n[ttrpc]\n  address = \"{0}/c.sock.ttrpc\"\n",
            dir.display()
        )
}

/// The containerd 2.x layouts' mechanics on the real containerd 1.6 (told
/// it is 2.1, then 2.2): an `imports` entry and our file, a move to the
/// drop-in directory once the admin's file imports one (the earlier entry
/// and file gone, the admin's edit kept), and an uninstall that leaves the
/// admin's file as they left it. (1.6 merges an import by replacing whole
/// plugin tables, so pods would lose CRI's settings here: only the files,
/// the restarts and what CRI serves are checked.)
#[test]
fn node_install_moves_between_the_containerd_2_layouts_and_back_out() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = debian_stock_config(
        dir,
        "127.0.0.1:9",
        "127.0.0.1:9/pause:1",
        "cocoonnode1",
        "10.88.80.0/24",
    );
    let ctd = Containerd::start_scripted(dir, &config, "cocoonnode1");
    let cfg = ctd.cfg.clone();
    let prefix = dir.join("opt-cocoon");
    let dropin = dir.join("conf.d");
    let restart = script_restart(&ctd);
    let bin_dir = Path::new(BIN).parent().unwrap().display().to_string();
    let gi = guest_image().display().to_string();
    let node = |verb: &str, extra: &[&str]| {
        let mut c = node_cmd(&ctd, &prefix, verb, &restart);
        if verb == "install" {
            c.args([
                "--bin-dir",
                &bin_dir,
                "--guest-image",
                &gi,
                "--shim-link-dir",
            ])
            .arg(dir.join("usr-local-bin"))
            .arg("--dropin-dir")
            .arg(&dropin);
        }
        c.args(extra).output().unwrap()
    };
    let ours = prefix.join("etc/cocoon-containerd.toml");

    // 2.1: an imports entry (inserted before the first table) and our file.
    let out = ok(&node("install", &["--containerd-version", "2.1"]));
    assert!(out.contains("(Import)"), "{out}");
    let edited = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        edited.contains(&format!("imports = [\"{}\"]", ours.display())),
        "{edited}"
    );
    let file = std::fs::read_to_string(&ours).unwrap();
    assert!(
        file.starts_with("# Written by cocoon node install") && file.contains("version = 2"),
        "the import is not in the main file's schema:\n{file}"
    );

    // The admin makes containerd read a drop-in directory; told it is 2.2,
    // the install moves there and takes its entry out of the main file.
    std::fs::create_dir_all(&dropin).unwrap();
    let with_glob = edited.replacen(
        &format!("imports = [\"{}\"]", ours.display()),
        &format!(
            "imports = [\"{}\", \"{}/*.toml\"]",
            ours.display(),
            dropin.display()
        ),
        1,
    );
    std::fs::write(&cfg, &with_glob).unwrap();
    let out = ok(&node("install", &["--containerd-version", "2.2"]));
    assert!(out.contains("to DropIn"), "{out}");
    let now = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        !now.contains("cocoon-containerd.toml") && now.contains("conf.d/*.toml"),
        "{now}"
    );
    assert!(!ours.exists(), "the Import layout's file is left");
    assert!(dropin.join("cocoon.toml").is_file());
    let st = ok(&node("status", &[]));
    assert!(st.contains("handler cocoon: served"), "{st}");

    // Uninstall: the admin's file as they left it (their glob, no entry of
    // ours), our drop-in and prefix gone, the handler no longer served.
    let out = ok(&node("uninstall", &[]));
    assert!(out.contains("no longer offers cocoon"), "{out}");
    let back = std::fs::read_to_string(&cfg).unwrap();
    let mut lines = back.lines();
    for l in config.lines() {
        assert!(
            lines.any(|b| b == l),
            "line {l:?} of the admin's file lost:\n{back}"
        );
    }
    assert!(
        back.contains(&format!("\"{}/*.toml\"", dropin.display()))
            && !back.contains("cocoon-containerd"),
        "{back}"
    );
    assert!(!dropin.join("cocoon.toml").exists() && !prefix.exists());
}
