//! The real `redirector` binary: bad input is refused with a clear error and
//! changes nothing; a good start attaches, SIGTERM detaches.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use redirector_tests::{
    netns::{NetNs, in_ns},
    require_root,
};

/// target/<profile>/redirector, built by `cargo test --workspace` next to this test.
fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("redirector");
    assert!(
        bin.exists(),
        "{} not built: run `cargo xtask test` (it builds the workspace)",
        bin.display()
    );
    bin
}

/// Writes `text` plus a `[control]` section with this test's own socket,
/// state and pin directories (tests run in parallel).
fn write_config(tag: &str, text: &str) -> PathBuf {
    let base = std::env::temp_dir().join(format!("rdr-{tag}-{}", std::process::id()));
    let path = base.with_extension("toml");
    let control = format!(
        "\n[control]\nsocket = \"{0}.sock\"\nstate_dir = \"{0}.state\"\nbpffs_dir = \"/sys/fs/bpf/rdr-{tag}-{1}\"\n",
        base.display(),
        std::process::id()
    );
    std::fs::write(&path, format!("{text}{control}")).unwrap();
    path
}

fn run_in(ns: &NetNs, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(binary())
        .args(args)
        .output()
        .unwrap()
}

fn xdp_attached(ns: &NetNs, dev: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "link", "show", dev])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

fn lab(tag: &str) -> NetNs {
    let ns = NetNs::new(tag);
    in_ns(
        &ns.name,
        &["ip", "link", "add", "a0", "type", "veth", "peer", "name", "a1"],
    );
    in_ns(&ns.name, &["ip", "addr", "add", "198.18.2.1/24", "dev", "a0"]);
    in_ns(&ns.name, &["ip", "link", "set", "a0", "up"]);
    in_ns(&ns.name, &["ip", "link", "set", "a1", "up"]);
    ns
}

const GOOD: &str = r#"
[gateway]
interfaces = ["a0"]

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
primary = "198.18.2.2"
secondary = "198.18.2.3"
"#;

#[test]
fn bad_config_names_file_line_and_key() {
    if !require_root("bad_config_names_file_line_and_key") {
        return;
    }
    let ns = lab("cfg");
    let path = write_config("bad", &GOOD.replace("protocol = \"tcp\"", "protocol = \"tcpp\""));
    let out = run_in(&ns, &["run", "--config", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("{}:9:", path.display())) && err.contains("protocol"),
        "{err}"
    );
    assert!(
        !xdp_attached(&ns, "a0"),
        "a refused config must not attach anything"
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn unknown_interface_is_refused() {
    if !require_root("unknown_interface_is_refused") {
        return;
    }
    let ns = lab("noif");
    let path = write_config("noif", &GOOD.replace("[\"a0\"]", "[\"a0\", \"nope0\"]"));
    let out = run_in(&ns, &["run", "--config", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("nope0"), "{err}");
    assert!(!xdp_attached(&ns, "a0"));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn interface_with_another_xdp_program_is_refused_and_left_alone() {
    if !require_root("interface_with_another_xdp_program_is_refused_and_left_alone") {
        return;
    }
    let ns = lab("busy");
    // Someone else's program (the lab's XDP_PASS), attached in driver mode.
    let mut other = aya::Ebpf::load(redirector::LAB_OBJECT).unwrap();
    let prog: &mut aya::programs::Xdp = other.program_mut("pass").unwrap().try_into().unwrap();
    prog.load().unwrap();
    {
        let _in = ns.enter();
        prog.attach("a0", aya::programs::XdpMode::Driver).unwrap();
    }
    let path = write_config("busy", GOOD);
    let out = run_in(&ns, &["run", "--config", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("a0 already has an XDP program attached"), "{err}");
    assert!(
        xdp_attached(&ns, "a0"),
        "the other program must still be attached"
    );
    drop(other);
    std::fs::remove_file(path).unwrap();
}

/// Under `ip netns exec` the daemon gets a private mount namespace whose
/// bpffs (and every pin in it) vanishes when it exits: the data plane goes
/// with it. That is why the lab runs the daemon with only its network
/// namespace switched (`operate.rs` shows the data plane outliving it).
#[test]
fn under_ip_netns_exec_the_pins_vanish_with_the_daemon() {
    if !require_root("under_ip_netns_exec_the_pins_vanish_with_the_daemon") {
        return;
    }
    let ns = lab("run");
    let path = write_config("run", GOOD);
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(binary())
        .args(["run", "--config", path.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !xdp_attached(&ns, "a0") {
        assert!(Instant::now() < deadline, "redirector did not attach within 20 s");
        assert!(child.try_wait().unwrap().is_none(), "redirector exited early");
        thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("attached to a0") && err.contains("stopped"), "{err}");
    assert!(
        !xdp_attached(&ns, "a0"),
        "the private bpffs went, and the link with it"
    );
    std::fs::remove_file(path).unwrap();
}
