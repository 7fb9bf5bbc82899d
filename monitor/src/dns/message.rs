//! DNS messages for the daemon's resolver: reading an agent's query,
//! answering it ourselves (refusals), and filtering the upstream reply
//! before it reaches the agent. Pure: bytes in, bytes out. Framing (the TCP
//! length prefix), sockets and policy belong to the caller; all wire work is
//! hickory-proto's.
//!
//! Names are compared and reported lowercased, without the trailing dot
//! (`""` is the root), bytes outside `[a-z0-9-_*]` escaped as `\DDD`
//! (RFC 1035 presentation form), so a name with odd bytes can never equal a
//! policy's plain name by accident.

use std::{fmt, net::IpAddr};

use hickory_proto::{
    op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name, RData, Record, RecordType},
    serialize::binary::{BinDecodable, BinDecoder},
    ProtoError,
};

/// The most CNAME hops followed from the question name. Resolvers stop
/// well before this (BIND at 16 too); records past it count as off the chain.
pub const MAX_CNAME_HOPS: usize = 16;

/// The EDNS UDP payload size advertised in the answers the daemon makes
/// itself (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("malformed DNS message")]
    Malformed(#[source] ProtoError),
    #[error("not a query: the QR bit is set")]
    NotQuery,
    #[error("not a response: the QR bit is clear")]
    NotResponse,
    #[error("opcode {op_code} is not QUERY")]
    OpCode { op_code: u8 },
    #[error("expected exactly one question, found {count}")]
    QuestionCount { count: usize },
    #[error("reply id {got} does not match query id {expected}")]
    IdMismatch { expected: u16, got: u16 },
    #[error("reply question {got:?} does not match query question {expected:?}")]
    QuestionMismatch { expected: String, got: String },
    #[error("encoding the DNS message failed")]
    Encode(#[source] ProtoError),
}

/// The one question of a query, and the query's id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    /// Lowercased, no trailing dot, `""` for the root (see the module doc).
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

impl Question {
    fn new(id: u16, query: &Query) -> Self {
        Question {
            id,
            name: name_key(query.name()),
            qtype: query.query_type().into(),
            qclass: query.query_class().into(),
        }
    }

    /// The type's mnemonic (`A`, `AAAA`, `CNAME`, `TXT`, `HTTPS`), or
    /// `TYPE<n>` (RFC 3597) for a type hickory-proto does not know.
    pub fn type_name(&self) -> String {
        match RecordType::from(self.qtype) {
            RecordType::Unknown(n) => format!("TYPE{n}"),
            t => t.to_string(),
        }
    }

    /// Name, type and class, for errors: `example.test A IN`.
    fn describe(&self) -> String {
        let class = match DNSClass::from(self.qclass) {
            DNSClass::Unknown(n) => format!("CLASS{n}"),
            c => c.to_string(),
        };
        let name = if self.name.is_empty() { "." } else { &self.name };
        format!("{name} {} {class}", self.type_name())
    }
}

/// `example.test A`, the root printed as `.`.
impl fmt::Display for Question {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.name.is_empty() { "." } else { &self.name };
        write!(f, "{name} {}", self.type_name())
    }
}

/// Reads an agent's query: a QUERY-opcode request with exactly one question.
pub fn parse_query(bytes: &[u8]) -> Result<Question, MessageError> {
    let message = Message::from_vec(bytes).map_err(MessageError::Malformed)?;
    let query = check_query(&message)?;
    Ok(Question::new(message.id(), query))
}

fn check_query(message: &Message) -> Result<&Query, MessageError> {
    if message.message_type() == MessageType::Response {
        return Err(MessageError::NotQuery);
    }
    check_op_code(message.op_code())?;
    single_question(message.queries())
}

fn check_op_code(op_code: OpCode) -> Result<(), MessageError> {
    match op_code {
        OpCode::Query => Ok(()),
        other => Err(MessageError::OpCode { op_code: other.into() }),
    }
}

