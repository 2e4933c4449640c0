//! Shared test fixtures: real S3 servers and the real binary.

pub mod cli;
pub mod s3;
