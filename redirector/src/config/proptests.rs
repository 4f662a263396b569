//! Property tests of the configuration parser: generated valid configurations
//! read back to the same values, mutated files never panic and every error
//! names the file and a line, prefixes survive display and parse.
//!
//! Case counts are kept low enough that the whole config test module runs in
//! a few seconds in a debug build.
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use proptest::collection::{hash_set, vec};
use proptest::prelude::*;
use proptest::sample::Index;

use super::*;

const ORIGIN: &str = "gen.toml";

// ---------------------------------------------------------------------------
// Strategies: valid, typed configurations
// ---------------------------------------------------------------------------

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).expect("test durations fit in u64")
}

/// A duration in `min..=max`: round milliseconds (what files hold) or any
/// nanosecond count.
fn duration(min: Duration, max: Duration) -> impl Strategy<Value = Duration> {
    let (lo, hi) = (nanos(min), nanos(max));
    prop_oneof![
        (lo.div_ceil(1_000_000)..=hi / 1_000_000).prop_map(|ms| ms * 1_000_000),
        lo..=hi,
    ]
    .prop_map(Duration::from_nanos)
}

/// `default` half of the time, so that omitting default keys is exercised.
fn or_default<T: Clone + fmt::Debug + 'static>(
    default: T,
    other: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    prop_oneof![Just(default), other].boxed()
}

fn probe_kind() -> impl Strategy<Value = ProbeKind> {
    let codes = hash_set(HTTP_STATUS_RANGE, 1..4).prop_map(|set| set.into_iter().collect::<Vec<_>>());
    prop_oneof![
        Just(ProbeKind::Tcp),
        Just(ProbeKind::Icmp),
        (
            or_default(DEFAULT_HTTP_PATH.to_owned(), "/[^\\s\\p{Cc}]{0,20}"),
            or_default(DEFAULT_HTTP_EXPECT.to_vec(), codes),
        )
            .prop_map(|(path, expect)| ProbeKind::Http { path, expect }),
        (
            or_default(DEFAULT_UDP_SEND.to_vec(), ".{0,12}".prop_map(String::into_bytes)),
            proptest::option::of(".{0,12}".prop_map(String::into_bytes)),
        )
            .prop_map(|(send, expect)| ProbeKind::Udp { send, expect }),
        (
            or_default(DEFAULT_DNS_NAME.to_owned(), "([a-z0-9_-]{1,10}\\.){1,3}"),
            or_default(
                DEFAULT_DNS_QTYPE,
                proptest::sample::select(
                    crate::health::dns::QTYPES
                        .iter()
                        .map(|(_, t)| *t)
                        .collect::<Vec<_>>()
                ),
            ),
            or_default(DEFAULT_DNS_RCODES, 1u16..64),
        )
            .prop_map(|(name, qtype, rcodes)| ProbeKind::Dns { name, qtype, rcodes }),
        ("/[a-z0-9/._-]{1,20}", vec("[^\\x00]{0,8}", 0..3)).prop_map(|(program, args)| {
            ProbeKind::Exec {
                command: std::iter::once(program).chain(args).collect(),
            }
        }),
    ]
}

/// A health check; `gate` picks the defaults of a `failback_gate`.
fn health_check(gate: bool) -> impl Strategy<Value = HealthCheck> {
    let (rise, fall) = match gate {
        true => (DEFAULT_GATE_RISE_FALL, DEFAULT_GATE_RISE_FALL),
        false => (DEFAULT_RISE, DEFAULT_FALL),
    };
    (
        probe_kind(),
        (
            proptest::option::of(duration(MIN_INTERVAL, MAX_INTERVAL)),
            proptest::option::of(duration(MIN_INTERVAL, MAX_INTERVAL)),
        ),
        proptest::option::of(duration(Duration::from_nanos(1), MAX_TIMEOUT)),
        (
            or_default(rise, RISE_FALL_RANGE),
            or_default(fall, RISE_FALL_RANGE),
        ),
        // None: the default; Some(None): "off".
        proptest::option::of(proptest::option::of(duration(
            *SILENCE_RANGE.start(),
            *SILENCE_RANGE.end(),
        ))),
    )
        .prop_map(move |(kind, (interval, down), timeout, (rise, fall), silence)| {
            let (default_interval, default_timeout) = match gate {
                true => kind.default_gate_timing(),
                false => kind.default_timing(),
            };
            let interval = interval.unwrap_or(default_interval);
            let down_interval = match (down, gate) {
                // Never shorter than the interval (refused).
                (Some(d), _) => d.max(interval),
                (None, true) => interval,
                (None, false) => kind.default_down_interval(interval),
            };
            HealthCheck {
                kind,
                interval,
                down_interval,
                timeout: timeout.unwrap_or(default_timeout),
                rise,
                fall,
                silence: match gate {
                    true => None,
                    false => silence.unwrap_or(Some(DEFAULT_SILENCE)),
                },
            }
        })
}

