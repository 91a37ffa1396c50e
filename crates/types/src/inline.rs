//! Work that may run on an async worker thread only while nothing in it
//! blocks. A caller wraps such work in [`without_blocking`]; anything
//! inside that would block (a collateral fetch over the network, a read
//! of the store past a cache) asks [`may_block`] first and, told no,
//! fails at once instead. The caller then throws the result away and runs
//! the work again where blocking is allowed.

use std::cell::Cell;

thread_local! {
    /// While set (by [`without_blocking`]): nothing may block on this
    /// thread, and whether something wanted to.
    static DEFERRING: Cell<Option<bool>> = const { Cell::new(None) };
}

/// The message of the error something deferred by [`without_blocking`]
/// fails with (never seen by a client: the work runs again).
pub const DEFERRED: &str = "deferred to a blocking thread";

/// Runs `f` where nothing may block. `None` when something in it wanted
/// to (its result, whatever it is, must not be used); the caller then runs
/// the work again on a thread that may block. Everything else (parsing,
/// signatures, policies on values in hand) runs here, cheaper than a
/// hand-off to another thread.
pub fn without_blocking<T>(f: impl FnOnce() -> T) -> Option<T> {
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEFERRING.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(DEFERRING.with(|d| d.replace(Some(false))));
    let out = f();
    let wanted = DEFERRING.with(|d| d.get() == Some(true));
    (!wanted).then_some(out)
}

/// Whether blocking work may start here. Inside [`without_blocking`] it
/// may not, and the wish is noted. Ask before changing anything that
/// would outlive the deferred attempt (a remembered failure, a cache).
pub fn may_block() -> bool {
    DEFERRING.with(|d| match d.get() {
        Some(_) => {
            d.set(Some(true));
            false
        }
        None => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wish_to_block_discards_the_result_and_nesting_restores() {
        assert!(may_block());
        assert_eq!(without_blocking(|| 1), Some(1));
        assert_eq!(without_blocking(|| if may_block() { 1 } else { 2 }), None);
        // The wish does not outlive the call, and nothing leaks out of it.
        assert!(may_block());
        let outer = without_blocking(|| {
            let inner = without_blocking(may_block);
            assert_eq!(inner, None);
            // The outer call is still deferring, and saw no wish of its own.
            7
        });
        assert_eq!(outer, Some(7));
        // A panic inside restores the state too.
        let r = std::panic::catch_unwind(|| without_blocking(|| panic!("x")));
        assert!(r.is_err());
        assert!(may_block());
    }
}
