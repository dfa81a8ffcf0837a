//! What keeps one combination from ending a run: a panic inside it becomes a failed outcome
//! with the panic's message and location, and a cancellation request (SIGINT/SIGTERM) stops
//! its loops at the next iteration.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

static CANCEL: AtomicBool = AtomicBool::new(false);
/// Isolated scopes running now; while one is, panics are recorded instead of printed.
static ISOLATED: AtomicUsize = AtomicUsize::new(0);
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Asks the running combination to stop at its next iteration (called from a signal handler
/// thread).
pub fn request_cancel() {
    CANCEL.store(true, Ordering::SeqCst);
}

pub fn cancel_requested() -> bool {
    CANCEL.load(Ordering::SeqCst)
}

/// Installs the panic hook that [`isolate`] relies on: inside an isolated scope a panic's
/// message and location are kept for the outcome (a panic in a worker thread of that scope
/// too); outside, the previous hook reports it as usual. Call once, at start-up.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if ISOLATED.load(Ordering::SeqCst) == 0 {
            return previous(info);
        }
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let line = format!("{}{at}", message.replace('\n', " "));
        if let Ok(mut last) = LAST_PANIC.lock() {
            // The first panic is the cause; a worker's panic re-raised on the caller repeats it.
            last.get_or_insert(line);
        }
    }));
}

/// Runs `f`; a panic inside it comes back as `Err` with the panic's message and location,
/// marked as the internal error it is.
pub fn isolate<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    if let Ok(mut last) = LAST_PANIC.lock() {
        *last = None;
    }
    ISOLATED.fetch_add(1, Ordering::SeqCst);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    ISOLATED.fetch_sub(1, Ordering::SeqCst);
    result.map_err(|_| {
        let what = LAST_PANIC
            .lock()
            .ok()
            .and_then(|mut l| l.take())
            .unwrap_or_else(|| "unknown panic".into());
        format!("internal error (a bug in ipfs-accelerate, please report it): {what}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_location() {
        install_panic_hook();
        let e = isolate(|| {
            let v: Vec<u32> = Vec::new();
            v[3]
        })
        .unwrap_err();
        assert!(
            e.contains("index out of bounds") && e.contains("isolation.rs"),
            "{e}"
        );
        assert_eq!(isolate(|| 7).unwrap(), 7);
    }
}
