//! `cocoon bench pod`: pod VM boot to agent ready against a floor measured
//! in the same run: QEMU booting the same kernel with the same firmware
//! and vTPM and an initramfs whose init powers off at once.

use anyhow::{Context, Result};
use cocoon_hypervisor::{Hypervisor, Mode, Qemu, VmExit, VmSpec};
use cocoon_pod::PodVm;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `cocoon bench pod`.
#[derive(clap::Args, Debug)]
pub struct PodBenchArgs {
    /// A guest image directory (`cocoon guest build --out DIR`).
    #[arg(long, env = "COCOON_GUEST_IMAGE")]
    image: PathBuf,
    /// Runs per case (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// VM modes to measure.
    #[arg(long, value_delimiter = ',', default_value = "none,vtpm")]
    modes: Vec<String>,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 256)]
    memory: u32,
    /// A registry on the host's loopback (HOST:PORT, plain HTTP) to push a
    /// small busybox image to and time `cocoon run` of it.
    #[arg(long, value_name = "HOST:PORT")]
    registry: Option<String>,
    /// Also time `cocoon run` in vtpm mode of that image encrypted with a
    /// key a local trustee releases only after attestation (needs
    /// --registry).
    #[arg(long, requires = "registry")]
    attest: bool,
    /// Also time pods through Debian's containerd and CRI with the
    /// `cocoon` handler (the shim binary beside this one; needs
    /// --registry): RunPodSandbox to container running, by CRI call,
    /// against a plain QEMU boot of the same guest image to its agent's
    /// first answer (booted just before each pod) and the floor of the last
    /// mode; four pods at once, memory per pod, shim RSS.
    #[arg(long, requires = "registry")]
    cri: bool,
}

/// Pushes a one-layer busybox image that prints a line.
async fn push_small_image(registry: &str) -> Result<String> {
    push_image_with(registry, "cocoon-bench/busybox:1", &["/bin/echo", "hello"]).await
}

/// Pushes a one-layer busybox image (`sh`, `echo`, `sleep`) as
/// `registry/repo_tag` with `cmd` as its command.
pub async fn push_image_with(registry: &str, repo_tag: &str, cmd: &[&str]) -> Result<String> {
    use cocoon_image::owner::{LayerBuilder, push_image};
    let busybox = std::fs::read("/bin/busybox")
        .context("/bin/busybox is missing (Debian: apt-get install busybox-static)")?;
    let mut l = LayerBuilder::default();
    l.dir("bin")?;
    l.file("bin/busybox", 0o755, &busybox)?;
    l.symlink("bin/sh", "busybox")?;
    l.symlink("bin/echo", "busybox")?;
    l.symlink("bin/sleep", "busybox")?;
    let client =
        cocoon_image::registry::RegistryClient::new(cocoon_image::registry::RegistryConfig {
            insecure: [registry.to_string()].into(),
            ..Default::default()
        })
        .map_err(anyhow::Error::msg)?;
    let image = format!("{registry}/{repo_tag}");
    push_image(
        &client,
        &cocoon_image::reference::Reference::parse(&image)?,
        &[l.finish()?],
        cmd,
    )
    .await?;
    Ok(image)
}

/// The `ms=` of the first guest console line with `message`, in seconds.
fn guest_secs(console: &str, message: &str) -> Option<f64> {
    let line = console.lines().find(|l| l.contains(message))?;
    let ms = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ms="))?;
    Some(ms.parse::<f64>().ok()? / 1000.0)
}

