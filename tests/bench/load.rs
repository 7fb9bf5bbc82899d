//! `bench-load`: the workloads of `cargo xtask bench` (docs/performance.md).
//! Each subcommand runs its measured loop for a fixed time and prints one
//! JSON line, `{"ops":N,"elapsed_ns":T,"cpu_ns":C}`: wall time and the
//! process's CPU time (user + system, every thread) over the loop alone, so
//! process startup, the dynamic loader, a name lookup before the loop and
//! `agent-monitor run` stay out of the measurement. CPU time leaves out the
//! time other processes of a busy machine held the CPU; the kernel programs
//! run in the syscall and count. `dns` adds `"median_ns"`, the median wall
//! time of one question and its answer.
//!
//! Exit status: 0 on success, 1 when a syscall of the loop failed (printed
//! on stderr), 2 on bad usage.

use std::{
    ffi::{CStr, CString},
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    os::fd::AsRawFd,
    process::exit,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Iterations between two reads of the clock: small against the loop's
/// cost, so a run ends within a few microseconds of its deadline.
const CHECK_EVERY: u64 = 64;

/// What a measured loop did.
struct Run {
    ops: u64,
    elapsed: Duration,
    /// Median time of one operation, for loops that time each one.
    median: Option<Duration>,
}

impl From<(u64, Duration)> for Run {
    fn from((ops, elapsed): (u64, Duration)) -> Run {
        Run { ops, elapsed, median: None }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ms = |s: &str| Duration::from_millis(s.parse().unwrap_or_else(|_| usage()));
    // Each arm prepares its loop (outside the measurement) and returns it.
    let work: Box<dyn FnOnce() -> Run> = match args.as_slice() {
        ["getppid", t] => {
            let t = ms(t);
            Box::new(move || {
                timed(t, || {
                    // SAFETY: getppid has no arguments and cannot fail.
                    unsafe { libc::syscall(libc::SYS_getppid) };
                })
                .into()
            })
        }
        ["open", t, path] => {
            let (t, c) = (ms(t), CString::new(*path).unwrap_or_else(|_| usage()));
            Box::new(move || timed(t, || open_close(&c)).into())
        }
        ["exec", t, path] => {
            let (t, c) = (ms(t), CString::new(*path).unwrap_or_else(|_| usage()));
            Box::new(move || timed(t, || fork_exec(&c)).into())
        }
        ["connect", t] => {
            let t = ms(t);
            Box::new(move || connect_loop(t).into())
        }
        // The same loop after resolving NAME, which must name 127.0.0.1:
        // in a trajectory whose policy allows loopback only through a
        // domain rule, the loop's connects are allowed by the address the
        // lookup taught the kernel.
        ["connect", t, name] => {
            let t = ms(t);
            expect_loopback(name);
            Box::new(move || connect_loop(t).into())
        }
        ["dns", t, server, name] => {
            let t = ms(t);
            let server: SocketAddrV4 = server.parse().unwrap_or_else(|_| usage());
            let query = dns_query(name);
            Box::new(move || dns_loop(t, server, query))
        }
        ["flood", t, threads, path] => {
            let (t, threads, path) = (ms(t), threads.parse().unwrap_or_else(|_| usage()), path.to_string());
            Box::new(move || flood(t, threads, &path).into())
        }
        ["flood-connect", t, threads] => {
            let (t, threads) = (ms(t), threads.parse().unwrap_or_else(|_| usage()));
            Box::new(move || flood_connect(t, threads).into())
        }
        ["paced", t, rate, path] => {
            let (t, rate) = (ms(t), rate.parse().unwrap_or_else(|_| usage()));
            let c = CString::new(*path).unwrap_or_else(|_| usage());
            Box::new(move || paced(t, rate, &c).into())
        }
        // Not a workload: counts the lines of the events file FILE that
        // contain NEEDLE, at the speed of a release build (the bench's
        // xtask runs unoptimised and the file can hold millions of lines).
        ["count", file, needle] => {
            let text = std::fs::read(file).unwrap_or_else(|_| fail("read"));
            let n = text
                .split(|&b| b == b'\n')
                .filter(|l| std::str::from_utf8(l).is_ok_and(|l| l.contains(needle)))
                .count();
            println!("{{\"count\":{n}}}");
            return;
        }
        // Not a workload: runs PROGRAM in a mount namespace of its own
        // whose /etc/resolv.conf is FILE (the bench's names the nameserver
        // the daemon redirects, so no lookup reaches the host's). The bench
        // wraps `agent-monitor run` in it: the mounts are made before `run`
        // joins the trajectory, whose tamper protection refuses them.
        ["resolv", file, program, rest @ ..] => private_resolv_conf(file, program, rest),
        _ => usage(),
    };
    let cpu_start = process_cpu();
    let run = work();
    let cpu = process_cpu().saturating_sub(cpu_start);
    let median = run.median.map(|m| format!(",\"median_ns\":{}", m.as_nanos())).unwrap_or_default();
    println!("{{\"ops\":{},\"elapsed_ns\":{},\"cpu_ns\":{}{median}}}", run.ops, run.elapsed.as_nanos(), cpu.as_nanos());
}

fn process_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a timespec to write.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        fail("clock_gettime");
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn usage() -> ! {
    eprintln!(
        "usage: bench-load getppid MS | open MS PATH | exec MS PATH | connect MS [NAME] | dns MS ADDR:PORT NAME | \
         flood MS THREADS PATH | flood-connect MS THREADS | paced MS RATE PATH | count FILE NEEDLE | \
         resolv FILE PROGRAM [ARGS...]"
    );
    exit(2)
}

fn fail(what: &str) -> ! {
    eprintln!("bench-load: {what}: {}", std::io::Error::last_os_error());
    exit(1)
}

/// Runs `op` until `duration` has passed; returns the count and the time taken.
fn timed(duration: Duration, mut op: impl FnMut()) -> (u64, Duration) {
    let start = Instant::now();
    let mut ops = 0u64;
    loop {
        for _ in 0..CHECK_EVERY {
            op();
        }
        ops += CHECK_EVERY;
        let elapsed = start.elapsed();
        if elapsed >= duration {
            return (ops, elapsed);
        }
    }
}

fn open_close(path: &CString) {
    // SAFETY: a NUL-terminated path; the descriptor is closed at once.
    unsafe {
        let fd = libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            fail("openat");
        }
        libc::close(fd);
    }
}

/// `fork`, `execv(path)` in the child, `waitpid` in the parent.
fn fork_exec(path: &CString) {
    let argv = [path.as_ptr(), std::ptr::null()];
    // SAFETY: the child only calls async-signal-safe functions before exec
    // or _exit; the parent reaps it.
    unsafe {
        let pid = libc::fork();
        if pid < 0 {
            fail("fork");
        }
        if pid == 0 {
            libc::execv(path.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
        let mut status = 0;
        if libc::waitpid(pid, &mut status, 0) != pid || status != 0 {
            fail("child of exec");
        }
    }
}

/// Loopback TCP: connect to a listener of this process, accept, close both.
/// The client closes with `SO_LINGER` 0 (a reset, no `TIME_WAIT`), so a
/// long run cannot exhaust the ephemeral ports.
fn connect_loop(duration: Duration) -> (u64, Duration) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|_| fail("bind"));
    let port = listener.local_addr().unwrap_or_else(|_| fail("getsockname")).port();
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be() },
        sin_zero: [0; 8],
    };
    let lfd = listener.as_raw_fd();
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    timed(duration, || {
        // SAFETY: plain socket calls on descriptors owned by this loop.
        unsafe {
            let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if s < 0 {
                fail("socket");
            }
            let sa = &addr as *const libc::sockaddr_in as *const libc::sockaddr;
            if libc::connect(s, sa, std::mem::size_of::<libc::sockaddr_in>() as u32) != 0 {
                fail("connect");
            }
            let a = libc::accept4(lfd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC);
            if a < 0 {
                fail("accept");
            }
            let l = &linger as *const libc::linger as *const libc::c_void;
            libc::setsockopt(s, libc::SOL_SOCKET, libc::SO_LINGER, l, std::mem::size_of::<libc::linger>() as u32);
            libc::close(s);
            libc::close(a);
        }
    })
}

