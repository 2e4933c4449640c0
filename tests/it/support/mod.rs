//! Test fixtures shared by the integration tests: real servers, not mocks.

pub mod s3;
