//! Standard output for listings, claims and documents.
//!
//! `println!` panics when standard output is a pipe whose reader has
//! gone (`cocoon pod ls | head -1`). Here a failed write ends nothing:
//! the rest of the output is dropped and the command finishes its work
//! (a `pod rm` of several pods still removes them all), then exits
//! non-zero, so `cocoon policy generate ... > pod.yaml && kubectl apply`
//! never goes on with a truncated file. A reader that went away is not
//! reported (as tools killed by SIGPIPE say nothing); any other write
//! error is, once.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Writes `args` (and a newline when `newline`) to standard output.
pub fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut out = std::io::stdout().lock();
    let r = if newline {
        writeln!(out, "{args}")
    } else {
        write!(out, "{args}").and_then(|()| out.flush())
    };
    if let Err(e) = r
        && !FAILED.swap(true, Ordering::Relaxed)
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: writing to standard output: {e}");
    }
}

static FAILED: AtomicBool = AtomicBool::new(false);

/// Whether some output was lost: the command must not exit 0.
pub fn failed() -> bool {
    FAILED.load(Ordering::Relaxed)
}

/// `println!` that survives a closed standard output (see the module).
macro_rules! outln {
    () => {
        $crate::out::write(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::out::write(format_args!($($arg)*), true)
    };
}

/// `print!` that survives a closed standard output (see the module).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::write(format_args!($($arg)*), false)
    };
}
