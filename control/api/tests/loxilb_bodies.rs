//! loxilb request bodies as real clients send them, and every refusal of what oxlb does not do.

use oxlb_api::validate::{check_overlap, check_snat_overlap};
use oxlb_api::{
    oper, service_key, to_entry, validate, EndpointSpec, ErrorResponse, LoadBalancerEntry,
    LoadBalancerList, NatMode, Oper, ProbeKind, Protocol, ResultResponse, Selection, ServiceKey,
    ValidationError, DEFAULT_INACTIVE_TIMEOUT_SECS,
};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const ISSUE_EXAMPLE: &str = r#"{"serviceArguments":{"externalIP":"198.18.100.1","port":2020,"protocol":"tcp","sel":0,"mode":0,"name":"web"},"endpoints":[{"endpointIP":"198.18.31.1","targetPort":8080,"weight":1}]}"#;

/// What kube-loxilb's `LoadBalancerModel` marshals to for a Service without loxilb
/// annotations: Go's field order, capitalised `BGP`/`Monitor`, empty strings, `null` slices.
const KUBE_LOXILB_BODY: &str = r#"{"serviceArguments":{"externalIP":"192.168.80.5","privateIP":"","port":80,"protocol":"tcp","sel":0,"mode":0,"BGP":false,"Monitor":false,"inactiveTimeOut":1800,"block":0,"managed":true,"probetype":"","probeport":0,"probereq":"","proberesp":"","name":"default_nginx-lb:llb-inst0"},"secondaryIPs":null,"allowedSources":null,"endpoints":[{"endpointIP":"10.244.1.5","targetPort":30080,"weight":1,"state":"","counter":""},{"endpointIP":"10.244.2.7","targetPort":30080,"weight":1,"state":"","counter":""}]}"#;

fn issue_example() -> Value {
    serde_json::from_str(ISSUE_EXAMPLE).unwrap()
}

fn parse(v: &Value) -> Result<LoadBalancerEntry, serde_json::Error> {
    serde_json::from_value(v.clone())
}

/// The issue example with `f` applied, validated.
fn validate_modified(f: impl FnOnce(&mut Value)) -> Result<oxlb_api::ServiceSpec, ValidationError> {
    let mut v = issue_example();
    f(&mut v);
    validate(&parse(&v).expect("the body parses"))
}

fn refused(f: impl FnOnce(&mut Value)) -> ValidationError {
    validate_modified(f).expect_err("the body is refused")
}

fn set_arg(name: &str, value: Value) -> impl FnOnce(&mut Value) + '_ {
    move |v| {
        v["serviceArguments"][name] = value;
    }
}

#[test]
fn the_issue_example_becomes_a_dnat_round_robin_service() {
    let spec = validate(&serde_json::from_str(ISSUE_EXAMPLE).unwrap()).unwrap();
    assert_eq!(
        spec.key,
        ServiceKey {
            external_ip: Ipv4Addr::new(198, 18, 100, 1).into(),
            port: 2020,
            protocol: Protocol::Tcp,
        }
    );
    assert_eq!(spec.name, "web");
    assert_eq!(spec.mode, NatMode::Dnat);
    assert_eq!(spec.selection, Selection::RoundRobin);
    assert_eq!(
        spec.endpoints,
        vec![EndpointSpec {
            ip: Ipv4Addr::new(198, 18, 31, 1).into(),
            target_port: 8080,
            weight: 1,
        }]
    );
    assert_eq!(spec.inactive_timeout_secs, DEFAULT_INACTIVE_TIMEOUT_SECS);
}

#[test]
fn the_exact_kube_loxilb_body_is_accepted_with_its_capitalised_fields_and_null_lists() {
    let entry: LoadBalancerEntry = serde_json::from_str(KUBE_LOXILB_BODY).unwrap();
    assert!(entry.secondary_ips.is_empty());
    assert!(entry.allowed_sources.is_empty());
    assert!(entry.service_arguments.managed);
    let spec = validate(&entry).unwrap();
    assert_eq!(spec.key.to_string(), "192.168.80.5:80/tcp");
    assert_eq!(spec.name, "default_nginx-lb:llb-inst0");
    assert_eq!(spec.endpoints.len(), 2);
    assert_eq!(spec.inactive_timeout_secs, 1800);
}

#[test]
fn lowercase_bgp_and_monitor_are_accepted_as_loxilb_spells_them() {
    let spec = validate_modified(|v| {
        v["serviceArguments"]["bgp"] = json!(false);
        v["serviceArguments"]["monitor"] = json!(false);
    });
    assert!(spec.is_ok());
}

