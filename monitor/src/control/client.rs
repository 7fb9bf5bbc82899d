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
    let (_, reply) = send(path, req)?;
    parse_reply(&reply)
}

/// Sends a streaming request (`events`) and copies every record line the
/// daemon sends to `out` until the daemon closes the stream.
pub fn stream(path: &Path, req: &Request, out: &mut impl Write) -> Result<(), ClientError> {
    let (mut reader, reply) = send(path, req)?;
    parse_reply(&reply)?;
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(source) => return Err(ClientError::Io { path: path.to_owned(), source }),
        }
        // A closed stdout (`| head`) ends the stream quietly.
        if out.write_all(&line).and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
    }
}

fn send(path: &Path, req: &Request) -> Result<(BufReader<UnixStream>, String), ClientError> {
    let io_err = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning { path: path.to_owned() },
        io::ErrorKind::PermissionDenied => ClientError::Permission { path: path.to_owned() },
        _ => ClientError::Io { path: path.to_owned(), source },
    };
    let mut stream = UnixStream::connect(path).map_err(io_err)?;
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err)?;
    let mut reader = BufReader::new(stream);
    let mut reply = String::new();
    reader.read_line(&mut reply).map_err(io_err)?;
    Ok((reader, reply))
}

fn parse_reply(reply: &str) -> Result<Response, ClientError> {
    if reply.is_empty() {
        return Err(ClientError::Protocol("connection closed without a response".into()));
    }
    match serde_json::from_str(reply).map_err(|e| ClientError::Protocol(format!("{e}: {reply:?}")))? {
        Response::Error { error, .. } => Err(ClientError::Refused(error)),
        ok => Ok(ok),
    }
}
