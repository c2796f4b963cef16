//! loxilb-compatible REST API types (`/netlox/v1`) and their validation into typed service specs.
#![forbid(unsafe_code)]

pub mod spec;

pub use spec::*;
