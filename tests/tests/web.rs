//! The website recipe (docs/examples/web/) with nginx on both backends and
//! wrk through the VIP: a drain of the primary loses no request (its
//! keep-alive connections finish there), a killed primary costs the
//! requests in flight on its connections, then everything is served by the
//! secondary; the primary back, traffic fails back by itself.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use redirector_tests::{
    daemon::{Setup, cli_ok},
    netns::NetNs,
    require_root,
};

fn tools_available(test: &str) -> bool {
    let ok = ["/usr/sbin/nginx", "/usr/bin/wrk"]
        .iter()
        .all(|p| std::path::Path::new(p).exists());
    if ok {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: nginx or wrk is not installed (`cargo xtask bootstrap` installs them), and CI=true forbids skipping"
    );
    eprintln!("SKIPPED {test}: nginx or wrk is not installed");
    false
}

/// nginx in `ns` on `addr`:80 answering `name` on / and 200 on /healthz,
/// its files in a private directory; killed (its process group) on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    fn start(ns: &NetNs, addr: &str, name: &str) -> Nginx {
        let dir = std::env::temp_dir().join(format!("redirector-nginx-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 2;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               keepalive_requests 100000;\n\
               server {{\n    listen {addr}:80;\n    location = /healthz {{ return 200 \"ok\\n\"; }}\n\
                 location / {{ return 200 \"{name}\\n\"; }}\n  }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new("ip")
                .args(["netns", "exec", &ns.name, "/usr/sbin/nginx", "-c"])
                .arg(dir.join("nginx.conf"))
                .args(["-p", dir.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let n = Nginx { child, dir };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !curl(&ns.name, &format!("http://{addr}/healthz")).contains("ok") {
            assert!(Instant::now() < deadline, "nginx on {addr} does not answer");
            thread::sleep(Duration::from_millis(20));
        }
        n
    }

    /// SIGKILL to the master and its workers.
    fn kill(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) has no memory preconditions; the group is our child's.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn curl(ns: &str, url: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "-m", "1", url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What wrk reported.
#[derive(Debug)]
struct Wrk {
    requests: u64,
    errors: u64,
    text: String,
}

/// wrk from the client: 2 threads, 20 keep-alive connections, `secs`.
fn wrk(client: &NetNs, secs: u32) -> thread::JoinHandle<Wrk> {
    let name = client.name.clone();
    thread::spawn(move || {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &name,
                "wrk",
                "-t2",
                "-c20",
                &format!("-d{secs}s"),
                "--timeout",
                "1s",
            ])
            .arg("http://198.18.100.1/")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let requests = text
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        // "Socket errors: connect 0, read 3, write 0, timeout 0" and
        // "Non-2xx or 3xx responses: N".
        let mut errors = 0;
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("Socket errors:") {
                errors += rest
                    .split(',')
                    .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                    .sum::<u64>();
            }
            if let Some(rest) = line.trim().strip_prefix("Non-2xx or 3xx responses:") {
                errors += rest.trim().parse::<u64>().unwrap_or(0);
            }
        }
        Wrk {
            requests,
            errors,
            text,
        }
    })
}

fn config() -> String {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/web/redirector.toml");
    std::fs::read_to_string(example)
        .unwrap()
        .replace(
            "interfaces = [\"eth0\", \"eth1\"]\nbackend_interfaces = [\"eth1\"]",
            "interfaces = [\"g-c\", \"g-p\", \"g-s\"]\nbackend_interfaces = [\"g-p\", \"g-s\"]\nxdp_mode = \"driver\"",
        )
        // The test waits less for the failback than a site should.
        .replace("failback_delay = \"5s\"", "failback_delay = \"1s\"")
}

fn active(sock: &std::path::Path) -> String {
    let st = cli_ok(sock, &["status"]);
    st.lines()
        .find(|l| l.starts_with("web "))
        .and_then(|l| l.split("active ").nth(1))
        .unwrap_or("")
        .to_owned()
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_drain_loses_nothing_and_a_killed_primary_fails_over_and_back() {
    if !require_root("web recipe") || !tools_available("web recipe") {
        return;
    }
    let mut s = Setup::with_config("wb", &config());
    // The lab's own servers hold port 80: the web servers take it.
    s.primary.kill();
    s.secondary.kill();
    let mut primary = Nginx::start(&s.lab.primary, "198.18.2.2", "primary");
    let _secondary = Nginx::start(&s.lab.secondary, "198.18.3.2", "secondary");
    let sock = s.left.socket.clone();
    let _d = s.daemon();
    wait_for("both up", Duration::from_secs(5), || {
        let st = cli_ok(&sock, &["status"]);
        st.lines()
            .skip_while(|l| !l.starts_with("web "))
            .skip(1)
            .take(2)
            .all(|l| l.contains(" up "))
    });
    assert_eq!(curl(&s.lab.client.name, "http://198.18.100.1/"), "primary\n");

    // A drain: new connections to the secondary, none lost.
    let load = wrk(&s.lab.client, 3);
    thread::sleep(Duration::from_secs(1));
    cli_ok(&sock, &["drain", "web", "primary", "--reason", "deploy"]);
    assert_eq!(curl(&s.lab.client.name, "http://198.18.100.1/"), "secondary\n");
    let drained = load.join().unwrap();
    eprintln!("drain: {} requests, {} errors", drained.requests, drained.errors);
    assert!(drained.requests > 1000, "{}", drained.text);
    assert_eq!(drained.errors, 0, "a drain lost requests:\n{}", drained.text);
    cli_ok(&sock, &["undrain", "web", "primary"]);
    wait_for("web back on the primary", Duration::from_secs(5), || {
        active(&sock) == "primary"
    });

    // A kill: the requests in flight on its connections fail, wrk
    // reconnects, the secondary serves.
    let load = wrk(&s.lab.client, 3);
    thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    primary.kill();
    wait_for("web on the secondary", Duration::from_secs(5), || {
        active(&sock) == "secondary"
    });
    let moved = killed.elapsed();
    let run = load.join().unwrap();
    eprintln!(
        "kill: {} requests, {} errors; moved within {moved:.1?}",
        run.requests, run.errors
    );
    assert!(run.requests > 1000, "{}", run.text);
    assert!(
        run.errors <= 100,
        "{} errors after a kill:\n{}",
        run.errors,
        run.text
    );
    assert_eq!(curl(&s.lab.client.name, "http://198.18.100.1/"), "secondary\n");

    // Back: failback by itself after its delay.
    drop(primary);
    let _primary = Nginx::start(&s.lab.primary, "198.18.2.2", "primary");
    wait_for("web failed back", Duration::from_secs(10), || {
        active(&sock) == "primary"
    });
    assert_eq!(curl(&s.lab.client.name, "http://198.18.100.1/"), "primary\n");
}
