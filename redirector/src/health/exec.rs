//! Exec probe: a command whose exit status is the verdict.
use std::{net::SocketAddr, time::Duration};

use tokio::time::Instant;

use super::{Outcome, Reason};
use crate::process::{self, Ended};

/// Runs `command` with the backend in `REDIRECTOR_BACKEND_ADDR` and
/// `REDIRECTOR_BACKEND_PORT`; passed on exit status 0. Its whole process
/// group is killed when it ends or at the timeout, and the command reaped
/// ([`process::run`]).
pub(super) async fn probe(command: &[String], target: SocketAddr, timeout: Duration) -> Outcome {
    let start = Instant::now();
    let env = [
        ("REDIRECTOR_BACKEND_ADDR".to_owned(), target.ip().to_string()),
        ("REDIRECTOR_BACKEND_PORT".to_owned(), target.port().to_string()),
    ];
    let result = match process::run(command, &env, timeout, false).await.ended {
        Ended::Exit(0) => Ok(()),
        Ended::Exit(code) => Err(Reason::Exit(code)),
        Ended::Signal(signal) => Err(Reason::Exit(128 + signal)),
        Ended::Timeout => Err(Reason::Timeout),
        Ended::Error(e) => Err(Reason::Error(e)),
    };
    Outcome::finish(result, start)
}
