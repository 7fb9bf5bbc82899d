//! `bench-load`: the workloads of `cargo xtask bench` (docs/performance.md).
//! Each subcommand runs its measured loop for a fixed time and prints one
//! JSON line, `{"ops":N,"elapsed_ns":T,"cpu_ns":C}`: wall time and the
//! process's CPU time (user + system, every thread) over the loop alone, so
//! process startup, the dynamic loader and `agent-monitor run` stay out of
//! the measurement. CPU time leaves out the time other processes of a busy
//! machine held the CPU; the kernel programs run in the syscall and count.
//!
//! Exit status: 0 on success, 1 when a syscall of the loop failed (printed
//! on stderr), 2 on bad usage.

use std::{
    ffi::CString,
    net::TcpListener,
    os::fd::AsRawFd,
    process::exit,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Iterations between two reads of the clock: small against the loop's
/// cost, so a run ends within a few microseconds of its deadline.
const CHECK_EVERY: u64 = 64;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ms = |s: &str| Duration::from_millis(s.parse().unwrap_or_else(|_| usage()));
    let cpu_start = process_cpu();
    let (ops, elapsed) = match args.as_slice() {
        ["getppid", t] => timed(ms(t), || {
            // SAFETY: getppid has no arguments and cannot fail.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }),
        ["open", t, path] => {
            let c = CString::new(*path).unwrap_or_else(|_| usage());
            timed(ms(t), || open_close(&c))
        }
        ["exec", t, path] => {
            let c = CString::new(*path).unwrap_or_else(|_| usage());
            timed(ms(t), || fork_exec(&c))
        }
        ["connect", t] => connect_loop(ms(t)),
        ["flood", t, threads, path] => flood(ms(t), threads.parse().unwrap_or_else(|_| usage()), path),
        ["flood-connect", t, threads] => flood_connect(ms(t), threads.parse().unwrap_or_else(|_| usage())),
        ["paced", t, rate, path] => {
            let c = CString::new(*path).unwrap_or_else(|_| usage());
            paced(ms(t), rate.parse().unwrap_or_else(|_| usage()), &c)
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
        _ => usage(),
    };
    let cpu = process_cpu().saturating_sub(cpu_start);
    println!("{{\"ops\":{ops},\"elapsed_ns\":{},\"cpu_ns\":{}}}", elapsed.as_nanos(), cpu.as_nanos());
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
        "usage: bench-load getppid MS | open MS PATH | exec MS PATH | connect MS | flood MS THREADS PATH | flood-connect MS THREADS | paced MS RATE PATH | count FILE NEEDLE"
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
