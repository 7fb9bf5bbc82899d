//! Host tools for the guests, and the pinned Debian kernels: `apt-get
//! download` once into the cache, `dpkg -x`, keep the bzImage and its
//! config. A second run finds them in the cache and touches no network.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use super::matrix::{Kernel, PIN_FILE};

/// Debian packages the VM runner needs on the host. The initramfs is written
/// by xtask itself (newc format), so `cpio` is not among them; `binutils`
/// strips the executables, `dash` and `util-linux` supply guest tools.
pub const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "binutils", "dash", "util-linux"];

/// A kernel ready to boot.
pub struct KernelImage {
    pub bzimage: PathBuf,
    /// The kernel's build config, kept beside it for reading failures.
    pub config: PathBuf,
}

/// The bzImage of `kernel`, fetched into `cache` on first use.
pub fn kernel_image(kernel: &Kernel, cache: &Path) -> Result<KernelImage> {
    // apt-get download spells an epoch's `:` as `%3a` in file names.
    let stem = format!("{}_{}", kernel.package, kernel.version.replace(':', "%3a"));
    let dir = cache.join(&stem);
    let image = KernelImage { bzimage: dir.join("vmlinuz"), config: dir.join("config") };
    if image.bzimage.exists() {
        return Ok(image);
    }
    std::fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let deb = cache.join(format!("{stem}_amd64.deb"));
    if !deb.exists() {
        require_available(kernel)?;
        eprintln!("xtask: downloading {}={}", kernel.package, kernel.version);
        let status = Command::new("apt-get")
            .current_dir(cache)
            // As root, apt would hand the download to its `_apt` sandbox user,
            // which cannot write into target/.
            .args([
                "download",
                "-q",
                "-o",
                "APT::Sandbox::User=root",
                &format!("{}={}", kernel.package, kernel.version),
            ])
            .status()
            .context("cannot run apt-get")?;
        if !status.success() || !deb.exists() {
            bail!("`apt-get download {}={}` did not produce {}", kernel.package, kernel.version, deb.display());
        }
    }
    // Extract beside the cache entry and move only what we boot into place,
    // so an interrupted run never leaves a half-extracted entry behind.
    let tmp = cache.join(format!("{stem}.extract"));
    let _ = std::fs::remove_dir_all(&tmp);
    let status = Command::new("dpkg").arg("-x").arg(&deb).arg(&tmp).status().context("cannot run dpkg")?;
    if !status.success() {
        bail!("`dpkg -x {}` failed", deb.display());
    }
    let boot = tmp.join("boot");
    let find = |prefix: &str| -> Result<PathBuf> {
        std::fs::read_dir(&boot)
            .with_context(|| format!("{} has no boot/ directory", deb.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
            .with_context(|| format!("{} has no boot/{prefix}*", deb.display()))
    };
    let (bzimage, config) = (find("vmlinuz-")?, find("config-")?);
    std::fs::create_dir_all(&dir)?;
    std::fs::rename(config, &image.config)?;
    std::fs::rename(bzimage, &image.bzimage)?;
    std::fs::remove_dir_all(&tmp)?;
    Ok(image)
}

/// Fails with the package, the pin file and what is available instead when
/// Debian no longer carries the pinned version.
fn require_available(kernel: &Kernel) -> Result<()> {
    let mut versions = madison(&kernel.package)?;
    if versions.is_empty() && crate::setup::is_root() {
        // Empty package lists (a fresh container) look like a missing package.
        eprintln!("xtask: apt-cache knows no {}; running apt-get update", kernel.package);
        let status = Command::new("apt-get").args(["update", "-q"]).status().context("cannot run apt-get")?;
        if !status.success() {
            bail!("`apt-get update` failed: Debian's package registry is unreachable or misconfigured");
        }
        versions = madison(&kernel.package)?;
    }
    if !versions.contains(&kernel.version) {
        let available = if versions.is_empty() { "none".to_owned() } else { versions.join(", ") };
        bail!(
            "kernel {}: {}={} is not available from the configured Debian archives (available: {available}); \
             update its line in {PIN_FILE} (`apt-cache search --names-only '^linux-image-.*-cloud-amd64-unsigned$'` \
             lists current packages)",
            kernel.name,
            kernel.package,
            kernel.version
        );
    }
    Ok(())
}

/// Versions of `package` the configured archives offer.
fn madison(package: &str) -> Result<Vec<String>> {
    let out = Command::new("apt-cache").args(["madison", package]).output().context("cannot run apt-cache")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split('|').nth(1).map(|v| v.trim().to_owned()))
        .collect())
}
