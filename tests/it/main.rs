//! end-to-end tests
mod modbus;
