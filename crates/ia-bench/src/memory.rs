//! Peak resident memory of this process.
//!
//! Linux keeps a high-water mark (VmHWM) that can be reset by writing "5" to
//! /proc/self/clear_refs, which lets each combination report its own peak.

/// Resets the high-water mark; returns whether the OS allowed it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// VmHWM in bytes, where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    ia_hardware::memory::proc_bytes(&status, "VmHWM")
}

/// VmRSS in bytes: what the process holds now.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    ia_hardware::memory::proc_bytes(&status, "VmRSS")
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn peak_grows_with_allocation() {
        reset_peak_rss();
        let before = peak_rss_bytes().unwrap();
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        let after = peak_rss_bytes().unwrap();
        assert!(after >= before + (60 << 20), "{before} -> {after}");
    }
}
