//! kube-loxilb's command-line flags, same names and meanings, parsed with clap; Go-style
//! single-dash spellings (`-loxiURL=...`) are accepted too. A flag oxlb-operator does not
//! implement yet is refused at start with a message naming it, never silently ignored.

use clap::Parser;
use std::net::{IpAddr, Ipv4Addr};

/// Flags (see control/operator/README.md for each one's state).
#[derive(Debug, Clone, Parser, PartialEq, Eq)]
#[command(
    name = "oxlb-operator",
    version,
    about = "Programs Kubernetes LoadBalancer Services onto oxlb appliances (kube-loxilb compatible)"
)]
pub struct Flags {
    /// Something else than running the operator (oxlb addition; kube-loxilb has none).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// YAML file with kube-loxilb's keys; flags given on the command line win.
    #[arg(long = "config", default_value = "")]
    pub config: String,
    /// `loxilbLoadBalancerClass` (config file only, as in kube-loxilb).
    #[arg(skip = kube_watcher::desired::LOXILB_CLASS.to_owned())]
    pub lb_class: String,
    /// Comma-separated appliance API URLs, e.g. http://10.0.0.1:11111; empty: the appliances
    /// are the ready endpoints of Service loxilb-lb-service (as kube-loxilb finds them).
    #[arg(long = "loxiURL", default_value = "")]
    pub loxi_url: String,
    /// The default pool (`defaultPool`), a CIDR or FIRST-LAST; replaces --cidrPools.
    #[arg(long = "externalCIDR", default_value = "")]
    pub external_cidr: String,
    /// Named pools: name=CIDR|FIRST-LAST,...
    #[arg(long = "cidrPools", default_value = "")]
    pub cidr_pools: String,
    /// IPv6 pools, same syntax as --cidrPools (kube-loxilb's default: defaultPool=3ffe:cafe::1/96).
    #[arg(long = "cidr6Pools", default_value = "")]
    pub cidr6_pools: String,
    /// Pools of secondary (multi-homed SCTP) addresses: CIDR|FIRST-LAST,... (at most 3);
    /// `loxilb.io/num-secondary-networks: N` takes one address from each of the first N.
    #[arg(long = "externalSecondaryCIDRs", default_value = "")]
    pub external_secondary_cidrs: String,
    /// Default NAT mode: 0 DNAT, 1 one-arm, 2 full-NAT.
    #[arg(long = "setLBMode", default_value_t = 0)]
    pub set_lb_mode: u16,
    /// One address per Service instead of sharing addresses across ports.
    #[arg(long = "setUniqueIP", num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub set_unique_ip: bool,
    /// Probe every rule's endpoints.
    #[arg(long = "monitor", num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub monitor: bool,
    /// The appliances' local AS: configure their BGP and advertise every service address.
    #[arg(long = "setBGP", default_value_t = 0)]
    pub set_bgp: u16,
    /// The appliances' BGP listen port (179 when not given).
    #[arg(long = "listenBGPPort", default_value_t = 0)]
    pub listen_bgp_port: u16,
    /// Multi-hop sessions with the --extBGPPeers.
    #[arg(long = "eBGPMultiHop", num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub ebgp_multi_hop: bool,
    /// External BGP peers of every appliance: IP:ASN,...
    #[arg(long = "extBGPPeers", default_value = "")]
    pub ext_bgp_peers: String,
    /// Watch BGPPeerService objects and add each peer to every appliance.
    #[arg(long = "enableBGPCRDs", num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub enable_bgp_crds: bool,
    /// Elect one MASTER appliance, the others BACKUP; the value is the VIP sent with the roles
    /// (`0.0.0.0` for none).
    #[arg(long = "setRoles", default_value = "")]
    pub set_roles: String,
    /// The zone named in rule names and status host names (`llb` by default).
    #[arg(long = "zone", default_value = "")]
    pub zone: String,
    #[arg(long = "numZoneInstances", default_value_t = 1)]
    pub num_zone_instances: u32,
    /// Appliance addresses (--loxiURL or discovered ones) never elected MASTER, comma-separated.
    #[arg(long = "excludeRoleList", default_value = "")]
    pub exclude_role_list: String,
    /// Attach and detach endpoints of existing rules instead of posting them whole.
    #[arg(long = "appendEPs", num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub append_eps: bool,
    /// Endpoints are pod addresses (instead of node addresses with the nodePort).
    #[arg(long = "usePodNetwork", num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub use_pod_network: bool,
    #[arg(long = "useExternalEndpoint", num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub use_external_endpoint: bool,
    /// No zone: rules are named `<ns>_<svc>:-inst0` and the status shows plain IPs.
    #[arg(long = "noZoneName", num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub no_zone_name: bool,
    #[arg(long = "privateCIDR", default_value = "")]
    pub private_cidr: String,
    #[arg(long = "enableK8sMetadata", num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub enable_k8s_metadata: bool,
    #[arg(long = "gatewayAPI", num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub gateway_api: bool,
    #[arg(long = "loxilbGatewayClass", default_value = "")]
    pub loxilb_gateway_class: String,
    /// oxlb addition: seconds between full resyncs of every Service with every appliance.
    #[arg(long = "resyncPeriod", default_value_t = 60)]
    pub resync_period: u64,
    /// oxlb addition: a file holding the appliances' API token, sent as
    /// `Authorization: Bearer <token>` (kube-loxilb's per-appliance `ACCESS_TOKEN_<host>_<port>`
    /// variable wins for its appliance).
    #[arg(long = "apiTokenFile", default_value = "")]
    pub api_token_file: String,
}

