//! The website recipe's servers in the lab: nginx on a backend, wrk through
//! the VIP (tests/tests/web.rs, the recipes benchmark, the demo).
#![expect(clippy::unwrap_used, reason = "test helpers: a failed setup is a failed test")]

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::netns::NetNs;

pub fn tools_available(test: &str) -> bool {
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
pub struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    pub fn start(ns: &NetNs, addr: &str, name: &str) -> Nginx {
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
    pub fn kill(&mut self) {
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

pub fn curl(ns: &str, url: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "-m", "1", url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What wrk reported.
#[derive(Debug)]
pub struct Wrk {
    /// Requests completed.
    pub requests: u64,
    /// Socket errors and non-2xx/3xx answers.
    pub errors: u64,
    /// wrk's report.
    pub text: String,
}

/// wrk from the client: 2 threads, 20 keep-alive connections, `secs`.
pub fn wrk(client: &NetNs, secs: u32) -> thread::JoinHandle<Wrk> {
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

pub fn config() -> String {
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
