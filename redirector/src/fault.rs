//! Fault hooks for the reliability tests, compiled into debug builds only
//! (release builds, which operators run, have none): `REDIRECTOR_FAULT_<NAME>_MS`
//! in the daemon's environment delays the named step by that many ms.

/// `REDIRECTOR_FAULT_STALL_MS` every `REDIRECTOR_FAULT_STALL_EVERY_MS`: how
/// long and how often the daemon's event loop blocks its thread (debug
/// builds only; `None` otherwise).
pub fn stall() -> Option<(std::time::Duration, std::time::Duration)> {
    #[cfg(debug_assertions)]
    {
        let ms = |name: &str| {
            std::env::var(format!("REDIRECTOR_FAULT_{name}_MS"))
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map(std::time::Duration::from_millis)
        };
        Some((ms("STALL")?, ms("STALL_EVERY")?))
    }
    #[cfg(not(debug_assertions))]
    None
}

/// Completes `REDIRECTOR_FAULT_<name>_MS` ms from now if set (debug
/// builds only); never otherwise.
pub async fn after(name: &str) {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var(format!("REDIRECTOR_FAULT_{name}_MS"))
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        return;
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
    std::future::pending::<()>().await;
}

/// Whether this call of the step `name` fails: with
/// `REDIRECTOR_FAULT_<name>_AT=N`, the Nth call in this process does (debug
/// builds only; never otherwise).
pub fn fail(name: &str) -> bool {
    #[cfg(debug_assertions)]
    {
        use std::sync::Mutex;
        static CALLS: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());
        let Some(at) = std::env::var(format!("REDIRECTOR_FAULT_{name}_AT"))
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            return false;
        };
        let mut calls = CALLS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = match calls.iter_mut().find(|(k, _)| k == name) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                calls.push((name.to_owned(), 1));
                1
            }
        };
        n == at
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = name;
        false
    }
}

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
