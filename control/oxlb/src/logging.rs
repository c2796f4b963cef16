//! oxlb's log output: tracing's fmt layer on stderr, as text or as JSON lines, behind a
//! `RUST_LOG`-style filter that the API can replace while oxlb runs. The libraries' `log`
//! records are bridged into the same subscriber.

use oxlb_control::ops::{LogControl, LogFilterError};
use std::io::IsTerminal;
use std::sync::Mutex;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

/// The filter without `RUST_LOG`: netlink-packet-route warns about every attribute of a newer
/// kernel it does not know, on every route dump.
pub const DEFAULT_FILTER: &str = "info,netlink_packet_route=error";

/// How each log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `TIMESTAMP LEVEL target: message key=value`, for people and journald.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `message`, and the event's
    /// fields at the top level), for log shippers.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// Another subscriber or `log` logger was installed first: a bug in oxlb's start.
    #[error("cannot install the log subscriber: {0}")]
    Install(String),
}

/// The installed subscriber's filter, replaceable at run time (see [`LogControl`]).
pub struct Logging {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The filter as last given, which reads better than `EnvFilter`'s own rendering of it.
    current: Mutex<String>,
}

/// What [`init`] could not honour but did not stop for; logged once the subscriber is up.
pub struct Started {
    pub logging: Logging,
    /// `RUST_LOG` was set but is not a filter: the default is used instead, and this says why.
    pub ignored_env: Option<LogFilterError>,
}

/// Installs the global subscriber: `RUST_LOG` if it is set and valid, [`DEFAULT_FILTER`]
/// otherwise. Lines go to stderr, as env_logger's did, so that stdout stays free.
pub fn init(format: LogFormat) -> Result<Started, LoggingError> {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let (text, filter, ignored_env) = match from_env.map(|v| (parse(&v), v)) {
        Some((Ok(filter), text)) => (text, filter, None),
        Some((Err(e), _)) => (DEFAULT_FILTER.to_owned(), default_filter(), Some(e)),
        None => (DEFAULT_FILTER.to_owned(), default_filter(), None),
    };
    let max = filter.max_level_hint();
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let ansi = std::io::stderr().is_terminal();
    let installed = match format {
        LogFormat::Text => tracing::subscriber::set_global_default(
            registry.with(fmt::layer().with_writer(std::io::stderr).with_ansi(ansi)),
        ),
        LogFormat::Json => tracing::subscriber::set_global_default(
            registry.with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    installed.map_err(|e| LoggingError::Install(e.to_string()))?;
    tracing_log::LogTracer::init_with_filter(as_log_level(max))
        .map_err(|e| LoggingError::Install(e.to_string()))?;
    Ok(Started {
        logging: Logging {
            handle,
            current: Mutex::new(text),
        },
        ignored_env,
    })
}

fn default_filter() -> EnvFilter {
    parse(DEFAULT_FILTER).expect("the default filter parses")
}

/// Strict: a filter with a directive that does not parse is refused whole, rather than run
/// with that directive silently left out (EnvFilter's lossy parsing).
fn parse(text: &str) -> Result<EnvFilter, LogFilterError> {
    EnvFilter::builder()
        .parse(text.trim())
        .map_err(|e| LogFilterError::Invalid {
            filter: text.to_owned(),
            reason: e.to_string(),
        })
}

/// The `log` crate's own max level gates its macros before any call into the bridge, so it
/// must follow the filter: at `info` the libraries' `debug!` cost one atomic load, and after a
/// change to `debug` they are not silently dropped.
fn as_log_level(max: Option<LevelFilter>) -> log::LevelFilter {
    match max {
        Some(LevelFilter::OFF) => log::LevelFilter::Off,
        Some(LevelFilter::ERROR) => log::LevelFilter::Error,
        Some(LevelFilter::WARN) => log::LevelFilter::Warn,
        Some(LevelFilter::INFO) => log::LevelFilter::Info,
        Some(LevelFilter::DEBUG) => log::LevelFilter::Debug,
        // No hint (a filter on span fields may enable anything) or TRACE.
        _ => log::LevelFilter::Trace,
    }
}

impl LogControl for Logging {
    fn filter(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_filter(&self, filter: &str) -> Result<(), LogFilterError> {
        let parsed = parse(filter)?;
        let max = parsed.max_level_hint();
        // Held across the reload so that concurrent changes leave `current` naming the filter
        // that is actually in force.
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        self.handle
            .reload(parsed)
            .map_err(|e| LogFilterError::Unavailable(e.to_string()))?;
        log::set_max_level(as_log_level(max));
        *current = filter.trim().to_owned();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_filter_and_a_per_crate_filter_parse() {
        assert!(parse(DEFAULT_FILTER).is_ok());
        let f = parse("debug,oxlb_dataplane=trace").unwrap();
        assert_eq!(f.max_level_hint(), Some(LevelFilter::TRACE));
    }

    #[test]
    fn a_filter_with_one_bad_directive_is_refused_whole_naming_it() {
        let e = parse("info,oxlb=loud").unwrap_err();
        assert!(matches!(e, LogFilterError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("info,oxlb=loud"), "{e}");
    }

    #[test]
    fn the_log_crates_level_follows_the_filters_most_verbose_directive() {
        let hint = |t: &str| as_log_level(parse(t).unwrap().max_level_hint());
        assert_eq!(hint(DEFAULT_FILTER), log::LevelFilter::Info);
        assert_eq!(hint("warn,oxlb=debug"), log::LevelFilter::Debug);
        assert_eq!(hint("off"), log::LevelFilter::Off);
    }
}
