//! Wire protocols between clients and the ami2 service: protocol 1 (graph edits and desired
//! results, answered with the new graph version or the reasons for rejection) and protocol 2
//! (publish/subscribe of finished result bins), over length-prefixed TCP frames. Filled by the
//! protocols issue; nothing is implemented yet.