fn failover() -> impl Strategy<Value = Failover> {
    let d = Failover::default();
    let delay = || duration(Duration::ZERO, MAX_FAILBACK_DELAY);
    (
        (
            or_default(
                d.failback,
                prop_oneof![Just(Failback::Auto), Just(Failback::Manual)],
            ),
            or_default(d.failback_delay, delay()),
            or_default(
                d.all_down,
                prop_oneof![Just(AllDown::Keep), Just(AllDown::Drop), Just(AllDown::Pass)],
            ),
            or_default(d.share, SHARE_RANGE),
            or_default(d.flap_hold, delay()),
            proptest::option::weighted(0.3, health_check(true)),
        ),
        (
            proptest::option::weighted(0.3, hook(DEFAULT_PROMOTE_TIMEOUT)),
            prop_oneof![Just(PromoteFailure::Stay), Just(PromoteFailure::Move)],
            proptest::option::weighted(0.3, hook(DEFAULT_NOTIFY_TIMEOUT)),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (failback, failback_delay, all_down, share, flap_hold, failback_gate),
                (promote, on_promote_failure, notify, fence),
            )| {
                // Shared flows would reach a standby before its promotion: refused.
                let promote = promote.filter(|_| share == 0);
                Failover {
                    failback,
                    failback_delay,
                    all_down,
                    share,
                    flap_hold,
                    failback_gate,
                    // Only meaningful (and only accepted) with a promote hook.
                    on_promote_failure: match promote {
                        Some(_) => on_promote_failure,
                        None => PromoteFailure::Stay,
                    },
                    promote,
                    notify,
                    fence,
                    group: None,
                }
            },
        )
}

fn hook(default: Duration) -> impl Strategy<Value = Hook> {
    (
        prop_oneof![
            Just(vec!["/usr/local/bin/hook".to_owned()]),
            Just(vec![
                "/usr/bin/env".to_owned(),
                "promote db".to_owned(),
                "--now".to_owned()
            ]),
        ],
        or_default(
            default,
            duration(*HOOK_TIMEOUT_RANGE.start(), *HOOK_TIMEOUT_RANGE.end()),
        ),
    )
        .prop_map(|(command, timeout)| Hook { command, timeout })
}

/// An address of the test ranges: 198.18.0.0/15 or 2001:2::/48.
fn test_addr(v4: bool, bits: u128) -> IpAddr {
    match v4 {
        true => IpAddr::V4(Ipv4Addr::from(0xc612_0000 | (bits as u32 & 0x1_ffff))),
        false => IpAddr::V6(Ipv6Addr::from(
            (0x2001_0002_0000u128 << 80) | (bits & ((1 << 80) - 1)),
        )),
    }
}

/// Prefixes of the family `v4`: anywhere, or inside the test ranges.
fn prefix(v4: bool) -> impl Strategy<Value = Prefix> {
    let bits = prop_oneof![
        any::<u128>(),
        any::<u128>().prop_map(move |b| match test_addr(v4, b) {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        })
    ];
    (bits, any::<u8>())
        .prop_map(move |(bits, len)| match v4 {
            true => Prefix::truncate(IpAddr::V4(Ipv4Addr::from(bits as u32)), len % 33),
            false => Prefix::truncate(IpAddr::V6(Ipv6Addr::from(bits)), len % 129),
        })
        .prop_filter_map("a prefix of a usable length", |p| {
            p.filter(|p| !p.is_ipv4_mapped())
        })
}

/// Distinct `allow` and `deny` lists, none in both.
fn lists(v4: bool) -> impl Strategy<Value = (Vec<Prefix>, Vec<Prefix>)> {
    (vec(prefix(v4), 0..4), vec(prefix(v4), 0..4)).prop_map(|(allow, deny)| {
        let mut seen = HashSet::new();
        let allow: Vec<Prefix> = allow.into_iter().filter(|p| seen.insert(*p)).collect();
        let deny = deny.into_iter().filter(|p| seen.insert(*p)).collect();
        (allow, deny)
    })
}