#[test]
fn udp_is_accepted() {
    let spec = validate_modified(set_arg("protocol", json!("udp"))).unwrap();
    assert_eq!(spec.key.protocol, Protocol::Udp);
}

#[test]
fn an_explicit_inactivity_timeout_is_kept() {
    let spec = validate_modified(set_arg("inactiveTimeOut", json!(60))).unwrap();
    assert_eq!(spec.inactive_timeout_secs, 60);
}

#[test]
fn port_max_equal_to_port_means_a_single_port() {
    assert!(validate_modified(set_arg("portMax", json!(2020))).is_ok());
}

#[test]
fn probe_settings_are_ignored_while_monitoring_is_off() {
    let spec = validate_modified(|v| {
        let sa = &mut v["serviceArguments"];
        sa["probetype"] = json!("http");
        sa["probeport"] = json!(8080);
        sa["probereq"] = json!("GET /");
        sa["proberesp"] = json!("OK");
        sa["probeTimeout"] = json!(10);
        sa["probeRetries"] = json!(3);
    });
    assert!(spec.is_ok());
}

fn monitored(probetype: &str) -> impl FnOnce(&mut Value) + '_ {
    move |v| {
        let sa = &mut v["serviceArguments"];
        sa["Monitor"] = json!(true);
        sa["probetype"] = json!(probetype);
    }
}

#[test]
fn a_monitored_rule_gets_the_default_probe_timeout_and_retries() {
    let spec = validate_modified(monitored("tcp")).unwrap();
    let probe = spec.monitor.expect("monitored");
    assert_eq!(probe.kind, ProbeKind::Tcp);
    assert_eq!((probe.port, probe.timeout_secs, probe.retries), (0, 1, 2));
}

#[test]
fn http_probe_settings_are_kept_and_listed_back() {
    let spec = validate_modified(|v| {
        monitored("http")(v);
        let sa = &mut v["serviceArguments"];
        sa["probeport"] = json!(8081);
        sa["probereq"] = json!("/healthz");
        sa["proberesp"] = json!("ok");
        sa["probeTimeout"] = json!(3);
        sa["probeRetries"] = json!(4);
    })
    .unwrap();
    let probe = spec.monitor.clone().unwrap();
    assert_eq!(probe.kind, ProbeKind::Http);
    assert_eq!(
        (probe.port, probe.timeout_secs, probe.retries),
        (8081, 3, 4)
    );
    assert_eq!(
        (probe.request.as_str(), probe.response.as_str()),
        ("/healthz", "ok")
    );
    let sa = to_entry(&spec).service_arguments;
    assert!(sa.monitor);
    assert_eq!(sa.probetype, "http");
    assert_eq!((sa.probe_timeout, sa.probe_retries), (3, 4));
    let again: LoadBalancerEntry =
        serde_json::from_str(&serde_json::to_string(&to_entry(&spec)).unwrap()).unwrap();
    assert_eq!(validate(&again).unwrap(), spec);
}

#[test]
fn probe_types_oxlb_lacks_are_refused_naming_probetype() {
    for t in ["sctp", "", "icmp"] {
        let e = refused(monitored(t));
        assert_eq!(e.field(), "serviceArguments.probetype", "{e}");
    }
    assert!(refused(monitored("sctp"))
        .to_string()
        .contains("not implemented yet"));
}

#[test]
fn negative_probe_retries_are_refused() {
    let e = refused(|v| {
        monitored("tcp")(v);
        v["serviceArguments"]["probeRetries"] = json!(-1);
    });
    assert_eq!(e.field(), "serviceArguments.probeRetries");
}

#[test]
fn a_listing_entry_validates_back_to_the_same_spec() {
    let spec = validate(&serde_json::from_str(KUBE_LOXILB_BODY).unwrap()).unwrap();
    let entry = to_entry(&spec);
    let again: LoadBalancerEntry =
        serde_json::from_str(&serde_json::to_string(&entry).unwrap()).unwrap();
    assert_eq!(validate(&again).unwrap(), spec);
}

#[test]
fn a_listing_is_serialized_under_lb_attr_without_zero_valued_fields() {
    let spec = validate(&serde_json::from_str(ISSUE_EXAMPLE).unwrap()).unwrap();
    let list = LoadBalancerList {
        lb_attr: vec![to_entry(&spec)],
    };
    assert_eq!(
        serde_json::to_value(&list).unwrap(),
        json!({"lbAttr": [{
            "serviceArguments": {
                "externalIP": "198.18.100.1",
                "port": 2020,
                "protocol": "tcp",
                "inactiveTimeOut": 1800,
                "name": "web"
            },
            "endpoints": [{"endpointIP": "198.18.31.1", "targetPort": 8080, "weight": 1}],
            "secondaryIPs": [],
            "allowedSources": []
        }]})
    );
}

