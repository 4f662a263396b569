//! What the CLI can do without the daemon: read the pinned data plane (the
//! daemon is down but traffic keeps flowing on its last decision), detach it,
//! and render status and events for people.
use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use redirector_common::{
    Backend as KBackend, BackendStats, Endpoint, SLOT_PRIMARY, SWITCH_DROP, SWITCH_PASS, ServiceInfo,
    SwitchState, names,
};

use crate::{
    config::Control,
    control::proto::{BackendStatus, EventRecord, ServiceStatus, Status},
    datapath::{PinDir, from16},
    policy::Slot,
    state::State,
};

fn open(pins: &PinDir, name: &str) -> Result<MapData> {
    let path = pins.map(name);
    MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Status read from the pinned maps and the state file alone.
pub fn status(ctl: &Control) -> Result<Status> {
    let pins = PinDir::new(&ctl.bpffs_dir);
    if !pins.exists() {
        bail!(
            "the redirector daemon is not running (no one listens on {}) and no data plane is pinned in {}",
            ctl.socket.display(),
            pins.dir().display()
        );
    }
    let state = State::load(&ctl.state_dir)?;
    let switch: Array<MapData, SwitchState> = Array::try_from(Map::Array(open(&pins, names::SWITCH)?))?;
    let backends: Array<MapData, KBackend> = Array::try_from(Map::Array(open(&pins, names::BACKENDS)?))?;
    let stats: PerCpuArray<MapData, BackendStats> =
        PerCpuArray::try_from(Map::PerCpuArray(open(&pins, names::BACKEND_STATS)?))?;
    let published: HashMap<MapData, Endpoint, ServiceInfo> =
        HashMap::try_from(Map::HashMap(open(&pins, names::SERVICES)?))?;
    let mut services = Vec::new();
    for (key, info) in published.iter().filter_map(std::result::Result::ok) {
        let id = info.id;
        let name = state
            .ids
            .iter()
            .find(|(_, i)| **i == id)
            .map_or_else(|| format!("id {id}"), |(n, _)| n.clone());
        let st = switch.get(&id, 0)?;
        let mut rows = Vec::new();
        for slot in Slot::ALL {
            let index = id * 2 + u32::try_from(slot.index()).unwrap_or(0);
            let be = backends.get(&index, 0)?;
            let s = stats
                .get(&index, 0)?
                .iter()
                .fold(BackendStats::default(), |a, s| BackendStats {
                    fwd_packets: a.fwd_packets + s.fwd_packets,
                    fwd_bytes: a.fwd_bytes + s.fwd_bytes,
                    rev_packets: a.rev_packets + s.rev_packets,
                    rev_bytes: a.rev_bytes + s.rev_bytes,
                });
            let addr = from16(be.addr);
            let port = u16::from_be(be.port_be);
            rows.push(BackendStatus {
                slot,
                address: if port == 0 {
                    addr.to_string()
                } else {
                    std::net::SocketAddr::new(addr, port).to_string()
                },
                health: if st.up & (1 << slot.index()) != 0 {
                    "up (last known)"
                } else {
                    "down (last known)"
                }
                .into(),
                since_s: None,
                reason: None,
                local_error: None,
                drained: st.drained & (1 << slot.index()) != 0,
                fenced: state.intents.get(&name).is_some_and(|i| i.fenced[slot.index()]),
                group_down: None,
                probe_interval_ms: None,
                packets: s.fwd_packets,
                bytes: s.fwd_bytes,
                reply_packets: s.rev_packets,
                reply_bytes: s.rev_bytes,
            });
        }
        let vip = from16(key.addr);
        let proto = match key.proto {
            6 => "tcp",
            17 => "udp",
            _ => "?",
        };
        services.push(ServiceStatus {
            name: name.clone(),
            id,
            address: format!(
                "{}/{proto}",
                std::net::SocketAddr::new(vip, u16::from_be(key.port_be))
            ),
            mode: if info.mode == 0 { "nat" } else { "dsr" }.into(),
            active: if st.active == SLOT_PRIMARY {
                Slot::Primary
            } else {
                Slot::Secondary
            },
            all_down: if st.flags & SWITCH_DROP != 0 {
                Some("drop".into())
            } else if st.flags & SWITCH_PASS != 0 {
                Some("pass".into())
            } else {
                None
            },
            share: st.share,
            override_: state
                .intents
                .get(&name)
                .and_then(|i| i.pin.as_ref())
                .map(|o| format!("pinned to the {} by {}", o.to, o.who)),
            promotion: None,
            backends: rows,
            last: state.last.get(&name).cloned(),
            flows: None,
        });
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let since = state
        .stopped_unix_ms
        .map(|ms| format!(" since {}", render_age(unix_ms_now().saturating_sub(ms))))
        .unwrap_or_default();
    Ok(Status {
        announce: None,
        pid: None,
        version: env!("CARGO_PKG_VERSION").into(),
        pins: pins.dir().display().to_string(),
        note: Some(format!(
            "the daemon is NOT running{since}: the data plane keeps forwarding on its last decision, but \
             nothing is probed and nothing fails over until it is started again"
        )),
        services,
    })
}

/// Removes the pinned data plane with the daemon down.
pub fn detach(ctl: &Control) -> Result<String> {
    let pins = PinDir::new(&ctl.bpffs_dir);
    if !pins.dir().exists() {
        return Ok(format!(
            "nothing to detach: {} does not exist",
            pins.dir().display()
        ));
    }
    // A daemon holds this lock for its lifetime: its data plane is never
    // removed behind its back (its socket may simply be elsewhere).
    let _lock = crate::lock::InstanceLock::acquire(&[&ctl.bpffs_dir], &[]).map_err(|e| match e {
        crate::lock::LockError::Held { pid, .. } => anyhow::anyhow!(
            "refusing to detach: a redirector daemon{} is running on {} but does not answer on {}; \
             detach through its own socket (`redirector --socket PATH detach`, or `--config FILE detach`), or \
             stop it and run detach again",
            pid.map_or(String::new(), |p| format!(" (pid {p})")),
            ctl.bpffs_dir.display(),
            ctl.socket.display()
        ),
        e => e.into(),
    })?;
    pins.remove()?;
    let mut done = format!(
        "detached: removed the XDP links and maps pinned in {}",
        pins.dir().display()
    );
    // What a clean stop left published goes with the data plane.
    let state = State::load(&ctl.state_dir).ok();
    if let Some(path) = state.as_ref().and_then(|s| s.track_file.as_ref()) {
        crate::announce::track::write(path, crate::announce::track::FAULT)
            .with_context(|| format!("writing the track file {}", path.display()))?;
        done.push_str(&format!(
            ", the track file {} says {} (FAULT)",
            path.display(),
            crate::announce::track::FAULT
        ));
    }
    if let Some(a) = state.and_then(|s| s.announced)
        && crate::announce::remove_left(&a.device)?
    {
        done.push_str(&format!(
            ", and the announce device {} with its routes in table {}",
            a.device, a.table
        ));
    }
    Ok(done)
}

fn render_age(ms: u64) -> String {
    let d = Duration::from_millis(ms);
    if d < Duration::from_secs(120) {
        format!("{:.1} s ago", d.as_secs_f64())
    } else if d < Duration::from_secs(7200) {
        format!("{} min ago", d.as_secs() / 60)
    } else {
        format!("{} h ago", d.as_secs() / 3600)
    }
}

/// One transition as a line.
pub fn render_event(e: &EventRecord) -> String {
    let mut s = format!(
        "{} {}: {} → {}: {}",
        render_age(unix_ms_now().saturating_sub(e.unix_ms)),
        e.service,
        e.from,
        e.to,
        e.cause
    );
    if let Some(ms) = e.detection_ms {
        let _ = write!(s, " (detected in {ms:.1} ms)");
    }
    if let Some(w) = &e.who {
        let _ = write!(s, " by {w}");
    }
    if let Some(w) = &e.why {
        let _ = write!(s, ": {w:?}");
    }
    s
}

/// `redirector status` for people.
pub fn render(st: &Status) -> String {
    let mut out = String::new();
    match st.pid {
        Some(pid) => {
            let _ = writeln!(
                out,
                "redirector {} (pid {pid}), data plane pinned in {}",
                st.version, st.pins
            );
        }
        None => {
            let _ = writeln!(out, "data plane pinned in {}", st.pins);
        }
    }
    if let Some(n) = &st.note {
        let _ = writeln!(out, "NOTE: {n}");
    }
    if let Some(a) = &st.announce {
        if let (Some(device), Some(table)) = (&a.device, a.table) {
            let _ = writeln!(out, "announce: routes on {device} in table {table}");
        }
        if let Some((path, value)) = &a.track_file {
            let value = value.map_or_else(|| "not written yet".to_owned(), |v| v.to_string());
            let _ = writeln!(out, "announce: track file {path} holds {value}");
        }
        if let Some(w) = &a.withdrawn {
            let _ = writeln!(
                out,
                "  WITHDRAWN: {w}; `redirector announce` publishes them again"
            );
        }
        for v in &a.vips {
            let mark = if v.published { "published" } else { "not published" };
            let _ = writeln!(out, "  {:<24} {mark} ({})", v.vip, v.why);
        }
        if let Some(e) = &a.error {
            let _ = writeln!(out, "  ROUTE CHANGE FAILING (retried every second): {e}");
        }
    }
    for s in &st.services {
        let _ = writeln!(out);
        let mut head = format!(
            "{} (id {}) {} {}: active {}",
            s.name, s.id, s.address, s.mode, s.active
        );
        if let Some(a) = &s.all_down {
            let _ = write!(head, ", BOTH DOWN: {a}");
        }
        if s.share > 0 {
            let _ = write!(head, ", {}% of new flows shared to the secondary", s.share);
        }
        let _ = writeln!(out, "{head}");
        if let Some(o) = &s.override_ {
            let _ = writeln!(out, "  override: {o}");
        }
        if let Some(p) = &s.promotion {
            let _ = writeln!(out, "  promotion: {p}");
        }
        for b in &s.backends {
            let mut line = format!("  {:<9} {:<24} {}", b.slot.to_string(), b.address, b.health);
            if let Some(since) = b.since_s {
                let _ = write!(
                    line,
                    " for {}",
                    render_age((since * 1000.0) as u64).trim_end_matches(" ago")
                );
            }
            if let Some(r) = &b.reason {
                let _ = write!(line, " ({r})");
            }
            if b.drained {
                line.push_str(", DRAINED");
            }
            if let Some(other) = &b.group_down {
                let _ = write!(line, ", DOWN FOR {other} OF ITS GROUP");
            }
            if b.fenced {
                line.push_str(", FENCED (takes no traffic until `redirector unfence`)");
            }
            let _ = write!(
                line,
                "; {} pkts {} B to it, {} pkts {} B back",
                b.packets, b.bytes, b.reply_packets, b.reply_bytes
            );
            if let Some(ms) = b.probe_interval_ms {
                let _ = write!(line, "; probed every {ms:.1} ms");
            }
            let _ = writeln!(out, "{line}");
            if let Some(e) = &b.local_error {
                let _ = writeln!(
                    out,
                    "    PROBE CANNOT RUN ON THIS HOST: {e} (the gateway's own trouble: no verdict, health \
                     held as it was)"
                );
            }
        }
        if let Some(f) = s.flows {
            let _ = writeln!(out, "  flow entries: {f}");
        }
        if let Some(e) = &s.last {
            let _ = writeln!(out, "  last: {}", render_event(e));
        }
    }
    out
}
