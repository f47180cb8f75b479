//! The capture's nftables ruleset, generated from the pod networks and the listener port. Pure:
//! no I/O, so every rule is a unit test.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// tidegate's own nftables table (family and name), the only table it creates or deletes.
pub const TABLE: &str = "ip tidegate";
/// The packet mark that selects tidegate's routing table ("tg" in ASCII). Chosen apart from the
/// marks kube-proxy (0x4000, 0x8000), Calico (0xffff0000) and Cilium (0x0f00) use.
pub const MARK: u32 = 0x7467;
/// The routing table that delivers marked packets to local sockets.
pub const ROUTE_TABLE: u32 = 7467;
/// The transparent listener's port unless `--capture-port` says otherwise.
pub const DEFAULT_PORT: u16 = 15001;
/// The listener for connections addressed to the node itself (NodePorts) unless
/// `--capture-inbound-port` says otherwise.
pub const DEFAULT_INBOUND_PORT: u16 = 15006;
/// The set of Service frontends (virtual address . port) captured from any client.
pub const SERVICES_SET: &str = "services";
/// The set of node ports captured on the node's own addresses.
pub const NODE_PORTS_SET: &str = "node_ports";

/// A pod network (`--pod-cidr`): an IPv4 CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodCidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl PodCidr {
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.network)
    }
}

impl FromStr for PodCidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not a CIDR; write it as ADDRESS/PREFIX, e.g. 10.244.0.0/24"))?;
        let network: Ipv4Addr = ip.parse().map_err(|_| {
            if ip.parse::<std::net::Ipv6Addr>().is_ok() {
                format!("`{s}`: IPv6 pod networks are not captured yet; give the IPv4 pod CIDR")
            } else {
                format!("`{ip}` in `{s}` is not an IPv4 address")
            }
        })?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("`{prefix}` in `{s}` is not a prefix length from 0 to 32"))?;
        let cidr = Self { network, prefix };
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        if u32::from(network) & !mask != 0 {
            let base = Ipv4Addr::from(u32::from(network) & mask);
            return Err(format!("`{s}` has host bits set; did you mean {base}/{prefix}?"));
        }
        Ok(cidr)
    }
}

impl fmt::Display for PodCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// What to capture and where to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturePlan {
    pub pod_cidrs: Vec<PodCidr>,
    /// The transparent listener's port.
    pub port: u16,
    /// The listener for connections to the node's own addresses (NodePorts).
    pub inbound_port: u16,
}

impl CapturePlan {
    /// The ruleset for `nft -f -`. It replaces tidegate's table atomically (creating an empty
    /// one first, so the delete never fails), which makes installing idempotent and also removes
    /// a table a crashed run left behind. The sets start empty; [`sets_ruleset`] fills them from
    /// each configuration version.
    ///
    /// In the prerouting hook, at mangle priority (rules 2 to 4 only for packets not arriving
    /// on loopback and not yet marked):
    /// 1. packets for a local transparent socket (replies to tidegate's upstream sockets, which
    ///    carry a client's address, and the rest of captured connections) get the mark, so the
    ///    policy route delivers them locally instead of forwarding them. A TCP SYN is never
    ///    matched here: a client reusing its port while tidegate's end of the previous
    ///    connection is in TIME_WAIT would hit that TIME_WAIT socket (transparent too), find no
    ///    listener behind it and retransmit a second later; the TPROXY rules below hand such a
    ///    SYN to the listener instead;
    /// 2. new TCP and UDP to a Service frontend (ClusterIP, externalIP, load-balancer IP;
    ///    address, protocol and port), from any client, go to the transparent listeners;
    /// 3. new TCP and UDP to a node port (protocol and port) on one of the node's own
    ///    addresses go to the inbound listeners;
    /// 4. new TCP from the pod networks not addressed to the node itself goes to the
    ///    transparent listener (pod to pod: straight through, with the policy hook).
    ///
    /// Connections tidegate opens leave through the output hook, so they are never captured.
    pub fn ruleset(&self) -> String {
        let sources = self
            .pod_cidrs
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let new = format!("iifname != \"lo\" meta mark != {MARK:#x}");
        format!(
            "table {TABLE} {{}}\n\
             delete table {TABLE}\n\
             table {TABLE} {{\n\
             \tset {SERVICES_SET} {{ type ipv4_addr . inet_proto . inet_service; }}\n\
             \tset {NODE_PORTS_SET} {{ type inet_proto . inet_service; }}\n\
             \tchain prerouting {{\n\
             \t\ttype filter hook prerouting priority mangle; policy accept;\n\
             \t\tmeta l4proto tcp tcp flags & (syn | ack) != syn socket transparent 1 meta mark set {MARK:#x} accept\n\
             \t\tmeta l4proto udp socket transparent 1 meta mark set {MARK:#x} accept\n\
             \t\t{new} meta l4proto tcp ip daddr . meta l4proto . th dport @{SERVICES_SET} \
             tproxy to :{port} meta mark set {MARK:#x} accept\n\
             \t\t{new} meta l4proto udp ip daddr . meta l4proto . th dport @{SERVICES_SET} \
             tproxy to :{port} meta mark set {MARK:#x} accept\n\
             \t\t{new} fib daddr type local meta l4proto tcp meta l4proto . th dport @{NODE_PORTS_SET} \
             tproxy to :{inbound} meta mark set {MARK:#x} accept\n\
             \t\t{new} fib daddr type local meta l4proto udp meta l4proto . th dport @{NODE_PORTS_SET} \
             tproxy to :{inbound} meta mark set {MARK:#x} accept\n\
             \t\t{new} ip saddr {{ {sources} }} fib daddr type != local \
             meta l4proto tcp tproxy to :{port} meta mark set {MARK:#x} accept\n\
             \t}}\n\
             }}\n",
            port = self.port,
            inbound = self.inbound_port,
        )
    }
}

