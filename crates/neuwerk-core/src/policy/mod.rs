//! The policy: which client networks may resolve which names and reach which
//! addresses and ports.
//!
//! - [`model`]: the validated, in-memory policy and its lookups.
//! - [`parse`]: YAML text -> [`ParsedPolicy`] (the [`model::Policy`] and
//!   what each network may learn), errors with file:line:column.
//! - [`hostname`]: exact, `*.` and `**.` name patterns and their index.
//! - [`learn`]: what DNS answers may teach each network (`allow_private`).

pub mod hostname;
pub mod learn;
pub mod model;
pub mod parse;

pub use hostname::{HostIndex, HostPattern};
pub use learn::{Closed, Learning, NetworkLearning, ParsedPolicy};
pub use model::{Network, NetworkMode, Policy, PortRange, PortSet, Proto, Rule, Target};
pub use parse::{load_policy_file, parse_policy, read_policy_file, PolicyError};
