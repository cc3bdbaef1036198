//! Weak replication. Today this holds the pure merge rule that every node applies to captured
//! changes; the capture, exchange and apply that move changes between nodes build on it.

pub mod merge;
