//! The daemon as the build before this one: the same sources, pinning with
//! the map layout one version lower, so its pins are incompatible with the
//! current `agent-monitor`'s. The upgrade test
//! (`tests/integration/continuity.rs`) starts this build, then hands its
//! trajectories over to the current one, as an upgrade of the package does.

fn main() -> std::process::ExitCode {
    monitor::pins::build_with_layout_version(monitor::pins::LAYOUT_VERSION - 1);
    monitor::app::main()
}
