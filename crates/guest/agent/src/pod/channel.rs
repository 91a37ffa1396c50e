//! The agent channel where the host has no vsock: a virtio-serial port.
//! The port is one byte stream with no connections, so a bridge relays it
//! to the agent's ttrpc server on a local socket, opening a fresh
//! connection for each host session: when the host side of the port goes
//! away (reads return end-of-file), the server connection is closed, and
//! the next bytes from the host open a new one.

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

/// How often a port whose host side is disconnected is looked at again.
const IDLE_POLL: Duration = Duration::from_millis(20);

/// The character device of the virtio-serial port named `name`.
pub fn find_port(name: &str) -> Option<PathBuf> {
    let rd = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    for e in rd.flatten() {
        let n = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if n.trim() == name {
            return Some(PathBuf::from("/dev").join(e.file_name()));
        }
    }
    None
}

fn connect(abstract_name: &str) -> std::io::Result<UnixStream> {
    let addr = SocketAddr::from_abstract_name(abstract_name.as_bytes())?;
    UnixStream::connect_addr(&addr)
}

/// Relays `port` to the server at the abstract socket `server` forever
/// (blocking; run it on its own thread).
pub fn bridge(port: PathBuf, server: String) -> std::io::Result<()> {
    let mut rx = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&port)?;
    let tx = rx.try_clone()?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Wait for the host: a disconnected port reads as end-of-file.
        let n = loop {
            match rx.read(&mut buf) {
                Ok(0) => std::thread::sleep(IDLE_POLL),
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        let mut conn = match connect(&server) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "the agent server is not listening; dropping the host's request");
                continue;
            }
        };
        conn.write_all(&buf[..n])?;
        // Server to host, until the server connection closes.
        let mut back = conn.try_clone()?;
        let mut port_w = tx.try_clone()?;
        let pump = std::thread::spawn(move || {
            let mut b = vec![0u8; 64 * 1024];
            loop {
                match back.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if port_w.write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        // Host to server, until the host goes away.
        loop {
            match rx.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        tracing::debug!("host session on the agent port ended");
        let _ = conn.shutdown(std::net::Shutdown::Both);
        let _ = pump.join();
    }
}
