//! `cargo xtask bench throughput`: packets per second through the gateway,
//! and what each forwarding path costs per packet. Not a test: it prints
//! tables.
//!
//! Three namespaces: a client, the gateway, a primary (and a secondary)
//! backend, veths between them, fixed MACs and permanent neighbour entries
//! (no ARP during a run). The generator is in the kernel: the lab object's
//! `restore` program run with `BPF_PROG_TEST_RUN` in live-frames mode in the
//! client's namespace, ingress `c0`; it rewrites the whole 64-byte UDP frame
//! from a template on every run (the kernel reuses the pages without
//! restoring them) and tail-calls `trivial`, whose `XDP_TX` sends it to the
//! gateway. The backends count and drop what reaches them (`count_drop`),
//! so no receiver stack is measured. The gateway path runs on the
//! generator's CPU right after each batch: the run is lossless and its time
//! is "generator + path"; the generator alone (its target `drop` instead of
//! `trivial`) is measured in the same round and subtracted.
//!
//! Variants on the gateway's client-facing `g-c`, interleaved round by round:
//! the static XDP forwarder (`forward_static`: MACs + `bpf_redirect_map`, the
//! ceiling), plain kernel routing and nftables DNAT (`pass` on `g-c`, the
//! stack forwards), and the real redirector object configured by the real
//! data-plane code (`Datapath`): a NAT and a DSR UDP service with the
//! primary active, and the NAT service on its secondary (flow entries
//! written and hit). Each with one flow, and with 65,536 flows (the source
//! port cycles).
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, DevMapHash, PerCpuArray, ProgramArray},
    programs::{ProgramFd, TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use redirector::{
    config::{Backend, HealthCheck, Mode, Protocol, Service},
    datapath::{Datapath, Sizes, both_up},
};
use redirector_common::{
    BENCH_TEMPLATE_LEN, BenchTemplate, NextHop, SLOT_PRIMARY, SLOT_SECONDARY, VARY_V4_SPORT, ablate,
};
use redirector_tests::netns::{NetNs, in_ns, sh};

const C_MAC: [u8; 6] = [2, 0, 0, 0, 1, 2];
const GC_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const P_MAC: [u8; 6] = [2, 0, 0, 0, 2, 2];
const GP_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
const S_MAC: [u8; 6] = [2, 0, 0, 0, 3, 2];
const GS_MAC: [u8; 6] = [2, 0, 0, 0, 3, 1];

fn mac_text(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The forwarding path under test.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Variant {
    Forwarder,
    Routing,
    NftDnat,
    RedirectorNat,
    RedirectorDsr,
    RedirectorSecondary,
    /// The per-feature ablation's floor: NAT without its optional parts.
    RedirectorNatBare,
}

impl Variant {
    const ALL: [Variant; 7] = [
        Variant::Forwarder,
        Variant::Routing,
        Variant::NftDnat,
        Variant::RedirectorNat,
        Variant::RedirectorDsr,
        Variant::RedirectorSecondary,
        Variant::RedirectorNatBare,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Forwarder => "static XDP forwarder (MACs + bpf_redirect_map)",
            Variant::Routing => "kernel routing",
            Variant::NftDnat => "nftables DNAT",
            Variant::RedirectorNat => "redirector nat (primary active)",
            Variant::RedirectorDsr => "redirector dsr (primary active)",
            Variant::RedirectorSecondary => "redirector nat on its secondary (flow entries)",
            Variant::RedirectorNatBare => {
                "ablation: redirector nat without counters, silence flags, signals, MTU and TTL checks"
            }
        }
    }

    /// Destination of the frames and the backend they must reach.
    fn target(self) -> ([u8; 4], bool) {
        match self {
            Variant::Forwarder | Variant::Routing => ([198, 18, 2, 2], true),
            Variant::NftDnat => ([198, 18, 102, 1], true),
            Variant::RedirectorNat | Variant::RedirectorNatBare => ([198, 18, 100, 1], true),
            Variant::RedirectorDsr => ([198, 18, 100, 2], true),
            Variant::RedirectorSecondary => ([198, 18, 100, 1], false),
        }
    }
}

/// A 64-byte UDP frame from the client to `dst`:53, UDP checksum 0 (none:
/// the source port changes per flow).
fn frame(dst: [u8; 4]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(C_MAC, GC_MAC)
        .ipv4([198, 18, 1, 2], dst, 64)
        .udp(40000, 53)
        .write(&mut out, &[0u8; 22])?;
    // The UDP checksum field (offset 14 + 20 + 6): 0, "no checksum".
    out[40] = 0;
    out[41] = 0;
    if out.len() != 64 {
        bail!("frame of {} bytes", out.len());
    }
    Ok(out)
}

/// The topology: namespaces, veths, addresses, routes, static neighbours.
struct Topology {
    client: NetNs,
    gw: NetNs,
    primary: NetNs,
    secondary: NetNs,
}

fn topology() -> Topology {
    let t = Topology {
        client: NetNs::new("tpc"),
        gw: NetNs::new("tpg"),
        primary: NetNs::new("tpp"),
        secondary: NetNs::new("tps"),
    };
    in_ns(&t.gw.name, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    for (subnet, far, far_if, gw_if, far_mac, gw_mac) in [
        (1u8, &t.client, "c0", "g-c", C_MAC, GC_MAC),
        (2, &t.primary, "p0", "g-p", P_MAC, GP_MAC),
        (3, &t.secondary, "s0", "g-s", S_MAC, GS_MAC),
    ] {
        sh(&[
            "ip",
            "link",
            "add",
            far_if,
            "netns",
            &far.name,
            "address",
            &mac_text(far_mac),
            "type",
            "veth",
            "peer",
            "name",
            gw_if,
            "netns",
            &t.gw.name,
            "address",
            &mac_text(gw_mac),
        ]);
        in_ns(
            &t.gw.name,
            &[
                "ip",
                "addr",
                "add",
                &format!("198.18.{subnet}.1/24"),
                "dev",
                gw_if,
            ],
        );
        in_ns(&t.gw.name, &["ip", "link", "set", gw_if, "up"]);
        in_ns(
            &far.name,
            &[
                "ip",
                "addr",
                "add",
                &format!("198.18.{subnet}.2/24"),
                "dev",
                far_if,
            ],
        );
        in_ns(&far.name, &["ip", "link", "set", far_if, "up"]);
        in_ns(
            &far.name,
            &[
                "ip",
                "route",
                "add",
                "198.18.0.0/15",
                "via",
                &format!("198.18.{subnet}.1"),
            ],
        );
        // The receivers drop everything, ARP included: fixed neighbours.
        in_ns(
            &t.gw.name,
            &[
                "ip",
                "neigh",
                "replace",
                &format!("198.18.{subnet}.2"),
                "lladdr",
                &mac_text(far_mac),
                "dev",
                gw_if,
                "nud",
                "permanent",
            ],
        );
        in_ns(
            &far.name,
            &[
                "ip",
                "neigh",
                "replace",
                &format!("198.18.{subnet}.1"),
                "lladdr",
                &mac_text(gw_mac),
                "dev",
                far_if,
                "nud",
                "permanent",
            ],
        );
    }
    t
}

/// `name` of the lab object `obj`, loaded.
fn lab_prog<'a>(obj: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let p: &mut Xdp = obj.program_mut(name).context(name.to_owned())?.try_into()?;
    if p.fd().is_err() {
        p.load()?;
    }
    Ok(p)
}

/// A receiver: `count_drop` on `dev` in `ns`.
struct Receiver {
    obj: Ebpf,
}

impl Receiver {
    fn attach(ns: &NetNs, dev: &str) -> Result<Receiver> {
        let _in = ns.enter();
        let mut obj = Ebpf::load(redirector::LAB_OBJECT)?;
        lab_prog(&mut obj, "count_drop")?.attach(dev, XdpMode::Driver)?;
        Ok(Receiver { obj })
    }

    fn count(&self) -> Result<u64> {
        let m = PerCpuArray::<_, u64>::try_from(self.obj.map("RECEIVED").context("RECEIVED")?)?;
        Ok(m.get(&0, 0)?.iter().sum())
    }
}

/// The generator in the client's namespace.
struct Generator {
    obj: Ebpf,
    ifindex: u32,
    tx: ProgramFd,
    drop: ProgramFd,
}

impl Generator {
    fn new(ns: &NetNs) -> Result<Generator> {
        let _in = ns.enter();
        let mut obj = Ebpf::load(redirector::LAB_OBJECT)?;
        // The client end needs an XDP program for the gateway's redirects
        // back (none here) and for native XDP_TX: `pass`.
        lab_prog(&mut obj, "pass")?.attach("c0", XdpMode::Driver)?;
        let tx = lab_prog(&mut obj, "trivial")?.fd()?.try_clone()?;
        let drop = lab_prog(&mut obj, "drop")?.fd()?.try_clone()?;
        lab_prog(&mut obj, "restore")?;
        let ifindex = ifindex("c0")?;
        Ok(Generator {
            obj,
            ifindex,
            tx,
            drop,
        })
    }

    /// Sends `n` frames (`send`: to the gateway; else dropped at once: the
    /// generator alone) rewritten from `frame`; the wall time it took.
    fn run(&mut self, ns: &NetNs, frame: &[u8], many: bool, send: bool, n: u32) -> Result<Duration> {
        let _in = ns.enter();
        let mut bytes = [0u8; BENCH_TEMPLATE_LEN];
        bytes[..frame.len()].copy_from_slice(frame);
        let t = BenchTemplate {
            bytes,
            vary_off: if many { VARY_V4_SPORT as u32 } else { 0 },
            counter: 0,
        };
        Array::<_, BenchTemplate>::try_from(self.obj.map_mut("TEMPLATE").context("TEMPLATE")?)?
            .set(0, t, 0)?;
        let target = if send { &self.tx } else { &self.drop };
        ProgramArray::try_from(self.obj.map_mut("TARGET").context("TARGET")?)?.set(0, target, 0)?;
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
        let ctx: Vec<u8> = [0, u32::try_from(frame.len())?, 0, self.ifindex, 0, 0]
            .iter()
            .flat_map(|w: &u32| w.to_ne_bytes())
            .collect();
        let prog = lab_prog(&mut self.obj, "restore")?;
        let started = Instant::now();
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: n,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..Default::default()
        })?;
        Ok(started.elapsed())
    }
}

