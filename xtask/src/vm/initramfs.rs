//! The guest's root filesystem: a newc cpio archive holding busybox, the
//! guest `/init` (`tests/vm/init.sh`), the test executables, every shared
//! library `ldd` names for them, and the repository's data files the tests
//! read. Written directly, so building it needs neither `cpio` nor root (the
//! `/dev/console` node is just a header).

use std::{
    collections::BTreeSet,
    fs::File,
    io::{BufWriter, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// Where the executables land in the guest; `tests/vm/init.sh` uses these.
pub const GUEST_DIR: &str = "opt/vmtest";

/// Host programs packed into `/usr/local/bin`, first on the guest's PATH, by
/// guest name. `sh`: busybox's ash runs its own applets through
/// `/proc/self/exe` even when a PATH lookup would find a symlink, so `cat`
/// would exec as `/proc/self/exe` with comm `exe`, not as the `cat` the
/// tests assert on; dash execs the `cat` symlink like a host shell does.
/// `setpriv`: busybox's lacks `--reuid`/`--regid`/`--clear-groups`.
/// `id`: the `run --user` test copies it under another name with the
/// setuid bit, which a busybox applet would not survive.
/// The domain egress tests (`tests/integration/dns.rs`) need the real
/// upstream, `dnsmasq`, and clients that resolve through glibc (`curl`,
/// `getent`) or speak DNS over TCP themselves (`dig`); busybox has none of
/// them (its `nslookup` is neither glibc's resolver nor TCP).
const HOST_TOOLS: &[(&str, &str)] = &[
    ("sh", "/bin/dash"),
    ("setpriv", "/usr/bin/setpriv"),
    ("id", "/usr/bin/id"),
    ("dnsmasq", "/usr/sbin/dnsmasq"),
    ("dig", "/usr/bin/dig"),
    ("curl", "/usr/bin/curl"),
    ("getent", "/usr/bin/getent"),
];

/// Repository directories the tests read data files from (the shipped
/// policies, fixtures, the event schema). They find them through
/// `env!("CARGO_MANIFEST_DIR")`, an absolute host path compiled into the test
/// executable, so the guest needs them at that same path. They are packed
/// under [`REPO_DIR`] and `/init` bind-mounts that over the host path read
/// from [`REPO_PATH_FILE`], after its own mounts: packed at the host path
/// directly, a clone under `/tmp` or `/run` would be hidden by the tmpfs
/// mounted there. A test reading from elsewhere in the repository needs its
/// directory added here.
const REPO_DATA: &[&str] = &["docs", "policies", "tests"];

/// The crate whose `CARGO_MANIFEST_DIR` the integration tests see; it must
/// exist in the guest for `CARGO_MANIFEST_DIR/..` to resolve.
const TEST_CRATE: &str = "monitor";

/// Where the repository's data files sit in the archive; `tests/vm/init.sh`
/// uses this and the next.
const REPO_DIR: &str = "opt/vmtest/repo";
/// Holds the workspace root's host path.
const REPO_PATH_FILE: &str = "opt/vmtest/repo-path";

/// Host executables to pack, by their guest file name under [`GUEST_DIR`].
pub struct Payload {
    pub integration: PathBuf,
    pub monitor: PathBuf,
    pub test_agent: PathBuf,
    /// `tests/attacker`, beside `test-agent` (the tests find it there).
    pub attacker: PathBuf,
    /// The daemon built with the previous map layout (the upgrade test).
    pub previous_layout: PathBuf,
}

pub fn build(root: &Path, payload: &Payload, out: &Path) -> Result<()> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("busybox not found although busybox-static is installed")?;
    let mut cpio = Cpio::create(out)?;
    for dir in ["proc", "sys", "dev", "tmp", "run", "root", "etc", "bin"] {
        cpio.dir(dir)?;
    }
    cpio.node("dev/console", 0o020600, 5, 1)?;
    cpio.file("bin/busybox", 0o755, &read(&busybox)?)?;
    cpio.file("init", 0o755, &read(&root.join("tests/vm/init.sh"))?)?;
    cpio.file("etc/hostname", 0o644, b"vmtest\n")?;
    cpio.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    cpio.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
    // A loopback nameserver nothing listens on: a DNS test bind-mounts its
    // own over it, and no query of any test can leave the guest.
    cpio.file("etc/resolv.conf", 0o644, b"nameserver 127.0.0.153\n")?;

    let exes = [
        ("integration", &payload.integration),
        ("agent-monitor", &payload.monitor),
        ("test-agent", &payload.test_agent),
        ("attacker", &payload.attacker),
        ("agent-monitor-previous-layout", &payload.previous_layout),
    ];
    let mut libs = BTreeSet::new();
    for (name, path) in exes {
        cpio.file(&format!("{GUEST_DIR}/{name}"), 0o755, &read(path)?)?;
        libs.extend(shared_libraries(path)?);
    }
    for (name, path) in HOST_TOOLS {
        let path = Path::new(path);
        cpio.file(&format!("usr/local/bin/{name}"), 0o755, &read(path)?)?;
        libs.extend(shared_libraries(path)?);
    }
    for lib in libs {
        // Copy the file a symlink points to under the name the loader asks for.
        let rel = lib.strip_prefix("/").expect("ldd paths are absolute");
        cpio.file(rel.to_str().context("non-UTF-8 library path")?, 0o755, &read(&lib)?)?;
    }
    let root_path = root.to_str().context("the workspace path is not UTF-8")?;
    if !root.is_absolute() || root.parent().is_none() {
        bail!("the workspace path {root_path} must be absolute and not /");
    }
    cpio.file(REPO_PATH_FILE, 0o644, format!("{root_path}\n").as_bytes())?;
    cpio.dir(&format!("{REPO_DIR}/{TEST_CRATE}"))?;
    for dir in REPO_DATA {
        pack_tree(&mut cpio, &root.join(dir), &format!("{REPO_DIR}/{dir}"))?;
    }
    cpio.finish()
}

/// Every regular file under the host directory `dir`, as `name` and below.
fn pack_tree(cpio: &mut Cpio, dir: &Path, name: &str) -> Result<()> {
    cpio.dir(name)?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let file_name = entry.file_name();
        let child =
            format!("{name}/{}", file_name.to_str().with_context(|| format!("non-UTF-8 path {}", path.display()))?);
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            pack_tree(cpio, &path, &child)?;
        } else if meta.is_file() {
            let perm = if meta.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 };
            cpio.file(&child, perm, &read(&path)?)?;
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The absolute paths `ldd` resolves for `exe`, dynamic loader included.
fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(exe).output().context("cannot run ldd")?;
    if !out.status.success() {
        bail!("ldd {} failed: {}", exe.display(), String::from_utf8_lossy(&out.stderr));
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
        // `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no path.
        let path = line.split("=>").last().unwrap_or("").split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        } else if line.contains("not found") {
            bail!("ldd {}: {line}", exe.display());
        }
    }
    Ok(libs)
}