/// A service without its name (names are drawn for all services at once).
fn service() -> impl Strategy<Value = Service> {
    let protocol = prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)];
    let mode = or_default(Mode::Nat, Just(Mode::Dsr));
    (
        any::<bool>(),
        any::<[u128; 3]>(),
        1..=u16::MAX,
        protocol,
        mode,
        any::<[Option<u16>; 2]>(),
    )
        .prop_flat_map(|(v4, [vip, p, s], port, protocol, mode, remaps)| {
            let remap = move |r: Option<u16>| match mode {
                // DSR cannot remap; a port equal to the service's is no remap.
                Mode::Dsr => None,
                Mode::Nat => r.filter(|&r| r != port && r != 0),
            };
            let base = Service {
                name: String::new(),
                vip: test_addr(v4, vip),
                port,
                protocol,
                mode,
                primary: Backend {
                    addr: test_addr(v4, p),
                    port: remap(remaps[0]),
                },
                secondary: Backend {
                    addr: test_addr(v4, s),
                    port: remap(remaps[1]),
                },
                health: HealthCheck::default_for(protocol),
                failover: Failover::default(),
                allow: Vec::new(),
                deny: Vec::new(),
            };
            let health = or_default(HealthCheck::default_for(protocol), health_check(false));
            (
                Just(base),
                health,
                or_default(Failover::default(), failover()),
                lists(v4),
            )
        })
        .prop_map(|(base, mut health, failover, (allow, deny))| {
            // A DSR service sees no silence.
            if base.mode == Mode::Dsr {
                health.silence = None;
            }
            (base, health, failover, (allow, deny))
        })
        .prop_map(|(base, health, failover, (allow, deny))| Service {
            health,
            failover,
            allow,
            deny,
            ..base
        })
}

fn gateway() -> impl Strategy<Value = Gateway> {
    let names = hash_set("[!-~&&[^/:]]{1,15}", 1..4)
        .prop_filter("no . or ..", |set| !set.contains(".") && !set.contains(".."))
        .prop_map(|set| set.into_iter().collect::<Vec<_>>());
    (
        names,
        or_default(
            XdpModeSetting::Auto,
            prop_oneof![Just(XdpModeSetting::Driver), Just(XdpModeSetting::Skb)],
        ),
        or_default(DEFAULT_FLOW_TABLE_SIZE, FLOW_TABLE_SIZE_RANGE),
        or_default(DEFAULT_MAX_SERVICES, MAX_SERVICES_RANGE),
        or_default(DEFAULT_TCP_FLOW_IDLE, FLOW_IDLE_RANGE),
        or_default(DEFAULT_UDP_FLOW_IDLE, FLOW_IDLE_RANGE),
        or_default(IcmpEcho::Answer, Just(IcmpEcho::Pass)),
    )
        .prop_map(
            |(
                interfaces,
                xdp_mode,
                flow_table_size,
                max_services,
                tcp_flow_idle,
                udp_flow_idle,
                icmp_echo,
            )| {
                // The last interface faces backends, or none does.
                let backend_interfaces = match (interfaces.len() > 1, interfaces.last()) {
                    (true, Some(last)) => vec![last.clone()],
                    _ => Vec::new(),
                };
                Gateway {
                    interfaces,
                    backend_interfaces,
                    xdp_mode,
                    flow_table_size,
                    max_services,
                    tcp_flow_idle,
                    udp_flow_idle,
                    icmp_echo,
                }
            },
        )
}

fn control() -> impl Strategy<Value = Control> {
    let d = Control::default();
    let metrics = (any::<bool>(), any::<u128>(), 1..=u16::MAX).prop_map(|(v4, bits, port)| {
        let ip = match v4 {
            true => IpAddr::V4(Ipv4Addr::from(bits as u32)),
            false => IpAddr::V6(Ipv6Addr::from(bits)),
        };
        SocketAddr::new(ip, port)
    });
    (
        or_default(d.socket, "/run/[a-z0-9._-]{1,20}\\.sock".prop_map(PathBuf::from)),
        or_default(d.state_dir, "/var/lib/[a-z]{1,12}".prop_map(PathBuf::from)),
        or_default(d.bpffs_dir, "/sys/fs/bpf/[a-z]{1,12}".prop_map(PathBuf::from)),
        proptest::option::of(metrics),
        or_default(d.probe_budget, PROBE_BUDGET_RANGE),
        // Under a directory of their own: never the socket, distinct.
        proptest::collection::btree_set("/run/peers/[a-z0-9]{1,8}\\.sock", 0..3),
    )
        .prop_map(
            |(socket, state_dir, bpffs_dir, metrics, probe_budget, peers)| Control {
                socket,
                state_dir,
                bpffs_dir,
                metrics,
                probe_budget,
                peers: peers.into_iter().map(PathBuf::from).collect(),
            },
        )
}

