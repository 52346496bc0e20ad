//! ledger-node
#![forbid(unsafe_code)]
