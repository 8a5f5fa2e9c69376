//! NetworkPolicy conformance: the case files and what they expect (`cases`), the pods'
//! servers and probes (`probe`), probes beyond unicast to a pod's API address (`l2`), and
//! the cluster the cases run in (`world`).

pub mod cases;
pub mod oracle;
pub use ferry_testns::l2;
pub mod probe;
pub mod world;