/// The rules across services that single strategies do not ensure; rarely
/// broken by random addresses, so filtering costs little.
fn consistent(cfg: &Config) -> bool {
    let mut tuples = HashSet::new();
    let mut nat = HashSet::new();
    cfg.services.iter().all(|s| {
        let backends = [s.primary, s.secondary];
        let own = backends.iter().all(|b| b.addr != s.vip) && s.primary != s.secondary;
        let shared = s.mode == Mode::Nat
            && !backends
                .iter()
                .all(|b| nat.insert((b.addr, b.port.unwrap_or(s.port), s.protocol)));
        own && !shared && tuples.insert((s.vip, s.port, s.protocol))
    })
}

/// A valid configuration of up to five services.
fn config() -> impl Strategy<Value = Config> {
    let names = hash_set("[A-Za-z0-9_.-]{1,64}", 5);
    (gateway(), vec(service(), 0..=5), names, control())
        .prop_map(|(gateway, services, names, control)| Config {
            gateway,
            services: services
                .into_iter()
                .zip(names)
                .map(|(s, name)| Service { name, ..s })
                .collect(),
            control,
            announce: None,
        })
        .prop_filter("consistent services", consistent)
}

// ---------------------------------------------------------------------------
// Writing a configuration as TOML, in one of many equivalent spellings
// ---------------------------------------------------------------------------

/// Choices of spelling, from a seed (xorshift64*): deterministic per case.
struct Style(u64);

impl Style {
    fn new(seed: u64) -> Style {
        // Non-zero (xorshift stays at zero), one state per seed but its top
        // bit, and a few rounds so that small seeds differ at once.
        let mut style = Style(seed << 1 | 1);
        for _ in 0..4 {
            style.next();
        }
        style
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }

