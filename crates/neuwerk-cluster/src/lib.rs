//! Several Neuwerk nodes acting as one firewall: each node runs its own
//! nats-server ([`server`]), configured from the `cluster` section
//! ([`conf`]); the nodes share what they learn over NATS as
//! [`message::GrantMessage`]s, which a receiver checks against its own
//! policy.

pub mod conf;
pub mod message;
pub mod server;

pub use conf::ServerConf;
pub use server::{find_binary, NatsServer};