fn ifindex(dev: &str) -> Result<u32> {
    let c = std::ffi::CString::new(dev)?;
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        bail!("no interface {dev}");
    }
    Ok(i)
}

/// What runs on the gateway's `g-c` for one variant (detached on drop).
enum Gateway {
    Lab {
        _obj: Ebpf,
    },
    Redirector {
        _dp: Box<Datapath>,
    },
    /// `pass` and the DNAT table, removed after the variant: conntrack then
    /// leaves the other variants' packets alone.
    Nft {
        _obj: Ebpf,
        ns: String,
    },
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Gateway::Nft { ns, .. } = self {
            in_ns(ns, &["nft", "delete", "table", "ip", "tp"]);
            in_ns(ns, &["conntrack", "-F"]);
        }
    }
}

fn svc(name: &str, vip: &str, mode: Mode) -> Result<Service> {
    Ok(Service {
        name: name.to_owned(),
        vip: vip.parse()?,
        port: 53,
        protocol: Protocol::Udp,
        mode,
        primary: Backend {
            addr: "198.18.2.2".parse()?,
            port: None,
        },
        secondary: Backend {
            addr: "198.18.3.2".parse()?,
            port: None,
        },
        health: HealthCheck::default_for(Protocol::Udp),
        failover: redirector::config::Failover::default(),
        allow: Vec::new(),
        deny: Vec::new(),
    })
}

