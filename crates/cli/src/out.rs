//! Standard output for listings, claims and documents.
//!
//! `println!` panics when standard output is a pipe whose reader has
//! gone (`cocoon pod ls | head -1`). Here a reader that went away ends
//! nothing: the rest of the output is dropped and the command finishes
//! its work (a `pod rm` of several pods still removes them all). Any
//! other write error is reported once on standard error.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Writes `args` (and a newline when `newline`) to standard output.
pub fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    static REPORTED: AtomicBool = AtomicBool::new(false);
    let mut out = std::io::stdout().lock();
    let r = if newline {
        writeln!(out, "{args}")
    } else {
        write!(out, "{args}").and_then(|()| out.flush())
    };
    if let Err(e) = r
        && e.kind() != std::io::ErrorKind::BrokenPipe
        && !REPORTED.swap(true, Ordering::Relaxed)
    {
        eprintln!("warning: writing to standard output: {e}");
    }
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
