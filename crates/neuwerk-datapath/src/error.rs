//! Errors of the datapath.

/// What can go wrong loading, attaching or writing the dataplane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("interface {0} not found")]
    NoInterface(String),
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("loading program {name} failed (verifier log follows): {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching {name} to {iface} failed: {reason}")]
    Attach {
        name: &'static str,
        iface: String,
        reason: String,
    },
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("port set table full ({0} distinct port sets); restart neuwerk to compact it")]
    PortsetsFull(u32),
    #[error("{0}")]
    Capacity(String),
    #[error("{0}")]
    ForeignPins(String),
    #[error("the packet event stream was already taken")]
    EventsTaken,
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl DataplaneError {
    /// Wraps a map error with the map's name.
    pub fn map(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
        move |e| DataplaneError::Map {
            name,
            source: Box::new(e),
        }
    }
}
