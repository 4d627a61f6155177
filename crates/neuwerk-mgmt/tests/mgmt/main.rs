//! The management layer against a fake daemon, over real loopback HTTP.

mod api;
mod cli;
mod events;
mod harness;
mod metrics;