#[test]
fn a_kube_loxilb_style_listing_with_null_lists_parses() {
    let list: LoadBalancerList = serde_json::from_str(
        r#"{"lbAttr":[{"serviceArguments":{"externalIP":"1.2.3.4","port":80,"protocol":"tcp"},
            "endpoints":[{"endpointIP":"10.0.0.1","targetPort":80,"weight":1,"state":"active","counter":"0:0"}],
            "secondaryIPs":null,"allowedSources":null}]}"#,
    )
    .unwrap();
    assert_eq!(
        list.lb_attr[0].endpoints[0].state.as_deref(),
        Some("active")
    );
}

#[test]
fn success_and_error_bodies_have_loxilbs_shape() {
    assert_eq!(
        serde_json::to_value(ResultResponse::success()).unwrap(),
        json!({"result": "Success"})
    );
    let e = ErrorResponse::new(400, "port 0 is out of range").with_field("serviceArguments.port");
    assert_eq!(
        serde_json::to_value(e).unwrap(),
        json!({
            "code": 400,
            "message": "port 0 is out of range",
            "fields": ["serviceArguments.port"],
            "result": "port 0 is out of range"
        })
    );
}

#[test]
fn a_delete_path_parses_into_a_service_key() {
    assert_eq!(
        service_key("198.18.100.1", "2020", "udp").unwrap(),
        ServiceKey {
            external_ip: Ipv4Addr::new(198, 18, 100, 1).into(),
            port: 2020,
            protocol: Protocol::Udp,
        }
    );
    assert_eq!(
        service_key("198.18.100.1", "http", "tcp")
            .unwrap_err()
            .field(),
        "port"
    );
    assert_eq!(
        service_key("nope", "80", "tcp").unwrap_err().field(),
        "externalipaddress"
    );
}

// --- parsing refusals ---

#[test]
fn an_unknown_field_is_refused_by_name() {
    let mut v = issue_example();
    v["serviceArguments"]["weight"] = json!(1);
    let e = parse(&v).unwrap_err().to_string();
    assert!(e.contains("unknown field `weight`"), "{e}");
    let mut v = issue_example();
    v["extra"] = json!(1);
    assert!(parse(&v).unwrap_err().to_string().contains("`extra`"));
    let mut v = issue_example();
    v["endpoints"][0]["port"] = json!(1);
    assert!(parse(&v).unwrap_err().to_string().contains("`port`"));
}

#[test]
fn a_missing_external_ip_port_or_protocol_is_refused_by_name() {
    for field in ["externalIP", "port", "protocol"] {
        let mut v = issue_example();
        v["serviceArguments"].as_object_mut().unwrap().remove(field);
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains(&format!("missing field `{field}`")), "{e}");
    }
}

#[test]
fn a_port_given_as_a_string_is_refused_by_the_parser() {
    let mut v = issue_example();
    v["serviceArguments"]["port"] = json!("2020");
    assert!(parse(&v).unwrap_err().to_string().contains("invalid type"));
}

// --- validation refusals ---

#[test]
fn an_external_ip_that_is_not_an_address_is_refused() {
    let e = refused(set_arg("externalIP", json!("198.18.100")));
    assert!(matches!(e, ValidationError::BadAddress { .. }));
    assert_eq!(e.field(), "serviceArguments.externalIP");
    assert!(e
        .to_string()
        .contains("\"198.18.100\" is not an IPv4 address"));
}

/// The issue example moved to IPv6: VIP fd00:100::1, endpoints `eps` on the service port (as
/// dsr needs).
fn ipv6_service<'a>(mode: i64, eps: &'a [&'a str]) -> impl FnOnce(&mut Value) + 'a {
    move |v| {
        v["serviceArguments"]["externalIP"] = json!("fd00:100::1");
        v["serviceArguments"]["mode"] = json!(mode);
        v["endpoints"] = eps
            .iter()
            .map(|ip| json!({"endpointIP": ip, "targetPort": 2020, "weight": 1}))
            .collect();
    }
}

#[test]
fn an_ipv6_service_with_ipv6_endpoints_is_accepted_in_every_mode_and_listed_back() {
    for mode in 0..=3 {
        let spec = validate_modified(ipv6_service(mode, &["fd00:31::1", "fd00:31::2"]))
            .unwrap_or_else(|e| panic!("mode {mode}: {e}"));
        assert_eq!(
            spec.key.external_ip,
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1))
        );
        assert_eq!(spec.key.to_string(), "[fd00:100::1]:2020/tcp");
        let listed = to_entry(&spec);
        assert_eq!(listed.service_arguments.external_ip, "fd00:100::1");
        assert_eq!(listed.endpoints[1].endpoint_ip, "fd00:31::2");
        assert_eq!(validate(&listed), Ok(spec));
    }
}

