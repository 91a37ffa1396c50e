//! A process's standard streams between containerd's fifos and the
//! agent's polling stream calls (`ReadStdout`/`ReadStderr`, `WriteStdin`,
//! `CloseStdin`). The fifos are opened read-write, so opening never
//! blocks on the other side and a reader that goes away does not break
//! the relay; the end of stdin is containerd's `CloseIO`.

use cocoon_pod::AgentClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

/// The stream paths of a process, as containerd gave them (empty: none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paths {
    /// stdin fifo.
    pub stdin: String,
    /// stdout fifo.
    pub stdout: String,
    /// stderr fifo (unused with a terminal).
    pub stderr: String,
    /// The process has a terminal.
    pub terminal: bool,
}

impl Paths {
    /// Only fifos (what containerd's CRI and ctr create) are supported;
    /// logging binaries and files are refused up front.
    pub fn check(&self) -> Result<(), String> {
        for p in [&self.stdin, &self.stdout, &self.stderr] {
            if let Some((scheme, _)) = p.split_once("://")
                && scheme != "fifo"
            {
                return Err(format!(
                    "stdio '{p}': the cocoon runtime relays fifos only, not {scheme}:// targets"
                ));
            }
        }
        Ok(())
    }
}

fn fifo_path(p: &str) -> &str {
    p.strip_prefix("fifo://").unwrap_or(p)
}

/// The relays of one process.
pub struct Relays {
    /// Ends when stdout and stderr reached their end.
    pub output: tokio::task::JoinHandle<()>,
    /// Ends the stdin relay (sent, or dropped once the process exited):
    /// what is buffered is forwarded, then the guest's stdin is closed.
    pub stdin_close: Option<oneshot::Sender<()>>,
}

fn open_out(path: &str) -> Result<pipe::Sender, String> {
    pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(fifo_path(path))
        .map_err(|e| format!("opening {path}: {e}"))
}

async fn pump_out(
    agent: AgentClient,
    id: String,
    exec: String,
    stderr: bool,
    mut out: Option<pipe::Sender>,
) {
    loop {
        match agent.read(&id, &exec, stderr).await {
            Ok(d) if d.is_empty() => return,
            Ok(d) => {
                if let Some(w) = out.as_mut()
                    && w.write_all(&d).await.is_err()
                {
                    // Keep draining the guest's stream so the process
                    // does not block on a full pipe.
                    out = None;
                }
            }
            Err(_) => return,
        }
    }
}

async fn pump_in(
    agent: AgentClient,
    id: String,
    exec: String,
    mut r: pipe::Receiver,
    mut close: oneshot::Receiver<()>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            n = r.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if agent.write_stdin(&id, &exec, &buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            _ = &mut close => {
                // Forward what the writer left in the fifo before it closed.
                while let Ok(n) = r.try_read(&mut buf) {
                    if n == 0 || agent.write_stdin(&id, &exec, &buf[..n]).await.is_err() {
                        break;
                    }
                }
                break;
            }
        }
    }
    let _ = agent.close_stdin(&id, &exec).await;
}

/// A process's fifos, opened before the process starts (so a fifo that
/// cannot be opened fails the start, not the running process).
pub struct Opened {
    stdout: Option<pipe::Sender>,
    stderr: Option<pipe::Sender>,
    stdin: Option<pipe::Receiver>,
    terminal: bool,
}

/// Opens the fifos of `p`.
pub fn open(p: &Paths) -> Result<Opened, String> {
    let stdout = (!p.stdout.is_empty())
        .then(|| open_out(&p.stdout))
        .transpose()?;
    let stderr = (!p.stderr.is_empty() && !p.terminal)
        .then(|| open_out(&p.stderr))
        .transpose()?;
    let stdin = (!p.stdin.is_empty())
        .then(|| {
            pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(fifo_path(&p.stdin))
                .map_err(|e| format!("opening {}: {e}", p.stdin))
        })
        .transpose()?;
    Ok(Opened {
        stdout,
        stderr,
        stdin,
        terminal: p.terminal,
    })
}

impl Opened {
    /// Starts relaying the streams of process `exec` (empty: the init) of
    /// container `id`, which now runs in the guest.
    pub fn spawn(self, agent: AgentClient, id: &str, exec: &str) -> Relays {
        let out = tokio::spawn(pump_out(
            agent.clone(),
            id.into(),
            exec.into(),
            false,
            self.stdout,
        ));
        let err = (!self.terminal).then(|| {
            tokio::spawn(pump_out(
                agent.clone(),
                id.into(),
                exec.into(),
                true,
                self.stderr,
            ))
        });
        let output = tokio::spawn(async move {
            let _ = out.await;
            if let Some(e) = err {
                let _ = e.await;
            }
        });
        let stdin_close = match self.stdin {
            Some(r) => {
                let (tx, rx) = oneshot::channel();
                tokio::spawn(pump_in(agent, id.into(), exec.into(), r, rx));
                Some(tx)
            }
            None => {
                // No stdin: the process must see its end at once.
                let (id, exec) = (id.to_string(), exec.to_string());
                tokio::spawn(async move {
                    let _ = agent.close_stdin(&id, &exec).await;
                });
                None
            }
        };
        Relays {
            output,
            stdin_close,
        }
    }
}
