//! oxlbctl: the command line client of oxlb's loxilb-compatible REST API. Tables for people,
//! `-o json` for scripts; the exit status says who said no (see `oxlbctl --help`).
#![forbid(unsafe_code)]

mod args;
mod client;
mod table;

use args::{Call, Cli, Command, GetWhat, Output, SetWhat};
use clap::Parser;
use client::{Access, ApiClient, CallError};
use oxlb_api::{
    BgpNeighGetEntry, BgpNeighList, CiStateList, CiStatusGetEntry, ConntrackEntry, ConntrackList,
    EndpointEntry, EndpointList, HealthResponse, LoadBalancerEntry, LoadBalancerList,
    ResultResponse, StatusResponse,
};
use serde::Serialize;
use std::process::ExitCode;

/// Exit statuses, documented in `--help`.
const REFUSED: u8 = 1;
const USAGE: u8 = 2;
const UNREACHABLE: u8 = 3;

fn main() -> ExitCode {
    // clap exits with 2 on a usage error and 0 for --help and --version.
    let cli = Cli::parse();
    let calls = match args::calls(&cli.command) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("oxlbctl: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let access = Access {
        token_file: cli.token_file.as_deref(),
        ca_file: cli.ca_file.as_deref(),
    };
    let client = match ApiClient::new(&cli.api, &access) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("oxlbctl: {e}");
            return ExitCode::from(USAGE);
        }
    };
    for call in &calls {
        if let Err(e) = run(&client, &cli, call) {
            return report(&e, cli.output);
        }
    }
    ExitCode::SUCCESS
}

/// Sends one call and prints its answer as `cli.output` asks.
fn run(client: &ApiClient, cli: &Cli, call: &Call) -> Result<(), CallError> {
    let body = client.send(call)?;
    let unexpected = |e: serde_json::Error| CallError::Unexpected {
        what: call.what.clone(),
        problem: format!("{e}: {body}"),
    };
    match &cli.command {
        Command::Get { what: GetWhat::Lb } => {
            let list: LoadBalancerList = serde_json::from_str(&body).map_err(unexpected)?;
            match cli.output {
                Output::Json => print_json(&list),
                Output::Table => print!("{}", lb_table(&list.lb_attr)),
            }
        }
        Command::Get {
            what: GetWhat::Status { detail: true },
        } => {
            let status: StatusResponse = serde_json::from_str(&body).map_err(unexpected)?;
            match cli.output {
                Output::Json => print_json(&status),
                Output::Table => print!("{}", status_lines(&status)),
            }
        }
        Command::Get { what: GetWhat::Ep } => {
            let list: EndpointList = serde_json::from_str(&body).map_err(unexpected)?;
            match cli.output {
                Output::Json => print_json(&list),
                Output::Table => print!("{}", ep_table(&list.attr)),
            }
        }
        Command::Get {
            what: GetWhat::Status { detail: false },
        } => {
            let health: HealthResponse = serde_json::from_str(&body).map_err(unexpected)?;
            match cli.output {
                Output::Json => print_json(&health),
                Output::Table => println!("status: {}", health.status),
            }
        }
        Command::Get { what: GetWhat::Ct } => {
            let list: ConntrackList = serde_json::from_str(&body).map_err(unexpected)?;
            match cli.output {
                Output::Json => print_json(&list),
                Output::Table => print!("{}", ct_table(&list.ct_attr)),
            }
        }
        Command::Get {
            what: GetWhat::Cistate,
        } => {
            let list: CiStateList = serde_json::from_str(&body).map_err(unexpected)?;
            match cli.output {
                Output::Json => print_json(&list),
                Output::Table => print!("{}", cistate_table(&list.attr)),
            }
        }
        Command::Get {
            what: GetWhat::Bgpneigh,
        } => {
            let list: BgpNeighList = serde_json::from_str(&body).map_err(unexpected)?;
            match cli.output {
                Output::Json => print_json(&list),
                Output::Table => print!("{}", bgpneigh_table(&list.bgp_nei_attr)),
            }
        }
        Command::Set {
            what: SetWhat::Cistate { .. } | SetWhat::Bgp { .. },
        } => {
            let answer: ResultResponse = serde_json::from_str(&body).map_err(unexpected)?;
            match cli.output {
                Output::Json => println!("{}", body.trim()),
                Output::Table => println!("{}: {}", call.what, answer.result),
            }
        }
        Command::Get {
            what: GetWhat::Loglevel,
        }
        | Command::Set {
            what: SetWhat::Loglevel { .. },
        } => {
            let level: LogLevel = serde_json::from_str(&body).map_err(unexpected)?;
            match cli.output {
                Output::Json => print_json(&level),
                Output::Table => println!("loglevel: {}", level.filter),
            }
        }
        Command::Create { .. } | Command::Delete { .. } => {
            let answer: ResultResponse = serde_json::from_str(&body).map_err(unexpected)?;
            match cli.output {
                // One line per call, so a command creating several rules stays parseable.
                Output::Json => println!("{}", body.trim()),
                Output::Table => println!("{}: {}", call.what, answer.result),
            }
        }
    }
    Ok(())
}

