//! The runtime helpers' parent: a copy of PID 1 forked while PID 1 still
//! has one thread (before its async runtime, before any secret reaches
//! the guest), which forks each runtime helper instead of PID 1 starting
//! the guest binary again for it.
//!
//! A forked helper skips the exec and the program's start, and runs at
//! the addresses PID 1 runs at: under software emulation QEMU keeps the
//! code it translated by virtual address, so what PID 1 already ran
//! (serde, the standard library, the request's types) is not translated
//! again for every helper. On hardware it saves the exec.
//!
//! The helper is forked twice (the zygote forks a child that forks the
//! helper and exits), so the helper is reparented to PID 1 and PID 1's
//! reaper collects its exit, as for a helper PID 1 started itself.
//!
//! One message each way on a `SOCK_SEQPACKET` pair: PID 1 sends the
//! request (its JSON, a NUL, the reply file's path) with the helper's
//! stdin, stdout and stderr and the read end of a go-ahead pipe as
//! `SCM_RIGHTS`; the zygote answers the helper's pid (4 bytes, little
//! endian), or a negative errno when it could not fork. The helper does
//! nothing until it reads its go-ahead, which PID 1 writes once it awaits
//! the helper's exit: a helper PID 1 does not know of (the exchange
//! failed after the fork) reads end of file and ends.
//!
//! Only under software emulation with no sign of a TEE (see
//! [`super::oci::decide_helper_layout`]): a forked helper shares PID 1's
//! layout, stack canary and pointer guard, which a TEE guest keeps from
//! the processes that handle container specs; there each helper is a
//! new process of its own.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// The longest request the zygote takes (ids and paths only).
const MAX_REQUEST: usize = 64 * 1024;

/// How long PID 1 waits for the zygote to answer before it ends it.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// PID 1's end of the zygote; `None` once the zygote is gone.
pub struct Zygote {
    sock: Mutex<Option<OwnedFd>>,
    /// The zygote's pidfd, to end it when it stops answering.
    pidfd: Option<OwnedFd>,
}

impl Zygote {
    /// Forks the zygote. Call only while the process has one thread.
    pub fn fork() -> std::io::Result<Self> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let threads = std::fs::read_to_string("/proc/self/status")?
            .lines()
            .find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim().to_string()));
        if threads.as_deref() != Some("1") {
            return Err(std::io::Error::other(format!(
                "PID 1 has {} threads, and only a process of one may fork one",
                threads.as_deref().unwrap_or("an unknown number of")
            )));
        }
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        // SAFETY: the caller guarantees one thread, so the child may run
        // anything; it never returns from `serve`.
        match unsafe { libc::fork() } {
            -1 => Err(std::io::Error::last_os_error()),
            0 => {
                drop(ours);
                // Nothing of PID 1's stays open here but the console.
                let keep = theirs.as_raw_fd() as u32;
                close_from(3, keep.saturating_sub(1));
                close_from(keep + 1, u32::MAX);
                // A panic (in a build that unwinds) must not unwind into
                // PID 1's frames in this copy of it.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(theirs)));
                exit(101)
            }
            pid => {
                drop(theirs);
                // SAFETY: pidfd_open(2) of our own unreaped child.
                let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
                // SAFETY: a descriptor the kernel just made for us.
                let pidfd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
                Ok(Self {
                    sock: Mutex::new(Some(ours)),
                    pidfd,
                })
            }
        }
    }

    /// Starts a helper for `request` (JSON) that writes its reply to
    /// `reply`, with `stdio` as its standard streams. The helper waits
    /// until `register` has been given its pid (so that its exit is
    /// awaited before it can happen), then runs; what `register` returned.
    /// On an error no helper runs (one already forked reads end of file
    /// instead of its go-ahead, and ends); once the zygote failed to
    /// answer, it is ended and every later call fails at once. Blocking.
    pub fn spawn<R>(
        &self,
        request: &str,
        reply: &str,
        stdio: [&OwnedFd; 3],
        register: impl FnOnce(i32) -> R,
    ) -> std::io::Result<R> {
        let mut sock = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = sock.as_ref() else {
            return Err(std::io::Error::other("the helpers' zygote is gone"));
        };
        let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let [i, o, e] = stdio;
        let pid = match ask(s.as_fd(), request, reply, [i, o, e, &go_r]) {
            Ok(pid) => pid,
            // It could not fork this once: it still answers.
            Err(Answer::Refused(e)) => return Err(e),
            Err(Answer::Lost(e)) => {
                *sock = None;
                if let Some(p) = &self.pidfd {
                    // SAFETY: pidfd_send_signal(2) through our own pidfd.
                    unsafe {
                        libc::syscall(
                            libc::SYS_pidfd_send_signal,
                            p.as_raw_fd(),
                            libc::SIGKILL,
                            std::ptr::null::<libc::siginfo_t>(),
                            0,
                        )
                    };
                }
                return Err(std::io::Error::other(format!(
                    "the helpers' zygote stopped answering: {e}"
                )));
            }
        };
        drop(go_r);
        let registered = register(pid);
        // The helper is blocked reading its go-ahead: it cannot have gone
        // unless killed, and then it reads nothing more anyway.
        nix::unistd::write(&go_w, b"g")?;
        Ok(registered)
    }
}