fn single_question(queries: &[Query]) -> Result<&Query, MessageError> {
    match queries {
        [query] => Ok(query),
        _ => Err(MessageError::QuestionCount { count: queries.len() }),
    }
}

/// The response codes the daemon answers with itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The policy denies the name.
    Refused,
    /// The policy denies the name and the agent should see it as absent.
    NxDomain,
    /// The upstream failed or its reply was unusable.
    ServFail,
}

impl Refusal {
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::Refused => "REFUSED",
            Refusal::NxDomain => "NXDOMAIN",
            Refusal::ServFail => "SERVFAIL",
        }
    }

    fn response_code(self) -> ResponseCode {
        match self {
            Refusal::Refused => ResponseCode::Refused,
            Refusal::NxDomain => ResponseCode::NXDomain,
            Refusal::ServFail => ResponseCode::ServFail,
        }
    }
}

/// An answer the daemon makes itself for `query`: same id, the question
/// echoed as asked, RD and CD copied, QR and RA set, `code`, no records;
/// an OPT record if the query had one (RFC 6891 §6.1.1 requires it).
pub fn refusal(query: &[u8], code: Refusal) -> Result<Vec<u8>, MessageError> {
    let request = Message::from_vec(query).map_err(MessageError::Malformed)?;
    let question = check_query(&request)?.clone();
    let mut reply = Message::new();
    reply
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(request.recursion_desired())
        .set_checking_disabled(request.checking_disabled())
        .set_recursion_available(true)
        .set_response_code(code.response_code())
        .add_query(question);
    if request.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        reply.set_edns(edns);
    }
    reply.to_vec().map_err(MessageError::Encode)
}

/// What the filtered reply says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// `NOERROR`, `NXDOMAIN`, `SERVFAIL`, ..., `RCODE<n>` for the rest.
    pub rcode: String,
    /// The reply had TC set: the client will likely retry over TCP.
    pub truncated: bool,
    /// The CNAME chain followed from the question name: the targets, in order.
    pub cnames: Vec<String>,
    /// The A/AAAA records kept, in answer order.
    pub addresses: Vec<Learned>,
    /// The A/AAAA records removed, answer section then additional section.
    pub dropped: Vec<Dropped>,
    /// The smallest TTL among the chain's CNAME records and the kept
    /// address records: how long the addresses stay valid for the question
    /// name. `None` when there are neither.
    pub min_ttl: Option<u32>,
}

/// An address record kept in the reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learned {
    /// The record's owner: the question name or a name on its CNAME chain.
    pub name: String,
    pub addr: IpAddr,
    pub ttl: u32,
}

/// An address record removed from the reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub name: String,
    pub addr: IpAddr,
    pub reason: DropReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// `keep` refused the address (it points inside: DNS rebinding).
    Rebinding,
    /// In the answer section, owned by a name not on the question's chain:
    /// a client that does not check owners would use it for the question.
    OffChain,
    /// In the additional section, where no client should take an address
    /// for the question from; never learned.
    Additional,
}