/// The answer of the log-level call; the appliance's own type lives in a crate this client
/// does not link (the whole control plane), and the shape is one field.
#[derive(Debug, serde::Deserialize, Serialize)]
struct LogLevel {
    filter: String,
}

fn report(e: &CallError, output: Output) -> ExitCode {
    match e {
        CallError::Refused { body, .. } if output == Output::Json => {
            println!("{}", body.trim());
            ExitCode::from(REFUSED)
        }
        // A refusal like any other for the exit status; the message says what to give.
        CallError::Unauthorized { body, .. } => {
            if output == Output::Json {
                println!("{}", body.trim());
            }
            eprintln!("oxlbctl: the appliance refused: {e}");
            ExitCode::from(REFUSED)
        }
        CallError::Refused { .. } | CallError::Unexpected { .. } => {
            eprintln!("oxlbctl: the appliance refused: {e}");
            ExitCode::from(REFUSED)
        }
        CallError::Unreachable { .. } => {
            eprintln!("oxlbctl: {e}");
            ExitCode::from(UNREACHABLE)
        }
    }
}

fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("oxlbctl: cannot print JSON: {e}"),
    }
}

/// One row per endpoint; a rule's own columns only on its first row.
fn lb_table(entries: &[LoadBalancerEntry]) -> String {
    let header = [
        "EXT IP", "PORT", "PROTO", "NAME", "MODE", "SEL", "ENDPOINT", "EPORT", "WEIGHT",
    ];
    let mut rows = Vec::new();
    for e in entries {
        let sa = &e.service_arguments;
        let service = vec![
            sa.external_ip.clone(),
            sa.port.to_string(),
            sa.protocol.clone(),
            sa.name.clone(),
            args::mode_name(sa.mode),
            args::select_name(sa.sel),
        ];
        if e.endpoints.is_empty() {
            let mut row = service.clone();
            row.extend([String::new(), String::new(), String::new()]);
            rows.push(row);
        }
        for (i, ep) in e.endpoints.iter().enumerate() {
            let mut row = if i == 0 {
                service.clone()
            } else {
                vec![String::new(); service.len()]
            };
            row.extend([
                ep.endpoint_ip.clone(),
                ep.target_port.to_string(),
                ep.weight.to_string(),
            ]);
            rows.push(row);
        }
    }
    table::render(&header, &rows)
}

/// `key: value` lines, as `get status` prints its one line.
fn status_lines(s: &StatusResponse) -> String {
    format!(
        "status: {}\nversion: {}\nuptime: {}s\nworkers: {}\ninterfaces: {}\nservices: {}\n",
        s.status,
        s.version,
        s.uptime_seconds,
        s.workers,
        s.interfaces.join(", "),
        s.services
    )
}

/// One row per endpoint and probe, columns as loxicmd's `get ep`.
fn ep_table(entries: &[EndpointEntry]) -> String {
    let header = [
        "HOST",
        "NAME",
        "PTYPE",
        "PORT",
        "DURATION",
        "RETRIES",
        "PROBE REQ",
        "PROBE RESP",
        "STATE",
    ];
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.host_name.clone(),
                e.name.clone(),
                e.probe_type.clone(),
                e.probe_port.to_string(),
                e.probe_duration.to_string(),
                e.inactive_retries.to_string(),
                e.probe_req.clone(),
                e.probe_resp.clone(),
                e.curr_state.clone(),
            ]
        })
        .collect();
    table::render(&header, &rows)
}

/// One row per BGP neighbour, columns as loxicmd's `get bgpneigh`.
fn bgpneigh_table(entries: &[BgpNeighGetEntry]) -> String {
    let header = ["PEER", "AS", "UP/DOWN", "STATE"];
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.ip_address.clone(),
                e.remote_as.to_string(),
                e.updowntime.clone(),
                e.state.clone(),
            ]
        })
        .collect();
    table::render(&header, &rows)
}

/// One row per cluster instance, columns as loxicmd's `get ha`.
fn cistate_table(entries: &[CiStatusGetEntry]) -> String {
    let header = ["INSTANCE", "HASTATE", "VIP"];
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| vec![e.instance.clone(), e.state.clone(), e.vip.clone()])
        .collect();
    table::render(&header, &rows)
}

