//! `attacker`: the moves an agent makes against its monitor, one per
//! subcommand, each printing the raw result so the tamper and bypass tests
//! (`tests/integration/{tamper,bypass}.rs`) can assert what the process saw
//! as well as what the daemon recorded. Raw syscalls, no helper libraries,
//! so it behaves the same on the host and in the VM guests.
//!
//! Exit status: 0 when the action succeeded (`ok`, then any content read),
//! 3 when a syscall failed (`errno=N` printed), 2 on bad usage.
//!
//! Its `unsafe` blocks are raw system calls with arguments an attacker
//! picks; the comment above each move says what it tries. Memory safety
//! holds the usual way (buffers are locals that outlive the call), so no
//! block carries a SAFETY comment of its own.
#![allow(clippy::undocumented_unsafe_blocks)]

use std::{
    ffi::CString,
    io::{Read, Write},
    os::fd::{FromRawFd, RawFd},
    process::exit,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        // open(PATH, O_WRONLY) and write TEXT (e.g. a pid into cgroup.procs).
        ["write-str", path, text] => {
            let fd = check(unsafe { libc::open(c(path).as_ptr(), libc::O_WRONLY) });
            check(unsafe { libc::write(fd, text.as_ptr().cast(), text.len()) } as i32);
            println!("ok");
        }
        // open(PATH, O_WRONLY|O_CREAT|O_EXCL) and write one line.
        ["create", path] => {
            let fd =
                check(unsafe { libc::open(c(path).as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o644) });
            check(unsafe { libc::write(fd, b"planted\n".as_ptr().cast(), 8) } as i32);
            println!("ok");
        }
        ["mkdir", path] => {
            check(unsafe { libc::mkdir(c(path).as_ptr(), 0o755) });
            println!("ok");
        }
        ["rmdir", path] => {
            check(unsafe { libc::rmdir(c(path).as_ptr()) });
            println!("ok");
        }
        // clone3(CLONE_INTO_CGROUP) into DIR; the child writes its
        // /proc/self/cgroup into MARKER.
        ["clone-into-cgroup", dir, marker] => clone_into_cgroup(dir, marker),
        // The same, with `struct clone_args` on a file page mapped but never
        // touched: a probe of user memory from a tracepoint cannot fault it
        // in, so an entry check reads nothing, while the kernel's own copy
        // faults it in and sees CLONE_INTO_CGROUP.
        ["clone-unfaulted", dir, marker, scratch] => clone_unfaulted(dir, marker, scratch),
        // For SECONDS: one thread calls clone3 in a loop while another flips
        // CLONE_INTO_CGROUP in its arguments. Each child that runs appends
        // `in` or `out` (its cgroup against the caller's) to MARKER, each
        // refused call `refused`.
        ["clone-race", dir, marker, seconds] => clone_race(dir, marker, seconds.parse().expect("seconds")),
        // socket(FAMILY, TYPE, PROTOCOL), numbers as the kernel takes them.
        ["socket", family, ty, protocol] => {
            let n = |s: &str| s.parse::<i32>().expect("number");
            check(unsafe { libc::socket(n(family), n(ty), n(protocol)) });
            println!("ok");
        }
        // A UDP datagram to 127.0.0.1:PORT built by hand on a raw IPv4
        // socket: no connect or sendmsg hook of the UDP stack sees it.
        ["raw-udp", port] => raw_udp(port.parse().expect("port")),
        // bpf(BPF_MAP_GET_NEXT_ID): the first step of finding the daemon's maps.
        ["bpf"] => {
            let mut attr = [0u32; 32];
            // BPF_MAP_GET_NEXT_ID = 12; attr.start_id = 0.
            let r = unsafe { libc::syscall(libc::SYS_bpf, 12, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
            check(r as i32);
            println!("ok next_id={}", attr[1]);
        }
        // PTRACE_SEIZE then PTRACE_DETACH.
        ["ptrace-seize", pid] => {
            let pid: libc::pid_t = pid.parse().expect("pid");
            check(unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) } as i32);
            unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
            println!("ok");
        }
        // process_vm_readv of one byte at an address that is normally not
        // mapped: EFAULT (14) means the access itself was permitted.
        ["vm-read", pid] => {
            let pid: libc::pid_t = pid.parse().expect("pid");
            let mut b = [0u8; 1];
            let local = libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: 1 };
            let remote = libc::iovec { iov_base: 0x1000 as *mut libc::c_void, iov_len: 1 };
            check(unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) } as i32);
            println!("ok");
        }
        ["signal", pid, sig] => {
            let (pid, sig): (libc::pid_t, i32) = (pid.parse().expect("pid"), sig.parse().expect("signal number"));
            check(unsafe { libc::kill(pid, sig) });
            println!("ok");
        }
        ["pidfd-open", pid] => {
            let pid: libc::pid_t = pid.parse().expect("pid");
            check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32);
            println!("ok");
        }
        // Read PATH through an io_uring IORING_OP_OPENAT.
        ["uring-open", path] => uring_open(path),
        // name_to_handle_at + open_by_handle_at (the mount named by a
        // descriptor of DIR, on the same filesystem), then read.
        ["handle-open", path, dir] => handle_open(path, dir),
        // openat2 with RESOLVE_NO_MAGICLINKS, then read.
        ["openat2", path] => {
            // struct open_how { u64 flags; u64 mode; u64 resolve; }
            let how = [libc::O_RDONLY as u64, 0, 0x02];
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    libc::AT_FDCWD,
                    c(path).as_ptr(),
                    how.as_ptr(),
                    std::mem::size_of_val(&how),
                )
            };
            read_out(check(fd as i32));
        }
        // execveat(open(PATH, O_PATH), "", AT_EMPTY_PATH).
        ["execveat", path, argv @ ..] => {
            let fd = check(unsafe { libc::open(c(path).as_ptr(), libc::O_PATH | libc::O_CLOEXEC) });
            exec_fd(fd, argv);
        }
        // Copy PATH into a memfd and execute that.
        ["memfd-exec", path, argv @ ..] => {
            let bytes = std::fs::read(path).unwrap_or_else(|e| fail(e));
            let fd = check(unsafe { libc::memfd_create(c("payload").as_ptr(), 0) });
            let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
            f.write_all(&bytes).unwrap_or_else(|e| fail(e));
            std::mem::forget(f);
            exec_fd(fd, argv);
        }
        // Map PATH executable without executing it: mmap with PROT_EXEC, or
        // mmap readable then mprotect to PROT_EXEC (what a loader does).
        ["map-exec", path, how] => {
            let fd = check(unsafe { libc::open(c(path).as_ptr(), libc::O_RDONLY) });
            let prot = if *how == "mmap" { libc::PROT_READ | libc::PROT_EXEC } else { libc::PROT_READ };
            let addr = unsafe { libc::mmap(std::ptr::null_mut(), 4096, prot, libc::MAP_PRIVATE, fd, 0) };
            if addr == libc::MAP_FAILED {
                fail(std::io::Error::last_os_error());
            }
            if *how == "mprotect" {
                check(unsafe { libc::mprotect(addr, 4096, libc::PROT_READ | libc::PROT_EXEC) });
            }
            println!("ok");
        }
        // The 32-bit syscall ABI from this 64-bit process (`int 0x80`):
        // socket(AF_PACKET, SOCK_RAW, ETH_P_ALL), or open(PATH) and read,
        // with PATH copied below 4 GiB where a 32-bit pointer reaches it.
        ["compat-socket"] => {
            check(int80(359, 17, 3, 768) as i32);
            println!("ok");
        }
        ["compat-open", path] => {
            let low = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                    -1,
                    0,
                )
            };
            if low == libc::MAP_FAILED {
                fail(std::io::Error::last_os_error());
            }
            let name = c(path);
            let bytes = name.as_bytes_with_nul();
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), low.cast::<u8>(), bytes.len()) };
            // i386 open = 5, O_RDONLY.
            read_out(check(int80(5, low as u64, 0, 0) as i32));
        }
        // Receive a descriptor over the unix socket at PATH and read it.
        ["recv-fd", path] => recv_fd(path),
        // In a new mount namespace, bind-mount SRC on DST and read DST/FILE.
        ["bind-read", src, dst, file] => {
            check(unsafe { libc::unshare(libc::CLONE_NEWNS) });
            let none = std::ptr::null();
            check(unsafe { libc::mount(none, c("/").as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, none.cast()) });
            check(unsafe { libc::mount(c(src).as_ptr(), c(dst).as_ptr(), none, libc::MS_BIND, none.cast()) });
            let fd = check(unsafe { libc::open(c(&format!("{dst}/{file}")).as_ptr(), libc::O_RDONLY) });
            read_out(fd);
        }
        ["fork-bomb", most] => fork_bomb(most.parse().expect("count")),
        ["hog", mib] => hog(mib.parse().expect("MiB")),
        ["spin", millis] => spin(millis.parse().expect("milliseconds")),
        _ => {
            eprintln!(
                "usage: attacker fork-bomb MOST | hog MIB | spin MILLIS | write-str PATH TEXT | create PATH | mkdir PATH | rmdir PATH | clone-into-cgroup DIR \
                 MARKER | clone-unfaulted DIR MARKER SCRATCH | clone-race DIR MARKER SECONDS | socket FAMILY TYPE \
                 PROTOCOL | raw-udp PORT | map-exec PATH mmap|mprotect | compat-socket | compat-open PATH | bpf | ptrace-seize PID | vm-read PID | pidfd-open PID | uring-open PATH | handle-open PATH DIR | \
                 openat2 PATH | execveat PATH ARGV... | memfd-exec PATH ARGV... | recv-fd SOCKET | bind-read SRC DST FILE"
            );
            exit(2)
        }
    }
}

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn fail(e: std::io::Error) -> ! {
    println!("errno={} {e}", e.raw_os_error().unwrap_or(0));
    let _ = std::io::stdout().flush();
    exit(3)
}

