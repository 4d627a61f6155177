//! The node's own nats-server configuration: client and route ports bound
//! to the management address only, routes to every peer, JetStream under
//! the data directory, and the shared secret required on both ports.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use neuwerk_core::config::ClusterConfig;
use neuwerk_core::encode::percent_encode;

/// Client port of every node's nats-server (the seed's).
pub const CLIENT_PORT: u16 = 3320;
/// Cluster route port of every node's nats-server (the seed's).
pub const ROUTE_PORT: u16 = 3322;
/// Name of the NATS cluster the nodes form.
pub const CLUSTER_NAME: &str = "neuwerk";
/// The user routes authenticate as (with the shared secret).
const ROUTE_USER: &str = "neuwerk";

/// What a node's nats-server is told.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerConf {
    /// The server's name: the node's.
    pub name: String,
    /// The management address both ports bind to.
    pub address: IpAddr,
    /// The other nodes' management addresses, routed to on `route_port`.
    pub peers: Vec<IpAddr>,
    /// Required of clients (as a token) and of routes (as a password).
    pub secret: String,
    /// JetStream storage.
    pub store_dir: PathBuf,
    pub client_port: u16,
    pub route_port: u16,
}

/// Keeps the secret out of debug output.
impl std::fmt::Debug for ServerConf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConf")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("peers", &self.peers)
            .field("store_dir", &self.store_dir)
            .field("client_port", &self.client_port)
            .field("route_port", &self.route_port)
            .finish_non_exhaustive()
    }
}

impl ServerConf {
    /// The configuration of a node of `cluster`, on the seed's ports.
    pub fn new(cluster: &ClusterConfig) -> ServerConf {
        ServerConf {
            name: cluster.node.clone(),
            address: cluster.address,
            peers: cluster.peers.clone(),
            secret: cluster.secret.clone(),
            store_dir: cluster.data_dir.clone(),
            client_port: CLIENT_PORT,
            route_port: ROUTE_PORT,
        }
    }

    /// Where clients (this node's daemon among them) connect.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.client_port)
    }

    /// The nats-server configuration file's text.
    pub fn render(&self) -> String {
        let secret = quoted(&self.secret);
        let routes: Vec<String> = self
            .peers
            .iter()
            .map(|p| {
                let url = format!(
                    "nats-route://{ROUTE_USER}:{}@{}",
                    percent_encode(&self.secret),
                    SocketAddr::new(*p, self.route_port)
                );
                format!("    {}", quoted(&url))
            })
            .collect();
        format!(
            "# Written by neuwerk at every start; edits are lost.\n\
             server_name: {name}\n\
             listen: {client}\n\
             authorization {{ token: {secret} }}\n\
             jetstream {{ store_dir: {store} }}\n\
             cluster {{\n  \
               name: {cluster}\n  \
               listen: {route}\n  \
               authorization {{ user: {user}, password: {secret} }}\n  \
               routes: [\n{routes}\n  ]\n\
             }}\n",
            name = quoted(&self.name),
            client = quoted(&self.client_addr().to_string()),
            store = quoted(&self.store_dir.display().to_string()),
            cluster = quoted(CLUSTER_NAME),
            route = quoted(&SocketAddr::new(self.address, self.route_port).to_string()),
            user = quoted(ROUTE_USER),
            routes = routes.join(",\n"),
        )
    }
}

/// A double-quoted string of the nats-server configuration format.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf() -> ServerConf {
        ServerConf {
            name: "node0".into(),
            address: "10.100.3.10".parse().unwrap(),
            peers: vec![
                "10.100.3.11".parse().unwrap(),
                "fd00:3::12".parse().unwrap(),
            ],
            secret: "s3cret \"x\" @/%".into(),
            store_dir: "/var/lib/neuwerk/cluster".into(),
            client_port: CLIENT_PORT,
            route_port: ROUTE_PORT,
        }
    }

    #[test]
    fn both_ports_bind_the_management_address_and_require_the_secret() {
        let text = conf().render();
        assert!(text.contains("listen: \"10.100.3.10:3320\""), "{text}");
        assert!(text.contains("listen: \"10.100.3.10:3322\""), "{text}");
        assert!(text.contains("token: \"s3cret \\\"x\\\" @/%\""), "{text}");
        assert!(
            text.contains("password: \"s3cret \\\"x\\\" @/%\""),
            "{text}"
        );
        assert!(text.contains("server_name: \"node0\""), "{text}");
        assert!(
            text.contains("store_dir: \"/var/lib/neuwerk/cluster\""),
            "{text}"
        );
    }

    #[test]
    fn every_peer_gets_a_route_with_the_encoded_secret() {
        let text = conf().render();
        let enc = "s3cret%20%22x%22%20%40%2F%25";
        assert!(
            text.contains(&format!("\"nats-route://neuwerk:{enc}@10.100.3.11:3322\"")),
            "{text}"
        );
        assert!(
            text.contains(&format!("\"nats-route://neuwerk:{enc}@[fd00:3::12]:3322\"")),
            "{text}"
        );
    }

    #[test]
    fn the_secret_stays_out_of_debug_output() {
        assert!(!format!("{:?}", conf()).contains("s3cret"));
    }
}
