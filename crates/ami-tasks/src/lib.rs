//! The ami2 event pipeline as Legion tasks: data sources, future-triggered workers running the
//! computation graph, local and global reducers, and the robustness monitors. Filled by the
//! pipeline issue; nothing is implemented yet.