fn gateway(gw: &NetNs, v: Variant) -> Result<Gateway> {
    let _in = gw.enter();
    let (gc, gp, gs) = (ifindex("g-c")?, ifindex("g-p")?, ifindex("g-s")?);
    match v {
        Variant::Forwarder => {
            let mut obj = Ebpf::load(redirector::LAB_OBJECT)?;
            let hop = NextHop {
                ifindex: gp,
                dst_mac: P_MAC,
                src_mac: GP_MAC,
            };
            Array::<_, NextHop>::try_from(obj.map_mut("STATIC_HOP").context("STATIC_HOP")?)?
                .set(0, hop, 0)?;
            DevMapHash::try_from(obj.map_mut("STATIC_EGRESS").context("STATIC_EGRESS")?)?
                .insert(gp, gp, None, 0)?;
            lab_prog(&mut obj, "forward_static")?.attach("g-c", XdpMode::Driver)?;
            Ok(Gateway::Lab { _obj: obj })
        }
        Variant::Routing => {
            let mut obj = Ebpf::load(redirector::LAB_OBJECT)?;
            lab_prog(&mut obj, "pass")?.attach("g-c", XdpMode::Driver)?;
            Ok(Gateway::Lab { _obj: obj })
        }
        Variant::NftDnat => {
            let mut obj = Ebpf::load(redirector::LAB_OBJECT)?;
            lab_prog(&mut obj, "pass")?.attach("g-c", XdpMode::Driver)?;
            let ns = gw.name.clone();
            in_ns(&ns, &["nft", "add", "table", "ip", "tp"]);
            in_ns(
                &ns,
                &[
                    "nft",
                    "add",
                    "chain",
                    "ip",
                    "tp",
                    "pre",
                    "{ type nat hook prerouting priority -100 ; }",
                ],
            );
            in_ns(
                &ns,
                &[
                    "nft",
                    "add",
                    "rule",
                    "ip",
                    "tp",
                    "pre",
                    "ip",
                    "daddr",
                    "198.18.102.1",
                    "dnat",
                    "to",
                    "198.18.2.2",
                ],
            );
            Ok(Gateway::Nft { _obj: obj, ns })
        }
        Variant::RedirectorNat
        | Variant::RedirectorDsr
        | Variant::RedirectorSecondary
        | Variant::RedirectorNatBare => {
            let off = if v == Variant::RedirectorNatBare {
                ablate::ALL & !ablate::PORTS
            } else {
                0
            };
            let mut dp = Datapath::load_ablated(Sizes::default(), off)?;
            for i in [gc, gp, gs] {
                dp.add_egress(i)?;
            }
            let hops = [
                NextHop {
                    ifindex: gp,
                    dst_mac: P_MAC,
                    src_mac: GP_MAC,
                },
                NextHop {
                    ifindex: gs,
                    dst_mac: S_MAC,
                    src_mac: GS_MAC,
                },
            ];
            let active = if v == Variant::RedirectorSecondary {
                SLOT_SECONDARY
            } else {
                SLOT_PRIMARY
            };
            dp.set_service(0, &svc("nat", "198.18.100.1", Mode::Nat)?, hops, both_up(active))?;
            dp.set_service(
                1,
                &svc("dsr", "198.18.100.2", Mode::Dsr)?,
                hops,
                both_up(SLOT_PRIMARY),
            )?;
            dp.program()?.attach("g-c", XdpMode::Driver)?;
            Ok(Gateway::Redirector { _dp: Box::new(dp) })
        }
    }
}

