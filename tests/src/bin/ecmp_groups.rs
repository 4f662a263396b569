//! `ecmp-groups TABLE [--buckets N] [--idle-secs S]`: on a Linux router in
//! front of redirector gateways, keeps each multipath route that BIRD
//! installs in kernel table TABLE (`define KERNEL_TABLE` in
//! `docs/examples/bird/router.conf`) in the main table as a kernel
//! *resilient* next-hop group (`ip nexthop … type resilient`).
//!
//! BIRD 2.0 (and FRR 8.4 for routing-protocol routes) install plain
//! multipath routes: the kernel's hash-threshold spreading then remaps
//! flows of surviving gateways when one goes. A resilient group assigns
//! hash buckets to next hops and, when one goes, moves only its buckets;
//! buckets move to a gateway that comes (back) only once idle for
//! `--idle-secs`. Flows that stay on their gateway keep whatever that
//! gateway holds for them (flow entries while the secondary is active, a
//! drain, sharing).
//!
//! It follows the table with `ip monitor route` and applies each change
//! with one `ip -batch -`; its nexthops and routes carry protocol 246, and a
//! start removes what an earlier run left. Runs until killed.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, Write as _},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// Protocol number of the nexthops and routes this tool owns.
const PROTO: &str = "246";
/// First nexthop id; group ids start at `GROUP_BASE`.
const HOP_BASE: u32 = 46_000;
const GROUP_BASE: u32 = 47_000;

#[derive(Default)]
struct State {
    /// (gateway, dev) → nexthop id.
    hops: BTreeMap<(String, String), u32>,
    /// Destination → (group id, member nexthop ids).
    groups: BTreeMap<String, (u32, BTreeSet<u32>)>,
    next_hop: u32,
    next_group: u32,
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn batch(lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    let mut stdin = child.stdin.take().context("ip -batch stdin")?;
    for l in lines {
        writeln!(stdin, "{l}")?;
    }
    drop(stdin);
    if !child.wait()?.success() {
        bail!("ip -batch failed on: {lines:?}");
    }
    Ok(())
}

/// The table's routes: destination → its (gateway, dev) next hops.
fn routes(table: &str) -> Result<BTreeMap<String, BTreeSet<(String, String)>>> {
    let mut out = BTreeMap::new();
    for family in ["-4", "-6"] {
        // A table BIRD has not written yet does not exist: no routes.
        let text = ip(&["-j", family, "route", "show", "table", table]).unwrap_or_default();
        let list: Value = serde_json::from_str(text.trim()).unwrap_or(Value::Array(Vec::new()));
        for r in list.as_array().into_iter().flatten() {
            let Some(dst) = r["dst"].as_str() else { continue };
            let mut hops = BTreeSet::new();
            let hop = |v: &Value| Some((v["gateway"].as_str()?.to_owned(), v["dev"].as_str()?.to_owned()));
            match r["nexthops"].as_array() {
                Some(list) => hops.extend(list.iter().filter_map(hop)),
                None => hops.extend(hop(r)),
            }
            if !hops.is_empty() {
                out.insert(dst.to_owned(), hops);
            }
        }
    }
    Ok(out)
}

impl State {
    /// Brings the main table's groups to `want`.
    fn sync(
        &mut self,
        want: &BTreeMap<String, BTreeSet<(String, String)>>,
        buckets: u32,
        idle: u32,
    ) -> Result<()> {
        let mut cmds = Vec::new();
        for hops in want.values() {
            for (gw, dev) in hops {
                if !self.hops.contains_key(&(gw.clone(), dev.clone())) {
                    let id = HOP_BASE + self.next_hop;
                    self.next_hop += 1;
                    cmds.push(format!(
                        "nexthop replace id {id} via {gw} dev {dev} proto {PROTO}"
                    ));
                    self.hops.insert((gw.clone(), dev.clone()), id);
                }
            }
        }
        for (dst, hops) in want {
            let members: BTreeSet<u32> = hops.iter().map(|h| self.hops[h]).collect();
            let list = members.iter().map(u32::to_string).collect::<Vec<_>>().join("/");
            match self.groups.get_mut(dst) {
                Some((_, now)) if *now == members => {}
                Some((id, now)) => {
                    // Same group, new members: only the gone ones' buckets move.
                    cmds.push(format!(
                        "nexthop replace id {id} group {list} type resilient buckets {buckets} idle_timer {idle} proto {PROTO}"
                    ));
                    *now = members;
                }
                None => {
                    let id = GROUP_BASE + self.next_group;
                    self.next_group += 1;
                    cmds.push(format!(
                        "nexthop replace id {id} group {list} type resilient buckets {buckets} idle_timer {idle} proto {PROTO}"
                    ));
                    cmds.push(format!("route replace {dst} nhid {id} proto {PROTO}"));
                    self.groups.insert(dst.clone(), (id, members));
                }
            }
        }
        let gone: Vec<String> = self
            .groups
            .keys()
            .filter(|d| !want.contains_key(*d))
            .cloned()
            .collect();
        for dst in gone {
            if let Some((id, _)) = self.groups.remove(&dst) {
                cmds.push(format!("route del {dst} nhid {id}"));
                cmds.push(format!("nexthop del id {id}"));
            }
        }
        let used: BTreeSet<u32> = self
            .groups
            .values()
            .flat_map(|(_, m)| m.iter().copied())
            .collect();
        let unused: Vec<(String, String)> = self
            .hops
            .iter()
            .filter(|(_, id)| !used.contains(id))
            .map(|(k, _)| k.clone())
            .collect();
        for k in unused {
            if let Some(id) = self.hops.remove(&k) {
                cmds.push(format!("nexthop del id {id}"));
            }
        }
        batch(&cmds)
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let table = args
        .next()
        .context("usage: ecmp-groups TABLE [--buckets N] [--idle-secs S]")?;
    let (mut buckets, mut idle) = (128u32, 5u32);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--buckets" => buckets = args.next().context("--buckets N")?.parse()?,
            "--idle-secs" => idle = args.next().context("--idle-secs S")?.parse()?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    // What an earlier run left (routes first: a group in use cannot go).
    let _ = ip(&["route", "flush", "proto", PROTO]);
    let _ = ip(&["-6", "route", "flush", "proto", PROTO]);
    let _ = ip(&["nexthop", "flush", "proto", PROTO]);
    let mut monitor = Command::new("ip")
        .args(["-o", "monitor", "route"])
        .stdout(Stdio::piped())
        .spawn()
        .context("running ip monitor")?;
    let lines = std::io::BufReader::new(monitor.stdout.take().context("ip monitor stdout")?);
    let mut state = State::default();
    state.sync(&routes(&table)?, buckets, idle)?;
    println!("ready");
    let table_word = format!("table {table}");
    for line in lines.lines() {
        let line = line?;
        if line.contains(&table_word) {
            state.sync(&routes(&table)?, buckets, idle)?;
        }
    }
    bail!("ip monitor ended")
}
