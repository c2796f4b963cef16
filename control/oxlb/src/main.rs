//! The oxlb appliance binary: command line, privilege checks and the wiring of the XDP program,
//! the dataplane workers and the control plane.
#![forbid(unsafe_code)]

mod config;
mod interfaces;
mod logging;
mod notify;
mod privileges;
mod snat_ports;

use clap::{Parser, Subcommand};
use oxlb_control::appliance::ApplianceCore;
use oxlb_control::auth::{self, ApiToken};
use oxlb_control::http::{self, About, ApiOptions, Appliance};
use oxlb_control::nexthop::NextHopResolver;
use oxlb_control::ops::LogHandle;
use oxlb_control::persist::StateStore;
use oxlb_control::probe;
use oxlb_control::state::DesiredState;
use oxlb_dataplane::{Dataplane, DataplaneConfig, DEFAULT_CONNTRACK_CAPACITY};
use oxlb_xdp::XdpRedirect;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// How long API requests in flight at SIGTERM/SIGINT may take to finish; then their
/// connections are closed. With the rest of the stop it stays well inside the 5 s a service
/// manager or test harness typically grants before SIGKILL.
const API_DRAIN: Duration = Duration::from_secs(3);
/// How long work a request started off the async threads (a change being applied and saved,
/// a conntrack listing) may go on after the API closed.
const BLOCKING_DRAIN: Duration = Duration::from_secs(1);
/// How long the BGP speaker may take to close its sessions at a stop.
const BGP_STOP: Duration = Duration::from_secs(3);

