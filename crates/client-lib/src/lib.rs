//! Client library for ami2: async (tokio) and blocking APIs that speak both protocols to the
//! service, with reconnection. The `ami2` client subcommands are built on it. Filled by the
//! protocols issue; nothing is implemented yet.