/// Resolves `name` (IPv4, as a TCP client would) and exits unless every
/// address is 127.0.0.1.
fn expect_loopback(name: &str) {
    let c = CString::new(name).unwrap_or_else(|_| usage());
    // SAFETY: zeroed addrinfo is the documented "no hints" value.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_INET;
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut list = std::ptr::null_mut();
    // SAFETY: valid NUL-terminated name and hints; the list is freed below.
    let rc = unsafe { libc::getaddrinfo(c.as_ptr(), std::ptr::null(), &hints, &mut list) };
    if rc != 0 {
        // SAFETY: gai_strerror returns a static string.
        let why = unsafe { CStr::from_ptr(libc::gai_strerror(rc)) };
        eprintln!("bench-load: getaddrinfo {name}: {}", why.to_string_lossy());
        exit(1);
    }
    let mut addrs = Vec::new();
    let mut at = list;
    while !at.is_null() {
        // SAFETY: a node of the list getaddrinfo returned; AF_INET entries
        // hold a sockaddr_in.
        unsafe {
            let sa = (*at).ai_addr as *const libc::sockaddr_in;
            addrs.push(Ipv4Addr::from(u32::from_be((*sa).sin_addr.s_addr)));
            at = (*at).ai_next;
        }
    }
    // SAFETY: the list getaddrinfo returned, freed once.
    unsafe { libc::freeaddrinfo(list) };
    if addrs.is_empty() || addrs.iter().any(|a| *a != Ipv4Addr::LOCALHOST) {
        eprintln!("bench-load: {name} resolved to {addrs:?}, not 127.0.0.1");
        exit(1);
    }
}

