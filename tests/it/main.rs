//! end-to-end tests
mod format;
mod ledger;
mod modbus;
mod mosquitto;
mod mqtt;
mod mtls;