#[test]
fn an_ipv6_service_with_ipv4_endpoints_is_accepted_in_full_nat_and_one_arm() {
    for mode in [1, 2] {
        let spec = validate_modified(ipv6_service(mode, &["198.18.31.1", "fd00:31::2"]))
            .unwrap_or_else(|e| panic!("mode {mode}: {e}"));
        assert_eq!(
            spec.endpoints[0].ip,
            IpAddr::V4(Ipv4Addr::new(198, 18, 31, 1))
        );
    }
}

#[test]
fn an_ipv6_service_with_an_ipv4_endpoint_in_dnat_or_dsr_is_refused_naming_mode() {
    for (mode, name) in [(0, "dnat"), (3, "dsr")] {
        let e = refused(ipv6_service(mode, &["fd00:31::1", "198.18.31.2"]));
        assert_eq!(e.field(), "serviceArguments.mode", "{e}");
        let text = e.to_string();
        assert!(text.contains("NAT64 needs source translation"), "{text}");
        assert!(text.contains(&format!("mode {mode} ({name})")), "{text}");
        assert!(text.contains("endpoints[1] 198.18.31.2"), "{text}");
        assert!(
            text.contains("use mode 2 (fullnat) or 1 (onearm)"),
            "{text}"
        );
    }
}

#[test]
fn an_ipv4_service_with_an_ipv6_endpoint_is_refused_as_nat46_in_every_mode() {
    for mode in 0..=3 {
        let e = refused(|v| {
            v["serviceArguments"]["mode"] = json!(mode);
            v["endpoints"][0]["endpointIP"] = json!("fd00:31::1");
        });
        assert_eq!(e.field(), "endpoints[0].endpointIP", "{e}");
        assert!(e.to_string().contains("NAT46"), "{e}");
        assert!(e.to_string().contains("not supported"), "{e}");
    }
}

#[test]
fn ipv6_link_local_mapped_unspecified_loopback_and_multicast_addresses_are_refused() {
    for ip in ["fe80::1", "::ffff:198.18.100.1", "::", "::1", "ff02::1"] {
        let e = refused(set_arg("externalIP", json!(ip)));
        assert!(
            matches!(e, ValidationError::UnusableAddress { .. }),
            "{ip}: {e}"
        );
        assert_eq!(e.field(), "serviceArguments.externalIP");
    }
}

#[test]
fn an_ipv6_delete_path_parses_into_a_service_key() {
    let key = service_key("fd00:100::1", "2020", "udp").expect("a valid key");
    assert_eq!(key.to_string(), "[fd00:100::1]:2020/udp");
}

#[test]
fn ipv6_allowed_sources_are_parsed_and_listed_back_beside_ipv4_ones() {
    let spec = validate_modified(|v| {
        v["allowedSources"] = json!([{"prefix": "fd00::/8"}, {"prefix": "fd00:0::2"},
                                     {"prefix": "198.18.0.0/24"}]);
    })
    .expect("accepted");
    let listed: Vec<String> = to_entry(&spec)
        .allowed_sources
        .iter()
        .map(|s| s.prefix.clone())
        .collect();
    assert_eq!(listed, ["fd00::/8", "fd00::2/128", "198.18.0.0/24"]);
    let p = spec.allowed_sources[0];
    assert!(p.contains("fd00:0::2".parse().unwrap()));
    assert!(!p.contains("fe00::2".parse().unwrap()));
    assert!(!p.contains("198.18.0.2".parse().unwrap()));
}

#[test]
fn unspecified_loopback_multicast_and_broadcast_addresses_are_refused() {
    for ip in ["0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255"] {
        let e = refused(set_arg("externalIP", json!(ip)));
        assert!(
            matches!(e, ValidationError::UnusableAddress { .. }),
            "{ip}: {e}"
        );
    }
}

#[test]
fn port_zero_is_refused() {
    let e = refused(set_arg("port", json!(0)));
    assert_eq!(e.field(), "serviceArguments.port");
    assert_eq!(
        e.to_string(),
        "serviceArguments.port 0 is out of range: use 1 to 65535"
    );
}

