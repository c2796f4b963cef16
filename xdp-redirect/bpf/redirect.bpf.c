// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
//
// oxlb_redirect: steers load-balancer traffic into AF_XDP sockets and leaves
// everything else (ARP, ND, ICMP, SSH, the API, routing protocols) to the kernel.
//
// A packet is load-balancer traffic when its (dst addr, dst port, proto) is a
// VIP in lb_dst, or its destination is one of our own addresses in lb_snat with
// a port in that entry's range (replies in one-arm and full-NAT modes), or its
// (src addr, src port, proto) is a known endpoint in lb_src (replies in DNAT
// mode), or it is an ICMPv6 echo request to a VIP (key: VIP, port 0, proto
// 58), or an ICMP or ICMPv6 error quoting a packet of ours (see
// quotes_our_request and quotes_our_packet6); every other ICMPv6 message
// (neighbour discovery, router advertisements, errors about the host's own
// connections) is the kernel's. A packet to one of our own addresses outside the
// range is the host's own connection (a health probe's answer, an operator's
// session with a backend) and goes to the kernel even when it comes from an
// endpoint's port. IPv6 extension headers are walked to the ports behind them
// (skip_ext6); later fragments, IPv4 or IPv6, have none and follow their
// datagram by address (later_fragment_is_ours, later_fragment6_is_ours).
// The userspace loader (src/lib.rs) writes the maps and mirrors struct lb_key
// byte for byte; change them together.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/icmp.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_QUEUES_PER_IFACE 64
#define MAX_IFACES 4
#define KEY_FAMILY_V4 4
#define KEY_FAMILY_V6 6

// Fragment offset and "more fragments" bits of iphdr.frag_off.
#define IP_OFFSET_MASK 0x1fff
// linux/icmpv6.h would pull in more than these few values.
#define ICMPV6_ECHO_REQUEST_TYPE 128
// The ICMPv6 errors that quote a packet: destination unreachable (1), packet
// too big (2), time exceeded (3), parameter problem (4).
#define ICMPV6_FIRST_ERROR_TYPE 1
#define ICMPV6_LAST_ERROR_TYPE 4
#define ICMPV6_HEADER_LEN 8
// IPv6 extension headers walked to reach the transport header. More than a
// few is not traffic a load balancer serves; the bound also keeps the
// verifier's unrolled walk short. Such a packet goes to the kernel.
#define IPV6_MAX_EXT_HEADERS 4
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_DEST 60
// Fragment offset bits of the IPv6 fragment header's frag_off (host order).
#define IPV6_FRAG_OFFSET_MASK 0xfff8

// The first two bytes of a hop-by-hop, routing or destination options header;
// its length is (hdrlen + 1) * 8 bytes.
struct ext6_hdr {
	__u8 nexthdr;
	__u8 hdrlen;
};

struct frag6_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 id;
};

struct lb_key {
	__u8 addr[16]; // IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d)
	__be16 port;
	__u8 proto;
	__u8 family;
};
_Static_assert(sizeof(struct lb_key) == 20, "lb_key must stay 20 bytes without padding");

enum stat_index {
	STAT_REDIRECTED = 0,
	STAT_PASSED = 1,
	STAT_NO_SOCKET = 2,
	STAT_NOT_PARSED = 3,
	STAT_MAX = 4,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct lb_key);
	__type(value, __u32);
} lb_dst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct lb_key);
	__type(value, __u32);
} lb_src SEC(".maps");

// Our own addresses: those source-translated flows (one-arm, full NAT) use and
// those the host talks to endpoints from. Key with port 0, value (first << 16 |
// last), the port range replies come back to. Other ports on these addresses
// (SSH, the API, BGP, the host's own connections) stay with the kernel; the
// range is reserved from the kernel's ephemeral ports, so they never collide.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct lb_key);
	__type(value, __u32);
} lb_snat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_IFACES);
	__type(key, __u32);
	__type(value, __u32);
} iface_slot SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_IFACES * MAX_QUEUES_PER_IFACE);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *counter = bpf_map_lookup_elem(&stats, &index);

	if (counter)
		*counter += 1;
}

static __always_inline int pass(__u32 reason)
{
	count(reason);
	return XDP_PASS;
}

static __always_inline void set_v4(__u8 addr[16], __be32 v4)
{
	__builtin_memset(addr, 0, 10);
	addr[10] = 0xff;
	addr[11] = 0xff;
	__builtin_memcpy(&addr[12], &v4, 4);
}

