//! The proxy end to end on loopback: a real server, a fake upstream, a
//! recording grant sink.

mod answers;
mod audit;
mod harness;
mod observer;
mod robustness;
mod special_use;
mod upstreams;
