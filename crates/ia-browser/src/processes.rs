//! The browser's processes: the registry that lets every exit path stop them, and their memory.
//!
//! chromedriver starts in a process group of its own, which the browser joins; each group and
//! its profile folder are registered here until the driver is dropped, so a signal handler can
//! stop every browser process and remove every profile ([`kill_all`]) wherever the program was.
//!
//! The browser's memory as Linux accounts it: the peak resident set (`VmHWM` in
//! `/proc/<pid>/status`) of Chromium's renderer processes, which hold the page's JS heap and
//! wasm memory (onnxruntime-web's weights on wasm), and of its GPU process, which holds
//! SwiftShader's buffers. The page itself cannot say: `measureUserAgentSpecificMemory()` never
//! resolved in headless Chromium here. A fresh browser per combination makes the peak that
//! combination's, Chromium's own baseline included.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Running drivers: (process group id = chromedriver's pid, its browser profile folder).
static GROUPS: Mutex<Vec<(u32, PathBuf)>> = Mutex::new(Vec::new());

pub(crate) fn register_group(pgid: u32, profile: &Path) {
    if let Ok(mut g) = GROUPS.lock() {
        g.push((pgid, profile.to_path_buf()));
    }
}

/// Stops the group led by `pgid`: its members and any descendant that left the group.
pub(crate) fn kill_group(pgid: u32) {
    let strays = descendants(Path::new("/proc"), pgid);
    // SAFETY: plain kill(2) calls; a pid that is gone gives ESRCH, which is fine.
    unsafe {
        libc::kill(-(pgid as i32), libc::SIGKILL);
        for pid in strays {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    if let Ok(mut g) = GROUPS.lock() {
        g.retain(|(p, _)| *p != pgid);
    }
}

/// Stops every registered browser and driver and removes their profile folders. For signal
/// handlers and other exits that skip destructors; the drivers' own drops then find nothing
/// left to stop.
pub fn kill_all() {
    let groups: Vec<(u32, PathBuf)> = GROUPS.lock().map(|g| g.clone()).unwrap_or_default();
    for (pgid, profile) in groups {
        kill_group(pgid);
        let _ = std::fs::remove_dir_all(profile);
    }
}

/// Peak resident sets, bytes; None where /proc does not show the process (not Linux).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BrowserMemory {
    /// The largest renderer (the page's, next to any spare one).
    pub renderer_peak_bytes: Option<u64>,
    pub gpu_process_peak_bytes: Option<u64>,
}

/// The memory of the processes under `root` (chromedriver's pid).
pub fn browser_memory(root: u32) -> BrowserMemory {
    browser_memory_in(Path::new("/proc"), root)
}

fn browser_memory_in(proc: &Path, root: u32) -> BrowserMemory {
    let mut memory = BrowserMemory::default();
    for pid in descendants(proc, root) {
        let dir = proc.join(pid.to_string());
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let slot = if has_arg(&cmdline, b"--type=renderer") {
            &mut memory.renderer_peak_bytes
        } else if has_arg(&cmdline, b"--type=gpu-process") {
            &mut memory.gpu_process_peak_bytes
        } else {
            continue;
        };
        if let Some(bytes) = std::fs::read_to_string(dir.join("status"))
            .ok()
            .and_then(|s| ia_hardware::memory::proc_bytes(&s, "VmHWM"))
        {
            *slot = Some(slot.map_or(bytes, |b| b.max(bytes)));
        }
    }
    memory
}

/// Chromium's zygote children rewrite their process title, so their arguments are separated
/// by spaces, not NULs.
fn has_arg(cmdline: &[u8], arg: &[u8]) -> bool {
    cmdline.split(|&b| b == 0 || b == b' ').any(|a| a == arg)
}

/// Every process whose chain of parents reaches `root`.
fn descendants(proc: &Path, root: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(ppid) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| parent_pid(&s))
        {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            found.push(child);
            stack.push(child);
        }
    }
    found
}

/// The parent pid from `/proc/<pid>/stat`: the field after the state, which follows the
/// command name in parentheses (a name may itself contain spaces and parentheses).
fn parent_pid(stat: &str) -> Option<u32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_status_fields_are_read() {
        assert_eq!(parent_pid("42 (chrome (x) y) S 7 42 42 0"), Some(7));
        assert_eq!(
            ia_hardware::memory::proc_bytes(
                "Name:\tchrome\nVmPeak:\t 9 kB\nVmHWM:\t  2048 kB\n",
                "VmHWM"
            ),
            Some(2048 * 1024)
        );
        assert!(has_arg(
            b"chromium\0--type=renderer\0--lang=en\0",
            b"--type=renderer"
        ));
        assert!(!has_arg(
            b"chromium\0--type=renderers\0",
            b"--type=renderer"
        ));
        assert!(has_arg(
            b"/usr/lib/chromium/chromium --type=renderer --lang=en",
            b"--type=renderer"
        ));
    }

    #[test]
    fn the_largest_renderer_and_the_gpu_process_under_the_root_are_found() {
        let proc = tempfile::tempdir().unwrap();
        let add = |pid: u32, ppid: u32, args: &str, kb: u64| {
            let dir = proc.path().join(pid.to_string());
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("stat"), format!("{pid} (x) S {ppid} 0 0")).unwrap();
            std::fs::write(dir.join("cmdline"), args).unwrap();
            std::fs::write(dir.join("status"), format!("VmHWM:\t{kb} kB\n")).unwrap();
        };
        add(10, 1, "chromedriver", 1);
        add(11, 10, "chromium --headless", 100);
        add(12, 11, "chromium --type=renderer", 300);
        add(13, 11, "chromium --type=renderer", 50);
        add(14, 11, "chromium --type=gpu-process", 200);
        // Another browser's renderer, not under the root.
        add(20, 1, "chromium --type=renderer", 900);
        let m = browser_memory_in(proc.path(), 10);
        assert_eq!(m.renderer_peak_bytes, Some(300 * 1024));
        assert_eq!(m.gpu_process_peak_bytes, Some(200 * 1024));
        assert_eq!(browser_memory_in(proc.path(), 99), BrowserMemory::default());
    }
}