/// One measurement.
struct Sample {
    /// ns per packet of the path (the generator alone subtracted).
    path_ns: f64,
    /// Packets per second received, generator and path on one CPU.
    pps: f64,
    /// Frames sent that no receiver counted.
    lost: u64,
}

fn main() -> Result<()> {
    let mut rounds = 5u32;
    let mut packets = 500_000u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => rounds = args.next().context("--rounds N")?.parse()?,
            "--packets" => packets = args.next().context("--packets N")?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark creates network namespaces and loads XDP programs: run it as root");
    }
    let t = topology();
    let rx = [
        Receiver::attach(&t.primary, "p0")?,
        Receiver::attach(&t.secondary, "s0")?,
    ];
    let mut generator = Generator::new(&t.client)?;
    let started = Instant::now();
    let mut results: BTreeMap<(bool, Variant), Vec<Sample>> = BTreeMap::new();
    for round in 0..rounds {
        for many in [false, true] {
            for v in Variant::ALL {
                let (dst, to_primary) = v.target();
                let f = frame(dst)?;
                let gw = gateway(&t.gw, v)?;
                // Warm up (caches, conntrack entries for one flow).
                generator.run(&t.client, &f, many, true, 10_000)?;
                let alone = generator.run(&t.client, &f, many, false, packets)?;
                let before = rx.iter().map(Receiver::count).sum::<Result<u64>>()?;
                let took = generator.run(&t.client, &f, many, true, packets)?;
                let got = rx.iter().map(Receiver::count).sum::<Result<u64>>()? - before;
                let at_target = if to_primary {
                    rx[0].count()?
                } else {
                    rx[1].count()?
                };
                drop(gw);
                if at_target == 0 {
                    bail!("{}: nothing reached the expected backend", v.name());
                }
                let n = f64::from(packets);
                results.entry((many, v)).or_default().push(Sample {
                    path_ns: (took.as_secs_f64() - alone.as_secs_f64()) * 1e9 / n,
                    pps: got as f64 / took.as_secs_f64(),
                    lost: u64::from(packets).saturating_sub(got),
                });
            }
        }
        eprintln!(
            "round {} done ({:.0} s)",
            round + 1,
            started.elapsed().as_secs_f64()
        );
    }
    print(&results, rounds, packets);
    Ok(())
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    (v[0], v[n / 2], v[n - 1])
}