// Reads the L4 ports of TCP or UDP at l4. Returns 0 on success, -1 when the
// protocol has no ports we know or the header is truncated.
static __always_inline int read_ports(void *l4, void *data_end, __u8 proto,
				      __be16 *sport, __be16 *dport)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > data_end)
			return -1;
		*sport = tcp->source;
		*dport = tcp->dest;
		return 0;
	}
	if (proto == IPPROTO_UDP) {
		struct udphdr *udp = l4;

		if ((void *)(udp + 1) > data_end)
			return -1;
		*sport = udp->source;
		*dport = udp->dest;
		return 0;
	}
	// SCTP's common header starts with the two ports, as UDP's does.
	if (proto == IPPROTO_SCTP) {
		__be16 *ports = l4;

		if ((void *)(ports + 2) > data_end)
			return -1;
		*sport = ports[0];
		*dport = ports[1];
		return 0;
	}
	// ICMP to a VIP (echo, and errors about its flows) is matched with port 0.
	if (proto == IPPROTO_ICMP) {
		*sport = 0;
		*dport = 0;
		return 0;
	}
	return -1;
}

enum own_verdict {
	NOT_OURS = 0,
	OURS_IN_RANGE = 1,
	OURS_OUTSIDE_RANGE = 2,
};

// Whether dst's address is one of ours, and if so whether dport lies in the
// port range translated replies use. Restores dst->port.
static __always_inline enum own_verdict own_address(struct lb_key *dst, __be16 dport)
{
	__u32 *range;
	__u16 port = bpf_ntohs(dport);

	dst->port = 0;
	range = bpf_map_lookup_elem(&lb_snat, dst);
	dst->port = dport;
	if (!range)
		return NOT_OURS;
	if (port >= (*range >> 16) && port <= (*range & 0xffff))
		return OURS_IN_RANGE;
	return OURS_OUTSIDE_RANGE;
}

// True for an ICMP error (unreachable, time exceeded, parameter problem) that
// quotes a packet of ours on its way to an endpoint: from our own address and a
// port of the SNAT range (one-arm, full NAT), or to an endpoint's port (DNAT).
// The error is addressed to the client or to our own address, so no other key
// catches it; the workers translate it for the host it is meant for.
static __always_inline int quotes_our_request(struct icmphdr *icmp, void *data_end)
{
	struct iphdr *quoted = (void *)(icmp + 1);
	struct lb_key key = {};
	__be16 *ports;

	if ((void *)(icmp + 1) > data_end)
		return 0;
	if (icmp->type != ICMP_DEST_UNREACH && icmp->type != ICMP_TIME_EXCEEDED &&
	    icmp->type != ICMP_PARAMETERPROB)
		return 0;
	if ((void *)(quoted + 1) > data_end || quoted->ihl != 5)
		return 0;
	ports = (void *)(quoted + 1);
	if ((void *)(ports + 2) > data_end)
		return 0;
	if (quoted->protocol != IPPROTO_TCP && quoted->protocol != IPPROTO_UDP &&
	    quoted->protocol != IPPROTO_SCTP)
		return 0;
	key.family = KEY_FAMILY_V4;
	key.proto = quoted->protocol;
	set_v4(key.addr, quoted->saddr);
	if (own_address(&key, ports[0]) == OURS_IN_RANGE)
		return 1;
	set_v4(key.addr, quoted->daddr);
	key.port = ports[1];
	return bpf_map_lookup_elem(&lb_src, &key) != 0;
}

// True for an ICMPv6 error (l4 points at its header) quoting a packet of ours:
// a reply we sent from a VIP's service port (the error comes from the
// client's side), a request we sent from our own address and a port of the
// SNAT range (one-arm, full NAT), or one to an endpoint's port (DNAT). An
// ICMPv6 error is addressed to the client, the VIP or our own address and
// never carries ports of its own, so only its quote tells whether it is ours;
// the workers translate it for the host it is meant for. The quoted packet's
// extension headers are walked to its ports as a packet's own are (skip_ext6);
// a quote cut inside them is passed here, as the workers could not place it
// either.
static __always_inline int skip_ext6(void **l4, void *data_end, __u8 *proto);