#[test]
fn a_port_above_65535_is_refused() {
    let e = refused(set_arg("port", json!(65536)));
    assert!(matches!(
        e,
        ValidationError::OutOfRange { value: 65536, .. }
    ));
}

#[test]
fn an_unknown_protocol_is_refused() {
    let e = refused(set_arg("protocol", json!("http")));
    assert_eq!(e, ValidationError::UnknownProtocol("http".into()));
    assert_eq!(e.field(), "serviceArguments.protocol");
}

#[test]
fn icmp_services_are_refused_as_not_implemented_yet() {
    let e = refused(set_arg("protocol", json!("icmp")));
    assert!(matches!(e, ValidationError::ProtocolNotImplemented(_)));
    assert!(e.to_string().contains("not implemented yet"), "{e}");
}

#[test]
fn an_sctp_service_is_accepted() {
    let mut body: LoadBalancerEntry = serde_json::from_str(ISSUE_EXAMPLE).unwrap();
    body.service_arguments.protocol = "sctp".into();
    assert_eq!(validate(&body).unwrap().key.protocol, Protocol::Sctp);
}

#[test]
fn a_port_range_is_accepted_keyed_by_its_first_port_and_listed_back_with_port_max() {
    let spec = validate_modified(set_arg("portMax", json!(2030))).expect("a range is accepted");
    assert_eq!(
        spec.key.port, 2020,
        "loxilb keys the rule by its first port"
    );
    assert_eq!(spec.port_max, 2030);
    assert_eq!(spec.ports().count(), 11);
    let listed = to_entry(&spec);
    assert_eq!(listed.service_arguments.port_max, 2030);
    assert_eq!(validate(&listed), Ok(spec));
}

#[test]
fn a_single_port_is_listed_with_port_max_zero_as_loxilb_does() {
    let spec = validate_modified(set_arg("portMax", json!(2020))).unwrap();
    assert_eq!(spec.port_max, 2020);
    assert_eq!(to_entry(&spec).service_arguments.port_max, 0);
}

#[test]
fn a_range_of_1024_ports_is_accepted_and_one_more_is_refused_as_too_big() {
    let spec = validate_modified(set_arg("portMax", json!(2020 + 1023))).unwrap();
    assert_eq!(spec.ports().count(), 1024);
    let e = refused(set_arg("portMax", json!(2020 + 1024)));
    assert!(
        matches!(e, ValidationError::PortRangeTooBig { ports: 1025, .. }),
        "{e:?}"
    );
    assert_eq!(e.field(), "serviceArguments.portMax");
    assert!(e.to_string().contains("at most 1024"), "{e}");
}

/// The issue example on ports `port..=port_max`, in `mode`.
fn ranged(port: u16, port_max: u16, mode: i64) -> oxlb_api::ServiceSpec {
    validate_modified(|v| {
        v["serviceArguments"]["port"] = json!(port);
        v["serviceArguments"]["portMax"] = json!(port_max);
        v["serviceArguments"]["mode"] = json!(mode);
    })
    .expect("the rule is valid on its own")
}

#[test]
fn overlapping_ranges_on_the_same_address_and_protocol_are_refused_naming_port_max() {
    let existing = [ranged(3000, 3010, 0)];
    let e = check_overlap(&ranged(3010, 3020, 0), &existing).expect_err("port 3010 is taken");
    assert!(
        matches!(e, ValidationError::PortRangeOverlap { .. }),
        "{e:?}"
    );
    assert_eq!(e.field(), "serviceArguments.portMax");
    assert!(e.to_string().contains("3000-3010"), "{e}");
    // A single port inside another rule's range overlaps it too.
    assert!(check_overlap(&ranged(3005, 3005, 0), &existing).is_err());
}

#[test]
fn adjacent_ranges_other_protocols_and_the_replaced_rule_itself_do_not_overlap() {
    let existing = [ranged(3000, 3010, 0)];
    assert_eq!(check_overlap(&ranged(3011, 3020, 0), &existing), Ok(()));
    let mut udp = ranged(3000, 3010, 0);
    udp.key.protocol = Protocol::Udp;
    assert_eq!(check_overlap(&udp, &existing), Ok(()));
    // Replacing the rule (same key) with a wider range is not an overlap with itself.
    assert_eq!(check_overlap(&ranged(3000, 3050, 0), &existing), Ok(()));
}