impl DropReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Rebinding => "dns_rebinding",
            DropReason::OffChain => "off_chain",
            DropReason::Additional => "additional",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks `reply` answers `question` (QR set, same id, opcode QUERY, one
/// question with the same name, type and class), follows the CNAME chain
/// from the question name through the answer section (at most
/// [`MAX_CNAME_HOPS`], stopping at a loop), keeps the A/AAAA answers whose
/// owner is on the chain and whose address `keep(owner, addr)` accepts,
/// removes the other A/AAAA answers and every A/AAAA in the additional
/// section, and re-encodes the reply. Everything else (other answer types,
/// authority, EDNS) passes through.
///
/// A truncated reply (TC) is filtered the same way and keeps its TC bit, so
/// a client that uses a truncated answer instead of retrying over TCP (musl
/// before 1.2.4) still gets only filtered addresses. A truncated reply cut
/// mid-record, which cannot be decoded whole, becomes its header and
/// question alone.
pub fn filter_reply(
    question: &Question,
    reply: &[u8],
    keep: impl Fn(&str, IpAddr) -> bool,
) -> Result<(Vec<u8>, Answer), MessageError> {
    let mut message = match Message::from_vec(reply) {
        Ok(message) => message,
        Err(e) => return truncated_remnant(question, reply, e),
    };
    check_reply(question, message.header(), message.queries())?;

    let chain = follow_chain(&question.name, message.answers());
    let mut answer = Answer {
        rcode: rcode_name(message.response_code()),
        truncated: message.truncated(),
        cnames: chain.iter().map(|(target, _)| target.clone()).collect(),
        min_ttl: chain.iter().map(|&(_, ttl)| ttl).min(),
        ..Answer::default()
    };
    let on_chain = |owner: &str| owner == question.name || chain.iter().any(|(target, _)| target == owner);

    message.answers_mut().retain(|record| {
        let Some(addr) = address(record) else { return true };
        let name = name_key(record.name());
        let reason = if !on_chain(&name) {
            Some(DropReason::OffChain)
        } else if !keep(&name, addr) {
            Some(DropReason::Rebinding)
        } else {
            None
        };
        match reason {
            Some(reason) => {
                answer.dropped.push(Dropped { name, addr, reason });
                false
            }
            None => {
                let ttl = record.ttl();
                answer.min_ttl = Some(answer.min_ttl.map_or(ttl, |m| m.min(ttl)));
                answer.addresses.push(Learned { name, addr, ttl });
                true
            }
        }
    });
    message.additionals_mut().retain(|record| {
        let Some(addr) = address(record) else { return true };
        answer.dropped.push(Dropped { name: name_key(record.name()), addr, reason: DropReason::Additional });
        false
    });

    let bytes = message.to_vec().map_err(MessageError::Encode)?;
    Ok((bytes, answer))
}

/// A reply that does not decode whole: if it is truncated and its header
/// and question do decode and match, the header and question alone (TC
/// kept); otherwise the decoding error.
fn truncated_remnant(question: &Question, reply: &[u8], error: ProtoError) -> Result<(Vec<u8>, Answer), MessageError> {
    let mut decoder = BinDecoder::new(reply);
    let Ok(header) = Header::read(&mut decoder) else { return Err(MessageError::Malformed(error)) };
    if !header.truncated() {
        return Err(MessageError::Malformed(error));
    }
    let queries = Message::read_queries(&mut decoder, usize::from(header.query_count()))
        .map_err(|_| MessageError::Malformed(error))?;
    check_reply(question, &header, &queries)?;
    let mut message = Message::new();
    message.set_header(header).add_queries(queries);
    let bytes = message.to_vec().map_err(MessageError::Encode)?;
    let answer = Answer { rcode: rcode_name(header.response_code()), truncated: true, ..Answer::default() };
    Ok((bytes, answer))
}

fn check_reply(question: &Question, header: &Header, queries: &[Query]) -> Result<(), MessageError> {
    if header.message_type() != MessageType::Response {
        return Err(MessageError::NotResponse);
    }
    if header.id() != question.id {
        return Err(MessageError::IdMismatch { expected: question.id, got: header.id() });
    }
    check_op_code(header.op_code())?;
    let got = Question::new(header.id(), single_question(queries)?);
    if got != *question {
        return Err(MessageError::QuestionMismatch { expected: question.describe(), got: got.describe() });
    }
    Ok(())
}

/// The CNAME targets reached from `qname` through `answers`, with each
/// hop's TTL. Stops at a name with no CNAME, at a target already on the
/// chain, or after [`MAX_CNAME_HOPS`].
fn follow_chain(qname: &str, answers: &[Record]) -> Vec<(String, u32)> {
    let mut chain: Vec<(String, u32)> = Vec::new();
    let mut current = qname.to_owned();
    while chain.len() < MAX_CNAME_HOPS {
        let hop = answers.iter().find_map(|r| match r.data() {
            RData::CNAME(target) if name_key(r.name()) == current => Some((name_key(&target.0), r.ttl())),
            _ => None,
        });
        let Some((target, ttl)) = hop else { break };
        if target == qname || chain.iter().any(|(seen, _)| *seen == target) {
            break;
        }
        current.clone_from(&target);
        chain.push((target, ttl));
    }
    chain
}

fn address(record: &Record) -> Option<IpAddr> {
    match record.data() {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
        _ => None,
    }
}

/// A name as the module doc says: lowercased, no trailing dot, odd bytes
/// escaped.
fn name_key(name: &Name) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, label) in name.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        for &b in label {
            let b = b.to_ascii_lowercase();
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*') {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("\\{b:03}"));
            }
        }
    }
    out
}

