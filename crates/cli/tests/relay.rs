//! `cocoon __tcp-relay`, the process QEMU runs per guest connection to a
//! forwarded port, with one socket as its stdin and stdout as QEMU gives it.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

/// When the target closes, the guest's side sees the end (it would
/// otherwise send its next request on a connection nobody reads); what
/// the guest sent before still reached the target, and the relay exits
/// once the guest closes too.
#[test]
fn a_target_that_closes_ends_the_guests_side() {
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = server.local_addr().unwrap();
    let (mut guest, relay_end) = UnixStream::pair().unwrap();
    let out = relay_end.try_clone().unwrap();
    let mut relay = Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .args(["__tcp-relay", &target.to_string()])
        .stdin(Stdio::from(OwnedFd::from(relay_end)))
        .stdout(Stdio::from(OwnedFd::from(out)))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    guest.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let (mut conn, _) = server.accept().unwrap();
    let mut request = [0u8; 18];
    conn.read_exact(&mut request).unwrap();
    assert_eq!(&request, b"GET / HTTP/1.1\r\n\r\n");
    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    drop(conn);
    // A guard against a hang, not a timing: the end comes at once or never.
    guest
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reply = Vec::new();
    let read = guest.read_to_end(&mut reply);
    assert!(
        read.is_ok(),
        "the guest's side never saw the target close: {read:?}"
    );
    assert_eq!(reply, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    drop(guest);
    let status = relay.wait().unwrap();
    let mut err = String::new();
    relay
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "relay: {status} {err}");
}