/// Why a request got no helper.
enum Answer {
    /// The zygote answered that it could not fork.
    Refused(std::io::Error),
    /// The exchange itself failed: the zygote is gone or out of step.
    Lost(std::io::Error),
}

fn ask(
    sock: std::os::fd::BorrowedFd<'_>,
    request: &str,
    reply: &str,
    fds: [&OwnedFd; 4],
) -> Result<i32, Answer> {
    use nix::sys::socket::{ControlMessage, MsgFlags, recv, sendmsg};
    let lost = |e: nix::Error| Answer::Lost(e.into());
    let body = encode(request, reply).map_err(Answer::Refused)?;
    let raw = fds.map(|f| f.as_raw_fd());
    let cmsg = [ControlMessage::ScmRights(&raw)];
    loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&body)],
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(nix::Error::EINTR) => continue,
            r => {
                r.map_err(lost)?;
                break;
            }
        }
    }
    // Waited for with poll(2), retried after a signal (PID 1 gets SIGCHLD
    // all the time), against one deadline.
    let deadline = std::time::Instant::now() + ANSWER_WITHIN;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(Answer::Lost(std::io::Error::other(format!(
                "no answer within {} s",
                ANSWER_WITHIN.as_secs()
            ))));
        }
        let mut p = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) of one valid pollfd.
        let n = unsafe {
            libc::poll(
                &mut p,
                1,
                left.as_millis().min(i32::MAX as u128 - 1) as i32 + 1,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Answer::Lost(e));
        }
        if n > 0 {
            break;
        }
    }
    let mut answer = [0u8; 8];
    let n = loop {
        match recv(sock.as_raw_fd(), &mut answer, MsgFlags::MSG_DONTWAIT) {
            Err(nix::Error::EINTR) => continue,
            r => break r.map_err(lost)?,
        }
    };
    if n != 4 {
        return Err(Answer::Lost(std::io::Error::other(format!(
            "an answer of {n} bytes"
        ))));
    }
    match i32::from_le_bytes([answer[0], answer[1], answer[2], answer[3]]) {
        pid if pid > 0 => Ok(pid),
        errno => Err(Answer::Refused(std::io::Error::from_raw_os_error(
            errno.saturating_neg(),
        ))),
    }
}

/// The request's bytes: JSON, NUL, reply path.
fn encode(request: &str, reply: &str) -> std::io::Result<Vec<u8>> {
    if request.contains('\0') || reply.contains('\0') {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    let body = [request.as_bytes(), b"\0", reply.as_bytes()].concat();
    if body.len() > MAX_REQUEST {
        return Err(std::io::Error::other(format!(
            "a helper request of {} bytes (at most {MAX_REQUEST})",
            body.len()
        )));
    }
    Ok(body)
}

/// The request's JSON and reply path from its bytes.
fn decode(body: &[u8]) -> Option<(&str, &str)> {
    let at = body.iter().position(|b| *b == 0)?;
    let request = std::str::from_utf8(&body[..at]).ok()?;
    let reply = std::str::from_utf8(&body[at + 1..]).ok()?;
    (!reply.is_empty() && !reply.contains('\0')).then_some((request, reply))
}

/// One request as the zygote received it.
struct Received {
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// The next request; `None` at end of file (PID 1 closed its end).
fn receive(sock: RawFd) -> std::io::Result<Option<Received>> {
    use nix::sys::socket::{MsgFlags, recvmsg};
    let mut body = vec![0u8; MAX_REQUEST];
    // Room for as many descriptors as one message can carry (SCM_MAX_FD):
    // a message never arrives cut, and every descriptor is owned.
    let mut space = nix::cmsg_space!([RawFd; 253]);
    let (len, flags, fds) = {
        let mut iov = [IoSliceMut::new(&mut body)];
        let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(std::io::Error::from)?;
        (msg.bytes, msg.flags, super::pty::owned_rights(&msg)?)
    };
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        return Err(std::io::Error::other("a truncated helper request"));
    }
    body.truncate(len);
    Ok(Some(Received { body, fds }))
}

/// The zygote's loop: one helper per request, until PID 1's end closes.
fn serve(sock: OwnedFd) -> ! {
    loop {
        let answer: i32 = match receive(sock.as_raw_fd()) {
            Ok(None) => exit(0),
            Ok(Some(r)) => match start(r) {
                Ok(pid) => pid,
                Err(e) => e.raw_os_error().unwrap_or(libc::EINVAL).saturating_neg(),
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => e.raw_os_error().unwrap_or(libc::EINVAL).saturating_neg(),
        };
        let sent = nix::sys::socket::send(
            sock.as_raw_fd(),
            &answer.to_le_bytes(),
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        );
        if sent != Ok(4) {
            exit(1);
        }
    }
}

/// Closes descriptors `first` to `last` (inclusive) that nothing here
/// holds as an `OwnedFd`.
fn close_from(first: u32, last: u32) {
    if first > last {
        return;
    }
    // SAFETY: closes raw descriptors the caller owns by no other name.
    if unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) } != 0 {
        // Kernels before 5.9: one by one, up to the descriptor limit.
        // SAFETY: as above.
        let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(1024, 1 << 20) as u32;
        for fd in first..=last.min(max) {
            // SAFETY: as above.
            unsafe { libc::close(fd as i32) };
        }
    }
}

