//! Pod VMs for real: the guest image we build, booted by QEMU under
//! software emulation here (KVM where it works), with OVMF and a fresh
//! swtpm in vtpm mode. One boot per case; each checks several things.
//!
//! Needs the static guest binary (scripts/build-guest) and QEMU, OVMF and
//! swtpm (scripts/test installs them). `COCOON_GUEST_IMAGE` names a built
//! image directory; without it the image is built here.

use cocoon_hypervisor::{Accel, Hypervisor, Mode, Qemu, VmExit, VmSpec};
use cocoon_pod::{PodError, PodVm, ctx};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

/// The guest image directory (built once per test process if not given).
fn image() -> &'static Path {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        if let Some(d) = std::env::var_os("COCOON_GUEST_IMAGE") {
            return PathBuf::from(d);
        }
        let bin = std::env::var_os("COCOON_GUEST_BINARY")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                repo_root().join("target/static/x86_64-unknown-linux-gnu/release/cocoon-guest")
            });
        assert!(
            bin.is_file(),
            "no static guest binary at {}: run scripts/build-guest (or set COCOON_GUEST_IMAGE)",
            bin.display()
        );
        let out = std::env::temp_dir().join(format!("cocoon-test-image-{}", std::process::id()));
        let cache = std::env::var_os("COCOON_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/cocoon"));
        cocoon_guest_image::build(&cocoon_guest_image::BuildOptions {
            out_dir: out.clone(),
            guest_binary: bin,
            cache_dir: cache,
            kernel_deb: None,
            cmdline: None,
            compression: Default::default(),
            module_signatures: Default::default(),
        })
        .expect("building the guest image");
        out
    })
}

fn spec(dir: &Path, id: &str, mode: Mode) -> VmSpec {
    let img = image();
    VmSpec {
        id: id.into(),
        mode,
        accel: Some(Accel::Tcg),
        vcpus: 1,
        memory_mib: 256,
        kernel: img.join("vmlinuz"),
        initrd: img.join("initrd.img"),
        cmdline: std::fs::read_to_string(img.join("cmdline")).unwrap(),
        firmware: None,
        initdata: None,
        state_dir: dir.join("state").join(id),
        console_log: dir.join(format!("{id}.console.log")),
        network: None,
        vtpm_ca: None,
        pod_network: None,
    }
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes; /proc/<pid>/stat says which.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Initdata pointing the attestation agent at a trustee (not contacted
/// here) whose certificate it pins.
fn initdata() -> String {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])
        .unwrap()
        .cert
        .pem();
    format!(
        "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"https://127.0.0.1:8080\"\ncert = \"\"\"\n{cert}\"\"\"\n'''\n\"policy.rego\" = '''\n{POLICY}'''\n"
    )
}

/// An agent policy written by hand in genpolicy's shape (Kata's rule
/// names, `policy_data` with containers and request defaults): one
/// container may be created, nothing may be exec'd, copied or replaced.
const POLICY: &str = r#"package agent_policy

import future.keywords.in
import future.keywords.if
import future.keywords.every

default CreateContainerRequest := false
default ExecProcessRequest := false
default SetPolicyRequest := false
default CopyFileRequest := false
default ReadStreamRequest := false
default GuestDetailsRequest := true
default CreateSandboxRequest := true

CreateContainerRequest if {
    some c in policy_data.containers
    input.OCI.Process.Args == c.OCI.Process.Args
    every e in input.OCI.Process.Env {
        e in c.OCI.Process.Env
    }
}

ReadStreamRequest if policy_data.request_defaults.ReadStreamRequest

policy_data := {
    "containers": [{"OCI": {"Process": {"Args": ["/app"], "Env": ["A=1"]}}}],
    "request_defaults": {"ReadStreamRequest": false}
}
"#;

/// The refusal of a raw agent call: PERMISSION_DENIED naming the rule.
fn refused<T: std::fmt::Debug>(r: ttrpc::Result<T>, rule: &str) -> String {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => {
            assert_eq!(s.code(), ttrpc::Code::PERMISSION_DENIED, "{s:?}");
            assert!(
                s.message()
                    .starts_with(&format!("{rule} is blocked by policy")),
                "{s:?}"
            );
            s.message().to_string()
        }
        other => panic!("{rule}: expected a refusal, got {other:?}"),
    }
}