/// `cocoon run` of `image` as a user runs it, with `flags`; wall time
/// and its `--timings` line, with what the guest's console says about
/// key release (attestation included) and the pull.
fn time_run(img: &Path, flags: &[String], image: &str, memory: u32) -> Result<(Duration, String)> {
    let exe = std::env::current_exe()?;
    let console = tempfile::NamedTempFile::new()?;
    let t = Instant::now();
    let o = std::process::Command::new(exe)
        .args(["run", "--timings", "--console-log"])
        .arg(console.path())
        .args(flags)
        .args(["--memory", &memory.to_string()])
        .arg("--guest-image")
        .arg(img)
        .arg(image)
        .stdin(std::process::Stdio::null())
        .output()?;
    let wall = t.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    anyhow::ensure!(
        o.status.success() && o.stdout == b"hello\n",
        "cocoon run failed ({}): {err}",
        o.status
    );
    let mut line = err
        .lines()
        .find_map(|l| l.strip_prefix("timings: "))
        .unwrap_or_default()
        .to_string();
    let guest = std::fs::read_to_string(console.path()).unwrap_or_default();
    if let Some(p) = guest_secs(&guest, "image pulled") {
        line.push_str(&format!("; guest: pull {p:.2}s"));
        if let Some(k) = guest_secs(&guest, "resource released") {
            line.push_str(&format!(", of which key release with attestation {k:.2}s"));
        }
        if let Some(e) = guest_secs(&guest, "TPM attestation key enrolled") {
            line.push_str(&format!(" (AK enrollment {e:.2}s)"));
        }
    }
    Ok((wall, line))
}

