//! Placement policy for ami2, in plain Rust and independent of Legion: given a machine description
//! (address spaces, processors, memories) and the roles of the nodes, it says where each kind of
//! task runs and where its region instances live (data sources and workers with the telemetry
//! partition they own; graph manager, global reducer and monitors on the service nodes). The C++
//! mapper shim in legion-bridge asks this policy. Filled by the mapper issue; nothing is
//! implemented yet.
