//! Turns the packet workers' flow copies into loxilb's conntrack listing: one entry per
//! direction of a connection, with loxilb's words for states and rewrites.
//!
//! loxilb (`pkg/loxinet/dpebpf_linux.go`) names a rewrite `<kind>-<addr>:<port>:w<weight>`:
//! `dnat` toward an endpoint, `snat` on the way back, `fdnat`/`fsnat` with two addresses when
//! both are rewritten (new source first for `fdnat`, new source then new destination for
//! `fsnat`), `ddsr` for direct server return. TCP states are `sync-sent`, `est`, `fini`; UDP
//! ones `udp-uni` (one direction seen) and `udp-est`.

use oxlb_api::ConntrackEntry;
use oxlb_dataplane::conntrack::{FlowInfo, FlowKey, FlowState};
use oxlb_dataplane::snapshot::{NatMode, Proto, Snapshot};
use oxlb_dataplane::FlowDump;

/// The listing of every flow in `dumps`; service names come from `snap` (a flow of a service
/// no longer in it has none). Sorted by service, then client, so listings are stable.
pub fn entries(dumps: &[FlowDump], snap: &Snapshot) -> Vec<ConntrackEntry> {
    let mut flows: Vec<&FlowInfo> = dumps.iter().flat_map(|d| &d.flows).collect();
    flows.sort_by_key(|f| (f.service, f.original.src, f.original.src_port));
    let mut out = Vec::with_capacity(flows.len() * 2);
    for f in flows {
        let name = snap
            .services
            .get(&f.service)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let state = state_name(f.original.proto, f.state);
        let w = f.endpoint.weight;
        let (ep, ep_port) = (f.endpoint.addr, f.endpoint.port);
        let forward = match (f.mode, f.snat) {
            (NatMode::Dsr, _) => format!("ddsr-{ep}:{ep_port}:w{w}"),
            (_, Some((src, _))) => format!("fdnat-{src},{ep}:{ep_port}:w{w}"),
            (_, None) => format!("dnat-{ep}:{ep_port}:w{w}"),
        };
        out.push(entry(
            &f.original,
            state,
            forward,
            f.packets[0],
            f.bytes[0],
            &name,
        ));
        // A DSR endpoint answers the client directly: there is no reply direction to show.
        if f.mode == NatMode::Dsr {
            continue;
        }
        let (vip, vport) = (f.service.vip, f.service.port);
        let back = match f.snat {
            Some(_) => format!("fsnat-{vip},{}:{vport}:w{w}", f.original.src),
            None => format!("snat-{vip}:{vport}:w{w}"),
        };
        out.push(entry(
            &f.reply,
            state,
            back,
            f.packets[1],
            f.bytes[1],
            &name,
        ));
    }
    out
}

fn entry(
    key: &FlowKey<std::net::IpAddr>,
    state: &str,
    act: String,
    packets: u64,
    bytes: u64,
    name: &str,
) -> ConntrackEntry {
    ConntrackEntry {
        source_ip: key.src.to_string(),
        destination_ip: key.dst.to_string(),
        source_port: key.src_port,
        destination_port: key.dst_port,
        protocol: proto_name(key.proto).to_owned(),
        conntrack_state: state.to_owned(),
        conntrack_act: act,
        ident: String::new(),
        packets,
        bytes,
        serv_name: name.to_owned(),
    }
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Sctp => "sctp",
    }
}

