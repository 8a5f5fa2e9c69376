//! The node's desired nftables state, as data: [`Ruleset::compute`]. The object model is
//! in [`crate::nft`], the names in [`crate::naming`] and the compiler in `compile`; this
//! module keeps the path callers have always imported them by.

pub use crate::compile::{LocalPods, DENY_LOG_GROUP, DENY_LOG_RATE};
pub use crate::naming::{
    denied_set, own_set, pods_map, self_set, FORWARD_CHAIN, INPUT_CHAIN, MAX_NAME_LEN, PORTS_MAP,
    TABLE,
};
pub use crate::nft::lookup::Lookup;
pub use crate::nft::{
    Chain, ChainRef, Element, Expr, Field, Hook, Ifname, Rule, Ruleset, Set, SetKind, Table,
    TableFamily, Verdict,
};