/// A syscall's result: the value, or print the errno and exit 3.
fn check(r: i32) -> i32 {
    if r < 0 {
        fail(std::io::Error::last_os_error());
    }
    r
}

/// Prints `ok` and the descriptor's content.
fn read_out(fd: RawFd) {
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap_or_else(|e| fail(e));
    println!("ok");
    print!("{s}");
}

fn exec_fd(fd: RawFd, argv: &[&str]) {
    let c_args: Vec<CString> = argv.iter().map(|s| c(s)).collect();
    let mut ptrs: Vec<*const libc::c_char> = c_args.iter().map(|s| s.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let _ = std::io::stdout().flush();
    unsafe { libc::syscall(libc::SYS_execveat, fd, c("").as_ptr(), ptrs.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH) };
    fail(std::io::Error::last_os_error());
}

fn clone_into_cgroup(dir: &str, marker: &str) {
    let cg = check(unsafe { libc::open(c(dir).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) });
    // struct clone_args (v2): flags, pidfd, child_tid, parent_tid,
    // exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup.
    let mut args = [0u64; 11];
    args[0] = CLONE_INTO_CGROUP;
    args[4] = libc::SIGCHLD as u64;
    args[10] = cg as u64;
    let pid = unsafe { libc::syscall(libc::SYS_clone3, args.as_mut_ptr(), std::mem::size_of_val(&args)) };
    child_reports(pid, marker);
}

fn clone_unfaulted(dir: &str, marker: &str, scratch: &str) {
    let cg = check(unsafe { libc::open(c(dir).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) });
    let mut args = [0u64; 11];
    args[0] = CLONE_INTO_CGROUP;
    args[4] = libc::SIGCHLD as u64;
    args[10] = cg as u64;
    let bytes: Vec<u8> = args.iter().flat_map(|a| a.to_ne_bytes()).collect();
    std::fs::write(scratch, &bytes).unwrap_or_else(|e| fail(e));
    let fd = check(unsafe { libc::open(c(scratch).as_ptr(), libc::O_RDONLY) });
    let page = unsafe { libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ, libc::MAP_SHARED, fd, 0) };
    if page == libc::MAP_FAILED {
        fail(std::io::Error::last_os_error());
    }
    let pid = unsafe { libc::syscall(libc::SYS_clone3, page, bytes.len()) };
    child_reports(pid, marker);
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// In the child (`pid` 0): append its cgroup to MARKER and exit; in the
/// caller: wait for it and print `ok`.
fn child_reports(pid: i64, marker: &str) {
    if pid == 0 {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let _ = std::fs::write(marker, cgroup);
        unsafe { libc::_exit(0) };
    }
    let pid = check(pid as i32);
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    println!("ok");
}

fn clone_race(dir: &str, marker: &str, seconds: u64) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    let cg = check(unsafe { libc::open(c(dir).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) });
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    // Shared with the flipping thread, which the race needs; the atomics
    // only keep the compiler from caching the flags.
    static FLAGS: [AtomicU64; 11] = [const { AtomicU64::new(0) }; 11];
    static STOP: AtomicBool = AtomicBool::new(false);
    FLAGS[4].store(libc::SIGCHLD as u64, Relaxed);
    FLAGS[10].store(cg as u64, Relaxed);
    let flipper = std::thread::spawn(|| {
        // Windows of random length with and without the flag, so that
        // some fall between the entry check and the kernel's copy.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        while !STOP.load(Relaxed) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            FLAGS[0].store(CLONE_INTO_CGROUP, Relaxed);
            for _ in 0..(x & 0xff) {
                std::hint::spin_loop();
            }
            FLAGS[0].store(0, Relaxed);
            for _ in 0..(x >> 8 & 0xfff) {
                std::hint::spin_loop();
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let mut attempts = 0u64;
    while std::time::Instant::now() < deadline {
        attempts += 1;
        let pid = unsafe { libc::syscall(libc::SYS_clone3, FLAGS.as_ptr(), 88usize) };
        if pid == 0 {
            let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
            let line: &[u8] = if cgroup == own { b"in\n" } else { b"out\n" };
            let f = std::fs::OpenOptions::new().append(true).create(true).open(marker);
            let _ = f.and_then(|mut f| f.write_all(line));
            unsafe { libc::_exit(0) };
        }
        if pid > 0 {
            let mut status = 0;
            unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        } else {
            // Refused (BPF LSM judges the kernel's copy of the flags).
            let f = std::fs::OpenOptions::new().append(true).create(true).open(marker);
            let _ = f.and_then(|mut f| f.write_all(b"refused\n"));
        }
    }
    STOP.store(true, Relaxed);
    let _ = flipper.join();
    println!("ok attempts={attempts}");
}

fn raw_udp(port: u16) {
    let fd = check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP) });
    // UDP header (checksum 0: none) and payload; the kernel adds the IP header.
    let payload = b"RAW-DATAGRAM";
    let len = (8 + payload.len()) as u16;
    let mut pkt = Vec::new();
    pkt.extend_from_slice(&40000u16.to_be_bytes());
    pkt.extend_from_slice(&port.to_be_bytes());
    pkt.extend_from_slice(&len.to_be_bytes());
    pkt.extend_from_slice(&[0, 0]);
    pkt.extend_from_slice(payload);
    let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    to.sin_family = libc::AF_INET as u16;
    to.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
    let sent = unsafe {
        libc::sendto(
            fd,
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&raw const to).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    check(sent as i32);
    println!("ok");
}

/// A 32-bit syscall through `int 0x80`; the kernel's result, errors as
/// `-errno` turned into -1 with `errno` set, like libc.
fn int80(nr: u64, a: u64, b: u64, c: u64) -> i64 {
    let r: i64;
    // rbx is reserved by the compiler: swap the first argument through it.
    unsafe {
        std::arch::asm!(
            "xchg {a}, rbx",
            "int 0x80",
            "xchg {a}, rbx",
            a = inout(reg) a => _,
            inlateout("rax") nr as i64 => r,
            in("rcx") b,
            in("rdx") c,
        );
    }
    // The result is a 32-bit int.
    let r = r as i32 as i64;
    if r < 0 && r > -4096 {
        unsafe { *libc::__errno_location() = -r as i32 };
        return -1;
    }
    r
}

fn handle_open(path: &str, dir: &str) {
    // struct file_handle { u32 handle_bytes; int handle_type; u8 f_handle[]; }
    let mut buf = [0u32; 34];
    buf[0] = 128;
    let mut mount_id = 0i32;
    check(unsafe {
        libc::syscall(libc::SYS_name_to_handle_at, libc::AT_FDCWD, c(path).as_ptr(), buf.as_mut_ptr(), &mut mount_id, 0)
    } as i32);
    let mount_fd = check(unsafe { libc::open(c(dir).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) });
    let fd = unsafe { libc::syscall(libc::SYS_open_by_handle_at, mount_fd, buf.as_mut_ptr(), libc::O_RDONLY) };
    read_out(check(fd as i32));
}

fn recv_fd(path: &str) {
    let s = std::os::unix::net::UnixStream::connect(path).unwrap_or_else(|e| fail(e));
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut cbuf = [0u64; 8];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    check(unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, 0) } as i32);
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if cmsg.is_null() {
        println!("errno=0 no descriptor received");
        exit(3);
    }
    let fd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>()) };
    read_out(fd);
}

