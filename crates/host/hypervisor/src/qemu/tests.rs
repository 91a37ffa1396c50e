use super::*;

fn spec(mode: Mode) -> VmSpec {
    VmSpec {
        id: "pod1".into(),
        mode,
        accel: None,
        vcpus: 2,
        memory_mib: 512,
        kernel: "/img/vmlinuz".into(),
        initrd: "/img/initrd.img".into(),
        cmdline: "console=ttyS0 quiet".into(),
        firmware: None,
        initdata: None,
        state_dir: "/run/cocoon/vm/pod1".into(),
        console_log: "/var/log/cocoon/pod1.log".into(),
        network: None,
        vtpm_ca: None,
        pod_network: None,
    }
}

fn layout(disk: bool) -> Layout {
    Layout {
        agent_socket: "cocoon-agent-pod1-7".into(),
        initdata_disk: disk.then(|| "/run/cocoon/vm/pod1/initdata.img".into()),
        vsock_cid: None,
    }
}

/// The value following `flag` (every occurrence).
fn values<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
    a.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

#[test]
fn plain_vm_under_emulation() {
    let a = args(&spec(Mode::None), Accel::Tcg, &layout(false), None, None).unwrap();
    assert_eq!(values(&a, "-machine"), ["q35,accel=tcg"]);
    assert_eq!(values(&a, "-cpu"), ["max,-erms,-fsrm"]);
    assert_eq!(values(&a, "-smp"), ["2"]);
    assert_eq!(values(&a, "-m"), ["512M"]);
    assert_eq!(values(&a, "-kernel"), ["/img/vmlinuz"]);
    assert_eq!(values(&a, "-initrd"), ["/img/initrd.img"]);
    assert_eq!(values(&a, "-append"), ["console=ttyS0 quiet"]);
    // The console goes through a pipe the driver bounds, not to a file.
    assert_eq!(values(&a, "-serial"), ["stdio"]);
    assert!(values(&a, "-bios").is_empty(), "no firmware in plain mode");
    assert!(
        a.iter().any(|x| x == "-no-reboot"),
        "a guest panic ends the VM"
    );
    assert!(
        values(&a, "-chardev")
            .contains(&"socket,id=agent,path=cocoon-agent-pod1-7,abstract=on,server=on,wait=off")
    );
    assert!(
        values(&a, "-device").contains(&"virtserialport,bus=vser0.0,chardev=agent,name=agent.0")
    );
    assert!(values(&a, "-tpmdev").is_empty());
    assert!(values(&a, "-drive").is_empty());
}

#[test]
fn vtpm_has_ovmf_and_a_tpm_on_a_passed_socket() {
    let a = args(
        &spec(Mode::Vtpm),
        Accel::Tcg,
        &layout(true),
        Some(&[1; 32]),
        None,
    )
    .unwrap();
    assert_eq!(values(&a, "-bios"), ["/usr/share/ovmf/OVMF.fd"]);
    assert!(values(&a, "-chardev").contains(&"socket,id=chrtpm,fd=3"));
    assert_eq!(values(&a, "-tpmdev"), ["emulator,id=tpm0,chardev=chrtpm"]);
    assert!(values(&a, "-device").contains(&"tpm-tis,tpmdev=tpm0"));
    assert_eq!(
        values(&a, "-drive"),
        ["file=/run/cocoon/vm/pod1/initdata.img,if=none,id=initdata,format=raw,readonly=on"]
    );
    assert!(values(&a, "-device").contains(&"virtio-blk-pci,drive=initdata,serial=initdata"));
    // vTPM binds initdata in the guest (PCR 8), not in QEMU's arguments.
    assert!(
        !a.iter()
            .any(|x| x.contains("mrconfigid") || x.contains("host-data"))
    );
}

