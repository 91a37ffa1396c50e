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
}

/// Pushes a one-layer busybox image that prints a line.
async fn push_small_image(registry: &str) -> Result<String> {
    use cocoon_image::owner::{LayerBuilder, push_image};
    let busybox = std::fs::read("/bin/busybox")
        .context("/bin/busybox is missing (Debian: apt-get install busybox-static)")?;
    let mut l = LayerBuilder::default();
    l.dir("bin")?;
    l.file("bin/busybox", 0o755, &busybox)?;
    l.symlink("bin/sh", "busybox")?;
    l.symlink("bin/echo", "busybox")?;
    let client =
        cocoon_image::registry::RegistryClient::new(cocoon_image::registry::RegistryConfig {
            insecure: [registry.to_string()].into(),
            ..Default::default()
        })
        .map_err(anyhow::Error::msg)?;
    let image = format!("{registry}/cocoon-bench/busybox:1");
    push_image(
        &client,
        &cocoon_image::reference::Reference::parse(&image)?,
        &[l.finish()?],
        &["/bin/echo", "hello"],
    )
    .await?;
    Ok(image)
}

/// `cocoon run` of `image` as a user runs it; wall time and its
/// `--timings` line.
fn time_run(
    img: &Path,
    registry: &str,
    image: &str,
    mode: &str,
    memory: u32,
) -> Result<(Duration, String)> {
    let exe = std::env::current_exe()?;
    let t = Instant::now();
    let o = std::process::Command::new(exe)
        .args([
            "run",
            "--timings",
            "--tee",
            mode,
            "--insecure-registry",
            registry,
        ])
        .args(["--memory", &memory.to_string()])
        .arg("--guest-image")
        .arg(img)
        .arg(image)
        .output()?;
    let wall = t.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    anyhow::ensure!(
        o.status.success() && o.stdout == b"hello\n",
        "cocoon run failed ({}): {err}",
        o.status
    );
    let line = err
        .lines()
        .find_map(|l| l.strip_prefix("timings: "))
        .unwrap_or_default()
        .to_string();
    Ok((wall, line))
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
        vtpm_ca: None,
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Resident set size of a process, KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
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
    println!(
        "cocoon bench pod: {} run(s) per case, {} MiB guest, {:?} acceleration",
        a.runs, a.memory, accel
    );
    println!(
        "{:<8} {:>16} {:>18} {:>8} {:>14}",
        "mode", "floor (poweroff)", "agent ready", "ratio", "QEMU RSS"
    );
    let image = match &a.registry {
        Some(r) => Some(push_small_image(r).await?),
        None => None,
    };
    let mut runs = Vec::new();
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
            let img_initrd = a.image.join("initrd.img");
            let mut s = spec(
                &a.image,
                work.path(),
                &format!("pod-{m}-{i}"),
                mode,
                a.memory,
                img_initrd,
            )?;
            s.accel = Some(accel);
            let pod = PodVm::start(&qemu, s, Duration::from_secs(300)).await?;
            ready.push(pod.boot_time);
            if let Some(pid) = pod.vm().pids().first() {
                rss = rss_kib(*pid).unwrap_or(0);
            }
            pod.stop().await?;
            if let (Some(image), Some(reg)) = (&image, &a.registry) {
                let (wall, line) = time_run(&a.image, reg, image, m, a.memory)?;
                run_times.push(wall);
                breakdown = line;
            }
        }
        let (f, r) = (median(floor), median(ready));
        if !run_times.is_empty() {
            runs.push((m.clone(), f, median(run_times), breakdown));
        }
        println!(
            "{:<8} {:>14.2} s {:>16.2} s {:>7.2}x {:>10} MiB",
            m,
            f.as_secs_f64(),
            r.as_secs_f64(),
            r.as_secs_f64() / f.as_secs_f64(),
            rss / 1024
        );
    }
    println!("target: agent ready within 1.15x of the floor");
    if !runs.is_empty() {
        println!();
        println!(
            "{:<8} {:>16} {:>18} {:>8}  breakdown (last run)",
            "mode", "floor (poweroff)", "cocoon run", "ratio"
        );
        for (m, f, r, line) in runs {
            println!(
                "{:<8} {:>14.2} s {:>16.2} s {:>7.2}x  {line}",
                m,
                f.as_secs_f64(),
                r.as_secs_f64(),
                r.as_secs_f64() / f.as_secs_f64()
            );
        }
        println!(
            "target: cocoon run of a small plain image within 1.5x of the floor; agent RSS under 15 MB"
        );
    }
    Ok(())
}