/// One IORING_OP_OPENAT through a ring set up by hand (no liburing), then
/// a plain read of the descriptor it returned.
fn uring_open(path: &str) {
    #[repr(C)]
    #[derive(Default)]
    struct Params {
        sq_entries: u32,
        cq_entries: u32,
        flags: u32,
        sq_thread_cpu: u32,
        sq_thread_idle: u32,
        features: u32,
        wq_fd: u32,
        resv: [u32; 3],
        sq_off: [u32; 10],
        cq_off: [u32; 10],
    }
    let mut p = Params::default();
    let ring = check(unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, &mut p) } as i32);
    let map = |len: usize, off: i64| {
        let m = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                ring,
                off,
            )
        };
        if m == libc::MAP_FAILED {
            fail(std::io::Error::last_os_error());
        }
        m.cast::<u8>()
    };
    // sq_off: head, tail, ring_mask, ring_entries, flags, dropped, array;
    // cq_off: head, tail, ring_mask, ring_entries, overflow, cqes.
    let sq = map(p.sq_off[6] as usize + 4 * p.sq_entries as usize, 0);
    let cq = map(p.cq_off[5] as usize + 16 * p.cq_entries as usize, 0x800_0000);
    let sqes = map(64 * p.sq_entries as usize, 0x1000_0000);
    let cpath = c(path);
    unsafe {
        let sqe = sqes;
        std::ptr::write_bytes(sqe, 0, 64);
        *sqe = 18; // IORING_OP_OPENAT
        *(sqe.add(4) as *mut i32) = libc::AT_FDCWD;
        *(sqe.add(16) as *mut u64) = cpath.as_ptr() as u64;
        *(sqe.add(28) as *mut u32) = libc::O_RDONLY as u32;
        let tail = sq.add(p.sq_off[1] as usize) as *mut u32;
        let mask = *(sq.add(p.sq_off[2] as usize) as *const u32);
        let array = sq.add(p.sq_off[6] as usize) as *mut u32;
        let t = std::ptr::read_volatile(tail);
        *array.add((t & mask) as usize) = 0;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        std::ptr::write_volatile(tail, t + 1);
        // IORING_ENTER_GETEVENTS
        check(libc::syscall(libc::SYS_io_uring_enter, ring, 1, 1, 1, std::ptr::null::<u8>(), 0) as i32);
        let head = *(cq.add(p.cq_off[0] as usize) as *const u32);
        let cmask = *(cq.add(p.cq_off[2] as usize) as *const u32);
        let cqe = cq.add(p.cq_off[5] as usize + 16 * (head & cmask) as usize);
        let res = *(cqe.add(8) as *const i32);
        if res < 0 {
            fail(std::io::Error::from_raw_os_error(-res));
        }
        read_out(res);
    }
}