#[test]
fn tdx_object_binds_initdata_in_mrconfigid() {
    let sha384 = [0xab; 48];
    let a = args(
        &spec(Mode::Tdx),
        Accel::Kvm,
        &layout(true),
        Some(&sha384),
        None,
    )
    .unwrap();
    assert_eq!(
        values(&a, "-machine"),
        ["q35,accel=kvm,kernel_irqchip=split,confidential-guest-support=tdx"]
    );
    assert_eq!(values(&a, "-cpu"), ["host"]);
    let obj = values(&a, "-object")[0];
    assert_eq!(
        obj,
        format!(
            r#"{{"qom-type":"tdx-guest","id":"tdx","mrconfigid":"{}","quote-generation-socket":{{"type":"unix","path":"/var/run/tdx-qgs/qgs.socket"}}}}"#,
            B64.encode([0xab; 48])
        )
    );
    assert_eq!(values(&a, "-bios"), ["/usr/share/ovmf/OVMF.inteltdx.fd"]);
    // A sha256 digest is zero-padded to MRCONFIGID's 48 bytes.
    let a = args(
        &spec(Mode::Tdx),
        Accel::Kvm,
        &layout(true),
        Some(&[1; 32]),
        None,
    )
    .unwrap();
    let mut padded = vec![1u8; 32];
    padded.resize(48, 0);
    assert!(values(&a, "-object")[0].contains(&B64.encode(&padded)));
    // Without initdata there is no mrconfigid at all.
    let a = args(&spec(Mode::Tdx), Accel::Kvm, &layout(false), None, None).unwrap();
    assert!(!values(&a, "-object")[0].contains("mrconfigid"));
}

#[test]
fn snp_object_cuts_initdata_to_host_data() {
    let cpu = SnpCpu::from_ebx(0x0000_0073);
    assert_eq!(
        cpu,
        SnpCpu {
            cbitpos: 51,
            reduced_phys_bits: 1
        }
    );
    let sha384: Vec<u8> = (0..48).collect();
    let a = args(
        &spec(Mode::Snp),
        Accel::Kvm,
        &layout(true),
        Some(&sha384),
        Some(cpu),
    )
    .unwrap();
    assert_eq!(
        values(&a, "-machine"),
        ["q35,accel=kvm,confidential-guest-support=snp,memory-backend=ram1"]
    );
    assert_eq!(values(&a, "-cpu"), ["EPYC-v4"]);
    let objs = values(&a, "-object");
    assert_eq!(
        objs[0],
        format!(
            "sev-snp-guest,id=snp,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on,policy=0x30000,host-data={}",
            B64.encode(&sha384[..32])
        )
    );
    assert_eq!(
        objs[1],
        "memory-backend-memfd,id=ram1,size=512M,share=true,prealloc=false"
    );
    assert_eq!(values(&a, "-bios"), ["/usr/share/ovmf/AMDSEV.fd"]);
    // No SEV-SNP CPU: a clear error, not a broken command line.
    let err = args(&spec(Mode::Snp), Accel::Kvm, &layout(false), None, None).unwrap_err();
    assert!(err.to_string().contains("SEV-SNP"), "{err}");
}

#[test]
fn tees_need_kvm_and_sizes_are_checked() {
    for m in [Mode::Tdx, Mode::Snp] {
        let err = args(&spec(m), Accel::Tcg, &layout(false), None, None).unwrap_err();
        assert!(err.to_string().contains("needs KVM"), "{err}");
    }
    let mut s = spec(Mode::None);
    s.vcpus = 0;
    assert!(args(&s, Accel::Tcg, &layout(false), None, None).is_err());
    let mut s = spec(Mode::None);
    s.memory_mib = 16;
    assert!(args(&s, Accel::Tcg, &layout(false), None, None).is_err());
    let mut s = spec(Mode::Vtpm);
    s.firmware = Some("/fw/OVMF.custom.fd".into());
    let a = args(&s, Accel::Tcg, &layout(false), None, None).unwrap();
    assert_eq!(values(&a, "-bios"), ["/fw/OVMF.custom.fd"]);
}