    fn pick(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A TOML basic string, escaped by toml itself.
fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// One of the exact spellings of `d`.
fn spell(d: Duration, style: &mut Style) -> String {
    let n = nanos(d);
    let whole = |unit: u64| n.is_multiple_of(unit) && n > 0;
    match style.pick(6) {
        1 => format!("{}.{:09}s", n / 1_000_000_000, n % 1_000_000_000),
        2 if whole(1_000) => format!("{}µs", n / 1_000),
        3 if whole(1_000_000) => format!("{}ms", n / 1_000_000),
        4 if whole(60_000_000_000) => format!("{}m", n / 60_000_000_000),
        5 if whole(1_000_000) => format!("{}.{:03}s", n / 1_000_000_000, n / 1_000_000 % 1000),
        _ => format!("{n}ns"),
    }
}

/// Key-value lines of one table, each a `key = value` string.
#[derive(Default)]
struct Lines(Vec<String>);

impl Lines {
    fn key(&mut self, key: &str, value: String) {
        self.0.push(format!("{key} = {value}"));
    }

    /// Writes `key` unless it has its default and the style omits it.
    fn key_or_default<T: PartialEq + ?Sized>(
        &mut self,
        style: &mut Style,
        key: &str,
        value: &T,
        default: &T,
        text: String,
    ) {
        if value != default || style.coin() {
            self.key(key, text);
        }
    }

    /// As an inline table `{ k = v, ... }`.
    fn inline(&self) -> String {
        match self.0.is_empty() {
            true => "{}".to_owned(),
            false => format!("{{ {} }}", self.0.join(", ")),
        }
    }
}

fn array(items: &[String], style: &mut Style) -> String {
    if items.is_empty() || style.coin() {
        return format!("[{}]", items.join(", "));
    }
    let comma = if style.coin() { "," } else { "" };
    format!("[\n  {}{comma}\n]", items.join(",\n  "))
}

fn check_lines(check: &HealthCheck, protocol: Option<Protocol>, style: &mut Style) -> Lines {
    let mut l = Lines::default();
    // Without `kind`, a service's check probes with its own protocol.
    let implied = match (protocol, &check.kind) {
        (Some(Protocol::Tcp), ProbeKind::Tcp) | (Some(Protocol::Udp), ProbeKind::Udp { .. }) => style.coin(),
        _ => false,
    };
    if !implied {
        l.key("kind", q(check.kind.as_str()));
    }
    match &check.kind {
        ProbeKind::Tcp | ProbeKind::Icmp => {}
        ProbeKind::Http { path, expect } => {
            l.key_or_default(style, "path", path.as_str(), DEFAULT_HTTP_PATH, q(path));
            let codes: Vec<String> = expect.iter().map(u16::to_string).collect();
            let text = array(&codes, style);
            l.key_or_default(style, "expect", expect.as_slice(), DEFAULT_HTTP_EXPECT, text);
        }
        ProbeKind::Udp { send, expect } => {
            let text = |b: &[u8]| q(std::str::from_utf8(b).expect("generated from strings"));
            l.key_or_default(style, "send", send.as_slice(), DEFAULT_UDP_SEND, text(send));
            if let Some(expect) = expect {
                l.key("expect", text(expect));
            }
        }
        ProbeKind::Exec { command } => {
            let args: Vec<String> = command.iter().map(|a| q(a)).collect();
            l.key("command", array(&args, style));
        }
        ProbeKind::Dns { name, qtype, rcodes } => {
            use crate::health::dns::{QTYPES, RCODES};
            l.key_or_default(style, "query", name.as_str(), DEFAULT_DNS_NAME, q(name));
            let qname = QTYPES
                .iter()
                .find(|(_, t)| t == qtype)
                .map(|(n, _)| *n)
                .unwrap_or("A");
            l.key_or_default(style, "qtype", qtype, &DEFAULT_DNS_QTYPE, q(qname));
            let names: Vec<String> = RCODES
                .iter()
                .filter(|(_, c)| rcodes & (1 << c) != 0)
                .map(|(n, _)| q(n))
                .collect();
            let text = array(&names, style);
            l.key_or_default(style, "rcode", rcodes, &DEFAULT_DNS_RCODES, text);
        }
    }
    let ((interval, timeout), (rise, fall)) = match protocol {
        Some(_) => (check.kind.default_timing(), (DEFAULT_RISE, DEFAULT_FALL)),
        None => (
            check.kind.default_gate_timing(),
            (DEFAULT_GATE_RISE_FALL, DEFAULT_GATE_RISE_FALL),
        ),
    };
    let text = q(&spell(check.interval, style));
    l.key_or_default(style, "interval", &check.interval, &interval, text);
    let down = match protocol {
        Some(_) => check.kind.default_down_interval(check.interval),
        None => check.interval,
    };
    let text = q(&spell(check.down_interval, style));
    l.key_or_default(style, "down_interval", &check.down_interval, &down, text);
    if protocol.is_some() {
        // A DSR service's None is its default too: "off" is always accepted.
        let text = match check.silence {
            Some(d) => q(&spell(d, style)),
            None => q("off"),
        };
        l.key_or_default(style, "silence", &check.silence, &Some(DEFAULT_SILENCE), text);
    }
    let text = q(&spell(check.timeout, style));
    l.key_or_default(style, "timeout", &check.timeout, &timeout, text);
    l.key_or_default(style, "rise", &check.rise, &rise, check.rise.to_string());
    l.key_or_default(style, "fall", &check.fall, &fall, check.fall.to_string());
    l
}

fn failover_lines(f: &Failover, style: &mut Style) -> Lines {
    let d = Failover::default();
    let mut l = Lines::default();
    let failback = match f.failback {
        Failback::Auto => "auto",
        Failback::Manual => "manual",
    };
    l.key_or_default(style, "failback", &f.failback, &d.failback, q(failback));
    let text = q(&spell(f.failback_delay, style));
    l.key_or_default(
        style,
        "failback_delay",
        &f.failback_delay,
        &d.failback_delay,
        text,
    );
    let all_down = match f.all_down {
        AllDown::Keep => "keep",
        AllDown::Drop => "drop",
        AllDown::Pass => "pass",
    };
    l.key_or_default(style, "all_down", &f.all_down, &d.all_down, q(all_down));
    l.key_or_default(style, "share", &f.share, &d.share, f.share.to_string());
    let text = q(&spell(f.flap_hold, style));
    l.key_or_default(style, "flap_hold", &f.flap_hold, &d.flap_hold, text);
    for (key, hook, default) in [
        ("promote", &f.promote, DEFAULT_PROMOTE_TIMEOUT),
        ("notify", &f.notify, DEFAULT_NOTIFY_TIMEOUT),
    ] {
        if let Some(hook) = hook {
            let args: Vec<String> = hook.command.iter().map(|a| q(a)).collect();
            l.key(key, array(&args, style));
            let text = q(&spell(hook.timeout, style));
            l.key_or_default(style, &format!("{key}_timeout"), &hook.timeout, &default, text);
        }
    }
    if f.promote.is_some() {
        let text = q(&f.on_promote_failure.to_string());
        l.key_or_default(
            style,
            "on_promote_failure",
            &f.on_promote_failure,
            &PromoteFailure::Stay,
            text,
        );
    }
    l.key_or_default(style, "fence", &f.fence, &false, f.fence.to_string());
    if let Some(group) = &f.group {
        l.key("group", q(group));
    }
    l
}

/// Writes `cfg` as a configuration file; `seed` picks among equivalent
/// spellings (defaults omitted or written, inline or header tables, forms
/// of durations, prefixes and arrays).
fn emit(cfg: &Config, seed: u64) -> String {
    let style = &mut Style::new(seed);
    let mut out = String::new();
    let table = |out: &mut String, header: &str, lines: &Lines| {
        out.push_str(header);
        out.push('\n');
        for line in &lines.0 {
            out.push_str(line);
            out.push('\n');
        }
    };

    let g = &cfg.gateway;
    let mut l = Lines::default();
    let names: Vec<String> = g.interfaces.iter().map(|n| q(n)).collect();
    l.key("interfaces", array(&names, style));
    if !g.backend_interfaces.is_empty() {
        let names: Vec<String> = g.backend_interfaces.iter().map(|n| q(n)).collect();
        l.key("backend_interfaces", array(&names, style));
    }
    l.key_or_default(
        style,
        "xdp_mode",
        &g.xdp_mode,
        &XdpModeSetting::Auto,
        q(g.xdp_mode.as_str()),
    );
    let defaults = [
        ("flow_table_size", g.flow_table_size, DEFAULT_FLOW_TABLE_SIZE),
        ("max_services", g.max_services, DEFAULT_MAX_SERVICES),
        ("tcp_flow_idle", g.tcp_flow_idle, DEFAULT_TCP_FLOW_IDLE),
        ("udp_flow_idle", g.udp_flow_idle, DEFAULT_UDP_FLOW_IDLE),
    ];
    for (key, value, default) in defaults {
        l.key_or_default(style, key, &value, &default, value.to_string());
    }
    l.key_or_default(
        style,
        "icmp_echo",
        &g.icmp_echo,
        &IcmpEcho::Answer,
        q(g.icmp_echo.as_str()),
    );
    table(&mut out, "[gateway]", &l);

    for s in &cfg.services {
        let mut l = Lines::default();
        // Sub-tables written as headers must follow every key of the service.
        let mut headers: Vec<(&str, Lines)> = Vec::new();
        l.key("name", q(&s.name));
        l.key("vip", q(&s.vip.to_string()));
        l.key("port", s.port.to_string());
        l.key("protocol", q(s.protocol.as_str()));
        l.key_or_default(style, "mode", &s.mode, &Mode::Nat, q(s.mode.as_str()));
        for (key, be) in [("primary", &s.primary), ("secondary", &s.secondary)] {
            // The service's own port, written out, is no remap.
            let text = match be.port {
                None if style.coin() => match be.addr {
                    IpAddr::V4(a) => format!("{a}:{}", s.port),
                    IpAddr::V6(a) => format!("[{a}]:{}", s.port),
                },
                _ => be.to_string(),
            };
            l.key(key, q(&text));
        }
        for (key, list) in [("allow", &s.allow), ("deny", &s.deny)] {
            let items: Vec<String> = list
                .iter()
                .map(
                    |p| match p.prefix_len() == Prefix::host(p.addr()).prefix_len() && style.coin() {
                        true => q(&p.addr().to_string()),
                        false => q(&p.to_string()),
                    },
                )
                .collect();
            let text = array(&items, style);
            l.key_or_default(style, key, list, &Vec::new(), text);
        }
        if s.health != HealthCheck::default_for(s.protocol) || style.coin() {
            let health = check_lines(&s.health, Some(s.protocol), style);
            match style.coin() {
                true => l.key("health", health.inline()),
                false => headers.push(("[service.health]", health)),
            }
        }
        if s.failover != Failover::default() || style.coin() {
            let mut failover = failover_lines(&s.failover, style);
            let inline = style.coin();
            let mut gate_header = None;
            if let Some(gate) = &s.failover.failback_gate {
                let gate = check_lines(gate, None, style);
                match inline || style.coin() {
                    true => failover.key("failback_gate", gate.inline()),
                    false => gate_header = Some(gate),
                }
            }
            if inline {
                l.key("failover", failover.inline());
            } else if !failover.0.is_empty() || gate_header.is_some() || style.coin() {
                headers.push(("[service.failover]", failover));
                if let Some(gate) = gate_header {
                    headers.push(("[service.failover.failback_gate]", gate));
                }
            }
        }
        table(&mut out, "[[service]]", &l);
        for (header, lines) in &headers {
            table(&mut out, header, lines);
        }
    }

    let c = &cfg.control;
    if *c != Control::default() || style.coin() {
        let d = Control::default();
        let mut l = Lines::default();
        let path = |p: &PathBuf| q(&p.display().to_string());
        l.key_or_default(style, "socket", &c.socket, &d.socket, path(&c.socket));
        l.key_or_default(style, "state_dir", &c.state_dir, &d.state_dir, path(&c.state_dir));
        l.key_or_default(style, "bpffs_dir", &c.bpffs_dir, &d.bpffs_dir, path(&c.bpffs_dir));
        if let Some(m) = c.metrics {
            l.key("metrics", q(&m.to_string()));
        }
        let budget = c.probe_budget.to_string();
        l.key_or_default(style, "probe_budget", &c.probe_budget, &d.probe_budget, budget);
        if !c.peers.is_empty() || style.coin() {
            let peers: Vec<String> = c.peers.iter().map(path).collect();
            l.key("peers", format!("[{}]", peers.join(", ")));
        }
        table(&mut out, "[control]", &l);
    }
    out
}

// ---------------------------------------------------------------------------
// Mutations of a valid file
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Mutation {
    Delete(Index),
    Duplicate(Index),
    Swap(Index, Index),
    /// The value of a `key = value` line (the whole line if it has none).
    Replace(Index, String),
    Insert(Index, String),
}

/// Values a hand-edited file might hold, valid TOML or not.
fn junk() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        (0i64..100_000).prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|x| x.to_string()),
        ".{0,12}".prop_map(|s| q(&s)),
        "[ -~]{0,12}",
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("[1, \"a\"]".to_owned()),
        Just("1979-05-27".to_owned()),
        Just("\"198.18.1.5/24\"".to_owned()),
        Just("[\"2001:2::/48\"]".to_owned()),
        Just("\"5ms\"".to_owned()),
        Just("{ kind = \"tcp\" }".to_owned()),
    ]
}