/// A plain VM: the agent answers on the virtio-serial channel, services
/// that do not exist yet answer not-implemented, a stop leaves no process
/// and no state behind.
#[tokio::test(flavor = "multi_thread")]
async fn plain_vm_agent_answers_and_stop_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = Qemu::new().expect("QEMU (scripts/test installs it)");
    let s = spec(dir.path(), "plain", Mode::None);
    let state = s.state_dir.clone();
    let console = s.console_log.clone();
    let pod = PodVm::start(&qemu, s, BOOT_TIMEOUT).await.unwrap();
    eprintln!("plain VM: agent ready after {:?}", pod.boot_time);
    let (api, build) = pod.agent.version().await.unwrap();
    assert_eq!(api, "0.0.1");
    assert!(build.starts_with("cocoon-guest "), "{build}");
    let err = pod
        .agent
        .agent
        .pause_container(ctx(Duration::from_secs(10)), &Default::default())
        .await
        .unwrap_err();
    match &err {
        ttrpc::Error::RpcStatus(s) => {
            assert_eq!(s.code(), ttrpc::Code::UNIMPLEMENTED, "{err:?}");
            assert!(s.message().contains("PauseContainer"), "{err:?}");
        }
        other => panic!("expected an RPC status: {other:?}"),
    }
    let pids = pod.vm().pids();
    assert_eq!(pids.len(), 1);
    assert!(state.is_dir());
    let exit = pod.stop().await.unwrap();
    assert!(matches!(exit, VmExit::Exited(_) | VmExit::Signaled(_)));
    assert!(!state.exists(), "state directory removed");
    for p in pids {
        assert!(!alive(p), "process {p} still running");
    }
    let log = std::fs::read_to_string(&console).unwrap();
    assert!(log.contains("agent ready"), "console log kept: {log}");
}

