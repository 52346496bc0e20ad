//! The MedLedger gateway: the glue between the ledger (`ledger-node`), identities (`certs`) and
//! device telemetry (`device-adapters`), as a library under a thin `medledger` binary.
//!
//! Data flows one way: [`cli`] (the command line) sits on top and may call into [`service`]
//! (the running gateway: Raft node, HTTPS API, identity and revocation); [`service`] never
//! imports [`cli`]. Both use [`config`] (the one configuration file) and [`event`] (the one
//! request type of a maintenance event, shared by import, API and CLI).
#![forbid(unsafe_code)]

pub mod accounts;
pub mod cli;
pub mod config;
pub mod event;
pub mod logging;
pub mod paths;
pub mod records;
pub mod service;