/// A DNS query for the A record of `name`, recursion desired, id 0: the
/// 12-byte header, the name as labels, QTYPE 1 (A), QCLASS 1 (IN).
fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            usage();
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 1]);
    q
}

/// Sends `query` to `server` over one connected UDP socket and waits for
/// its answer, again and again with a new id, until `duration` has passed;
/// each answer must carry the question's id, no error and an answer
/// record. Returns the questions asked and the median time of one.
fn dns_loop(duration: Duration, server: SocketAddrV4, mut query: Vec<u8>) -> Run {
    // Not bound before the connect, as glibc's resolver does not bind: the
    // redirect gives an unbound socket the source address that tells the
    // daemon's resolver who asked.
    // SAFETY: a plain socket call.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        fail("socket");
    }
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: server.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*server.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let timeout = libc::timeval { tv_sec: 5, tv_usec: 0 };
    // SAFETY: a valid address and option of the given lengths, on our socket.
    unsafe {
        let sa = &addr as *const libc::sockaddr_in as *const libc::sockaddr;
        if libc::connect(s, sa, std::mem::size_of::<libc::sockaddr_in>() as u32) != 0 {
            fail("connect");
        }
        let t = &timeout as *const libc::timeval as *const libc::c_void;
        if libc::setsockopt(s, libc::SOL_SOCKET, libc::SO_RCVTIMEO, t, std::mem::size_of::<libc::timeval>() as u32) != 0
        {
            fail("setsockopt");
        }
    }
    let mut times = Vec::new();
    let mut buf = [0u8; 512];
    let mut id = std::process::id() as u16;
    let start = Instant::now();
    while start.elapsed() < duration {
        id = id.wrapping_add(1);
        query[..2].copy_from_slice(&id.to_be_bytes());
        let asked = Instant::now();
        // SAFETY: the query buffer and its length, on our connected socket.
        if unsafe { libc::send(s, query.as_ptr().cast(), query.len(), 0) } != query.len() as isize {
            fail("send");
        }
        let n = loop {
            // SAFETY: a buffer of the given length, on our connected socket.
            let n = unsafe { libc::recv(s, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                fail("recv (no answer within 5 s)");
            }
            // A late answer to an earlier question is not this one's.
            if n >= 12 && buf[..2] == id.to_be_bytes() {
                break n as usize;
            }
        };
        times.push(asked.elapsed());
        let (qr, rcode, answers) = (buf[2] & 0x80 != 0, buf[3] & 0x0f, u16::from_be_bytes([buf[6], buf[7]]));
        if !qr || rcode != 0 || answers == 0 || n <= query.len() {
            eprintln!("bench-load: {server} answered rcode {rcode} with {answers} answer(s) ({n} bytes)");
            exit(1);
        }
    }
    let elapsed = start.elapsed();
    // SAFETY: our socket, closed once.
    unsafe { libc::close(s) };
    times.sort();
    Run { ops: times.len() as u64, elapsed, median: times.get(times.len() / 2).copied() }
}

