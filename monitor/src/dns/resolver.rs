//! The resolver a trajectory's DNS traffic is redirected to: one UDP socket
//! and one TCP listener on a loopback address. For each question it finds
//! who asked (the slot the source address names), judges the name by that
//! trajectory's policy instance, and either answers itself (a denied name
//! is never sent upstream) or forwards the question upstream, filters the
//! answer, writes its addresses into the kernel's learned-address map and
//! only then releases the answer, so the agent's first connect after the
//! lookup is already judged by them.

use std::{
    io,
    net::{IpAddr, SocketAddr, SocketAddrV4},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use monitor_common::maps::DnsSlot;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::watch,
};

use super::{
    learn::{DnsMaps, EntryRules, Lifetime},
    message::{self, Answer, Question, Refusal},
    ranges::InternalRanges,
};
use crate::{
    clock,
    control::protocol::DnsStatus,
    domains::{Domains, InstanceDomains},
    events::{
        decode::{self, Decoded, RawVerdict},
        handle::PipelineHandle,
    },
    metrics::Metrics,
    policy::{domain::NameVerdict, Action},
    record::{Body, DnsAddress, DnsDropped},
};

/// How long the upstream server has to answer one question.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// An idle TCP client connection is closed after this long.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How often expired learned entries are removed.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The resolver's settings, from the daemon configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where it listens (port 0: any free port, the same for UDP and TCP).
    pub listen: SocketAddrV4,
    /// Where allowed questions go; `None`: nowhere (answered SERVFAIL).
    pub upstream: Option<SocketAddr>,
    /// The answer to a denied name.
    pub refusal: Refusal,
    pub lifetime: Lifetime,
    /// Ranges an answer may point into only where the rule allows it.
    pub internal: InternalRanges,
    /// Second octet of the loopback `/16` redirected sockets are bound in.
    pub client_net: u8,
}

struct Shared {
    settings: Settings,
    maps: Mutex<DnsMaps>,
    domains: Domains,
    pipeline: PipelineHandle,
    metrics: Arc<Metrics>,
}

pub struct Resolver {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    addr: SocketAddrV4,
    shared: Arc<Shared>,
}

/// How a question was transported.
#[derive(Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }

    /// The IP protocol number.
    fn protocol(self) -> u8 {
        match self {
            Transport::Udp => 17,
            Transport::Tcp => 6,
        }
    }
}

impl Resolver {
    /// Binds the UDP socket and the TCP listener on one port.
    pub async fn bind(
        settings: Settings,
        maps: DnsMaps,
        domains: Domains,
        pipeline: PipelineHandle,
        metrics: Arc<Metrics>,
    ) -> io::Result<Resolver> {
        let mut tries = 0;
        let (udp, tcp, addr) = loop {
            let udp = UdpSocket::bind(settings.listen).await?;
            let SocketAddr::V4(addr) = udp.local_addr()? else { unreachable!("bound to an IPv4 address") };
            match TcpListener::bind(addr).await {
                Ok(tcp) => break (udp, tcp, addr),
                // An ephemeral UDP port whose TCP twin is taken: try another.
                Err(e) if settings.listen.port() == 0 && tries < 16 => {
                    tries += 1;
                    tracing::debug!("resolver port {} is taken for TCP ({e}); trying another", addr.port());
                }
                Err(e) => return Err(e),
            }
        };
        let shared = Arc::new(Shared { settings, maps: Mutex::new(maps), domains, pipeline, metrics });
        Ok(Resolver { udp: Arc::new(udp), tcp, addr, shared })
    }

    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// The ranges answers may point into only where the rule allows it.
    pub fn internal_ranges(&self) -> Vec<String> {
        self.shared.settings.internal.describe()
    }

    /// Its `status` row (`learned` filled in when asked).
    pub fn status(&self) -> DnsStatus {
        DnsStatus {
            listen: self.addr.to_string(),
            upstream: self.shared.settings.upstream.map(|u| u.to_string()),
            learned: 0,
            mechanism: "cgroup-redirect".into(),
        }
    }

