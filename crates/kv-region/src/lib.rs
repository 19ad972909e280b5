//! Key-value store for JSON documents kept in Legion logical regions (the Telemetry, Control and
//! Results stores of ami2). Keys are path-like (`/worker/3/state/frame`); each key prefix owns a
//! contiguous range of points of a 1-D index space, so a partition by prefixes hands every
//! component exactly its part of the store. Persistence to the data directory is done by Legion
//! tasks. Filled by the stores issue; nothing is implemented yet.