/// Lines that might be inserted: headers, keys of any table, junk.
fn junk_line() -> impl Strategy<Value = String> {
    const KEYS: &[&str] = &[
        "name",
        "vip",
        "port",
        "allow",
        "deny",
        "icmp_echo",
        "kind",
        "interval",
        "health",
        "failover",
        "interfaces",
        "metrics",
        "\"a\\nb\"",
        "failback_gate",
    ];
    const HEADERS: &[&str] = &[
        "[gateway]",
        "[[service]]",
        "[service.health]",
        "[service.failover]",
        "[service.failover.failback_gate]",
        "[control]",
        "[[gateway]]",
        "[service]",
    ];
    prop_oneof![
        (proptest::sample::select(KEYS), junk()).prop_map(|(k, v)| format!("{k} = {v}")),
        proptest::sample::select(HEADERS).prop_map(str::to_owned),
        "[ -~]{0,20}",
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Delete),
        any::<Index>().prop_map(Mutation::Duplicate),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        (any::<Index>(), junk()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        (any::<Index>(), junk_line()).prop_map(|(i, l)| Mutation::Insert(i, l)),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for m in mutations {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match m {
            Mutation::Delete(i) => {
                lines.remove(i.index(n));
            }
            Mutation::Duplicate(i) => {
                let i = i.index(n);
                lines.insert(i, lines[i].clone());
            }
            Mutation::Swap(a, b) => lines.swap(a.index(n), b.index(n)),
            Mutation::Replace(i, value) => {
                let line = &mut lines[i.index(n)];
                *line = match line.split_once('=') {
                    Some((key, _)) => format!("{key}= {value}"),
                    None => value.clone(),
                };
            }
            Mutation::Insert(i, line) => lines.insert(i.index(n + 1), line.clone()),
        }
    }
    lines.join("\n") + "\n"
}

/// Checks that `e` reads `ORIGIN:LINE: ...` on one line, LINE in the file.
fn check_error(e: &ConfigError, text: &str) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(!msg.contains('\n'), "a message on several lines: {msg:?}");
    // A missing [gateway] is not at any line: the message names the file.
    if let ConfigError::MissingGateway { .. } = e {
        prop_assert_eq!(msg, format!("{ORIGIN}: missing required [gateway] table"));
        return Ok(());
    }
    let rest = msg.strip_prefix(&format!("{ORIGIN}:"));
    prop_assert!(rest.is_some(), "{msg:?} does not start with the file name");
    let line = rest
        .and_then(|r| r.split_once(':'))
        .and_then(|(line, _)| line.parse::<usize>().ok());
    prop_assert!(line.is_some(), "{msg:?} has no line number");
    let lines = text.lines().count();
    prop_assert!(
        line.is_some_and(|l| (1..=lines + 1).contains(&l)),
        "{msg:?}: line not in the file of {lines} lines"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// (a) Any valid configuration, written in any of its spellings, reads
    /// back to the same values.
    #[test]
    fn generated_configs_read_back(cfg in config(), seed in any::<u64>()) {
        let text = emit(&cfg, seed);
        match Config::from_str_named(&text, ORIGIN) {
            Ok(parsed) => prop_assert_eq!(parsed, cfg, "{}", text),
            Err(e) => return Err(TestCaseError::fail(format!("{e}\n{text}"))),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// (b) Edits of a valid file never panic; the result is a configuration or
    /// an error that names the file and a line of it. (Most edits break the
    /// file: of 20000 cases about 5% still parsed, the errors of every kind.)
    #[test]
    fn mutated_files_parse_or_name_a_line(
        cfg in config(),
        seed in any::<u64>(),
        mutations in vec(mutation(), 1..5),
    ) {
        let text = mutate(&emit(&cfg, seed), &mutations);
        if let Err(e) = Config::from_str_named(&text, ORIGIN) {
            check_error(&e, &text)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// (c) A prefix survives display and parse, a bare address is a host
    /// prefix, and an address with host bits set is refused, naming its network.
    #[test]
    fn prefixes_round_trip(v4 in any::<bool>(), bits in any::<u128>(), len in any::<u8>()) {
        let (addr, len) = match v4 {
            true => (IpAddr::V4(Ipv4Addr::from(bits as u32)), len % 33),
            false => (IpAddr::V6(Ipv6Addr::from(bits)), len % 129),
        };
        let p = Prefix::truncate(addr, len).expect("length in range");
        prop_assert_eq!(p.to_string().parse::<Prefix>(), Ok(p));
        prop_assert_eq!(p.prefix_len(), len);
        prop_assert!(p.contains(addr));
        prop_assert_eq!(addr.to_string().parse::<Prefix>(), Ok(Prefix::host(addr)));

        let text = format!("{addr}/{len}");
        match p.addr() == addr {
            true => prop_assert_eq!(text.parse::<Prefix>(), Ok(p)),
            false => {
                let e = text.parse::<Prefix>().expect_err("host bits set");
                prop_assert_eq!(&e, &PrefixError::HostBits { text: text.clone(), network: p });
                let suggestion = format!("\"{p}\"");
                prop_assert!(e.to_string().contains(&suggestion), "{}", e);
                prop_assert!(Prefix::new(addr, len).is_err());
            }
        }

        let (key, key_len) = p.mapped();
        match p.addr() {
            IpAddr::V4(a) => {
                prop_assert_eq!(key_len, 96 + len);
                prop_assert_eq!(Ipv6Addr::from(key).to_ipv4_mapped(), Some(a));
            }
            IpAddr::V6(a) => prop_assert_eq!((key, key_len), (a.octets(), len)),
        }
    }

    /// Any text: parsed or refused, never a panic; what parses prints back
    /// to a text that parses to the same prefix.
    #[test]
    fn prefix_parse_never_panics(text in prop_oneof!["[0-9a-fA-F.:/%]{0,24}", ".{0,24}"]) {
        if let Ok(p) = text.parse::<Prefix>() {
            prop_assert_eq!(p.to_string().parse::<Prefix>(), Ok(p));
        }
    }
}

/// The spellings `emit` produces are themselves checked: every one of a
/// fixed configuration parses back, and the seeds do vary the text.
#[test]
fn emit_varies_the_spelling() {
    let text = include_str!("../../../docs/examples/redirector.toml");
    let cfg = Config::from_str_named(text, ORIGIN).expect("the example parses");
    let mut texts: HashMap<String, u64> = HashMap::new();
    for seed in 0..64 {
        let text = emit(&cfg, seed);
        let parsed = Config::from_str_named(&text, ORIGIN).map_err(|e| format!("{e}\n{text}"));
        assert_eq!(parsed.as_ref(), Ok(&cfg), "seed {seed}");
        texts.entry(text).or_insert(seed);
    }
    assert!(texts.len() > 32, "only {} spellings", texts.len());
}