/// Where the host has vhost-vsock the guest gets a vsock device (the
/// serial port stays, so one guest image serves both hosts).
#[test]
fn vsock_device_when_the_host_has_one() {
    let mut l = layout(false);
    assert!(
        !values(
            &args(&spec(Mode::None), Accel::Kvm, &l, None, None).unwrap(),
            "-device"
        )
        .iter()
        .any(|d| d.starts_with("vhost-vsock"))
    );
    l.vsock_cid = Some(1234);
    let a = args(&spec(Mode::None), Accel::Kvm, &l, None, None).unwrap();
    assert!(values(&a, "-device").contains(&"vhost-vsock-pci,id=vsock0,guest-cid=1234"));
    assert!(
        values(&a, "-device").contains(&"virtserialport,bus=vser0.0,chardev=agent,name=agent.0")
    );
    for _ in 0..100 {
        assert!(new_cid() >= 3);
    }
}

/// Nothing from a spec can add QEMU options: ids are plain names and
/// paths inside option lists carry no comma.
#[test]
fn spec_cannot_inject_qemu_options() {
    for id in [
        "",
        "a,b",
        "pod 1",
        "x".repeat(65).as_str(),
        "../x",
        ".",
        "..",
        ".hidden",
    ] {
        let mut s = spec(Mode::None);
        s.id = id.into();
        assert!(
            args(&s, Accel::Tcg, &layout(false), None, None).is_err(),
            "id {id:?}"
        );
    }
    let mut s = spec(Mode::None);
    s.pod_network = Some(crate::PodNic {
        netns: "/var/run/netns/cni-1".into(),
        tap: "tap0".into(),
        mac: "aa:bb:cc:dd:ee:ff,romfile=/x".into(),
    });
    assert!(args(&s, Accel::Tcg, &layout(false), None, None).is_err());
    let mut s = spec(Mode::None);
    s.console_log = "/tmp/x,readonly=on".into();
    assert!(args(&s, Accel::Tcg, &layout(false), None, None).is_err());
    let mut l = layout(true);
    l.initdata_disk = Some("/run/a,format=qcow2/initdata.img".into());
    assert!(args(&spec(Mode::Vtpm), Accel::Tcg, &l, None, None).is_err());
}

#[test]
fn mode_names() {
    assert_eq!("vtpm".parse::<Mode>(), Ok(Mode::Vtpm));
    assert!(
        "sgx"
            .parse::<Mode>()
            .unwrap_err()
            .contains("none, vtpm, tdx or snp")
    );
}

/// A state directory whose owner is gone is removed; a live one is kept.
#[test]
fn stale_state_is_collected() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let dead = dir.path().join("dead");
    let other = dir.path().join("not-a-vm");
    for d in [&live, &dead, &other] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(live.join(OWNER), owner_tag(std::process::id()).unwrap()).unwrap();
    // Our pid with another start time: a reused pid, so the owner is gone.
    std::fs::write(dead.join(OWNER), format!("{} 1", std::process::id())).unwrap();
    gc_stale(dir.path());
    assert!(live.exists());
    assert!(!dead.exists());
    assert!(
        other.exists(),
        "directories that are not VM state are left alone"
    );
}

#[test]
fn the_console_log_is_bounded_and_the_guest_never_blocks() {
    let (r, mut w) = std::io::pipe().unwrap();
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("console.log");
    let f = std::fs::File::create(&log).unwrap();
    let copier = std::thread::spawn(move || copy_capped(r, f, 100_000));
    // Ten times the bound: every byte is read (the writer finishes).
    let chunk = vec![b'x'; 10_000];
    for _ in 0..100 {
        std::io::Write::write_all(&mut w, &chunk).unwrap();
    }
    drop(w);
    copier.join().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.starts_with(&"x".repeat(100_000)));
    assert!(
        text.contains("console log truncated after 100000 bytes"),
        "{}",
        &text[100_000..]
    );
    assert!(text.len() < 100_200);
    // Under the bound, the log is exactly what the guest wrote.
    let (r, mut w) = std::io::pipe().unwrap();
    let mut out = Vec::new();
    std::io::Write::write_all(&mut w, b"agent ready\n").unwrap();
    drop(w);
    copy_capped(r, &mut out, 100_000);
    assert_eq!(out, b"agent ready\n");
}