/// What the binary does instead of running the operator.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Print the CustomResourceDefinitions of BGPPeerService and LoxiURL as YAML
    /// (`deploy/kube/crds.yaml`) and exit.
    Crd,
}

/// A flag given that oxlb-operator does not implement yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag} is not implemented yet by oxlb-operator ({what}); remove it")]
pub struct Refused {
    pub flag: &'static str,
    pub what: &'static str,
}

/// A flag value kube-loxilb refuses too.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadValue {
    #[error(
        "--setRoles {0:?} is not an IP address (the VIP sent with the roles; 0.0.0.0 for none)"
    )]
    SetRoles(String),
    #[error("--excludeRoleList: {0:?} is not an IPv4 address")]
    ExcludeRole(String),
    #[error("--excludeRoleList has {0} addresses; at most 128 are allowed")]
    TooManyExcluded(usize),
}

/// Turns Go-style `-name` / `-name=value` into `--name...`; leaves everything else.
pub fn go_style(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let single = i > 0
                && a.len() > 2
                && a.starts_with('-')
                && !a.starts_with("--")
                && a.as_bytes()[1].is_ascii_alphabetic();
            if single {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

impl Flags {
    /// The first flag given whose feature is missing, or `Ok`.
    pub fn check_implemented(&self) -> Result<(), Refused> {
        let checks: [(bool, &'static str, &'static str); 6] = [
            (
                !self.config.is_empty(),
                "config",
                "give the settings as flags",
            ),
            (
                self.num_zone_instances != 1,
                "numZoneInstances",
                "several zone instances; use 1",
            ),
            (
                self.use_external_endpoint,
                "useExternalEndpoint",
                "external endpoints",
            ),
            (
                !self.private_cidr.is_empty(),
                "privateCIDR",
                "private addresses",
            ),
            (
                self.enable_k8s_metadata,
                "enableK8sMetadata",
                "metadata sync",
            ),
            (
                self.gateway_api || !self.loxilb_gateway_class.is_empty(),
                if self.gateway_api {
                    "gatewayAPI"
                } else {
                    "loxilbGatewayClass"
                },
                "Gateway API: Gateway, GatewayClass and routes; use LoadBalancer Services",
            ),
        ];
        match checks.into_iter().find(|c| c.0) {
            Some((_, flag, what)) => Err(Refused { flag, what }),
            None => Ok(()),
        }
    }

    /// The appliance URLs, trimmed, trailing `/` removed.
    pub fn appliance_urls(&self) -> Vec<String> {
        self.loxi_url
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// The VIP of `--setRoles`, or None when roles are off. kube-loxilb accepts any IP here.
    pub fn roles_vip(&self) -> Result<Option<IpAddr>, BadValue> {
        if self.set_roles.is_empty() {
            return Ok(None);
        }
        self.set_roles
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| BadValue::SetRoles(self.set_roles.clone()))
    }

    /// The addresses of `--excludeRoleList`: IPv4, at most 128, as kube-loxilb checks them.
    pub fn excluded_role_hosts(&self) -> Result<Vec<Ipv4Addr>, BadValue> {
        let items: Vec<&str> = self
            .exclude_role_list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if items.len() > 128 {
            return Err(BadValue::TooManyExcluded(items.len()));
        }
        items
            .into_iter()
            .map(|s| s.parse().map_err(|_| BadValue::ExcludeRole(s.to_owned())))
            .collect()
    }

    /// The zone as kube-loxilb derives it: `--zone`, else `llb`, else empty with `--noZoneName`.
    pub fn zone(&self) -> String {
        match (self.zone.as_str(), self.no_zone_name) {
            ("", true) => String::new(),
            ("", false) => "llb".to_owned(),
            (z, _) => z.to_owned(),
        }
    }
}

/// Why `--config` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("--config {path}: key {key} is not implemented yet by oxlb-operator; remove it")]
    NotImplemented { path: String, key: &'static str },
    #[error(
        "--config {path}: loxilbLoadBalancerClass {class:?} must look like a label (name/value)"
    )]
    BadClass { path: String, class: String },
}

