//! UDP to Service frontends on the captured L4 path, forwarded per flow as kube-proxy's
//! conntrack entries would carry it.
//!
//! The capture sends UDP addressed to a Service frontend (and, to a second socket, UDP to a
//! node port) to a transparent socket with IP_RECVORIGDSTADDR, which reads each datagram's
//! original destination. The first datagram of
//! a flow (client address and port → frontend) picks an endpoint and opens two sockets:
//! - the client side, bound (IP_TRANSPARENT) to the frontend's address and port and connected
//!   to the client: replies leave from the address the client sent to, and the capture's
//!   `socket transparent` rule delivers the client's next datagrams straight to it;
//! - the endpoint side, connected to the endpoint, bound to the client's address and port
//!   when the replies come back through this node (as for TCP; see [`super::pick`]).
//!
//! A flow ends after [`UNREPLIED_TIMEOUT`] without a datagram, or [`STREAM_TIMEOUT`] once
//! datagrams have gone both ways for a while (conntrack's UDP timeouts), and at once when a
//! configuration version removes its endpoint from the frontend. A frontend with no
//! endpoint drops the datagram (kube-proxy answers ICMP port unreachable; a user-space socket
//! cannot).

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::published::Published;
use super::tcp::{Entry, L4State};
use crate::metrics::UdpOutcome;

/// A flow that has only gone one way ends after this long without a datagram.
pub const UNREPLIED_TIMEOUT: Duration = Duration::from_secs(30);
/// A flow that has gone both ways for [`STREAM_AFTER`] ends after this long without one.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(120);
const STREAM_AFTER: Duration = Duration::from_secs(2);
/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;
/// Datagrams of a new flow queued while its sockets are being set up; more are dropped.
const FLOW_QUEUE: usize = 64;
/// Ended flows are swept from the table once it holds this many.
const SWEEP_AT: usize = 1024;

/// Binds the transparent UDP socket the capture sends Service datagrams to.
pub fn bind_transparent(port: u16) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_ip_transparent_v4(true)?;
    socket.set_reuse_address(true)?;
    super::sockopt::enable_ip_option(&socket, libc::IP_RECVORIGDSTADDR)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port).into())?;
    Ok(socket.into())
}

/// One datagram: (length, client, original destination).
fn recv_with_destination(fd: i32, buf: &mut [u8]) -> io::Result<(usize, SocketAddrV4, SocketAddrV4)> {
    let mut source = MaybeUninit::<libc::sockaddr_in>::zeroed();
    // u64s: the control buffer must be aligned for cmsghdr.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = source.as_mut_ptr().cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: fd is a socket; msg points at live buffers of the lengths given.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: recvmsg filled the name (an IPv4 socket's peer is a sockaddr_in).
    let source = unsafe { source.assume_init() };
    let client = from_sockaddr(&source);
    let mut original = None;
    // SAFETY: walking the control messages recvmsg wrote, with the libc macros.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_IP && (*cmsg).cmsg_type == libc::IP_ORIGDSTADDR {
                let addr = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::sockaddr_in>());
                original = Some(from_sockaddr(&addr));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let original = original.ok_or_else(|| io::Error::other("a datagram without its original destination"))?;
    Ok((n as usize, client, original))
}

fn from_sockaddr(addr: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    )
}

/// Serves the transparent UDP socket until the process exits.
pub(super) async fn serve(
    socket: std::net::UdpSocket,
    entry: Entry,
    rx: watch::Receiver<Arc<Published>>,
    shared: Arc<L4State>,
) {
    let (picker, metrics) = (&shared.picker, &shared.metrics);
    let socket = match UdpSocket::from_std(socket) {
        Ok(socket) => socket,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve the transparent UDP socket");
            return;
        }
    };
    let fd = socket.as_raw_fd();
    let mut flows: HashMap<(SocketAddrV4, SocketAddrV4), mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = socket
            .async_io(Interest::READABLE, || recv_with_destination(fd, &mut buf))
            .await;
        let (n, client, original) = match received {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive failed");
                continue;
            }
        };
        let datagram = buf[..n].to_vec();
        let key = (client, original);
        if let Some(flow) = flows.get(&key).filter(|f| !f.is_closed()) {
            // A full queue drops the datagram, as a full socket buffer would.
            let _ = flow.try_send(datagram);
            continue;
        }
        if flows.len() >= SWEEP_AT {
            flows.retain(|_, f| !f.is_closed());
        }
        let snapshot = rx.borrow().snapshot.clone();
        let services = &snapshot.services;
        let frontend = match entry {
            Entry::Outbound => services.udp_by_address.get(&SocketAddr::V4(original)),
            Entry::Inbound => services.udp_node_ports.get(&original.port()),
        };
        let Some(frontend) = frontend.cloned() else {
            tracing::debug!(%client, %original, "UDP to no Service port: dropped");
            metrics.udp_flow(UdpOutcome::NoSuchPort);
            continue;
        };
        let from_pod = picker.is_local_pod(IpAddr::V4(*client.ip()));
        let endpoints = frontend.endpoints_for(from_pod);
        let Some(endpoint) = picker
            .order(&frontend, IpAddr::V4(*client.ip()), endpoints)
            .first()
            .copied()
        else {
            tracing::debug!(%client, %original, cluster = frontend.cluster, "no endpoint: UDP dropped");
            metrics.udp_flow(UdpOutcome::NoEndpoint);
            continue;
        };
        let keep_source = picker.keep_source(&endpoint, from_pod, IpAddr::V4(*client.ip()));
        let sockets = open_flow(client, original, endpoint.addr, keep_source);
        let (downstream, upstream) = match sockets {
            Ok(sockets) => sockets,
            Err(e) => {
                tracing::warn!(%client, %original, endpoint = %endpoint.addr, error = %e, "cannot open a UDP flow");
                metrics.udp_flow(UdpOutcome::Failed);
                continue;
            }
        };
        picker.chosen(&frontend, IpAddr::V4(*client.ip()), endpoint.addr);
        metrics.udp_flow(UdpOutcome::Opened);
        tracing::debug!(%client, %original, endpoint = %endpoint.addr, keep_source, "UDP flow");
        let (tx, inbox) = mpsc::channel(FLOW_QUEUE);
        let _ = tx.try_send(datagram);
        flows.insert(key, tx);
        let route = FlowRoute {
            entry,
            original,
            endpoint: endpoint.addr,
        };
        tokio::spawn(relay(downstream, upstream, inbox, rx.clone(), route));
    }
}

