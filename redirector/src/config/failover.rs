//! The `[service.failover]` table: failback policy and delay, what happens
//! when both backends are down, the traffic share, flap damping and the
//! `failback_gate`, the `promote` and `notify` hooks and `fence`.
use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use super::ConfigError;
use super::health::{CheckDefaults, HealthCheck, RawHealth, command, convert_check};
use toml::Spanned;

use super::toml_source::{MaybeTable, RawValue, Section, raw_table};

// The decision machine's own vocabulary: one definition of each.
pub use crate::policy::{AllDown, Failback, PromoteFailure};

/// `[service.failover]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    /// Failback policy.
    pub failback: Failback,
    /// Continuous primary health required before an automatic failback.
    pub failback_delay: Duration,
    /// Both backends down.
    pub all_down: AllDown,
    /// Percent (0..=100) of new flows sent to the secondary while both are up.
    pub share: u8,
    /// How long a flapping backend (down more than 3 times in 60 s) is held
    /// down after it would rise, doubling per further flap up to 12×; zero
    /// turns damping off.
    pub flap_hold: Duration,
    /// A probe that must also pass before traffic returns to the primary.
    pub failback_gate: Option<HealthCheck>,
    /// Runs before traffic moves to the secondary (e.g. promote a standby
    /// database); traffic waits for it.
    pub promote: Option<Hook>,
    /// What a failed or timed-out `promote` does.
    pub on_promote_failure: PromoteFailure,
    /// Runs after every event of the service, never delaying a decision.
    pub notify: Option<Hook>,
    /// Traffic leaving the primary for the secondary fences the primary
    /// until `redirector unfence`.
    pub fence: bool,
    /// Services of one group fail over together: a backend down for one
    /// member counts as down for every member (e.g. DNS on 53/udp and
    /// 53/tcp, a website on 80 and 443). Members share their backends' addresses.
    pub group: Option<String>,
}

/// A command run on a transition: no shell, its own process group, killed
/// (with the group) at its timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// Program (absolute path) and arguments.
    pub command: Vec<String>,
    /// Longest run.
    pub timeout: Duration,
}

/// Default `promote_timeout`.
pub const DEFAULT_PROMOTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `notify_timeout`.
pub const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// Allowed hook timeouts.
pub const HOOK_TIMEOUT_RANGE: RangeInclusive<Duration> = Duration::from_millis(10)..=Duration::from_secs(600);

/// Default `flap_hold`.
pub const DEFAULT_FLAP_HOLD: Duration = Duration::from_secs(5);
/// Default `failback_delay`.
pub const DEFAULT_FAILBACK_DELAY: Duration = Duration::from_secs(1);

/// Longest allowed `failback_delay` (0 is allowed: fail back at once).
pub const MAX_FAILBACK_DELAY: Duration = Duration::from_secs(3600);
/// Allowed values of `share` (percent).
pub const SHARE_RANGE: RangeInclusive<u8> = 0..=100;

impl Default for Failover {
    fn default() -> Self {
        Failover {
            failback: Failback::Auto,
            failback_delay: DEFAULT_FAILBACK_DELAY,
            all_down: AllDown::Keep,
            share: 0,
            flap_hold: DEFAULT_FLAP_HOLD,
            failback_gate: None,
            promote: None,
            on_promote_failure: PromoteFailure::Stay,
            notify: None,
            fence: false,
            group: None,
        }
    }
}

raw_table! {
    /// `[service.failover]`.
    pub(super) RawFailover, "a [service.failover] table" {
        failback: RawValue,
        failback_delay: RawValue,
        all_down: RawValue,
        share: RawValue,
        flap_hold: RawValue,
        failback_gate: MaybeTable<RawHealth>,
        promote: RawValue,
        promote_timeout: RawValue,
        on_promote_failure: RawValue,
        notify: RawValue,
        notify_timeout: RawValue,
        fence: RawValue,
        group: RawValue,
    }
}

const FAILBACK_CHOICES: &[(&str, Failback)] = &[("auto", Failback::Auto), ("manual", Failback::Manual)];
const PROMOTE_FAILURE_CHOICES: &[(&str, PromoteFailure)] =
    &[("stay", PromoteFailure::Stay), ("move", PromoteFailure::Move)];
const ALL_DOWN_CHOICES: &[(&str, AllDown)] = &[
    ("keep", AllDown::Keep),
    ("drop", AllDown::Drop),
    ("pass", AllDown::Pass),
];

