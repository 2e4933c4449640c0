//! The single integration-test binary: one module per area, shared servers in `support`.

mod conformance;
mod s3_list;
mod support;