    /// Serves until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> io::Result<()> {
        let mut buf = vec![0u8; 65535];
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                got = self.udp.recv_from(&mut buf) => {
                    let (n, src) = match got {
                        Ok(got) => got,
                        // ICMP errors of earlier replies surface here.
                        Err(e) => { tracing::debug!("resolver UDP receive: {e}"); continue }
                    };
                    let query = buf[..n].to_vec();
                    let (shared, udp) = (self.shared.clone(), self.udp.clone());
                    tokio::spawn(async move {
                        if let Some(reply) = answer(&shared, &query, src, Transport::Udp).await {
                            let _ = udp.send_to(&reply, src).await;
                        }
                    });
                }
                accepted = self.tcp.accept() => {
                    match accepted {
                        Ok((stream, peer)) => { tokio::spawn(serve_tcp(self.shared.clone(), stream, peer)); }
                        Err(e) => tracing::warn!("resolver TCP accept: {e}"),
                    }
                }
                _ = sweep.tick() => {
                    let domains = self.shared.domains.clone();
                    let (left, expired) = self.shared.maps.lock().expect("not poisoned").sweep(&domains);
                    self.shared.metrics.dns.learned.set(left as i64);
                    self.shared.metrics.dns.learned_expired.inc_by(expired);
                }
            }
        }
    }
}

/// One TCP client: length-prefixed questions until it closes or idles.
async fn serve_tcp(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        let Some(reply) = answer(&shared, &query, peer, Transport::Tcp).await else { return };
        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// Who asked: for a socket that was already bound when the hook redirected
/// it, the slot the hook filed under its address and port; otherwise the
/// slot its source address names.
fn asker(shared: &Shared, src: SocketAddr, transport: Transport) -> Option<DnsSlot> {
    let SocketAddr::V4(src) = src else { return None };
    let o = src.ip().octets();
    if o[0] != 127 {
        return None;
    }
    // A source in the slot network was chosen by the hook (or, for a
    // socket connected again, filed under it); any other loopback source is
    // a socket bound before, possibly to the wildcard address.
    let in_slot_net = o[1] == shared.settings.client_net;
    let maps = shared.maps.lock().expect("not poisoned");
    let index = match maps.bound_slot(transport.protocol(), *src.ip(), src.port(), !in_slot_net) {
        Some(index) => index,
        None if in_slot_net => u32::from(o[2]) << 8 | u32::from(o[3]),
        None => return None,
    };
    let slot = maps.slot(index).ok()?;
    (slot.header.trajectory_cgroup != 0 && slot.protocol == transport.protocol()).then_some(slot)
}

/// What the resolver does with one question.
struct Plan {
    /// `allow`, `audit` or `deny`, and the rule's action.
    decision: &'static str,
    action: &'static str,
    rule: u32,
    /// Ask upstream; `false`: answer with the configured refusal.
    forward: bool,
    /// Learn the answer's addresses with these rules.
    learn: Option<(EntryRules, bool)>,
}

fn plan(inst: &InstanceDomains, name: &str) -> Plan {
    let refuse = |rule, enforce: bool| Plan {
        decision: if enforce { "deny" } else { "audit" },
        action: "deny",
        rule,
        forward: !enforce,
        learn: None,
    };
    match inst.table.judge(name) {
        NameVerdict::Refuse { rule } => refuse(rule, inst.enforce),
        NameVerdict::NoRule { action: Action::Deny } => refuse(0, inst.enforce),
        NameVerdict::NoRule { action } => {
            let a = action.as_str();
            Plan { decision: a, action: a, rule: 0, forward: true, learn: None }
        }
        NameVerdict::Resolve { rule, action, allow_private, ports, fallback } => {
            let a = action.as_str();
            Plan {
                decision: a,
                action: a,
                rule,
                forward: true,
                learn: Some((EntryRules { ports, fallback }, allow_private)),
            }
        }
    }
}

/// Answers one question, or `None` to stay silent (not a redirected
/// packet, or not a DNS query at all).
async fn answer(shared: &Shared, query: &[u8], src: SocketAddr, transport: Transport) -> Option<Vec<u8>> {
    let slot = asker(shared, src, transport)?;
    let question = message::parse_query(query).ok()?;
    let instance = slot.header.policy;
    let Some(inst) = shared.domains.instance(instance) else {
        return message::refusal(query, Refusal::Refused).ok();
    };
    let plan = plan(&inst, &question.name);
    shared.metrics.dns.questions.with_label_values(&[&inst.policy, plan.decision]).inc();
    let mut outcome = Outcome::default();
    let reply = if plan.forward { forward(shared, query, transport, &mut outcome).await } else { None };
    let reply = match reply {
        Some(reply) => {
            let internal = &shared.settings.internal;
            let allow_private = plan.learn.as_ref().is_some_and(|(_, p)| *p);
            let keep = |_: &str, addr: IpAddr| plan.learn.is_none() || allow_private || !internal.contains(addr);
            match message::filter_reply(&question, &reply, keep) {
                Ok((filtered, answer)) => {
                    if let Some((rules, _)) = &plan.learn {
                        outcome.learned_for = learn(shared, instance, &question, &answer, rules);
                    }
                    outcome.answer = Some(answer);
                    filtered
                }
                Err(e) => {
                    tracing::debug!("upstream reply for {}: {e}", question.name);
                    shared.metrics.dns.upstream_failures.with_label_values(&[transport.as_str()]).inc();
                    message::refusal(query, Refusal::ServFail).ok()?
                }
            }
        }
        None if plan.forward => message::refusal(query, Refusal::ServFail).ok()?,
        None => message::refusal(query, shared.settings.refusal).ok()?,
    };
    let rcode = match (&outcome.answer, plan.forward) {
        (Some(a), _) => a.rcode.clone(),
        (None, true) => Refusal::ServFail.as_str().to_owned(),
        (None, false) => shared.settings.refusal.as_str().to_owned(),
    };
    record(shared, &slot, &question, transport, &plan, rcode, outcome).await;
    Some(reply)
}

#[derive(Default)]
struct Outcome {
    answer: Option<Answer>,
    upstream: Option<Duration>,
    learned_for: Option<Duration>,
}

/// Asks the upstream server; `None` when it did not answer.
async fn forward(shared: &Shared, query: &[u8], transport: Transport, outcome: &mut Outcome) -> Option<Vec<u8>> {
    let upstream = shared.settings.upstream?;
    let started = Instant::now();
    let result = match transport {
        Transport::Udp => tokio::time::timeout(UPSTREAM_TIMEOUT, ask_udp(upstream, query)).await,
        Transport::Tcp => tokio::time::timeout(UPSTREAM_TIMEOUT, ask_tcp(upstream, query)).await,
    };
    match result {
        Ok(Ok(reply)) => {
            let took = started.elapsed();
            shared.metrics.dns.upstream_latency.observe(took.as_secs_f64());
            outcome.upstream = Some(took);
            Some(reply)
        }
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_owned(),
            };
            tracing::warn!("DNS upstream {upstream} ({}): {why}", transport.as_str());
            shared.metrics.dns.upstream_failures.with_label_values(&[transport.as_str()]).inc();
            None
        }
    }
}

