//! `cocoon bench connections`: many concurrent connections to a trustee,
//! each sending a request and staying open until all have answered, with
//! the trustee's peak memory read from its process.

use anyhow::{Context, Result, bail};
use clap::Args;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Args, Debug)]
pub struct ConnsBenchArgs {
    /// The trustee's address (HOST:PORT, plain HTTP).
    #[arg(long)]
    addr: String,
    /// Connections held open at once.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// The trustee's process id, for its memory (VmRSS, VmHWM).
    #[arg(long)]
    pid: Option<u32>,
}

/// `VmRSS` and `VmHWM` of a process, KiB.
fn memory(pid: u32) -> Option<(u64, u64)> {
    use crate::bench_pod::status_kib;
    Some((status_kib(pid, "VmRSS:")?, status_kib(pid, "VmHWM:")?))
}

/// Outcome of one connection.
enum Outcome {
    Answered(tokio::net::TcpStream),
    Closed,
    Failed(String),
}

async fn one(addr: String) -> Outcome {
    let mut s = match tokio::net::TcpStream::connect(&addr).await {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(format!("connect: {e}")),
    };
    if let Err(e) = s
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await
    {
        return Outcome::Failed(format!("write: {e}"));
    }
    let mut buf = [0u8; 256];
    match tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf)).await {
        Ok(Ok(0)) => Outcome::Closed,
        Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 200") => Outcome::Answered(s),
        Ok(Ok(n)) => Outcome::Failed(String::from_utf8_lossy(&buf[..n.min(40)]).into_owned()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Outcome::Closed,
        Ok(Err(e)) => Outcome::Failed(format!("read: {e}")),
        Err(_) => Outcome::Failed("no answer in 60 s".into()),
    }
}

pub async fn run(a: ConnsBenchArgs) -> Result<()> {
    if a.count == 0 {
        bail!("--count must be positive");
    }
    // This process holds every connection too.
    let wanted = a.count as u64 + 256;
    let limit = cocoon_kbs::limits::raise_open_files();
    if limit < wanted {
        bail!("the open-file limit ({limit}) is below {wanted}: raise it (ulimit -n)");
    }
    let before = a.pid.and_then(memory);
    let start = Instant::now();
    let tasks: Vec<_> = (0..a.count)
        .map(|_| tokio::spawn(one(a.addr.clone())))
        .collect();
    let mut open = Vec::with_capacity(a.count);
    let (mut closed, mut failed, mut first_error) = (0usize, 0usize, None);
    for t in tasks {
        match t.await.context("a connection task")? {
            Outcome::Answered(s) => open.push(s),
            Outcome::Closed => closed += 1,
            Outcome::Failed(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let elapsed = start.elapsed();
    let during = a.pid.and_then(memory);
    outln!(
        "cocoon bench connections: {} at once against {}: {} answered and held open, {} closed by the trustee (its limit), {} failed{}; {:.2} s",
        a.count,
        a.addr,
        open.len(),
        closed,
        failed,
        first_error
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        elapsed.as_secs_f64()
    );
    if let (Some((rss0, _)), Some((rss, hwm))) = (before, during) {
        outln!(
            "trustee memory: RSS {:.1} MiB before, {:.1} MiB with the connections open, peak {:.1} MiB ({:.1} KiB per open connection)",
            rss0 as f64 / 1024.0,
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
            (rss.saturating_sub(rss0)) as f64 / open.len().max(1) as f64
        );
    }
    drop(open);
    if failed > 0 {
        bail!("{failed} connections failed");
    }
    Ok(())
}
