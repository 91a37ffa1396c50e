//! Test support for crates that talk to registries: a loopback HTTP/1.1
//! server that keeps its connections open and counts them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Serves on `127.0.0.1` (a fresh port), answering each request with
/// `respond(head)` (a whole HTTP/1.1 response; requests have no body) and
/// keeping the connection for the next one. Returns the address and the
/// count of connections accepted so far.
pub fn keep_alive_server(
    respond: impl Fn(&str) -> String + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    let conns = Arc::new(AtomicUsize::new(0));
    let count = conns.clone();
    let respond = Arc::new(respond);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            let respond = respond.clone();
            std::thread::spawn(move || {
                let Ok(read) = stream.try_clone() else { return };
                let mut reader = BufReader::new(read);
                loop {
                    let mut head = String::new();
                    let mut line = String::new();
                    while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                        head.push_str(&line);
                        line.clear();
                    }
                    if head.is_empty() || (&stream).write_all(respond(&head).as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}
