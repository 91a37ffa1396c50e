//! The user's terminal for `cocoon run -t`: its size, and raw mode while
//! a container's terminal is attached to it (restored on drop).

use std::os::fd::RawFd;

/// The size of the terminal on `fd`, (rows, columns); none when `fd` is
/// not a terminal or reports no size.
pub fn size(fd: RawFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize through a valid pointer.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty on any descriptor number.
    unsafe { libc::isatty(fd) == 1 }
}

/// A terminal in raw mode: keys (Ctrl-C included) go to the container's
/// terminal, which does its own echo and line editing.
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Puts the terminal on `fd` in raw mode.
    pub fn enter(fd: RawFd) -> std::io::Result<Self> {
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr/tcsetattr with a valid termios pointer.
        unsafe {
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            // Output processing stays: the container's terminal already
            // translates newlines, and ours must not undo it.
            raw.c_oflag = saved.c_oflag;
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(Self { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enter`.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    #[test]
    fn raw_mode_is_entered_and_restored_and_size_is_read() {
        let (mut m, mut s) = (0, 0);
        let ws = libc::winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two descriptors and reads the winsize.
        let rc =
            unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
        assert_eq!(rc, 0);
        // SAFETY: fresh descriptors from openpty.
        let (_m, s) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
        let fd = s.as_raw_fd();
        assert!(is_terminal(fd));
        assert_eq!(size(fd), Some((24, 80)));
        let lflag = |fd| {
            // SAFETY: as in `enter`.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
            t.c_lflag
        };
        let before = lflag(fd);
        assert_ne!(before & libc::ICANON, 0);
        {
            let _raw = RawMode::enter(fd).unwrap();
            let during = lflag(fd);
            assert_eq!(during & (libc::ICANON | libc::ECHO | libc::ISIG), 0);
        }
        assert_eq!(lflag(fd), before);
        // A pipe is no terminal and has no size.
        let (r, _w) = std::io::pipe().unwrap();
        assert!(!is_terminal(r.as_raw_fd()));
        assert_eq!(size(r.as_raw_fd()), None);
        assert!(RawMode::enter(r.as_raw_fd()).is_err());
    }
}
