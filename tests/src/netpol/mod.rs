//! NetworkPolicy conformance: the case files and what they expect.

pub mod cases;
