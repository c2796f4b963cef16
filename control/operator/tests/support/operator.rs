//! Runs the operator binary against a kubeconfig, logging to a file, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Operator(pub Child, pub PathBuf);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Operator {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

/// Starts the operator with `args`, logging to `<dir>/<name>.log`.
pub fn spawn_operator(dir: &Path, kc: &Path, name: &str, args: &[&str]) -> Operator {
    spawn_operator_env(dir, kc, name, args, &[])
}

/// [`spawn_operator`] with environment variables `env` set too.
pub fn spawn_operator_env(
    dir: &Path,
    kc: &Path,
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Operator {
    let log = dir.join(format!("{name}.log"));
    let f = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_oxlb-operator"))
        .envs(env.iter().copied())
        .env("KUBECONFIG", kc)
        .env("RUST_LOG", "info")
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    Operator(child, log)
}

/// A port nothing listens on (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
