//! Running a command without a shell, as exec probes and transition hooks
//! do: its own process group, killed with the group when it ends or at its
//! deadline (a script's children too), always reaped; optionally the first
//! bytes of its output.
use std::{fmt, os::unix::process::ExitStatusExt, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt},
    process::Command,
    task::JoinHandle,
};

/// Output kept per stream; the rest is read and dropped (a command writing
/// more must not block on a full pipe).
pub const OUTPUT_MAX: usize = 4096;
/// How long to wait for a killed command to be reaped before leaving it to
/// tokio's orphan reaper (only a process stuck in the kernel takes this long).
const REAP_WAIT: Duration = Duration::from_secs(1);
/// How long the output may still arrive once the group is gone.
const DRAIN_WAIT: Duration = Duration::from_millis(100);

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Exit(i32),
    /// A signal ended it.
    Signal(i32),
    /// Its deadline passed: killed with its process group.
    Timeout,
    /// It could not be started (or waited for).
    Error(String),
}

impl Ended {
    /// Exit status 0.
    pub fn ok(&self) -> bool {
        *self == Ended::Exit(0)
    }

    /// `ok`, `failed`, `timeout` or `error` (a metrics label).
    pub fn result(&self) -> &'static str {
        match self {
            Ended::Exit(0) => "ok",
            Ended::Exit(_) | Ended::Signal(_) => "failed",
            Ended::Timeout => "timeout",
            Ended::Error(_) => "error",
        }
    }
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Exit(code) => write!(f, "exit status {code}"),
            Ended::Signal(signal) => write!(f, "killed by signal {signal}"),
            Ended::Timeout => f.write_str("timed out"),
            Ended::Error(e) => write!(f, "could not run: {e}"),
        }
    }
}

/// What a run left.
#[derive(Debug, Clone)]
pub struct Ran {
    /// How it ended.
    pub ended: Ended,
    /// Its standard output then error, each cut at [`OUTPUT_MAX`] bytes
    /// (empty unless asked for).
    pub output: String,
}

/// Runs `command` (program and arguments) with `env` added to the
/// daemon's environment, stdin from /dev/null, for at most `timeout`.
pub async fn run(command: &[String], env: &[(String, String)], timeout: Duration, capture: bool) -> Ran {
    let Some((program, args)) = command.split_first() else {
        return Ran {
            ended: Ended::Error("empty command".into()),
            output: String::new(),
        };
    };
    let output = || if capture { Stdio::piped() } else { Stdio::null() };
    let spawned = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(output())
        .stderr(output())
        // Its own process group, so a timeout kills what a script started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            return Ran {
                ended: Ended::Error(format!("{program}: {e}")),
                output: String::new(),
            };
        }
    };
    let readers = [
        child.stdout.take().map(|r| tokio::spawn(keep(r))),
        child.stderr.take().map(|r| tokio::spawn(keep(r))),
    ];
    // Kills the group when the command ended, or if this future is dropped.
    let mut group = Group(child.id());
    let ended = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status,
        // Last chance: it may have exited while we were not scheduled.
        Err(_elapsed) => match child.try_wait() {
            Ok(Some(status)) => Ok(status),
            _ => {
                group.kill();
                // Reap it here, so no zombie is left behind.
                let _reaped = tokio::time::timeout(REAP_WAIT, child.wait()).await;
                drop(group);
                return Ran {
                    ended: Ended::Timeout,
                    output: collect(readers).await,
                };
            }
        },
    };
    // The group is killed also after a normal exit: a command that left
    // something running in the background (`daemon &`) must not leak a
    // process per run. A member alive keeps the group id from being reused;
    // with none, the id would have to come round the whole pid space within
    // this instant to name anyone else's group.
    drop(group);
    let ended = match ended {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => Ended::Exit(code),
            (None, Some(signal)) => Ended::Signal(signal),
            (None, None) => Ended::Error(format!("{program}: {status}")),
        },
        Err(e) => Ended::Error(format!("{program}: {e}")),
    };
    Ran {
        ended,
        output: collect(readers).await,
    }
}

/// Reads a stream to its end, keeping the first [`OUTPUT_MAX`] bytes.
async fn keep(mut r: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n @ 1..) = r.read(&mut buf).await {
        let room = OUTPUT_MAX.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

/// The kept output of both streams; a stream still open after
/// [`DRAIN_WAIT`] (held by a process outside the group) is given up.
async fn collect(readers: [Option<JoinHandle<Vec<u8>>>; 2]) -> String {
    let mut out = String::new();
    for reader in readers.into_iter().flatten() {
        let abort = reader.abort_handle();
        match tokio::time::timeout(DRAIN_WAIT, reader).await {
            Ok(Ok(bytes)) => out.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(Err(_)) => {}
            Err(_) => abort.abort(),
        }
    }
    out
}

/// The process group of a running command (its leader's pid).
struct Group(Option<u32>);

impl Group {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) has no memory preconditions. The group leader is
            // our child and not yet reaped, so the id cannot name anyone else's group.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        ["/bin/sh", "-c", script].map(String::from).to_vec()
    }

    #[tokio::test]
    async fn exit_status_output_and_environment() {
        let env = [("HOOK_TEST".to_owned(), "value".to_owned())];
        let ran = run(
            &sh("echo out $HOOK_TEST; echo err >&2; exit 3"),
            &env,
            Duration::from_secs(5),
            true,
        )
        .await;
        assert_eq!(ran.ended, Ended::Exit(3));
        assert_eq!(ran.output, "out value\nerr\n");
        assert_eq!(ran.ended.result(), "failed");
    }

    #[tokio::test]
    async fn output_is_cut_and_a_chatty_command_still_ends() {
        let ran = run(
            &sh("head -c 100000 /dev/zero | tr '\\0' x"),
            &[],
            Duration::from_secs(5),
            true,
        )
        .await;
        assert!(ran.ended.ok(), "{:?}", ran.ended);
        assert_eq!(ran.output.len(), OUTPUT_MAX);
    }

    #[tokio::test]
    async fn a_hung_command_is_killed_with_its_group_at_the_deadline() {
        let marker = std::env::temp_dir().join(format!("redirector-group-{}", std::process::id()));
        let script = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let start = std::time::Instant::now();
        let ran = run(&sh(&script), &[], Duration::from_millis(200), true).await;
        assert_eq!(ran.ended, Ended::Timeout);
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
        // The background child was in the group: it never gets to touch.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert!(
            !marker.exists(),
            "a member of the hook's group survived the timeout"
        );
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error() {
        let ran = run(
            &["/nonexistent/hook".to_owned()],
            &[],
            Duration::from_secs(1),
            true,
        )
        .await;
        assert!(
            matches!(&ran.ended, Ended::Error(e) if e.contains("/nonexistent/hook")),
            "{:?}",
            ran.ended
        );
    }
}