/// Runs this program with `args`; its standard output.
fn cocoon(args: &[&str]) -> Result<String> {
    let o = std::process::Command::new(std::env::current_exe()?)
        .args(args)
        .output()?;
    anyhow::ensure!(
        o.status.success(),
        "cocoon {} failed: {}",
        args.first().copied().unwrap_or_default(),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// A trustee of this program on a loopback port, stopped on drop.
struct Trustee {
    child: std::process::Child,
    url: String,
    dir: PathBuf,
}

impl Trustee {
    fn start(dir: &Path, args: &[&str]) -> Result<Self> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .arg("trustee")
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("COCOON_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(dir.with_extension("log"))?)
            .spawn()?;
        let mut out = std::io::BufReader::new(child.stdout.take().context("trustee stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        let Some(url) = line.trim().strip_prefix("cocoon trustee listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "the trustee did not start: {}",
                std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default()
            );
        };
        let url = url.to_string();
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        Ok(Self {
            child,
            url,
            dir: dir.to_path_buf(),
        })
    }

    fn cert(&self) -> String {
        self.dir.join("tls/cert.pem").display().to_string()
    }

    /// `cocoon SUB --url U --kbs-cert C --admin-key K ARGS` against this
    /// trustee (SUB: `admin`, `explain`).
    fn as_admin(&self, sub: &str, args: &[&str]) -> Result<String> {
        let key = self.dir.join("admin-key.pem").display().to_string();
        let cert = self.cert();
        let mut v = vec![
            sub,
            "--url",
            &self.url,
            "--kbs-cert",
            &cert,
            "--admin-key",
            &key,
        ];
        v.extend_from_slice(args);
        cocoon(&v)
    }

    /// `cocoon admin ARGS` against this trustee.
    fn admin(&self, args: &[&str]) -> Result<String> {
        self.as_admin("admin", args)
    }

    /// The values of `tpm.pcrNN` (hex) the newest denials report as unpinned.
    fn unpinned_pcrs(&self) -> Result<Vec<(u32, String)>> {
        let json = self.as_admin("explain", &["--json"])?;
        let mut found = Vec::new();
        for n in 0..24u32 {
            let needle = format!("this guest has tpm.pcr{n:02}=");
            if let Some(at) = json.find(&needle) {
                let v = json[at + needle.len()..]
                    .chars()
                    .take(64)
                    .collect::<String>();
                found.push((n, v));
            }
        }
        Ok(found)
    }
}

impl Drop for Trustee {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The owner's side of an attested run: a trustee trusting this host's
/// vTPM CA, the image encrypted with a key it holds, reference values from
/// the guest image (and the platform's PCRs 0 and 1, from a first denial).
/// Returns the trustee (kept running), the `cocoon run` flags, the image.
async fn attested_setup(
    work: &Path,
    img: &Path,
    registry: &str,
    plain: &str,
    memory: u32,
) -> Result<(Trustee, Vec<String>, String)> {
    let ca = work.join("vtpm-ca");
    let certs = cocoon(&["tpm", "vtpm-ca", "--dir", &ca.display().to_string()])?;
    let t = Trustee::start(
        &work.join("trustee"),
        // This machine is its own host: its vTPMs are declared acceptable.
        &["--tpm-hardware-ek-ca", certs.trim()],
    )?;
    let mut kek = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut kek);
    let kek_file = work.join("kek.bin");
    std::fs::write(&kek_file, kek)?;
    let enc = format!("{registry}/cocoon-bench/busybox:enc");
    let key = t.dir.join("admin-key.pem").display().to_string();
    cocoon(&[
        "image",
        "encrypt",
        plain,
        &enc,
        "--insecure-registry",
        registry,
        "--kbs-key",
        "kbs:///default/image-key/bench",
        "--kek-file",
        &kek_file.display().to_string(),
        "--url",
        &t.url,
        "--kbs-cert",
        &t.cert(),
        "--admin-key",
        &key,
    ])?;
    std::fs::remove_file(&kek_file)?;
    let cert_pem = std::fs::read_to_string(t.cert())?;
    let init = crate::run::initdata_for(Some(&t.url), Some(cert_pem), &[registry.to_string()])?
        .context("initdata")?;
    let digest = cocoon_types::initdata::InitData::from_payload("toml", &init)?.digest;
    t.admin(&["add-reference-value", "init_data", &hex::encode(digest)])?;
    let manifest = cocoon_guest_image::Manifest::load(img)?;
    for (name, v) in manifest
        .measurements
        .vtpm_reference_values(memory)
        .map_err(anyhow::Error::msg)?
    {
        t.admin(&["add-reference-value", &name, &v])?;
    }
    let flags: Vec<String> = [
        "--tee",
        "vtpm",
        "--kbs",
        &t.url,
        "--kbs-cert",
        &t.cert(),
        "--insecure-registry",
        registry,
        "--vtpm-ca",
        &ca.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // The first run is refused for the platform's PCRs; pin what it shows.
    anyhow::ensure!(
        time_run(img, &flags, &enc, memory).is_err(),
        "a guest was released the key before the platform PCRs were pinned"
    );
    let platform = t.unpinned_pcrs()?;
    anyhow::ensure!(
        platform.iter().map(|(n, _)| *n).collect::<Vec<_>>() == [0, 1],
        "expected only PCRs 0 and 1 to be unpinned, the trustee reports {platform:?}"
    );
    for (n, v) in platform {
        t.admin(&["add-reference-value", &format!("tpm_pcr{n}"), &v])?;
    }
    Ok((t, flags, enc))
}

fn spec(
    img: &Path,
    work: &Path,
    id: &str,
    mode: Mode,
    memory: u32,
    initrd: PathBuf,
) -> Result<VmSpec> {
    Ok(VmSpec {
        id: id.into(),
        mode,
        accel: None,
        vcpus: 1,
        memory_mib: memory,
        kernel: img.join("vmlinuz"),
        initrd,
        cmdline: std::fs::read_to_string(img.join("cmdline"))
            .with_context(|| format!("reading {}/cmdline", img.display()))?,
        firmware: None,
        initdata: None,
        state_dir: work.join("state").join(id),
        console_log: work.join(format!("{id}.log")),
        network: None,
        // The vTPM `cocoon run` and the shim give a pod: manufactured by
        // the local CA, with only the SHA-256 bank active. A fresh swtpm
        // has four banks, and the firmware would hash every boot component
        // four times, in the floor as in ours.
        vtpm_ca: (mode == Mode::Vtpm).then(crate::run::default_vtpm_ca),
        pod_network: None,
    })
}

/// Waits until the pool of vTPM states of the CA at `ca` is full and
/// none is being made, so that a timed VM start takes a ready state and no
/// manufacture (an RSA key) runs beside its boot: a pod started on a node
/// at rest. A pool that nothing fills yet (a CA not used before) is set
/// going by one throwaway state made under `scratch`.
pub fn settle_vtpm_pool(ca: &Path, scratch: &Path) -> Result<()> {
    use cocoon_tpm::swtpm::{POOL_SIZE, pool_making, pool_ready, provision};
    let t = Instant::now();
    loop {
        let making = pool_making(ca);
        if making == 0 {
            if pool_ready(ca) >= POOL_SIZE {
                return Ok(());
            }
            let dir = scratch.join(format!("vtpm-warm-{}", t.elapsed().as_nanos()));
            provision(&dir, ca).map_err(|e| anyhow::anyhow!("the vTPM pool: {e}"))?;
            let _ = std::fs::remove_dir_all(&dir);
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(180),
            "the vTPM pool at {} did not fill within 180 s",
            ca.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain QEMU boot of the guest image (no network, no initdata) up to
/// its agent's first answer, from a vTPM pool at rest: the time, and
/// QEMU's RSS then (KiB).
pub async fn boot_to_ready(
    qemu: &Qemu,
    accel: cocoon_hypervisor::Accel,
    img: &Path,
    work: &Path,
    id: &str,
    mode: Mode,
    memory: u32,
) -> Result<(Duration, u64)> {
    let mut s = spec(img, work, id, mode, memory, img.join("initrd.img"))?;
    s.accel = Some(accel);
    if mode == Mode::Vtpm {
        settle_vtpm_pool(&crate::run::default_vtpm_ca(), work)?;
    }
    let pod = PodVm::start(qemu, s, Duration::from_secs(300)).await?;
    let took = pod.boot_time;
    let rss = pod
        .vm()
        .pids()
        .first()
        .and_then(|p| rss_kib(*p))
        .unwrap_or(0);
    pod.stop().await?;
    Ok((took, rss))
}

/// Each time against the baseline measured just before it, and the median
/// of those ratios: boot times drift by more than a target over a run on a
/// shared machine, and a pair measured seconds apart shares the drift.
pub fn paired(times: &[Duration], baselines: &[Duration]) -> String {
    let mut ratios: Vec<f64> = times
        .iter()
        .zip(baselines)
        .map(|(t, b)| t.as_secs_f64() / b.as_secs_f64())
        .collect();
    if ratios.is_empty() {
        return "no runs".into();
    }
    let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.2}x")).collect();
    ratios.sort_by(f64::total_cmp);
    format!(
        "{} (median {:.2}x)",
        listed.join(" "),
        ratios[ratios.len() / 2]
    )
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Resident set size of a process, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// A KiB field of a process's `/proc/PID/status` (`VmRSS:`, `VmHWM:`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

pub async fn run(a: PodBenchArgs) -> Result<()> {
    let qemu = Qemu::new()?;
    let work = tempfile::tempdir()?;
    let floor_initrd = work.path().join("poweroff.cpio");
    std::fs::write(&floor_initrd, cocoon_guest_image::poweroff_initramfs())?;
    let accel = cocoon_hypervisor::kvm::accel_for(
        qemu.binary(),
        &a.image.join("vmlinuz"),
        Some(work.path()),
    );
    outln!(
        "cocoon bench pod: {} run(s) per case, {} MiB guest, {:?} acceleration",
        a.runs,
        a.memory,
        accel
    );
    outln!(
        "{:<8} {:>16} {:>18} {:>8} {:>14}",
        "mode",
        "floor (poweroff)",
        "agent ready",
        "ratio",
        "QEMU RSS"
    );
    let image = match &a.registry {
        Some(r) => Some(push_small_image(r).await?),
        None => None,
    };
    let mut runs = Vec::new();
    let mut floors = Vec::new();
    let vtpm_ca = crate::run::default_vtpm_ca();
    for m in &a.modes {
        let mode: Mode = m.parse().map_err(anyhow::Error::msg)?;
        let mut floor = Vec::new();
        let mut ready = Vec::new();
        let mut run_times = Vec::new();
        let mut breakdown = String::new();
        let mut rss = 0;
        for i in 0..a.runs.max(1) {
            // Floor: the same VM up to a guest that powers off at once.
            let mut s = spec(
                &a.image,
                work.path(),
                &format!("floor-{m}-{i}"),
                mode,
                a.memory,
                floor_initrd.clone(),
            )?;
            s.accel = Some(accel);
            if mode == Mode::Vtpm {
                settle_vtpm_pool(&vtpm_ca, work.path())?;
            }
            let t = Instant::now();
            let vm = qemu.start(s).await?;
            let exit = vm.wait().await;
            floor.push(t.elapsed());
            vm.stop().await?;
            anyhow::ensure!(
                exit == VmExit::Exited(0),
                "the floor VM did not power off cleanly: {exit:?}"
            );
            // Ours: the same VM up to the agent's first answer.
            let (took, qemu_rss) = boot_to_ready(
                &qemu,
                accel,
                &a.image,
                work.path(),
                &format!("pod-{m}-{i}"),
                mode,
                a.memory,
            )
            .await?;
            ready.push(took);
            rss = qemu_rss;
            if let (Some(image), Some(reg)) = (&image, &a.registry) {
                let flags =
                    ["--tee", m.as_str(), "--insecure-registry", reg.as_str()].map(String::from);
                if mode == Mode::Vtpm {
                    settle_vtpm_pool(&vtpm_ca, work.path())?;
                }
                let (wall, line) = time_run(&a.image, &flags, image, a.memory)?;
                run_times.push(wall);
                breakdown = line;
            }
        }
        let (f, r) = (median(floor.clone()), median(ready.clone()));
        outln!(
            "{:<8} {:>14.2} s {:>16.2} s {:>7.2}x {:>10} MiB",
            m,
            f.as_secs_f64(),
            r.as_secs_f64(),
            r.as_secs_f64() / f.as_secs_f64(),
            rss / 1024
        );
        outln!(
            "  each boot against its own floor: {}",
            paired(&ready, &floor)
        );
        floors.push((mode, f));
        if !run_times.is_empty() {
            outln!(
                "  each cocoon run against its own floor: {}",
                paired(&run_times, &floor)
            );
            runs.push((m.clone(), f, median(run_times), breakdown));
        }
    }
    outln!("target: agent ready within 1.15x of the floor");
    if a.attest
        && let (Some(reg), Some(plain)) = (&a.registry, &image)
    {
        let (_trustee, flags, enc) =
            attested_setup(work.path(), &a.image, reg, plain, a.memory).await?;
        let mut times = Vec::new();
        let mut line = String::new();
        for _ in 0..a.runs.max(1) {
            settle_vtpm_pool(&work.path().join("vtpm-ca"), work.path())?;
            let (wall, l) = time_run(&a.image, &flags, &enc, a.memory)?;
            times.push(wall);
            line = l;
        }
        let floor = match floors.iter().find(|(m, _)| *m == Mode::Vtpm) {
            Some((_, f)) => *f,
            None => {
                anyhow::bail!("--attest compares against the vtpm floor: include vtpm in --modes")
            }
        };
        runs.push(("vtpm+attest, encrypted".into(), floor, median(times), line));
    }
    let cri_phase = match (a.cri, &a.registry, floors.last()) {
        (true, Some(reg), Some((mode, floor))) => Some((reg.clone(), *mode, *floor)),
        _ => None,
    };
    if !runs.is_empty() {
        outln!();
        outln!(
            "{:<24} {:>16} {:>18} {:>8}  breakdown (last run)",
            "mode",
            "floor (poweroff)",
            "cocoon run",
            "ratio"
        );
        for (m, f, r, line) in runs {
            outln!(
                "{:<24} {:>14.2} s {:>16.2} s {:>7.2}x  {line}",
                m,
                f.as_secs_f64(),
                r.as_secs_f64(),
                r.as_secs_f64() / f.as_secs_f64()
            );
        }
        outln!(
            "target: cocoon run of a small plain image within 1.5x of the floor, attested with an encrypted image within 2x; agent RSS under 15 MB"
        );
    }
    if let Some((reg, mode, floor)) = cri_phase {
        let boot = |id: String| {
            let (qemu, img, work) = (&qemu, &a.image, work.path());
            async move { boot_to_ready(qemu, accel, img, work, &id, mode, a.memory).await }
        };
        crate::bench_cri::run(&a.image, &reg, mode, a.memory, a.runs, floor, boot).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_ratios_keep_run_order_and_take_the_middle_one() {
        let s = |v: &[f64]| {
            v.iter()
                .map(|&x| Duration::from_secs_f64(x))
                .collect::<Vec<_>>()
        };
        // Listed in run order (not sorted), each time over the baseline of
        // its own run; the median is the middle of the sorted ratios.
        let times = s(&[7.8, 6.6, 6.0]);
        let boots = s(&[6.0, 6.0, 5.0]);
        assert_eq!(paired(&times, &boots), "1.30x 1.10x 1.20x (median 1.20x)");
        assert_eq!(paired(&[], &boots), "no runs");
    }
}
