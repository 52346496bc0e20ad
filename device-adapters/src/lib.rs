//! device-adapters
#![forbid(unsafe_code)]
