//! Unit tests of the configuration parser: valid files and the message of each error.
use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

const GATEWAY: &str = "[gateway]\ninterfaces = [\"eth0\"]\n";

fn err(text: &str) -> String {
    match Config::from_str_named(text, "test.toml") {
        Ok(cfg) => panic!("expected an error, got {cfg:?}"),
        Err(e) => e.to_string(),
    }
}

/// Asserts that the message contains each of `parts`.
fn assert_contains(msg: &str, parts: &[&str]) {
    for part in parts {
        assert!(msg.contains(part), "{msg:?} does not contain {part:?}");
    }
}

/// A gateway plus one service (starting at line 3) with `extra` lines
/// appended to it.
fn one_service(extra: &str) -> String {
    format!("{GATEWAY}[[service]]\n{extra}")
}

const SVC: &str = "name = \"web\"\nvip = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n";

#[test]
fn full_example() {
    let text = r#"
[gateway]
interfaces = ["eth0", "eth1"]
backend_interfaces = ["eth1"]
xdp_mode = "driver"
flow_table_size = 1024

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
primary = "198.18.2.2"
secondary = "198.18.3.2:8080"

[[service]]
name = "dns6"
vip = "2001:2::100"
port = 53
protocol = "udp"
mode = "dsr"
primary = "[2001:2::2]:53"
secondary = "[2001:2::3]"

[[service]]
name = "app-v6.remap"
vip = "2001:2::100"
port = 443
protocol = "tcp"
primary = "[2001:2::2]:8443"
secondary = "2001:2::1:80"
"#;
    let cfg = Config::from_str_named(text, "test.toml").expect("valid config");
    assert_eq!(
        cfg.gateway,
        Gateway {
            interfaces: vec!["eth0".to_owned(), "eth1".to_owned()],
            backend_interfaces: vec!["eth1".to_owned()],
            xdp_mode: XdpModeSetting::Driver,
            flow_table_size: 1024,
            max_services: DEFAULT_MAX_SERVICES,
            tcp_flow_idle: DEFAULT_TCP_FLOW_IDLE,
            udp_flow_idle: DEFAULT_UDP_FLOW_IDLE,
            icmp_echo: IcmpEcho::Answer,
        }
    );
    let v6 = |s: &str| IpAddr::V6(s.parse::<Ipv6Addr>().expect("v6"));
    let v4 = |s: &str| IpAddr::V4(s.parse::<Ipv4Addr>().expect("v4"));
    assert_eq!(
        cfg.services,
        vec![
            Service {
                name: "web".to_owned(),
                vip: v4("198.18.100.1"),
                port: 80,
                protocol: Protocol::Tcp,
                mode: Mode::Nat,
                primary: Backend {
                    addr: v4("198.18.2.2"),
                    port: None
                },
                secondary: Backend {
                    addr: v4("198.18.3.2"),
                    port: Some(8080)
                },
                health: HealthCheck::default_for(Protocol::Tcp),
                failover: Failover::default(),
                allow: Vec::new(),
                deny: Vec::new(),
            },
            Service {
                name: "dns6".to_owned(),
                vip: v6("2001:2::100"),
                port: 53,
                protocol: Protocol::Udp,
                mode: Mode::Dsr,
                // port 53 == service port: normalised to no remap
                primary: Backend {
                    addr: v6("2001:2::2"),
                    port: None
                },
                secondary: Backend {
                    addr: v6("2001:2::3"),
                    port: None
                },
                // DSR: the answers bypass the gateway, no silence to see.
                health: HealthCheck {
                    silence: None,
                    ..HealthCheck::default_for(Protocol::Udp)
                },
                failover: Failover::default(),
                allow: Vec::new(),
                deny: Vec::new(),
            },
            Service {
                name: "app-v6.remap".to_owned(),
                vip: v6("2001:2::100"),
                port: 443,
                protocol: Protocol::Tcp,
                mode: Mode::Nat,
                primary: Backend {
                    addr: v6("2001:2::2"),
                    port: Some(8443)
                },
                // "2001:2::1:80" is a plain IPv6 address
                secondary: Backend {
                    addr: v6("2001:2::1:80"),
                    port: None
                },
                health: HealthCheck::default_for(Protocol::Tcp),
                failover: Failover::default(),
                allow: Vec::new(),
                deny: Vec::new(),
            },
        ]
    );
    assert_eq!(cfg.services[0].secondary.to_string(), "198.18.3.2:8080");
    assert_eq!(cfg.services[2].primary.to_string(), "[2001:2::2]:8443");
    assert_eq!(cfg.services[1].primary.to_string(), "2001:2::2");
    assert_eq!(Protocol::Tcp.number(), 6);
    assert_eq!(Protocol::Udp.number(), 17);
}

#[test]
fn defaults_and_no_services() {
    let cfg = Config::from_str_named(GATEWAY, "test.toml").expect("valid config");
    assert_eq!(cfg.gateway.xdp_mode, XdpModeSetting::Auto);
    assert_eq!(cfg.gateway.flow_table_size, DEFAULT_FLOW_TABLE_SIZE);
    assert_eq!(cfg.gateway.max_services, DEFAULT_MAX_SERVICES);
    assert!(cfg.services.is_empty());
}

