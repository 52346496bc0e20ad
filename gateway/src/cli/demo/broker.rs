//! The demo's MQTT broker where Mosquitto is not installed: rumqttd inside the demo process,
//! plain MQTT bound to loopback, with no TLS, no authentication and no ACL. It is for the demo
//! only: a site runs Mosquitto with mutual TLS (`medledger mosquitto-config`), which the demo
//! uses whenever it is installed. It lives in the demo's own threads, so it ends with the demo.

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::Context;
use rumqttd::{Broker, ConnectionSettings, RouterConfig, ServerSettings};

/// The embedded broker's listeners: MQTT 3.1.1 for the gateway's subscriber, MQTT 5 for the
/// simulated devices (which read PUBACK reasons).
#[derive(Debug, Clone, Copy)]
pub struct Embedded {
    pub v4_port: u16,
    pub v5_port: u16,
}

/// Starts rumqttd on two free loopback ports.
pub fn start_embedded() -> anyhow::Result<Embedded> {
    let ports = Embedded {
        v4_port: super::site::free_port()?,
        v5_port: super::site::free_port()?,
    };
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: 64 * 1024,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, port: u16| {
        HashMap::from([(
            name.to_owned(),
            ServerSettings {
                name: name.to_owned(),
                listen: SocketAddr::from(([127, 0, 0, 1], port)),
                tls: None,
                next_connection_delay_ms: 1,
                connections: connections.clone(),
            },
        )])
    };
    let config = rumqttd::Config {
        router: RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(server("demo-v4", ports.v4_port)),
        v5: Some(server("demo-v5", ports.v5_port)),
        ..Default::default()
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "the embedded MQTT broker stopped");
            }
        })
        .context("cannot start the embedded MQTT broker's thread")?;
    Ok(ports)
}