/// Converts `[service.failover]`; `service` is the service's section.
pub(super) fn convert_failover(
    service: &Section<'_>,
    span: Range<usize>,
    r: &RawFailover,
) -> Result<Failover, ConfigError> {
    let sec = service.sub("failover", span);
    sec.unknown_keys(&r.unknown, RawFailover::KEYS)?;
    let defaults = Failover::default();
    let failback = match &r.failback {
        Some(v) => sec.choice("failback", v, FAILBACK_CHOICES)?,
        None => defaults.failback,
    };
    let failback_delay = match &r.failback_delay {
        Some(v) => sec.duration("failback_delay", v, Duration::ZERO..=MAX_FAILBACK_DELAY)?,
        None => defaults.failback_delay,
    };
    let all_down = match &r.all_down {
        Some(v) => sec.choice("all_down", v, ALL_DOWN_CHOICES)?,
        None => defaults.all_down,
    };
    let share = match &r.share {
        Some(v) => sec.ranged("share", v, SHARE_RANGE)?,
        None => defaults.share,
    };
    let flap_hold = match &r.flap_hold {
        Some(v) => sec.duration("flap_hold", v, Duration::ZERO..=MAX_FAILBACK_DELAY)?,
        None => defaults.flap_hold,
    };
    let failback_gate = match sec.table("failback_gate", &r.failback_gate)? {
        // Named after the service alone: `failback_gate` is a unique key.
        Some((table, span)) => Some(convert_check(
            &service.sub("failback_gate", span),
            table,
            CheckDefaults::Gate,
        )?),
        None => None,
    };
    let hook = |key: &str,
                value: &Option<Spanned<RawValue>>,
                timeout_key: &str,
                timeout: &Option<Spanned<RawValue>>,
                default: Duration|
     -> Result<Option<Hook>, ConfigError> {
        let Some(value) = value else {
            return Ok(None);
        };
        let timeout = match timeout {
            Some(t) => sec.duration(timeout_key, t, HOOK_TIMEOUT_RANGE)?,
            None => default,
        };
        Ok(Some(Hook {
            command: command(&sec, key, value)?,
            timeout,
        }))
    };
    let promote = hook(
        "promote",
        &r.promote,
        "promote_timeout",
        &r.promote_timeout,
        DEFAULT_PROMOTE_TIMEOUT,
    )?;
    let notify = hook(
        "notify",
        &r.notify,
        "notify_timeout",
        &r.notify_timeout,
        DEFAULT_NOTIFY_TIMEOUT,
    )?;
    let on_promote_failure = match &r.on_promote_failure {
        Some(v) => sec.choice("on_promote_failure", v, PROMOTE_FAILURE_CHOICES)?,
        None => PromoteFailure::Stay,
    };
    // A setting that would do nothing is an error, not silence.
    for (key, value, needs) in [
        (
            "promote_timeout",
            &r.promote_timeout,
            ("promote", r.promote.is_some()),
        ),
        (
            "on_promote_failure",
            &r.on_promote_failure,
            ("promote", r.promote.is_some()),
        ),
        (
            "notify_timeout",
            &r.notify_timeout,
            ("notify", r.notify.is_some()),
        ),
    ] {
        if let (Some(v), (hook, false)) = (value, needs) {
            return Err(sec.invalid(key, &v.span(), format!("has no effect without `{hook}`")));
        }
    }
    if let (Some(v), true, true) = (&r.promote, promote.is_some(), share > 0) {
        return Err(sec.invalid(
            "promote",
            &v.span(),
            format!(
                "cannot be combined with share = {share}: shared flows would reach the secondary before it is promoted"
            ),
        ));
    }
    let fence = match &r.fence {
        Some(v) => sec.boolean("fence", v)?,
        None => false,
    };
    let group = match &r.group {
        Some(v) => {
            let name = sec.string("group", v)?;
            super::values::validate_service_name(name)
                .map_err(|m| sec.invalid("group", &v.span(), m.replace("service name", "group name")))?;
            Some(name.to_owned())
        }
        None => None,
    };
    Ok(Failover {
        failback,
        failback_delay,
        all_down,
        share,
        flap_hold,
        failback_gate,
        promote,
        on_promote_failure,
        notify,
        fence,
        group,
    })
}
