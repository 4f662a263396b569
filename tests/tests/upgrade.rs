//! Issue 11: an upgrade across a data-plane layout change takes the older
//! version's pinned data plane over instead of refusing it. The older
//! version is this build's data plane moved to `v<N-1>`, with the one
//! layout change a version bump makes today (`COUNTERS` one entry shorter
//! per added counter) written in by hand; its program keeps running in
//! the pinned links throughout, as an older daemon's would.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use redirector_common::{ABI_VERSION, Counter};
use redirector_tests::{
    client::{Traffic, metric, scrape, wait_for},
    daemon::{Daemon, Setup, xdp_attached},
    require_root,
};

/// `union bpf_attr` for BPF_MAP_CREATE (the fields used here).
#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    _rest: [u32; 27],
}

/// `union bpf_attr` for BPF_OBJ_PIN.
#[repr(C)]
#[derive(Default)]
struct PinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `union bpf_attr` for the element commands.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> i64 {
    // SAFETY: `attr` is a valid bpf_attr prefix for `cmd`; its pointers
    // outlive the call.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) }
}

/// Pins at `path` a new array map (`per_cpu`: per-CPU) of `entries` values
/// of `value_size` bytes, `init` written at key 0 (every CPU's copy).
fn pin_array(path: &Path, per_cpu: bool, value_size: u32, entries: u32, init: &[u8]) {
    let mut create = CreateAttr {
        map_type: if per_cpu { 6 } else { 2 },
        key_size: 4,
        value_size,
        max_entries: entries,
        ..CreateAttr::default()
    };
    let fd = bpf(0, &mut create);
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd the kernel just returned, owned here only.
    let fd = unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).unwrap()) };
    let cpus = if per_cpu { aya::util::nr_cpus().unwrap() } else { 1 };
    let stride = (value_size as usize).next_multiple_of(8);
    let mut value = vec![0u8; stride * cpus];
    for c in 0..cpus {
        value[c * stride..c * stride + init.len()].copy_from_slice(init);
    }
    let mut key = 0u32;
    let raw = u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&fd)).unwrap();
    let mut update = ElemAttr {
        map_fd: raw,
        key: std::ptr::from_mut(&mut key) as u64,
        value: value.as_mut_ptr() as u64,
        ..ElemAttr::default()
    };
    assert_eq!(bpf(2, &mut update), 0, "{}", std::io::Error::last_os_error());
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut pin = PinAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: raw,
        ..PinAttr::default()
    };
    assert_eq!(bpf(6, &mut pin), 0, "{}", std::io::Error::last_os_error());
}

/// Stops the daemon and dresses its pins up as the previous version's.
fn as_previous_version(s: &Setup, d: &mut Daemon) -> std::path::PathBuf {
    d.signal(libc::SIGTERM);
    let new = s.left.bpffs_dir.join(format!("v{ABI_VERSION}"));
    let old = s.left.bpffs_dir.join(format!("v{}", ABI_VERSION - 1));
    std::fs::rename(&new, &old).unwrap();
    // It had no SERVICE_INDEX (its program keeps its own, unpinned now).
    std::fs::remove_file(old.join("SERVICE_INDEX")).unwrap();
    // The previous version had three counters fewer.
    std::fs::remove_file(old.join("COUNTERS")).unwrap();
    pin_array(
        &old.join("COUNTERS"),
        true,
        8,
        Counter::COUNT - 3,
        &1_000_000u64.to_ne_bytes(),
    );
    old
}

/// The older version's data plane forwards while no daemon runs, and the
/// new daemon takes it over: pins and links moved, counters carried into
/// the larger array, the old directory gone, and not one request lost.
#[test]
fn an_older_versions_data_plane_is_taken_over_without_losing_a_request() {
    if !require_root("an_older_versions_data_plane_is_taken_over_without_losing_a_request") {
        return;
    }
    let s = Setup::new("upgrade");
    let mut d = s.daemon();
    wait_for(&s.lab.client, "primary");
    let traffic = Traffic::start(&s.lab.client);
    thread::sleep(Duration::from_millis(300));
    let old = as_previous_version(&s, &mut d);
    thread::sleep(Duration::from_millis(300));
    let _d = s.daemon();
    let new = s.left.bpffs_dir.join(format!("v{ABI_VERSION}"));
    assert!(!old.exists(), "{} left behind", old.display());
    assert!(new.join("SWITCH").exists() && new.join("link_g-c").exists());
    for dev in ["g-c", "g-p", "g-s"] {
        assert!(xdp_attached(&s.lab.gw, dev), "{dev}");
    }
    let text = scrape(&s);
    // Every CPU's copy of `passed` started at 1,000,000.
    assert!(
        metric(&text, "redirector_datapath_packets_total{reason=\"passed\"}") >= 1_000_000.0,
        "{text}"
    );
    thread::sleep(Duration::from_millis(500));
    let seen = traffic.stop();
    assert!(seen.udp_sent > 500, "{}", seen.udp_sent);
    assert_eq!(
        seen.udp_lost,
        Vec::<u64>::new(),
        "UDP requests lost across the upgrade"
    );
    assert_eq!(seen.tcp_failed, Vec::<String>::new(), "TCP connections failed");
}

/// A map the new version cannot carry over refuses the start, names the
/// map, and moves nothing: the older data plane keeps forwarding.
#[test]
fn an_older_data_plane_that_cannot_be_carried_over_is_refused_untouched() {
    if !require_root("an_older_data_plane_that_cannot_be_carried_over_is_refused_untouched") {
        return;
    }
    let s = Setup::new("upgradeno");
    let mut d = s.daemon();
    wait_for(&s.lab.client, "primary");
    let old = as_previous_version(&s, &mut d);
    // A layout no converter knows: 16-byte switch states.
    std::fs::remove_file(old.join("SWITCH")).unwrap();
    pin_array(&old.join("SWITCH"), false, 16, 1024, &[0; 16]);
    let before: Vec<_> = std::fs::read_dir(&old)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let log = s.log();
    let mut refused = Daemon::spawn(&s.lab.gw, &s.config, log.file());
    let deadline = Instant::now() + Duration::from_secs(20);
    while refused.pid() != 0 && !log.read().contains("cannot be carried over") {
        assert!(Instant::now() < deadline, "no refusal:\n{}", log.read());
        thread::sleep(Duration::from_millis(50));
    }
    refused.signal(libc::SIGKILL);
    let text = log.read();
    assert!(
        text.contains("SWITCH") && text.contains("16-byte values, expected 8"),
        "{text}"
    );
    let after: Vec<_> = std::fs::read_dir(&old)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before.len(), after.len(), "pins moved: {after:?}");
    // Still forwarding on the older data plane.
    wait_for(&s.lab.client, "primary");
}
