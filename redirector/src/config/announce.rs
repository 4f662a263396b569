//! The `[announce]` table: where the daemon publishes the VIPs it can serve,
//! for a routing daemon (BIRD, FRR) to announce to routers (`table`), and
//! for keepalived to follow (`track_file`).
//!
//! Each announceable VIP is a host route (/32, /128) in a dedicated kernel
//! table, through a TUN device the daemon owns: the device, and with it every
//! route, vanishes when the daemon dies. No `ip rule` should point at the
//! table: it is a list for the routing daemon, not a forwarding table.
//! The track file holds one integer for keepalived's `track_file`
//! ([`crate::announce::track`]).
use std::{ops::RangeInclusive, path::PathBuf};

use toml::Spanned;

use super::ConfigError;
use super::toml_source::{RawValue, Section, Source, raw_table};
use super::values::validate_ifname;

/// Default name of the TUN device the routes go through.
pub const DEFAULT_ANNOUNCE_DEVICE: &str = "redirector0";
/// Allowed values of `table`: any but 0 (unspecified) and the kernel's
/// `default` (253), `main` (254) and `local` (255) tables.
pub const ANNOUNCE_TABLE_RANGE: RangeInclusive<u32> = 1..=u32::MAX;
/// Tables the kernel itself uses.
const RESERVED_TABLES: [(u32, &str); 3] = [(253, "default"), (254, "main"), (255, "local")];

/// The validated `[announce]` table: at least one of its two ways.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Announce {
    /// Host routes for a routing daemon (`table`, `device`).
    pub routes: Option<AnnounceRoutes>,
    /// The file keepalived's `track_file` reads (`track_file`).
    pub track_file: Option<PathBuf>,
}

/// Where the host routes go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AnnounceRoutes {
    /// The TUN device the host routes go through (created by the daemon).
    pub device: String,
    /// The kernel routing table that holds them.
    pub table: u32,
}

raw_table! {
    /// `[announce]`.
    pub(super) RawAnnounce, "an [announce] table" {
        device: RawValue,
        table: RawValue,
        track_file: RawValue,
    }
}

pub(super) fn convert_announce(
    src: &Source<'_>,
    raw: &Spanned<RawAnnounce>,
    interfaces: &[String],
) -> Result<Announce, ConfigError> {
    let sec = Section {
        src,
        name: "[announce]".to_owned(),
        span: raw.span(),
    };
    let r = raw.get_ref();
    sec.unknown_keys(&r.unknown, RawAnnounce::KEYS)?;
    let track_file = r
        .track_file
        .as_ref()
        .map(|v| sec.absolute_path("track_file", v))
        .transpose()?;
    let Some(v) = &r.table else {
        if let Some(d) = &r.device {
            return Err(sec.invalid(
                "device",
                &d.span(),
                "a device without `table` publishes nothing; add `table`",
            ));
        }
        if track_file.is_none() {
            return Err(sec.invalid(
                "table",
                &raw.span(),
                "[announce] needs `table` (host routes for BIRD/FRR), `track_file` (for keepalived), or both",
            ));
        }
        return Ok(Announce {
            routes: None,
            track_file,
        });
    };
    let device = match &r.device {
        Some(v) => {
            let name = sec.string("device", v)?;
            validate_ifname(name).map_err(|m| sec.invalid("device", &v.span(), m))?;
            if interfaces.iter().any(|i| i == name) {
                return Err(sec.invalid(
                    "device",
                    &v.span(),
                    format!(
                        "{name:?} is one of [gateway] interfaces; the daemon creates this device itself, \
                         give it a name of its own"
                    ),
                ));
            }
            name.to_owned()
        }
        None => DEFAULT_ANNOUNCE_DEVICE.to_owned(),
    };
    let table = sec.ranged("table", v, ANNOUNCE_TABLE_RANGE)?;
    if let Some((_, name)) = RESERVED_TABLES.iter().find(|(t, _)| *t == table) {
        return Err(sec.invalid(
            "table",
            &v.span(),
            format!(
                "{table} is the kernel's {name:?} table; use a table of its own that no `ip rule` \
                 points at (e.g. 100)"
            ),
        ));
    }
    Ok(Announce {
        routes: Some(AnnounceRoutes { device, table }),
        track_file,
    })
}
