//! The one place PID 1 waits for children. Every process in the guest
//! ends up as PID 1's child (helpers directly, containers when their
//! intermediate process exits), so one `waitpid(-1)` loop collects them
//! all and hands each exit to whoever asked for that pid. A second waiter
//! (`Child::wait`, `tokio::process`) would race this loop, so nothing else
//! in PID 1 waits.

use std::collections::{HashMap, VecDeque};
use std::process::Command;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Exits nobody asked for yet are kept this long (by count): a container
/// can exit before the helper that created it has reported its pid.
const UNCLAIMED: usize = 1024;

/// An exit status as Kata reports it: the exit code, or 128 + the signal.
pub type Status = i32;

/// How long an exit nobody asked for is kept: long enough for the helper
/// that made the process to report its pid, too short for the pid to be
/// reused and take an old status.
const UNCLAIMED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Default)]
struct Inner {
    waiters: HashMap<i32, oneshot::Sender<Status>>,
    unclaimed: VecDeque<(i32, Status, std::time::Instant)>,
}

/// Collects exited children and routes their status.
#[derive(Default)]
pub struct Reaper {
    inner: Mutex<Inner>,
}

impl Reaper {
    /// A reaper running on SIGCHLD (and once a second, in case a signal
    /// was coalesced away).
    pub fn start() -> std::io::Result<Arc<Reaper>> {
        let reaper = Arc::new(Reaper::default());
        let mut sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = sig.recv() => {}
                    _ = tick.tick() => {}
                }
                r.reap();
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Collects every child that has exited.
    pub fn reap(&self) {
        let mut inner = self.lock();
        loop {
            let mut status = 0;
            // SAFETY: plain syscall on a local status word.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::__WALL) };
            if pid <= 0 {
                break;
            }
            let code = decode(status);
            match inner.waiters.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(code);
                }
                None => {
                    if inner.unclaimed.len() >= UNCLAIMED {
                        inner.unclaimed.pop_front();
                    }
                    inner
                        .unclaimed
                        .push_back((pid, code, std::time::Instant::now()));
                }
            }
        }
    }

    /// The exit of `pid` (a child of PID 1, or a process that will be
    /// reparented to it). Resolves at once if it has already been reaped.
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<Status> {
        self.claim(pid, None)
    }

    /// The exit of `pid`, a process that began at `since` or later: an
    /// exit of that pid reaped before then was another process's (the pid
    /// was reused), and is dropped.
    pub fn watch_started(&self, pid: i32, since: std::time::Instant) -> oneshot::Receiver<Status> {
        self.claim(pid, Some(since))
    }

    fn claim(&self, pid: i32, since: Option<std::time::Instant>) -> oneshot::Receiver<Status> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        inner.unclaimed.retain(|(p, _, at)| {
            at.elapsed() < UNCLAIMED_FOR && (*p != pid || since.is_none_or(|s| *at >= s))
        });
        if let Some(i) = inner.unclaimed.iter().position(|(p, _, _)| *p == pid) {
            if let Some((_, code, _)) = inner.unclaimed.remove(i) {
                let _ = tx.send(code);
            }
        } else {
            inner.waiters.insert(pid, tx);
        }
        rx
    }

    /// Sends `sig` to `pid` if it is still being waited for. Under the
    /// reaper's lock the pid cannot be reaped, so it cannot have been
    /// reused by another process.
    pub fn kill(&self, pid: i32, sig: i32) -> std::io::Result<()> {
        let inner = self.lock();
        if !inner.waiters.contains_key(&pid) {
            return Ok(());
        }
        // SAFETY: plain syscall; the pid is our unreaped child.
        if unsafe { libc::kill(pid, sig) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Spawns `cmd` and registers its exit before the reaper can see it.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(i32, oneshot::Receiver<Status>)> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        // Never waited through `child`: the reaper owns the status.
        drop(child);
        inner.waiters.insert(pid, tx);
        Ok((pid, rx))
    }
}

/// Kata's convention: exit code, or 128 + signal number when killed.
pub fn decode(status: i32) -> Status {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_decode_as_kata_reports_them() {
        // Encodings as the kernel writes them: code << 8, or the signal.
        assert_eq!(decode(3 << 8), 3);
        assert_eq!(decode(0), 0);
        assert_eq!(decode(libc::SIGTERM), 143);
        assert_eq!(decode(libc::SIGKILL), 137);
    }

    /// A pid reused within the minute unclaimed exits are kept: the exit
    /// reaped before the new process began is not the new one's.
    #[test]
    fn an_exit_reaped_before_a_process_began_is_not_its() {
        let reaper = Reaper::default();
        let old = std::time::Instant::now();
        reaper.lock().unclaimed.push_back((4242, 9, old));
        std::thread::sleep(std::time::Duration::from_millis(2));
        let asked = std::time::Instant::now();
        let mut rx = reaper.watch_started(4242, asked);
        assert!(rx.try_recv().is_err(), "the old exit was taken");
        assert!(reaper.lock().waiters.contains_key(&4242));
        // One reaped after it began (killed early) is its own.
        reaper
            .lock()
            .unclaimed
            .push_back((4243, 137, std::time::Instant::now()));
        assert_eq!(reaper.watch_started(4243, asked).try_recv().ok(), Some(137));
        // Other pids' exits stay.
        reaper.lock().unclaimed.push_back((4244, 1, old));
        drop(reaper.watch_started(4245, asked));
        assert!(reaper.lock().unclaimed.iter().any(|(p, _, _)| *p == 4244));
    }

    #[test]
    fn exits_reach_the_waiter_even_when_reaped_first() {
        let reaper = Reaper::default();
        let (_, rx) = reaper
            .spawn(Command::new("sh").args(["-c", "exit 7"]))
            .unwrap();
        // A child nobody registered: its exit is kept until claimed.
        let child = Command::new("sh")
            .args(["-c", "kill -TERM $$"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        drop(child);
        // Wait until the loop has collected it, with nobody asking.
        for _ in 0..500 {
            reaper.reap();
            if reaper.lock().unclaimed.iter().any(|(p, _, _)| *p == pid) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let got = reaper.watch(pid).try_recv().ok();
        assert_eq!(got, Some(143));
        // The registered child may exit after the other: keep collecting.
        let mut rx = rx;
        let mut code = None;
        for _ in 0..500 {
            reaper.reap();
            if let Ok(c) = rx.try_recv() {
                code = Some(c);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(code, Some(7));
    }
}
