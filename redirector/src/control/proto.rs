//! The operator protocol: one JSON object per line over a Unix socket. Every
//! message carries the protocol [`VERSION`]; a CLI and a daemon of different
//! versions refuse each other with a message that says so, instead of
//! misreading each other.
use serde::{Deserialize, Serialize};

use crate::policy::Slot;

/// Bumped when a request or response changes meaning.
pub const VERSION: u32 = 1;

/// A request from the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Request {
    /// Every service's state.
    Status,
    /// Pin a service to a backend (optionally for a while).
    Flip {
        /// Service name.
        service: String,
        /// Backend to pin.
        to: Slot,
        /// How long, in ms; `None`: until `auto`.
        for_ms: Option<u64>,
        /// Pin even if that backend is down.
        force: bool,
        /// Why (recorded).
        reason: Option<String>,
    },
    /// Back to automatic control.
    Auto {
        /// Service name.
        service: String,
        /// Why (recorded).
        reason: Option<String>,
    },
    /// Drain or undrain a backend.
    Drain {
        /// Service name.
        service: String,
        /// The backend.
        slot: Slot,
        /// True: drain; false: undrain.
        drained: bool,
        /// Why (recorded).
        reason: Option<String>,
    },
    /// Lift a backend's fence.
    Unfence {
        /// Service name.
        service: String,
        /// The backend.
        slot: Slot,
        /// Why (recorded).
        reason: Option<String>,
    },
    /// The transition log; with `follow`, then every new transition.
    Events {
        /// Keep the connection open and stream new events.
        follow: bool,
    },
    /// Re-read the configuration file.
    Reload,
    /// Remove the program, links and pins, then stop.
    Detach,
    /// Publish the servable VIPs to the routing daemon again (`true`,
    /// `redirector announce`) or withdraw them all (`redirector withdraw`).
    Announce {
        /// Announce or withdraw.
        on: bool,
        /// Why (recorded).
        reason: Option<String>,
    },
}

/// A request line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestLine {
    /// Protocol version of the sender.
    pub version: u32,
    /// The request.
    pub request: Request,
}

/// A response line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseLine {
    /// Protocol version of the sender.
    pub version: u32,
    /// The response.
    pub response: Response,
}

/// A response from the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Status`].
    Status(Status),
    /// The request was carried out.
    Done {
        /// What happened.
        message: String,
    },
    /// One transition ([`Request::Events`] sends one line per event).
    Event(EventRecord),
    /// End of the event backlog (without `follow`, the last line).
    End,
    /// The request was refused or failed.
    Error {
        /// Why, for the operator.
        message: String,
    },
}

/// What `redirector status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Daemon pid; `None` when the answer comes from the pinned maps alone.
    pub pid: Option<u32>,
    /// Version of the answering redirector.
    pub version: String,
    /// Where the data plane is pinned.
    pub pins: String,
    /// A note for the operator (e.g. the daemon is down).
    pub note: Option<String>,
    /// Every service.
    pub services: Vec<ServiceStatus>,
    /// The VIPs published for the routing daemon, with `[announce]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceStatus>,
}

/// `[announce]` in [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnnounceStatus {
    /// The TUN device (with `table`).
    #[serde(default)]
    pub device: Option<String>,
    /// The kernel table (with `table`).
    #[serde(default)]
    pub table: Option<u32>,
    /// The track file (with `track_file`) and what it holds.
    #[serde(default)]
    pub track_file: Option<(String, Option<u32>)>,
    /// An operator's `withdraw` in force, described.
    pub withdrawn: Option<String>,
    /// Every VIP of the configuration.
    pub vips: Vec<VipStatus>,
    /// The last route change that failed (retried every second).
    pub error: Option<String>,
}

/// One VIP in [`AnnounceStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VipStatus {
    /// The address.
    pub vip: String,
    /// Its route is in the table now (without routes: it counts as servable
    /// in the track file).
    pub published: bool,
    /// Why it is (not) published.
    pub why: String,
}

/// One service in [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Name.
    pub name: String,
    /// Map id.
    pub id: u32,
    /// `vip:port/protocol`.
    pub address: String,
    /// `nat` or `dsr`.
    pub mode: String,
    /// Where new flows go.
    pub active: Slot,
    /// `drop` or `pass` while both backends are down and the policy says so.
    pub all_down: Option<String>,
    /// Percent of new flows to the secondary while both are up.
    pub share: u8,
    /// An operator override, described.
    pub override_: Option<String>,
    /// A promotion under way or failed, described.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<String>,
    /// Primary then secondary.
    pub backends: Vec<BackendStatus>,
    /// The last transition.
    pub last: Option<EventRecord>,
    /// Flow-table entries of this service (`None` when not counted).
    pub flows: Option<u64>,
}

/// One backend in [`ServiceStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendStatus {
    /// Which one.
    pub slot: Slot,
    /// `addr` or `addr:port`.
    pub address: String,
    /// `up`, `down` or `unknown` (or `-` from the pinned maps alone).
    pub health: String,
    /// Seconds in that state.
    pub since_s: Option<f64>,
    /// Last probe reason.
    pub reason: Option<String>,
    /// Why its probe cannot run on this host right now (the gateway's own
    /// trouble; no verdict meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_error: Option<String>,
    /// Takes no new flows.
    pub drained: bool,
    /// Fenced: takes no traffic until an operator unfences it.
    #[serde(default)]
    pub fenced: bool,
    /// Counted down because this other service of the group sees it down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_down: Option<String>,
    /// Effective probe interval in ms.
    pub probe_interval_ms: Option<f64>,
    /// Packets forwarded to it.
    pub packets: u64,
    /// Bytes forwarded to it.
    pub bytes: u64,
    /// Reply packets translated back (NAT).
    pub reply_packets: u64,
    /// Reply bytes.
    pub reply_bytes: u64,
}

/// A transition as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Wall-clock time, ms since the Unix epoch.
    pub unix_ms: u64,
    /// Service name.
    pub service: String,
    /// Active backend before.
    pub from: Slot,
    /// Active backend after.
    pub to: Slot,
    /// Why, in words.
    pub cause: String,
    /// Time from the first evidence of the fault to the decision, in ms.
    pub detection_ms: Option<f64>,
    /// Operator (login name or uid) for manual actions.
    pub who: Option<String>,
    /// The operator's reason.
    pub why: Option<String>,
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn requests_round_trip_and_carry_the_version() {
        let r = RequestLine {
            version: VERSION,
            request: Request::Flip {
                service: "web".into(),
                to: Slot::Secondary,
                for_ms: Some(30_000),
                force: false,
                reason: Some("maintenance".into()),
            },
        };
        let line = serde_json::to_string(&r).unwrap();
        assert!(
            line.contains("\"version\":1") && line.contains("\"kind\":\"flip\""),
            "{line}"
        );
        let back: RequestLine = serde_json::from_str(&line).unwrap();
        assert_eq!(back.request, r.request);
    }

    #[test]
    fn a_newer_request_still_yields_its_version() {
        // A future CLI may send a request kind this daemon does not know: the
        // version must still be readable to answer with a clear message.
        let line = r#"{"version":99,"request":{"kind":"teleport"}}"#;
        assert!(serde_json::from_str::<RequestLine>(line).is_err());
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["version"], 99);
    }
}
