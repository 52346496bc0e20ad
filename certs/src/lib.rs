//! certs
#![forbid(unsafe_code)]
