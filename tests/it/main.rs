//! end-to-end tests
mod format;
mod ledger;
mod modbus;
mod mqtt;
mod mtls;
