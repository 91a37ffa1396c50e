//! End to end: containers in pod VMs (real QEMU, software emulation),
//! images pulled inside the guest from Debian's `docker-registry` on the
//! host's loopback, through `cocoon run` and through the pod library.

mod common;
mod pods;

use common::*;
use pods::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn run_cmd(reg: &Registry, runtime_dir: &Path, args: &[&str]) -> Command {
    let img = guest_image();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cocoon"));
    cmd.env("XDG_RUNTIME_DIR", runtime_dir)
        .args(["run", "--insecure-registry", &reg.addr, "--memory", "512"])
        .arg("--guest-image")
        .arg(&img)
        .args(args);
    cmd
}

fn run(reg: &Registry, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let xdg = reg.storage.parent().unwrap().join("xdg");
    let mut cmd = run_cmd(reg, &xdg, args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("cocoon run");
    if let Some(data) = stdin {
        let mut s = child.stdin.take().unwrap();
        s.write_all(data).unwrap();
    }
    child.wait_with_output().expect("cocoon run output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// QEMU and swtpm processes whose command line names `id_part`.
fn qemu_left(id_part: &str) -> Vec<String> {
    let mut left = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = text(&cmd).replace('\0', " ");
        if (cmd.contains("qemu-system") || cmd.contains("swtpm")) && cmd.contains(id_part) {
            left.push(cmd);
        }
    }
    left
}

#[test]
fn cocoon_run_pulls_in_the_guest_and_returns_the_exit_code() {
    need("qemu-system-x86_64");
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start(dir.path());
    let image = push_busybox(&reg, "busybox:1");

    // The image's own command; nothing of the image on the host side.
    let o = run(&reg, &[&image], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), GREETING);

    // A command of ours: both streams and a non-zero code. In the same
    // VM, the device cgroup: a root container (with CAP_MKNOD) may create
    // device nodes and open the standard ones, but no other (the hardware
    // RNG here; a disk, the TPM or a TEE device alike).
    let o = run(
        &reg,
        &[
            &image,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; hostname; \
             busybox mknod /dev/n c 1 3 && cat /dev/n && echo null-opened >&2; \
             busybox mknod /dev/r c 10 183 && busybox head -c 1 /dev/r; exit 3",
        ],
        None,
    );
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert_eq!(text(&o.stdout), "out\ncocoon\n", "{err}");
    assert!(err.contains("err\n"), "{err}");
    assert!(err.contains("null-opened\n"), "{err}");
    assert!(err.contains("/dev/r: Operation not permitted"), "{err}");

    // -i passes stdin through; EOF reaches the container.
    let input = "line one\nline two\n".repeat(500);
    let o = run(
        &reg,
        &["-i", &image, "--", "wc", "-l"],
        Some(input.as_bytes()),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), "1000");

    // -t: the process runs on a terminal in the guest, sized from ours
    // (a pty that util-linux `script` makes) and resized with it: the
    // shell below resizes its terminal once the container runs, and the
    // kernel's SIGWINCH makes `cocoon run` pass the new size on.
    let xdg = dir.path().join("xdg");
    let console = dir.path().join("tty.console.log");
    let cmd = run_cmd(
        &reg,
        &xdg,
        &[
            "-t",
            "--console-log",
            console.to_str().unwrap(),
            &image,
            "--",
            "sh",
            "-c",
            "read p </proc/self/personality; echo persona=$p; stty size; i=0; while [ \"$(stty size)\" != '40 120' ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; stty size; tty; exit 5",
        ],
    );
    let quote = |a: &str| format!("'{}'", a.replace('\'', "'\\''"));
    let line = format!(
        "stty rows 25 cols 90; (until grep -q 'container started' {c} 2>/dev/null; do sleep 0.1; done; stty rows 40 cols 120 </dev/tty) & exec env XDG_RUNTIME_DIR={x} {prog} {args}",
        c = quote(console.to_str().unwrap()),
        x = quote(xdg.to_str().unwrap()),
        prog = quote(cmd.get_program().to_str().unwrap()),
        args = cmd
            .get_args()
            .map(|a| quote(a.to_str().unwrap()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let o = on_terminal(&line);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(5), "{out}\n{}", text(&o.stderr));
    let sizes: Vec<&str> = out
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.split(' ').count() == 2 && l.split(' ').all(|n| n.parse::<u16>().is_ok()))
        .collect();
    // The first size is the initial one (or, if the resize came first,
    // the new one); the last is the new one.
    assert_eq!(sizes.len(), 2, "{out:?}");
    assert!(["25 90", "40 120"].contains(&sizes[0]), "{out:?}");
    assert_eq!(sizes[1], "40 120", "{out:?}");
    assert!(out.contains("/dev/pts/"), "{out:?}");
    // The container's process is laid out at random (its persona has no
    // ADDR_NO_RANDOMIZE), also when the guest, under software emulation,
    // keeps its runtime helpers at one layout (and says so).
    assert!(out.contains("persona=00000000"), "{out:?}");
    let kvm = std::fs::read_dir(xdg.join("cocoon/run"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".kvm-probe"))
        .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|v| v.trim() == "kvm"));
    let log = std::fs::read_to_string(&console).unwrap();
    assert_eq!(
        log.contains("the runtime helpers keep one layout"),
        !kvm,
        "kvm: {kvm}\n{log}"
    );
    // Under emulation a zygote forks the runtime helpers, and every
    // helper came from it: it never fell back (no warning names it).
    assert_eq!(
        log.contains("the runtime helpers are forked by a zygote"),
        !kvm,
        "kvm: {kvm}\n{log}"
    );
    assert!(
        !log.contains("zygote:") && !log.contains("started as a new process"),
        "{log}"
    );
    let _ = std::fs::remove_file(&console);

    // An image that does not exist: a clear error, not a hang.
    let o = run(&reg, &[&format!("{}/nope:1", reg.addr)], None);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("nope"), "{}", text(&o.stderr));
    // A failed run keeps its guest console and says where.
    let kept = text(&o.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("guest console: ").map(PathBuf::from))
        .expect("console path");
    assert!(
        std::fs::read_to_string(&kept)
            .unwrap()
            .contains("agent ready")
    );
    std::fs::remove_file(kept).unwrap();
    // (Only this test's VMs: the others run concurrently.)
    let mine = xdg.to_str().unwrap();
    assert!(qemu_left(mine).is_empty(), "{:?}", qemu_left(mine));

    // The layer content was inside the guest only: a process there read it.
    let o = run(&reg, &[&image, "--", "cat", "/etc/marker"], None);
    assert_eq!(text(&o.stdout), MARKER, "{}", text(&o.stderr));
    // Runs leave nothing behind: no VM state, no console log.
    assert!(
        run_state(&xdg).is_empty(),
        "left behind: {:?}",
        run_state(&xdg)
    );

    // kill -9 of `cocoon run` takes its VM with it.
    let console = dir.path().join("killed.console.log");
    let mut child = run_cmd(
        &reg,
        &xdg,
        &[
            "--console-log",
            console.to_str().unwrap(),
            &image,
            "--",
            "sleep",
            "1000",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let id_part = format!("run-{}-", child.id());
    let t = std::time::Instant::now();
    while !std::fs::read_to_string(&console).is_ok_and(|c| c.contains("container started")) {
        assert!(t.elapsed().as_secs() < 120, "the container did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        !qemu_left(&id_part).is_empty(),
        "QEMU runs while the container does"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let t = std::time::Instant::now();
    while !qemu_left(&id_part).is_empty() {
        assert!(
            t.elapsed().as_secs() < 20,
            "left: {:?}",
            qemu_left(&id_part)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The next run collects the dead run's state.
    let o = run(&reg, &[&image, "--", "echo", "ok"], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        run_state(&xdg).is_empty(),
        "left behind after kill -9: {:?}",
        run_state(&xdg)
    );
    let hits = grep(&xdg, MARKER);
    assert!(hits.is_empty(), "layer content on the host: {hits:?}");

    // Under an agent policy that pins another manifest digest, the guest
    // resolves the image, judges it and fetches nothing more: the image's
    // layers are gone from the registry, yet the refusal is the policy's.
    let other = push_busybox_salted(&reg, "busybox:unpinned", &["sh"], "unpinned");
    let top = reg.drop_layers("busybox", "unpinned");
    let mut policy = String::from("package agent_policy\nimport rego.v1\n");
    for r in [
        "CreateSandboxRequest",
        "CreateContainerRequest",
        "StartContainerRequest",
        "WaitProcessRequest",
        "SignalProcessRequest",
        "RemoveContainerRequest",
        "DestroySandboxRequest",
        "ReadStreamRequest",
        "WriteStreamRequest",
        "CloseStdinRequest",
        "UpdateInterfaceRequest",
        "UpdateRoutesRequest",
        "ForwardLoopbackRequest",
        "GuestDetailsRequest",
        "AgentStatsRequest",
        "GetOOMEventRequest",
    ] {
        policy.push_str(&format!("default {r} := true\n"));
    }
    policy.push_str(&format!(
        "default PullImageRequest := false\nPullImageRequest if input.manifest_digest == \"sha256:{}\"\n\
         reasons.PullImageRequest contains sprintf(\"manifest_digest: %s is not pinned\", [input.manifest_digest])\n",
        "0".repeat(64)
    ));
    let initdata = format!(
        "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"cdh.toml\" = '''\n[image]\ninsecure_registries = [\"{}\"]\n'''\n\"policy.rego\" = '''\n{policy}'''\n",
        reg.addr
    );
    let init = dir.path().join("pinned.toml");
    std::fs::write(&init, initdata).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .env("XDG_RUNTIME_DIR", &xdg)
        .args(["run", "--tee", "none", "--memory", "512", "--init-data"])
        .arg(&init)
        .arg("--guest-image")
        .arg(guest_image())
        .arg(&other)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "PullImageRequest is blocked by policy: manifest_digest: {} is not pinned",
            top
        )),
        "{err}"
    );
}

#[test]
fn exec_signals_and_stats_through_the_pod_library() {
    use cocoon_hypervisor::{Mode, Qemu, UserNetwork, VmSpec};
    use cocoon_pod::PodVm;
    use cocoon_pod::container::ContainerConfig;
    need("qemu-system-x86_64");
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start(dir.path());
    let image = push_busybox(&reg, "busybox:2");
    let img = guest_image();
    let port: u16 = reg.addr.rsplit(':').next().unwrap().parse().unwrap();
    // Initdata naming the plain-HTTP registry, as `cocoon run` makes it.
    let initdata = format!(
        "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"cdh.toml\" = '''\n[image]\ninsecure_registries = [\"{}\"]\n'''\n",
        reg.addr
    );
    let spec = VmSpec {
        id: "exec-test".into(),
        mode: Mode::None,
        accel: None,
        vcpus: 1,
        memory_mib: 512,
        kernel: img.join("vmlinuz"),
        initrd: img.join("initrd.img"),
        cmdline: std::fs::read_to_string(img.join("cmdline")).unwrap(),
        firmware: None,
        initdata: Some(initdata),
        state_dir: dir.path().join("vm"),
        console_log: dir.path().join("console.log"),
        network: Some(UserNetwork {
            forwards: vec![port],
            relay: vec![env!("CARGO_BIN_EXE_cocoon").into(), "__tcp-relay".into()],
        }),
        vtpm_ca: None,
        pod_network: None,
    };
    let console = spec.console_log.clone();
    rt().block_on(async {
        let pod = PodVm::start(
            &Qemu::new().unwrap(),
            spec,
            std::time::Duration::from_secs(120),
        )
        .await
        .unwrap();
        let a = &pod.agent;
        let r: Result<(), String> = async {
            let e = |e: cocoon_pod::PodError| e.to_string();
            a.setup_user_network(&[port], true).await.map_err(e)?;
            a.create_sandbox("exec-test", "pod").await.map_err(e)?;
            let c = ContainerConfig {
                id: "c1".into(),
                image: image.clone(),
                args: vec!["sleep".into(), "1000".into()],
                ..Default::default()
            };
            a.run_container(&c).await.map_err(e)?;
            // A second process in the running container sees its files.
            a.exec("c1", "e1", &["cat".into(), "/etc/greeting".into()])
                .await
                .map_err(e)?;
            let out = a.read("c1", "e1", false).await.map_err(e)?;
            assert_eq!(text(&out), GREETING);
            assert_eq!(a.wait("c1", "e1").await.map_err(e)?, 0);
            // SIGTERM to an exec'd process: 128 + 15.
            a.exec("c1", "e2", &["sleep".into(), "1000".into()])
                .await
                .map_err(e)?;
            a.signal("c1", "e2", 15).await.map_err(e)?;
            assert_eq!(a.wait("c1", "e2").await.map_err(e)?, 143);
            // Same exec id twice is refused.
            let dup = a.exec("c1", "e2", &["true".into()]).await;
            assert!(dup.is_err_and(|e| e.to_string().contains("already exists")));
            let stats = a.stats("c1").await.map_err(e)?;
            assert!(stats.cgroup_stats.pids_stats.current >= 1, "{stats:?}");
            assert!(stats.cgroup_stats.memory_stats.usage.usage > 0, "{stats:?}");
            // SIGKILL to the container's init: 128 + 9.
            a.signal("c1", "", 9).await.map_err(e)?;
            assert_eq!(a.wait("c1", "").await.map_err(e)?, 137);
            a.remove_container("c1").await.map_err(e)?;
            // Gone: further calls name the container.
            let gone = a.wait("c1", "").await;
            assert!(gone.is_err_and(|e| e.to_string().contains("c1")));
            Ok(())
        }
        .await;
        pod.stop().await.unwrap();
        if let Err(e) = r {
            panic!(
                "{e}\nconsole:\n{}",
                std::fs::read_to_string(&console).unwrap_or_default()
            );
        }
    });
}

#[test]
fn attested_pod_gets_its_image_key_only_with_its_measurements() {
    need("qemu-system-x86_64");
    need("swtpm");
    need("swtpm_setup");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let reg = Registry::start(d);
    let plain = push_busybox(&reg, "busybox:3");
    let a = reg.addr.clone();
    let img = guest_image();
    let manifest = cocoon_guest_image::Manifest::load(&img).unwrap();

    // The host certifies each pod's vTPM with a local CA; the owner's
    // trustee accepts that CA (as hardware: the owner's declaration).
    let ca = d.join("vtpm-ca");
    let certs = ok(&cocoon(
        &["tpm", "vtpm-ca", "--dir", ca.to_str().unwrap()],
        &[],
    ));
    let certs = certs.trim();
    assert!(Path::new(certs).join("root.pem").is_file(), "{certs}");
    let t = TrusteeProc::start_with(&d.join("trustee"), &[], &["--tpm-hardware-ek-ca", certs]);
    let admin = |args: &[&str]| ok(&t.admin(args));

    // The owner encrypts the image with a key held by the trustee.
    let kid = "kbs:///default/image-key/pod";
    let kek: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(29).wrapping_add(7))
        .collect();
    let kek_file = write(d, "kek.bin", &kek);
    let enc = format!("{a}/busybox:enc");
    encrypt_with_trustee_key(&t, &a, &plain, &enc, kid, &kek_file);

    // Reference values: what the guest image build computed.
    let init_text = owner_initdata(&reg, &t, None);
    let init = write(d, "initdata.toml", init_text.as_bytes());
    let digest = cocoon_types::initdata::InitData::from_payload("toml", &init_text)
        .unwrap()
        .digest;
    // `cocoon run --print-init-data` shows what the trustee must pin.
    let o = Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .args(["run", "--guest-image"])
        .arg(&img)
        .args(["--print-init-data", "--init-data"])
        .arg(&init)
        .arg(&plain)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), init_text);
    assert!(
        text(&o.stderr).contains(&format!("sha256): {}", hex::encode(&digest))),
        "{}",
        text(&o.stderr)
    );
    // `cocoon measure vtpm` computes them from the artifacts and
    // registers them: no value is copied from a boot (but the platform's
    // PCRs 0 and 1, below).
    let cmdline = std::fs::read_to_string(img.join("cmdline")).unwrap();
    let mut measure = Command::new(env!("CARGO_BIN_EXE_cocoon"));
    measure
        .args([
            "measure",
            "vtpm",
            "--ovmf",
            "/usr/share/ovmf/OVMF.fd",
            "--kernel",
        ])
        .arg(img.join("vmlinuz"))
        .arg("--initrd")
        .arg(img.join("initrd.img"))
        .args([
            "--append",
            cmdline.trim_end(),
            "--memory",
            "512",
            "--init-data",
        ])
        .arg(&init)
        .args([
            "--register",
            &t.url,
            "--kbs-cert",
            &t.cert_path(),
            "--admin-key",
        ])
        .arg(t.admin_key());
    let measured = ok(&measure.output().unwrap());
    // The same message the image build wrote, plus the initdata's.
    let built =
        std::fs::read_to_string(img.join(cocoon_guest_image::reference_values_file(512))).unwrap();
    let payload = |m: &str| -> serde_json::Value {
        use base64::Engine;
        let v: serde_json::Value = serde_json::from_str(m).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(v["payload"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    let (measured, built) = (payload(&measured), payload(&built));
    for (k, v) in built.as_object().unwrap() {
        assert_eq!(&measured[k], v, "{k}");
    }
    assert_eq!(measured["init_data"][0], hex::encode(&digest));
    let listed = admin(&["list-reference-values"]);
    for (name, value) in manifest.measurements.vtpm_reference_values(512).unwrap() {
        assert!(
            listed.contains(&name) && listed.contains(&value),
            "{listed}"
        );
    }
    assert!(listed.contains(&hex::encode(&digest)), "{listed}");
    // The first pod: everything the image build computed matches, and the
    // trustee names exactly the platform's own PCRs (firmware code, VMM
    // configuration) as unpinned. The owner pins those as the platform's.
    let xdg = d.join("xdg");
    let run_enc = |init: &Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_cocoon"))
            .env("XDG_RUNTIME_DIR", &xdg)
            .args(["run", "--memory", "512", "--guest-image"])
            .arg(&img)
            .args(["--init-data", init.to_str().unwrap(), "--vtpm-ca"])
            .arg(&ca)
            .arg(&enc)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (o.status.code(), text(&o.stdout), text(&o.stderr))
    };
    let denied = |stderr: &str| {
        assert!(stderr.contains("denied"), "{stderr}");
        assert!(!stderr.contains(GREETING.trim()), "{stderr}");
    };
    let (code, out, err) = run_enc(&init);
    assert_ne!(code, Some(0), "{out}{err}");
    denied(&err);
    let why = t.explain_until(10, |e| e.contains("boot PCR 0 is not pinned"));
    let mut platform = Vec::new();
    for n in [0, 1] {
        let needle = format!("this guest has tpm.pcr0{n}=");
        let at = why
            .find(&needle)
            .unwrap_or_else(|| panic!("PCR {n} not named: {why}"));
        platform.push((
            n,
            why[at + needle.len()..at + needle.len() + 64].to_string(),
        ));
    }
    for n in [2, 3, 4, 5, 6, 7, 9] {
        assert!(
            !why.contains(&format!("boot PCR {n} ")) && !why.contains(&format!("tpm.pcr0{n}=")),
            "PCR {n} differs from the image build's value: {why}"
        );
    }
    assert!(
        !why.contains("tpm.pcr12") && !why.contains("init_data="),
        "{why}"
    );
    // The vTPM's key was enrolled by its EK certificate under the host's CA.
    let aks = admin(&["list-tpm-aks"]);
    assert!(
        aks.contains("by EK certificate under swtpm-localca, hardware-backed"),
        "{aks}"
    );
    for (n, v) in &platform {
        admin(&["add-reference-value", &format!("tpm_pcr{n}"), v]);
    }

    // Pinned: the guest gets the key, decrypts in the guest, runs.
    let (code, out, err) = run_enc(&init);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, GREETING, "{err}");

    // A changed PCR reference value: refused, and explain names the PCR.
    admin(&["add-reference-value", "tpm_pcr9", &"ab".repeat(32)]);
    let (code, out, err) = run_enc(&init);
    assert_ne!(code, Some(0), "{out}{err}");
    denied(&err);
    let why = t.explain_until(3, |e| e.contains("tpm.pcr09="));
    assert!(
        why.contains(&format!(
            "claim tpm.pcr09={} is not in reference value 'tpm_pcr9'",
            manifest.measurements.vtpm_pcr9_sha256
        )),
        "{why}"
    );
    admin(&[
        "add-reference-value",
        "tpm_pcr9",
        &manifest.measurements.vtpm_pcr9_sha256,
    ]);

    // Other initdata (another agent policy, one that allows everything):
    // bound into PCR 8 by the guest, so the trustee sees it and refuses it.
    let other = write(
        d,
        "other.toml",
        owner_initdata(
            &reg,
            &t,
            Some("package agent_policy\ndefault AllowRequestsFailingPolicy := true\n"),
        )
        .as_bytes(),
    );
    let (code, out, err) = run_enc(&other);
    assert_ne!(code, Some(0), "{out}{err}");
    denied(&err);
    // An agent policy that does not load refuses every request and stops
    // the guest (whichever the host meets first).
    let broken = write(
        d,
        "broken.toml",
        owner_initdata(&reg, &t, Some("package other")).as_bytes(),
    );
    let (code, out, err) = run_enc(&broken);
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("agent policy did not load (the policy's package is other")
            || err.contains("the VM ended"),
        "{err}"
    );
    let why = t.explain_until(3, |e| e.contains("is not in reference value 'init_data'"));
    assert!(
        why.contains("is not in reference value 'init_data'"),
        "{why}"
    );

    // Nothing of the image's plaintext, nor the key, on the host side of
    // the runs (state, console logs of the failed runs), and nothing left.
    let kek_hex = hex::encode(&kek);
    for needle in [MARKER, GREETING.trim(), kek_hex.as_str()] {
        let hits = grep(&xdg, needle);
        assert!(hits.is_empty(), "{needle} found in {hits:?}");
    }
    assert!(
        run_state(&xdg)
            .iter()
            .all(|p| p.extension().is_some_and(|e| e == "log"))
    );
    let left = qemu_left(xdg.to_str().unwrap());
    assert!(left.is_empty(), "{left:?}");
}