fn exit(code: i32) -> ! {
    // SAFETY: ends this process without running anything of PID 1's.
    unsafe { libc::_exit(code) }
}

/// Forks the helper for one request through a short-lived child, so that
/// the helper's parent is PID 1; the helper's pid.
fn start(r: Received) -> std::io::Result<i32> {
    let Some((request, reply)) = decode(&r.body) else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    let [stdin, stdout, stderr, go] = <[OwnedFd; 4]>::try_from(r.fds)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let (pid_r, pid_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the zygote has one thread.
    let child = unsafe { libc::fork() };
    match child {
        -1 => return Err(std::io::Error::last_os_error()),
        0 => {
            drop(pid_r);
            // SAFETY: as above; the child has one thread too.
            let helper = unsafe { libc::fork() };
            if helper == 0 {
                drop(pid_w);
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    helper_process([&stdin, &stdout, &stderr], &go, request, reply)
                }));
                exit(101);
            }
            let told = helper > 0 && nix::unistd::write(&pid_w, &helper.to_le_bytes()) == Ok(4);
            exit(i32::from(!told))
        }
        _ => {}
    }
    drop(pid_w);
    drop((stdin, stdout, stderr, go));
    let mut status = 0;
    // SAFETY: waits for the zygote's own short-lived child.
    while unsafe { libc::waitpid(child, &mut status, 0) } == -1 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let mut pid = [0u8; 4];
    let n = nix::unistd::read(pid_r.as_raw_fd(), &mut pid)?;
    if n != 4 {
        return Err(std::io::Error::other("the helper was not forked"));
    }
    Ok(i32::from_le_bytes(pid))
}

/// The helper itself: its standard streams, nothing else of the zygote's
/// open, then the operation.
fn helper_process(stdio: [&OwnedFd; 3], go: &OwnedFd, request: &str, reply: &str) -> ! {
    // Nothing happens before PID 1 awaits this process's exit.
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(go.as_raw_fd(), &mut byte) {
            Ok(1) => break,
            Err(nix::Error::EINTR) => continue,
            _ => exit(125),
        }
    }
    for (fd, to) in stdio.iter().zip(0..) {
        let fd = fd.as_raw_fd();
        // dup2 clears close-on-exec, which the received ends carry; a
        // descriptor already at its place (PID 1 without a console) is
        // cleared by hand.
        // SAFETY: dup2 and fcntl on descriptors this process owns.
        let placed = if fd == to {
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) == 0 }
        } else {
            unsafe { libc::dup2(fd, to) == to }
        };
        if !placed {
            exit(126);
        }
    }
    close_from(3, u32::MAX);
    let code = super::oci::helper_run(request, reply);
    exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_malformed_ones_are_refused() {
        let body = encode(r#"{"id":"c1"}"#, "/run/cocoon/oci/.reply-3").unwrap();
        assert_eq!(
            decode(&body),
            Some((r#"{"id":"c1"}"#, "/run/cocoon/oci/.reply-3"))
        );
        assert!(encode("a\0b", "/r").is_err());
        assert!(encode("{}", "/r\0x").is_err());
        assert!(encode(&"x".repeat(MAX_REQUEST), "/r").is_err());
        assert_eq!(decode(b"no separator"), None);
        assert_eq!(decode(b"{}\0"), None, "no reply path");
        assert_eq!(decode(b"{}\0/a\0/b"), None, "two separators");
        assert_eq!(decode(b"\xff\0/r"), None, "not UTF-8");
    }

    /// The test harness runs tests on threads of their own: a fork here
    /// could hold another thread's locks forever, so it is refused.
    #[test]
    fn a_process_of_more_than_one_thread_does_not_fork_a_zygote() {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || wait.recv());
        let e = Zygote::fork()
            .err()
            .expect("a zygote forked from many threads");
        assert!(
            e.to_string().contains("threads, and only a process of one"),
            "{e}"
        );
        done.send(()).unwrap();
        other.join().unwrap().unwrap();
    }
}
