//! The built-in defaults: where the daemon's files, sockets and pins live
//! and how large its buffers are, in one place for the flags (`cli`) and
//! the configuration file (`config`) alike.

pub const DEFAULT_CONFIG_FILE: &str = "/etc/agent-monitor/config.yaml";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/agent-monitor/control.sock";
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9617";
pub const DEFAULT_CGROUP_PARENT: &str = "agent-monitor";
pub const DEFAULT_RINGBUF_BYTES: u32 = 16 << 20;
pub const DEFAULT_POLICY_DIR: &str = "/etc/agent-monitor/policies";
pub const DEFAULT_POLICY: &str = "default";
pub const DEFAULT_EVENTS_KEEP: u32 = 5;
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/agent-monitor";
pub const DEFAULT_STATE_DIR: &str = "/run/agent-monitor/state";

/// Where the DNS egress resolver listens: loopback, any free port.
pub const DEFAULT_DNS_LISTEN: &str = "127.0.0.1:0";
/// Added to an answer's TTL for how long its addresses stay allowed.
pub const DEFAULT_DNS_TTL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
pub const DEFAULT_DNS_TTL_MIN: std::time::Duration = std::time::Duration::from_secs(1);
pub const DEFAULT_DNS_TTL_MAX: std::time::Duration = std::time::Duration::from_secs(3600);
/// Second octet of the loopback `/16` redirected DNS sockets are bound in
/// (`127.53.0.0/16`): the low 16 bits name the slot that says who asked.
pub const DNS_CLIENT_NET: u8 = 53;
