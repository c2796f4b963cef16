//! Per-worker counters, one per drop reason among them.
//!
//! The worker counts in plain integers (`Counters`) and copies them into its `WorkerStats`
//! atomics once per batch, so the per-packet path has no atomic operations and readers on other
//! threads (metrics, logs) never block the worker.

use crate::accounting::{EndpointCounters, EndpointId};
use crate::snapshot::ServiceKey;
use crate::xsk::SocketStats;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Why a packet was dropped. Every drop has exactly one reason; each is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Shorter than its headers claim.
    Truncated,
    /// Inconsistent header fields.
    Malformed,
    /// Neither IPv4 nor IPv6.
    NotIp,
    /// A later fragment (IPv4 or IPv6) whose first fragment was not seen (or was
    /// forgotten), or an SCTP-over-IPv6 first fragment (its CRC cannot be updated).
    Fragment,
    /// Neither TCP nor UDP.
    UnsupportedProtocol,
    /// No flow matches and the destination is no service (e.g. a reply after the flow expired).
    NoFlowNoService,
    /// A TCP packet without SYN for a flow we do not know: not allowed to create state.
    TcpNotSyn,
    /// The service has no endpoint to choose.
    NoEndpoint,
    /// The connection table is full.
    ConntrackFull,
    /// Another flow already owns this tuple.
    TupleCollision,
    /// The TX ring was full.
    TxRingFull,
    /// Handing the packet to the kernel (unresolved neighbour) failed.
    KernelTxFailed,
    /// One-arm: no route (so no own address) toward the chosen endpoint.
    NoSourceAddress,
    /// Every source port of this worker for the SNAT address is in use.
    SnatPortsExhausted,
    /// DSR needs the endpoint's MAC, and it is not resolved yet (the kernel cannot send a
    /// packet addressed to the VIP for us).
    NextHopUnresolved,
    /// ICMP or ICMPv6 to a VIP that is neither an echo request nor an error quoting enough of
    /// a TCP, UDP or SCTP packet to be translated.
    IcmpNotEcho,
    /// The source is not in the service's allowed sources.
    SourceNotAllowed,
    /// The service refuses new flows (loxilb's `block`).
    ServiceBlocked,
    /// The flow's owning worker had no room for more frames from this one.
    HandoffRingFull,
    /// A frame handed over by another worker found no free frame in this worker's pool.
    NoFreeFrame,
    /// Bigger than the egress interface's MTU without DF: it would need fragmenting, which
    /// the workers do not do (senders on the paths oxlb serves set DF: PMTU discovery).
    TooBigToForward,
    /// An SCTP packet other than INIT for an association we do not know.
    SctpNotInit,
    /// The flow's addresses mix families in a way no mode translates (an IPv4 service with
    /// an IPv6 endpoint: the control plane refuses those rules).
    AddressFamily,
    /// An IPv6 routing header with segments left: the packet is not at its final
    /// destination, so the transport checksum covers an address we would not rewrite.
    RoutingSegmentsLeft,
    /// NAT64 of an IPv6 packet with extension headers: IPv4 has no place for them, and
    /// dropping options a sender chose to send would change the packet's meaning.
    Nat64ExtensionHeaders,
    /// An ICMPv6 error whose quote ends inside the quoted packet's extension headers, before
    /// the ports that would tell whose flow it is about.
    IcmpQuoteTruncated,
    /// An ICMPv6 error about a NAT64 flow that RFC 7915 section 5.2 gives no ICMPv4
    /// counterpart (unknown types and codes, a parameter problem pointing at a field IPv4
    /// lacks): its IPv4 endpoint cannot be told.
    IcmpUntranslatable,
    /// A packet from an endpoint a health probe marked down, on a flow of a service whose
    /// flows end when their endpoint goes down (`onEndpointDown: reset`); the client side's
    /// next packet ends the flow.
    EndpointDown,
}

