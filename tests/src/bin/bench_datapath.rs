//! `cargo xtask bench datapath`: ns per packet of the redirector XDP program,
//! in the kernel via BPF_PROG_TEST_RUN, against a trivial `return XDP_TX`
//! program from the same build. Not a test: it prints a table.
//!
//! test-run's repeat count reruns the program on the *same* buffer, which a
//! NAT program has already rewritten after the first run. So every case runs
//! through the `restore` wrapper, which copies the original frame back and
//! tail-calls the program under test; the wrapper's own cost is measured in
//! the same run (restore → trivial) and subtracted.
use std::{net::IpAddr, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, DevMapHash, ProgramArray},
    programs::{ProgramFd, TestRun, TestRunOptions, Xdp},
};
use redirector::{
    LAB_OBJECT,
    config::{Backend, Failover, HealthCheck, Mode, Protocol, Service},
    datapath::{Datapath, Keyed, Sizes, both_up},
};
use redirector_common::{
    BENCH_TEMPLATE_LEN, BenchTemplate, FLOW_WAYS, NextHop, SLOT_PRIMARY, SLOT_SECONDARY, SWITCH_PINNED,
    SwitchState, VARY_V4_SRC, VARY_V6_SRC, ablate,
};
use redirector_tests::{
    netns::{NetNs, ifindex},
    packets::{L4, Spec},
};

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    /// Offset of a 32-bit field to vary per run (fresh 5-tuple), 0 = fixed.
    vary_off: u32,
    /// State the flow tables are put in before the measurement.
    table: Table,
    /// Run first (unmeasured) with the same run counters, so every measured
    /// run finds what this frame left: a SYN before its handshake's ACK.
    seed: Option<Vec<u8>>,
}

/// Flow-table state a case is measured in.
#[derive(Clone, PartialEq, Eq)]
enum Table {
    /// Whatever the previous cases left.
    AsIs,
    /// Both tables emptied first: the inserts fill them (never full during the measurement).
    Filling,
    /// The table the case writes filled to capacity first (by this many runs
    /// of this frame, never-seen flows): every insert evicts.
    Full(Vec<u8>, u32),
}

fn ip(s: &str) -> Result<IpAddr> {
    s.parse().with_context(|| format!("address {s}"))
}

fn svc(name: &str, vip: &str, port: u16, proto: Protocol, mode: Mode, p: &str, s: &str) -> Result<Service> {
    Ok(Service {
        name: name.into(),
        vip: ip(vip)?,
        port,
        protocol: proto,
        mode,
        primary: Backend {
            addr: ip(p)?,
            port: None,
        },
        secondary: Backend {
            addr: ip(s)?,
            port: None,
        },
        health: HealthCheck::default_for(proto),
        failover: Failover::default(),
        allow: Vec::new(),
        deny: Vec::new(),
    })
}

fn args() -> Result<(u32, u32)> {
    let mut rounds = 15;
    let mut repeat = 200_000;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--rounds" => rounds = v.parse()?,
            "--repeat" => repeat = v.parse()?,
            _ => bail!("unknown argument {a}"),
        }
    }
    Ok((rounds, repeat))
}

fn run(prog: &Xdp, frame: &[u8], repeat: u32, ingress: u32) -> Result<Duration> {
    let mut ctx = [0u32; 6];
    ctx[1] = u32::try_from(frame.len())?;
    ctx[3] = ingress;
    let ctx: Vec<u8> = ctx.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        ctx_in: Some(&ctx),
        repeat,
        ..Default::default()
    })?;
    Ok(r.duration)
}

fn restore(bench: &Ebpf) -> Result<&Xdp> {
    Ok(bench.program("restore").context("restore")?.try_into()?)
}

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// The rows the ablation table measures.
const ABLATION_CASES: [&str; 6] = [
    "nat ipv4 tcp, established",
    "nat ipv6 udp, established",
    "dsr ipv4 tcp, established",
    "dsr ipv6 udp, established",
    "nat reply ipv4 tcp",
    "nat reply ipv6 udp",
];

