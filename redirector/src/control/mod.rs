//! The operator's way in: a root-only Unix socket speaking [`proto`]. The
//! server only carries requests to the daemon's event loop and answers back;
//! every decision stays on that loop.
pub mod client;
pub mod proto;
pub mod server;

use thiserror::Error;

/// Errors of the control socket, on either side.
#[derive(Debug, Error)]
pub enum ControlError {
    /// No daemon listens on the socket.
    #[error("the redirector daemon is not running (no one listens on {path})")]
    NotRunning {
        /// The socket path.
        path: String,
    },
    /// The caller may not use the socket.
    #[error("permission denied on {path}: the control socket is root-only (run as root, e.g. with sudo)")]
    PermissionDenied {
        /// The socket path.
        path: String,
    },
    /// Another daemon already serves the socket.
    #[error("another redirector daemon is running (it answers on {path}); stop it first")]
    AlreadyRunning {
        /// The socket path.
        path: String,
    },
    /// The two sides speak different protocol versions.
    #[error(
        "protocol version mismatch: this redirector speaks version {ours}, the other side {theirs}; use the \
         redirector binary that matches the running daemon (or restart the daemon after an upgrade)"
    )]
    Version {
        /// Our version.
        ours: u32,
        /// Theirs.
        theirs: u32,
    },
    /// Malformed message.
    #[error("malformed control message: {0}")]
    Protocol(String),
    /// I/O on the socket.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// The system's answer.
        #[source]
        source: std::io::Error,
    },
}
