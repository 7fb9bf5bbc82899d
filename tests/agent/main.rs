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
        // getaddrinfo(3), through std: prints each address.
        ["resolve", name] => {
            use std::net::ToSocketAddrs;
            report((*name, 80).to_socket_addrs().map(|addrs| {
                for a in addrs {
                    println!("resolved {}", a.ip());
                }
            }))
        }
        // A query for NAME A over a TCP socket that is not bound first
        // (glibc's fallback after a truncated answer): prints the answer's
        // IPv4 addresses.
        ["dns-tcp", ip, name] => report(dns_tcp(addr(ip, "53"), name)),
        // One UDP socket connected to FIRST:53, asked NAME, then connected
        // again to SECOND:53 and asked again: prints both answers.
        ["dns-reconnect", first, second, name] => report(dns_reconnect(addr(first, "53"), addr(second, "53"), name)),
        ["open", path] => report(std::fs::File::open(path).map(drop)),
        // A second thread rewrites the path buffer between ALLOWED and
        // DENIED (same length) while this one opens and reads it N times;
        // prints every distinct content it managed to read.
        ["race-open", allowed, denied, n] => race_open(allowed, denied, n.parse().expect("count")),
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
        // One call that changes a file without opening it (`mutate.rs`).
        ["mutate", op, paths @ ..] => report(mutate(op, paths)),
        ["double-fork", cmd @ ..] if !cmd.is_empty() => double_fork(cmd),
        ["sleep", ms] => std::thread::sleep(Duration::from_millis(ms.parse().expect("milliseconds"))),
        // A process tree: this node appends "pid ppid" to OUT, then runs
        // WIDTH children (fork + exec of itself) at DEPTH-1 and waits.
        ["tree", depth, width, out] => tree(depth.parse().expect("depth"), width.parse().expect("width"), out),
        // Opens and closes PATH N times as fast as it can; prints N. Waits
        // 300 ms first, so the records of its own start (exec, the dynamic
        // loader's opens) are drained before the flood begins.
        ["open-flood", path, n] => {
            let n: u64 = n.parse().expect("count");
            std::thread::sleep(Duration::from_millis(300));
            for _ in 0..n {
                drop(std::fs::File::open(path));
            }
            println!("{n}");
        }
        // Opens PATH every INTERVAL ms until the file STOP exists.
        ["open-until", path, interval, stop] => {
            while std::fs::metadata(stop).is_err() {
                drop(std::fs::File::open(path));
                std::thread::sleep(Duration::from_millis(interval.parse().expect("milliseconds")));
            }
        }
        // Until the file STOP exists: connect to IP:PORT, and in a forked
        // child open and read PATH (a child, because the fallback
        // mechanism kills the opener). After every round, OUT holds
        // "ROUNDS CONNECTED READ": the attempts and how many succeeded.
        ["retry-denied", ip, port, path, stop, out] => retry_denied(addr(ip, port), path, stop, out),
        _ => {
            eprintln!("usage: test-agent connect|sendto IP PORT | resolve NAME | dns-tcp IP NAME | dns-reconnect IP IP NAME | open|write|reopen-opath PATH | mutate OP PATH... | race-open ALLOWED DENIED N | double-fork CMD... | sleep MS | tree DEPTH WIDTH OUT | open-flood PATH N | open-until PATH MS STOP | retry-denied IP PORT PATH STOP OUT");
            exit(2)
        }
    }
}