static __always_inline int quotes_our_packet6(void *l4, void *data_end)
{
	__u8 *type = l4;
	struct ipv6hdr *quoted = l4 + ICMPV6_HEADER_LEN;
	struct lb_key key = {};
	__be16 *ports;
	void *quoted_l4;
	__u8 proto;

	if ((void *)(quoted + 1) > data_end)
		return 0;
	if (*type < ICMPV6_FIRST_ERROR_TYPE || *type > ICMPV6_LAST_ERROR_TYPE)
		return 0;
	quoted_l4 = quoted + 1;
	proto = quoted->nexthdr;
	if (skip_ext6(&quoted_l4, data_end, &proto) != 0)
		return 0;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_SCTP)
		return 0;
	ports = quoted_l4;
	if ((void *)(ports + 2) > data_end)
		return 0;
	key.family = KEY_FAMILY_V6;
	key.proto = proto;
	__builtin_memcpy(key.addr, &quoted->saddr, 16);
	key.port = ports[0];
	if (bpf_map_lookup_elem(&lb_dst, &key))
		return 1;
	if (own_address(&key, ports[0]) == OURS_IN_RANGE)
		return 1;
	__builtin_memcpy(key.addr, &quoted->daddr, 16);
	key.port = ports[1];
	return bpf_map_lookup_elem(&lb_src, &key) != 0;
}

// True for a later IPv4 fragment (no ports) of a datagram that is the
// balancer's: to a VIP (its ICMP key, port 0), to one of our own addresses
// (replies of one-arm and full NAT, and the host's own traffic, which the
// workers hand back to the kernel), or from an endpoint address (DNAT replies;
// the loader writes each endpoint with port 0 for this).
static __always_inline int later_fragment_is_ours(struct iphdr *ip)
{
	struct lb_key key = {};

	key.family = KEY_FAMILY_V4;
	key.proto = IPPROTO_ICMP;
	set_v4(key.addr, ip->daddr);
	if (bpf_map_lookup_elem(&lb_dst, &key))
		return 1;
	key.proto = ip->protocol;
	if (bpf_map_lookup_elem(&lb_snat, &key))
		return 1;
	set_v4(key.addr, ip->saddr);
	return bpf_map_lookup_elem(&lb_src, &key) != 0;
}

// Moves *l4 past the IPv6 extension headers (at most IPV6_MAX_EXT_HEADERS) and
// sets *proto to the header found there. Returns 0 at the upper layer (or at a
// header we do not walk, whose ports read_ports then refuses), 1 for a later
// fragment (*proto is its datagram's protocol; it has no ports), -1 when a
// header is cut short.
static __always_inline int skip_ext6(void **l4, void *data_end, __u8 *proto)
{
	void *at = *l4;
	__u8 next = *proto;

#pragma unroll
	for (int i = 0; i < IPV6_MAX_EXT_HEADERS; i++) {
		if (next == NEXTHDR_HOP || next == NEXTHDR_ROUTING || next == NEXTHDR_DEST) {
			struct ext6_hdr *h = at;

			if ((void *)(h + 1) > data_end)
				return -1;
			next = h->nexthdr;
			at += ((__u32)h->hdrlen + 1) * 8;
		} else if (next == NEXTHDR_FRAGMENT) {
			struct frag6_hdr *f = at;

			if ((void *)(f + 1) > data_end)
				return -1;
			next = f->nexthdr;
			at = f + 1;
			if (f->frag_off & bpf_htons(IPV6_FRAG_OFFSET_MASK)) {
				*proto = next;
				return 1;
			}
		} else {
			break;
		}
	}
	*l4 = at;
	*proto = next;
	return 0;
}

// later_fragment_is_ours for IPv6: to a VIP (its ICMPv6 key, port 0), to one
// of our own addresses, or from an endpoint (its port-0 key). The workers send
// it the way its first fragment went (or count and drop it), so a datagram of
// ours never has half of it reaching the kernel.
static __always_inline int later_fragment6_is_ours(struct ipv6hdr *ip6, __u8 proto)
{
	struct lb_key key = {};

	key.family = KEY_FAMILY_V6;
	key.proto = IPPROTO_ICMPV6;
	__builtin_memcpy(key.addr, &ip6->daddr, 16);
	if (bpf_map_lookup_elem(&lb_dst, &key))
		return 1;
	key.proto = proto;
	if (bpf_map_lookup_elem(&lb_snat, &key))
		return 1;
	__builtin_memcpy(key.addr, &ip6->saddr, 16);
	return bpf_map_lookup_elem(&lb_src, &key) != 0;
}

