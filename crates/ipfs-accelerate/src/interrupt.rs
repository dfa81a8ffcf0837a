//! SIGINT, SIGTERM and SIGHUP. Whatever the program is doing, a signal first stops every
//! browser and driver it started (their process groups) and removes their profiles. A
//! command that keeps results (bench) has registered itself as cooperative: its loops see the
//! request at the next iteration, abandon the current combination, mark the run
//! `interrupted` and exit with [`EXIT_CODE`]. If it has not done so within its grace
//! ([`GRACE`] unless it set another; `serve` lets requests in flight finish) (a long
//! inference step cannot be cut short), or a second signal comes, the registered hook marks
//! the run and the process exits. Any other command exits at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// 128 + SIGINT, as shells report an interrupted program.
pub const EXIT_CODE: u8 = 130;
/// How long a cooperative command gets to stop by itself.
const GRACE: Duration = Duration::from_secs(5);
static GRACE_MS: AtomicU64 = AtomicU64::new(GRACE.as_millis() as u64);

static SIGNALLED: AtomicBool = AtomicBool::new(false);
type Hook = Box<dyn Fn() + Send>;
/// Set while a cooperative command runs: what to do before a forced exit.
static FORCED_EXIT_HOOK: Mutex<Option<Hook>> = Mutex::new(None);
static COOPERATIVE: AtomicBool = AtomicBool::new(false);

/// The error a cooperative command returns when it stopped on a signal.
#[derive(Debug, thiserror::Error)]
#[error("interrupted: {0}")]
pub struct Interrupted(pub String);

pub fn install() -> anyhow::Result<()> {
    ctrlc::set_handler(|| {
        let first = !SIGNALLED.swap(true, Ordering::SeqCst);
        ia_bench::request_cancel();
        ia_browser::kill_all();
        if !first || !COOPERATIVE.load(Ordering::SeqCst) {
            force_exit();
        }
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(GRACE_MS.load(Ordering::SeqCst)));
            force_exit();
        });
    })
    .map_err(|e| anyhow::anyhow!("cannot install the signal handler: {e}"))
}

/// Runs the cooperative command's hook (if any) and exits. The hook's lock is never released:
/// the main thread cannot start another write while the process goes.
fn force_exit() -> ! {
    ia_browser::kill_all();
    if let Ok(guard) = FORCED_EXIT_HOOK.lock() {
        if let Some(hook) = guard.as_ref() {
            hook();
        }
        std::mem::forget(guard);
    }
    eprintln!("interrupted");
    std::process::exit(i32::from(EXIT_CODE));
}

pub fn signalled() -> bool {
    SIGNALLED.load(Ordering::SeqCst)
}

/// Declares the running command cooperative, with what to do if it must be stopped from
/// outside (mark the run interrupted).
pub fn cooperate(on_forced_exit: Option<Hook>) {
    if let Ok(mut g) = FORCED_EXIT_HOOK.lock() {
        *g = on_forced_exit;
    }
    COOPERATIVE.store(true, Ordering::SeqCst);
}

/// How long a cooperative command gets to stop by itself after the first signal.
pub fn set_grace(grace: Duration) {
    GRACE_MS.store(grace.as_millis() as u64, Ordering::SeqCst);
}
