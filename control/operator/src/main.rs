//! The `oxlb-operator` binary: parse kube-loxilb-style flags, refuse what is not implemented,
//! run the operator.
#![forbid(unsafe_code)]

use clap::Parser;
use oxlb_operator::flags::{go_style, Flags};

#[tokio::main]
async fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let flags = Flags::parse_from(go_style(std::env::args()));
    if let Err(e) = oxlb_operator::run(flags).await {
        eprintln!("oxlb-operator: {e}");
        std::process::exit(2);
    }
}
