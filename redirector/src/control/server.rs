//! The daemon side of the control socket. Each connection carries one
//! request; the request goes to the event loop as an [`Incoming`] with the
//! peer's identity, and whatever the loop answers is written back, one line
//! per response, until the loop drops the reply channel.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use log::{debug, warn};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::mpsc,
};

use super::{
    ControlError,
    proto::{Request, Response, ResponseLine, VERSION},
};

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;
/// A client that sends nothing is dropped after this long.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Who sent a request: the login uid (the person behind sudo), resolved to a
/// name when possible, and the effective uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Effective uid of the process (0: root).
    pub uid: u32,
    /// `/proc/<pid>/loginuid`, or the uid when unset.
    pub login_uid: u32,
    /// Login name of `login_uid`, if known.
    pub name: Option<String>,
}

/// A request handed to the event loop.
pub struct Incoming {
    /// The request.
    pub request: Request,
    /// Who sent it.
    pub peer: Peer,
    /// Where the answers go (one line each); dropping it ends the connection.
    pub reply: mpsc::Sender<Response>,
}

/// The listening socket; removed when dropped.
pub struct Server {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `path` (mode 0600) and serves it on the current runtime, sending
    /// requests to `tx`. Refuses when another daemon answers there; a stale
    /// socket file is replaced.
    pub fn spawn(path: &Path, tx: mpsc::Sender<Incoming>) -> Result<Server, ControlError> {
        let shown = path.display().to_string();
        let io = |source| ControlError::Io {
            path: shown.clone(),
            source,
        };
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::AlreadyRunning { path: shown });
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => debug!("removed a stale control socket at {shown}"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        // Created 0600, not with the umask's bits until a chmod: nobody can
        // connect in between. (The umask is the process's: any file another
        // thread creates in this instant only gets narrower permissions.)
        // SAFETY: umask(2) only swaps the process's file mode mask.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            if let Err(e) = serve(stream, tx).await {
                                debug!("control connection: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        warn!("control socket: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Server {
            path: path.to_path_buf(),
            task,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn write(stream: &mut (impl tokio::io::AsyncWrite + Unpin), response: Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(&ResponseLine {
        version: VERSION,
        response,
    })
    .map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

async fn serve(stream: UnixStream, tx: mpsc::Sender<Incoming>) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let (read, mut write_half) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_LINE as u64));
    let mut line = String::new();
    match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(0)) | Err(_) => return Ok(()),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e),
    }
    let request = match parse(&line) {
        Ok(r) => r,
        Err(e) => {
            return write(
                &mut write_half,
                Response::Error {
                    message: e.to_string(),
                },
            )
            .await;
        }
    };
    // The socket is 0600 root; this is a second lock in case it is not.
    if cred.uid() != 0 {
        let message = "permission denied: the control socket is root-only".to_owned();
        return write(&mut write_half, Response::Error { message }).await;
    }
    let peer = peer(cred.uid(), cred.pid());
    let (reply, mut answers) = mpsc::channel(64);
    // Only `events --follow` streams; every other request ends with its
    // first answer that is not an event (so the daemon may exit right after
    // answering a detach: this task drops the channel once it is written).
    let streams = matches!(request, Request::Events { follow: true });
    if tx.send(Incoming { request, peer, reply }).await.is_err() {
        let message = "the daemon is shutting down".to_owned();
        return write(&mut write_half, Response::Error { message }).await;
    }
    while let Some(r) = answers.recv().await {
        let last = !streams && !matches!(r, Response::Event(_));
        write(&mut write_half, r).await?;
        if last {
            break;
        }
    }
    drop(answers);
    write_half.shutdown().await
}

/// Reads the version before the request, so a newer CLI gets a clear answer.
fn parse(line: &str) -> Result<Request, ControlError> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| ControlError::Protocol(e.to_string()))?;
    let theirs = value
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| ControlError::Protocol("no version".into()))?;
    if theirs != u64::from(VERSION) {
        return Err(ControlError::Version {
            ours: VERSION,
            theirs: u32::try_from(theirs).unwrap_or(u32::MAX),
        });
    }
    let request = value
        .get("request")
        .cloned()
        .ok_or_else(|| ControlError::Protocol("no request".into()))?;
    serde_json::from_value(request).map_err(|e| ControlError::Protocol(e.to_string()))
}

fn peer(uid: u32, pid: Option<i32>) -> Peer {
    let login_uid = pid
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/loginuid")).ok())
        .and_then(|s| s.trim().parse::<u32>().ok())
        // (u32)-1: no login session (a daemon or a container without audit).
        .filter(|&u| u != u32::MAX)
        .unwrap_or(uid);
    Peer {
        uid,
        login_uid,
        name: user_name(login_uid),
    }
}

/// The login name of `uid` from the passwd database.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: an all-zero passwd is a valid out-parameter.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: valid buffers of the given sizes; getpwuid_r only writes into them.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name points into buf, NUL-terminated by getpwuid_r.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn version_mismatch_is_named() {
        let e = parse(r#"{"version":7,"request":{"kind":"status"}}"#).unwrap_err();
        assert!(
            e.to_string().contains("speaks version 1, the other side 7"),
            "{e}"
        );
        assert!(matches!(
            parse(r#"{"version":1,"request":{"kind":"status"}}"#),
            Ok(Request::Status)
        ));
        assert!(parse("not json").is_err());
    }

    #[test]
    fn root_has_a_name() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
    }
}
