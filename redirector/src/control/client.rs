//! The CLI side of the control socket (blocking: the CLI has nothing else to do).
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use super::{
    ControlError,
    proto::{Request, RequestLine, Response, ResponseLine, VERSION},
};

/// Sends `request` and hands every response line to `each` until the daemon
/// closes the connection (or `each` returns false).
pub fn call(
    path: &Path,
    request: Request,
    timeout: Option<Duration>,
    mut each: impl FnMut(Response) -> bool,
) -> Result<(), ControlError> {
    let shown = path.display().to_string();
    let io = |source: std::io::Error| ControlError::Io {
        path: shown.clone(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ControlError::NotRunning { path: shown.clone() }
        }
        std::io::ErrorKind::PermissionDenied => ControlError::PermissionDenied { path: shown.clone() },
        _ => io(e),
    })?;
    stream.set_read_timeout(timeout).map_err(io)?;
    let mut line = serde_json::to_vec(&RequestLine {
        version: VERSION,
        request,
    })
    .map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(io)?;
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| ControlError::Protocol(e.to_string()))?;
        let theirs = value
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if theirs != u64::from(VERSION) {
            return Err(ControlError::Version {
                ours: VERSION,
                theirs: u32::try_from(theirs).unwrap_or(u32::MAX),
            });
        }
        let r: ResponseLine =
            serde_json::from_value(value).map_err(|e| ControlError::Protocol(e.to_string()))?;
        if !each(r.response) {
            break;
        }
    }
    Ok(())
}