/// vtpm mode: OVMF measured boot with a fresh swtpm; the initdata disk is
/// found and its digest logged; the command line is measured; the
/// attestation agent starts on the vTPM with the initdata bound.
#[tokio::test(flavor = "multi_thread")]
async fn vtpm_vm_with_initdata() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = Qemu::new().unwrap();
    let mut s = spec(dir.path(), "vtpm", Mode::Vtpm);
    s.initdata = Some(initdata());
    let console = s.console_log.clone();
    let pod = PodVm::start(&qemu, s, BOOT_TIMEOUT).await.unwrap();
    eprintln!("vtpm VM: agent ready after {:?}", pod.boot_time);
    let digest = pod.vm().initdata_digest().unwrap();
    assert_eq!(digest.len(), 32, "a vTPM binds SHA-256 initdata");
    let pids = pod.vm().pids();
    assert_eq!(pids.len(), 2, "QEMU and swtpm");

    // A hostile host speaking the agent API directly: what initdata's
    // policy refuses is refused, with the rule; what it allows works.
    use cocoon_pod::kata::{agent, oci};
    let raw = &pod.agent.agent;
    let t = || ctx(Duration::from_secs(30));
    let tampered = agent::CreateContainerRequest {
        container_id: "x".into(),
        OCI: Some(oci::Spec {
            Process: Some(oci::Process {
                Args: vec!["/app".into()],
                Env: vec!["A=1".into(), "LD_PRELOAD=/evil.so".into()],
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    refused(
        raw.create_container(t(), &tampered).await,
        "CreateContainerRequest",
    );
    let exec = agent::ExecProcessRequest {
        container_id: "x".into(),
        exec_id: "sh".into(),
        process: Some(oci::Process {
            Args: vec!["/bin/sh".into()],
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    refused(raw.exec_process(t(), &exec).await, "ExecProcessRequest");
    let allow_all = agent::SetPolicyRequest {
        policy: "package agent_policy\ndefault AllowRequestsFailingPolicy := true\n".into(),
        ..Default::default()
    };
    refused(raw.set_policy(t(), &allow_all).await, "SetPolicyRequest");
    let copy = agent::CopyFileRequest {
        path: "/run/kata-containers/shared/containers/x".into(),
        ..Default::default()
    };
    refused(raw.copy_file(t(), &copy).await, "CopyFileRequest");
    // A request the policy has no rule for is refused too.
    let why = refused(
        raw.stats_container(t(), &agent::StatsContainerRequest::default())
            .await,
        "StatsContainerRequest",
    );
    assert!(
        why.contains("defines no rule StatsContainerRequest"),
        "{why}"
    );
    // Still the first policy: SetPolicy did not replace it.
    refused(raw.exec_process(t(), &exec).await, "ExecProcessRequest");
    let details = raw
        .get_guest_details(t(), &agent::GuestDetailsRequest::default())
        .await
        .expect("allowed by the policy");
    assert!(details.agent_details.is_some());
    // The guest services start beside the agent, not before it.
    for _ in 0..1200 {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        if log.contains("attestation agent ready") || log.contains("ERROR") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pod.stop().await.unwrap();
    for p in pids {
        assert!(!alive(p), "process {p} still running");
    }
    let log = std::fs::read_to_string(&console).unwrap();
    assert!(log.contains("kernel command line measured"), "{log}");
    // PCR 12 holds what the image manifest predicts from the artifacts.
    let m = cocoon_guest_image::Manifest::load(image()).unwrap();
    assert!(
        log.contains(&format!(
            "pcr=12 value={}",
            m.measurements.vtpm_pcr12_sha256
        )),
        "expected PCR 12 {}: {log}",
        m.measurements.vtpm_pcr12_sha256
    );
    assert!(log.contains("attestation agent ready"), "{log}");
    assert!(log.contains("tee=tpm"), "{log}");
    assert!(log.contains("agent policy loaded from initdata"), "{log}");
    assert!(
        log.contains("request refused by the agent policy")
            && log.contains("CreateContainerRequest"),
        "the guest logs refusals: {log}"
    );
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        log.contains(&format!("initdata found digest={hex}")) || log.contains(&hex),
        "{log}"
    );
}

/// A guest kernel panic ends the VM: the driver reports it instead of
/// waiting for an agent that will never answer, and cleans up.
#[tokio::test(flavor = "multi_thread")]
async fn guest_panic_ends_the_vm() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = Qemu::new().unwrap();
    let mut s = spec(dir.path(), "panic", Mode::None);
    s.cmdline.push_str(" rdinit=/no-such-init");
    let state = s.state_dir.clone();
    match PodVm::start(&qemu, s, BOOT_TIMEOUT).await {
        Err(PodError::VmEnded(_)) => {}
        Err(e) => panic!("expected the VM to end, got {e}"),
        Ok(_) => panic!("a VM without init must not come up"),
    }
    assert!(!state.exists());
}

/// The driver killed with SIGKILL takes its VM and vTPM with it. The
/// driver is this test binary run again as a child process.
#[test]
fn killed_driver_takes_its_vm_along() {
    if let Some(out) = std::env::var_os("COCOON_TEST_DRIVER_OUT") {
        // Child: start a vtpm VM, report the pids, wait to be killed.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let dir = PathBuf::from(&out).parent().unwrap().to_path_buf();
            let qemu = Qemu::new().unwrap();
            let vm = qemu.start(spec(&dir, "killed", Mode::Vtpm)).await.unwrap();
            let pids: Vec<String> = vm.pids().iter().map(|p| p.to_string()).collect();
            std::fs::write(&out, pids.join(" ")).unwrap();
            tokio::time::sleep(Duration::from_secs(600)).await;
        });
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pids");
    let _ = image();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "killed_driver_takes_its_vm_along", "--nocapture"])
        .env("COCOON_TEST_DRIVER_OUT", &out)
        .env("COCOON_GUEST_IMAGE", image())
        .spawn()
        .unwrap();
    let mut pids = String::new();
    for _ in 0..600 {
        pids = std::fs::read_to_string(&out).unwrap_or_default();
        if !pids.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pids: Vec<u32> = pids
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "QEMU and swtpm started");
    assert!(pids.iter().all(|p| alive(*p)));
    // SAFETY: killing our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let mut left = pids.clone();
    for _ in 0..100 {
        left.retain(|p| alive(*p));
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        left.is_empty(),
        "still running after the driver died: {left:?}"
    );
    // Its state is collected by the next driver.
    let state = dir.path().join("state");
    assert!(state.join("killed").exists());
    cocoon_hypervisor::qemu::gc_stale(&state);
    assert!(!state.join("killed").exists());
}
