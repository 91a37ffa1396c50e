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
    for m in &a.modes {
        let mode: Mode = m.parse().map_err(anyhow::Error::msg)?;
        let mut floor = Vec::new();
        let mut ready = Vec::new();
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
        }
        let (f, r) = (median(floor), median(ready));
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
    Ok(())
}