#[test]
fn relay_slots_bound_the_connections_of_a_vm() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("slots");
    let held: Vec<_> = (0..3)
        .map(|_| crate::relay_slot(&dir, 3).unwrap().expect("a free slot"))
        .collect();
    // All taken: the next connection is refused.
    assert!(crate::relay_slot(&dir, 3).unwrap().is_none());
    // A connection that ends frees its slot.
    drop(held);
    assert!(crate::relay_slot(&dir, 3).unwrap().is_some());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // The relay itself refuses once the VM holds all its connections,
    // before it connects anywhere.
    let full = d.path().join("full");
    let _all: Vec<_> = (0..crate::MAX_RELAYS)
        .map(|_| {
            crate::relay_slot(&full, crate::MAX_RELAYS)
                .unwrap()
                .unwrap()
        })
        .collect();
    let e = crate::tcp_relay("127.0.0.1:1", Some(&full)).unwrap_err();
    assert!(e.to_string().contains("forwarded connections"), "{e}");
}

#[test]
fn user_network_reaches_only_the_forwarded_loopback_ports() {
    let plain = args(&spec(Mode::None), Accel::Tcg, &layout(false), None, None).unwrap();
    assert!(values(&plain, "-netdev").is_empty(), "no NIC unless asked");
    let mut s = spec(Mode::None);
    s.network = Some(crate::UserNetwork {
        forwards: vec![5000, 8443],
        relay: vec!["/usr/bin/cocoon".into(), "__tcp-relay".into()],
    });
    let a = args(&s, Accel::Tcg, &layout(false), None, None).unwrap();
    let slots = s.state_dir.join("relay-slots").display().to_string();
    assert_eq!(
        values(&a, "-netdev"),
        [format!(
            "user,id=net0,restrict=on,net=10.0.2.0/24,\
             guestfwd=tcp:10.0.2.100:5000-cmd:/usr/bin/cocoon __tcp-relay 127.0.0.1:5000 {slots},\
             guestfwd=tcp:10.0.2.100:8443-cmd:/usr/bin/cocoon __tcp-relay 127.0.0.1:8443 {slots}"
        )]
    );
    // A state directory that is not a plain word is refused too.
    let mut odd = s.clone();
    odd.state_dir = "/run/my vm".into();
    assert!(matches!(
        args(&odd, Accel::Tcg, &layout(false), None, None),
        Err(VmError::Invalid(_))
    ));
    // A relay path that would escape the option list or the shell.
    for bad in ["/opt/my app/cocoon", "/x,hostfwd=tcp::22-:22", "/x;rm", ""] {
        let mut s = s.clone();
        s.network.as_mut().unwrap().relay = vec![bad.into()];
        assert!(
            matches!(
                args(&s, Accel::Tcg, &layout(false), None, None),
                Err(VmError::Invalid(_))
            ),
            "{bad}"
        );
    }
    assert!(
        values(&a, "-device")
            .contains(&"virtio-net-pci,netdev=net0,mac=52:54:00:c0:c0:01,romfile=")
    );
}

/// The descriptor numbers `ls /proc/self/fd` wrote to `listing`.
fn listed(listing: &Path) -> Vec<i32> {
    std::fs::read_to_string(listing)
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

/// `ls /proc/self/fd`, with `before_exec` run between fork and exec
/// when given, and the descriptors it showed.
fn fds_of(before_exec: Option<fn() -> std::io::Result<()>>, listing: &Path) -> Vec<i32> {
    let mut cmd = Command::new("ls");
    cmd.arg("/proc/self/fd")
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(listing).unwrap()))
        .stderr(Stdio::null());
    if let Some(f) = before_exec {
        // SAFETY: the callers' functions make system calls only.
        unsafe { cmd.pre_exec(f) };
    }
    assert!(cmd.status().unwrap().success());
    listed(listing)
}

/// `sh` running `script` with its output into `out`, and no stdio.
fn sh_writing(script: &str, out: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{script} > \"$1\""))
        .arg("sh")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// An inheritable (not close-on-exec) copy of `fd` at `at` or above, as
/// a shim gets descriptors from containerd.
fn inheritable(fd: &impl AsRawFd, at: i32) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: F_DUPFD duplicates a descriptor we hold; the copy is ours.
    let d = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD, at) };
    assert!(d >= at);
    // SAFETY: a fresh descriptor.
    unsafe { OwnedFd::from_raw_fd(d) }
}

