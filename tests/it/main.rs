//! end-to-end tests
mod api;
mod cluster;
mod disk;
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
mod systemd;
mod telemetry;
mod web;