#[test]
fn a_full_nat_range_overlapping_the_snat_port_range_is_refused_naming_port_max() {
    let e = check_snat_overlap(&ranged(39990, 40010, 2), &[], 40000, 49999)
        .expect_err("full NAT answers come back to 40000-49999 on the VIP");
    assert!(
        matches!(e, ValidationError::SnatRangeOverlap { .. }),
        "{e:?}"
    );
    assert_eq!(e.field(), "serviceArguments.portMax");
    assert!(e.to_string().contains("40000-49999"), "{e}");
    // The same range without full NAT on the address takes no SNAT port there.
    assert_eq!(
        check_snat_overlap(&ranged(39990, 40010, 0), &[], 40000, 49999),
        Ok(())
    );
    assert_eq!(
        check_snat_overlap(&ranged(30000, 30010, 2), &[], 40000, 49999),
        Ok(())
    );
}

#[test]
fn a_range_in_the_snat_ports_is_refused_when_another_rule_makes_its_address_full_nat() {
    let full_nat = [ranged(80, 80, 2)];
    let e = check_snat_overlap(&ranged(45000, 45010, 0), &full_nat, 40000, 49999)
        .expect_err("the VIP's SNAT ports are taken by the full NAT rule");
    assert!(matches!(
        e,
        ValidationError::SnatRangeOverlap { port: 45000, .. }
    ));
    // And a full NAT rule refuses to join an address whose rules sit in the SNAT ports.
    let dnat = [ranged(45000, 45010, 0)];
    assert!(check_snat_overlap(&ranged(80, 80, 2), &dnat, 40000, 49999).is_err());
}

#[test]
fn a_port_max_below_port_is_refused() {
    let e = refused(set_arg("portMax", json!(2000)));
    assert!(matches!(e, ValidationError::PortMaxBelowPort { .. }));
}

#[test]
fn the_n2_and_n3_selections_are_refused_by_name() {
    for (sel, name) in [(5, "n2"), (6, "n3"), (7, "n3")] {
        let e = refused(set_arg("sel", json!(sel)));
        assert_eq!(e.field(), "serviceArguments.sel");
        let msg = e.to_string();
        assert!(msg.contains(&format!("sel {sel} ({name}")), "{msg}");
        assert!(msg.contains("use 0 (round robin), 1 (hash)"), "{msg}");
    }
    let e = refused(set_arg("sel", json!(9)));
    assert_eq!(e, ValidationError::UnknownSelection(9));
}

#[test]
fn the_l7_and_host_modes_are_refused_by_name() {
    for (mode, name) in [(4, "fullproxy"), (5, "hostonearm")] {
        let e = refused(set_arg("mode", json!(mode)));
        assert_eq!(e.field(), "serviceArguments.mode");
        assert_eq!(
            e.to_string(),
            format!("mode {mode} ({name}) is an L7/host mode and not implemented; use 0 (dnat), 1 (onearm), 2 (fullnat) or 3 (dsr)")
        );
    }
    assert_eq!(
        refused(set_arg("mode", json!(-1))),
        ValidationError::UnknownMode(-1)
    );
}

#[test]
fn attach_and_detach_operations_are_accepted_and_anything_else_refused() {
    for (n, want) in [(0, Oper::Replace), (1, Oper::Attach), (2, Oper::Detach)] {
        let mut v = issue_example();
        v["serviceArguments"]["oper"] = json!(n);
        let entry = parse(&v).unwrap();
        validate(&entry).expect("accepted");
        assert_eq!(oper(&entry), want);
    }
    let e = refused(set_arg("oper", json!(3)));
    assert_eq!(e, ValidationError::UnknownOper(3));
    assert_eq!(e.field(), "serviceArguments.oper");
}

#[test]
fn tls_security_modes_are_refused_as_not_implemented_yet() {
    for s in [1, 2] {
        let e = refused(set_arg("security", json!(s)));
        assert!(matches!(e, ValidationError::SecurityNotImplemented { .. }));
    }
    assert_eq!(
        refused(set_arg("security", json!(5))),
        ValidationError::UnknownSecurity(5)
    );
}

#[test]
fn features_oxlb_lacks_are_refused_naming_their_field() {
    let cases: [(&str, Value, &str); 5] = [
        ("privateIP", json!("10.0.0.1"), "privateIP"),
        ("snat", json!(true), "snat"),
        ("host", json!("example.com"), "host"),
        ("proxyprotocolv2", json!(true), "proxyprotocolv2"),
        ("egress", json!(true), "egress"),
    ];
    for (key, value, field) in cases {
        let e = refused(set_arg(key, value));
        assert_eq!(e.field(), format!("serviceArguments.{field}"), "{e}");
        assert!(e.to_string().contains("not implemented yet"), "{e}");
    }
}

