//! end-to-end tests
mod api;
mod cluster;
mod format;
mod gateway_tls;
mod hostile;
mod ledger;
mod modbus;
mod mosquitto;
mod mqtt;
mod mtls;
mod ops;
mod pki_cli;
mod powerloss;
mod records;
mod systemd;
mod telemetry;
mod web;
