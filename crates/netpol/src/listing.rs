//! Reading the applied tables back from `nft -j`: [`crate::nft::parse`], under the path
//! callers have always imported it by.

pub use crate::nft::parse::ListingError;
