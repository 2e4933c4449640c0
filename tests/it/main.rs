//! The single integration-test binary: one module per area, shared servers in `support`.

mod http;
mod migrate;
mod s3_list;
mod support;
mod verify;
