//! Synchronous client for the control socket (used by `run`, which must stay
//! a single-threaded process until it execs).

use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use super::protocol::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the agent-monitor daemon is not running (no control socket at {path}); start it with `agent-monitor daemon`"
    )]
    NotRunning { path: PathBuf },
    #[error("permission denied on the control socket {path}: run as root")]
    Permission { path: PathBuf },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the daemon sent an unreadable response: {0}")]
    Protocol(String),
    #[error("the daemon refused: {0}")]
    Refused(String),
}

pub fn request(path: &Path, req: &Request) -> Result<Response, ClientError> {
    let io_err = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning { path: path.to_owned() },
        io::ErrorKind::PermissionDenied => ClientError::Permission { path: path.to_owned() },
        _ => ClientError::Io { path: path.to_owned(), source },
    };
    let mut stream = UnixStream::connect(path).map_err(io_err)?;
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err)?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).map_err(io_err)?;
    if reply.is_empty() {
        return Err(ClientError::Protocol("connection closed without a response".into()));
    }
    match serde_json::from_str(&reply).map_err(|e| ClientError::Protocol(format!("{e}: {reply:?}")))? {
        Response::Error { error, .. } => Err(ClientError::Refused(error)),
        ok => Ok(ok),
    }
}
