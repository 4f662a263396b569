//! Fault hooks for the reliability tests, compiled into debug builds only
//! (release builds, which operators run, have none): `REDIRECTOR_FAULT_<NAME>_MS`
//! in the daemon's environment delays the named step by that many ms.

/// Sleeps for `REDIRECTOR_FAULT_<name>_MS` ms, if set (debug builds only).
#[inline]
pub fn delay(name: &str) {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var(format!("REDIRECTOR_FAULT_{name}_MS"))
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
