//! Signs in the traffic that a backend failed, from the data plane's
//! `SIGNALS` ring: a closed port's RST to a client's SYN, a destination
//! unreachable about a client's packet to a backend.
//!
//! - A *hint* is never a verdict: it asks for a probe of that backend now,
//!   and the probe's verdict decides as any other (a forged RST or ICMP
//!   error costs one probe; the data plane reports at most one hint per
//!   backend per 10 ms).
//! - *Evidence* — the refusal came from the backend's own address, on a
//!   `[gateway] backend_interfaces` link, from the backend's next-hop MAC,
//!   which no client can send — is what a refused probe is: one failed
//!   verdict (plus a probe now). This matters for UDP, whose only refusal
//!   is an ICMP error the backend's kernel rate-limits per destination: the
//!   gateway's own probe may find that budget spent while a client's
//!   request still gets its error. At most one per backend per ms.
//!
//! Services with traffic are so watched at line rate whatever their probe
//! interval. DSR replies do not cross the gateway: DSR services have probes
//! only.
use aya::maps::{MapData, RingBuf};
use log::warn;
use redirector_common::{SIGNAL_RST_CLOSED, Signal};
use tokio::io::unix::AsyncFd;

use super::{Daemon, services::Hint};
use crate::policy::Nanos;

/// Waits for signals and takes every one queued.
pub(super) async fn read(ring: &mut AsyncFd<RingBuf<MapData>>) -> Vec<Signal> {
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                warn!("data-path signal ring: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut got = Vec::new();
        while let Some(item) = RingBuf::next(guard.get_inner_mut()) {
            if let Ok(s) = bytemuck::try_pod_read_unaligned::<Signal>(&item) {
                got.push(s);
            }
        }
        guard.clear_ready();
        if !got.is_empty() {
            return got;
        }
    }
}

impl Daemon {
    pub(super) fn signals_in(&mut self, got: Vec<Signal>) {
        for s in got {
            let kind = if s.kind == SIGNAL_RST_CLOSED {
                "rst_closed"
            } else {
                "unreachable"
            };
            let effects = if s.evidence == 1 {
                let now = Nanos(crate::datapath::monotonic_ns());
                self.services.evidence(s.service, s.slot, now)
            } else {
                None
            };
            let (what, name) = self.services.hint(s.service, s.slot);
            let Some(name) = name.map(str::to_owned) else {
                continue;
            };
            let backend = if s.slot == 0 { "primary" } else { "secondary" };
            let action = match (&effects, what) {
                (Some(_), _) => "verdict",
                (None, Hint::Probing) => "probing",
                (None, Hint::Pending) => "pending",
                (None, Hint::Skipped) => "skipped",
            };
            self.metrics.signal(&name, backend, kind, action);
            if let Some(effects) = effects {
                self.apply(effects);
            }
        }
    }
}
