//! containerd runs this as `containerd-shim-cocoon-v2 ... start|delete`
//! (runtime `io.containerd.cocoon.v2`).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(cocoon_shim::RELAY_ARG) {
        let target = args.get(2).map(String::as_str).unwrap_or_default();
        let slots = args.get(3).map(std::path::Path::new);
        if let Err(e) = cocoon_hypervisor::tcp_relay(target, slots) {
            eprintln!("relay to {target}: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.get(1).map(String::as_str) == Some(cocoon_shim::GUARD_ARG) {
        cocoon_shim::guard::run(args.get(2).map(String::as_str).unwrap_or_default());
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!(
                "{}: cannot start the async runtime: {e}",
                cocoon_shim::RUNTIME
            );
            std::process::exit(1);
        }
    };
    if let Some(code) = rt.block_on(start(&args)) {
        std::process::exit(code);
    }
    if let Ok(flags) = containerd_shim::parse(&args[1..])
        && flags.action.is_empty()
        && !flags.info
        && !flags.version
    {
        if let Err(e) = rt.block_on(cocoon_shim::shim::serve(&flags)) {
            eprintln!("{}: {e}", cocoon_shim::RUNTIME);
            std::process::exit(1);
        }
        return;
    }
    rt.block_on(containerd_shim::asynchronous::run::<
        cocoon_shim::shim::CocoonShim,
    >(cocoon_shim::RUNTIME, None));
}

/// The `start` action of the legacy protocol, answered with the bare
/// address; `None` for every other action (and for containerd's
/// bootstrap protocol, which the shim library answers: its stdin is
/// handed to a fresh copy of this program).
async fn start(args: &[String]) -> Option<i32> {
    use std::io::{Read, Write};
    const DELEGATED: &str = "COCOON_SHIM_BOOTSTRAP";
    let flags = containerd_shim::parse(&args[1..]).ok()?;
    if flags.action != "start" || std::env::var_os(DELEGATED).is_some() {
        return None;
    }
    let mut input = Vec::new();
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let _ = std::io::stdin()
            .lock()
            .take(1 << 20)
            .read_to_end(&mut input);
    }
    if cocoon_shim::shim::is_bootstrap(&input, &flags) {
        let mut child = std::process::Command::new(std::env::current_exe().ok()?)
            .args(&args[1..])
            .env(DELEGATED, "1")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(&input);
        }
        return Some(child.wait().ok().and_then(|s| s.code()).unwrap_or(1));
    }
    match cocoon_shim::shim::start_legacy(&flags).await {
        Ok(address) => {
            let mut out = std::io::stdout();
            let _ = out.write_all(address.as_bytes()).and_then(|_| out.flush());
            Some(0)
        }
        Err(e) => {
            eprintln!("{}: {e}", cocoon_shim::RUNTIME);
            Some(1)
        }
    }
}