async fn ask_udp(upstream: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let any: SocketAddr = if upstream.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let sock = UdpSocket::bind(any).await?;
    sock.connect(upstream).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // A stray datagram with another id is not the answer.
        if n >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn ask_tcp(upstream: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).await?;
    Ok(reply)
}

/// Writes the answer's addresses into the learned-address map; answers how
/// long they stay (the shortest TTL's lifetime), `None` when none was
/// written.
fn learn(shared: &Shared, instance: u32, q: &Question, answer: &Answer, rules: &EntryRules) -> Option<Duration> {
    if answer.addresses.is_empty() {
        return None;
    }
    let name = shared.domains.intern(&q.name);
    let mut maps = shared.maps.lock().expect("not poisoned");
    let mut shortest: Option<Duration> = None;
    for a in &answer.addresses {
        let lifetime = shared.settings.lifetime.of(a.ttl);
        if let Err(e) = maps.learn(instance, a.addr, name, rules, lifetime) {
            tracing::error!("learning {} for {}: {e}", a.addr, q.name);
            continue;
        }
        shortest = Some(shortest.map_or(lifetime, |s| s.min(lifetime)));
        // Exact again at the next sweep (an address learned twice counts
        // twice until then).
        shared.metrics.dns.learned.inc();
    }
    shortest
}