/// kube-loxilb's configuration file: its keys (`yaml` tags), unknown keys refused as its strict
/// parser does.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConfigFile {
    client_connection: Option<serde_json::Value>,
    host_proc_path_prefix: Option<String>,
    with_namespace: Option<bool>,
    #[serde(rename = "loxiURL")]
    loxi_url: Option<Vec<String>>,
    node_port_service_virt_ip: Option<String>,
    loxilb_load_balancer_class: Option<String>,
    #[serde(rename = "gatewayAPI")]
    gateway_api: Option<bool>,
    loxilb_gateway_class: Option<String>,
    #[serde(rename = "externalCIDR")]
    external_cidr: Option<String>,
    cidr_pools: Option<Vec<String>>,
    cidr6_pools: Option<Vec<String>>,
    #[serde(rename = "extBGPPeers")]
    ext_bgp_peers: Option<Vec<String>>,
    #[serde(rename = "setBGP")]
    set_bgp: Option<u16>,
    #[serde(rename = "listenBGPPort")]
    listen_bgp_port: Option<u16>,
    #[serde(rename = "eBGPMultiHop")]
    ebgp_multi_hop: Option<bool>,
    #[serde(rename = "setLBMode")]
    set_lb_mode: Option<u16>,
    #[serde(rename = "setExclIPAM")]
    set_excl_ipam: Option<bool>,
    monitor: Option<bool>,
    #[serde(rename = "appendEPs")]
    append_eps: Option<bool>,
    set_roles: Option<String>,
    zone: Option<String>,
    exclude_role_list: Option<Vec<String>>,
    #[serde(rename = "privateCIDR")]
    private_cidr: Option<String>,
    #[serde(rename = "enableBGPCRDs")]
    enable_bgp_crds: Option<bool>,
    #[serde(rename = "numZoneInstances")]
    num_zone_inst: Option<u32>,
    use_pod_network: Option<bool>,
    use_external_endpoint: Option<bool>,
    no_zone_name: Option<bool>,
    #[serde(rename = "enableK8sMetadata")]
    enable_k8s_metadata: Option<bool>,
}

impl Flags {
    /// Reads `--config` (when given) and fills every setting still at its default from it.
    pub fn with_config_file(self) -> Result<Flags, ConfigError> {
        if self.config.is_empty() {
            return Ok(self);
        }
        let path = self.config.clone();
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        self.with_config_text(&path, &text)
    }

