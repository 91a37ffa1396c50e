//! Terminals of container processes. A process whose OCI `process` asks
//! for a terminal gets a pty created inside its container by
//! libcontainer, which sends the master end over a unix socket (the OCI
//! console socket, as runc does). PID 1 receives the master here and
//! relays it through the agent's stream calls: stdout is what the
//! terminal prints, stdin what is typed into it, and `TtyWinResize`
//! sets its window size.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// A console socket waiting for one terminal master.
pub struct ConsoleSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listens at `path` (replacing a stale socket), readable by root
    /// alone.
    pub fn bind(path: PathBuf) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self { listener, path })
    }

    /// The socket's path, for the runtime helper.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the container's connection and receives the master; it
    /// must be one terminal, sent as the only descriptor.
    pub async fn receive(&self) -> std::io::Result<Pty> {
        let (stream, _) = self.listener.accept().await?;
        let fds = loop {
            stream.readable().await?;
            match stream.try_io(Interest::READABLE, || recv_fds(stream.as_raw_fd())) {
                Ok(fds) => break fds,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        let mut fds = fds.into_iter();
        match (fds.next(), fds.next()) {
            (Some(master), None) => Pty::new(master),
            (None, _) => Err(std::io::Error::other(
                "the console socket received no terminal",
            )),
            (Some(_), Some(_)) => Err(std::io::Error::other(
                "the console socket received more than one descriptor",
            )),
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The descriptors a received message carried as SCM_RIGHTS, each owned
/// (and closed) by the caller.
pub(super) fn owned_rights(
    msg: &nix::sys::socket::RecvMsg<'_, '_, ()>,
) -> std::io::Result<Vec<OwnedFd>> {
    use nix::sys::socket::ControlMessageOwned;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: the kernel installed these descriptors for us and
            // nothing else refers to them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok(fds)
}

/// One message with its SCM_RIGHTS descriptors; every descriptor
/// received is owned (and closed) by the caller.
fn recv_fds(sock: RawFd) -> std::io::Result<Vec<OwnedFd>> {
    use nix::sys::socket::{MsgFlags, recvmsg};
    let mut name = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    // Room for as many descriptors as one message can carry (SCM_MAX_FD):
    // all are received and owned, so extra ones are closed, never leaked.
    let mut space = nix::cmsg_space!([RawFd; 253]);
    let msg = recvmsg::<()>(
        sock,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)?;
    let fds = owned_rights(&msg)?;
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(std::io::Error::other(
            "the console socket message carried too many descriptors",
        ));
    }
    Ok(fds)
}

/// A terminal master, readable and writable without blocking; clones
/// share the one descriptor.
#[derive(Clone)]
pub struct Pty(Arc<AsyncFd<OwnedFd>>);

impl Pty {
    /// Wraps a master descriptor; anything that is not a terminal is
    /// refused.
    pub fn new(fd: OwnedFd) -> std::io::Result<Self> {
        let raw = fd.as_raw_fd();
        // SAFETY: isatty, ioctl and fcntl on a descriptor we own; TIOCGPTN
        // writes one unsigned int through a valid pointer.
        unsafe {
            if libc::isatty(raw) != 1 {
                return Err(std::io::Error::other(
                    "the console socket received something that is not a terminal",
                ));
            }
            // Only a master has a pty number to report.
            let mut n: libc::c_uint = 0;
            if libc::ioctl(raw, libc::TIOCGPTN, &mut n) != 0 {
                return Err(std::io::Error::other(
                    "the console socket received a terminal that is not a pty master",
                ));
            }
            let flags = libc::fcntl(raw, libc::F_GETFL);
            if flags < 0 || libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: an OwnedFd stays open and keeps its number until the
        // AsyncFd that owns it is dropped.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)?;
        Ok(Self(Arc::new(fd)))
    }

    /// Sets the window size (the process gets SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) -> std::io::Result<()> {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The window size, as (rows, columns).
    pub fn size(&self) -> std::io::Result<(u16, u16)> {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize through a valid pointer.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((ws.ws_row, ws.ws_col))
    }
}

impl AsyncRead for Pty {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let r = guard.try_io(|fd| {
                // SAFETY: read(2) into the unfilled part of the buffer.
                let n = unsafe {
                    libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len())
                };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Every slave closed: the terminal's output has ended.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Pty {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            let r = guard.try_io(|fd| {
                // SAFETY: write(2) from a valid slice.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn openpty() -> (OwnedFd, OwnedFd) {
        let (mut m, mut s) = (0, 0);
        // SAFETY: openpty writes two descriptors.
        let rc = unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: fresh descriptors from openpty.
        unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) }
    }

    fn send(sock: &std::os::unix::net::UnixStream, fds: &[RawFd]) {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        let iov = [std::io::IoSlice::new(b"/dev/ptmx")];
        let cmsg = [ControlMessage::ScmRights(fds)];
        sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).unwrap();
    }

    #[tokio::test]
    async fn master_is_received_relayed_resized_and_ends_at_hangup() {
        let d = tempfile::tempdir().unwrap();
        let cs = ConsoleSocket::bind(d.path().join("console")).unwrap();
        let (master, slave) = openpty();
        let client = std::os::unix::net::UnixStream::connect(cs.path()).unwrap();
        send(&client, &[master.as_raw_fd()]);
        drop(master);
        let pty = cs.receive().await.unwrap();

        pty.resize(33, 101).unwrap();
        assert_eq!(pty.size().unwrap(), (33, 101));

        // What is written into the master is read on the slave (canonical
        // mode, so up to the newline), and the slave's output comes back
        // with the terminal's newline translation.
        let mut w = pty.clone();
        w.write_all(b"typed\n").await.unwrap();
        let mut sf = std::fs::File::from(slave);
        let mut got = [0u8; 6];
        std::io::Read::read_exact(&mut sf, &mut got).unwrap();
        assert_eq!(&got, b"typed\n");
        std::io::Write::write_all(&mut sf, b"out\n").unwrap();
        let mut r = pty.clone();
        let mut echoed = Vec::new();
        // The echo of the input, then the output.
        while !String::from_utf8_lossy(&echoed).contains("out\r\n") {
            let mut b = [0u8; 64];
            let n = r.read(&mut b).await.unwrap();
            assert!(n > 0, "output ended early: {echoed:?}");
            echoed.extend_from_slice(&b[..n]);
        }
        // The slave closes: reading ends (EIO becomes end of stream).
        drop(sf);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();

        // The socket file is gone with the listener.
        let path = cs.path().to_path_buf();
        drop(cs);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn anything_but_one_terminal_is_refused() {
        let d = tempfile::tempdir().unwrap();
        // A pipe is not a terminal.
        let cs = ConsoleSocket::bind(d.path().join("a")).unwrap();
        let (r, _w) = std::io::pipe().unwrap();
        let c = std::os::unix::net::UnixStream::connect(cs.path()).unwrap();
        send(&c, &[r.as_raw_fd()]);
        let e = cs.receive().await.err().unwrap();
        assert!(e.to_string().contains("not a terminal"), "{e}");

        // A slave is a terminal, but not the master.
        let cs = ConsoleSocket::bind(d.path().join("s")).unwrap();
        let (_m, slave) = openpty();
        let c = std::os::unix::net::UnixStream::connect(cs.path()).unwrap();
        send(&c, &[slave.as_raw_fd()]);
        let e = cs.receive().await.err().unwrap();
        assert!(e.to_string().contains("not a pty master"), "{e}");

        // Two descriptors.
        let cs = ConsoleSocket::bind(d.path().join("b")).unwrap();
        let (m1, _s1) = openpty();
        let (m2, _s2) = openpty();
        let c = std::os::unix::net::UnixStream::connect(cs.path()).unwrap();
        send(&c, &[m1.as_raw_fd(), m2.as_raw_fd()]);
        let e = cs.receive().await.err().unwrap();
        assert!(e.to_string().contains("more than one"), "{e}");

        // Many descriptors (more than a small control buffer holds): all
        // received as owned descriptors, and refused.
        let cs = ConsoleSocket::bind(d.path().join("many")).unwrap();
        let ptys: Vec<_> = (0..8).map(|_| openpty()).collect();
        let fds: Vec<RawFd> = ptys.iter().map(|(m, _)| m.as_raw_fd()).collect();
        let c = std::os::unix::net::UnixStream::connect(cs.path()).unwrap();
        send(&c, &fds);
        let e = cs.receive().await.err().unwrap();
        assert!(e.to_string().contains("more than one"), "{e}");

        // None: the connection closes without a descriptor.
        let cs = ConsoleSocket::bind(d.path().join("c")).unwrap();
        let c = std::os::unix::net::UnixStream::connect(cs.path()).unwrap();
        std::io::Write::write_all(&mut &c, b"x").unwrap();
        drop(c);
        let e = cs.receive().await.err().unwrap();
        assert!(e.to_string().contains("no terminal"), "{e}");
    }
}
