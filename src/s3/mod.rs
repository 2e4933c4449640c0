//! S3-specific pieces: building the client from [`crate::config::S3Config`].

mod client;
pub(crate) mod list;

pub(crate) use client::open;