#[test]
fn bgp_as_kube_loxilb_spells_it_is_kept_and_listed_back() {
    let spec = validate_modified(|v| v["serviceArguments"]["BGP"] = json!(true)).unwrap();
    assert!(spec.bgp);
    assert!(to_entry(&spec).service_arguments.bgp);
}

#[test]
fn a_negative_inactivity_timeout_is_refused() {
    let e = refused(set_arg("inactiveTimeOut", json!(-1)));
    assert_eq!(e.field(), "serviceArguments.inactiveTimeOut");
}

#[test]
fn secondary_ips_of_a_tcp_rule_are_refused_and_those_of_an_sctp_rule_kept() {
    let e = refused(|v| v["secondaryIPs"] = json!([{"secondaryIP": "198.18.100.2"}]));
    assert_eq!(e.field(), "secondaryIPs");
    assert!(e.to_string().contains("tcp rule"), "{e}");
    let spec = validate_modified(|v| {
        v["serviceArguments"]["protocol"] = json!("sctp");
        v["secondaryIPs"] = json!([{"secondaryIP": "198.18.100.2"}]);
    })
    .expect("an sctp dnat rule takes secondary addresses");
    assert_eq!(
        spec.secondary_ips,
        ["198.18.100.2".parse::<std::net::IpAddr>().unwrap()]
    );
}

#[test]
fn empty_secondary_ip_and_allowed_source_lists_are_accepted() {
    let spec = validate_modified(|v| {
        v["secondaryIPs"] = json!([]);
        v["allowedSources"] = json!([]);
    });
    assert!(spec.is_ok());
}

#[test]
fn a_rule_without_endpoints_is_refused() {
    for endpoints in [json!([]), json!(null)] {
        let e = refused(|v| v["endpoints"] = endpoints);
        assert_eq!(e, ValidationError::NoEndpoints);
        assert_eq!(e.field(), "endpoints");
    }
    let e = refused(|v| {
        v.as_object_mut().unwrap().remove("endpoints");
    });
    assert_eq!(e, ValidationError::NoEndpoints);
}

#[test]
fn an_endpoint_with_a_bad_address_is_refused_with_its_index() {
    let e = refused(|v| {
        v["endpoints"] = json!([
            {"endpointIP": "198.18.31.1", "targetPort": 8080, "weight": 1},
            {"endpointIP": "198.18.31.300", "targetPort": 8080, "weight": 1}
        ])
    });
    assert_eq!(e.field(), "endpoints[1].endpointIP");
}

#[test]
fn an_endpoint_with_target_port_zero_keeps_the_clients_port() {
    let spec = validate_modified(|v| v["endpoints"][0]["targetPort"] = json!(0))
        .expect("targetPort 0 is accepted");
    assert_eq!(spec.endpoints[0].target_port, 0);
    let e = refused(|v| v["endpoints"][0]["targetPort"] = json!(-1));
    assert_eq!(e.field(), "endpoints[0].targetPort");
    assert!(e.to_string().contains("out of range"));
}

#[test]
fn a_probe_of_an_endpoint_that_keeps_the_clients_port_needs_a_probeport() {
    let e = refused(|v| {
        v["endpoints"][0]["targetPort"] = json!(0);
        v["serviceArguments"]["monitor"] = json!(true);
        v["serviceArguments"]["probetype"] = json!("tcp");
    });
    assert_eq!(e.field(), "serviceArguments.probeport");
    let spec = validate_modified(|v| {
        v["endpoints"][0]["targetPort"] = json!(0);
        v["serviceArguments"]["monitor"] = json!(true);
        v["serviceArguments"]["probetype"] = json!("tcp");
        v["serviceArguments"]["probeport"] = json!(8080);
    })
    .expect("with a probeport it is accepted");
    assert_eq!(spec.monitor.expect("monitored").port, 8080);
}

#[test]
fn an_endpoint_weight_above_255_is_refused() {
    let e = refused(|v| v["endpoints"][0]["weight"] = json!(256));
    assert_eq!(e.field(), "endpoints[0].weight");
}

#[test]
fn a_duplicate_endpoint_is_refused_naming_both_positions() {
    let e = refused(|v| {
        v["endpoints"] = json!([
            {"endpointIP": "198.18.31.1", "targetPort": 8080, "weight": 1},
            {"endpointIP": "198.18.31.2", "targetPort": 8080, "weight": 1},
            {"endpointIP": "198.18.31.1", "targetPort": 8080, "weight": 2}
        ])
    });
    assert_eq!(e.field(), "endpoints[2]");
    assert_eq!(
        e.to_string(),
        "endpoints[2] 198.18.31.1:8080 is the same endpoint as endpoints[0]"
    );
}

