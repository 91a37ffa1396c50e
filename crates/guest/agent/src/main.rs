//! `cocoon-guest`: the guest services as one static binary. Called as
//! `attestation-agent`, `confidential-data-hub` or `api-server-rest` (for
//! example through symlinks in a guest image) it behaves as that service.

use clap::Parser;
use cocoon_guest::cli::GuestCommand;
use std::process::ExitCode;

/// Cocoon guest services: attestation agent, confidential data hub, REST API.
#[derive(Parser)]
#[command(name = "cocoon-guest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: GuestCommand,
}

/// Arguments, with the service chosen by the program name when called as
/// one of CoCo's binaries.
fn args() -> Vec<String> {
    let mut args: Vec<String> = std::env::args().collect();
    let name = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let sub = match name.as_str() {
        "attestation-agent" => Some("aa"),
        "confidential-data-hub" => Some("cdh"),
        "api-server-rest" => Some("api-server"),
        _ => None,
    };
    if let Some(sub) = sub {
        args.insert(1, sub.to_string());
    }
    args
}

/// The release build has no unwind tables (scripts/build-guest), and the
/// unwinder aborts the process when it cannot find its own frame. So no
/// backtrace may be taken:
/// - errors (anyhow) capture one while `RUST_BACKTRACE` or
///   `RUST_LIB_BACKTRACE` is set, which the kernel command line can do for
///   PID 1. std decides once per process whether `Backtrace::capture`
///   captures; deciding here, with the variables gone, holds for this
///   process and every fork of it (a container's init, where libcontainer
///   sets the container's own environment before its exec);
/// - the default panic hook decides on its own at the first panic, so it
///   is replaced by one that prints the same first lines (the shim finds
///   them on the console) and never a backtrace.
#[cfg(cocoon_no_unwind_tables)]
fn never_capture_backtraces() {
    // SAFETY: the first thing main does, before any other thread exists.
    unsafe {
        std::env::remove_var("RUST_BACKTRACE");
        std::env::remove_var("RUST_LIB_BACKTRACE");
    }
    let _ = std::backtrace::Backtrace::capture();
    std::panic::set_hook(Box::new(|info| {
        use std::io::Write;
        let thread = std::thread::current();
        let message = info.payload_as_str().unwrap_or("Box<dyn Any>");
        let report = panic_report(thread.name(), info.location(), message);
        let _ = std::io::stderr().write_all(report.as_bytes());
    }));
}

/// What the panic hook prints: the default hook's first lines.
#[cfg_attr(not(cocoon_no_unwind_tables), allow(dead_code))]
fn panic_report(
    thread: Option<&str>,
    location: Option<&std::panic::Location<'_>>,
    message: &str,
) -> String {
    let name = thread.unwrap_or("<unnamed>");
    match location {
        Some(l) => format!("thread '{name}' panicked at {l}:\n{message}\n"),
        None => format!("thread '{name}' panicked:\n{message}\n"),
    }
}

fn main() -> ExitCode {
    #[cfg(cocoon_no_unwind_tables)]
    never_capture_backtraces();
    let argv: Vec<String> = std::env::args().collect();
    // A container operation for the pod agent: single-threaded, before
    // anything else starts.
    if argv.get(1).map(String::as_str) == Some(cocoon_guest::pod::oci::HELPER_ARG) {
        return cocoon_guest::pod::oci::helper_main(&argv);
    }
    // The pause container's process.
    if argv.first().map(String::as_str) == Some(cocoon_guest::pod::sandbox::PAUSE) {
        cocoon_guest::pod::pause();
    }
    // As a pod VM's init: the agent, never returning.
    if std::process::id() == 1 {
        cocoon_guest::pod::run_pid1();
    }
    let cli = Cli::parse_from(args());
    cocoon_guest::cli::init_logging();
    let rt = match cocoon_guest::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cocoon_guest::cli::run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::panic_report;

    /// The shim finds a guest panic on the console by `' panicked at `.
    #[test]
    fn the_panic_report_has_the_default_hooks_first_lines() {
        let here = std::panic::Location::caller();
        let r = panic_report(Some("tokio-rt-worker"), Some(here), "boom");
        assert_eq!(
            r,
            format!(
                "thread 'tokio-rt-worker' panicked at {}:{}:{}:\nboom\n",
                here.file(),
                here.line(),
                here.column()
            )
        );
        assert!(r.contains("' panicked at "), "{r}");
        assert_eq!(
            panic_report(None, None, "x"),
            "thread '<unnamed>' panicked:\nx\n"
        );
    }
}