/// One row per direction of a connection, columns as loxicmd's `get ct`.
fn ct_table(entries: &[ConntrackEntry]) -> String {
    let header = [
        "SERVICE NAME",
        "DESTIP",
        "SRCIP",
        "DPORT",
        "SPORT",
        "PROTO",
        "STATE",
        "ACT",
        "PACKETS",
        "BYTES",
    ];
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.serv_name.clone(),
                e.destination_ip.clone(),
                e.source_ip.clone(),
                e.destination_port.to_string(),
                e.source_port.to_string(),
                e.protocol.clone(),
                e.conntrack_state.clone(),
                e.conntrack_act.clone(),
                e.packets.to_string(),
                e.bytes.to_string(),
            ]
        })
        .collect();
    table::render(&header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cistate_table_shows_one_row_per_instance() {
        let t = cistate_table(&[CiStatusGetEntry {
            instance: "llb-inst0".into(),
            state: "MASTER".into(),
            vip: "0.0.0.0".into(),
            sync: 0,
        }]);
        assert_eq!(
            t.lines().nth(2),
            Some("| llb-inst0 | MASTER  | 0.0.0.0 |"),
            "{t}"
        );
    }

    #[test]
    fn the_ct_table_shows_one_row_per_entry() {
        let list: ConntrackList = serde_json::from_str(
            r#"{"ctAttr":[{"sourceIP":"198.18.0.2","destinationIP":"198.18.100.1","sourcePort":40000,
                "destinationPort":2020,"protocol":"tcp","conntrackState":"est",
                "conntrackAct":"dnat-198.18.31.1:8080:w1","packets":3,"bytes":180,"servName":"web"}]}"#,
        )
        .unwrap();
        let t = ct_table(&list.ct_attr);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("| SERVICE NAME | DESTIP "), "{t}");
        assert!(
            lines[2].contains("| web          | 198.18.100.1 | 198.18.0.2 | 2020  | 40000 | tcp   | est   | dnat-198.18.31.1:8080:w1 | 3       | 180   |"),
            "{t}"
        );
    }

    #[test]
    fn the_ep_table_shows_one_row_per_endpoint_with_its_state() {
        let list: EndpointList = serde_json::from_str(
            r#"{"Attr":[{"hostName":"198.18.31.1","name":"198.18.31.1_tcp_8080","inactiveReTries":2,
                "probeType":"tcp","probeDuration":1,"probePort":8080,"currState":"nok"}]}"#,
        )
        .unwrap();
        let t = ep_table(&list.attr);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("| HOST "), "{t}");
        let cells: Vec<&str> = lines[2].split('|').map(str::trim).collect();
        assert_eq!(
            cells,
            [
                "",
                "198.18.31.1",
                "198.18.31.1_tcp_8080",
                "tcp",
                "8080",
                "1",
                "2",
                "",
                "",
                "nok",
                ""
            ],
            "{t}"
        );
    }

    #[test]
    fn the_detailed_status_is_one_key_per_line_starting_with_the_plain_status() {
        let s = StatusResponse {
            status: "ok".into(),
            version: "0.1.0".into(),
            uptime_seconds: 3,
            workers: 1,
            interfaces: vec!["lb0".into(), "lb1".into()],
            services: 2,
        };
        assert_eq!(
            status_lines(&s),
            "status: ok\nversion: 0.1.0\nuptime: 3s\nworkers: 1\ninterfaces: lb0, lb1\nservices: 2\n"
        );
    }

    #[test]
    fn a_401_says_which_token_to_give() {
        let none = CallError::Unauthorized {
            message: "this API needs a token".into(),
            body: String::new(),
            token_file: None,
        };
        assert!(none.to_string().contains("--token-file PATH"), "{none}");
        let wrong = CallError::Unauthorized {
            message: "not the one".into(),
            body: String::new(),
            token_file: Some("/etc/oxlb/token".into()),
        };
        assert!(
            wrong
                .to_string()
                .contains("the token in /etc/oxlb/token was not accepted"),
            "{wrong}"
        );
    }

    #[test]
    fn the_lb_table_shows_one_row_per_endpoint_with_names_for_numbers() {
        let list: LoadBalancerList = serde_json::from_str(
            r#"{"lbAttr":[{"serviceArguments":{"externalIP":"198.18.100.1","port":2020,"protocol":"tcp","mode":2,"name":"web"},
                "endpoints":[{"endpointIP":"198.18.31.1","targetPort":8080,"weight":1},
                             {"endpointIP":"198.18.31.2","targetPort":8080,"weight":2}]}]}"#,
        )
        .unwrap();
        let t = lb_table(&list.lb_attr);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("| EXT IP "), "{t}");
        assert!(
            lines[2]
                .contains("| 198.18.100.1 | 2020 | tcp   | web  | fullnat | rr  | 198.18.31.1 |"),
            "{t}"
        );
        assert!(lines[3].starts_with("|              |      |"), "{t}");
        assert!(lines[3].contains("198.18.31.2 | 8080  | 2      |"), "{t}");
    }
}
