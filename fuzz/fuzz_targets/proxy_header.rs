//! Arbitrary bytes as the start of a connection from a trusted proxy:
//! the framing that decides how many bytes are the PROXY protocol header
//! (v1 line or v2 block) and the parse of those bytes. Refused or read,
//! never a panic; a header that is read leaves every byte after it to
//! TLS/HTTP, and names the client the parser alone names for its bytes.
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
    if let Ok(client) = read {
        assert_eq!(proxy_client(&data[..used]), Ok(client));
    }
});