/// `unshare(CLONE_NEWNS)`, every mount made private, `file` bound over
/// `/etc/resolv.conf`, then `program` with `args` in place of this process.
fn private_resolv_conf(file: &str, program: &str, args: &[&str]) -> ! {
    let cstr = |s: &str| CString::new(s).unwrap_or_else(|_| usage());
    let (file, program) = (cstr(file), cstr(program));
    let args: Vec<CString> = args.iter().map(|a| cstr(a)).collect();
    let mut argv: Vec<*const libc::c_char> = vec![program.as_ptr()];
    argv.extend(args.iter().map(|a| a.as_ptr()));
    argv.push(std::ptr::null());
    // SAFETY: plain syscalls with valid NUL-terminated strings; argv is
    // NULL-terminated and outlives the exec.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            fail("unshare(CLONE_NEWNS)");
        }
        let (none, root) = (c"none".as_ptr(), c"/".as_ptr());
        if libc::mount(none, root, std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
            fail("mount --make-rprivate /");
        }
        let target = c"/etc/resolv.conf".as_ptr();
        if libc::mount(file.as_ptr(), target, std::ptr::null(), libc::MS_BIND, std::ptr::null()) != 0 {
            fail("mount --bind FILE /etc/resolv.conf");
        }
        libc::execvp(program.as_ptr(), argv.as_ptr());
    }
    fail("execvp")
}

/// `threads` threads open and close `PATH-0`, `PATH-1`, ... (one file per
/// thread: threads sharing one dentry contend on its reference count) as
/// fast as they can until `duration` has passed; returns every open attempted.
fn flood(duration: Duration, threads: usize, path: &str) -> (u64, Duration) {
    let next = AtomicU64::new(0);
    let file = || {
        let n = next.fetch_add(1, Ordering::Relaxed);
        CString::new(format!("{path}-{n}")).unwrap_or_else(|_| usage())
    };
    on_threads(duration, threads, file, |f| open_close(f))
}

/// `threads` threads `connect` a UDP socket to 127.0.0.1:9 over and over:
/// the cheapest operation that makes a record (a small one, 112 bytes, and
/// no packet is sent), so this stresses the pipeline rather than the hooks.
fn flood_connect(duration: Duration, threads: usize) -> (u64, Duration) {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 9u16.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be() },
        sin_zero: [0; 8],
    };
    let socket = || {
        // SAFETY: a plain socket call.
        let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if s < 0 {
            fail("socket");
        }
        s
    };
    on_threads(duration, threads, socket, |&mut s| {
        let sa = &addr as *const libc::sockaddr_in as *const libc::sockaddr;
        // SAFETY: a valid address of the given length on this thread's socket.
        if unsafe { libc::connect(s, sa, std::mem::size_of::<libc::sockaddr_in>() as u32) } != 0 {
            fail("connect");
        }
    })
}

/// Runs `op` on `threads` threads, each with its own state from `init`,
/// until `duration` has passed; returns the operations of all threads.
fn on_threads<S>(
    duration: Duration,
    threads: usize,
    init: impl Fn() -> S + Sync,
    op: impl Fn(&mut S) + Sync,
) -> (u64, Duration) {
    let stop = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut state = init();
                let mut ops = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..CHECK_EVERY {
                        op(&mut state);
                    }
                    ops += CHECK_EVERY;
                }
                total.fetch_add(ops, Ordering::Relaxed);
            });
        }
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
    });
    (total.load(Ordering::Relaxed), start.elapsed())
}

/// Opens and closes `path` at `rate` per second, in bursts every
/// millisecond, until `duration` has passed.
fn paced(duration: Duration, rate: u64, path: &CString) -> (u64, Duration) {
    let start = Instant::now();
    let mut ops = 0u64;
    let mut tick = 0u64;
    while start.elapsed() < duration {
        tick += 1;
        let due = rate * tick / 1000;
        while ops < due {
            open_close(path);
            ops += 1;
        }
        let next = start + Duration::from_millis(tick);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    (ops, start.elapsed())
}