/// Publishes the `dns` record in the asker's trajectory.
async fn record(
    shared: &Shared,
    slot: &DnsSlot,
    q: &Question,
    transport: Transport,
    plan: &Plan,
    rcode: String,
    outcome: Outcome,
) {
    let o = slot.orig_addr;
    let server = SocketAddrV4::new([o[0], o[1], o[2], o[3]].into(), slot.orig_port).to_string();
    let answer = outcome.answer.unwrap_or_default();
    let body = Body::Dns {
        name: q.name.clone(),
        qtype: q.type_name(),
        transport: transport.as_str(),
        server,
        rcode,
        answers: answer
            .addresses
            .iter()
            .map(|a| DnsAddress { name: a.name.clone(), addr: a.addr.to_string(), ttl: a.ttl })
            .collect(),
        cnames: answer.cnames,
        dropped: answer
            .dropped
            .iter()
            .map(|d| DnsDropped { name: d.name.clone(), addr: d.addr.to_string(), reason: d.reason.as_str() })
            .collect(),
        learned_for_s: outcome.learned_for.map(|d| d.as_secs()),
        upstream_us: outcome.upstream.map(|d| d.as_micros() as u64),
    };
    let decoded = Decoded {
        ts_boot_ns: clock::boottime_ns(),
        trajectory_cgroup: slot.header.trajectory_cgroup,
        step: slot.header.step,
        process: decode::process(&slot.header),
        body,
        verdict: RawVerdict {
            policy: slot.header.policy,
            rule_id: plan.rule,
            action: Some(plan.action),
            decision: Some(plan.decision),
            mechanism: None,
        },
    };
    shared.pipeline.publish(decoded).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use monitor_common::policy::RULE_DEFAULT;

    use super::*;
    use crate::policy::{model::DomainRule, DomainPattern, DomainTable, Pos};

    fn rule(id: u32, pattern: &str, action: Action, allow_private: bool) -> DomainRule {
        DomainRule {
            id,
            pos: Pos { line: id, column: 7 },
            pattern: DomainPattern::parse(pattern).unwrap(),
            ports: vec![],
            protocol: None,
            action,
            allow_private,
        }
    }

    fn instance(enforce: bool, default: Action) -> InstanceDomains {
        let rules = [
            rule(1, "allowed.test", Action::Allow, false),
            rule(2, "*.private.test", Action::Allow, true),
            rule(3, "denied.test", Action::Deny, false),
            rule(4, "audited.test", Action::Audit, false),
        ];
        InstanceDomains { policy: "p".into(), table: Arc::new(DomainTable::new(&rules, default)), enforce }
    }

    fn summary(p: &Plan) -> (&'static str, &'static str, u32, bool, Option<bool>) {
        (p.decision, p.action, p.rule, p.forward, p.learn.as_ref().map(|(_, private)| *private))
    }

    #[test]
    fn enforcing_policies_refuse_denied_and_unlisted_names_without_asking_upstream() {
        let inst = instance(true, Action::Deny);
        assert_eq!(summary(&plan(&inst, "allowed.test")), ("allow", "allow", 1, true, Some(false)));
        assert_eq!(summary(&plan(&inst, "a.b.private.test")), ("allow", "allow", 2, true, Some(true)));
        assert_eq!(summary(&plan(&inst, "audited.test")), ("audit", "audit", 4, true, Some(false)));
        assert_eq!(summary(&plan(&inst, "denied.test")), ("deny", "deny", 3, false, None));
        // No rule, network default deny: refused, by the default.
        assert_eq!(summary(&plan(&inst, "elsewhere.test")), ("deny", "deny", RULE_DEFAULT, false, None));
        // A wildcard does not cover its own apex.
        assert_eq!(summary(&plan(&inst, "private.test")), ("deny", "deny", RULE_DEFAULT, false, None));
    }

    #[test]
    fn audit_mode_resolves_denied_names_and_records_them_as_hits() {
        let inst = instance(false, Action::Deny);
        assert_eq!(summary(&plan(&inst, "denied.test")), ("audit", "deny", 3, true, None));
        assert_eq!(summary(&plan(&inst, "elsewhere.test")), ("audit", "deny", RULE_DEFAULT, true, None));
    }

    #[test]
    fn an_allowing_default_resolves_unlisted_names_without_learning_them() {
        let inst = instance(true, Action::Allow);
        assert_eq!(summary(&plan(&inst, "elsewhere.test")), ("allow", "allow", RULE_DEFAULT, true, None));
        assert_eq!(summary(&plan(&inst, "denied.test")), ("deny", "deny", 3, false, None));
    }

    #[test]
    fn learned_lifetimes_are_the_ttl_plus_grace_clamped() {
        let l = Lifetime { grace: Duration::from_secs(5), min: Duration::from_secs(10), max: Duration::from_secs(60) };
        assert_eq!(l.of(0), Duration::from_secs(10));
        assert_eq!(l.of(20), Duration::from_secs(25));
        assert_eq!(l.of(86_400), Duration::from_secs(60));
    }
}