/// A transport protocol of the L4 path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    /// As nftables writes it.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// The ruleset that replaces the contents of the capture's sets, in one transaction: the
/// IPv4 Service frontends and the node ports (each with its protocol) of a configuration
/// version.
pub fn sets_ruleset(services: &[(Transport, std::net::SocketAddrV4)], node_ports: &[(Transport, u16)]) -> String {
    let mut text = format!("flush set {TABLE} {SERVICES_SET}\nflush set {TABLE} {NODE_PORTS_SET}\n");
    if !services.is_empty() {
        let elements: Vec<String> = services
            .iter()
            .map(|(transport, a)| format!("{} . {} . {}", a.ip(), transport.name(), a.port()))
            .collect();
        text.push_str(&format!(
            "add element {TABLE} {SERVICES_SET} {{ {} }}\n",
            elements.join(", ")
        ));
    }
    if !node_ports.is_empty() {
        let elements: Vec<String> = node_ports
            .iter()
            .map(|(transport, port)| format!("{} . {port}", transport.name()))
            .collect();
        text.push_str(&format!(
            "add element {TABLE} {NODE_PORTS_SET} {{ {} }}\n",
            elements.join(", ")
        ));
    }
    text
}

/// The ruleset that removes tidegate's table whether or not it exists.
pub fn removal_ruleset() -> String {
    format!("table {TABLE} {{}}\ndelete table {TABLE}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> PodCidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_pod_cidrs() {
        let c = cidr("10.244.1.0/24");
        assert_eq!((c.network(), c.prefix()), (Ipv4Addr::new(10, 244, 1, 0), 24));
        assert_eq!(c.to_string(), "10.244.1.0/24");
        assert!(c.contains(Ipv4Addr::new(10, 244, 1, 255)));
        assert!(!c.contains(Ipv4Addr::new(10, 244, 2, 0)));
        assert!(cidr("0.0.0.0/0").contains(Ipv4Addr::new(1, 2, 3, 4)));
        assert!(cidr("10.0.0.7/32").contains(Ipv4Addr::new(10, 0, 0, 7)));
        assert!(!cidr("10.0.0.7/32").contains(Ipv4Addr::new(10, 0, 0, 6)));
    }

    #[test]
    fn refuses_bad_cidrs_and_says_how_to_write_them() {
        let err = |s: &str| s.parse::<PodCidr>().unwrap_err();
        assert!(err("10.244.0.0").contains("ADDRESS/PREFIX"));
        assert!(err("10.244.0.0/33").contains("prefix length"));
        assert!(err("10.244.0.5/24").contains("did you mean 10.244.0.0/24"));
        assert!(err("fd00::/64").contains("IPv6"));
        assert!(err("pods/24").contains("not an IPv4 address"));
    }

    #[test]
    fn ruleset_replaces_only_its_own_table() {
        let plan = CapturePlan {
            pod_cidrs: vec![cidr("10.244.0.0/24"), cidr("10.245.0.0/16")],
            port: 15001,
            inbound_port: 15006,
        };
        let text = plan.ruleset();
        assert!(text.starts_with("table ip tidegate {}\ndelete table ip tidegate\ntable ip tidegate {\n"));
        // Every table statement names tidegate's table and no other.
        for line in text
            .lines()
            .filter(|l| l.starts_with("table") || l.starts_with("delete"))
        {
            assert!(line.contains("ip tidegate"), "{line}");
        }
        assert!(!text.contains("flush ruleset"));
        assert_eq!(removal_ruleset(), "table ip tidegate {}\ndelete table ip tidegate\n");
    }

    #[test]
    fn ruleset_marks_transparent_sockets_then_tproxies_pod_tcp() {
        let plan = CapturePlan {
            pod_cidrs: vec![cidr("10.244.0.0/24"), cidr("10.245.0.0/16")],
            port: 15011,
            inbound_port: 15016,
        };
        let text = plan.ruleset();
        let rules: Vec<&str> = text.lines().map(str::trim).collect();
        let socket = rules
            .iter()
            .position(|l| {
                l.starts_with(
                    "meta l4proto tcp tcp flags & (syn | ack) != syn socket transparent 1 meta mark set 0x7467 accept",
                )
            })
            .expect("the transparent-socket rule");
        let tproxy = rules
            .iter()
            .position(|l| l.contains("ip saddr") && l.contains("tproxy to :15011 meta mark set 0x7467 accept"))
            .expect("the tproxy rule");
        assert!(socket < tproxy, "replies must be delivered before anything is captured");
        let capture = rules[tproxy];
        assert!(
            capture.contains("ip saddr { 10.244.0.0/24, 10.245.0.0/16 }"),
            "{capture}"
        );
        assert!(capture.contains("iifname != \"lo\""), "{capture}");
        assert!(capture.contains("meta mark != 0x7467"), "{capture}");
        assert!(capture.contains("fib daddr type != local"), "{capture}");
        assert!(capture.contains("meta l4proto tcp"), "{capture}");
        assert!(text.contains("type filter hook prerouting priority mangle; policy accept;"));
    }

    #[test]
    fn ruleset_captures_service_frontends_from_anyone_and_node_ports_on_the_node() {
        let plan = CapturePlan {
            pod_cidrs: vec![cidr("10.244.0.0/24")],
            port: 15001,
            inbound_port: 15006,
        };
        let text = plan.ruleset();
        assert!(
            text.contains("set services { type ipv4_addr . inet_proto . inet_service; }"),
            "{text}"
        );
        assert!(
            text.contains("set node_ports { type inet_proto . inet_service; }"),
            "{text}"
        );
        let rules: Vec<&str> = text.lines().map(str::trim).collect();
        let at = |needle: &str| {
            rules
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no rule with {needle:?} in\n{text}"))
        };
        let services = rules[at("tcp ip daddr . meta l4proto . th dport @services")];
        assert!(
            services.contains("meta l4proto tcp ip daddr . meta l4proto . th dport @services tproxy to :15001 meta mark set 0x7467 accept"),
            "{services}"
        );
        assert!(!services.contains("saddr"), "any client: {services}");
        let udp = rules[at("udp ip daddr . meta l4proto . th dport @services")];
        assert!(
            udp.contains("meta l4proto udp ip daddr . meta l4proto . th dport @services tproxy to :15001 meta mark set 0x7467 accept"),
            "{udp}"
        );
        assert!(rules.contains(&"meta l4proto udp socket transparent 1 meta mark set 0x7467 accept"));
        let node_ports = rules[at("tcp meta l4proto . th dport @node_ports")];
        assert!(
            node_ports
                .contains("fib daddr type local meta l4proto tcp meta l4proto . th dport @node_ports tproxy to :15006"),
            "{node_ports}"
        );
        let udp_node_ports = rules[at("udp meta l4proto . th dport @node_ports")];
        assert!(
            udp_node_ports
                .contains("fib daddr type local meta l4proto udp meta l4proto . th dport @node_ports tproxy to :15006"),
            "{udp_node_ports}"
        );
        for rule in [services, udp, node_ports, udp_node_ports] {
            assert!(rule.starts_with("iifname != \"lo\" meta mark != 0x7467"), "{rule}");
        }
        assert!(at("socket transparent") < at("@services"));
        assert!(
            at("@node_ports") < at("ip saddr"),
            "node ports before the pod-network rule"
        );
    }

    #[test]
    fn sets_are_replaced_in_one_transaction() {
        let services = [
            (Transport::Tcp, "10.96.0.10:80".parse().unwrap()),
            (Transport::Udp, "10.96.0.10:53".parse().unwrap()),
            (Transport::Tcp, "192.0.2.7:443".parse().unwrap()),
        ];
        assert_eq!(
            sets_ruleset(&services, &[(Transport::Tcp, 30080), (Transport::Udp, 30053)]),
            "flush set ip tidegate services\nflush set ip tidegate node_ports\n\
             add element ip tidegate services { 10.96.0.10 . tcp . 80, 10.96.0.10 . udp . 53, 192.0.2.7 . tcp . 443 }\n\
             add element ip tidegate node_ports { tcp . 30080, udp . 30053 }\n"
        );
        assert_eq!(
            sets_ruleset(&[], &[]),
            "flush set ip tidegate services\nflush set ip tidegate node_ports\n",
            "empty sets: flushed, no empty element list (nft refuses one)"
        );
    }
}