SEC("xdp")
int oxlb_redirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct lb_key dst = {};
	struct lb_key src = {};
	__be16 sport, dport;
	__u8 proto;
	void *l4;

	if ((void *)(eth + 1) > data_end)
		return pass(STAT_NOT_PARSED);

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		__u32 ihl_bytes;

		if ((void *)(ip + 1) > data_end)
			return pass(STAT_NOT_PARSED);
		// Only the first fragment carries ports (it is matched like any
		// packet); the later ones follow it to the workers when their
		// datagram is the balancer's (see later_fragment_is_ours).
		if (ip->frag_off & bpf_htons(IP_OFFSET_MASK)) {
			if (!later_fragment_is_ours(ip))
				return pass(STAT_PASSED);
			goto redirect;
		}
		ihl_bytes = ip->ihl * 4;
		if (ihl_bytes < sizeof(*ip))
			return pass(STAT_NOT_PARSED);
		l4 = (void *)ip + ihl_bytes;
		proto = ip->protocol;
		if (read_ports(l4, data_end, proto, &sport, &dport))
			return pass(STAT_PASSED);
		set_v4(dst.addr, ip->daddr);
		set_v4(src.addr, ip->saddr);
		dst.family = KEY_FAMILY_V4;
		src.family = KEY_FAMILY_V4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return pass(STAT_NOT_PARSED);
		int later;

		proto = ip6->nexthdr;
		l4 = ip6 + 1;
		// A first fragment (offset 0) is matched by its ports like any
		// packet; later ones as later IPv4 fragments are.
		later = skip_ext6(&l4, data_end, &proto);
		if (later < 0)
			return pass(STAT_NOT_PARSED);
		if (later) {
			if (!later_fragment6_is_ours(ip6, proto))
				return pass(STAT_PASSED);
			goto redirect;
		}
		if (proto == IPPROTO_ICMPV6) {
			__u8 *type = l4;

			if ((void *)(type + 1) > data_end)
				return pass(STAT_PASSED);
			if (quotes_our_packet6(l4, data_end))
				goto redirect;
			// Otherwise only an echo request can be the load balancer's
			// (to a VIP, checked below); neighbour discovery to a VIP's
			// address included, every other ICMPv6 message is the kernel's.
			if (*type != ICMPV6_ECHO_REQUEST_TYPE)
				return pass(STAT_PASSED);
			sport = 0;
			dport = 0;
		} else if (read_ports(l4, data_end, proto, &sport, &dport)) {
			return pass(STAT_PASSED);
		}
		__builtin_memcpy(dst.addr, &ip6->daddr, 16);
		__builtin_memcpy(src.addr, &ip6->saddr, 16);
		dst.family = KEY_FAMILY_V6;
		src.family = KEY_FAMILY_V6;
	} else {
		return pass(STAT_PASSED);
	}

	dst.port = dport;
	dst.proto = proto;
	src.port = sport;
	src.proto = proto;

	if (proto == IPPROTO_ICMPV6 && !bpf_map_lookup_elem(&lb_dst, &dst)) {
		return pass(STAT_PASSED);
	} else if (proto == IPPROTO_ICMP && dst.family == KEY_FAMILY_V4 &&
		   !bpf_map_lookup_elem(&lb_dst, &dst)) {
		if (!quotes_our_request(l4, data_end))
			return pass(STAT_PASSED);
	} else if (!bpf_map_lookup_elem(&lb_dst, &dst)) {
		enum own_verdict own = own_address(&dst, dport);

		if (own == OURS_OUTSIDE_RANGE)
			return pass(STAT_PASSED);
		if (own == NOT_OURS && !bpf_map_lookup_elem(&lb_src, &src))
			return pass(STAT_PASSED);
	}

redirect:;
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 *slot = bpf_map_lookup_elem(&iface_slot, &ifindex);

	if (!slot || *slot >= MAX_IFACES || ctx->rx_queue_index >= MAX_QUEUES_PER_IFACE)
		return pass(STAT_NO_SOCKET);

	__u32 index = *slot * MAX_QUEUES_PER_IFACE + ctx->rx_queue_index;

	if (!bpf_map_lookup_elem(&xsks, &index))
		return pass(STAT_NO_SOCKET);

	count(STAT_REDIRECTED);
	return bpf_redirect_map(&xsks, index, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
