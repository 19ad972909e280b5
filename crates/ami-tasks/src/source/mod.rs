//! Data sources (being written; see the pipeline issue).
