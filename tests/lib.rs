//! test utilities
#![forbid(unsafe_code)]
