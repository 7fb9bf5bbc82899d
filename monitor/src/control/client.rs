//! Synchronous client for the control socket (used by `run`, which must stay
//! a single-threaded process until it execs).

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
};

use super::{
    fdpass,
    protocol::{Attached, Request, Response},
};

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
    let reply = send(path, req)?;
    let mut response = parse_reply(&reply.line)?;
    if let (Response::Opened { ruleset, .. }, Some(fd)) = (&mut response, reply.fd) {
        *ruleset = Attached(Some(std::sync::Arc::new(fd)));
    }
    Ok(response)
}

/// Sends a streaming request (`events`) and copies every record line the
/// daemon sends to `out` until the daemon closes the stream.
pub fn stream(path: &Path, req: &Request, out: &mut impl Write) -> Result<(), ClientError> {
    let reply = send(path, req)?;
    parse_reply(&reply.line)?;
    let mut reader = BufReader::new(io::Cursor::new(reply.rest).chain(reply.stream));
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

/// The first line of the daemon's answer, what came after it, and the
/// descriptor attached to it, if any.
struct Reply {
    stream: UnixStream,
    line: String,
    rest: Vec<u8>,
    fd: Option<OwnedFd>,
}

fn send(path: &Path, req: &Request) -> Result<Reply, ClientError> {
    let io_err = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning { path: path.to_owned() },
        io::ErrorKind::PermissionDenied => ClientError::Permission { path: path.to_owned() },
        _ => ClientError::Io { path: path.to_owned(), source },
    };
    let mut stream = UnixStream::connect(path).map_err(io_err)?;
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err)?;
    // `recvmsg`, not a buffered read: a read would drop the descriptor.
    let (mut got, mut fd) = (Vec::new(), None);
    let mut buf = vec![0u8; 64 * 1024];
    while !got.contains(&b'\n') {
        let (n, attached) = fdpass::recv(stream.as_raw_fd(), &mut buf).map_err(io_err)?;
        fd = fd.or(attached);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let end = got.iter().position(|&b| b == b'\n').map_or(got.len(), |i| i + 1);
    let rest = got.split_off(end);
    let line = String::from_utf8(got).map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok(Reply { stream, line, rest, fd })
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