/// A newc ("070701") writer. Parent directories are added on demand.
struct Cpio {
    out: BufWriter<File>,
    path: PathBuf,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    fn create(path: &Path) -> Result<Cpio> {
        let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Cpio { out: BufWriter::new(file), path: path.into(), ino: 0, dirs: BTreeSet::new() })
    }

    fn dir(&mut self, name: &str) -> Result<()> {
        self.parents(name)?;
        if self.dirs.insert(name.to_owned()) {
            self.entry(name, 0o040755, (0, 0), &[])?;
        }
        Ok(())
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<()> {
        self.parents(name)?;
        self.entry(name, 0o100000 | perm, (0, 0), data)
    }

    fn node(&mut self, name: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        self.parents(name)?;
        self.entry(name, mode, (major, minor), &[])
    }

    fn parents(&mut self, name: &str) -> Result<()> {
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.dir(parent)?;
        }
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> Result<()> {
        self.ino += 1;
        let namesize = name.len() + 1;
        let fields = [self.ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, namesize as u32, 0];
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        let w = &mut self.out;
        w.write_all(header.as_bytes())?;
        w.write_all(name.as_bytes())?;
        w.write_all(&[0])?;
        w.write_all(&[0; 3][..pad4(110 + namesize)])?;
        w.write_all(data)?;
        w.write_all(&[0; 3][..pad4(data.len())])?;
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        self.out.flush().with_context(|| format!("cannot write {}", self.path.display()))
    }
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}
