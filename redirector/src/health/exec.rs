//! Exec probe: a command whose exit status is the verdict.
use std::{net::SocketAddr, os::unix::process::ExitStatusExt, process::Stdio, time::Duration};

use tokio::{process::Command, time::Instant};

use super::{Outcome, Reason};

/// How long to wait for a killed command to be reaped before leaving it to
/// tokio's orphan reaper (only a process stuck in the kernel takes this long).
const REAP_WAIT: Duration = Duration::from_secs(1);

/// Runs `command` with the backend in `REDIRECTOR_BACKEND_ADDR` and
/// `REDIRECTOR_BACKEND_PORT`; passed on exit status 0. Its whole process
/// group is killed when it ends or at the timeout, and the command reaped.
pub(super) async fn probe(command: &[String], target: SocketAddr, timeout: Duration) -> Outcome {
    let start = Instant::now();
    let result = run(command, target, start + timeout).await;
    Outcome::finish(result, start)
}

async fn run(command: &[String], target: SocketAddr, deadline: Instant) -> Result<(), Reason> {
    let Some((program, args)) = command.split_first() else {
        return Err(Reason::Error("empty command".into()));
    };
    let mut child = Command::new(program)
        .args(args)
        .env("REDIRECTOR_BACKEND_ADDR", target.ip().to_string())
        .env("REDIRECTOR_BACKEND_PORT", target.port().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, so a timeout kills what a script started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Reason::Error(format!("{program}: {e}")))?;
    // Kills the group when the command ended, or if this probe is dropped
    // (scheduler stopped) before.
    let mut group = Group(child.id());

    let status = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(status) => status,
        // Last chance: it may have exited while we were not scheduled.
        Err(_elapsed) => match child.try_wait() {
            Ok(Some(status)) => Ok(status),
            _ => {
                group.kill();
                // Reap it here, so no zombie is left behind.
                let _reaped = tokio::time::timeout(REAP_WAIT, child.wait()).await;
                return Err(Reason::Timeout);
            }
        },
    };
    // The group is killed when `group` drops, also after a normal exit: a
    // check that left something running in the background (`daemon &`)
    // must not leak one process per probe. A member alive keeps the group
    // id from being reused; with none, the id would have to come round the
    // whole pid space within this instant to name anyone else's group.
    drop(group);
    let status = status.map_err(|e| Reason::Error(format!("{program}: {e}")))?;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(code), _) => Err(Reason::Exit(code)),
        (None, Some(signal)) => Err(Reason::Exit(128 + signal)),
        (None, None) => Err(Reason::Error(format!("{program}: {status}"))),
    }
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