    /// [`Flags::with_config_file`] on the file's text.
    pub fn with_config_text(mut self, path: &str, text: &str) -> Result<Flags, ConfigError> {
        let c: ConfigFile = if text.trim().is_empty() {
            ConfigFile::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?
        };
        let refused = [
            (c.client_connection.is_some(), "clientConnection"),
            (c.host_proc_path_prefix.is_some(), "hostProcPathPrefix"),
            (c.with_namespace.is_some(), "withNamespace"),
            (
                c.node_port_service_virt_ip.is_some(),
                "nodePortServiceVirtIP",
            ),
        ];
        if let Some((_, key)) = refused.into_iter().find(|r| r.0) {
            return Err(ConfigError::NotImplemented {
                path: path.to_owned(),
                key,
            });
        }
        if let Some(class) = c.loxilb_load_balancer_class {
            if !class.contains('/') {
                return Err(ConfigError::BadClass {
                    path: path.to_owned(),
                    class,
                });
            }
            self.lb_class = class;
        }
        fn text_or(flag: &mut String, file: Option<String>) {
            if flag.is_empty() {
                if let Some(v) = file {
                    *flag = v;
                }
            }
        }
        fn list_or(flag: &mut String, file: Option<Vec<String>>) {
            text_or(flag, file.map(|v| v.join(",")));
        }
        fn bool_or(flag: &mut bool, file: Option<bool>) {
            *flag = *flag || file.unwrap_or(false);
        }
        fn num_or<T: PartialEq + Copy>(flag: &mut T, default: T, file: Option<T>) {
            if *flag == default {
                if let Some(v) = file {
                    *flag = v;
                }
            }
        }
        list_or(&mut self.loxi_url, c.loxi_url);
        text_or(&mut self.external_cidr, c.external_cidr);
        list_or(&mut self.cidr_pools, c.cidr_pools);
        list_or(&mut self.cidr6_pools, c.cidr6_pools);
        list_or(&mut self.ext_bgp_peers, c.ext_bgp_peers);
        list_or(&mut self.exclude_role_list, c.exclude_role_list);
        text_or(&mut self.loxilb_gateway_class, c.loxilb_gateway_class);
        text_or(&mut self.set_roles, c.set_roles);
        text_or(&mut self.zone, c.zone);
        text_or(&mut self.private_cidr, c.private_cidr);
        bool_or(&mut self.gateway_api, c.gateway_api);
        bool_or(&mut self.ebgp_multi_hop, c.ebgp_multi_hop);
        bool_or(&mut self.set_unique_ip, c.set_excl_ipam);
        bool_or(&mut self.monitor, c.monitor);
        bool_or(&mut self.append_eps, c.append_eps);
        bool_or(&mut self.enable_bgp_crds, c.enable_bgp_crds);
        bool_or(&mut self.use_pod_network, c.use_pod_network);
        bool_or(&mut self.use_external_endpoint, c.use_external_endpoint);
        bool_or(&mut self.no_zone_name, c.no_zone_name);
        bool_or(&mut self.enable_k8s_metadata, c.enable_k8s_metadata);
        num_or(&mut self.set_bgp, 0, c.set_bgp);
        num_or(&mut self.listen_bgp_port, 0, c.listen_bgp_port);
        num_or(&mut self.set_lb_mode, 0, c.set_lb_mode);
        num_or(&mut self.num_zone_instances, 1, c.num_zone_inst);
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Flags, clap::Error> {
        let all =
            std::iter::once("oxlb-operator".to_owned()).chain(args.iter().map(|s| (*s).to_owned()));
        Flags::try_parse_from(go_style(all))
    }

    #[test]
    fn kube_loxilb_flags_parse_with_one_or_two_dashes() {
        let f = parse(&[
            "-loxiURL=http://a:11111/,http://b:11111",
            "--externalCIDR=198.18.100.0/24",
            "-setUniqueIP",
            "--monitor=false",
            "-setLBMode",
            "0",
            "--zone",
            "az1",
        ])
        .unwrap();
        assert_eq!(f.appliance_urls(), vec!["http://a:11111", "http://b:11111"]);
        assert_eq!(f.external_cidr, "198.18.100.0/24");
        assert!(f.set_unique_ip && !f.monitor);
        assert_eq!(f.zone(), "az1");
        f.check_implemented().unwrap();
    }

    #[test]
    fn the_zone_defaults_to_llb_and_no_zone_name_empties_it() {
        assert_eq!(parse(&["--loxiURL=http://a"]).unwrap().zone(), "llb");
        assert_eq!(
            parse(&["--loxiURL=http://a", "--noZoneName"])
                .unwrap()
                .zone(),
            ""
        );
    }

    #[test]
    fn every_unimplemented_flag_is_refused_by_name() {
        for (arg, name) in [
            ("--numZoneInstances=2", "numZoneInstances"),
            ("--useExternalEndpoint", "useExternalEndpoint"),
            ("--privateCIDR=10.0.0.1/32", "privateCIDR"),
            ("--enableK8sMetadata", "enableK8sMetadata"),
            ("--gatewayAPI", "gatewayAPI"),
            ("--loxilbGatewayClass=a/b", "loxilbGatewayClass"),
        ] {
            let f = parse(&["--loxiURL=http://a", arg]).unwrap();
            let e = f.check_implemented().unwrap_err();
            assert_eq!(e.flag, name);
            assert!(
                e.to_string()
                    .starts_with(&format!("--{name} is not implemented")),
                "{e}"
            );
        }
        // No --loxiURL: the appliances are discovered.
        parse(&[]).unwrap().check_implemented().unwrap();
    }

    #[test]
    fn roles_take_an_ip_and_the_exclusion_list_ipv4_addresses() {
        let f = parse(&["--loxiURL=http://a", "--setRoles=0.0.0.0", "--appendEPs"]).unwrap();
        f.check_implemented().unwrap();
        assert_eq!(f.roles_vip().unwrap(), Some("0.0.0.0".parse().unwrap()));
        assert!(f.append_eps);
        assert_eq!(parse(&[]).unwrap().roles_vip().unwrap(), None);
        let bad = parse(&["--setRoles=master"]).unwrap();
        assert_eq!(
            bad.roles_vip().unwrap_err(),
            BadValue::SetRoles("master".into())
        );
        let ex = parse(&["--excludeRoleList=198.18.0.1, 198.18.0.2"]).unwrap();
        assert_eq!(ex.excluded_role_hosts().unwrap().len(), 2);
        let ex6 = parse(&["--excludeRoleList=::1"]).unwrap();
        assert!(ex6.excluded_role_hosts().is_err());
    }

    #[test]
    fn bgp_crds_are_accepted_and_crd_is_a_subcommand() {
        let f = parse(&["--loxiURL=http://a", "-enableBGPCRDs"]).unwrap();
        assert!(f.enable_bgp_crds);
        f.check_implemented().unwrap();
        assert_eq!(parse(&["crd"]).unwrap().command, Some(Command::Crd));
        assert_eq!(parse(&["--loxiURL=http://a"]).unwrap().command, None);
    }

    #[test]
    fn unknown_flags_are_errors() {
        assert!(parse(&["--loxiURL=http://a", "--noSuchFlag"]).is_err());
    }

    #[test]
    fn a_kube_loxilb_config_file_fills_what_the_flags_leave_unset() {
        let yaml = "loxiURL:\n  - http://a:11111\n  - http://b:11111\n\
                    loxilbLoadBalancerClass: example.com/lb\n\
                    cidrPools:\n  - defaultPool=198.18.100.0/24\n  - other=198.18.101.1-198.18.101.9\n\
                    setExclIPAM: true\nsetLBMode: 1\nzone: az9\nusePodNetwork: true\n";
        let f = parse(&["--zone=cli"])
            .unwrap()
            .with_config_text("c.yaml", yaml)
            .unwrap();
        assert_eq!(f.appliance_urls(), vec!["http://a:11111", "http://b:11111"]);
        assert_eq!(f.lb_class, "example.com/lb");
        assert_eq!(
            f.cidr_pools,
            "defaultPool=198.18.100.0/24,other=198.18.101.1-198.18.101.9"
        );
        assert!(f.set_unique_ip && f.use_pod_network);
        assert_eq!((f.set_lb_mode, f.zone()), (1, "cli".to_owned()));
        f.check_implemented().unwrap();
    }

    #[test]
    fn config_files_with_unknown_keys_or_unimplemented_settings_are_refused() {
        let f = parse(&[]).unwrap();
        let e = f
            .clone()
            .with_config_text("c.yaml", "loxiUrl: x\n")
            .unwrap_err();
        assert!(e.to_string().contains("c.yaml"), "{e}");
        let e = f
            .clone()
            .with_config_text("c.yaml", "hostProcPathPrefix: /\n")
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("hostProcPathPrefix is not implemented"),
            "{e}"
        );
        let e = f
            .clone()
            .with_config_text("c.yaml", "loxilbLoadBalancerClass: nope\n")
            .unwrap_err();
        assert!(e.to_string().contains("must look like a label"), "{e}");
        let g = f
            .with_config_text("c.yaml", "loxiURL: [http://a]\nsetBGP: 65001\n")
            .unwrap();
        assert_eq!(g.set_bgp, 65001);
        g.check_implemented().unwrap();
    }
}
