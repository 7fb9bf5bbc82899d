//! `agent-monitor`: the daemon and its CLI ([`monitor::app`]).

fn main() -> std::process::ExitCode {
    monitor::app::main()
}