#[test]
fn from_file_reads_and_names_path() {
    let dir = std::env::temp_dir().join(format!("redirector-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("config.toml");
    std::fs::write(&path, format!("{GATEWAY}bogus = 1\n")).expect("write");
    let msg = Config::from_file(&path).expect_err("error").to_string();
    assert_contains(&msg, &[&format!("{}:3:", path.display()), "\"bogus\""]);
    std::fs::write(&path, GATEWAY).expect("write");
    assert!(Config::from_file(&path).is_ok());
    std::fs::remove_dir_all(&dir).expect("cleanup");

    let missing = dir.join("missing.toml");
    let e = Config::from_file(&missing).expect_err("error");
    assert!(matches!(e, ConfigError::Read { .. }));
    assert_contains(&e.to_string(), &["missing.toml", "cannot read"]);
}

#[test]
fn unknown_key_in_gateway() {
    let msg = err("[gateway]\ninterfaces = [\"eth0\"]\nflow_table = 1024\n");
    assert_contains(
        &msg,
        &[
            "test.toml:3:",
            "unknown key \"flow_table\"",
            "\"flow_table_size\"",
        ],
    );
}

#[test]
fn unknown_key_in_service() {
    let msg = err(&one_service(&format!(
        "{SVC}primary = \"198.18.2.2\"\nweight = 3\n"
    )));
    assert_contains(&msg, &["test.toml:9:", "unknown key \"weight\""]);
}

#[test]
fn unknown_top_level_table() {
    let msg = err(&format!("{GATEWAY}[services]\n"));
    assert_contains(&msg, &["test.toml:3:", "unknown key \"services\""]);
}

#[test]
fn syntax_error() {
    let msg = err("[gateway]\ninterfaces = [\"eth0\"\n");
    assert_contains(&msg, &["test.toml:"]);
    assert!(!msg.contains('\n'), "{msg:?}");
}

#[test]
fn duplicate_key() {
    let msg = err(&format!("{GATEWAY}interfaces = [\"eth1\"]\n"));
    assert_eq!(msg, "test.toml:3: duplicate key \"interfaces\"");
}

#[test]
fn bad_vip() {
    let msg = err(&one_service(
        "name = \"web\"\nvip = \"198.18.300.1\"\nport = 80\n",
    ));
    assert_contains(
        &msg,
        &["test.toml:5:", "service \"web\"", "key \"vip\"", "198.18.300.1"],
    );
}

#[test]
fn bad_mode() {
    let msg = err(&one_service(&format!("{SVC}mode = \"nta\"\n")));
    assert_eq!(
        msg,
        "test.toml:8: service \"web\": key \"mode\": unknown value \"nta\", expected \"nat\" or \"dsr\""
    );
}

#[test]
fn bad_protocol() {
    let msg = err(&one_service(
        "name = \"web\"\nvip = \"198.18.100.1\"\nport = 80\nprotocol = \"sctp\"\n",
    ));
    assert_contains(
        &msg,
        &[
            "test.toml:7:",
            "service \"web\"",
            "key \"protocol\"",
            "\"sctp\"",
            "\"tcp\" or \"udp\"",
        ],
    );
}

#[test]
fn bad_xdp_mode() {
    let msg = err("[gateway]\ninterfaces = [\"eth0\"]\nxdp_mode = \"native\"\n");
    assert_eq!(
        msg,
        "test.toml:3: [gateway]: key \"xdp_mode\": unknown value \"native\", expected \"auto\", \"driver\" or \"skb\""
    );
}

#[test]
fn wrong_type() {
    let msg = err(&one_service(
        "name = \"web\"\nvip = \"198.18.100.1\"\nport = \"80\"\n",
    ));
    assert_contains(
        &msg,
        &[
            "test.toml:6:",
            "key \"port\"",
            "expected an integer",
            "string \"80\"",
        ],
    );
}

#[test]
fn port_zero() {
    let msg = err(&one_service("name = \"web\"\nvip = \"198.18.100.1\"\nport = 0\n"));
    assert_contains(
        &msg,
        &[
            "test.toml:6:",
            "service \"web\"",
            "key \"port\"",
            "0 is out of range",
            "1..=65535",
        ],
    );
}

#[test]
fn port_too_large() {
    let msg = err(&one_service(
        "name = \"web\"\nvip = \"198.18.100.1\"\nport = 70000\n",
    ));
    assert_contains(
        &msg,
        &[
            "test.toml:6:",
            "service \"web\"",
            "key \"port\"",
            "70000 is out of range",
        ],
    );
}

#[test]
fn backend_port_out_of_range() {
    let msg = err(&one_service(&format!("{SVC}primary = \"198.18.2.2:70000\"\n")));
    assert_contains(
        &msg,
        &["test.toml:8:", "key \"primary\"", "70000", "out of range"],
    );
}

#[test]
fn gateway_ranges() {
    let msg = err("[gateway]\ninterfaces = [\"eth0\"]\nflow_table_size = 100\n");
    assert_contains(
        &msg,
        &["test.toml:3:", "key \"flow_table_size\"", "1024..=16777216"],
    );
    let msg = err("[gateway]\ninterfaces = [\"eth0\"]\nmax_services = 70000\n");
    assert_contains(&msg, &["test.toml:3:", "key \"max_services\"", "1024..=65536"]);
}

#[test]
fn missing_key() {
    let msg = err(&one_service("name = \"web\"\nvip = \"198.18.100.1\"\n"));
    assert_contains(
        &msg,
        &["test.toml:3:", "service \"web\"", "missing required key \"port\""],
    );
}

#[test]
fn family_mismatch() {
    let msg = err(&one_service(&format!(
        "{SVC}primary = \"198.18.2.2\"\nsecondary = \"2001:2::3\"\n"
    )));
    assert_contains(
        &msg,
        &[
            "test.toml:9:",
            "service \"web\"",
            "key \"secondary\"",
            "IPv6",
            "IPv4",
        ],
    );
}

#[test]
fn same_backends() {
    // Port equal to the service port is normalised, so these are the same.
    let msg = err(&one_service(&format!(
        "{SVC}primary = \"198.18.2.2\"\nsecondary = \"198.18.2.2:80\"\n"
    )));
    assert_contains(
        &msg,
        &["test.toml:9:", "service \"web\"", "same backend as primary"],
    );
}

#[test]
fn backend_is_vip() {
    let msg = err(&one_service(&format!("{SVC}primary = \"198.18.100.1:8080\"\n")));
    assert_contains(
        &msg,
        &["test.toml:8:", "service \"web\"", "key \"primary\"", "own vip"],
    );
}

#[test]
fn dsr_port_remap() {
    let msg = err(&one_service(&format!(
        "{SVC}mode = \"dsr\"\nprimary = \"198.18.2.2:8080\"\nsecondary = \"198.18.3.2\"\n"
    )));
    assert_contains(
        &msg,
        &[
            "test.toml:9:",
            "service \"web\"",
            "key \"primary\"",
            "dsr rewrites only L2; remove the port from primary/secondary or use mode = \"nat\"",
        ],
    );
}

#[test]
fn duplicate_service_tuple() {
    let text = format!(
        "{GATEWAY}[[service]]\n{SVC}primary = \"198.18.2.2\"\nsecondary = \"198.18.3.2\"\n\
         [[service]]\nname = \"web2\"\nvip = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n\
         primary = \"198.18.2.3\"\nsecondary = \"198.18.3.3\"\n"
    );
    let msg = err(&text);
    assert_contains(
        &msg,
        &[
            "test.toml:10:",
            "service \"web2\"",
            "198.18.100.1 80/tcp",
            "service \"web\" at line 3",
        ],
    );
    // Same vip and port with another protocol is fine.
    let ok = text.replacen(
        "protocol = \"tcp\"\nprimary = \"198.18.2.3\"",
        "protocol = \"udp\"\nprimary = \"198.18.2.3\"",
        1,
    );
    assert!(Config::from_str_named(&ok, "test.toml").is_ok());
}

#[test]
fn duplicate_name() {
    let text = format!(
        "{GATEWAY}[[service]]\n{SVC}primary = \"198.18.2.2\"\nsecondary = \"198.18.3.2\"\n\
         [[service]]\n{}primary = \"198.18.2.2\"\nsecondary = \"198.18.3.2\"\n",
        SVC.replace("port = 80", "port = 443")
    );
    let msg = err(&text);
    assert_contains(
        &msg,
        &[
            "test.toml:10:",
            "service \"web\"",
            "duplicate service name",
            "line 3",
        ],
    );
}

#[test]
fn bad_service_name() {
    let msg = err(&one_service("name = \"web site\"\n"));
    assert_contains(&msg, &["test.toml:4:", "service #1", "key \"name\"", "' '"]);
}

#[test]
fn missing_gateway() {
    let msg = err("[[service]]\nname = \"web\"\n");
    assert_eq!(msg, "test.toml: missing required [gateway] table");
}

#[test]
fn empty_interfaces() {
    let msg = err("\n[gateway]\ninterfaces = []\n");
    assert_contains(
        &msg,
        &["test.toml:3:", "[gateway]", "key \"interfaces\"", "at least one"],
    );
}

#[test]
fn invalid_ifname() {
    let msg = err("[gateway]\ninterfaces = [\n  \"eth0\",\n  \"eth/1\",\n]\n");
    assert_contains(&msg, &["test.toml:4:", "key \"interfaces\"", "\"eth/1\""]);
    let msg = err("[gateway]\ninterfaces = [\"averyveryverylongname\"]\n");
    assert_contains(&msg, &["test.toml:2:", "key \"interfaces\"", "maximum is 15"]);
    for bad in ["", ".", "..", "eth 0", "eth0:1"] {
        let msg = err(&format!("[gateway]\ninterfaces = [\"{bad}\"]\n"));
        assert_contains(&msg, &["test.toml:2:", "key \"interfaces\""]);
    }
    let msg = err("[gateway]\ninterfaces = [\"eth0\", \"eth0\"]\n");
    assert_contains(&msg, &["test.toml:2:", "more than once"]);
}

#[test]
fn ipv6_backend_forms() {
    let cases = [
        (
            "2001:2::1:80",
            Backend {
                addr: "2001:2::1:80".parse().expect("ip"),
                port: None,
            },
        ),
        (
            "[2001:2::1]:8080",
            Backend {
                addr: "2001:2::1".parse().expect("ip"),
                port: Some(8080),
            },
        ),
        (
            "[2001:2::1]",
            Backend {
                addr: "2001:2::1".parse().expect("ip"),
                port: None,
            },
        ),
    ];
    for (form, want) in cases {
        let text = one_service(&format!(
            "name = \"v6\"\nvip = \"2001:2::100\"\nport = 80\nprotocol = \"tcp\"\n\
             primary = \"{form}\"\nsecondary = \"2001:2::3\"\n"
        ));
        let cfg = Config::from_str_named(&text, "test.toml").expect(form);
        assert_eq!(cfg.services[0].primary, want, "{form}");
    }
    let msg = err(&one_service(&format!("{SVC}primary = \"[198.18.2.2]:80\"\n")));
    assert_contains(&msg, &["test.toml:8:", "key \"primary\"", "not an IPv6 address"]);
}

#[test]
fn scoped_ipv6_rejected() {
    let msg = err(&one_service(
        "name = \"v6\"\nvip = \"2001:2::100\"\nport = 80\nprotocol = \"tcp\"\nprimary = \"fe80::1%eth0\"\n",
    ));
    assert_contains(
        &msg,
        &[
            "test.toml:8:",
            "service \"v6\"",
            "key \"primary\"",
            "scoped",
            "%eth0",
        ],
    );
    let msg = err(&one_service("name = \"v6\"\nvip = \"fe80::1%eth0\"\n"));
    assert_contains(&msg, &["test.toml:5:", "key \"vip\"", "scoped"]);
    let msg = err(&one_service(
        "name = \"v6\"\nvip = \"2001:2::100\"\nport = 80\nprotocol = \"tcp\"\nprimary = \"[fe80::1%eth0]:80\"\n",
    ));
    assert_contains(&msg, &["test.toml:8:", "scoped", "\"%eth0\""]);
}

#[test]
fn too_many_services() {
    let mut text = String::from("[gateway]\ninterfaces = [\"eth0\"]\nmax_services = 1024\n");
    for i in 0..1025u32 {
        text.push_str(&format!(
            "[[service]]\nname = \"s{i}\"\nvip = \"198.18.100.1\"\nport = {}\nprotocol = \"tcp\"\n\
             primary = \"198.18.2.2\"\nsecondary = \"198.18.3.2\"\n",
            i + 1
        ));
    }
    let msg = err(&text);
    assert_contains(&msg, &["test.toml:3:", "max_services", "1025 services"]);
}

#[test]
fn nat_services_cannot_share_a_backend_endpoint() {
    let text = format!(
        "{GATEWAY}\n[[service]]\nname = \"web1\"\nvip = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n\
         primary = \"198.18.2.2\"\nsecondary = \"198.18.3.2\"\n\n[[service]]\nname = \"web2\"\n\
         vip = \"198.18.100.2\"\nport = 80\nprotocol = \"tcp\"\nprimary = \"198.18.3.2:80\"\n\
         secondary = \"198.18.2.2:8080\"\n"
    );
    let err = Config::from_str_named(&text, "gw.toml").expect_err("shared backend");
    let msg = err.to_string();
    assert!(
        msg.contains("gw.toml:12:") && msg.contains("web2") && msg.contains("web1"),
        "{msg}"
    );
    assert!(msg.contains("198.18.3.2:80"), "{msg}");
    // Another port, another protocol or DSR are fine.
    let ok = text.replace("198.18.3.2:80\"", "198.18.3.2:81\"");
    Config::from_str_named(&ok, "gw.toml").expect("different port");
    let ok = text.replacen("protocol = \"tcp\"", "protocol = \"udp\"", 1);
    Config::from_str_named(&ok, "gw.toml").expect("different protocol");
}

// -----------------------------------------------------------------------
// [service.health], [service.failover], [control]
// -----------------------------------------------------------------------

/// Backends completing `SVC`; with it the service spans lines 3..=9.
const BACKENDS: &str = "primary = \"198.18.2.2\"\nsecondary = \"198.18.3.2\"\n";

/// One tcp service "web" and a `[service.<table>]` at line 10; `body`
/// starts at line 11.
fn with_table(table: &str, body: &str) -> String {
    format!("{GATEWAY}[[service]]\n{SVC}{BACKENDS}[service.{table}]\n{body}")
}

fn health_err(body: &str) -> String {
    err(&with_table("health", body))
}

fn failover_err(body: &str) -> String {
    err(&with_table("failover", body))
}

/// `[control]` at line 3; `body` starts at line 4.
fn control_err(body: &str) -> String {
    err(&format!("{GATEWAY}[control]\n{body}"))
}

fn parse(text: &str) -> Config {
    match Config::from_str_named(text, "test.toml") {
        Ok(cfg) => cfg,
        Err(e) => panic!("{e}"),
    }
}

fn health_of(body: &str) -> HealthCheck {
    parse(&with_table("health", body)).services[0].health.clone()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn control_sections_full_example() {
    let text = r#"[gateway]
interfaces = ["eth0"]

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
primary = "198.18.2.2"
secondary = "198.18.3.2"

[service.health]
kind = "http"
interval = "500us"
timeout = "1.5s"
rise = 4
fall = 5
path = "/healthz?full=1"
expect = [200, 204]

[service.failover]
failback = "manual"
failback_delay = "2m"
all_down = "drop"
share = 25
flap_hold = "10s"

[service.failover.failback_gate]
kind = "exec"
command = ["/usr/local/bin/check", "--ready"]
interval = "2s"
timeout = "750ms"
rise = 2
fall = 3

[[service]]
name = "dns"
vip = "198.18.100.1"
port = 53
protocol = "udp"
primary = "198.18.2.2"
secondary = "198.18.3.2"
health = { send = "ping", expect = "pong", interval = "10ms", timeout = "20ms", rise = 1, fall = 1 }
failover = { all_down = "pass", failback_delay = "0s", failback_gate = { kind = "icmp" } }

[[service]]
name = "ssh"
vip = "198.18.100.1"
port = 22
protocol = "tcp"
primary = "198.18.2.2"
secondary = "198.18.3.2"
[service.health]
kind = "icmp"
[service.failover]
failback_gate = { kind = "http", path = "/ready", expect = [200], interval = "100ms", timeout = "50ms" }

[control]
socket = "/run/redirector/ctl.sock"
state_dir = "/var/lib/redirector-test"
bpffs_dir = "/sys/fs/bpf/redirector-test"
metrics = "[::1]:9630"
probe_budget = 100000
"#;
    let cfg = parse(text);
    let web = &cfg.services[0];
    assert_eq!(
        web.health,
        HealthCheck {
            kind: ProbeKind::Http {
                path: "/healthz?full=1".to_owned(),
                expect: vec![200, 204],
            },
            interval: Duration::from_micros(500),
            down_interval: Duration::from_micros(500),
            timeout: ms(1500),
            rise: 4,
            fall: 5,
            silence: Some(DEFAULT_SILENCE),
        }
    );
    assert_eq!(
        web.failover,
        Failover {
            failback: Failback::Manual,
            failback_delay: Duration::from_secs(120),
            all_down: AllDown::Drop,
            share: 25,
            flap_hold: Duration::from_secs(10),
            failback_gate: Some(HealthCheck {
                kind: ProbeKind::Exec {
                    command: vec!["/usr/local/bin/check".to_owned(), "--ready".to_owned()],
                },
                interval: ms(2000),
                down_interval: ms(2000),
                timeout: ms(750),
                rise: 2,
                fall: 3,
                silence: None,
            }),
            ..Failover::default()
        }
    );
    let dns = &cfg.services[1];
    assert_eq!(
        dns.health,
        HealthCheck {
            kind: ProbeKind::Udp {
                send: b"ping".to_vec(),
                expect: Some(b"pong".to_vec()),
            },
            interval: ms(10),
            down_interval: DEFAULT_UDP_DOWN_INTERVAL,
            timeout: ms(20),
            rise: 1,
            fall: 1,
            silence: Some(DEFAULT_SILENCE),
        }
    );
    assert_eq!(
        dns.failover,
        Failover {
            failback: Failback::Auto,
            failback_delay: Duration::ZERO,
            all_down: AllDown::Pass,
            share: 0,
            flap_hold: DEFAULT_FLAP_HOLD,
            failback_gate: Some(HealthCheck {
                kind: ProbeKind::Icmp,
                interval: DEFAULT_GATE_INTERVAL,
                down_interval: DEFAULT_GATE_INTERVAL,
                timeout: DEFAULT_GATE_TIMEOUT,
                rise: 1,
                fall: 1,
                silence: None,
            }),
            ..Failover::default()
        }
    );
    let ssh = &cfg.services[2];
    assert_eq!(ssh.health.kind, ProbeKind::Icmp);
    assert_eq!(
        ssh.failover.failback_gate,
        Some(HealthCheck {
            kind: ProbeKind::Http {
                path: "/ready".to_owned(),
                expect: vec![200],
            },
            interval: ms(100),
            down_interval: ms(100),
            timeout: ms(50),
            rise: 1,
            fall: 1,
            silence: None,
        })
    );
    assert_eq!(
        cfg.control,
        Control {
            socket: PathBuf::from("/run/redirector/ctl.sock"),
            state_dir: PathBuf::from("/var/lib/redirector-test"),
            bpffs_dir: PathBuf::from("/sys/fs/bpf/redirector-test"),
            metrics: Some("[::1]:9630".parse().expect("addr")),
            probe_budget: 100_000,
            peers: Vec::new(),
        }
    );
}

#[test]
fn control_sections_defaults() {
    let text = format!(
        "{GATEWAY}[[service]]\n{SVC}{BACKENDS}[[service]]\nname = \"dns\"\nvip = \"198.18.100.1\"\n\
         port = 53\nprotocol = \"udp\"\n{BACKENDS}"
    );
    let cfg = parse(&text);
    let tcp = HealthCheck {
        kind: ProbeKind::Tcp,
        interval: DEFAULT_INTERVAL,
        down_interval: DEFAULT_INTERVAL,
        timeout: DEFAULT_TIMEOUT,
        rise: DEFAULT_RISE,
        fall: DEFAULT_FALL,
        silence: Some(DEFAULT_SILENCE),
    };
    assert_eq!(cfg.services[0].health, tcp);
    assert_eq!(
        cfg.services[1].health,
        HealthCheck {
            kind: ProbeKind::Udp {
                send: DEFAULT_UDP_SEND.to_vec(),
                expect: None,
            },
            down_interval: DEFAULT_UDP_DOWN_INTERVAL,
            ..tcp.clone()
        }
    );
    let failover = Failover {
        failback: Failback::Auto,
        failback_delay: DEFAULT_FAILBACK_DELAY,
        all_down: AllDown::Keep,
        share: 0,
        flap_hold: DEFAULT_FLAP_HOLD,
        failback_gate: None,
        ..Failover::default()
    };
    assert_eq!(cfg.services[0].failover, failover);
    assert_eq!(cfg.services[1].failover, failover);
    assert_eq!(cfg.control, Control::default());
    assert_eq!(cfg.control.probe_budget, DEFAULT_PROBE_BUDGET);
    assert_eq!(cfg.control.metrics, None);

    // Empty tables are the same as absent ones.
    assert_eq!(health_of(""), tcp);
    assert_eq!(parse(&with_table("failover", "")).services[0].failover, failover);
    assert_eq!(
        parse(&format!("{GATEWAY}[control]\n")).control,
        Control::default()
    );
}

#[test]
fn backend_interfaces_must_be_attached_ones_listed_once() {
    let gw =
        |list: &str| format!("[gateway]\ninterfaces = [\"eth0\", \"eth1\"]\nbackend_interfaces = {list}\n");
    assert_eq!(parse(&gw("[]")).gateway.backend_interfaces, Vec::<String>::new());
    assert_eq!(parse(GATEWAY).gateway.backend_interfaces, Vec::<String>::new());
    assert_contains(
        &err(&gw("[\"eth2\"]")),
        &["backend_interfaces", "\"eth2\" is not in interfaces"],
    );
    assert_contains(
        &err(&gw("[\"eth1\", \"eth1\"]")),
        &["backend_interfaces", "listed more than once"],
    );
    assert_contains(
        &err(&gw("[1]")),
        &["backend_interfaces", "expected an interface name"],
    );
}

#[test]
fn silence_is_on_for_nat_off_for_dsr_and_gates() {
    assert_eq!(health_of("").silence, Some(ms(3)));
    assert_eq!(health_of("silence = \"off\"\n").silence, None);
    assert_eq!(health_of("silence = \"20ms\"\n").silence, Some(ms(20)));
    assert_contains(&health_err("silence = \"100us\"\n"), &["silence"]);
    assert_contains(&health_err("silence = 3\n"), &["silence", "duration"]);
    let dsr = |health: &str| {
        format!("{GATEWAY}[[service]]\n{SVC}mode = \"dsr\"\n{BACKENDS}[service.health]\n{health}")
    };
    assert_eq!(parse(&dsr("")).services[0].health.silence, None);
    assert_eq!(
        parse(&dsr("silence = \"off\"\n")).services[0].health.silence,
        None
    );
    assert_contains(
        &err(&dsr("silence = \"3ms\"\n")),
        &["silence", "bypass the gateway"],
    );
    assert_contains(
        &failover_err("failback_gate = { kind = \"tcp\", silence = \"3ms\" }\n"),
        &["silence", "only allowed in [service.health]"],
    );
}

#[test]
fn down_interval_defaults_to_the_icmp_budgets_refill_for_udp_only() {
    // The service in `with_table` is tcp: a tcp probe keeps its interval.
    assert_eq!(health_of("").down_interval, DEFAULT_INTERVAL);
    let udp = health_of("kind = \"udp\"\n");
    assert_eq!(udp.down_interval, Duration::from_secs(1));
    // Never shorter than the interval.
    let slow = health_of("kind = \"udp\"\ninterval = \"3s\"\n");
    assert_eq!(slow.down_interval, Duration::from_secs(3));
    let set = health_of("interval = \"5ms\"\ndown_interval = \"250ms\"\n");
    assert_eq!(set.down_interval, ms(250));
    let msg = err(&with_table(
        "health",
        "interval = \"50ms\"\ndown_interval = \"10ms\"\n",
    ));
    assert_contains(&msg, &["down_interval", "10ms is shorter than interval (50ms)"]);
}

#[test]
fn timing_defaults_follow_the_kind() {
    let exec = health_of("kind = \"exec\"\ncommand = [\"/bin/true\"]\n");
    assert_eq!(
        (exec.interval, exec.timeout),
        (DEFAULT_EXEC_INTERVAL, DEFAULT_EXEC_TIMEOUT)
    );
    assert_eq!(exec.interval, Duration::from_secs(1));
    let http = health_of("kind = \"http\"\n");
    assert_eq!(
        http.kind,
        ProbeKind::Http {
            path: "/".to_owned(),
            expect: vec![200],
        }
    );
    assert_eq!(
        (http.interval, http.timeout),
        (DEFAULT_HTTP_INTERVAL, DEFAULT_HTTP_TIMEOUT)
    );
    let icmp = health_of("kind = \"icmp\"\nrise = 1\n");
    assert_eq!(
        (icmp.interval, icmp.timeout, icmp.rise),
        (DEFAULT_INTERVAL, DEFAULT_TIMEOUT, 1)
    );
    // Setting one of the two keeps the other's default.
    let half = health_of("kind = \"exec\"\ncommand = [\"/bin/true\"]\ninterval = \"3s\"\n");
    assert_eq!(
        (half.interval, half.timeout),
        (Duration::from_secs(3), DEFAULT_EXEC_TIMEOUT)
    );
    // A timeout longer than the interval is allowed: probes overlap.
    let overlap = health_of("interval = \"1ms\"\ntimeout = \"60s\"\n");
    assert_eq!(
        (overlap.interval, overlap.timeout),
        (ms(1), Duration::from_secs(60))
    );

    // Gates: the slower of the gate defaults and the kind's, rise = fall = 1.
    let gate = |kind: &str| {
        parse(&with_table(
            "failover",
            &format!("failback_gate = {{ {kind} }}\n"),
        ))
        .services[0]
            .failover
            .failback_gate
            .clone()
            .expect("gate")
    };
    let tcp = gate("kind = \"tcp\"");
    assert_eq!(
        (tcp.interval, tcp.timeout, tcp.rise, tcp.fall),
        (DEFAULT_GATE_INTERVAL, DEFAULT_GATE_TIMEOUT, 1, 1)
    );
    let exec = gate("kind = \"exec\", command = [\"/bin/true\"]");
    assert_eq!(
        (exec.interval, exec.timeout),
        (DEFAULT_EXEC_INTERVAL, DEFAULT_EXEC_TIMEOUT)
    );
    let udp = gate("kind = \"udp\"");
    assert_eq!(
        udp.kind,
        ProbeKind::Udp {
            send: DEFAULT_UDP_SEND.to_vec(),
            expect: None
        }
    );
}

#[test]
fn health_table_attaches_to_the_last_service() {
    let text = format!(
        "{GATEWAY}[[service]]\n{SVC}{BACKENDS}\n[[service]]\nname = \"b\"\nvip = \"198.18.100.1\"\n\
         port = 81\nprotocol = \"tcp\"\nprimary = \"198.18.2.3\"\nsecondary = \"198.18.3.3\"\n\
         [service.health]\nrise = 7\n"
    );
    let cfg = parse(&text);
    assert_eq!(cfg.services[0].health.rise, DEFAULT_RISE);
    assert_eq!(cfg.services[1].health.rise, 7);
    // The error points into the sub-table and names the second service.
    let msg = err(&text.replace("rise = 7", "rise = 0"));
    assert_eq!(
        msg,
        "test.toml:19: service \"b\" health: key \"rise\": 0 is out of range, expected 1..=100"
    );
    // A health table before any [[service]] is not an array of services.
    let msg = err(&format!("{GATEWAY}[service.health]\nrise = 1\n"));
    assert_contains(&msg, &["test.toml:3:", "[[service]]"]);
    // Two health tables for one service.
    let msg = err(&with_table("health", "rise = 1\n[service.health]\nfall = 1\n"));
    assert_contains(&msg, &["test.toml:12:", "duplicate key"]);
}

#[test]
fn docs_example_parses() {
    let text = include_str!("../../../docs/examples/redirector.toml");
    let cfg = parse(text);
    let kinds: Vec<&str> = cfg.services.iter().map(|s| s.health.kind.as_str()).collect();
    assert_eq!(kinds, ["http", "udp", "exec"]);
    assert!(cfg.services[0].failover.failback_gate.is_some());
    assert_eq!(cfg.services[2].failover.failback, Failback::Manual);
    assert_eq!(cfg.control.metrics, Some("127.0.0.1:9630".parse().expect("addr")));
}

// Unknown keys.

#[test]
fn unknown_key_in_health() {
    let msg = health_err("rise = 2\nretries = 3\n");
    assert_eq!(
        msg,
        "test.toml:12: service \"web\" health: unknown key \"retries\", expected one of \"kind\", \
         \"interval\", \"down_interval\", \"timeout\", \"silence\", \"rise\", \"fall\", \"path\", \"expect\", \
         \"send\", \"command\", \"query\", \"qtype\", \"rcode\""
    );
}

#[test]
fn unknown_key_in_failover() {
    let msg = failover_err("share = 1\nfailback_dealy = \"1s\"\n");
    assert_contains(
        &msg,
        &[
            "test.toml:12:",
            "service \"web\" failover: ",
            "unknown key \"failback_dealy\"",
            "\"failback\", \"failback_delay\", \"all_down\", \"share\", \"flap_hold\", \"failback_gate\"",
        ],
    );
}

#[test]
fn unknown_key_in_failback_gate() {
    let msg = failover_err("\nfailback_gate = { kind = \"tcp\", port = 81 }\n");
    assert_contains(
        &msg,
        &[
            "test.toml:12:",
            "service \"web\" failback_gate: ",
            "unknown key \"port\"",
            "\"kind\", \"interval\"",
        ],
    );
    let msg = failover_err("[service.failover.failback_gate]\nkind = \"tcp\"\nbogus = 1\n");
    assert_contains(
        &msg,
        &[
            "test.toml:13:",
            "service \"web\" failback_gate: ",
            "unknown key \"bogus\"",
        ],
    );
}

#[test]
fn unknown_key_stays_on_one_line() {
    // A quoted key may hold any character; the message escapes it.
    let msg = err(&format!("\"a\\nb\" = 1\n{GATEWAY}"));
    assert_eq!(
        msg,
        "test.toml:1: unknown key \"a\\nb\", expected one of \"gateway\", \"service\", \"control\", \
         \"announce\""
    );
    let msg = err(&format!("{GATEWAY}\"x\\ty\" = 1\n"));
    assert_contains(&msg, &["test.toml:3: [gateway]: unknown key \"x\\ty\""]);
}

#[test]
fn unknown_key_in_control() {
    let msg = control_err("socket = \"/run/r.sock\"\nmetric = \"127.0.0.1:9630\"\n");
    assert_eq!(
        msg,
        "test.toml:5: [control]: unknown key \"metric\", expected one of \"socket\", \"state_dir\", \
         \"bpffs_dir\", \"metrics\", \"probe_budget\", \"peers\""
    );
}

#[test]
fn control_peers_are_other_sockets() {
    let cfg = parse(&format!(
        "{GATEWAY}[control]\nsocket = \"/run/r.sock\"\npeers = [\"/run/p/gw2.sock\", \"/run/p/gw3.sock\"]\n"
    ));
    assert_eq!(
        cfg.control.peers,
        vec![
            std::path::PathBuf::from("/run/p/gw2.sock"),
            std::path::PathBuf::from("/run/p/gw3.sock")
        ]
    );
    assert!(parse(GATEWAY).control.peers.is_empty());
    let msg = control_err("socket = \"/run/r.sock\"\npeers = [\"/run/r.sock\"]\n");
    assert_contains(&msg, &["key \"peers\"", "this gateway's own socket"]);
    let msg = control_err("peers = [\"/run/p.sock\", \"/run/p.sock\"]\n");
    assert_contains(&msg, &["key \"peers\"", "more than once"]);
    let msg = control_err("peers = [\"p.sock\"]\n");
    assert_contains(&msg, &["key \"peers\"", "not an absolute path"]);
    let msg = control_err("peers = \"/run/p.sock\"\n");
    assert_contains(&msg, &["key \"peers\"", "an array of socket paths"]);
    let long = format!("/{}", "x".repeat(120));
    let msg = control_err(&format!("peers = [\"{long}\"]\n"));
    assert_contains(&msg, &["key \"peers\"", "at most 107"]);
}

#[test]
fn unknown_key_names_the_service_and_the_gateway() {
    let msg = err(&one_service(&format!(
        "{SVC}{BACKENDS}helth = {{ kind = \"tcp\" }}\n"
    )));
    assert_contains(
        &msg,
        &[
            "test.toml:10:",
            "service \"web\": unknown key \"helth\"",
            "\"health\"",
        ],
    );
    // An unusable name: the service is named by its position.
    let msg = err(&one_service("name = \"a b\"\nweight = 1\n"));
    assert_contains(&msg, &["test.toml:5:", "service #1: unknown key \"weight\""]);
    let msg = err("[gateway]\ninterfaces = [\"eth0\"]\nflow_table = 1024\n");
    assert_contains(&msg, &["test.toml:3: [gateway]: unknown key \"flow_table\""]);
}

// Wrong types.

#[test]
fn table_key_with_a_scalar() {
    let msg = err(&one_service(&format!("{SVC}{BACKENDS}health = \"tcp\"\n")));
    assert_eq!(
        msg,
        "test.toml:10: service \"web\": key \"health\": expected a table, found string \"tcp\""
    );
    let msg = err(&one_service(&format!("{SVC}{BACKENDS}failover = [1]\n")));
    assert_contains(
        &msg,
        &[
            "test.toml:10:",
            "service \"web\"",
            "key \"failover\"",
            "found an array",
        ],
    );
    let msg = failover_err("failback_gate = true\n");
    assert_contains(
        &msg,
        &[
            "test.toml:11:",
            "service \"web\" failover",
            "key \"failback_gate\"",
            "found boolean true",
        ],
    );
    let msg = err(&one_service(&format!("{SVC}{BACKENDS}health = 1979-05-27\n")));
    assert_contains(&msg, &["test.toml:10:", "datetime", "health check table"]);
    let msg = err(&format!("control = 1\n{GATEWAY}"));
    assert_contains(&msg, &["test.toml:1:", "integer", "[control] table"]);
}

#[test]
fn wrong_value_types() {
    let msg = health_err("rise = \"3\"\n");
    assert_contains(
        &msg,
        &[
            "test.toml:11:",
            "service \"web\" health",
            "key \"rise\"",
            "expected an integer",
        ],
    );
    let msg = health_err("kind = 1\n");
    assert_contains(
        &msg,
        &[
            "test.toml:11:",
            "key \"kind\"",
            "expected a string, found integer 1",
        ],
    );
    let msg = health_err("interval = 5\n");
    assert_eq!(
        msg,
        "test.toml:11: service \"web\" health: key \"interval\": expected a duration string such as \
         \"500us\" or \"1.5s\", found integer 5"
    );
    let msg = failover_err("share = 0.5\n");
    assert_contains(
        &msg,
        &[
            "test.toml:11:",
            "service \"web\" failover",
            "key \"share\"",
            "float 0.5",
        ],
    );
    let msg = control_err("socket = 1\n");
    assert_contains(
        &msg,
        &["test.toml:4:", "[control]", "key \"socket\"", "expected a string"],
    );
    let msg = control_err("probe_budget = \"5000\"\n");
    assert_contains(
        &msg,
        &[
            "test.toml:4:",
            "[control]",
            "key \"probe_budget\"",
            "expected an integer",
        ],
    );
}

#[test]
fn bad_kind() {
    let msg = health_err("kind = \"ping\"\n");
    assert_eq!(
        msg,
        "test.toml:11: service \"web\" health: key \"kind\": unknown value \"ping\", expected \"tcp\", \
         \"http\", \"udp\", \"dns\", \"icmp\" or \"exec\""
    );
}

// Durations.

#[test]
fn duration_unparsable() {
    let msg = health_err("interval = \"5 parsecs\"\n");
    assert_contains(
        &msg,
        &[
            "test.toml:11:",
            "service \"web\" health",
            "key \"interval\"",
            "invalid duration \"5 parsecs\"",
            "\"500us\" or \"1.5s\"",
        ],
    );
    for bad in [
        "", "ms", "5", ".5s", "5.s", "1.2.3s", "-5ms", "5 ms", "5MS", "1e3ms", "5sec",
    ] {
        let msg = health_err(&format!("timeout = \"{bad}\"\n"));
        assert_contains(&msg, &["test.toml:11:", "key \"timeout\"", "duration"]);
    }
    let msg = health_err("timeout = \"5\"\n");
    assert_contains(&msg, &["has no unit"]);
    let msg = health_err("timeout = \"1.0000000001s\"\n");
    assert_contains(
        &msg,
        &[
            "test.toml:11:",
            "key \"timeout\"",
            "more precise than a nanosecond",
        ],
    );
    let msg = failover_err("failback_delay = \"99999999999999999999h\"\n");
    assert_contains(&msg, &["test.toml:11:", "key \"failback_delay\"", "too large"]);
}

#[test]
fn duration_forms() {
    let cases = [
        ("100us", Duration::from_micros(100)),
        ("100\u{b5}s", Duration::from_micros(100)),
        ("100\u{3bc}s", Duration::from_micros(100)),
        ("100000ns", Duration::from_micros(100)),
        ("0.1ms", Duration::from_micros(100)),
        ("1.5s", ms(1500)),
        ("2m", Duration::from_secs(120)),
        ("1h", Duration::from_secs(3600)),
        ("0.25h", Duration::from_secs(900)),
        ("007ms", ms(7)),
    ];
    for (text, want) in cases {
        assert_eq!(parse_duration(text), Ok(want), "{text}");
        assert_eq!(
            health_of(&format!("interval = \"{text}\"\n")).interval,
            want,
            "{text}"
        );
    }
    assert_eq!(
        parse_duration("18446744073.709551615s"),
        Ok(Duration::from_nanos(u64::MAX))
    );
    assert!(parse_duration("18446744073.709551616s").is_err());
}

#[test]
fn duration_zero() {
    let msg = health_err("interval = \"0ms\"\n");
    assert_eq!(
        msg,
        "test.toml:11: service \"web\" health: key \"interval\": \"0ms\" is zero, it must be greater than zero"
    );
    let msg = health_err("timeout = \"0s\"\n");
    assert_contains(
        &msg,
        &[
            "test.toml:11:",
            "service \"web\" health",
            "key \"timeout\"",
            "is zero",
        ],
    );
    // failback_delay may be zero.
    let cfg = parse(&with_table("failover", "failback_delay = \"0s\"\n"));
    assert_eq!(cfg.services[0].failover.failback_delay, Duration::ZERO);
}

#[test]
fn interval_too_short() {
    let msg = health_err("interval = \"99us\"\n");
    assert_eq!(
        msg,
        "test.toml:11: service \"web\" health: key \"interval\": \"99us\" is too short, the minimum is 100µs"
    );
    assert_eq!(health_of("interval = \"100us\"\n").interval, MIN_INTERVAL);
}

#[test]
fn interval_too_long() {
    let msg = health_err("interval = \"61m\"\n");
    assert_eq!(
        msg,
        "test.toml:11: service \"web\" health: key \"interval\": \"61m\" is too long, the maximum is 3600s"
    );
    assert_eq!(health_of("interval = \"1h\"\n").interval, MAX_INTERVAL);
}

#[test]
fn timeout_too_long() {
    let msg = health_err("interval = \"1s\"\ntimeout = \"60.001s\"\n");
    assert_eq!(
        msg,
        "test.toml:12: service \"web\" health: key \"timeout\": \"60.001s\" is too long, the maximum is 60s"
    );
    let msg = failover_err("failback_gate = { kind = \"tcp\", timeout = \"2m\" }\n");
    assert_contains(
        &msg,
        &[
            "test.toml:11:",
            "service \"web\" failback_gate",
            "key \"timeout\"",
            "60s",
        ],
    );
}

#[test]
fn failback_delay_range() {
    let msg = failover_err("failback_delay = \"3601s\"\n");
    assert_eq!(
        msg,
        "test.toml:11: service \"web\" failover: key \"failback_delay\": \"3601s\" is too long, the maximum is 3600s"
    );
    let cfg = parse(&with_table("failover", "failback_delay = \"60m\"\n"));
    assert_eq!(cfg.services[0].failover.failback_delay, MAX_FAILBACK_DELAY);
}

// rise, fall, share, budget.

#[test]
fn rise_fall_range() {
    for (body, key, value) in [
        ("rise = 0\n", "rise", "0"),
        ("rise = 101\n", "rise", "101"),
        ("fall = 0\n", "fall", "0"),
        ("fall = -1\n", "fall", "-1"),
        ("fall = 101\n", "fall", "101"),
    ] {
        let msg = health_err(body);
        assert_eq!(
            msg,
            format!(
                "test.toml:11: service \"web\" health: key \"{key}\": {value} is out of range, expected 1..=100"
            )
        );
    }
    let hc = health_of("rise = 100\nfall = 1\n");
    assert_eq!((hc.rise, hc.fall), (100, 1));
}

#[test]
fn share_range() {
    let msg = failover_err("share = 101\n");
    assert_eq!(
        msg,
        "test.toml:11: service \"web\" failover: key \"share\": 101 is out of range, expected 0..=100"
    );
    let msg = failover_err("share = -1\n");
    assert_contains(&msg, &["test.toml:11:", "key \"share\"", "-1 is out of range"]);
    let cfg = parse(&with_table("failover", "share = 100\n"));
    assert_eq!(cfg.services[0].failover.share, 100);
}

#[test]
fn failover_choices() {
    let msg = failover_err("failback = \"never\"\n");
    assert_eq!(
        msg,
        "test.toml:11: service \"web\" failover: key \"failback\": unknown value \"never\", expected \"auto\" or \"manual\""
    );
    let msg = failover_err("\nall_down = \"reject\"\n");
    assert_eq!(
        msg,
        "test.toml:12: service \"web\" failover: key \"all_down\": unknown value \"reject\", expected \"keep\", \"drop\" or \"pass\""
    );
}

// Kind-specific keys.

#[test]
fn key_of_another_kind() {
    let msg = health_err("kind = \"tcp\"\npath = \"/healthz\"\n");
    assert_eq!(
        msg,
        "test.toml:12: service \"web\" health: key \"path\": only allowed with kind = \"http\", but kind is \"tcp\""
    );
    // The kind defaults to the service's protocol: the message says so.
    let msg = health_err("path = \"/healthz\"\n");
    assert_eq!(
        msg,
        "test.toml:11: service \"web\" health: key \"path\": only allowed with kind = \"http\", but kind is \
         \"tcp\" (the default for a tcp service)"
    );
    let msg = health_err("kind = \"icmp\"\nexpect = [200]\n");
    assert_contains(
        &msg,
        &[
            "test.toml:12:",
            "key \"expect\"",
            "kind = \"http\" or kind = \"udp\"",
            "kind is \"icmp\"",
        ],
    );
    let msg = health_err("kind = \"http\"\nsend = \"x\"\n");
    assert_contains(
        &msg,
        &[
            "test.toml:12:",
            "key \"send\"",
            "kind = \"udp\"",
            "kind is \"http\"",
        ],
    );
    let msg = health_err("kind = \"udp\"\ncommand = [\"/bin/true\"]\n");
    assert_contains(
        &msg,
        &[
            "test.toml:12:",
            "key \"command\"",
            "kind = \"exec\"",
            "kind is \"udp\"",
        ],
    );
    let msg = failover_err("failback_gate = { kind = \"icmp\", path = \"/\" }\n");
    assert_contains(
        &msg,
        &[
            "test.toml:11:",
            "service \"web\" failback_gate",
            "key \"path\"",
            "kind is \"icmp\"",
        ],
    );
}

#[test]
fn http_path() {
    let msg = health_err("kind = \"http\"\npath = \"healthz\"\n");
    assert_eq!(
        msg,
        "test.toml:12: service \"web\" health: key \"path\": \"healthz\" must start with \"/\""
    );
    let msg = health_err("kind = \"http\"\npath = \"/a b\"\n");
    assert_contains(
        &msg,
        &["test.toml:12:", "service \"web\" health", "key \"path\"", "' '"],
    );
    let msg = health_err("kind = \"http\"\npath = \"/a\\r\\nHost: x\"\n");
    assert_contains(&msg, &["test.toml:12:", "key \"path\"", "'\\r'"]);
}

#[test]
fn http_expect() {
    let msg = health_err("kind = \"http\"\nexpect = []\n");
    assert_eq!(
        msg,
        "test.toml:12: service \"web\" health: key \"expect\": must list at least one status code"
    );
    let msg = health_err("kind = \"http\"\nexpect = [\n  200,\n  600,\n]\n");
    assert_eq!(
        msg,
        "test.toml:14: service \"web\" health: key \"expect\": 600 is not an HTTP status code, expected 100..=599"
    );
    let msg = health_err("kind = \"http\"\nexpect = [99]\n");
    assert_contains(
        &msg,
        &["test.toml:12:", "key \"expect\"", "99 is not an HTTP status code"],
    );
    let msg = health_err("kind = \"http\"\nexpect = 200\n");
    assert_contains(
        &msg,
        &[
            "test.toml:12:",
            "service \"web\" health",
            "key \"expect\"",
            "array of HTTP status codes",
        ],
    );
    let msg = health_err("kind = \"http\"\nexpect = [\"200\"]\n");
    assert_contains(&msg, &["test.toml:12:", "key \"expect\"", "found string \"200\""]);
    let msg = health_err("kind = \"http\"\nexpect = [200, 200]\n");
    assert_contains(
        &msg,
        &["test.toml:12:", "key \"expect\"", "200 is listed more than once"],
    );
}

#[test]
fn udp_send_and_expect() {
    let text = format!(
        "{GATEWAY}[[service]]\nname = \"dns\"\nvip = \"198.18.100.1\"\nport = 53\nprotocol = \"udp\"\n\
         {BACKENDS}[service.health]\nexpect = \"\"\n"
    );
    let cfg = parse(&text);
    assert_eq!(
        cfg.services[0].health.kind,
        ProbeKind::Udp {
            send: DEFAULT_UDP_SEND.to_vec(),
            expect: Some(Vec::new())
        }
    );
    let msg = err(&text.replace("expect = \"\"", "expect = [\"pong\"]"));
    assert_contains(
        &msg,
        &[
            "test.toml:11:",
            "service \"dns\" health",
            "key \"expect\"",
            "expected a string",
        ],
    );
    let msg = err(&text.replace("expect = \"\"", "send = 1"));
    assert_contains(&msg, &["test.toml:11:", "key \"send\"", "expected a string"]);
}

#[test]
fn exec_command() {
    let msg = health_err("kind = \"exec\"\n");
    assert_eq!(
        msg,
        "test.toml:10: service \"web\" health: missing required key \"command\""
    );
    let msg = health_err("kind = \"exec\"\ncommand = []\n");
    assert_contains(
        &msg,
        &[
            "test.toml:12:",
            "service \"web\" health",
            "key \"command\"",
            "must name the program",
        ],
    );
    let msg = health_err("kind = \"exec\"\ncommand = [\"check\", \"-v\"]\n");
    assert_eq!(
        msg,
        "test.toml:12: service \"web\" health: key \"command\": program \"check\" must be an absolute path"
    );
    let msg = health_err("kind = \"exec\"\ncommand = [\"/bin/check\",\n  3]\n");
    assert_contains(
        &msg,
        &[
            "test.toml:13:",
            "key \"command\"",
            "expected a string, found integer 3",
        ],
    );
    let msg = health_err("kind = \"exec\"\ncommand = \"/bin/check -v\"\n");
    assert_contains(
        &msg,
        &["test.toml:12:", "key \"command\"", "expected an array of strings"],
    );
    let msg = health_err("kind = \"exec\"\ncommand = [\"/bin/check\", \"a\\u0000b\"]\n");
    assert_contains(&msg, &["test.toml:12:", "key \"command\"", "NUL"]);
    let hc = health_of("kind = \"exec\"\ncommand = [\"/bin/check\", \"\", \"x y\"]\n");
    assert_eq!(
        hc.kind,
        ProbeKind::Exec {
            command: vec!["/bin/check".to_owned(), String::new(), "x y".to_owned()]
        }
    );
}

#[test]
fn failback_gate_needs_a_kind() {
    let msg = failover_err("share = 0\nfailback_gate = { interval = \"1s\" }\n");
    assert_eq!(
        msg,
        "test.toml:12: service \"web\" failback_gate: missing required key \"kind\""
    );
    let msg = failover_err("[service.failover.failback_gate]\nrise = 2\n");
    assert_eq!(
        msg,
        "test.toml:11: service \"web\" failback_gate: missing required key \"kind\""
    );
}

// allow, deny, icmp_echo

/// The service "web" (198.18.100.1:80/tcp) with `lists` at line 10.
fn with_lists(lists: &str) -> String {
    format!("{GATEWAY}[[service]]\n{SVC}{BACKENDS}{lists}")
}

/// A v6 service "web6" (2001:2::100:80/tcp) with `lists` at line 10.
fn with_lists_v6(lists: &str) -> String {
    format!(
        "{GATEWAY}[[service]]\nname = \"web6\"\nvip = \"2001:2::100\"\nport = 80\nprotocol = \"tcp\"\n\
         primary = \"2001:2::2\"\nsecondary = \"2001:2::3\"\n{lists}"
    )
}

fn prefixes(list: &[&str]) -> Vec<Prefix> {
    list.iter().map(|t| t.parse().expect("prefix")).collect()
}

#[test]
fn allow_and_deny_parse() {
    let cfg = parse(&with_lists(
        "allow = [\"198.18.1.0/24\", \"198.18.7.9\", \"0.0.0.0/0\"]\ndeny = [\n  \"198.18.1.128/25\",\n]\n",
    ));
    let web = &cfg.services[0];
    assert_eq!(
        web.allow,
        prefixes(&["198.18.1.0/24", "198.18.7.9/32", "0.0.0.0/0"])
    );
    assert_eq!(web.deny, prefixes(&["198.18.1.128/25"]));
    let cfg = parse(&with_lists_v6(
        "allow = [\"2001:2::/48\", \"2001:2:0:7::1\"]\ndeny = []\n",
    ));
    assert_eq!(
        cfg.services[0].allow,
        prefixes(&["2001:2::/48", "2001:2:0:7::1/128"])
    );
    assert!(cfg.services[0].deny.is_empty());
    // Absent lists are empty: every client.
    let cfg = parse(&with_lists(""));
    assert!(cfg.services[0].allow.is_empty() && cfg.services[0].deny.is_empty());
    assert!(cfg.services[0].admits("203.0.113.1".parse().expect("addr")));
}

#[test]
fn admits_deny_before_allow() {
    let cfg = parse(&with_lists(
        "allow = [\"198.18.0.0/16\"]\ndeny = [\"198.18.1.0/24\"]\n",
    ));
    let web = &cfg.services[0];
    let admits = |a: &str| web.admits(a.parse().expect("addr"));
    assert!(admits("198.18.2.1"));
    assert!(!admits("198.18.1.1"));
    assert!(!admits("203.0.113.1"));
    let cfg = parse(&with_lists("deny = [\"198.18.1.0/24\"]\n"));
    assert!(cfg.services[0].admits("203.0.113.1".parse().expect("addr")));
    assert!(!cfg.services[0].admits("198.18.1.7".parse().expect("addr")));
}

#[test]
fn prefix_errors() {
    let msg = err(&with_lists("allow = [\"198.18.1.5/24\"]\n"));
    assert_eq!(
        msg,
        "test.toml:10: service \"web\": key \"allow\": \"198.18.1.5/24\" has host bits set; the network \
         is \"198.18.1.0/24\""
    );
    let msg = err(&with_lists(
        "deny = [\n  \"198.18.1.0/24\",\n  \"198.18.1.0/33\",\n]\n",
    ));
    assert_eq!(
        msg,
        "test.toml:12: service \"web\": key \"deny\": prefix length 33 in \"198.18.1.0/33\" is out of \
         range, expected 0..=32"
    );
    let msg = err(&with_lists_v6("allow = [\"2001:2::/129\"]\n"));
    assert_contains(
        &msg,
        &["test.toml:10:", "service \"web6\"", "key \"allow\"", "0..=128"],
    );
    let msg = err(&with_lists("allow = [\"198.18.1.0/ 24\"]\n"));
    assert_contains(
        &msg,
        &[
            "test.toml:10:",
            "key \"allow\"",
            "invalid prefix \"198.18.1.0/ 24\"",
            "\"198.18.1.0/24\"",
        ],
    );
    let msg = err(&with_lists("allow = \"198.18.1.0/24\"\n"));
    assert_eq!(
        msg,
        "test.toml:10: service \"web\": key \"allow\": expected an array of prefixes such as \
         [\"198.18.1.0/24\"], found string \"198.18.1.0/24\""
    );
    let msg = err(&with_lists("deny = [24]\n"));
    assert_contains(&msg, &["test.toml:10:", "key \"deny\"", "found integer 24"]);
    let msg = err(&with_lists_v6("allow = [\"fe80::%eth0/64\"]\n"));
    assert_contains(&msg, &["test.toml:10:", "key \"allow\"", "scoped", "%eth0"]);
}

#[test]
fn prefix_family_must_match_the_vip() {
    let msg = err(&with_lists("allow = [\"198.18.1.0/24\", \"2001:2::/48\"]\n"));
    assert_eq!(
        msg,
        "test.toml:10: service \"web\": key \"allow\": prefix 2001:2::/48 is IPv6, but vip 198.18.100.1 \
         is IPv4; clients of an IPv4 vip are IPv4"
    );
    let msg = err(&with_lists_v6("\ndeny = [\"198.18.1.0/24\"]\n"));
    assert_eq!(
        msg,
        "test.toml:11: service \"web6\": key \"deny\": prefix 198.18.1.0/24 is IPv4, but vip 2001:2::100 \
         is IPv6; clients of an IPv6 vip are IPv6"
    );
    assert!(matches!(
        Config::from_str_named(&with_lists_v6("deny = [\"198.18.1.0/24\"]\n"), "test.toml"),
        Err(ConfigError::PrefixFamilyMismatch { .. })
    ));
    let msg = err(&with_lists_v6("allow = [\"::ffff:198.18.1.0/120\"]\n"));
    assert_contains(&msg, &["test.toml:10:", "key \"allow\"", "IPv4-mapped"]);
    // A v6 prefix that covers the mapped range is an ordinary prefix.
    assert_eq!(
        parse(&with_lists_v6("deny = [\"::/0\"]\n")).services[0].deny,
        prefixes(&["::/0"])
    );
}

#[test]
fn prefix_duplicates() {
    let msg = err(&with_lists("allow = [\"198.18.1.0/24\", \"198.18.1.0/24\"]\n"));
    assert_eq!(
        msg,
        "test.toml:10: service \"web\": key \"allow\": \"198.18.1.0/24\" is listed more than once"
    );
    let msg = err(&with_lists(
        "deny = [\n  \"198.18.1.5\",\n  \"198.18.1.5/32\",\n]\n",
    ));
    assert_eq!(
        msg,
        "test.toml:12: service \"web\": key \"deny\": \"198.18.1.5/32\" is listed more than once (as \
         \"198.18.1.5\")"
    );
    let msg = err(&with_lists_v6("allow = [\"2001:2::/48\", \"2001:0002::/48\"]\n"));
    assert_contains(&msg, &["test.toml:10:", "more than once", "(as \"2001:2::/48\")"]);
    let msg = err(&with_lists(
        "allow = [\"198.18.1.0/24\"]\ndeny = [\"198.18.1.0/24\"]\n",
    ));
    assert_eq!(
        msg,
        "test.toml:11: service \"web\": key \"deny\": \"198.18.1.0/24\" is also in allow; a prefix in \
         both lists is refused, keep it in one"
    );
    // Overlapping, not equal: a hole in an allowed range.
    let cfg = parse(&with_lists(
        "allow = [\"198.18.0.0/16\"]\ndeny = [\"198.18.0.0/17\"]\n",
    ));
    assert_eq!(cfg.services[0].deny, prefixes(&["198.18.0.0/17"]));
}

#[test]
fn prefix_list_cap() {
    let list = |n: usize| {
        (0..n)
            .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let cfg = parse(&with_lists(&format!("allow = [{}]\n", list(MAX_PREFIXES))));
    assert_eq!(cfg.services[0].allow.len(), MAX_PREFIXES);
    let msg = err(&with_lists(&format!("\ndeny = [{}]\n", list(MAX_PREFIXES + 1))));
    assert_eq!(
        msg,
        "test.toml:11: service \"web\": key \"deny\": 1025 prefixes listed, at most 1024 are allowed"
    );
}

#[test]
fn icmp_echo() {
    assert_eq!(parse(GATEWAY).gateway.icmp_echo, IcmpEcho::Answer);
    let cfg = parse(&format!("{GATEWAY}icmp_echo = \"pass\"\n"));
    assert_eq!(cfg.gateway.icmp_echo, IcmpEcho::Pass);
    assert_eq!(IcmpEcho::Pass.to_string(), "pass");
    let cfg = parse(&format!("{GATEWAY}icmp_echo = \"answer\"\n"));
    assert_eq!(cfg.gateway.icmp_echo, IcmpEcho::Answer);
    let msg = err(&format!("{GATEWAY}icmp_echo = \"reply\"\n"));
    assert_eq!(
        msg,
        "test.toml:3: [gateway]: key \"icmp_echo\": unknown value \"reply\", expected \"answer\" or \"pass\""
    );
    let msg = err(&format!("{GATEWAY}icmp_echo = true\n"));
    assert_contains(
        &msg,
        &[
            "test.toml:3:",
            "key \"icmp_echo\"",
            "expected a string, found boolean true",
        ],
    );
}

// [control]

#[test]
fn control_paths_must_be_absolute() {
    for key in ["socket", "state_dir", "bpffs_dir"] {
        let msg = control_err(&format!("\n{key} = \"run/redirector\"\n"));
        assert_eq!(
            msg,
            format!("test.toml:5: [control]: key \"{key}\": \"run/redirector\" is not an absolute path")
        );
    }
    let msg = control_err("state_dir = \"\"\n");
    assert_contains(
        &msg,
        &["test.toml:4:", "key \"state_dir\"", "not an absolute path"],
    );
}

#[test]
fn control_socket_path_length() {
    let long = format!("/run/{}", "s".repeat(103));
    let msg = control_err(&format!("socket = \"{long}\"\n"));
    assert_contains(
        &msg,
        &[
            "test.toml:4:",
            "[control]",
            "key \"socket\"",
            "108 bytes",
            "at most 107",
        ],
    );
    let ok = format!("/run/{}", "s".repeat(102));
    let cfg = parse(&format!("{GATEWAY}[control]\nsocket = \"{ok}\"\n"));
    assert_eq!(cfg.control.socket, PathBuf::from(ok));
}

#[test]
fn control_dirs_must_differ() {
    let msg = control_err("state_dir = \"/var/lib/r\"\nbpffs_dir = \"/var/lib/r/\"\n");
    assert_eq!(
        msg,
        "test.toml:5: [control]: key \"bpffs_dir\": \"/var/lib/r/\" is also state_dir; state_dir and \
         bpffs_dir must be different directories"
    );
    let msg = control_err("state_dir = \"/sys/fs/bpf/redirector\"\n");
    assert_contains(
        &msg,
        &[
            "test.toml:4:",
            "[control]",
            "key \"state_dir\"",
            "is also bpffs_dir (the default)",
        ],
    );
}

#[test]
fn control_metrics() {
    for (text, want) in [("127.0.0.1:9630", "127.0.0.1:9630"), ("[::]:9630", "[::]:9630")] {
        let cfg = parse(&format!("{GATEWAY}[control]\nmetrics = \"{text}\"\n"));
        assert_eq!(cfg.control.metrics, Some(want.parse().expect("addr")));
    }
    for bad in ["localhost:9630", "127.0.0.1", "::1:9630", "127.0.0.1:99999", ""] {
        let msg = control_err(&format!("metrics = \"{bad}\"\n"));
        assert_contains(
            &msg,
            &[
                "test.toml:4:",
                "[control]",
                "key \"metrics\"",
                "expected \"addr:port\" or \"[ipv6]:port\"",
            ],
        );
    }
    let msg = control_err("metrics = \"127.0.0.1:0\"\n");
    assert_contains(&msg, &["test.toml:4:", "key \"metrics\"", "port 0"]);
}

#[test]
fn control_probe_budget_range() {
    for bad in [99, 1_000_001] {
        let msg = control_err(&format!("probe_budget = {bad}\n"));
        assert_eq!(
            msg,
            format!(
                "test.toml:4: [control]: key \"probe_budget\": {bad} is out of range, expected 100..=1000000"
            )
        );
    }
    for ok in [100, 1_000_000] {
        let cfg = parse(&format!("{GATEWAY}[control]\nprobe_budget = {ok}\n"));
        assert_eq!(cfg.control.probe_budget, ok);
    }
}

#[test]
fn announce_table_and_device() {
    let cfg = parse(&format!("{GATEWAY}[announce]\ntable = 100\n"));
    assert_eq!(
        cfg.announce,
        Some(Announce {
            routes: Some(AnnounceRoutes {
                device: DEFAULT_ANNOUNCE_DEVICE.into(),
                table: 100,
            }),
            track_file: None,
        })
    );
    let cfg = parse(&format!(
        "{GATEWAY}[announce]\ntable = 4000000000\ndevice = \"vips0\"\n"
    ));
    assert_eq!(
        cfg.announce.and_then(|a| a.routes).map(|a| (a.device, a.table)),
        Some(("vips0".into(), 4_000_000_000))
    );
    assert_eq!(parse(GATEWAY).announce, None);
    let msg = err(&format!("{GATEWAY}[announce]\ndevice = \"vips0\"\n"));
    assert_contains(&msg, &["[announce]", "table"]);
    for (table, name) in [(253, "default"), (254, "main"), (255, "local")] {
        let msg = err(&format!("{GATEWAY}[announce]\ntable = {table}\n"));
        assert_contains(
            &msg,
            &[
                "test.toml:4:",
                "key \"table\"",
                &format!("kernel's \"{name}\" table"),
            ],
        );
    }
    let msg = err(&format!("{GATEWAY}[announce]\ntable = 0\n"));
    assert_contains(&msg, &["key \"table\"", "out of range"]);
    let msg = err(&format!("{GATEWAY}[announce]\ntable = 100\ndevice = \"eth0\"\n"));
    assert_contains(&msg, &["key \"device\"", "one of [gateway] interfaces"]);
    let msg = err(&format!("{GATEWAY}[announce]\ntable = 100\ndevice = \"a/b\"\n"));
    assert_contains(&msg, &["key \"device\""]);
    let msg = err(&format!("{GATEWAY}[announce]\ntable = 100\nspeaker = \"bgp\"\n"));
    assert_contains(&msg, &["[announce]", "speaker"]);
}

#[test]
fn announce_track_file_alone_or_with_routes() {
    let cfg = parse(&format!(
        "{GATEWAY}[announce]\ntrack_file = \"/run/redirector/track\"\n"
    ));
    assert_eq!(
        cfg.announce,
        Some(Announce {
            routes: None,
            track_file: Some("/run/redirector/track".into()),
        })
    );
    let cfg = parse(&format!(
        "{GATEWAY}[announce]\ntable = 100\ntrack_file = \"/run/redirector/track\"\n"
    ));
    assert!(
        cfg.announce
            .is_some_and(|a| a.routes.is_some() && a.track_file.is_some())
    );
    let msg = err(&format!("{GATEWAY}[announce]\n"));
    assert_contains(&msg, &["[announce]", "table", "track_file"]);
    let msg = err(&format!("{GATEWAY}[announce]\ntrack_file = \"track\"\n"));
    assert_contains(&msg, &["key \"track_file\"", "absolute"]);
}

#[test]
fn hooks_and_fence() {
    let cfg = parse(&with_table(
        "failover",
        "promote = [\"/usr/local/bin/promote\", \"--standby\"]\npromote_timeout = \"5s\"\n\
         on_promote_failure = \"move\"\nnotify = [\"/usr/local/bin/page\"]\nfence = true\n",
    ));
    let f = &cfg.services[0].failover;
    assert_eq!(
        f.promote,
        Some(Hook {
            command: vec!["/usr/local/bin/promote".into(), "--standby".into()],
            timeout: Duration::from_secs(5),
        })
    );
    assert_eq!(f.on_promote_failure, PromoteFailure::Move);
    assert_eq!(
        f.notify,
        Some(Hook {
            command: vec!["/usr/local/bin/page".into()],
            timeout: DEFAULT_NOTIFY_TIMEOUT,
        })
    );
    assert!(f.fence);
}

#[test]
fn hook_errors() {
    let msg = failover_err("promote = \"pg_ctl promote\"\n");
    assert_contains(
        &msg,
        &["test.toml:11", "key \"promote\"", "expected an array of strings"],
    );
    let msg = failover_err("notify = [\"notify-send\"]\n");
    assert_contains(&msg, &["key \"notify\"", "must be an absolute path"]);
    let msg = failover_err("promote_timeout = \"5s\"\n");
    assert_contains(
        &msg,
        &["key \"promote_timeout\"", "has no effect without `promote`"],
    );
    let msg = failover_err("on_promote_failure = \"move\"\n");
    assert_contains(
        &msg,
        &["key \"on_promote_failure\"", "has no effect without `promote`"],
    );
    let msg = failover_err("promote = [\"/bin/true\"]\non_promote_failure = \"retry\"\n");
    assert_contains(&msg, &["unknown value \"retry\"", "\"stay\" or \"move\""]);
    let msg = failover_err("promote = [\"/bin/true\"]\nshare = 10\n");
    assert_contains(&msg, &["key \"promote\"", "share = 10", "before it is promoted"]);
    let msg = failover_err("fence = \"yes\"\n");
    assert_contains(&msg, &["key \"fence\"", "expected true or false"]);
    let msg = failover_err("notify = [\"/bin/true\"]\nnotify_timeout = \"1h\"\n");
    assert_contains(&msg, &["key \"notify_timeout\""]);
}

#[test]
fn dns_checks() {
    let cfg = parse(&with_table(
        "health",
        "kind = \"dns\"\nquery = \"www.lab.\"\nqtype = \"aaaa\"\nrcode = [\"noerror\", \"nxdomain\"]\n",
    ));
    assert_eq!(
        cfg.services[0].health.kind,
        ProbeKind::Dns {
            name: "www.lab.".into(),
            qtype: 28,
            rcodes: 1 | 1 << 3,
        }
    );
    let cfg = parse(&with_table("health", "kind = \"dns\"\n"));
    assert_eq!(
        cfg.services[0].health.kind,
        ProbeKind::Dns {
            name: ".".into(),
            qtype: 2,
            rcodes: 1,
        }
    );
    let msg = health_err("kind = \"dns\"\nquery = \"a..b\"\n");
    assert_contains(&msg, &["key \"query\"", "1 to 63 bytes"]);
    let msg = health_err("kind = \"dns\"\nqtype = \"ANY2\"\n");
    assert_contains(&msg, &["key \"qtype\"", "unknown type \"ANY2\""]);
    let msg = health_err("kind = \"dns\"\nrcode = [\"ok\"]\n");
    assert_contains(&msg, &["key \"rcode\"", "expected one of noerror"]);
    let msg = health_err("kind = \"dns\"\nrcode = []\n");
    assert_contains(&msg, &["must accept at least one RCODE"]);
    let msg = health_err("kind = \"udp\"\nquery = \"www.lab\"\n");
    assert_contains(&msg, &["key \"query\"", "only allowed with kind = \"dns\""]);
}

#[test]
fn groups_share_backend_addresses() {
    let text = format!(
        "{GATEWAY}[[service]]\nname = \"dns-udp\"\nvip = \"198.18.100.1\"\nport = 53\nprotocol = \"udp\"\n\
         primary = \"198.18.2.2\"\nsecondary = \"198.18.3.2\"\n[service.failover]\ngroup = \"dns\"\n\
         [[service]]\nname = \"dns-tcp\"\nvip = \"198.18.100.1\"\nport = 53\nprotocol = \"tcp\"\n\
         primary = \"198.18.2.2\"\nsecondary = \"198.18.3.3\"\n[service.failover]\ngroup = \"dns\"\n"
    );
    let msg = err(&text);
    assert_contains(
        &msg,
        &[
            "service \"dns-tcp\": group \"dns\" also holds service \"dns-udp\" (line 3)",
            "secondary is 198.18.3.2, not 198.18.3.3",
        ],
    );
    let cfg = parse(&text.replace("198.18.3.3", "198.18.3.2"));
    assert_eq!(cfg.services[1].failover.group.as_deref(), Some("dns"));
    let msg = failover_err("group = \"a b\"\n");
    assert_contains(&msg, &["key \"group\"", "group name"]);
}
