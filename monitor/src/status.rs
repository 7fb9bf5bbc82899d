//! `agent-monitor status`: ask the daemon, render for a terminal or as JSON.

use std::{fmt::Write as _, path::Path};

use crate::control::{
    client::{self, ClientError},
    protocol::{Request, Response, Status},
};

pub fn show(socket: &Path, json: bool) -> Result<String, ClientError> {
    let status = match client::request(socket, &Request::Status)? {
        Response::Status { status, .. } => status,
        other => return Err(ClientError::Protocol(format!("unexpected answer to status: {other:?}"))),
    };
    if json {
        return Ok(serde_json::to_string_pretty(&status).expect("serialisable") + "\n");
    }
    Ok(render(&status))
}

pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "agent-monitor {} on kernel {}", s.version, s.kernel);
    let _ = writeln!(out, "\n{:<20} {:<8} {:<12} DETAIL", "HOOK", "CLASS", "MECHANISM");
    for h in &s.hooks {
        let _ = writeln!(out, "{:<20} {:<8} {:<12} {}", h.hook, h.class, h.mechanism, h.detail);
    }
    let e = &s.enforcement;
    let _ = writeln!(out, "\nenforcement: file={} exec={} network={}", e.file, e.exec, e.network);
    if let Some(d) = &s.dns {
        let upstream = d.upstream.as_deref().unwrap_or("none");
        let _ = writeln!(
            out,
            "dns: resolver {} upstream {upstream} learned {} mechanism {}",
            d.listen, d.learned, d.mechanism
        );
    }
    if !s.protections.is_empty() {
        let _ = writeln!(out, "\n{:<20} {:<12} DETAIL", "PROTECTION", "MECHANISM");
        for p in &s.protections {
            let _ = writeln!(out, "{:<20} {:<12} {}", p.protection, p.mechanism, p.detail);
        }
    }
    if !s.limits.is_empty() {
        let _ = writeln!(out, "\n{:<20} {:<12} DETAIL", "LIMIT", "HIERARCHY");
        for l in &s.limits {
            let _ = writeln!(out, "{:<20} {:<12} {}", l.controller, l.hierarchy, l.detail);
        }
    }
    let _ = writeln!(
        out,
        "\npolicies from {}:",
        s.policy_dir.as_deref().unwrap_or("the embedded default only (no policy directory)")
    );
    for p in &s.policies {
        let [f, x, n] = p.rules;
        let _ = writeln!(out, "  {:<20} {:<8} file={f} exec={x} network={n}  {}", p.name, p.mode, p.file);
        if let Some(user) = &p.session.user {
            let _ = writeln!(out, "    session: user={user} capabilities=[{}]", p.session.capabilities.join(","));
        }
        if !p.limits.is_empty() {
            let _ = writeln!(out, "    limits: {}", limits_text(&p.limits));
        }
    }
    let _ = writeln!(out, "\n{} open trajectories", s.trajectories.len());
    for t in &s.trajectories {
        let _ = writeln!(
            out,
            "  {:<24} policy={:<12} records={:<8} lost={:<6} {}",
            t.trajectory, t.policy, t.records, t.lost, t.cgroup
        );
        if let Some(a) = &t.agent {
            let caps = if a.capabilities.is_empty() { "none".to_owned() } else { a.capabilities.join(",") };
            let nnp = if a.no_new_privs { " no_new_privs" } else { "" };
            let _ = writeln!(out, "    agent: uid={} gid={} capabilities={caps}{nnp}", a.uid, a.gid);
        }
        if !t.limits.is_empty() {
            let _ = writeln!(out, "    limits: {}", limits_text(&t.limits));
        }
        if let Some(l) = &t.landlock {
            let classes: Vec<&str> = l.classes.iter().map(|c| c.as_str()).collect();
            let scoped = if l.scoped.is_empty() { String::new() } else { format!(" scoped={}", l.scoped.join(",")) };
            let _ =
                writeln!(out, "    landlock: abi={} rules={} classes={}{scoped}", l.abi, l.grants, classes.join(","));
            if !l.ebpf_only.is_empty() {
                let _ = writeln!(out, "    landlock leaves to the tracepoints: {}", l.ebpf_only.join(", "));
            }
        }
    }
    out
}

/// `memory=64M pids=64 cpu=0.5`.
fn limits_text(l: &crate::policy::Limits) -> String {
    let mut parts = Vec::new();
    if let Some(m) = l.memory {
        parts.push(if m % (1 << 20) == 0 { format!("memory={}M", m >> 20) } else { format!("memory={m}") });
    }
    if let Some(p) = l.pids {
        parts.push(format!("pids={p}"));
    }
    if let Some(c) = l.cpu_millicores {
        parts.push(format!("cpu={}", f64::from(c) / 1000.0));
    }
    parts.join(" ")
}
