//! end-to-end tests
mod cluster;
mod format;
mod ledger;
mod modbus;
mod mosquitto;
mod mqtt;
mod mtls;
mod pki_cli;