fn main() -> Result<()> {
    let (rounds, repeat) = args()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads XDP programs: run it as root");
    }
    let ns = NetNs::new("bench");
    ns.add_veths(&[("in0", "in1"), ("p0", "p1"), ("s0", "s1")]);
    let _entered = ns.enter();
    let (if_in, if_p, if_s) = (ifindex("in0"), ifindex("p0"), ifindex("s0"));

    let hp = NextHop {
        ifindex: if_p,
        dst_mac: [2, 0, 0, 0, 2, 2],
        src_mac: [2, 0, 0, 0, 2, 1],
    };
    let hs = NextHop {
        ifindex: if_s,
        dst_mac: [2, 0, 0, 0, 3, 2],
        src_mac: [2, 0, 0, 0, 3, 1],
    };
    let services = [
        svc(
            "nat4",
            "198.18.100.1",
            80,
            Protocol::Tcp,
            Mode::Nat,
            "198.18.2.2",
            "198.18.3.2",
        )?,
        svc(
            "nat6",
            "2001:2::100",
            53,
            Protocol::Udp,
            Mode::Nat,
            "2001:2:0:2::2",
            "2001:2:0:3::2",
        )?,
        svc(
            "dsr4",
            "198.18.100.2",
            80,
            Protocol::Tcp,
            Mode::Dsr,
            "198.18.2.2",
            "198.18.3.2",
        )?,
        svc(
            "dsr6",
            "2001:2::200",
            53,
            Protocol::Udp,
            Mode::Dsr,
            "2001:2:0:2::2",
            "2001:2:0:3::2",
        )?,
        // Running on the secondary (primary down): every new flow is pinned with an entry.
        svc(
            "standby4",
            "198.18.100.3",
            80,
            Protocol::Tcp,
            Mode::Nat,
            "198.18.2.3",
            "198.18.3.3",
        )?,
        svc(
            "standby4udp",
            "198.18.100.3",
            53,
            Protocol::Udp,
            Mode::Nat,
            "198.18.2.3",
            "198.18.3.3",
        )?,
        // Its backend endpoint also sees direct traffic (its own, so the other
        // services' replies keep their steady state).
        svc(
            "direct4",
            "198.18.100.4",
            80,
            Protocol::Tcp,
            Mode::Nat,
            "198.18.2.4",
            "198.18.3.4",
        )?,
        Service {
            allow: vec!["198.18.1.0/24".parse()?],
            ..svc(
                "acl4",
                "198.18.100.5",
                53,
                Protocol::Udp,
                Mode::Nat,
                "198.18.2.5",
                "198.18.3.5",
            )?
        },
    ];
    let client4 = ip("198.18.1.2")?;
    let client6 = ip("2001:2:0:1::2")?;
    // The real object, configured by the real data-plane code; `ablate`
    // switches optional parts of its paths off (the ablation table).
    let configured = |ablate: u32| -> Result<Datapath> {
        let mut dp = Datapath::load_ablated(Sizes::default(), ablate)?;
        for i in [if_in, if_p, if_s] {
            dp.add_egress(i)?;
        }
        for (id, s) in services.iter().enumerate() {
            dp.set_service(u32::try_from(id)?, s, [hp, hs], both_up(SLOT_PRIMARY))?;
        }
        let down = SwitchState {
            active: SLOT_SECONDARY,
            up: 0b10,
            drained: 0,
            flags: SWITCH_PINNED,
            share: 0,
            _pad: 0,
            generation: 1,
        };
        dp.set_switch(4, down)?;
        dp.set_switch(5, down)?;
        let client_hop = NextHop {
            ifindex: if_in,
            dst_mac: [2, 0, 0, 0, 1, 2],
            src_mac: [2, 0, 0, 0, 1, 1],
        };
        let mut hop_maps = dp.hop_maps()?;
        hop_maps.set_client_hop(client4, client_hop)?;
        hop_maps.set_client_hop(client6, client_hop)?;
        Ok(dp)
    };
    let mut dp = configured(0)?;
    // One switched off at a time, then all of them.
    let ablations: Vec<(String, u32)> = [("full, fresh maps (control)".to_owned(), 0)]
        .into_iter()
        .chain(
            ablate::NAMES
                .iter()
                .map(|&(bit, name)| (format!("− {name}"), bit)),
        )
        .chain([("− all of them".to_owned(), ablate::ALL)])
        .collect();
    let ablated: Vec<(Datapath, ProgramFd)> = ablations
        .iter()
        .map(|(_, bits)| -> Result<_> {
            let mut d = configured(*bits)?;
            let fd = d.program()?.fd()?.try_clone()?;
            Ok((d, fd))
        })
        .collect::<Result<_>>()?;

    let tcp = |syn| L4::Tcp { syn, ack: !syn };
    let v4_src = VARY_V4_SRC as u32;
    let v6_src = VARY_V6_SRC as u32;
    // Every frame padded to 80 bytes: the restore wrapper copies 8-byte words.
    let frame = |spec: Spec| -> Vec<u8> {
        let mut spec = spec;
        let len = spec.build().len() - spec.payload.len();
        spec.payload = vec![0x5a; 80 - len];
        spec.build()
    };
    let syn_standby = frame(Spec::new(client4, 40000, services[4].vip, 80, tcp(true)));
    let ack_standby = frame(Spec::new(client4, 40000, services[4].vip, 80, tcp(false)));
    let udp_standby = frame(Spec::new(client4, 40000, services[5].vip, 53, L4::Udp));
    // Entries each table holds; filling one "full" takes a few times that
    // many never-seen flows, since a bucket fills only by chance.
    let flow_capacity = Sizes::default().flow_buckets() * FLOW_WAYS as u32;
    // The new paths' frames, padded to 8-byte multiples (bytes after a small
    // IP packet are left alone, like Ethernet padding).
    let pad8 = |mut f: Vec<u8>| {
        f.resize(f.len().div_ceil(8) * 8, 0);
        f
    };
    let icmp_frame = |src: IpAddr, dst: IpAddr, quote: &[u8]| -> Result<Vec<u8>> {
        let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
            bail!("IPv4 only");
        };
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 1, 2], [2, 0, 0, 0, 1, 1])
            .ipv4(s.octets(), d.octets(), 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
            ))
            .write(&mut out, quote)?;
        Ok(pad8(out))
    };
    let echo = {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 1, 2], [2, 0, 0, 0, 1, 1])
            .ipv4([198, 18, 1, 2], [198, 18, 100, 1], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut out, b"ping!!")?;
        pad8(out)
    };
    // A 100-byte UDP datagram to acl4 in two fragments (48 + 60 bytes).
    let (first_fragment, later_fragment) = {
        let mut d = Spec::new(client4, 40001, services[7].vip, 53, L4::Udp);
        d.payload = vec![0x5a; 100];
        let whole = d.build();
        let (eth, ip, data) = (&whole[..14], &whole[14..34], &whole[34..]);
        let part = |off: usize, bytes: &[u8], more: bool| -> Result<Vec<u8>> {
            let mut h = etherparse::Ipv4HeaderSlice::from_slice(ip)?.to_header();
            h.total_len = u16::try_from(20 + bytes.len())?;
            h.identification = 7;
            h.dont_fragment = false;
            h.more_fragments = more;
            h.fragment_offset = etherparse::IpFragOffset::try_new(u16::try_from(off / 8)?)?;
            h.header_checksum = h.calc_header_checksum();
            let mut f = eth.to_vec();
            h.write(&mut f)?;
            f.extend_from_slice(bytes);
            Ok(pad8(f))
        };
        (part(0, &data[..48], true)?, part(48, &data[48..], false)?)
    };
    // IPv4 options (NOP NOP NOP EOL) and an IPv6 destination-options header:
    // the tail-called options path.
    let v4_options = {
        let f = frame(Spec::new(client4, 40000, services[0].vip, 80, tcp(false)));
        let mut h = etherparse::Ipv4HeaderSlice::from_slice(&f[14..])?.to_header();
        h.options = etherparse::Ipv4Options::try_from(&[1u8, 1, 1, 0][..])?;
        h.total_len += 4;
        h.header_checksum = h.calc_header_checksum();
        let mut out = f[..14].to_vec();
        h.write(&mut out)?;
        out.extend_from_slice(&f[34..]);
        pad8(out)
    };
    let v6_extension = {
        let f = frame(Spec::new(client6, 40000, services[1].vip, 53, L4::Udp));
        let mut out = f[..54].to_vec();
        let next = out[20];
        out[20] = 60;
        let len = u16::from_be_bytes([out[18], out[19]]) + 8;
        out[18..20].copy_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
        out.extend_from_slice(&f[54..]);
        pad8(out)
    };
    let reply_quote =
        Spec::new(services[0].vip, 80, client4, 40000, tcp(false)).build()[14..14 + 28].to_vec();
    let embryo_capacity = Sizes::default().embryo_buckets() * FLOW_WAYS as u32;
    let cases = vec![
        Case {
            name: "nat ipv4 tcp, new flow (SYN)",
            frame: frame(Spec::new(client4, 40000, services[0].vip, 80, tcp(true))),
            vary_off: v4_src,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "nat ipv4 tcp, established",
            frame: frame(Spec::new(client4, 40000, services[0].vip, 80, tcp(false))),
            vary_off: 0,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "nat ipv6 udp, new flow",
            frame: frame(Spec::new(client6, 40000, services[1].vip, 53, L4::Udp)),
            vary_off: v6_src,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "nat ipv6 udp, established",
            frame: frame(Spec::new(client6, 40000, services[1].vip, 53, L4::Udp)),
            vary_off: 0,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "dsr ipv4 tcp, new flow (SYN)",
            frame: frame(Spec::new(client4, 40000, services[2].vip, 80, tcp(true))),
            vary_off: v4_src,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "dsr ipv4 tcp, established",
            frame: frame(Spec::new(client4, 40000, services[2].vip, 80, tcp(false))),
            vary_off: 0,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "dsr ipv6 udp, new flow",
            frame: frame(Spec::new(client6, 40000, services[3].vip, 53, L4::Udp)),
            vary_off: v6_src,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "dsr ipv6 udp, established",
            frame: frame(Spec::new(client6, 40000, services[3].vip, 53, L4::Udp)),
            vary_off: 0,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "nat reply ipv4 tcp",
            frame: frame(Spec::new(ip("198.18.2.2")?, 80, client4, 40000, tcp(false))),
            vary_off: 0,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "nat reply ipv6 udp",
            frame: frame(Spec::new(ip("2001:2:0:2::2")?, 53, client6, 40000, L4::Udp)),
            vary_off: 0,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "non-VIP ipv4 tcp, port no service uses",
            frame: frame(Spec::new(client4, 40000, ip("198.18.7.7")?, 9999, tcp(false))),
            vary_off: 0,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "non-VIP ipv4 tcp, service port",
            frame: frame(Spec::new(client4, 40000, ip("198.18.7.7")?, 80, tcp(false))),
            vary_off: 0,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "direct ipv4 tcp to a NAT backend's service port (recorded, passed)",
            frame: frame(Spec::new(
                client4,
                40000,
                services[6].primary.addr,
                80,
                tcp(false),
            )),
            vary_off: 0,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "direct flow's reply (passed untouched)",
            frame: frame(Spec::new(
                services[6].primary.addr,
                80,
                client4,
                40000,
                tcp(false),
            )),
            vary_off: 0,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "nat reply ipv4 tcp from an endpoint that also has direct flows",
            frame: frame(Spec::new(
                services[6].primary.addr,
                80,
                client4,
                40001,
                tcp(false),
            )),
            vary_off: 0,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "nat ipv4 udp, client in the service's allow list",
            frame: frame(Spec::new(client4, 40000, services[7].vip, 53, L4::Udp)),
            vary_off: 0,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "ipv4 udp later fragment to a VIP (follows its first)",
            frame: later_fragment,
            vary_off: 0,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "icmp error about a nat reply, to its backend (translated)",
            frame: icmp_frame(ip("198.18.1.254")?, services[0].vip, &reply_quote)?,
            vary_off: 0,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "nat ipv4 tcp with IPv4 options (options path)",
            frame: v4_options,
            vary_off: 0,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "nat ipv6 udp behind a destination-options header (options path)",
            frame: v6_extension,
            vary_off: 0,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "icmp echo to a VIP, answered",
            frame: echo,
            vary_off: 0,
            table: Table::AsIs,
            seed: None,
        },
        Case {
            name: "on standby: new TCP flow (SYN), SYN entry written (table filling)",
            frame: syn_standby.clone(),
            vary_off: v4_src,
            table: Table::Filling,
            seed: None,
        },
        Case {
            name: "on standby: new TCP flow (SYN), SYN entry written (table full, evicting)",
            frame: syn_standby.clone(),
            vary_off: v4_src,
            table: Table::Full(syn_standby.clone(), 4 * embryo_capacity),
            seed: None,
        },
        Case {
            name: "on standby: handshake completes (ACK), entry moved to the flow table (filling)",
            frame: ack_standby.clone(),
            vary_off: v4_src,
            table: Table::Filling,
            seed: Some(syn_standby.clone()),
        },
        Case {
            name: "on standby: handshake completes (ACK), entry moved to the flow table (full, evicting)",
            frame: ack_standby.clone(),
            vary_off: v4_src,
            table: Table::Full(udp_standby.clone(), 4 * flow_capacity),
            seed: Some(syn_standby.clone()),
        },
        Case {
            name: "on standby: new UDP flow, entry written (table filling)",
            frame: udp_standby.clone(),
            vary_off: v4_src,
            table: Table::Filling,
            seed: None,
        },
        Case {
            name: "on standby: new UDP flow, entry written (table full, evicting)",
            frame: udp_standby.clone(),
            vary_off: v4_src,
            table: Table::Full(udp_standby.clone(), 4 * flow_capacity),
            seed: None,
        },
        Case {
            name: "on standby: established, entry hit",
            frame: frame(Spec::new(client4, 40000, services[4].vip, 80, tcp(false))),
            vary_off: 0,
            table: Table::AsIs,
            seed: None,
        },
    ];

    // The kernel LRU references get the flow table's size.
    let mut bench = aya::EbpfLoader::new()
        .map_max_entries("BARE_FLOWS", flow_capacity)
        .map_max_entries("BARE_FLOWS_NC", flow_capacity)
        .load(LAB_OBJECT)
        .context("loading the benchmark object")?;
    for name in [
        "trivial",
        "restore",
        "forward_static",
        "lru_insert",
        "lru_insert_nc",
    ] {
        let p: &mut Xdp = bench
            .program_mut(name)
            .with_context(|| format!("program {name}"))?
            .try_into()?;
        p.load()?;
    }
    let trivial_fd: ProgramFd = {
        let p: &Xdp = bench.program("trivial").context("trivial")?.try_into()?;
        p.fd()?.try_clone()?
    };
    // The later fragment's first one, once: every measured run finds its record.
    run(dp.program()?, &first_fragment, 1, if_in)?;
    let redirector_fd: ProgramFd = dp.program()?.fd()?.try_clone()?;
    let static_fd: ProgramFd = {
        let p: &Xdp = bench
            .program("forward_static")
            .context("forward_static")?
            .try_into()?;
        p.fd()?.try_clone()?
    };
    let lru_fds: Vec<(ProgramFd, &str)> = [("lru_insert", "BARE_FLOWS"), ("lru_insert_nc", "BARE_FLOWS_NC")]
        .into_iter()
        .map(|(prog, map)| -> Result<_> {
            let p: &Xdp = bench.program(prog).context("lru_insert")?.try_into()?;
            Ok((p.fd()?.try_clone()?, map))
        })
        .collect::<Result<_>>()?;
    Array::<_, NextHop>::try_from(bench.map_mut("STATIC_HOP").context("STATIC_HOP")?)?.set(0, hp, 0)?;
    DevMapHash::try_from(bench.map_mut("STATIC_EGRESS").context("STATIC_EGRESS")?)?
        .insert(if_p, if_p, None, 0)?;

    let set_target =
        |bench: &mut Ebpf, fd: &ProgramFd, frame: &[u8], vary_off: u32, counter: u32| -> Result<()> {
            let mut t = ProgramArray::try_from(bench.map_mut("TARGET").context("TARGET")?)?;
            t.set(0, fd, 0)?;
            let mut bytes = [0u8; BENCH_TEMPLATE_LEN];
            bytes[..frame.len()].copy_from_slice(frame);
            let mut tm = Array::<_, BenchTemplate>::try_from(bench.map_mut("TEMPLATE").context("TEMPLATE")?)?;
            tm.set(
                0,
                BenchTemplate {
                    bytes,
                    vary_off,
                    counter,
                },
                0,
            )?;
            Ok(())
        };

    // Steady-state rows (no table work, the same 5-tuple every run): what
    // each optional part costs them.
    let ablation_rows: Vec<usize> = cases
        .iter()
        .enumerate()
        .filter(|(_, c)| ABLATION_CASES.contains(&c.name) && c.vary_off == 0 && c.seed.is_none())
        .map(|(i, _)| i)
        .collect();
    let mut ablation_full: Vec<Vec<f64>> = vec![Vec::new(); ablation_rows.len()];
    let mut ablation_results: Vec<Vec<Vec<f64>>> =
        vec![vec![Vec::new(); ablations.len()]; ablation_rows.len()];
    let n = cases.len();
    let varies = [0, v4_src, v6_src];
    let mut trivial = Vec::new();
    let mut overheads: [Vec<f64>; 3] = Default::default();
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut forwarder = Vec::new();
    // Bare LRU insert: into a filling table, into a full one.
    let mut bare: [Vec<f64>; 4] = Default::default();
    eprintln!("{rounds} rounds × {} measurements × {repeat} runs each …", n + 7);
    // The run counter the restore wrapper writes over the source address:
    // never reset, so no two runs of the benchmark share a 5-tuple.
    let mut fresh: u32 = 1;
    for round in 0..rounds {
        // Per round, so the subtraction sees the same machine speed as the cases.
        let direct = {
            let p: &Xdp = bench.program("trivial").context("trivial")?.try_into()?;
            run(p, &cases[0].frame, repeat, if_in)?.as_nanos() as f64
        };
        trivial.push(direct);
        let mut round_overhead = [0.0; 3];
        for (k, &vary) in varies.iter().enumerate() {
            let frame = if vary == v6_src {
                &cases[2].frame
            } else {
                &cases[0].frame
            };
            set_target(&mut bench, &trivial_fd, frame, vary, fresh)?;
            fresh = fresh.wrapping_add(repeat + 1);
            let p: &Xdp = bench.program("restore").context("restore")?.try_into()?;
            round_overhead[k] = run(p, frame, repeat, if_in)?.as_nanos() as f64 - direct;
            overheads[k].push(round_overhead[k]);
        }
        {
            set_target(&mut bench, &static_fd, &cases[1].frame, 0, 0)?;
            let p: &Xdp = bench.program("restore").context("restore")?.try_into()?;
            forwarder.push(run(p, &cases[1].frame, repeat, if_in)?.as_nanos() as f64 - round_overhead[0]);
        }
        for (m, (lru_fd, map)) in lru_fds.iter().enumerate() {
            for (k, filling) in [true, false].into_iter().enumerate() {
                let frame = &cases[0].frame;
                if filling {
                    let mut m = aya::maps::HashMap::<
                        _,
                        redirector_common::FlowKey,
                        redirector_common::FlowValue,
                    >::try_from(bench.map_mut(map).context("bare flows")?)?;
                    let keys: Vec<_> = m.keys().filter_map(std::result::Result::ok).collect();
                    for key in keys {
                        let _ = m.remove(&key);
                    }
                } else {
                    let capacity = flow_capacity;
                    set_target(&mut bench, lru_fd, frame, v4_src, fresh)?;
                    fresh = fresh.wrapping_add(capacity + 1);
                    let p: &Xdp = bench.program("restore").context("restore")?.try_into()?;
                    run(p, frame, capacity, if_in)?;
                }
                set_target(&mut bench, lru_fd, frame, v4_src, fresh)?;
                fresh = fresh.wrapping_add(repeat + 1);
                let p: &Xdp = bench.program("restore").context("restore")?.try_into()?;
                bare[m * 2 + k].push(run(p, frame, repeat, if_in)?.as_nanos() as f64 - round_overhead[1]);
            }
        }
        for (i, c) in cases.iter().enumerate() {
            match &c.table {
                Table::AsIs => {}
                Table::Filling => {
                    // Empty both tables: every entry is older than 0 ns.
                    dp.flow_table()?.sweep(&[Duration::ZERO; 8]);
                }
                Table::Full(filler, capacity) => {
                    // Insert never-seen flows (unmeasured) until the LRU is at capacity.
                    set_target(&mut bench, &redirector_fd, filler, c.vary_off, fresh)?;
                    fresh = fresh.wrapping_add(capacity + 1);
                    let p: &Xdp = bench.program("restore").context("restore")?.try_into()?;
                    run(p, filler, *capacity, if_in)?;
                }
            }
            let k = varies.iter().position(|&v| v == c.vary_off).unwrap_or(0);
            let ns = match &c.seed {
                None => {
                    set_target(&mut bench, &redirector_fd, &c.frame, c.vary_off, fresh)?;
                    if c.vary_off != 0 {
                        // Every run of the whole benchmark sees a never-seen 5-tuple.
                        fresh = fresh.wrapping_add(repeat + 1);
                    }
                    run(restore(&bench)?, &c.frame, repeat, if_in)?.as_nanos() as f64
                }
                Some(seed) => {
                    // In chunks that fit the SYN table: seed a chunk of
                    // handshakes, then measure their ACKs.
                    let chunk = (embryo_capacity / 2).min(repeat).max(1);
                    let (mut done, mut total) = (0u32, 0.0);
                    while done < repeat {
                        let n = chunk.min(repeat - done);
                        set_target(&mut bench, &redirector_fd, seed, c.vary_off, fresh)?;
                        run(restore(&bench)?, seed, n, if_in)?;
                        set_target(&mut bench, &redirector_fd, &c.frame, c.vary_off, fresh)?;
                        total += run(restore(&bench)?, &c.frame, n, if_in)?.as_nanos() as f64 * f64::from(n);
                        fresh = fresh.wrapping_add(n + 1);
                        done += n;
                    }
                    total / f64::from(repeat)
                }
            };
            results[i].push(ns - round_overhead[k]);
        }
        // The ablation, interleaved: for each row the full object's run and
        // each variant's, back to back, starting one further each round (the
        // first run after a switch of rows is measured slower).
        let variants = ablated.len() + 1;
        for (r, &i) in ablation_rows.iter().enumerate() {
            let c = &cases[i];
            for v in (0..variants).map(|v| (v + round as usize) % variants) {
                let fd = if v == 0 { &redirector_fd } else { &ablated[v - 1].1 };
                set_target(&mut bench, fd, &c.frame, 0, 0)?;
                let ns =
                    run(restore(&bench)?, &c.frame, repeat, if_in)?.as_nanos() as f64 - round_overhead[0];
                if v == 0 {
                    ablation_full[r].push(ns);
                } else {
                    ablation_results[r][v - 1].push(ns);
                }
            }
        }
    }
    let (t_min, t_med, t_max) = stats(&mut trivial);
    let o: Vec<f64> = overheads.iter_mut().map(|v| stats(v).1).collect();
    println!();
    println!(
        "`cargo xtask bench datapath --rounds {rounds} --repeat {repeat}` — ns per run, BPF_PROG_TEST_RUN"
    );
    println!(
        "(each case runs behind the restore wrapper; the wrapper's cost, measured in the same round \
         against the trivial program, is subtracted: median {:.1} / {:.1} / {:.1} ns without / with an \
         IPv4 / IPv6 fresh 5-tuple)",
        o[0], o[1], o[2]
    );
    println!();
    println!("| case | min | median | max | ratio to trivial |");
    println!("|---|---:|---:|---:|---:|");
    println!("| trivial `return XDP_TX` | {t_min:.1} | {t_med:.1} | {t_max:.1} | 1.00 |");
    let (f_min, f_med, f_max) = stats(&mut forwarder);
    println!(
        "| static forwarder (MACs + `bpf_redirect_map`) | {f_min:.1} | {f_med:.1} | {f_max:.1} | {:.2} |",
        f_med / t_med
    );
    let names = [
        "kernel LRU hash insert alone (table filling)",
        "kernel LRU hash insert alone (table full, evicting)",
        "kernel LRU hash insert alone, per-CPU LRU lists (table filling)",
        "kernel LRU hash insert alone, per-CPU LRU lists (table full, evicting)",
    ];
    for (name, v) in names.into_iter().zip(bare.iter_mut()) {
        let (mn, md, mx) = stats(v);
        println!("| {name} | {mn:.1} | {md:.1} | {mx:.1} | {:.2} |", md / t_med);
    }
    for (i, c) in cases.iter().enumerate() {
        let (mn, md, mx) = stats(&mut results[i]);
        println!("| {} | {mn:.1} | {md:.1} | {mx:.1} | {:.2} |", c.name, md / t_med);
    }
    println!();
    println!("flow entries after the run: {}", dp.flow_count()?);
    println!();
    println!(
        "Per-feature ablation: the same object loaded with optional parts switched off (`ABLATE`, \
         a read-only global the verifier prunes; the daemon loads none off). Median ns per run, \
         interleaved with the full object in every round; in brackets, what the part costs the row."
    );
    println!();
    let header: Vec<&str> = ablations.iter().map(|(name, _)| name.as_str()).collect();
    println!("| case | full | {} |", header.join(" | "));
    println!("|---|---:|{}", "---:|".repeat(header.len()));
    for (r, &i) in ablation_rows.iter().enumerate() {
        let full = stats(&mut ablation_full[r]).1;
        let cells: Vec<String> = ablation_results[r]
            .iter_mut()
            .map(|v| {
                let md = stats(v).1;
                format!("{md:.1} ({:+.1})", full - md)
            })
            .collect();
        println!("| {} | {full:.1} | {} |", cases[i].name, cells.join(" | "));
    }
    reconciliation(hp, hs)?;
    silence_watch()?;
    Ok(())
}

