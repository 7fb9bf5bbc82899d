//! `agent-monitor`: flags → tracing → runtime → dispatch → exit code.
//!
//! In the library so that a second build of the daemon (the upgrade test's
//! older layout, `tests/previous_layout`) runs exactly this entry point.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::{
    cli::{Cli, Commands, PolicyCommand},
    config::DaemonConfig,
    control::{
        client::{self, ClientError},
        protocol::{Request, Response},
    },
    errors::chain,
};

/// `agent-monitor`'s `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Commands::Daemon(args) => {
            let config = match DaemonConfig::from_args(&args) {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(r) => r,
                Err(e) => return fail(&e),
            };
            // The handlers are in place before the daemon loads anything: a
            // SIGTERM during start-up (a probe, an impatient unit) is taken
            // once it serves and ends it cleanly, pins removed where asked,
            // instead of killing it half-way by the default action.
            let shutdown = {
                let _runtime = runtime.enter();
                match shutdown_signal() {
                    Ok(s) => s,
                    Err(e) => return fail(&e),
                }
            };
            match runtime.block_on(crate::daemon::run(config, shutdown)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Commands::Status(args) => match crate::status::show(&args.control_socket, args.json) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Commands::Step(args) => {
            let req = Request::Step { trajectory: args.trajectory, name: args.name, id: args.id };
            match client::request(&args.control_socket, &req) {
                Ok(Response::Stepped { trajectory, step, .. }) => {
                    println!("trajectory {trajectory}: step {step}");
                    ExitCode::SUCCESS
                }
                Ok(other) => fail(&ClientError::Protocol(format!("unexpected answer to step: {other:?}"))),
                Err(e) => fail(&e),
            }
        }
        Commands::Events(args) => {
            let req = Request::Events { trajectory: args.trajectory, kinds: args.kinds, follow: args.follow };
            match client::stream(&args.control_socket, &req, &mut std::io::stdout().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Commands::Policy(PolicyCommand::Check { paths }) => {
            let diagnostics = crate::policy::check(&paths);
            for d in &diagnostics {
                eprintln!("{d}");
            }
            if diagnostics.is_empty() {
                println!("{} policy path(s) valid", paths.len());
                ExitCode::SUCCESS
            } else {
                eprintln!("agent-monitor policy check: {} error(s)", diagnostics.len());
                ExitCode::FAILURE
            }
        }
        Commands::Policy(PolicyCommand::Replay { policy, files, trajectory, json }) => {
            replay(&policy, &files, trajectory, json)
        }
        Commands::Run(args) => run(args),
    }
}

/// `agent-monitor policy replay`: 0 no new denial, 1 some, 2 bad input.
fn replay(policy: &str, files: &[std::path::PathBuf], trajectories: Vec<String>, json: bool) -> ExitCode {
    let report = crate::replay::load_candidate(policy).and_then(|c| crate::replay::replay(&c, files, trajectories));
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("agent-monitor policy replay: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        for d in &report.differences {
            println!("{}", serde_json::to_string(d).expect("serialisable"));
        }
        let summary = serde_json::json!({
            "judged": report.judged,
            "differences": report.differences.len(),
            "unknown": report.unknown,
        });
        println!("{}", serde_json::json!({ "summary": summary }));
    } else {
        print!("{}", crate::replay::render(&report));
    }
    if report.denies_more() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `agent-monitor run`: returns only when the command could not start.
fn run(args: crate::cli::RunArgs) -> ExitCode {
    let spec = crate::run::RunSpec {
        trajectory: args.trajectory,
        policy: args.policy,
        workspace: args.workspace,
        user: args.user,
    };
    let err = crate::run::run(&args.control_socket, spec, &args.command);
    eprintln!("agent-monitor run: {}", chain(&err));
    ExitCode::from(err.exit_code() as u8)
}

/// SIGINT or SIGTERM, with both handlers installed when this returns (in
/// a runtime context), not when the future is first polled.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

fn fail(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("agent-monitor: error: {}", chain(e));
    ExitCode::FAILURE
}
