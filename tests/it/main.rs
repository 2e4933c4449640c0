//! The single integration-test binary: one module per area, shared servers in `support`.

mod config;
mod conformance;
mod http;
mod migrate;
mod s3_list;
mod support;
mod verify;
