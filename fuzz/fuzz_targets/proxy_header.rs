//! Arbitrary bytes as the start of a connection from a trusted proxy:
//! the framing that decides how many bytes are the PROXY protocol header
//! (v1 line or v2 block) and the parse of those bytes. Refused or read,
//! never a panic; a header that is read leaves every byte after it to
//! TLS/HTTP: its length is the one the protocol's framing rules give.
#![no_main]

use cocoon_kbs::limits::{MAX_PROXY_V1, MAX_PROXY_V2, proxy_client, read_proxy_header};
use libfuzzer_sys::fuzz_target;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

fuzz_target!(|data: &[u8]| {
    let _ = proxy_client(data);
    let mut rest = data;
    // A byte slice never makes a reader wait: one poll finishes the read.
    let read = {
        let mut reading = pin!(read_proxy_header(&mut rest));
        match reading
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(read) => read,
            Poll::Pending => panic!("reading a header from memory did not finish"),
        }
    };
    let used = data.len() - rest.len();
    assert!(used <= MAX_PROXY_V1.max(MAX_PROXY_V2), "read {used} bytes");
    if read.is_ok() {
        // The framing by the protocol's own rules: a v2 header is 16 bytes
        // and the length they give, a v1 line ends at its first CRLF.
        let header = &data[..used];
        if header.starts_with(b"\r\n\r\n\0\r\nQUIT\n") {
            assert_eq!(
                used,
                16 + usize::from(u16::from_be_bytes([data[14], data[15]]))
            );
        } else {
            assert!(header.starts_with(b"PROXY ") && used <= MAX_PROXY_V1);
            let crlf = header.windows(2).position(|w| w == b"\r\n");
            assert_eq!(crlf, Some(used - 2), "a v1 line ends at its first CRLF");
        }
    }
});