/// Where a flow was sent: it ends when a configuration version no longer has that endpoint
/// behind that frontend, so the client's next datagram starts a flow to a current endpoint
/// (as kube-proxy clears a removed endpoint's UDP conntrack entries: a DNS client must not
/// keep sending to a pod that is gone).
#[derive(Debug, Clone, Copy)]
struct FlowRoute {
    entry: Entry,
    original: SocketAddrV4,
    endpoint: SocketAddr,
}

impl FlowRoute {
    fn still_valid(&self, snapshot: &crate::snapshot::Snapshot) -> bool {
        let services = &snapshot.services;
        let frontend = match self.entry {
            Entry::Outbound => services.udp_by_address.get(&SocketAddr::V4(self.original)),
            Entry::Inbound => services.udp_node_ports.get(&self.original.port()),
        };
        frontend.is_some_and(|f| {
            f.from_pods
                .iter()
                .chain(&f.from_outside)
                .any(|e| e.addr == self.endpoint)
        })
    }
}

/// The flow's two sockets: the client side (from the frontend's address, to the client) and
/// the endpoint side.
fn open_flow(
    client: SocketAddrV4,
    original: SocketAddrV4,
    endpoint: SocketAddr,
    keep_source: bool,
) -> io::Result<(UdpSocket, UdpSocket)> {
    let downstream = transparent_udp()?;
    downstream.bind(&SocketAddr::V4(original).into())?;
    downstream.connect(&SocketAddr::V4(client).into())?;
    let upstream = transparent_udp()?;
    if keep_source {
        // The client's own port when free (the endpoint sees exactly the client), else any.
        if upstream.bind(&SocketAddr::V4(client).into()).is_err() {
            upstream.bind(&SocketAddr::new(IpAddr::V4(*client.ip()), 0).into())?;
        }
    }
    upstream.connect(&endpoint.into())?;
    Ok((
        UdpSocket::from_std(downstream.into())?,
        UdpSocket::from_std(upstream.into())?,
    ))
}

fn transparent_udp() -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_ip_transparent_v4(true)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Carries one flow's datagrams both ways until it has been idle for its timeout.
async fn relay(
    downstream: UdpSocket,
    upstream: UdpSocket,
    mut inbox: mpsc::Receiver<Vec<u8>>,
    mut versions: watch::Receiver<Arc<Published>>,
    route: FlowRoute,
) {
    let started = Instant::now();
    let mut replied = false;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut deadline = Instant::now() + UNREPLIED_TIMEOUT;
    loop {
        tokio::select! {
            // Datagrams that reached the shared socket before this flow's own did.
            Some(datagram) = inbox.recv() => {
                let _ = upstream.send(&datagram).await;
            }
            ready = downstream.readable() => {
                if ready.is_err() {
                    break;
                }
                // Errors (an ICMP error queued on the socket) are not the end of a UDP flow.
                match downstream.try_recv(&mut buf) {
                    Ok(n) => {
                        let _ = upstream.send(&buf[..n]).await;
                    }
                    Err(_) => continue,
                }
            }
            ready = upstream.readable() => {
                if ready.is_err() {
                    break;
                }
                match upstream.try_recv(&mut buf) {
                    Ok(n) => {
                        replied = true;
                        let _ = downstream.send(&buf[..n]).await;
                    }
                    Err(_) => continue,
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
            changed = versions.changed() => {
                if changed.is_err() {
                    break;
                }
                let valid = route.still_valid(&versions.borrow_and_update().snapshot);
                if !valid {
                    tracing::debug!(endpoint = %route.endpoint, original = %route.original, "UDP flow ended: its endpoint is gone");
                    break;
                }
                continue;
            }
        }
        let stream = replied && started.elapsed() >= STREAM_AFTER;
        deadline = Instant::now() + if stream { STREAM_TIMEOUT } else { UNREPLIED_TIMEOUT };
    }
}