fn rcode_name(code: ResponseCode) -> String {
    let n = u16::from(code);
    let name = match n {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        16 => "BADVERS",
        23 => "BADCOOKIE",
        _ => return format!("RCODE{n}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        str::FromStr,
    };

    use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};

    use super::*;
    use crate::dns::ranges::InternalRanges;

    fn name(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    fn query_message(id: u16, qname: &str, qtype: RecordType) -> Message {
        let mut m = Message::new();
        m.set_id(id).set_recursion_desired(true).add_query(Query::query(name(qname), qtype));
        m
    }

    fn query(id: u16, qname: &str, qtype: RecordType) -> Vec<u8> {
        query_message(id, qname, qtype).to_vec().unwrap()
    }

    fn reply_message(id: u16, qname: &str, qtype: RecordType, answers: Vec<Record>) -> Message {
        let mut m = query_message(id, qname, qtype);
        m.set_message_type(MessageType::Response).set_recursion_available(true).add_answers(answers);
        m
    }

    fn a(owner: &str, ip: &str, ttl: u32) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A(ip.parse::<Ipv4Addr>().unwrap())))
    }

    fn aaaa(owner: &str, ip: &str, ttl: u32) -> Record {
        Record::from_rdata(name(owner), ttl, RData::AAAA(AAAA(ip.parse::<Ipv6Addr>().unwrap())))
    }

    fn cname(owner: &str, target: &str, ttl: u32) -> Record {
        Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
    }

    fn outside(_: &str, addr: IpAddr) -> bool {
        !InternalRanges::default().contains(addr)
    }

    fn question(id: u16, qname: &str, qtype: RecordType) -> Question {
        parse_query(&query(id, qname, qtype)).unwrap()
    }

    /// The answer section of a re-encoded reply as (owner, data) text.
    fn answers_of(bytes: &[u8]) -> Vec<(String, String)> {
        let m = Message::from_vec(bytes).unwrap();
        m.answers().iter().map(|r| (name_key(r.name()), r.data().to_string())).collect()
    }

    #[test]
    fn query_name_is_lowercased_without_the_dot() {
        let q = question(7, "Allowed.Test.", RecordType::A);
        assert_eq!(q, Question { id: 7, name: "allowed.test".into(), qtype: 1, qclass: 1 });
        assert_eq!(q.type_name(), "A");
        assert_eq!(q.to_string(), "allowed.test A");

        let root = question(8, ".", RecordType::NS);
        assert_eq!(root.name, "");
        assert_eq!(root.to_string(), ". NS");
    }

    #[test]
    fn odd_bytes_in_names_are_escaped() {
        let odd = Name::from_labels(vec![&b"a.b"[..], &b"X y"[..], &b"test"[..]]).unwrap();
        let mut m = Message::new();
        m.add_query(Query::query(odd, RecordType::A));
        let q = parse_query(&m.to_vec().unwrap()).unwrap();
        assert_eq!(q.name, "a\\046b.x\\032y.test");
    }

    #[test]
    fn type_names() {
        let named = |qtype: u16| Question { id: 0, name: String::new(), qtype, qclass: 1 }.type_name();
        assert_eq!(named(1), "A");
        assert_eq!(named(28), "AAAA");
        assert_eq!(named(5), "CNAME");
        assert_eq!(named(16), "TXT");
        assert_eq!(named(65), "HTTPS");
        assert_eq!(named(65280), "TYPE65280");
    }

    #[test]
    fn what_is_not_a_plain_query_is_refused() {
        assert!(matches!(parse_query(b"\x12\x34"), Err(MessageError::Malformed(_))));

        let mut response = query_message(1, "a.test.", RecordType::A);
        response.set_message_type(MessageType::Response);
        assert!(matches!(parse_query(&response.to_vec().unwrap()), Err(MessageError::NotQuery)));

        let mut update = query_message(1, "a.test.", RecordType::A);
        update.set_op_code(OpCode::Update);
        assert!(matches!(parse_query(&update.to_vec().unwrap()), Err(MessageError::OpCode { op_code: 5 })));

        let mut none = Message::new();
        none.set_id(1);
        assert!(matches!(parse_query(&none.to_vec().unwrap()), Err(MessageError::QuestionCount { count: 0 })));

        let mut two = query_message(1, "a.test.", RecordType::A);
        two.add_query(Query::query(name("b.test."), RecordType::A));
        assert!(matches!(parse_query(&two.to_vec().unwrap()), Err(MessageError::QuestionCount { count: 2 })));
    }

    #[test]
    fn refusal_keeps_id_and_question_and_sets_the_code() {
        let bytes = query(0xbeef, "Denied.Test.", RecordType::AAAA);
        for code in [Refusal::Refused, Refusal::NxDomain, Refusal::ServFail] {
            let reply = Message::from_vec(&refusal(&bytes, code).unwrap()).unwrap();
            assert_eq!(reply.id(), 0xbeef);
            assert_eq!(reply.message_type(), MessageType::Response);
            assert_eq!(reply.op_code(), OpCode::Query);
            assert!(reply.recursion_desired());
            assert!(reply.recursion_available());
            assert_eq!(rcode_name(reply.response_code()), code.as_str());
            assert_eq!(reply.queries(), query_message(0, "Denied.Test.", RecordType::AAAA).queries());
            assert!(reply.answers().is_empty() && reply.name_servers().is_empty());
            assert!(reply.additionals().is_empty() && reply.extensions().is_none());
        }

        let mut edns_query = query_message(3, "denied.test.", RecordType::A);
        edns_query.set_recursion_desired(false).set_edns(Edns::new());
        let reply = Message::from_vec(&refusal(&edns_query.to_vec().unwrap(), Refusal::Refused).unwrap()).unwrap();
        assert!(!reply.recursion_desired());
        assert_eq!(reply.extensions().as_ref().map(Edns::max_payload), Some(EDNS_PAYLOAD));

        assert!(refusal(b"junk", Refusal::Refused).is_err());
    }

    #[test]
    fn chain_is_followed_and_only_its_outside_addresses_kept() {
        let q = question(42, "www.a.test.", RecordType::A);
        let mut reply = reply_message(
            42,
            "www.a.test.",
            RecordType::A,
            vec![
                cname("www.a.test.", "cdn.b.test.", 300),
                cname("CDN.b.test.", "edge.c.test.", 120),
                a("edge.c.test.", "93.184.216.34", 60),
                a("other.test.", "93.184.216.35", 60),
                a("Edge.C.Test.", "127.0.0.1", 60),
            ],
        );
        reply.add_name_server(Record::from_rdata(
            name("c.test."),
            900,
            RData::SOA(SOA::new(name("ns.c.test."), name("hostmaster.c.test."), 1, 2, 3, 4, 5)),
        ));
        reply.add_additional(a("ns.c.test.", "192.0.2.53", 900));
        reply.set_edns(Edns::new());

        let (bytes, answer) = filter_reply(&q, &reply.to_vec().unwrap(), outside).unwrap();

        assert_eq!(answer.rcode, "NOERROR");
        assert!(!answer.truncated);
        assert_eq!(answer.cnames, ["cdn.b.test", "edge.c.test"]);
        assert_eq!(
            answer.addresses,
            [Learned { name: "edge.c.test".into(), addr: "93.184.216.34".parse().unwrap(), ttl: 60 }]
        );
        let dropped = |n: &str, ip: &str, reason| Dropped { name: n.into(), addr: ip.parse().unwrap(), reason };
        assert_eq!(
            answer.dropped,
            [
                dropped("other.test", "93.184.216.35", DropReason::OffChain),
                dropped("edge.c.test", "127.0.0.1", DropReason::Rebinding),
                dropped("ns.c.test", "192.0.2.53", DropReason::Additional),
            ]
        );
        assert_eq!(answer.min_ttl, Some(60));

        assert_eq!(
            answers_of(&bytes),
            [
                ("www.a.test".into(), "cdn.b.test.".into()),
                ("cdn.b.test".into(), "edge.c.test.".into()),
                ("edge.c.test".into(), "93.184.216.34".into()),
            ]
        );
        let filtered = Message::from_vec(&bytes).unwrap();
        assert_eq!(filtered.id(), 42);
        assert_eq!(filtered.name_servers().len(), 1, "authority passes through");
        assert!(filtered.additionals().is_empty());
        assert!(filtered.extensions().is_some(), "EDNS passes through");
    }

    #[test]
    fn aaaa_answers_are_filtered_too() {
        let q = question(9, "v6.test.", RecordType::AAAA);
        let reply = reply_message(
            9,
            "V6.test.",
            RecordType::AAAA,
            vec![
                aaaa("v6.test.", "2606:4700::1111", 30),
                aaaa("v6.test.", "::1", 30),
                aaaa("v6.test.", "fd00::1", 30),
                aaaa("v6.test.", "::ffff:169.254.169.254", 30),
            ],
        );
        let (bytes, answer) = filter_reply(&q, &reply.to_vec().unwrap(), outside).unwrap();
        assert_eq!(answer.addresses.len(), 1);
        assert_eq!(answer.addresses[0].addr, "2606:4700::1111".parse::<IpAddr>().unwrap());
        assert!(answer.dropped.iter().all(|d| d.reason == DropReason::Rebinding));
        assert_eq!(answer.dropped.len(), 3);
        assert_eq!(answers_of(&bytes), [("v6.test".into(), "2606:4700::1111".into())]);
    }

    #[test]
    fn keep_sees_the_owner_and_can_allow_private() {
        let q = question(1, "intranet.test.", RecordType::A);
        let reply = reply_message(1, "intranet.test.", RecordType::A, vec![a("intranet.test.", "10.1.2.3", 5)]);
        let (_, answer) = filter_reply(&q, &reply.to_vec().unwrap(), |owner, _| owner == "intranet.test").unwrap();
        assert_eq!(answer.addresses.len(), 1);
        assert_eq!(answer.min_ttl, Some(5));
    }

    #[test]
    fn cname_loops_and_long_chains_end() {
        let q = question(5, "a.test.", RecordType::A);
        let looped = reply_message(
            5,
            "a.test.",
            RecordType::A,
            vec![cname("a.test.", "b.test.", 10), cname("b.test.", "a.test.", 10), a("b.test.", "192.0.2.1", 10)],
        );
        let (_, answer) = filter_reply(&q, &looped.to_vec().unwrap(), outside).unwrap();
        assert_eq!(answer.cnames, ["b.test"]);
        assert_eq!(answer.addresses.len(), 1);

        let q = question(6, "h0.test.", RecordType::A);
        let mut records: Vec<Record> =
            (0..20).map(|i| cname(&format!("h{i}.test."), &format!("h{}.test.", i + 1), 10)).collect();
        records.push(a("h16.test.", "192.0.2.16", 10));
        records.push(a("h20.test.", "192.0.2.20", 10));
        let long = reply_message(6, "h0.test.", RecordType::A, records);
        let (_, answer) = filter_reply(&q, &long.to_vec().unwrap(), outside).unwrap();
        assert_eq!(answer.cnames.len(), MAX_CNAME_HOPS);
        assert_eq!(answer.cnames.last().map(String::as_str), Some("h16.test"));
        assert_eq!(answer.addresses.len(), 1);
        assert_eq!(answer.addresses[0].name, "h16.test");
        assert_eq!(answer.dropped.len(), 1);
        assert_eq!(answer.dropped[0].reason, DropReason::OffChain);
    }

    #[test]
    fn replies_to_another_question_are_errors() {
        let q = question(11, "a.test.", RecordType::A);
        let check = |m: Message| filter_reply(&q, &m.to_vec().unwrap(), outside).unwrap_err();

        assert!(matches!(
            check(reply_message(12, "a.test.", RecordType::A, vec![])),
            MessageError::IdMismatch { expected: 11, got: 12 }
        ));
        let err = check(reply_message(11, "b.test.", RecordType::A, vec![]));
        assert!(matches!(&err, MessageError::QuestionMismatch { expected, got }
            if expected == "a.test A IN" && got == "b.test A IN"));
        assert!(matches!(
            check(reply_message(11, "a.test.", RecordType::AAAA, vec![])),
            MessageError::QuestionMismatch { .. }
        ));
        let mut chaos = reply_message(11, "a.test.", RecordType::A, vec![]);
        chaos.queries_mut()[0].set_query_class(DNSClass::CH);
        assert!(matches!(check(chaos), MessageError::QuestionMismatch { .. }));
        assert!(matches!(check(query_message(11, "a.test.", RecordType::A)), MessageError::NotResponse));
        let mut bare = reply_message(11, "a.test.", RecordType::A, vec![]);
        bare.take_queries();
        assert!(matches!(check(bare), MessageError::QuestionCount { count: 0 }));

        let ok = reply_message(11, "A.TEST.", RecordType::A, vec![]);
        assert!(filter_reply(&q, &ok.to_vec().unwrap(), outside).is_ok(), "case does not matter");
    }

    #[test]
    fn truncated_replies_keep_tc_and_are_still_filtered() {
        let q = question(21, "big.test.", RecordType::A);
        let mut reply = reply_message(
            21,
            "big.test.",
            RecordType::A,
            vec![a("big.test.", "192.0.2.1", 30), a("big.test.", "127.0.0.1", 30)],
        );
        reply.set_truncated(true);
        let (bytes, answer) = filter_reply(&q, &reply.to_vec().unwrap(), outside).unwrap();
        assert!(answer.truncated);
        assert!(Message::from_vec(&bytes).unwrap().truncated());
        assert_eq!(answers_of(&bytes), [("big.test".into(), "192.0.2.1".into())]);

        // Cut inside the second record: only the header and question are left.
        let whole = reply.to_vec().unwrap();
        let cut = &whole[..whole.len() - 2];
        let (bytes, answer) = filter_reply(&q, cut, outside).unwrap();
        assert!(answer.truncated && answer.addresses.is_empty() && answer.dropped.is_empty());
        assert_eq!(answer.rcode, "NOERROR");
        let remnant = Message::from_vec(&bytes).unwrap();
        assert!(remnant.truncated());
        assert_eq!(remnant.id(), 21);
        assert_eq!(remnant.queries(), reply.queries());
        assert!(remnant.answers().is_empty());

        // The same cut without TC is malformed.
        reply.set_truncated(false);
        let whole = reply.to_vec().unwrap();
        assert!(matches!(filter_reply(&q, &whole[..whole.len() - 2], outside), Err(MessageError::Malformed(_))));
    }

    #[test]
    fn rcode_names() {
        assert_eq!(rcode_name(ResponseCode::NXDomain), "NXDOMAIN");
        assert_eq!(rcode_name(ResponseCode::Refused), "REFUSED");
        assert_eq!(rcode_name(ResponseCode::from(0xf0, 1)), "RCODE3841");
    }
}