/// What the daemon's once-a-second reconciliation of the configured maps
/// costs its event loop, at 1 and 1024 NAT services (each with its own
/// backends' ports and two allow prefixes), and the allow/deny walk it does
/// every 10 s.
fn reconciliation(hp: NextHop, hs: NextHop) -> Result<()> {
    println!();
    println!(
        "| reconciliation of the configured maps (the daemon's loop) | services | runs | median | max |"
    );
    println!("|---|---:|---:|---:|---:|");
    for n in [1u32, 1024] {
        let mut dp = Datapath::load(Sizes::default())?;
        let mut services = Vec::new();
        for i in 0..n {
            let mut s = svc(
                &format!("s{i}"),
                &format!("198.18.{}.{}", 100 + i / 250, 1 + i % 250),
                80,
                Protocol::Tcp,
                Mode::Nat,
                "198.18.2.2",
                "198.18.3.2",
            )?;
            let port = u16::try_from(2000 + i)?;
            s.primary.port = Some(port);
            s.secondary.port = Some(port);
            s.allow = vec!["198.18.0.0/16".parse()?, "198.18.1.0/24".parse()?];
            dp.set_service(i, &s, [hp, hs], both_up(SLOT_PRIMARY))?;
            services.push(s);
        }
        let running: Vec<(u32, &Service)> = (0..n).zip(services.iter()).collect();
        // What the daemon does on one tick, each kind, and a whole pass.
        let tenth: Vec<(u32, &Service)> = running.iter().copied().step_by(10).collect();
        let parts: [(&str, usize); 6] = [
            ("a whole pass (each second, spread over 10 ticks)", 0),
            ("one tick: a tenth of the services' entries", 1),
            ("one tick: SERVICES keys", 2),
            ("one tick: REVERSE keys", 3),
            ("one tick: VIPS keys", 4),
            ("one tick every 10 s: ALLOW, DENY", 5),
        ];
        for (what, part) in parts {
            let mut ms = Vec::new();
            for _ in 0..21 {
                let t = std::time::Instant::now();
                let drift = match part {
                    0 => dp.reconcile(&running)?,
                    1 => dp.reconcile_services(&tenth)?,
                    2 => dp.reconcile_keys(Keyed::Services, &running)?,
                    3 => dp.reconcile_keys(Keyed::Reverse, &running)?,
                    4 => dp.reconcile_keys(Keyed::Vips, &running)?,
                    _ => dp.reconcile_acl(&running)?,
                };
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                if !drift.is_empty() {
                    bail!("drift in a data plane nobody else writes: {drift:?}");
                }
            }
            let (_, md, mx) = stats(&mut ms);
            println!("| {what} | {n} | 21 | {md:.2} ms | {mx:.2} ms |");
        }
    }
    Ok(())
}

/// What one look of the daemon's silence watch costs (every ms while some
/// service watches): every backend's flags taken from the mapped `SEEN`, at
/// 1 and 1024 services (2048 backends: the default `max_services`), with
/// every flag raised (the most a look writes).
fn silence_watch() -> Result<()> {
    println!();
    println!("| silence watch: one look | backends | runs | median | max | one vCPU at a look per ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    let dp = Datapath::load(Sizes::default())?;
    let seen = dp.seen_map()?;
    for backends in [2u32, 2048] {
        let mut us = Vec::new();
        for _ in 0..1001 {
            for i in 0..backends {
                seen.raise(i);
            }
            let t = std::time::Instant::now();
            let taken = (0..backends)
                .filter_map(|i| seen.take(i))
                .filter(|f| f.0 && f.1)
                .count();
            us.push(t.elapsed().as_secs_f64() * 1e6);
            if taken != backends as usize {
                bail!("{taken} of {backends} flags taken");
            }
        }
        let (_, md, mx) = stats(&mut us);
        println!(
            "| take every backend's flags (all raised) | {backends} | 1001 | {md:.1} µs | {mx:.1} µs | {:.2} % |",
            md / 10.0
        );
    }
    Ok(())
}
