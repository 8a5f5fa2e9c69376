//! Set element changes of ferry's policy tables ([`ferry_netpol::plan_elements`]) written
//! straight to the kernel as one nfnetlink batch, without nft.
//!
//! Why: nft 1.0.6, before any `add element` / `delete element`, fetches the elements of
//! every set of the table (a dump per set, each costing the kernel a linear name lookup),
//! so a one-element change to a table of 4,000 sets takes most of a second. The kernel
//! itself needs only the messages for the elements that change.
//!
//! [`apply`] sends, for the `ferry_policy` table of each change's family, all deletions
//! (`NFT_MSG_DELSETELEM`) then all additions (`NFT_MSG_NEWSETELEM`) between
//! `NFNL_MSG_BATCH_BEGIN` and `NFNL_MSG_BATCH_END`: one transaction, all or nothing, as
//! `nft -f` is. Every message asks for an ack, and every ack is read, so a failure names
//! the set and the operation. The elements are encoded exactly as nft 1.0.6 encodes them
//! ([`encode`]). It works in the calling thread's network namespace.

pub mod encode;
mod netlink;

use ferry_netpol::naming::TABLE;
use ferry_netpol::{SetChange, TableFamily};

pub use encode::Op;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An element that no set of the change's kind can hold: nothing was sent.
    #[error("{} element {} {} {TABLE} {set}: {reason}", op.verb(), op.preposition(), family.name())]
    Encode {
        family: TableFamily,
        set: String,
        op: Op,
        reason: String,
    },
    /// The kernel refused a message of the batch, and so the whole batch: nothing changed.
    #[error("{} element {} {} {TABLE} {set}: {text}{}", op.verb(), op.preposition(), family.name(), more(*others))]
    Kernel {
        family: TableFamily,
        set: String,
        op: Op,
        errno: i32,
        text: String,
        /// How many other messages of the batch failed too.
        others: usize,
    },
    /// The kernel refused the batch as a whole (not root, for one): nothing changed.
    #[error("nfnetlink batch refused: {0}")]
    Batch(std::io::Error),
    /// The socket failed; `what` says at which step. When the batch was sent but its acks
    /// could not be read, whether it applied is not known.
    #[error("NETLINK_NETFILTER socket, {what}: {err}")]
    Io {
        what: &'static str,
        err: std::io::Error,
    },
    /// The kernel answered something this code does not understand.
    #[error("NETLINK_NETFILTER socket: {0}")]
    Protocol(String),
}

fn more(others: usize) -> String {
    match others {
        0 => String::new(),
        n => format!(" (and {n} more failing messages in the batch)"),
    }
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Delete => "delete",
        }
    }

    fn preposition(self) -> &'static str {
        match self {
            Op::Add => "to",
            Op::Delete => "from",
        }
    }
}

/// Applies `changes` to the `ferry_policy` tables of the calling thread's network
/// namespace in one transaction: all deletions of every change, then all additions. On
/// `Err` nothing changed, except for [`Error::Io`] after sending (see there).
pub fn apply(changes: &[SetChange]) -> Result<(), Error> {
    let batch = build(changes)?;
    if batch.is_empty() {
        return Ok(());
    }
    let failures = batch.send()?;
    match failures.first() {
        None => Ok(()),
        Some(f) => {
            let c = &changes[f.change];
            Err(Error::Kernel {
                family: c.family,
                set: c.set.clone(),
                op: f.op,
                errno: f.errno,
                text: errno_text(f.errno),
                others: failures.len() - 1,
            })
        }
    }
}

/// The batch [`apply`] sends for `changes`, as bytes, from `NFNL_MSG_BATCH_BEGIN` to
/// `NFNL_MSG_BATCH_END` (for tests and debugging: the messages can be set beside what
/// `nft --debug=mnl` prints). Empty when there is nothing to change.
pub fn batch(changes: &[SetChange]) -> Result<Vec<u8>, Error> {
    let batch = build(changes)?;
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    Ok(batch.finish())
}

fn build(changes: &[SetChange]) -> Result<netlink::Batch, Error> {
    let mut batch = netlink::Batch::new();
    for op in [Op::Delete, Op::Add] {
        for (i, c) in changes.iter().enumerate() {
            let elements = match op {
                Op::Delete => &c.removed,
                Op::Add => &c.added,
            };
            if elements.is_empty() {
                continue;
            }
            let wire = encode::encode(c.kind, op, elements).map_err(|reason| Error::Encode {
                family: c.family,
                set: c.set.clone(),
                op,
                reason,
            })?;
            batch.push(i, op, nfproto(c.family), &c.set, &wire);
        }
    }
    Ok(batch)
}

/// The table's family as nfnetlink numbers it.
fn nfproto(family: TableFamily) -> u8 {
    match family {
        TableFamily::Inet => libc::NFPROTO_INET as u8,
        TableFamily::Bridge => libc::NFPROTO_BRIDGE as u8,
    }
}

/// `strerror` without std's " (os error N)" suffix, as nft prints it.
fn errno_text(errno: i32) -> String {
    let full = std::io::Error::from_raw_os_error(errno).to_string();
    match full.rfind(" (os error ") {
        Some(i) => full[..i].to_string(),
        None => full,
    }
}