/// Forks up to `most` children that each wait on a pipe, until a fork
/// fails; prints `forked N errno=E` (E 0 when none failed), then releases
/// and reaps them.
fn fork_bomb(most: u32) {
    let mut fds = [0; 2];
    check(unsafe { libc::pipe(fds.as_mut_ptr()) });
    let (mut forked, mut errno) = (0u32, 0);
    while forked < most {
        match unsafe { libc::fork() } {
            0 => {
                let mut b = 0u8;
                unsafe {
                    libc::close(fds[1]);
                    libc::read(fds[0], (&raw mut b).cast(), 1);
                    libc::_exit(0)
                }
            }
            -1 => {
                errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                break;
            }
            _ => forked += 1,
        }
    }
    println!("forked {forked} errno={errno}");
    let _ = std::io::stdout().flush();
    unsafe { libc::close(fds[1]) };
    while unsafe { libc::wait(std::ptr::null_mut()) } > 0 {}
}

/// Allocates and touches `mib` MiB, one at a time, printing progress every
/// 16 MiB; a memory limit below it kills the process on the way.
fn hog(mib: usize) {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for i in 1..=mib {
        kept.push(vec![0xa5; 1 << 20]);
        if i % 16 == 0 {
            println!("allocated {i} MiB");
            let _ = std::io::stdout().flush();
        }
    }
    println!("ok {}", kept.len());
}

/// Busy-loops for `millis` ms of wall time; prints the CPU time it got, in
/// ms.
fn spin(millis: u64) {
    let start = std::time::Instant::now();
    let mut x = 0u64;
    while start.elapsed() < std::time::Duration::from_millis(millis) {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
    }
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    check(unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) });
    println!("cpu_ms {} wall_ms {}", ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000, start.elapsed().as_millis());
}