#[derive(Parser)]
#[command(
    name = "oxlb",
    version,
    about = "oxlb: an L4 service load balancer (XDP + AF_XDP)"
)]
struct Cli {
    /// How log lines are written to stderr: text, or one JSON object per line for log
    /// shippers. Which lines: RUST_LOG (default info), changeable while running through
    /// /netlox/v1/config/loglevel (`oxlbctl set loglevel FILTER`).
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach to the interfaces and serve the loxilb-compatible REST API until SIGINT/SIGTERM.
    Run {
        /// An interface to serve (client side, endpoint side, or both); repeat for several.
        #[arg(long = "iface", required = true)]
        ifaces: Vec<String>,
        /// Address of the REST API. Any address but a loopback one needs --api-token-file.
        #[arg(long, default_value = "127.0.0.1:11111")]
        api: SocketAddr,
        /// File holding the API's bearer token (surrounding whitespace is trimmed). Every
        /// request, GET /netlox/v1/ included, must then send `Authorization: Bearer TOKEN`,
        /// or is answered 401 and changes nothing. Make one with `openssl rand -hex 32`.
        #[arg(long, value_name = "PATH")]
        api_token_file: Option<PathBuf>,
        /// PEM certificate chain of the API: with --api-tls-key, the API speaks HTTPS only.
        #[arg(long, value_name = "PATH", requires = "api_tls_key")]
        api_tls_cert: Option<PathBuf>,
        /// PEM private key of --api-tls-cert.
        #[arg(long, value_name = "PATH", requires = "api_tls_cert")]
        api_tls_key: Option<PathBuf>,
        /// TOML file of services to install at start (see configs/oxlb.toml). Applied on top
        /// of the saved state: an entry replaces a saved service with the same external IP,
        /// port and protocol, and is saved with the rest.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Directory of the state file (DIR/state.json), created if missing. Every change the
        /// API accepts is saved there before it is answered, and restored at start; a state
        /// file that cannot be read stops the start (repair it or move it away).
        #[arg(long, default_value = "/var/lib/oxlb")]
        state_dir: PathBuf,
        /// Flows each worker can track; new flows beyond it are refused and counted.
        #[arg(long, default_value_t = DEFAULT_CONNTRACK_CAPACITY)]
        conntrack_capacity: usize,
        /// IPv6 and NAT64 flows each worker can track (a table of its own, about 170 bytes
        /// per flow against 121 for IPv4).
        #[arg(long, default_value_t = DEFAULT_CONNTRACK_CAPACITY / 4)]
        conntrack_capacity_v6: usize,
        /// Source ports of one-arm and full-NAT flows, FIRST-LAST; reserved from the kernel's
        /// own ephemeral ports while oxlb runs.
        #[arg(long, default_value = "40000-49999")]
        snat_ports: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = match logging::init(cli.log_format) {
        Ok(started) => {
            if let Some(e) = started.ignored_env {
                warn!("RUST_LOG: {e}; logging with {:?}", logging::DEFAULT_FILTER);
            }
            LogHandle::new(Arc::new(started.logging))
        }
        Err(e) => {
            eprintln!("oxlb: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Cmd::Run {
            ifaces,
            api,
            api_token_file,
            api_tls_cert,
            api_tls_key,
            config,
            state_dir,
            conntrack_capacity,
            conntrack_capacity_v6,
            snat_ports,
        } => match api_security(
            api,
            api_token_file.as_deref(),
            api_tls_cert.as_deref().zip(api_tls_key.as_deref()),
        )
        .and_then(|mut security| {
            security.log = Some(log);
            run(
                ifaces,
                api,
                security,
                config,
                &state_dir,
                (conntrack_capacity, conntrack_capacity_v6),
                &snat_ports,
            )
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("oxlb: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The API's token and TLS configuration, refused before anything else is done if a file
/// cannot be used or the API would be reachable from other hosts without a token.
fn api_security(
    api: SocketAddr,
    token_file: Option<&Path>,
    tls_files: Option<(&Path, &Path)>,
) -> Result<ApiOptions, String> {
    let token = token_file
        .map(ApiToken::from_file)
        .transpose()
        .map_err(|e| e.to_string())?;
    auth::check_exposure(api, token.as_ref()).map_err(|e| e.to_string())?;
    let tls = tls_files
        .map(|(cert, key)| oxlb_control::tls::server_config(cert, key))
        .transpose()
        .map_err(|e| e.to_string())?;
    if token.is_some() && tls.is_none() && !api.ip().is_loopback() {
        warn!(%api, "the API on {api} has a token but no TLS: the token crosses the network in clear; give --api-tls-cert and --api-tls-key");
    }
    Ok(ApiOptions {
        token,
        tls,
        about: About::default(),
        log: None,
    })
}

fn run(
    ifaces: Vec<String>,
    api: SocketAddr,
    mut security: ApiOptions,
    config: Option<PathBuf>,
    state_dir: &Path,
    (conntrack_capacity, conntrack_capacity_v6): (usize, usize),
    snat_ports: &str,
) -> Result<(), String> {
    let started = Instant::now();
    let snat_ports = snat_ports::parse(snat_ports)?;
    let missing = privileges::missing();
    if !missing.is_empty() {
        return Err(format!(
            "run it as root or with the capabilities CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF, CAP_PERFMON and CAP_IPC_LOCK (or a locked-memory limit of 64 MiB), which loading the XDP program and opening AF_XDP sockets need (missing: {}).",
            missing.join(", ")
        ));
    }
    // Everything that can be refused is checked before the first interface is touched.
    let initial = match &config {
        Some(path) => config::load(path).map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    let interfaces = interfaces::discover(&ifaces).map_err(|e| e.to_string())?;
    let store = StateStore::open(state_dir).map_err(|e| e.to_string())?;
    let saved = store.load().map_err(|e| e.to_string())?;
    let state_file = store.path().display().to_string();
    let listener = std::net::TcpListener::bind(api)
        .map_err(|e| format!("cannot serve the API on {api}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("API socket: {e}"))?;

    let mut xdp = XdpRedirect::attach(&ifaces).map_err(|e| e.to_string())?;
    let dataplane = Dataplane::start(
        DataplaneConfig {
            interfaces,
            conntrack_capacity,
            conntrack_capacity_v6,
            snat_ports,
        },
        |ifindex, queue, fd| {
            xdp.register_socket(ifindex, queue, fd)
                .map_err(|e| e.to_string())
        },
    )
    .map_err(|e| e.to_string())?;
    let scheme = if security.tls.is_some() {
        "https"
    } else {
        "http"
    };
    info!(
        workers = dataplane.worker_count(),
        %api,
        "serving {} with {} worker(s); API on {scheme}://{api}/netlox/v1/{}",
        ifaces.join(", "),
        dataplane.worker_count(),
        if security.token.is_some() {
            " (bearer token required)"
        } else {
            ""
        }
    );
    security.about = About {
        interfaces: ifaces.clone(),
        workers: dataplane.worker_count(),
        started,
    };
    let resolver = NextHopResolver::new().map_err(|e| e.to_string())?;
    snat_ports::reserve(snat_ports)?;
    let core = Arc::new(ApplianceCore::new(
        dataplane, xdp, resolver, snat_ports, store,
    ));

    let restored = saved.as_ref().map_or(0, DesiredState::len);
    let mut state = saved.unwrap_or_default();
    let from_config = initial.len();
    for spec in initial {
        state.upsert(spec);
    }
    if !state.is_empty() {
        core.apply(state).map_err(|e| e.to_string())?;
    }
    info!(
        restored,
        from_config,
        state_file = %state_file,
        "restored {restored} service(s) from {state_file}; {from_config} from the config file"
    );

    let control = {
        let core = core.clone();
        std::thread::Builder::new()
            .name("oxlb-control".into())
            .spawn(move || control_plane(core, listener, security))
            .map_err(|e| format!("cannot start the control thread: {e}"))?
    };
    notify::ready(&format!("serving {}; API on {api}", ifaces.join(", ")));
    let result = control
        .join()
        .map_err(|_| "the control plane panicked".to_string())?;
    notify::stopping();
    log_totals(&core);
    // The API is closed and its work joined, so this is normally the last reference; dropping
    // it stops the workers (after they pushed out pending TX) and then detaches the XDP
    // program. Every accepted change was saved before it was answered: nothing is left to
    // persist here.
    match Arc::try_unwrap(core) {
        Ok(core) => {
            drop(core);
            info!(state_file = %state_file, "stopped; XDP program detached");
        }
        // A request's blocking work outlived BLOCKING_DRAIN. Exiting still detaches XDP: the
        // program is held by bpf_link descriptors that close with the process.
        Err(_) => warn!(
            "stopping with API work still running; the XDP program is detached as the process exits"
        ),
    }
    result
}

/// The tokio runtime of the control plane: the REST API, the next-hop refresher, the endpoint
/// health probes, and the signal handling that ends them.
fn control_plane(
    core: Arc<ApplianceCore>,
    listener: std::net::TcpListener,
    options: ApiOptions,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the control runtime: {e}"))?;
    let result = rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|e| format!("API socket: {e}"))?;
        let refresher = {
            let core = core.clone();
            tokio::spawn(async move {
                loop {
                    let c = core.clone();
                    let pending = tokio::task::spawn_blocking(move || c.refresh_next_hops())
                        .await
                        .unwrap_or(true);
                    let pause = if pending { 100 } else { 1000 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            })
        };
        let prober = tokio::spawn(probe::supervise(core.clone()));
        let bgp = tokio::spawn(core.bgp().run());
        let app: Arc<dyn Appliance> = core.clone();
        let (stopping, mut stop_seen) = tokio::sync::watch::channel(false);
        let signal = async move {
            shutdown_signal().await;
            let _ = stopping.send(true);
        };
        // axum stops accepting at the signal and lets each connection finish its request;
        // a client that never finishes sending must not hold the stop up.
        let cut_off = async move {
            if stop_seen.wait_for(|s| *s).await.is_ok() {
                tokio::time::sleep(API_DRAIN).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let served = tokio::select! {
            served = http::serve_with(listener, app, options, signal) => served,
            () = cut_off => {
                warn!(waited = ?API_DRAIN, "API requests still unfinished {API_DRAIN:?} after the stop signal; closing their connections");
                Ok(())
            }
        };
        info!("API closed");
        // Dropping the supervisor's task set aborts every probe with it.
        prober.abort();
        refresher.abort();
        // Neighbours hear a Cease (administrative shutdown) and withdraw our routes now,
        // not after their hold time.
        core.bgp().stop();
        if tokio::time::timeout(BGP_STOP, bgp).await.is_err() {
            warn!("BGP sessions still closing after {BGP_STOP:?}; leaving them");
        }
        served.map_err(|e| format!("API server failed: {e}"))
    });
    // Connection tasks still open are dropped here; blocking work (a change being applied and
    // saved) gets a bounded while to end.
    rt.shutdown_timeout(BLOCKING_DRAIN);
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot listen for SIGTERM: {e}");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => info!(signal = "SIGTERM", "SIGTERM received, stopping"),
        _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "SIGINT received, stopping"),
    }
}

fn log_totals(core: &ApplianceCore) {
    let (workers, xdp) = core.stats();
    let mut total = oxlb_dataplane::stats::Counters::default();
    for w in &workers {
        total.add(w);
    }
    let drops: Vec<String> = oxlb_dataplane::stats::DropReason::ALL
        .iter()
        .filter(|r| total.dropped(**r) > 0)
        .map(|r| format!("{}={}", r.label(), total.dropped(*r)))
        .collect();
    let s = total.sockets;
    info!(
        "totals: rx={} tx={} to_kernel={} flows_created={} drops[{}] socket_drops[rx_ring_full={} fill_ring_empty={} rx_dropped={} invalid={}] xdp={:?}",
        total.rx_packets,
        total.tx_packets,
        total.kernel_packets,
        total.flows_created,
        drops.join(" "),
        s.rx_ring_full,
        s.fill_ring_empty,
        s.rx_dropped,
        s.invalid_descs,
        xdp
    );
}