impl DropReason {
    pub const ALL: [DropReason; 28] = [
        DropReason::Truncated,
        DropReason::Malformed,
        DropReason::NotIp,
        DropReason::Fragment,
        DropReason::UnsupportedProtocol,
        DropReason::NoFlowNoService,
        DropReason::TcpNotSyn,
        DropReason::NoEndpoint,
        DropReason::ConntrackFull,
        DropReason::TupleCollision,
        DropReason::TxRingFull,
        DropReason::KernelTxFailed,
        DropReason::NoSourceAddress,
        DropReason::SnatPortsExhausted,
        DropReason::NextHopUnresolved,
        DropReason::IcmpNotEcho,
        DropReason::SourceNotAllowed,
        DropReason::ServiceBlocked,
        DropReason::HandoffRingFull,
        DropReason::NoFreeFrame,
        DropReason::TooBigToForward,
        DropReason::SctpNotInit,
        DropReason::AddressFamily,
        DropReason::RoutingSegmentsLeft,
        DropReason::Nat64ExtensionHeaders,
        DropReason::IcmpQuoteTruncated,
        DropReason::IcmpUntranslatable,
        DropReason::EndpointDown,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Malformed => "malformed",
            DropReason::NotIp => "not_ip",
            DropReason::Fragment => "fragment",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::NoFlowNoService => "no_flow_no_service",
            DropReason::TcpNotSyn => "tcp_not_syn",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::ConntrackFull => "conntrack_full",
            DropReason::TupleCollision => "tuple_collision",
            DropReason::TxRingFull => "tx_ring_full",
            DropReason::KernelTxFailed => "kernel_tx_failed",
            DropReason::NoSourceAddress => "no_source_address",
            DropReason::SnatPortsExhausted => "snat_ports_exhausted",
            DropReason::NextHopUnresolved => "next_hop_unresolved",
            DropReason::IcmpNotEcho => "icmp_not_echo",
            DropReason::SourceNotAllowed => "source_not_allowed",
            DropReason::ServiceBlocked => "service_blocked",
            DropReason::HandoffRingFull => "handoff_ring_full",
            DropReason::NoFreeFrame => "no_free_frame",
            DropReason::TooBigToForward => "too_big_to_forward",
            DropReason::SctpNotInit => "sctp_not_init",
            DropReason::AddressFamily => "address_family",
            DropReason::RoutingSegmentsLeft => "routing_segments_left",
            DropReason::Nat64ExtensionHeaders => "nat64_extension_headers",
            DropReason::IcmpQuoteTruncated => "icmp_quote_truncated",
            DropReason::IcmpUntranslatable => "icmp_untranslatable",
            DropReason::EndpointDown => "endpoint_down",
        }
    }
}

/// How full the RX batches a worker reads are: a batch of 64 (the ring's batch size) means
/// the worker is behind, small batches that it keeps up. Empty reads are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchSizes {
    /// Batches of at most `BATCH_BOUNDS[i]` frames (and more than the previous bound).
    pub buckets: [u64; BATCH_BOUNDS.len()],
    /// Frames in all batches counted.
    pub frames: u64,
}

/// Upper bounds of the batch-size buckets; the last is the largest batch a read returns.
pub const BATCH_BOUNDS: [usize; 7] = [1, 3, 7, 15, 31, 63, 64];

impl BatchSizes {
    pub fn record(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let i = BATCH_BOUNDS
            .iter()
            .position(|&b| n <= b)
            .unwrap_or(BATCH_BOUNDS.len() - 1);
        self.buckets[i] += 1;
        self.frames += n as u64;
    }

    pub fn add(&mut self, o: &BatchSizes) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a += b;
        }
        self.frames += o.frames;
    }
}

