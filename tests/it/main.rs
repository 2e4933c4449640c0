//! The single integration-test binary: one module per area, shared servers in `support`.

mod catch_up;
mod cleanup;
mod cli_ux;
mod config;
mod conformance;
mod deleted_while_copied;
mod deploy;
mod disk;
mod facade;
mod http;
mod integrity;
mod local_tree;
mod migrate;
mod object_store_suite;
mod pipe;
mod read_through;
mod runbook;
mod s3_list;
mod secrets;
mod serve_fallback;
mod serve_load;
mod serve_runtimes;
mod serve_sendfile;
mod support;
mod url;
mod verify;
