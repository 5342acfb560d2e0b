//! The environment variables through which a spawned domain process finds its broker (D19).

/// Environment variable naming the broker socket (D19).
pub const SOCKET_ENV: &str = "PORE_SIM_SOCKET";
/// Environment variable naming a domain process (its `name` in the toolstack).
pub const NAME_ENV: &str = "PORE_SIM_NAME";
/// Environment variable holding the domid a process joins instead of creating a domain (set by
/// [`DomainCommand::join`](crate::DomainCommand::join), read by
/// [`SimDomain::connect`](crate::SimDomain::connect)).
pub const JOIN_ENV: &str = "PORE_SIM_JOIN";