/// A worker's counters, owned and written by that worker only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Packets handed to the kernel because their next hop's MAC was not known yet.
    pub kernel_packets: u64,
    pub flows_created: u64,
    pub flows_expired: u64,
    /// Established flows ended at their client's next packet because a health probe marked
    /// their endpoint down (`onEndpointDown: reset`).
    pub flows_ended_endpoint_down: u64,
    /// Embryonic flows (handshake not completed, UDP not answered) removed from a full
    /// connection table to make room for a new flow; established flows are never evicted.
    pub flows_evicted: u64,
    pub flows_active: u64,
    /// Echo requests to a VIP answered.
    pub icmp_echo_replies: u64,
    /// Frames received here and passed to the worker that owns their flow (counted in that
    /// worker's `rx_packets`, not in this one's).
    pub handed_off: u64,
    /// ICMP errors about our flows rewritten for the host they concern.
    pub icmp_errors_translated: u64,
    /// "Fragmentation needed" (ICMPv6 "packet too big") sent to senders of packets too big
    /// for their egress link.
    pub frag_needed_sent: u64,
    /// Later fragments (IPv4 or IPv6) sent the way their datagram's first fragment went.
    pub fragments_followed: u64,
    /// Sizes of the RX batches read from the sockets.
    pub rx_batches: BatchSizes,
    pub drops: [u64; DropReason::COUNT],
    /// What the kernel dropped at this worker's sockets (read about once a second).
    pub sockets: SocketStats,
}

impl Counters {
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Adds another worker's counters (for totals).
    pub fn add(&mut self, o: &Counters) {
        self.rx_packets += o.rx_packets;
        self.tx_packets += o.tx_packets;
        self.kernel_packets += o.kernel_packets;
        self.flows_created += o.flows_created;
        self.flows_expired += o.flows_expired;
        self.flows_ended_endpoint_down += o.flows_ended_endpoint_down;
        self.flows_evicted += o.flows_evicted;
        self.flows_active += o.flows_active;
        self.icmp_echo_replies += o.icmp_echo_replies;
        self.handed_off += o.handed_off;
        self.icmp_errors_translated += o.icmp_errors_translated;
        self.frag_needed_sent += o.frag_needed_sent;
        self.fragments_followed += o.fragments_followed;
        self.rx_batches.add(&o.rx_batches);
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
        self.sockets.rx_dropped += o.sockets.rx_dropped;
        self.sockets.rx_ring_full += o.sockets.rx_ring_full;
        self.sockets.fill_ring_empty += o.sockets.fill_ring_empty;
        self.sockets.invalid_descs += o.sockets.invalid_descs;
    }
}

/// The published copy of a worker's counters, readable from any thread.
#[derive(Debug, Default)]
pub struct WorkerStats {
    rx_packets: AtomicU64,
    tx_packets: AtomicU64,
    kernel_packets: AtomicU64,
    flows_created: AtomicU64,
    flows_expired: AtomicU64,
    flows_ended_endpoint_down: AtomicU64,
    flows_evicted: AtomicU64,
    flows_active: AtomicU64,
    icmp_echo_replies: AtomicU64,
    handed_off: AtomicU64,
    icmp_errors_translated: AtomicU64,
    frag_needed_sent: AtomicU64,
    fragments_followed: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
    /// Written once a second at most, so a lock costs nothing that matters.
    sockets: Mutex<SocketStats>,
    rx_batches: [AtomicU64; BATCH_BOUNDS.len()],
    rx_batch_frames: AtomicU64,
    /// Per service and endpoint, written once a second like `sockets`.
    endpoints: Mutex<Vec<(ServiceKey, EndpointId, EndpointCounters)>>,
}