/// The raw syscall for `op` on `paths`: `unlink`, `rmdir`, `rename FROM
/// TO`, `exchange A B` (`RENAME_EXCHANGE`), `link FROM TO`, `symlink TARGET
/// LINK`, `mkdir`, `mknod` (a FIFO), `truncate` (to 0), `chmod` (to 000),
/// `chown` (to 65534), `setxattr`, `removexattr` (`user.agent`), `utime`
/// (to the epoch).
fn mutate(op: &str, paths: &[&str]) -> std::io::Result<()> {
    let c: Vec<CString> = paths.iter().map(|p| CString::new(*p).expect("no NUL")).collect();
    let p = |i: usize| c.get(i).expect("path argument").as_ptr();
    let name = c"user.agent".as_ptr();
    // SAFETY: NUL-terminated paths that outlive each call.
    let rc = unsafe {
        match op {
            "unlink" => libc::unlink(p(0)),
            "rmdir" => libc::rmdir(p(0)),
            "rename" => libc::rename(p(0), p(1)),
            "exchange" => {
                libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, p(0), libc::AT_FDCWD, p(1), libc::RENAME_EXCHANGE)
                    as i32
            }
            "link" => libc::link(p(0), p(1)),
            "symlink" => libc::symlink(p(0), p(1)),
            "mkdir" => libc::mkdir(p(0), 0o755),
            "mknod" => libc::mknod(p(0), libc::S_IFIFO | 0o644, 0),
            "truncate" => libc::truncate(p(0), 0),
            "chmod" => libc::chmod(p(0), 0),
            "chown" => libc::chown(p(0), 65534, 65534),
            "setxattr" => libc::setxattr(p(0), name, b"1".as_ptr().cast(), 1, 0),
            "removexattr" => libc::removexattr(p(0), name),
            "utime" => {
                let times = [libc::timespec { tv_sec: 0, tv_nsec: 0 }; 2];
                libc::utimensat(libc::AT_FDCWD, p(0), times.as_ptr(), 0)
            }
            other => {
                eprintln!("unknown mutation {other}");
                exit(2)
            }
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
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

fn tree(depth: u32, width: u32, out: &str) {
    let line = format!("{} {}\n", std::process::id(), std::os::unix::process::parent_id());
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(out)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .expect("append to OUT");
    if depth == 0 {
        return;
    }
    let me = std::env::current_exe().expect("own path");
    let children: Vec<_> = (0..width)
        .map(|_| {
            std::process::Command::new(&me)
                .args(["tree", &(depth - 1).to_string(), &width.to_string(), out])
                .spawn()
                .expect("spawn child")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().expect("wait child").success());
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

/// The check-then-use race on a path string: the path buffer changes under
/// the open. A monitor that judged the string it read at syscall entry
/// could approve `allowed` while the kernel opens `denied`.
fn race_open(allowed: &str, denied: &str, n: usize) {
    use std::{
        collections::BTreeSet,
        io::Read,
        sync::atomic::{AtomicBool, Ordering},
    };
    assert_eq!(allowed.len(), denied.len(), "paths of the same length");
    let buf: &'static mut [u8] = Box::leak(vec![0u8; allowed.len() + 1].into_boxed_slice());
    buf[..allowed.len()].copy_from_slice(allowed.as_bytes());
    let ptr = buf.as_mut_ptr() as usize;
    static STOP: AtomicBool = AtomicBool::new(false);
    let (a, d) = (allowed.as_bytes().to_vec(), denied.as_bytes().to_vec());
    let flipper = std::thread::spawn(move || {
        let mut flip = false;
        while !STOP.load(Ordering::Relaxed) {
            let src = if flip { &d } else { &a };
            // SAFETY: the buffer outlives the thread (leaked); racing writes
            // are the point of the test and bytes have no invalid values.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), ptr as *mut u8, src.len()) };
            flip = !flip;
        }
    });
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        // SAFETY: NUL-terminated buffer of fixed length.
        let fd = unsafe { libc::open(ptr as *const libc::c_char, libc::O_RDONLY) };
        if fd >= 0 {
            use std::os::fd::FromRawFd;
            // SAFETY: `fd` was just opened here and is owned by nothing else.
            let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
            seen.insert(s);
        }
    }
    STOP.store(true, Ordering::Relaxed);
    let _ = flipper.join();
    for s in seen {
        print!("{s}");
    }
    println!("done");
}

fn retry_denied(target: SocketAddr, path: &str, stop: &str, out: &str) {
    let cpath = CString::new(path).expect("no NUL");
    let (mut rounds, mut connected, mut read) = (0u64, 0u64, 0u64);
    while std::fs::metadata(stop).is_err() {
        rounds += 1;
        if TcpStream::connect_timeout(&target, Duration::from_secs(2)).is_ok() {
            connected += 1;
        }
        // SAFETY: single-threaded; the child only calls async-signal-safe
        // functions (open, read, _exit).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: in the forked child: a C string made before the fork,
            // a stack buffer, and _exit.
            unsafe {
                let fd = libc::open(cpath.as_ptr(), libc::O_RDONLY);
                let mut buf = [0u8; 16];
                let ok = fd >= 0 && libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) > 0;
                libc::_exit(if ok { 0 } else { 3 });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            read += 1;
        }
        if std::fs::write(out, format!("{rounds} {connected} {read}\n")).is_err() {
            // The test is gone (its directory removed).
            exit(4);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A DNS query for `name` A with id `id`, recursion desired.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Prints the IPv4 addresses of the A records in `reply`: each is the
/// four bytes after `type A, class IN, TTL, rdlength 4`.
fn print_answer(reply: &[u8], id: u16) -> std::io::Result<()> {
    if reply.len() < 12 || reply[..2] != id.to_be_bytes() {
        return Err(std::io::Error::other("not the answer to the query"));
    }
    let mut addrs = Vec::new();
    for i in 12..reply.len().saturating_sub(13) {
        if reply[i..i + 4] == [0, 1, 0, 1] && reply[i + 8..i + 10] == [0, 4] {
            addrs.push(std::net::Ipv4Addr::new(reply[i + 10], reply[i + 11], reply[i + 12], reply[i + 13]).to_string());
        }
    }
    println!("answer rcode={} {}", reply[3] & 0xf, addrs.join(" "));
    Ok(())
}

fn dns_tcp(server: SocketAddr, name: &str) -> std::io::Result<()> {
    use std::io::Read;
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let q = dns_query(0x7a7a, name);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut reply = vec![0u8; u16::from_be_bytes(len).into()];
    s.read_exact(&mut reply)?;
    println!("peer {}", s.peer_addr()?);
    print_answer(&reply, 0x7a7a)
}

fn dns_reconnect(first: SocketAddr, second: SocketAddr, name: &str) -> std::io::Result<()> {
    use std::os::fd::FromRawFd;
    // Not bound before the first connect, as glibc's resolver does it
    // (std's UdpSocket always binds first).
    // SAFETY: a plain socket(2); the descriptor is owned by `s` below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh UDP socket nothing else owns.
    let s = unsafe { UdpSocket::from_raw_fd(fd) };
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = [0u8; 1500];
    for (id, server) in [(0x5151u16, first), (0x5252, second)] {
        s.connect(server)?;
        s.send(&dns_query(id, name))?;
        let n = s.recv(&mut buf)?;
        println!("peer {}", s.peer_addr()?);
        print_answer(&buf[..n], id)?;
    }
    Ok(())
}