/// What a started process holds besides its stdio: exactly the
/// descriptors it was given, at their numbers, and none of the ones its
/// starter had open without close-on-exec, below or above those numbers.
#[tokio::test]
async fn started_processes_hold_only_the_descriptors_given_them() {
    let dir = tempfile::tempdir().unwrap();
    let (r, w) = std::io::pipe().unwrap();
    // Strays below and above the numbers given.
    let low = inheritable(&r, 100);
    let high = inheritable(&w, 300);
    // One given descriptor already at its number (close-on-exec, as every
    // descriptor Rust opens), one elsewhere.
    let (a, _a_end) = std::io::pipe().unwrap();
    let (b, _b_end) = std::io::pipe().unwrap();
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we hold.
    let at = unsafe { libc::fcntl(a.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 200) };
    assert!(at >= 200);
    // SAFETY: a fresh descriptor.
    let a = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(at) };
    let listing = dir.path().join("fds");
    let cmd = sh_writing("ls /proc/self/fd", &listing);
    let kept = spawn_kept(cmd, "lister", vec![(a, at), (OwnedFd::from(b), 150)]).unwrap();
    assert_eq!(wait_kept(&kept).await, VmExit::Exited(0));
    let fds = listed(&listing);
    assert!(fds.contains(&at) && fds.contains(&150), "{fds:?}");
    for s in [&low, &high] {
        assert!(
            !fds.contains(&s.as_raw_fd()),
            "{fds:?} has {}",
            s.as_raw_fd()
        );
    }
    // 0-2, the two given, and the one `ls` opened to list the directory.
    assert!(fds.len() <= 6, "{fds:?}");
}

/// The fallback for kernels without `close_range`'s close-on-exec flag
/// leaves nothing inheritable either.
#[test]
fn listed_descriptors_are_marked_close_on_exec() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _w) = std::io::pipe().unwrap();
    let stray = inheritable(&r, 100);
    let listing = dir.path().join("fds");
    let fds = fds_of(Some(|| cloexec_listed(3)), &listing);
    assert!(!fds.contains(&stray.as_raw_fd()), "{fds:?}");
    assert!(fds.len() <= 4, "{fds:?}");
    // Without it, the stray is inherited: the check above can fail.
    let fds = fds_of(None, &listing);
    assert!(fds.contains(&stray.as_raw_fd()), "{fds:?}");
}

#[test]
fn library_search_paths_keep_only_absolute_directories() {
    use std::ffi::OsStr;
    let p = |v: &str| absolute_search_path(OsStr::new(v)).map(|s| s.into_string().unwrap());
    // containerd's, with its trailing empty entry (the current directory).
    assert_eq!(
        p("/opt/containerd/lib:"),
        Some("/opt/containerd/lib".into())
    );
    assert_eq!(p(":/a::lib:./b:/c/d"), Some("/a:/c/d".into()));
    // glibc splits at `;` too.
    assert_eq!(p("/a;lib:/b;"), Some("/a:/b".into()));
    assert_eq!(p(""), None);
    assert_eq!(p(":lib:."), None);
}

/// QEMU and swtpm get the library path without its relative entries, or
/// none when nothing absolute is left.
#[tokio::test]
async fn started_processes_search_libraries_in_absolute_directories_only() {
    let dir = tempfile::tempdir().unwrap();
    for (given, seen) in [
        ("/opt/containerd/lib:", "/opt/containerd/lib"),
        (":.", "unset"),
    ] {
        let out = dir.path().join("env");
        let mut cmd = sh_writing("echo \"${LD_LIBRARY_PATH-unset}\"", &out);
        cmd.env("LD_LIBRARY_PATH", given);
        let kept = spawn_kept(cmd, "env", vec![]).unwrap();
        assert_eq!(wait_kept(&kept).await, VmExit::Exited(0));
        assert_eq!(
            std::fs::read_to_string(&out).unwrap().trim(),
            seen,
            "{given}"
        );
    }
}