fn print(results: &BTreeMap<(bool, Variant), Vec<Sample>>, rounds: u32, packets: u32) {
    println!();
    println!(
        "64-byte UDP frames, {packets} per measurement, {rounds} interleaved rounds; ns per packet of the \
         gateway path (generator alone subtracted) and packets/s received (generator and path on one CPU)"
    );
    for many in [false, true] {
        println!();
        println!(
            "{}:",
            if many {
                "65,536 flows (source port cycling)"
            } else {
                "1 flow"
            }
        );
        println!();
        println!(
            "| path | ns/packet min | median | max | ÷ forwarder | Mpps (median) | ÷ forwarder | × faster than nft | lost (max) |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let med = |v: Variant| {
            results.get(&(many, v)).map(|s| {
                (
                    median(s.iter().map(|x| x.path_ns).collect()).1,
                    median(s.iter().map(|x| x.pps).collect()).1,
                )
            })
        };
        let (Some(fwd), Some(nft)) = (med(Variant::Forwarder), med(Variant::NftDnat)) else {
            continue;
        };
        for v in Variant::ALL {
            let Some(s) = results.get(&(many, v)) else {
                continue;
            };
            let (mn, md, mx) = median(s.iter().map(|x| x.path_ns).collect());
            let pps = median(s.iter().map(|x| x.pps).collect()).1;
            let lost = s.iter().map(|x| x.lost).max().unwrap_or(0);
            println!(
                "| {} | {mn:.1} | {md:.1} | {mx:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {lost} |",
                v.name(),
                md / fwd.0,
                pps / 1e6,
                pps / fwd.1,
                nft.0 / md,
            );
        }
    }
}
