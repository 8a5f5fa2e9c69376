//! NetworkPolicy conformance: the case files and what they expect (`cases`), the pods'
//! servers and probes (`probe`), and the cluster the cases run in (`world`).

pub mod cases;
pub mod probe;
pub mod world;
