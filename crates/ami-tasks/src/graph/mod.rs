//! The computation graph (being written; see the pipeline issue).