#[test]
fn the_same_endpoint_address_on_two_ports_is_two_endpoints() {
    let spec = validate_modified(|v| {
        v["endpoints"] = json!([
            {"endpointIP": "198.18.31.1", "targetPort": 8080, "weight": 1},
            {"endpointIP": "198.18.31.1", "targetPort": 8081, "weight": 1}
        ])
    })
    .unwrap();
    assert_eq!(spec.endpoints.len(), 2);
}

#[test]
fn modes_one_to_three_are_accepted_and_listed_back_as_sent() {
    for (mode, want) in [(1, NatMode::OneArm), (2, NatMode::FullNat)] {
        let spec = validate_modified(set_arg("mode", json!(mode))).expect("accepted");
        assert_eq!(spec.mode, want);
        assert_eq!(to_entry(&spec).service_arguments.mode, mode);
    }
}

#[test]
fn dsr_needs_endpoints_on_the_service_port_and_says_which_one_is_not() {
    let e = refused(set_arg("mode", json!(3)));
    assert_eq!(e.field(), "endpoints[0].targetPort");
    assert!(e.to_string().contains("set targetPort to 2020"), "{e}");
}

#[test]
fn selections_zero_to_four_are_accepted_and_listed_back_as_sent() {
    for (sel, want) in [
        (0, Selection::RoundRobin),
        (1, Selection::Hash),
        (2, Selection::Priority),
        (3, Selection::Persist),
        (4, Selection::LeastConnections),
    ] {
        let spec = validate_modified(set_arg("sel", json!(sel))).expect("accepted");
        assert_eq!(spec.selection, want);
        assert_eq!(to_entry(&spec).service_arguments.sel, sel);
    }
}

#[test]
fn allowed_sources_are_parsed_and_listed_back() {
    let spec = validate_modified(|v| {
        v["allowedSources"] = json!([{"prefix": "198.18.0.0/24"}, {"prefix": "198.19.1.7"}]);
    })
    .expect("accepted");
    let listed: Vec<String> = to_entry(&spec)
        .allowed_sources
        .iter()
        .map(|s| s.prefix.clone())
        .collect();
    assert_eq!(listed, ["198.18.0.0/24", "198.19.1.7/32"]);
}

#[test]
fn a_bad_allowed_source_is_refused_naming_its_position() {
    for bad in [
        "198.18.0.1/24",
        "198.18.0.0/33",
        "fd00::1/8",
        "fd00::/129",
        "nonsense",
    ] {
        let e = refused(|v| {
            v["allowedSources"] = json!([{"prefix": "198.18.0.0/24"}, {"prefix": bad}]);
        });
        assert_eq!(e.field(), "allowedSources[1].prefix", "{bad}: {e}");
    }
}

#[test]
fn block_is_accepted_and_listed_back() {
    let spec = validate_modified(set_arg("block", json!(1))).expect("accepted");
    assert!(spec.block_new_flows);
    assert_eq!(to_entry(&spec).service_arguments.block, 1);
}

#[test]
fn on_endpoint_down_takes_keep_or_reset_lists_back_only_reset_and_refuses_the_rest_by_name() {
    let keep = validate_modified(|_| {}).unwrap();
    assert_eq!(keep.on_endpoint_down, oxlb_api::OnEndpointDown::Keep);
    assert_eq!(
        validate_modified(set_arg("onEndpointDown", json!("keep")))
            .unwrap()
            .on_endpoint_down,
        oxlb_api::OnEndpointDown::Keep
    );
    let reset = validate_modified(set_arg("onEndpointDown", json!("reset"))).unwrap();
    assert_eq!(reset.on_endpoint_down, oxlb_api::OnEndpointDown::Reset);
    // Listed back as sent; the default stays out of the listing like loxilb's own fields.
    let listed = serde_json::to_value(oxlb_api::to_entry(&reset)).unwrap();
    assert_eq!(listed["serviceArguments"]["onEndpointDown"], json!("reset"));
    let listed = serde_json::to_value(oxlb_api::to_entry(&keep)).unwrap();
    assert!(listed["serviceArguments"].get("onEndpointDown").is_none());
    let e = refused(set_arg("onEndpointDown", json!("drain")));
    assert_eq!(e.field(), "serviceArguments.onEndpointDown");
    assert!(
        e.to_string().contains("keep") && e.to_string().contains("reset"),
        "{e}"
    );
}