fn state_name(p: Proto, s: FlowState) -> &'static str {
    match (p, s) {
        (Proto::Tcp, FlowState::New) => "sync-sent",
        (Proto::Tcp, FlowState::Established) => "est",
        (Proto::Tcp, FlowState::Closing) => "fini",
        (Proto::Udp, FlowState::New) => "udp-uni",
        (Proto::Udp, FlowState::Established) => "udp-est",
        (Proto::Udp, FlowState::Closing) => "closed",
        (Proto::Sctp, FlowState::New) => "init",
        (Proto::Sctp, FlowState::Established) => "est",
        (Proto::Sctp, FlowState::Closing) => "closed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxlb_dataplane::select::Algorithm;
    use oxlb_dataplane::snapshot::{Endpoint, Service, ServiceKey};
    use std::net::Ipv4Addr;
    use std::time::Duration;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
    const EP: Ipv4Addr = Ipv4Addr::new(198, 18, 31, 1);

    fn setup(mode: NatMode, snat: Option<(Ipv4Addr, u16)>) -> (Vec<FlowDump>, Snapshot) {
        let service = ServiceKey {
            vip: VIP.into(),
            port: 2020,
            proto: Proto::Tcp,
        };
        let endpoint = Endpoint {
            addr: EP.into(),
            port: 8080,
            weight: 1,
        };
        let mut snap = Snapshot::default();
        let svc = Service::new(
            service,
            "web".into(),
            mode,
            Algorithm::RoundRobin,
            vec![endpoint],
            Duration::from_secs(60),
        )
        .unwrap();
        snap.services.insert(service, svc);
        let reply_dst = snat.unwrap_or((CLIENT, 40000));
        let flow = FlowInfo {
            original: FlowKey {
                src: CLIENT.into(),
                dst: VIP.into(),
                src_port: 40000,
                dst_port: 2020,
                proto: Proto::Tcp,
            },
            reply: FlowKey {
                src: EP.into(),
                dst: reply_dst.0.into(),
                src_port: 8080,
                dst_port: reply_dst.1,
                proto: Proto::Tcp,
            },
            service,
            mode,
            endpoint,
            snat: snat.map(|(a, p)| (a.into(), p)),
            state: FlowState::Established,
            packets: [3, 2],
            bytes: [180, 120],
        };
        let dump = FlowDump {
            worker: 0,
            flows: vec![flow],
            truncated: false,
        };
        (vec![dump], snap)
    }

    #[test]
    fn a_dnat_flow_is_listed_in_both_directions_with_loxilbs_words() {
        let (dumps, snap) = setup(NatMode::Dnat, None);
        let e = entries(&dumps, &snap);
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].source_ip.as_str(), e[0].source_port),
            ("198.18.0.2", 40000)
        );
        assert_eq!(
            (e[0].destination_ip.as_str(), e[0].destination_port),
            ("198.18.100.1", 2020)
        );
        assert_eq!(
            (e[0].protocol.as_str(), e[0].conntrack_state.as_str()),
            ("tcp", "est")
        );
        assert_eq!(e[0].conntrack_act, "dnat-198.18.31.1:8080:w1");
        assert_eq!(
            (e[0].packets, e[0].bytes, e[0].serv_name.as_str()),
            (3, 180, "web")
        );
        assert_eq!(e[1].source_ip, "198.18.31.1");
        assert_eq!(e[1].destination_ip, "198.18.0.2");
        assert_eq!(e[1].conntrack_act, "snat-198.18.100.1:2020:w1");
        assert_eq!((e[1].packets, e[1].bytes), (2, 120));
    }

    #[test]
    fn a_fullnat_flow_names_both_rewritten_addresses() {
        let (dumps, snap) = setup(NatMode::FullNat, Some((VIP, 45000)));
        let e = entries(&dumps, &snap);
        assert_eq!(e[0].conntrack_act, "fdnat-198.18.100.1,198.18.31.1:8080:w1");
        assert_eq!(e[1].destination_port, 45000);
        assert_eq!(e[1].conntrack_act, "fsnat-198.18.100.1,198.18.0.2:2020:w1");
    }

    #[test]
    fn a_dsr_flow_has_no_reply_entry() {
        let (dumps, snap) = setup(NatMode::Dsr, None);
        let e = entries(&dumps, &snap);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].conntrack_act, "ddsr-198.18.31.1:8080:w1");
    }
}
