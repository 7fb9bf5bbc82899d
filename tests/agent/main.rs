//! `test-agent`: the actions an agent performs, one per subcommand, with
//! the raw syscall result printed, so integration tests can assert on both
//! what the process saw and what the monitor recorded. Runs unchanged on the
//! host and inside the VM test guests.
//!
//! Exit status: 0 when the action succeeded, 3 when the syscall failed
//! (the errno is printed as `errno=N`), 2 on bad usage.

use std::{
    ffi::CString,
    io::Write,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    process::exit,
    time::Duration,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["connect", ip, port] => report(TcpStream::connect_timeout(&addr(ip, port), Duration::from_secs(5)).map(drop)),
        ["sendto", ip, port] => {
            let target = addr(ip, port);
            let bind: SocketAddr = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap();
            report(UdpSocket::bind(bind).and_then(|s| s.send_to(b"agent", target)).map(drop))
        }
        ["open", path] => report(std::fs::File::open(path).map(drop)),
        // Name the file with O_PATH (no I/O), then open it for reading
        // through /proc/self/fd and read it: prints the content on success.
        ["reopen-opath", path] => {
            use std::{io::Read, os::unix::fs::OpenOptionsExt};
            let named = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH).open(path);
            report(named.and_then(|f| {
                use std::os::fd::AsRawFd;
                let mut s = String::new();
                std::fs::File::open(format!("/proc/self/fd/{}", f.as_raw_fd()))?.read_to_string(&mut s)?;
                print!("{s}");
                Ok(())
            }))
        }
        ["write", path] => {
            report(std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(path).map(drop))
        }
        ["double-fork", cmd @ ..] if !cmd.is_empty() => double_fork(cmd),
        ["sleep", ms] => std::thread::sleep(Duration::from_millis(ms.parse().expect("milliseconds"))),
        _ => {
            eprintln!("usage: test-agent connect|sendto IP PORT | open|write|reopen-opath PATH | double-fork CMD... | sleep MS");
            exit(2)
        }
    }
}

fn addr(ip: &str, port: &str) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("IP address"), port.parse().expect("port"))
}

fn report(r: std::io::Result<()>) {
    match r {
        Ok(()) => println!("ok"),
        Err(e) => {
            println!("errno={} {e}", e.raw_os_error().unwrap_or(0));
            let _ = std::io::stdout().flush();
            exit(3)
        }
    }
}

/// Forks twice: the middle process exits at once, so the grandchild is
/// orphaned (reparented away from its original parent) before it execs.
fn double_fork(cmd: &[&str]) {
    // SAFETY: single-threaded at this point; the children only call
    // async-signal-safe functions before exec or _exit.
    unsafe {
        let pid = libc::fork();
        if pid < 0 {
            exit(3);
        }
        if pid > 0 {
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            return;
        }
        libc::setsid();
        if libc::fork() != 0 {
            libc::_exit(0);
        }
        // Wait until the middle process is gone and we are an orphan.
        while libc::getppid() == pid {
            libc::usleep(1000);
        }
        libc::usleep(50_000);
        let c: Vec<CString> = cmd.iter().map(|s| CString::new(*s).unwrap()).collect();
        let mut argv: Vec<*const libc::c_char> = c.iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        libc::execvp(argv[0], argv.as_ptr());
        libc::_exit(127);
    }
}
