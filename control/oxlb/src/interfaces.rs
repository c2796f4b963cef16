//! What the kernel says about the interfaces named on the command line.

use oxlb_dataplane::InterfaceConfig;

#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error("interface {0:?} does not exist here (see `ip link`); oxlb must run in the network namespace that has it")]
    NotFound(String),
    #[error("interface {0:?} was given twice")]
    Duplicate(String),
}

pub fn discover(names: &[String]) -> Result<Vec<InterfaceConfig>, InterfaceError> {
    let mut out: Vec<InterfaceConfig> = Vec::new();
    for name in names {
        if out.iter().any(|i| &i.name == name) {
            return Err(InterfaceError::Duplicate(name.clone()));
        }
        let base = format!("/sys/class/net/{name}");
        let ifindex = std::fs::read_to_string(format!("{base}/ifindex"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| InterfaceError::NotFound(name.clone()))?;
        // The rx-N directories follow the number of queues in use (ethtool -L changes them).
        let queues = std::fs::read_dir(format!("{base}/queues"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                    .count() as u32
            })
            .unwrap_or(1)
            .max(1);
        out.push(InterfaceConfig {
            name: name.clone(),
            ifindex,
            queues,
        });
    }
    Ok(out)
}
