//! The optional TOML file of services to install at start (`--config`).
//!
//! Its entries use the REST API's own field names, so a body that works with
//! `POST /netlox/v1/config/loadbalancer` works here unchanged (as TOML).

use oxlb_api::{validate, LoadBalancerEntry, ServiceSpec};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The services, one `[[loadbalancer]]` table each.
    #[serde(default)]
    pub loadbalancer: Vec<LoadBalancerEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid oxlb config: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: loadbalancer #{index} ({field}): {message}")]
    Invalid {
        path: String,
        index: usize,
        field: String,
        message: String,
    },
    #[error("{path}: loadbalancer #{index} repeats service {key}; each external IP, port and protocol may appear once")]
    Duplicate {
        path: String,
        index: usize,
        key: String,
    },
}

/// Parses and validates the whole file; any error refuses all of it.
pub fn parse(text: &str, path: &str) -> Result<Vec<ServiceSpec>, ConfigError> {
    let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_string(),
        message: e.to_string(),
    })?;
    let mut seen = BTreeSet::new();
    let mut specs = Vec::new();
    for (i, entry) in file.loadbalancer.iter().enumerate() {
        let spec = validate(entry).map_err(|e| ConfigError::Invalid {
            path: path.to_string(),
            index: i + 1,
            field: e.field().to_string(),
            message: e.to_string(),
        })?;
        if !seen.insert(spec.key) {
            return Err(ConfigError::Duplicate {
                path: path.to_string(),
                index: i + 1,
                key: spec.key.to_string(),
            });
        }
        specs.push(spec);
    }
    Ok(specs)
}

pub fn load(path: &Path) -> Result<Vec<ServiceSpec>, ConfigError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: p.clone(),
        source,
    })?;
    parse(&text, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> String {
        let path = format!("{}/../../configs/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn the_shipped_example_config_parses_and_validates() {
        let specs = parse(&example("oxlb.toml"), "oxlb.toml").unwrap();
        assert!(!specs.is_empty());
        assert!(specs.iter().all(|s| !s.endpoints.is_empty()));
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_name() {
        let err = parse("[[loadbalancer]]\nbogus = 1\n", "x.toml").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn a_service_listed_twice_is_refused() {
        let one = r#"
[[loadbalancer]]
serviceArguments = { externalIP = "198.18.100.1", port = 80, protocol = "tcp" }
endpoints = [ { endpointIP = "198.18.31.1", targetPort = 8080, weight = 1 } ]
"#;
        let err = parse(&format!("{one}{one}"), "x.toml").unwrap_err();
        assert!(
            matches!(err, ConfigError::Duplicate { index: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn an_invalid_service_names_its_position_and_field() {
        let bad = r#"
[[loadbalancer]]
serviceArguments = { externalIP = "198.18.100.1", port = 0, protocol = "tcp" }
endpoints = [ { endpointIP = "198.18.31.1", targetPort = 8080, weight = 1 } ]
"#;
        let err = parse(bad, "x.toml").unwrap_err();
        assert!(
            matches!(err, ConfigError::Invalid { index: 1, .. }),
            "{err}"
        );
    }
}
