//! Prometheus text exposition of the appliance's counters: per worker, with every drop reason
//! as a label, the kernel's AF_XDP socket drops, and the XDP program's own counters.

use oxlb_dataplane::accounting::{EndpointCounters, EndpointId};
use oxlb_dataplane::snapshot::{Proto, ServiceKey};
use oxlb_dataplane::stats::{Counters, DropReason, BATCH_BOUNDS};
use oxlb_xdp::XdpStats;
use std::fmt::Write;

/// What the metrics page is made of, read once per scrape.
pub struct Sample<'a> {
    pub workers: &'a [Counters],
    pub xdp: Option<XdpStats>,
    pub services: usize,
    /// Traffic per service and endpoint, summed over the workers.
    pub endpoints: &'a [(ServiceKey, EndpointId, EndpointCounters)],
    /// Probe verdicts of the monitored endpoints: (service, endpoint, up).
    pub probes: &'a [(ServiceKey, EndpointId, bool)],
    /// Flows each worker's connection table holds at most.
    pub conntrack_capacity: usize,
}

/// `service="VIP:PORT/PROTO",endpoint="IP:PORT"`; an IPv6 address in brackets
/// (`[fd00::1]:8080`).
fn endpoint_labels(s: &ServiceKey, e: &EndpointId) -> String {
    let proto = match s.proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Sctp => "sctp",
    };
    format!(
        "service=\"{}/{proto}\",endpoint=\"{}\"",
        std::net::SocketAddr::new(s.vip, s.port),
        std::net::SocketAddr::new(e.addr, e.port)
    )
}

/// One metric family: its help, its type, and its samples as (labels, value).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

fn per_worker(workers: &[Counters], value: impl Fn(&Counters) -> u64) -> Vec<(String, u64)> {
    workers
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("worker=\"{i}\""), value(c)))
        .collect()
}