impl WorkerStats {
    /// Called by the owning worker only; relaxed stores are enough for monotonic counters
    /// read for reporting.
    pub fn publish(&self, c: &Counters) {
        self.rx_packets.store(c.rx_packets, Ordering::Relaxed);
        self.tx_packets.store(c.tx_packets, Ordering::Relaxed);
        self.kernel_packets
            .store(c.kernel_packets, Ordering::Relaxed);
        self.flows_created.store(c.flows_created, Ordering::Relaxed);
        self.flows_expired.store(c.flows_expired, Ordering::Relaxed);
        self.flows_ended_endpoint_down
            .store(c.flows_ended_endpoint_down, Ordering::Relaxed);
        self.flows_evicted.store(c.flows_evicted, Ordering::Relaxed);
        self.flows_active.store(c.flows_active, Ordering::Relaxed);
        self.icmp_echo_replies
            .store(c.icmp_echo_replies, Ordering::Relaxed);
        self.handed_off.store(c.handed_off, Ordering::Relaxed);
        self.icmp_errors_translated
            .store(c.icmp_errors_translated, Ordering::Relaxed);
        self.frag_needed_sent
            .store(c.frag_needed_sent, Ordering::Relaxed);
        self.fragments_followed
            .store(c.fragments_followed, Ordering::Relaxed);
        for (a, v) in self.rx_batches.iter().zip(c.rx_batches.buckets.iter()) {
            a.store(*v, Ordering::Relaxed);
        }
        self.rx_batch_frames
            .store(c.rx_batches.frames, Ordering::Relaxed);
        for (a, v) in self.drops.iter().zip(c.drops.iter()) {
            a.store(*v, Ordering::Relaxed);
        }
        if let Ok(mut s) = self.sockets.try_lock() {
            *s = c.sockets;
        }
    }

    /// Replaces the published per-endpoint counters (the owning worker, once a second).
    pub fn publish_endpoints(&self, e: Vec<(ServiceKey, EndpointId, EndpointCounters)>) {
        if let Ok(mut slot) = self.endpoints.lock() {
            *slot = e;
        }
    }

    /// The per-endpoint counters as last published.
    pub fn read_endpoints(&self) -> Vec<(ServiceKey, EndpointId, EndpointCounters)> {
        self.endpoints.lock().map(|e| e.clone()).unwrap_or_default()
    }

    pub fn read(&self) -> Counters {
        let mut drops = [0; DropReason::COUNT];
        for (d, a) in drops.iter_mut().zip(self.drops.iter()) {
            *d = a.load(Ordering::Relaxed);
        }
        Counters {
            rx_packets: self.rx_packets.load(Ordering::Relaxed),
            tx_packets: self.tx_packets.load(Ordering::Relaxed),
            kernel_packets: self.kernel_packets.load(Ordering::Relaxed),
            flows_created: self.flows_created.load(Ordering::Relaxed),
            flows_expired: self.flows_expired.load(Ordering::Relaxed),
            flows_ended_endpoint_down: self.flows_ended_endpoint_down.load(Ordering::Relaxed),
            flows_evicted: self.flows_evicted.load(Ordering::Relaxed),
            flows_active: self.flows_active.load(Ordering::Relaxed),
            icmp_echo_replies: self.icmp_echo_replies.load(Ordering::Relaxed),
            handed_off: self.handed_off.load(Ordering::Relaxed),
            icmp_errors_translated: self.icmp_errors_translated.load(Ordering::Relaxed),
            frag_needed_sent: self.frag_needed_sent.load(Ordering::Relaxed),
            fragments_followed: self.fragments_followed.load(Ordering::Relaxed),
            rx_batches: BatchSizes {
                buckets: std::array::from_fn(|i| self.rx_batches[i].load(Ordering::Relaxed)),
                frames: self.rx_batch_frames.load(Ordering::Relaxed),
            },
            drops,
            sockets: self.sockets.lock().map(|s| *s).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_land_in_the_bucket_of_their_upper_bound_and_empty_reads_are_not_counted() {
        let mut b = BatchSizes::default();
        for n in [0, 1, 2, 3, 4, 63, 64] {
            b.record(n);
        }
        assert_eq!(b.buckets, [1, 2, 1, 0, 0, 1, 1]);
        assert_eq!(b.frames, 1 + 2 + 3 + 4 + 63 + 64);
    }

    #[test]
    fn every_drop_reason_has_its_own_slot_and_label() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let mut labels: Vec<_> = DropReason::ALL.iter().map(|r| r.label()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::COUNT);
    }
}