/// Renders `s` in the Prometheus text format (version 0.0.4).
pub fn render(s: &Sample<'_>) -> String {
    let mut out = String::new();
    let w = s.workers;
    family(
        &mut out,
        "oxlb_rx_packets_total",
        "counter",
        "Frames workers received from their AF_XDP sockets.",
        &per_worker(w, |c| c.rx_packets),
    );
    family(
        &mut out,
        "oxlb_tx_packets_total",
        "counter",
        "Frames workers queued for transmission.",
        &per_worker(w, |c| c.tx_packets),
    );
    family(
        &mut out,
        "oxlb_kernel_packets_total",
        "counter",
        "Packets handed to the kernel because their next hop's MAC was not known yet.",
        &per_worker(w, |c| c.kernel_packets),
    );
    family(
        &mut out,
        "oxlb_flows_created_total",
        "counter",
        "Flows opened.",
        &per_worker(w, |c| c.flows_created),
    );
    family(
        &mut out,
        "oxlb_flows_expired_total",
        "counter",
        "Flows removed after their timeout.",
        &per_worker(w, |c| c.flows_expired),
    );
    family(
        &mut out,
        "oxlb_flows_ended_endpoint_down_total",
        "counter",
        "Established flows ended because a health probe marked their endpoint down (onEndpointDown reset).",
        &per_worker(w, |c| c.flows_ended_endpoint_down),
    );
    family(
        &mut out,
        "oxlb_flows_evicted_total",
        "counter",
        "Flows never established (TCP handshake incomplete, UDP unanswered) evicted from a full connection table for a new flow.",
        &per_worker(w, |c| c.flows_evicted),
    );
    family(
        &mut out,
        "oxlb_flows_active",
        "gauge",
        "Flows in the connection tables.",
        &per_worker(w, |c| c.flows_active),
    );
    family(
        &mut out,
        "oxlb_icmp_echo_replies_total",
        "counter",
        "Echo requests to a VIP answered.",
        &per_worker(w, |c| c.icmp_echo_replies),
    );
    family(
        &mut out,
        "oxlb_handed_off_total",
        "counter",
        "Frames received by one worker and passed to the worker that owns their flow.",
        &per_worker(w, |c| c.handed_off),
    );
    family(
        &mut out,
        "oxlb_icmp_errors_translated_total",
        "counter",
        "ICMP errors about load-balanced flows rewritten for the client or endpoint they concern.",
        &per_worker(w, |c| c.icmp_errors_translated),
    );
    family(
        &mut out,
        "oxlb_frag_needed_sent_total",
        "counter",
        "ICMP fragmentation-needed (ICMPv6 packet-too-big) sent to senders of packets too big for their egress link.",
        &per_worker(w, |c| c.frag_needed_sent),
    );
    family(
        &mut out,
        "oxlb_fragments_followed_total",
        "counter",
        "Later IPv4 fragments sent the way the first fragment of their datagram went.",
        &per_worker(w, |c| c.fragments_followed),
    );
    let drops: Vec<(String, u64)> = w
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            DropReason::ALL.iter().map(move |r| {
                (
                    format!("worker=\"{i}\",reason=\"{}\"", r.label()),
                    c.dropped(*r),
                )
            })
        })
        .collect();
    family(
        &mut out,
        "oxlb_drops_total",
        "counter",
        "Packets dropped by a worker, by reason.",
        &drops,
    );
    let socket: Vec<(String, u64)> = w
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            let k = c.sockets;
            [
                ("rx_ring_full", k.rx_ring_full),
                ("fill_ring_empty", k.fill_ring_empty),
                ("rx_dropped", k.rx_dropped),
                ("invalid_descs", k.invalid_descs),
            ]
            .map(|(reason, v)| (format!("worker=\"{i}\",reason=\"{reason}\""), v))
        })
        .collect();
    family(
        &mut out,
        "oxlb_socket_drops_total",
        "counter",
        "Packets the kernel dropped at a worker's AF_XDP sockets, by reason.",
        &socket,
    );
    if let Some(x) = s.xdp {
        let xdp = [
            ("redirected", x.redirected),
            ("passed", x.passed),
            ("no_socket", x.no_socket),
        ]
        .map(|(action, v)| (format!("action=\"{action}\""), v));
        family(
            &mut out,
            "oxlb_xdp_packets_total",
            "counter",
            "Packets the XDP program redirected to the workers or passed to the kernel.",
            &xdp,
        );
    }
    family(
        &mut out,
        "oxlb_services",
        "gauge",
        "Load-balancer rules installed.",
        &[(String::new(), s.services as u64)],
    );
    // A Prometheus histogram per worker: cumulative buckets, then sum and count.
    let _ = writeln!(
        out,
        "# HELP oxlb_rx_batch_size Frames per RX batch a worker read (64 fills a batch: it is behind)."
    );
    let _ = writeln!(out, "# TYPE oxlb_rx_batch_size histogram");
    for (i, c) in w.iter().enumerate() {
        let mut cumulative = 0;
        for (bound, n) in BATCH_BOUNDS.iter().zip(c.rx_batches.buckets.iter()) {
            cumulative += n;
            let _ = writeln!(
                out,
                "oxlb_rx_batch_size_bucket{{worker=\"{i}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "oxlb_rx_batch_size_bucket{{worker=\"{i}\",le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "oxlb_rx_batch_size_sum{{worker=\"{i}\"}} {}",
            c.rx_batches.frames
        );
        let _ = writeln!(
            out,
            "oxlb_rx_batch_size_count{{worker=\"{i}\"}} {cumulative}"
        );
    }
    family(
        &mut out,
        "oxlb_conntrack_capacity",
        "gauge",
        "Flows each worker's connection table holds at most (occupancy: oxlb_flows_active).",
        &per_worker(w, |_| s.conntrack_capacity as u64),
    );
    let per_endpoint = |value: &dyn Fn(&EndpointCounters) -> Vec<(&'static str, u64)>| {
        s.endpoints
            .iter()
            .flat_map(|(svc, ep, c)| {
                let labels = endpoint_labels(svc, ep);
                value(c).into_iter().map(move |(extra, v)| {
                    if extra.is_empty() {
                        (labels.clone(), v)
                    } else {
                        (format!("{labels},{extra}"), v)
                    }
                })
            })
            .collect::<Vec<_>>()
    };
    let directions = |v: [u64; 2]| {
        vec![
            ("direction=\"to_endpoint\"", v[0]),
            ("direction=\"to_client\"", v[1]),
        ]
    };
    family(
        &mut out,
        "oxlb_endpoint_packets_total",
        "counter",
        "Packets of a service's flows to one endpoint, by direction.",
        &per_endpoint(&|c| directions(c.packets)),
    );
    family(
        &mut out,
        "oxlb_endpoint_bytes_total",
        "counter",
        "IP bytes of a service's flows to one endpoint, by direction.",
        &per_endpoint(&|c| directions(c.bytes)),
    );
    family(
        &mut out,
        "oxlb_endpoint_flows_created_total",
        "counter",
        "Flows of a service opened to one endpoint (new flows/s: its rate).",
        &per_endpoint(&|c| vec![("", c.flows_created)]),
    );
    family(
        &mut out,
        "oxlb_endpoint_flows_active",
        "gauge",
        "Flows of a service to one endpoint in the connection tables.",
        &per_endpoint(&|c| vec![("", c.flows_active)]),
    );
    let probes: Vec<(String, u64)> = s
        .probes
        .iter()
        .map(|(svc, ep, up)| (endpoint_labels(svc, ep), u64::from(*up)))
        .collect();
    family(
        &mut out,
        "oxlb_endpoint_up",
        "gauge",
        "Health probe verdict of a monitored service's endpoint: 1 up, 0 down.",
        &probes,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_reason_is_a_labelled_sample_of_every_worker() {
        let mut c = Counters {
            rx_packets: 7,
            flows_evicted: 3,
            rx_batches: {
                let mut b = oxlb_dataplane::stats::BatchSizes::default();
                b.record(64);
                b.record(2);
                b
            },
            ..Counters::default()
        };
        c.drop(DropReason::TcpNotSyn);
        let page = render(&Sample {
            workers: &[c.clone(), Counters::default()],
            xdp: Some(XdpStats {
                redirected: 9,
                passed: 1,
                no_socket: 0,
            }),
            services: 2,
            endpoints: &[(
                ServiceKey {
                    vip: std::net::Ipv4Addr::new(198, 18, 100, 1).into(),
                    port: 2020,
                    proto: Proto::Tcp,
                },
                EndpointId {
                    addr: std::net::Ipv4Addr::new(198, 18, 31, 1).into(),
                    port: 8080,
                },
                EndpointCounters {
                    packets: [5, 4],
                    bytes: [300, 6000],
                    flows_created: 1,
                    flows_active: 1,
                },
            )],
            probes: &[],
            conntrack_capacity: 1024,
        });
        assert!(page.contains("oxlb_rx_batch_size_bucket{worker=\"0\",le=\"3\"} 1\n"));
        assert!(page.contains("oxlb_rx_batch_size_bucket{worker=\"0\",le=\"+Inf\"} 2\n"));
        assert!(page.contains("oxlb_rx_batch_size_sum{worker=\"0\"} 66\n"));
        assert!(page.contains(
            "oxlb_endpoint_bytes_total{service=\"198.18.100.1:2020/tcp\",endpoint=\"198.18.31.1:8080\",direction=\"to_client\"} 6000\n"
        ), "{page}");
        assert!(
            page.contains("oxlb_rx_packets_total{worker=\"0\"} 7\n"),
            "{page}"
        );
        assert!(page.contains("oxlb_drops_total{worker=\"0\",reason=\"tcp_not_syn\"} 1\n"));
        assert!(page.contains("oxlb_flows_evicted_total{worker=\"0\"} 3\n"));
        assert!(page.contains("oxlb_flows_evicted_total{worker=\"1\"} 0\n"));
        assert_eq!(
            page.matches("oxlb_drops_total{").count(),
            2 * DropReason::COUNT,
            "each worker lists every reason, zeros included"
        );
        assert!(page.contains("oxlb_xdp_packets_total{action=\"redirected\"} 9\n"));
        assert!(page.contains("oxlb_services 2\n"));
        // Every sample line belongs to a family announced by a TYPE line (a histogram's
        // samples carry the _bucket, _sum and _count suffixes).
        for line in page.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| page.contains(&format!("# TYPE {base} histogram")))
                .unwrap_or(name);
            assert!(page.contains(&format!("# TYPE {base} ")), "{line}");
        }
    }
}
